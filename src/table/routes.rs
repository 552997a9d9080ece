//! Host and path matching for one HTTP listener.
//!
//! Most specific wins, whatever the file order: an exact host beats a
//! `*.suffix` (a longer suffix beats a shorter one), which beats any host;
//! among routes of the same host the longest matching `path_prefix` wins. If
//! the best host has no matching path, less specific hosts are tried.
//!
//! Lookups cost a few hash probes: one for the exact host, one per dot in the
//! host for suffixes, and one per distinct prefix length in a path table.

use rustc_hash::FxHashMap as HashMap;

use crate::config::HostPattern;

// FxHash rather than SipHash: the keys come from the operator's config, not
// from clients (a request's host only probes), so flooding the maps with
// colliding keys is not open to an attacker, and Fx is several times faster
// on short strings, on every request and in every compile.

/// Longest host we normalise on the stack; longer ones never match a route
/// because DNS names are limited to 253 bytes.
const MAX_HOST_LEN: usize = 255;

#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<Box<str>, PathTable<T>>,
    suffix: HashMap<Box<str>, PathTable<T>>,
    any: PathTable<T>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::default(),
            suffix: HashMap::default(),
            any: PathTable::default(),
        }
    }
}

impl<T> Router<T> {
    pub fn insert(&mut self, host: &HostPattern, path_prefix: &str, target: T) {
        let table = match host {
            HostPattern::Any => &mut self.any,
            HostPattern::Exact(h) => self.exact.entry(h.as_str().into()).or_default(),
            HostPattern::Suffix(s) => self.suffix.entry(s.as_str().into()).or_default(),
        };
        table.insert(path_prefix, target);
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffix.is_empty() && self.any.by_len.is_empty()
    }

    /// The target for a request; `host` may carry a port and any case.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&T> {
        if let Some(host) = host {
            let mut buf = [0u8; MAX_HOST_LEN];
            if let Some(host) = normalize_host(host, &mut buf) {
                if let Some(t) = self.exact.get(host).and_then(|t| t.lookup(path)) {
                    return Some(t);
                }
                if !self.suffix.is_empty() {
                    // ".b.example.com", then ".example.com", then ".com".
                    for (i, _) in host.match_indices('.') {
                        if let Some(t) = self.suffix.get(&host[i..]).and_then(|t| t.lookup(path)) {
                            return Some(t);
                        }
                    }
                }
            }
        }
        self.any.lookup(path)
    }
}

/// Lowercases `host` and strips its port without allocating; `None` when it
/// cannot be a DNS name.
fn normalize_host<'a>(host: &'a str, buf: &'a mut [u8; MAX_HOST_LEN]) -> Option<&'a str> {
    let host = if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" → "[::1]"
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _port)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if !host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(host);
    }
    let out = buf.get_mut(..host.len())?;
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Path prefixes of one host, grouped by length, longest first.
#[derive(Debug)]
struct PathTable<T> {
    by_len: Vec<(usize, HashMap<Box<str>, T>)>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self { by_len: Vec::new() }
    }
}

impl<T> PathTable<T> {
    fn insert(&mut self, prefix: &str, target: T) {
        let len = prefix.len();
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, HashMap::default()));
                pos
            }
        };
        self.by_len[pos].1.insert(prefix.into(), target);
    }

    fn lookup(&self, path: &str) -> Option<&T> {
        self.by_len.iter().find_map(|(len, map)| {
            let prefix = path.get(..*len)?;
            map.get(prefix)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router<&'static str> {
        let mut r = Router::default();
        r.insert(&HostPattern::Any, "/", "default");
        r.insert(&HostPattern::Any, "/static/", "static");
        r.insert(&HostPattern::Exact("api.example.com".into()), "/", "api");
        r.insert(
            &HostPattern::Exact("api.example.com".into()),
            "/v2/",
            "api-v2",
        );
        r.insert(&HostPattern::Suffix(".example.com".into()), "/", "wild");
        r.insert(
            &HostPattern::Suffix(".eu.example.com".into()),
            "/",
            "wild-eu",
        );
        r.insert(
            &HostPattern::Exact("only.example.com".into()),
            "/x/",
            "only-x",
        );
        r
    }

    #[test]
    fn most_specific_host_then_longest_prefix() {
        let r = router();
        assert_eq!(
            r.route(Some("api.example.com"), "/v2/users"),
            Some(&"api-v2")
        );
        assert_eq!(r.route(Some("API.Example.COM:8080"), "/v1"), Some(&"api"));
        assert_eq!(r.route(Some("www.example.com"), "/"), Some(&"wild"));
        assert_eq!(r.route(Some("a.eu.example.com"), "/"), Some(&"wild-eu"));
        assert_eq!(r.route(Some("other.org"), "/static/a.css"), Some(&"static"));
        assert_eq!(r.route(None, "/anything"), Some(&"default"));
        assert_eq!(r.route(Some("example.com"), "/"), Some(&"default"));
    }

    #[test]
    fn falls_back_when_the_best_host_has_no_matching_path() {
        let r = router();
        assert_eq!(r.route(Some("only.example.com"), "/x/1"), Some(&"only-x"));
        assert_eq!(r.route(Some("only.example.com"), "/y"), Some(&"wild"));
    }

    #[test]
    fn no_match_without_catch_all() {
        let mut r = Router::default();
        r.insert(&HostPattern::Exact("a.test".into()), "/api", "a");
        assert_eq!(r.route(Some("a.test"), "/ap"), None);
        assert_eq!(r.route(Some("a.test"), "/apix"), Some(&"a"));
        assert_eq!(r.route(Some("b.test"), "/api"), None);
        assert_eq!(r.route(Some("[::1]:80"), "/api"), None);
        let long = "a".repeat(400);
        assert_eq!(r.route(Some(&long.to_uppercase()), "/api"), None);
    }
}
