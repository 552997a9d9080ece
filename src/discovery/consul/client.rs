//! A small async Consul HTTP client: GET with blocking-query parameters and
//! the response meta Consul sends (index, leader, last contact), with
//! errors classified the way ../shared/spec/consul-api.md tells clients to
//! (by status, then by substring of the plain-text body).
//!
//! Written on hyper-util's pooled client rather than taken from a crate: the
//! Consul crates on crates.io either block, pull in their own HTTP stack, or
//! hide the blocking-query index this whole module is built around.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::config::ConsulSpec;
use crate::error_chain::ErrorChain;

/// The ACL token; never printed.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Bytes escaped in a path segment; `/` stays (KV keys are paths).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'?')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'&')
    .add(b'+');
/// Bytes escaped in a query value.
const QUERY: &AsciiSet = &PATH.add(b'/').add(b'=');

#[derive(Debug, thiserror::Error)]
pub enum ConsulSetupError {
    #[error("reading the Consul token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the Consul CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("setting up TLS for Consul: {0}")]
    Tls(String),
}

/// Why a request failed. Cloneable so `/status` can show the last one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    #[error(
        "Consul does not know the ACL token (403 ACL not found): check CONSUL_HTTP_TOKEN or `consul.token_file`"
    )]
    AclNotFound,
    #[error("Consul denied the request (403): {0}")]
    PermissionDenied(String),
    #[error("Consul has no cluster leader (500)")]
    NoLeader,
    #[error("Consul is rate limiting requests (429)")]
    RateLimited,
    #[error("Consul answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("Consul request failed: {0}")]
    Transport(String),
    #[error("Consul did not answer in time")]
    Timeout,
    #[error("Consul sent an answer that does not parse: {0}")]
    Decode(String),
}

impl ConsulError {
    /// An ACL problem: retrying will not fix it until someone changes the
    /// token or the policy, so it is logged once rather than per retry.
    pub fn is_acl(&self) -> bool {
        matches!(self, Self::AclNotFound | Self::PermissionDenied(_))
    }
}

/// One answer to a read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// `X-Consul-Index`; 0 when the header is missing.
    pub index: u64,
    pub known_leader: bool,
    pub last_contact: Duration,
    /// `Age` of an answer from the agent's cache: how long the agent has
    /// not heard from the servers about it (0 while it is connected).
    pub age: Option<Duration>,
    pub body: Bytes,
}

impl Reply {
    /// Further behind the leader than `max_stale` allows (zero: no bound),
    /// judged by what `sent` allowed: `X-Consul-LastContact` for a stale or
    /// cached read, `Age` for a cached one. A leader read is never too stale.
    pub fn too_stale(&self, sent: &ReadOptions, max_stale: Duration) -> bool {
        if max_stale.is_zero() {
            return false;
        }
        // Cached answers are stale reads too: the agent fetches with `stale`.
        let behind = (sent.stale || sent.cached) && self.last_contact > max_stale;
        let old = sent.cached && self.age.is_some_and(|age| age > max_stale);
        behind || old
    }
}

/// How one read is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Blocks at Consul until the result's index exceeds this (0: answer now).
    pub index: u64,
    /// How long it may block.
    pub wait: Duration,
    /// `?stale`: any server may answer.
    pub stale: bool,
    /// `?cached`: the agent may answer from its cache. Only for endpoints
    /// that support it (health/service, catalog/services).
    pub cached: bool,
}

/// Shared by every watch; connections are pooled per Consul address.
pub struct ConsulClient {
    base: String,
    token: Option<Token>,
    datacenter: Option<String>,
    stale: bool,
    max_stale: Duration,
    cached: bool,
    wait: Duration,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .finish()
    }
}

impl ConsulClient {
    /// A client for `spec`. The token comes from `token_file` when set, else
    /// from CONSUL_HTTP_TOKEN.
    pub fn new(spec: &ConsulSpec) -> Result<Self, ConsulSetupError> {
        Self::build(spec, None)
    }

    /// A client whose connections leave from `local`: the fleet model
    /// (bench/fleet.rs) gives each in-process sidecar its own address, as
    /// Consul's per-client connection limit sees them.
    pub fn with_local_address(spec: &ConsulSpec, local: IpAddr) -> Result<Self, ConsulSetupError> {
        Self::build(spec, Some(local))
    }

