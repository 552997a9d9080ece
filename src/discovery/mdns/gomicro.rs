//! go-micro's mDNS wire format: names and the TXT record.
//!
//! go-micro's mdns registry (`registry/mdns_registry.go`, with its
//! `util/mdns` responder) announces a node `id` of service `greeter` as
//!
//! ```text
//! greeter.micro.                  PTR  <id>.greeter.micro.
//! <id>.greeter.micro.             SRV  10 1 <port> <hostname>.
//! <id>.greeter.micro.             TXT  "<hex>" ["<hex>" ...]
//! <hostname>.                     A    <the node's IP>
//! ```
//!
//! in the domain `micro.` rather than `local.`, with the service name as
//! the whole service label (no `_name._tcp`), which is why the DNS-SD
//! crate cannot carry it. The TXT strings, joined, are the hex of the
//! zlib-compressed JSON of `{Metadata, Service, Version, Endpoints}`, split
//! into strings of at most 255 characters. A record with TTL 0 is a
//! goodbye; go-micro's records live 120 s.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// go-micro splits the hex text into strings of this many characters, a
/// TXT string's limit.
const TXT_CHUNK: usize = 255;
/// A decoded description larger than this is refused: go-micro's are a
/// few kilobytes, and a zlib bomb must not cost memory.
const MAX_DECODED: u64 = 1 << 20;

/// What go-micro's TXT record carries (its `mdnsTxt`). Go writes the field
/// names as they are; its decoder matches them in any case, so the
/// lowercase spellings are accepted too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceTxt {
    #[serde(rename = "Metadata", alias = "metadata", default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(rename = "Service", alias = "service", default)]
    pub service: String,
    #[serde(rename = "Version", alias = "version", default)]
    pub version: String,
    /// Kept as they came: Switchyard does not route by endpoint.
    #[serde(rename = "Endpoints", alias = "endpoints", default)]
    pub endpoints: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum TxtError {
    #[error("TXT is not hex: {0}")]
    Hex(#[from] hex::FromHexError),
    #[error("TXT is not zlib data: {0}")]
    Zlib(std::io::Error),
    #[error("TXT description is larger than {MAX_DECODED} bytes")]
    TooLarge,
    #[error("TXT description is not go-micro's JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The TXT strings for `txt`, as go-micro writes them.
pub fn encode(txt: &ServiceTxt) -> Vec<String> {
    // Serializing a struct of strings and a JSON value cannot fail.
    let json = serde_json::to_vec(txt).unwrap_or_default();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writes into a Vec cannot fail.
    let _ = z.write_all(&json);
    let compressed = z.finish().unwrap_or_default();
    let text = hex::encode(compressed);
    text.as_bytes()
        .chunks(TXT_CHUNK)
        // Hex digits are ASCII: every chunk is valid UTF-8.
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// Decodes go-micro's TXT strings (in record order).
pub fn decode<S: AsRef<[u8]>>(strings: &[S]) -> Result<ServiceTxt, TxtError> {
    let joined: Vec<u8> = strings
        .iter()
        .flat_map(|s| s.as_ref().iter().copied())
        .collect();
    let compressed = hex::decode(joined)?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(MAX_DECODED + 1)
        .read_to_end(&mut json)
        .map_err(TxtError::Zlib)?;
    if json.len() as u64 > MAX_DECODED {
        return Err(TxtError::TooLarge);
    }
    Ok(serde_json::from_slice(&json)?)
}

/// `greeter.micro.`: what a browser asks for (PTR).
pub fn service_name(service: &str, domain: &str) -> String {
    format!("{service}.{domain}.")
}

/// `<id>.greeter.micro.`: one node's SRV and TXT owner name.
pub fn instance_name(id: &str, service: &str, domain: &str) -> String {
    format!("{id}.{service}.{domain}.")
}

/// `_services.micro.`: go-micro's `ListServices` asks this for every
/// service name.
pub fn enumeration_name(domain: &str) -> String {
    format!("_services.{domain}.")
}

/// The node ID in `name` if it is an instance of `service` (ASCII case
/// ignored, as DNS does).
pub fn instance_id<'a>(name: &'a str, service: &str, domain: &str) -> Option<&'a str> {
    let suffix_len = service.len() + domain.len() + 3; // ".svc.domain."
    let split = name.len().checked_sub(suffix_len)?;
    let (id, suffix) = (name.get(..split)?, name.get(split..)?);
    let expected = format!(".{service}.{domain}.");
    (suffix.eq_ignore_ascii_case(&expected) && !id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServiceTxt {
        ServiceTxt {
            metadata: Some(BTreeMap::from([
                ("protocol".to_string(), "http".to_string()),
                ("registry".to_string(), "mdns".to_string()),
            ])),
            service: "greeter".into(),
            version: "latest".into(),
            endpoints: serde_json::json!([{"name": "Greeter.Hello", "request": null, "response": null, "metadata": {}}]),
        }
    }

    #[test]
    fn txt_round_trips_in_strings_of_at_most_255() {
        let mut txt = sample();
        // Incompressible metadata, so the hex runs past one string.
        let noise: String = (0..600)
            .map(|i| char::from(b'a' + ((i * 7919 + i / 3) % 26) as u8))
            .collect();
        txt.metadata.as_mut().unwrap().insert("noise".into(), noise);
        let strings = encode(&txt);
        assert!(strings.len() > 1, "{}", strings.len());
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert!(strings[..strings.len() - 1].iter().all(|s| s.len() == 255));
        assert_eq!(decode(&strings).unwrap(), txt);
    }

    #[test]
    fn decodes_what_go_writes() {
        // The JSON Go's encoding/json writes for an mdnsTxt, compressed by
        // Python's zlib: a different compressor than ours, the same format.
        let go = r#"{"Metadata":{"broker":"http","protocol":"mucp","registry":"mdns","server":"mucp","transport":"http"},"Service":"greeter","Version":"latest","Endpoints":null}"#;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(go.as_bytes()).unwrap();
        let strings = [hex::encode(z.finish().unwrap())];
        let txt = decode(&strings).unwrap();
        assert_eq!(txt.service, "greeter");
        assert_eq!(txt.version, "latest");
        assert_eq!(txt.metadata.unwrap()["protocol"], "mucp");
        assert!(txt.endpoints.is_null());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(&["zz"]), Err(TxtError::Hex(_))));
        assert!(matches!(decode(&["abcd"]), Err(TxtError::Zlib(_))));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(b"not json").unwrap();
        let strings = [hex::encode(z.finish().unwrap())];
        assert!(matches!(decode(&strings), Err(TxtError::Json(_))));
        let bomb = vec![b' '; (MAX_DECODED + 10) as usize];
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&bomb).unwrap();
        let strings = [hex::encode(z.finish().unwrap())];
        assert!(matches!(decode(&strings), Err(TxtError::TooLarge)));
    }

    #[test]
    fn instance_ids_come_from_the_owner_name() {
        assert_eq!(
            instance_id("greeter-1.greeter.micro.", "greeter", "micro"),
            Some("greeter-1")
        );
        assert_eq!(
            instance_id(
                "A.Go.Micro.Srv.Greeter.MICRO.",
                "go.micro.srv.greeter",
                "micro"
            ),
            Some("A")
        );
        assert_eq!(instance_id("greeter.micro.", "greeter", "micro"), None);
        assert_eq!(instance_id("x.other.micro.", "greeter", "micro"), None);
        assert_eq!(
            instance_id("é.greeter.micro.", "greeter", "micro"),
            Some("é")
        );
        assert_eq!(instance_id("", "greeter", "micro"), None);
    }
}
