//! Certificates and keys from PEM text: parsed, checked against each
//! other and the clock, and described (names, expiry) for SNI and /status.
//!
//! A certificate that fails any check is an error naming the file and the
//! reason, so the reload that brought it is rejected whole and the running
//! certificate keeps serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// Why a certificate or key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct CertError {
    pub file: PathBuf,
    pub reason: String,
}

fn problem(file: &Path, reason: impl Into<String>) -> CertError {
    CertError {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// A certificate chain with its private key, ready for handshakes.
#[derive(Clone)]
pub struct Certificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The DNS names the certificate is for (subjectAltName, else the
    /// subject's common name), lowercased; a wildcard keeps its `*.`.
    pub names: Vec<String>,
    /// The end of the leaf's validity, in seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
    /// Of the PEM text of both files: a renewal under the same file names
    /// is a change.
    digest: u64,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_file", &self.cert_file)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses and checks a chain and its key: both parse, the key is the
    /// leaf's, and `now` lies within the leaf's validity.
    pub fn from_pem(
        cert_file: &Path,
        cert_pem: &[u8],
        key_file: &Path,
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, CertError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(cert_file, format!("not a PEM certificate: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(problem(cert_file, "no certificate in the file"));
        };
        let (names, not_before, not_after) = describe(leaf).map_err(|r| problem(cert_file, r))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| problem(key_file, format!("no usable private key: {e}")))?;
        let provider = super::provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => problem(
                key_file,
                format!("the key does not match {}", cert_file.display()),
            ),
            other => problem(key_file, format!("unusable private key: {other}")),
        })?;
        let now = unix_seconds(now);
        if now >= not_after {
            return Err(problem(
                cert_file,
                format!("the certificate expired at {}", rfc3339(not_after)),
            ));
        }
        if now < not_before {
            return Err(problem(
                cert_file,
                format!(
                    "the certificate is not valid before {}",
                    rfc3339(not_before)
                ),
            ));
        }
        if names.is_empty() {
            return Err(problem(
                cert_file,
                "the certificate names no DNS name (subjectAltName or common name)",
            ));
        }
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        digest.update(cert_pem);
        digest.update(key_pem);
        Ok(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            names,
            not_after,
            key: Arc::new(certified),
            digest: digest.digest(),
        })
    }
}

/// The leaf's DNS names and validity period.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
    };
    // RFC 6125: the common name counts only when there is no DNS SAN.
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .filter(|cn| cn.contains('.') && !cn.contains(' '))
                .map(str::to_ascii_lowercase),
        );
    }
    let validity = cert.validity();
    Ok((
        names,
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Seconds since the epoch as an RFC 3339 UTC time, for messages.
pub fn rfc3339(seconds: i64) -> String {
    let t = if seconds >= 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - std::time::Duration::from_secs(seconds.unsigned_abs())
    };
    humantime::format_rfc3339_seconds(t).to_string()
}
