//! What the proxy reads in a client's header fields besides routing:
//! hop-by-hop fields and the ones `Connection` names (`headers`), request
//! IDs and W3C `traceparent` (`proxy::trace`), and the service a gateway
//! route takes from the path or host (`proxy::gateway`).
//!
//! Input: header lines `name: value` (hyper hands the proxy only valid
//! names and values; invalid lines are skipped here the same way), and a
//! last line used as the request path. Checked: the rules each function
//! promises, and never a panic.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use switchyard::config::ServiceFrom;
use switchyard::headers;
use switchyard::proxy::{gateway, trace};

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn run(data: &[u8]) {
    let mut map = HeaderMap::new();
    let mut path = "/";
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            path = std::str::from_utf8(line).unwrap_or("/");
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(name, value);
    }

    for value in map.values() {
        for element in headers::elements(value) {
            assert!(!element.is_empty() && !element.contains(','));
            assert_eq!(element, element.trim());
        }
    }

    let mut stripped = map.clone();
    let named: Vec<HeaderName> = map
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(headers::named_by_connection)
        .collect();
    headers::strip_hop_by_hop(&mut stripped);
    for name in stripped.keys() {
        assert!(!headers::is_hop_by_hop(name), "{name} left");
        assert!(!named.contains(name), "{name} named by Connection, left");
    }
    for (name, value) in &map {
        if !headers::is_hop_by_hop(name) && !named.contains(name) {
            assert!(
                stripped.get_all(name).iter().any(|v| v == value),
                "{name} lost"
            );
        }
    }

    let mut with_id = map.clone();
    let id = trace::request_id(&mut with_id, &REQUEST_ID);
    assert!(trace::is_valid_request_id(id.as_bytes()), "{id:?}");
    let ids: Vec<_> = with_id.get_all(&REQUEST_ID).iter().collect();
    assert_eq!(ids, [&id]);

    if let Some(trace_id) = trace::trace_id(&map) {
        assert_eq!(trace_id.len(), 32);
        assert!(
            trace_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
    }
    let mut traced = map.clone();
    trace::start_trace(&mut traced);
    assert!(
        trace::trace_id(&traced).is_some(),
        "no trace after start_trace"
    );
    if trace::trace_id(&map).is_some() {
        assert_eq!(traced, map, "a valid trace context was changed");
    }

    let host = map.get(header::HOST).and_then(|h| h.to_str().ok());
    let froms = [
        ServiceFrom::Path,
        ServiceFrom::Host {
            domain: "svc.local".into(),
        },
    ];
    for from in &froms {
        for strip in [false, true] {
            if let Some((service, rest)) = gateway::service_of(from, strip, host, path) {
                assert!(!service.is_empty() && !service.contains('/'));
                if let Some(rest) = rest {
                    assert!(rest.starts_with('/'), "forwarded path {rest:?}");
                }
            }
        }
    }
}
