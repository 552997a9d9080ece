//! Lookup of a TLS server name (SNI) among exact names and `*.domain`
//! wildcards, as certificates and SNI routes use them.
//!
//! An exact name wins over a wildcard; a wildcard covers one label only
//! (`*.example.com` covers `a.example.com`, not `example.com` nor
//! `a.b.example.com`, RFC 6125 §6.4.3); names compare without case and
//! without a trailing dot. The first entry for a name wins it.

use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct NameTable<T> {
    exact: HashMap<String, T>,
    /// Keyed by the domain after `*.`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for NameTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> NameTable<T> {
    /// Adds `name` (lowercase; `*.domain` for a wildcard) unless an earlier
    /// entry has it.
    pub fn insert(&mut self, name: &str, value: T) {
        let table = match name.strip_prefix("*.") {
            Some(domain) => self.wildcard.entry(domain.to_owned()),
            None => self.exact.entry(name.to_owned()),
        };
        table.or_insert(value);
    }

    pub fn lookup(&self, name: &str) -> Option<&T> {
        let name = name.trim_end_matches('.');
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        self.exact.get(name).or_else(|| {
            let (_, domain) = name.split_once('.')?;
            self.wildcard.get(domain)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// Whether `pattern` is a name or `*.name` that a table can hold:
/// lowercase-able DNS labels, at least two for a wildcard's domain.
pub fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    let labels_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    labels_ok && (name.len() == pattern.len() || name.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_one_label_wildcard() {
        let mut t = NameTable::default();
        t.insert("a.example.com", 1);
        t.insert("*.example.com", 2);
        t.insert("a.example.com", 3);
        assert_eq!(t.lookup("a.example.com"), Some(&1));
        assert_eq!(t.lookup("A.Example.COM."), Some(&1));
        assert_eq!(t.lookup("b.example.com"), Some(&2));
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup("x.b.example.com"), None);
    }

    #[test]
    fn patterns() {
        assert!(valid_pattern("a.example.com"));
        assert!(valid_pattern("*.example.com"));
        assert!(valid_pattern("localhost"));
        assert!(!valid_pattern("*.com"));
        assert!(!valid_pattern("a.*.com"));
        assert!(!valid_pattern(""));
        assert!(!valid_pattern("a..b"));
        assert!(!valid_pattern("*"));
    }
}
