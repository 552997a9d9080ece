//! Header fields both sides of the proxy read the same way: the hop-by-hop
//! fields that describe one connection and are never forwarded (RFC 9110
//! §7.6.1), and the elements of comma-separated field values (§5.6.1),
//! such as the tokens of `Connection` or the codings of
//! `Transfer-Encoding`.
//!
//! Client requests (through hyper) and upstream responses (through our
//! HTTP/1.1 client) are both stripped with these rules.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, plus the
/// ones Go's and nginx's proxies also drop).
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// A header that describes one hop and is never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// The elements of a comma-separated field value, trimmed, empty ones
/// skipped. A value that is not visible ASCII has none.
pub fn elements(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether any `Connection` field of `headers` lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(elements)
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// The fields a `Connection` value names besides `close` and `keep-alive`
/// (which name nothing else to remove): hop-by-hop too.
pub fn named_by_connection(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    elements(value)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
}

/// Removes every hop-by-hop field, and the fields `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass comparing names is cheaper than
    // nine hashed removals.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(named_by_connection)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close, X-A"));
        h.append(header::CONNECTION, HeaderValue::from_static(" x-b ,,"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        h.insert("x-c", HeaderValue::from_static("3"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(&KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        assert!(connection_has(&h, "CLOSE") && connection_has(&h, "x-b"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-c"]);
    }

    #[test]
    fn elements_are_trimmed_and_empty_ones_skipped() {
        let v = HeaderValue::from_static(" gzip ,, chunked ");
        assert_eq!(elements(&v).collect::<Vec<_>>(), ["gzip", "chunked"]);
        assert_eq!(elements(&v).next_back(), Some("chunked"));
    }
}
