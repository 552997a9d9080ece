//! Picks a listener's certificate for a handshake from the name the client
//! asked for (SNI), by the rules of [`NameTable`], then the listener's
//! default — or no certificate at all, which
//! refuses the handshake, when the listener is configured to refuse.
//!
//! rustls' own `ResolvesServerCertUsingSni` has no default certificate, so
//! a client without SNI (an IP address in the URL, old clients, health
//! checkers) would always be refused; this resolver is ours for that.

use std::sync::Arc;

use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::Certificate;
use super::names::NameTable;

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
    names: NameTable<Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
    /// Handshakes whose SNI was absent or unknown, by what they got.
    defaulted: IntCounter,
    refused: IntCounter,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver")
            .field("fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
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
        let mut names = NameTable::default();
        for cert in certs {
            for name in &cert.names {
                names.insert(name, cert.key.clone());
            }
        }
        let fallback = match unknown {
            UnknownSni::Default => certs.first().map(|c| c.key.clone()),
            UnknownSni::Refuse => None,
        };
        Self {
            names,
            fallback,
            defaulted,
            refused,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = hello.server_name().and_then(|n| self.names.lookup(n)) {
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
