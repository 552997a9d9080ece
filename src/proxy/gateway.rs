//! Service-name gateway routes, the request side: which Consul service a
//! request names (its first path segment, or its host's first label) and
//! the path to forward. The backends themselves are made on demand by the
//! control task (`table::gateway`).

use crate::config::ServiceFrom;

/// The service a request names, and the path to forward: for `Path`, the
/// first segment (the rest when `strip`); for `Host`, the label before
/// `.{domain}`. `None` when the request names no valid service.
pub fn service_of<'a>(
    from: &ServiceFrom,
    strip: bool,
    host: Option<&'a str>,
    path: &'a str,
) -> Option<(&'a str, Option<&'a str>)> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    match from {
        ServiceFrom::Path => {
            let rest = path.strip_prefix('/')?;
            let (service, tail) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            valid(service).then_some((service, strip.then_some(tail)))
        }
        ServiceFrom::Host { domain } => {
            let host = host?;
            let host = host.rsplit_once(':').map_or(host, |(h, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            });
            let label = host.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            (valid(label) && !label.contains('.')).then_some((label, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_come_from_the_first_segment_or_label() {
        let path = ServiceFrom::Path;
        assert_eq!(
            service_of(&path, true, None, "/users/profile/7"),
            Some(("users", Some("/profile/7")))
        );
        assert_eq!(
            service_of(&path, true, None, "/users"),
            Some(("users", Some("/")))
        );
        assert_eq!(
            service_of(&path, false, None, "/users/x"),
            Some(("users", None))
        );
        assert_eq!(service_of(&path, true, None, "/"), None);
        assert_eq!(service_of(&path, true, None, "/a%20b/x"), None);
        let host = ServiceFrom::Host {
            domain: "svc.local".into(),
        };
        assert_eq!(
            service_of(&host, false, Some("users.svc.local:8080"), "/x"),
            Some(("users", None))
        );
        assert_eq!(service_of(&host, false, Some("a.b.svc.local"), "/x"), None);
        assert_eq!(service_of(&host, false, Some("svc.local"), "/x"), None);
    }
}
