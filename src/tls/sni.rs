//! Picks a listener's certificate for a handshake from the name the client
//! asked for (SNI): an exact name first, then a `*.domain` wildcard one
//! label deep, then the listener's default — or no certificate at all, which
//! refuses the handshake, when the listener is configured to refuse.
//!
//! rustls' own `ResolvesServerCertUsingSni` has no default certificate, so
//! a client without SNI (an IP address in the URL, old clients, health
//! checkers) would always be refused; this resolver is ours for that.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Certificate;

/// What a handshake gets when its SNI names none of the certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSni {
    /// The listener's first certificate (HAProxy's default, nginx's
    /// `default_server`).
    Default,
    /// No certificate: the handshake fails with an alert.
    Refuse,
}

pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the domain after `*.`: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
    /// Handshakes whose SNI was absent or unknown, by what they got.
    defaulted: IntCounter,
    refused: IntCounter,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl SniResolver {
    /// The first certificate listed for a name wins it.
    pub fn new(
        certs: &[Certificate],
        unknown: UnknownSni,
        defaulted: IntCounter,
        refused: IntCounter,
    ) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certs {
            for name in &cert.names {
                let table = match name.strip_prefix("*.") {
                    Some(domain) => wildcard.entry(domain.to_owned()),
                    None => exact.entry(name.clone()),
                };
                table.or_insert_with(|| cert.key.clone());
            }
        }
        let fallback = match unknown {
            UnknownSni::Default => certs.first().map(|c| c.key.clone()),
            UnknownSni::Refuse => None,
        };
        Self {
            exact,
            wildcard,
            fallback,
            defaulted,
            refused,
        }
    }

    /// The certificate for `name`, if one of the listener's names covers it.
    pub fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.');
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        self.exact.get(name).or_else(|| {
            // One label deep only: `*.example.com` covers `a.example.com`,
            // not `example.com` nor `a.b.example.com` (RFC 6125 §6.4.3).
            let (_, domain) = name.split_once('.')?;
            self.wildcard.get(domain)
        })
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = hello.server_name().and_then(|n| self.lookup(n)) {
            return Some(key.clone());
        }
        match &self.fallback {
            Some(key) => {
                self.defaulted.inc();
                Some(key.clone())
            }
            None => {
                self.refused.inc();
                None
            }
        }
    }
}
