//! TLS on listeners: rustls with the ring crypto provider.
//!
//! A listener's certificates are loaded and checked when its config is
//! validated ([`certs`]), so a bad certificate rejects the reload whole and
//! the running one keeps serving. Each compiled table builds one
//! [`ServerConfig`] per TLS listener, which every worker shares; new
//! handshakes take the table's config, open connections keep the
//! certificate they were made with. Session tickets are encrypted with keys
//! that live for the whole process ([`ticketer`]), so a certificate swap
//! or a reload does not turn resumptions into full handshakes.

pub mod accept;
pub mod certs;
pub mod hello;
pub mod names;
pub mod sni;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ProducesTickets, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::{ServerConfig, SupportedProtocolVersion};

pub use certs::{CertError, Certificate};
pub use sni::{SniResolver, UnknownSni};

/// Sessions kept for TLS 1.2 session-ID resumption, shared by listeners.
const SESSION_CACHE_SIZE: usize = 20_000;

/// The lowest protocol version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// A TLS listener's settings, with its certificates loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServerSpec {
    /// In config order; the first is the default for unknown SNI.
    pub certs: Vec<Certificate>,
    pub min_version: TlsVersion,
    pub unknown_sni: UnknownSni,
    /// HTTP: a request whose Host names another site than the handshake's
    /// SNI gets 421 Misdirected Request.
    pub sni_host_check: bool,
    /// ALPN protocols offered, most preferred first (`h2`, `http/1.1` on
    /// https listeners; none on tls listeners).
    pub alpn: Vec<Vec<u8>>,
    /// Client certificates asked for (mutual TLS).
    pub client_auth: Option<ClientAuth>,
}

/// How a listener verifies client certificates.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub ca_file: std::path::PathBuf,
    pub roots: Arc<rustls::RootCertStore>,
    /// Without a certificate the handshake fails; else it is anonymous.
    pub required: bool,
    /// Carries the verified subject upstream (https).
    pub subject_header: Option<http::HeaderName>,
    /// Of the CA file.
    pub digest: u64,
}

impl PartialEq for ClientAuth {
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
            && self.required == other.required
            && self.subject_header == other.subject_header
            && self.digest == other.digest
    }
}

/// The subject of a verified client certificate, as an RFC 4514 string
/// (`CN=client,O=Example`), for the header that carries it upstream.
pub fn subject_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(parsed.subject().to_string())
}

/// CA certificates from a PEM file, to verify peers with.
pub fn roots_from_pem(file: &std::path::Path, pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("{}: not a PEM certificate: {e}", file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate in the file", file.display()));
    }
    Ok(roots)
}

/// The crypto provider for every TLS context Switchyard makes: *ring*,
/// or AWS-LC with the `aws-lc` cargo feature (see bench/RESULTS.md for
/// the two measured side by side).
pub fn provider() -> CryptoProvider {
    #[cfg(feature = "aws-lc")]
    {
        rustls::crypto::aws_lc_rs::default_provider()
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        rustls::crypto::ring::default_provider()
    }
}

/// A session-ticket encrypter from the chosen provider.
fn new_ticketer() -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc")]
    {
        rustls::crypto::aws_lc_rs::Ticketer::new()
    }
    #[cfg(not(feature = "aws-lc"))]
    {
        rustls::crypto::ring::Ticketer::new()
    }
}

/// The process's session-ticket encrypter: rotates its keys itself (every
/// six hours), and is shared so every worker and every reloaded config can
/// open the tickets any of them issued. `None` if the system's random
/// source failed, in which case no tickets are issued.
fn ticketer() -> Option<Arc<dyn ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match new_ticketer() {
            Ok(t) => Some(t),
            Err(error) => {
                tracing::warn!(%error, "Cannot make a session ticket key; resumption by session ID only");
                None
            }
        })
        .clone()
}

fn session_cache() -> Arc<dyn StoresServerSessions> {
    static CACHE: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    CACHE
        .get_or_init(|| ServerSessionMemoryCache::new(SESSION_CACHE_SIZE))
        .clone()
}

/// Counters a listener's certificate choice adds to.
pub struct SniCounters {
    pub defaulted: prometheus::IntCounter,
    pub refused: prometheus::IntCounter,
}

/// The rustls server config for a listener.
pub fn server_config(
    spec: &TlsServerSpec,
    counters: SniCounters,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    static V1_2_UP: &[&SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    static V1_3_UP: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let versions = match spec.min_version {
        TlsVersion::V1_2 => V1_2_UP,
        TlsVersion::V1_3 => V1_3_UP,
    };
    let resolver = SniResolver::new(
        &spec.certs,
        spec.unknown_sni,
        counters.defaulted,
        counters.refused,
    );
    let provider = Arc::new(provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &spec.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(auth.roots.clone(), provider);
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = spec.alpn.clone();
    config.session_storage = session_cache();
    if let Some(ticketer) = ticketer() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}
