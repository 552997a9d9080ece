//! Request IDs and W3C trace context (`traceparent`, `tracestate`).
//!
//! A request ID the client sent is kept when it is well formed and
//! replaced when not; a request without one gets a new one (a random
//! UUID, as Envoy makes). The ID goes upstream, back to the client and
//! into the access log. Trace context passes through untouched; a listener
//! with `trace_context = { start = true }` starts a trace for a request
//! that has no valid `traceparent`.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest request ID kept from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// A request ID a client may send: 1 to 128 characters from the set
/// UUIDs, ULIDs, hex, base64 and most tracing systems' IDs use.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// Keeps the request's ID under `name` when valid, else sets a new one;
/// returns the ID in force.
pub fn request_id(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    if let Some(v) = headers.get(name)
        && is_valid_request_id(v.as_bytes())
        && headers.get_all(name).iter().count() == 1
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(name.clone(), id.clone());
    id
}

/// A random (version 4) UUID.
pub fn new_request_id() -> HeaderValue {
    let mut bits = fastrand::u128(..);
    // Version 4, variant 10xx.
    bits = (bits & !(0xf << 76)) | (0x4 << 76);
    bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = hex32(bits);
    let mut uuid = [0u8; 36];
    let mut j = 0;
    for (i, b) in hex.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            uuid[j] = b'-';
            j += 1;
        }
        uuid[j] = *b;
        j += 1;
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&uuid).unwrap_or(HeaderValue::from_static("-"))
}

fn hex32(bits: u128) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The trace ID of a valid `traceparent` (W3C Trace Context level 1):
/// `version-traceid-parentid-flags`, lowercase hex, IDs not all zeros.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        // Version 00 has exactly four parts; later versions may add more.
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(trace)
}

/// Starts a trace when the request carries no valid `traceparent`: a new
/// trace ID and parent ID, sampled. An invalid `traceparent` is replaced
/// and its `tracestate` dropped, as the W3C spec asks of a restart.
pub fn start_trace(headers: &mut HeaderMap) {
    if trace_id(headers).is_some() {
        return;
    }
    headers.remove(&TRACESTATE);
    let trace = hex32(fastrand::u128(1..));
    let parent = hex32(u128::from(fastrand::u64(1..)));
    let mut value = Vec::with_capacity(55);
    value.extend_from_slice(b"00-");
    value.extend_from_slice(&trace);
    value.push(b'-');
    value.extend_from_slice(&parent[16..]);
    value.extend_from_slice(b"-01");
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ID: HeaderName = HeaderName::from_static("x-request-id");

    #[test]
    fn a_valid_request_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(ID.clone(), HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(request_id(&mut h, &ID), "abc-123_x.y:z");
        assert_eq!(h.get(&ID).unwrap(), "abc-123_x.y:z");
    }

    #[test]
    fn a_missing_or_malformed_request_id_is_replaced_by_a_uuid() {
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            if !bad.is_empty() {
                h.insert(ID.clone(), HeaderValue::from_str(bad).unwrap());
            }
            let id = request_id(&mut h, &ID);
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 36, "{bad:?} -> {s}");
            assert_eq!(&s[14..15], "4", "version 4: {s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
            assert_eq!(h.get(&ID).unwrap(), &id);
        }
        let mut two = HeaderMap::new();
        two.append(ID.clone(), HeaderValue::from_static("a"));
        two.append(ID.clone(), HeaderValue::from_static("b"));
        let id = request_id(&mut two, &ID);
        assert_eq!(id.len(), 36);
        assert_eq!(two.get_all(&ID).iter().count(), 1);
    }

    #[test]
    fn traceparent_is_parsed_by_the_w3c_rules() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT.clone(), HeaderValue::from_static(v));
            h
        };
        let ok = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(trace_id(&ok), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(&with(bad)), None, "{bad}");
        }
        let future = with("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more");
        assert!(trace_id(&future).is_some());
    }

    #[test]
    fn a_trace_is_started_only_when_none_is_valid() {
        let mut h = HeaderMap::new();
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("k=v"));
        start_trace(&mut h);
        let started = h.get(&TRACEPARENT).unwrap().to_str().unwrap().to_string();
        assert!(trace_id(&h).is_some(), "{started}");
        assert!(h.get(&TRACESTATE).is_none());
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("k=v"));
        start_trace(&mut h);
        assert_eq!(h.get(&TRACEPARENT).unwrap(), started.as_str());
        assert_eq!(h.get(&TRACESTATE).unwrap(), "k=v");
    }
}