    fn build(spec: &ConsulSpec, local: Option<IpAddr>) -> Result<Self, ConsulSetupError> {
        let token = match &spec.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConsulSetupError::TokenFile {
                        path: path.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("CONSUL_HTTP_TOKEN").ok(),
        }
        .filter(|t| !t.is_empty())
        .map(Token);
        let connector = connector(spec.ca_file.as_deref(), local)?;
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            base: spec.address.clone(),
            token,
            datacenter: spec.datacenter.clone(),
            stale: spec.stale,
            max_stale: spec.max_stale,
            cached: spec.cached,
            wait: spec.wait,
            http,
        })
    }

    /// How long one blocking query may wait at the server.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// The bound on stale and cached answers (zero: none).
    pub fn max_stale(&self) -> Duration {
        self.max_stale
    }

    /// A read as the `[consul]` settings ask for: blocking on `index` for
    /// `wait`, stale when allowed, cached when allowed and `cacheable`.
    pub fn read_options(&self, index: u64, cacheable: bool) -> ReadOptions {
        ReadOptions {
            index,
            wait: self.wait,
            stale: self.stale,
            cached: self.cached && cacheable,
        }
    }

    /// GET `path` (under /v1/, already escaped by [`escape_path`]) with
    /// `query`, as [`read_options`](Self::read_options) sends it, uncached.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
        index: u64,
    ) -> Result<Reply, ConsulError> {
        self.read(path, query, self.read_options(index, false))
            .await
    }

    /// GET `path` (under /v1/, already escaped by [`escape_path`]) with
    /// `query`. With `index > 0` the read blocks at Consul for up to
    /// `wait`. A KV 404 is a reply, not an error: it still carries an index
    /// to block on.
    pub async fn read(
        &self,
        path: &str,
        query: &[(&str, &str)],
        sent: ReadOptions,
    ) -> Result<Reply, ConsulError> {
        let mut url = format!("{}/v1/{path}?", self.base);
        let mut first = true;
        let mut param = |k: &str, v: Option<&str>| {
            if !first {
                url.push('&');
            }
            first = false;
            url.push_str(k);
            if let Some(v) = v {
                url.push('=');
                url.extend(utf8_percent_encode(v, QUERY));
            }
        };
        for (k, v) in query {
            param(k, Some(v));
        }
        if let Some(dc) = &self.datacenter
            && !query.iter().any(|(k, _)| *k == "dc")
        {
            param("dc", Some(dc));
        }
        if sent.stale {
            param("stale", None);
        }
        if sent.cached {
            param("cached", None);
        }
        let wait_ms = sent.wait.as_millis().to_string() + "ms";
        if sent.index > 0 {
            param("index", Some(&sent.index.to_string()));
            param("wait", Some(&wait_ms));
        }
        // Consul adds up to wait/16 of jitter; leave room for it and for
        // the network, or every long poll would be cut off.
        let limit = if sent.index > 0 {
            sent.wait + sent.wait / 16 + Duration::from_secs(5)
        } else {
            Duration::from_secs(30)
        };
        // Simple-cache endpoints (catalog/services) refetch an entry older
        // than max-age; background-refresh ones (health/service) ignore the
        // header and report `Age`, which `Reply::too_stale` checks.
        let cache_control = (sent.cached && !self.max_stale.is_zero())
            .then(|| format!("max-age={}", self.max_stale.as_secs_f64().ceil() as u64));
        self.exchange(Method::GET, &url, Bytes::new(), limit, cache_control)
            .await
    }

    /// PUT `path` (under /v1/, escaped) with a JSON `body`: the agent's
    /// register, deregister and check endpoints. A 404 is a reply (the
    /// agent does not know the service or check), not an error.
    pub async fn put(&self, path: &str, body: Option<Vec<u8>>) -> Result<Reply, ConsulError> {
        let url = format!("{}/v1/{path}", self.base);
        let body = body.map_or_else(Bytes::new, Bytes::from);
        self.exchange(Method::PUT, &url, body, Duration::from_secs(10), None)
            .await
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Bytes,
        limit: Duration,
        cache_control: Option<String>,
    ) -> Result<Reply, ConsulError> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(token) = &self.token {
            req = req.header("x-consul-token", &token.0);
        }
        if let Some(value) = cache_control {
            req = req.header("cache-control", value);
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ConsulError::Transport(e.to_string()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ConsulError::Transport(ErrorChain(&e).to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ConsulError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, ConsulError>((parts.status, parts.headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| ConsulError::Timeout)??;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(Reply {
                status,
                index: header_u64(&headers, "x-consul-index").unwrap_or(0),
                known_leader: headers
                    .get("x-consul-knownleader")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
                last_contact: Duration::from_millis(
                    header_u64(&headers, "x-consul-lastcontact").unwrap_or(0),
                ),
                age: header_u64(&headers, "age").map(Duration::from_secs),
                body,
            });
        }
        Err(classify(status, &body))
    }
}

/// Escapes a key or name for use as a path segment under /v1/.
pub fn escape_path(path: &str) -> String {
    utf8_percent_encode(path, PATH).to_string()
}

/// By status first, then by substring: the body may carry prefixes such as
/// `rpc error making call: `.
fn classify(status: StatusCode, body: &[u8]) -> ConsulError {
    let text = String::from_utf8_lossy(body).trim().to_string();
    match status.as_u16() {
        403 if text.contains("ACL not found") => ConsulError::AclNotFound,
        403 => ConsulError::PermissionDenied(text),
        429 => ConsulError::RateLimited,
        500 if text.contains("No cluster leader") => ConsulError::NoLeader,
        code => ConsulError::Status {
            status: code,
            body: text.chars().take(200).collect(),
        },
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Plain HTTP, or HTTPS trusting `ca_file` (else the system's roots);
/// connections leave from `local` when set.
fn connector(
    ca_file: Option<&Path>,
    local: Option<IpAddr>,
) -> Result<HttpsConnector<HttpConnector>, ConsulSetupError> {
    let provider = Arc::new(crate::tls::provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConsulSetupError::Tls(e.to_string()))?;
    let https = match ca_file {
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let ca_error = |reason: String| ConsulSetupError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| ca_error(e.to_string()))?)
                    .map_err(|e| ca_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("no certificate in the file".into()));
            }
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(builder.with_root_certificates(roots).with_no_client_auth())
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            // Missing system roots only matter for https without a CA file;
            // that connection will then fail with a clear TLS error.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(builder.with_root_certificates(roots).with_no_client_auth())
        }
    };
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false); // the TLS layer above decides the scheme
    tcp.set_local_address(local);
    Ok(https.https_or_http().enable_http1().wrap_connector(tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(last_contact_ms: u64, age_s: Option<u64>) -> Reply {
        Reply {
            status: StatusCode::OK,
            index: 7,
            known_leader: true,
            last_contact: Duration::from_millis(last_contact_ms),
            age: age_s.map(Duration::from_secs),
            body: Bytes::new(),
        }
    }

    fn sent(stale: bool, cached: bool) -> ReadOptions {
        ReadOptions {
            index: 7,
            wait: Duration::from_secs(60),
            stale,
            cached,
        }
    }

    #[test]
    fn too_stale_judges_by_what_the_read_allowed() {
        let max = Duration::from_secs(2);
        // A leader read is never too stale, whatever the headers say.
        assert!(!reply(5_000, Some(60)).too_stale(&sent(false, false), max));
        // Stale: by X-Consul-LastContact.
        assert!(reply(2_001, None).too_stale(&sent(true, false), max));
        assert!(!reply(2_000, None).too_stale(&sent(true, false), max));
        // Cached: by LastContact, and by Age (only a cached answer has one
        // that counts).
        assert!(reply(0, Some(3)).too_stale(&sent(false, true), max));
        assert!(!reply(0, Some(2)).too_stale(&sent(false, true), max));
        assert!(!reply(0, Some(3)).too_stale(&sent(true, false), max));
        // Zero: no bound.
        assert!(!reply(60_000, Some(600)).too_stale(&sent(true, true), Duration::ZERO));
    }

    #[test]
    fn read_options_follow_the_settings() {
        let spec = ConsulSpec {
            stale: true,
            cached: true,
            wait: Duration::from_secs(5),
            ..ConsulSpec::default()
        };
        let client = ConsulClient::new(&spec).expect("client");
        let cacheable = client.read_options(3, true);
        assert_eq!(
            cacheable,
            sent(true, true).with_index(3, Duration::from_secs(5))
        );
        // KV has no agent cache: never `?cached`.
        assert!(!client.read_options(3, false).cached);
        let plain = ConsulClient::new(&ConsulSpec::default()).expect("client");
        assert!(!plain.read_options(0, true).cached, "cached is opt-in");
        assert!(plain.read_options(0, true).stale, "stale is the default");
    }

    impl ReadOptions {
        fn with_index(self, index: u64, wait: Duration) -> Self {
            Self {
                index,
                wait,
                ..self
            }
        }
    }
}
