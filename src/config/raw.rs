//! Serde model of the TOML file, exactly as written by the user.
//!
//! Every struct rejects unknown keys so that a typo is an error with its key
//! path, never a silently ignored setting. Meaning (addresses, references
//! between sections, defaults) is given by `validate`, not here.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::duration::ConfigDuration;

/// The main config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Further files whose `listeners`, `routes` and `backends` are appended.
    #[serde(default)]
    pub include: Vec<String>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub resolver: RawResolver,
    pub consul: Option<RawConsul>,
    /// Multicast DNS on the local network (go-micro's registry, DNS-SD).
    pub mdns: Option<RawMdns>,
    pub kv: Option<RawKv>,
    #[serde(default)]
    pub templates: Vec<RawTemplate>,
    /// Services to register in Consul (sidecar registration).
    #[serde(default)]
    pub register: Vec<RawRegister>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

/// An included file: the same sections as the main file, minus the ones that
/// only make sense once per process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFragment {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: String,
}

/// Process-wide timeouts; backends may override the upstream ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<ConfigDuration>,
    pub header_read: Option<ConfigDuration>,
    pub client_idle: Option<ConfigDuration>,
    /// A client that takes no response byte, or sends no request body
    /// byte, for this long while an exchange is under way is cut.
    pub client_stall: Option<ConfigDuration>,
    pub upstream_idle: Option<ConfigDuration>,
    pub request: Option<ConfigDuration>,
    /// A response body that brings no byte for this long is cut.
    pub upstream_stall: Option<ConfigDuration>,
}

/// Per-backend overrides of the upstream-side timeouts.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTimeouts {
    pub connect: Option<ConfigDuration>,
    pub upstream_idle: Option<ConfigDuration>,
    pub request: Option<ConfigDuration>,
    pub upstream_stall: Option<ConfigDuration>,
}

/// Process-wide limits on what clients may send.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// A request head larger than this gets 431.
    pub max_header_bytes: Option<usize>,
    /// A request body larger than this gets 413 (default: no limit).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long in-flight work may take to finish after SIGTERM.
    pub grace: Option<ConfigDuration>,
}

/// How backend host names are resolved (HAProxy's `resolvers` section).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    /// `"ip:port"` or `"ip"` (port 53); default: /etc/resolv.conf.
    pub nameservers: Option<Vec<String>>,
    pub min_ttl: Option<ConfigDuration>,
    pub max_ttl: Option<ConfigDuration>,
    pub hold_valid: Option<ConfigDuration>,
    pub hold_nx: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub attempts: Option<usize>,
    pub retry_min: Option<ConfigDuration>,
    pub retry_max: Option<ConfigDuration>,
}

/// How to reach Consul. The token is never part of the file: it comes from
/// CONSUL_HTTP_TOKEN or `token_file`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsul {
    /// `http://host:port` or `https://host:port`; default CONSUL_HTTP_ADDR,
    /// then http://127.0.0.1:8500.
    pub address: Option<String>,
    pub token_file: Option<String>,
    /// PEM file of the CA that signed Consul's certificate (https).
    pub ca_file: Option<String>,
    pub datacenter: Option<String>,
    /// Allow any server to answer reads (`?stale`), as consul-template does.
    pub stale: Option<bool>,
    /// consul-template's `max_stale`: a stale or cached answer further
    /// behind than this is read again from the leader.
    pub max_stale: Option<ConfigDuration>,
    /// Let the local agent answer from its cache (`?cached`).
    pub cached: Option<bool>,
    /// How long one blocking query may wait.
    pub wait: Option<ConfigDuration>,
    /// Last known good discovery data, for starting while Consul is down.
    pub state_file: Option<String>,
    pub retry_min: Option<ConfigDuration>,
    pub retry_max: Option<ConfigDuration>,
    /// Random pause (0 to this) before the next blocking query after a change.
    pub change_jitter: Option<ConfigDuration>,
    /// How long the read confirming a suspect empty answer may block.
    pub empty_confirm_wait: Option<ConfigDuration>,
}

/// How Switchyard takes part in multicast DNS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMdns {
    /// Interface names or IPv4 addresses to use; default every IPv4
    /// interface that is up and not point-to-point (loopback included).
    pub interfaces: Option<Vec<String>>,
    /// go-micro's mDNS domain (`micro`).
    pub domain: Option<String>,
    /// How often a watched service is asked for again, besides the
    /// queries at 80-95 % of an instance's TTL.
    pub query_interval: Option<ConfigDuration>,
    /// TTL of the records Switchyard announces for `[[register]]`.
    pub ttl: Option<ConfigDuration>,
}

/// One service Switchyard registers with the local Consul agent, or
/// announces by mDNS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegister {
    pub name: String,
    /// `consul` (default) or `mdns`.
    pub registry: Option<RawRegistry>,
    /// The service version go-micro's mDNS TXT record carries (mdns only).
    pub version: Option<String>,
    /// Default `<name>-<hostname>-<port>`.
    pub id: Option<String>,
    /// The address registered (default: none, Consul uses the node's) and
    /// checked locally (default 127.0.0.1).
    pub address: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub check: Option<RawRegisterCheck>,
    /// Consul removes the service after its check stays critical this long.
    pub deregister_critical_after: Option<ConfigDuration>,
    /// How often the registration is verified (and redone if the agent lost
    /// it).
    pub interval: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRegistry {
    Consul,
    Mdns,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegisterCheck {
    /// `http` / `tcp`: run by Consul; `ttl`: Switchyard checks the service
    /// itself (HTTP `path`, or a connect) and keeps the TTL passing.
    #[serde(rename = "type")]
    pub kind: RawRegisterCheckKind,
    pub path: Option<String>,
    pub interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub ttl: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawRegisterCheckKind {
    Http,
    Tcp,
    Ttl,
}

/// The local key/value directory: a file's path under `dir` is its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKv {
    pub dir: String,
}

/// One consul-template style template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub source: String,
    pub destination: String,
    /// `"0644"` or the TOML octal integer `0o644`.
    pub perms: Option<RawPerms>,
    /// Keep the previous output as `<destination>.bak`.
    #[serde(default)]
    pub backup: bool,
    /// Run with `sh -c` after a render that changed the output.
    pub command: Option<String>,
    pub command_timeout: Option<ConfigDuration>,
    pub wait: Option<RawWait>,
    #[serde(default)]
    pub error_on_missing_key: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawPerms {
    Number(u32),
    Octal(String),
}

/// Quiescence: render once changes stop for `min`, at the latest `max`
/// after the first one (default 4 × `min`, as consul-template).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWait {
    pub min: ConfigDuration,
    pub max: Option<ConfigDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub mode: RawMode,
    pub default_backend: Option<String>,
    pub max_connections: Option<usize>,
    /// With `max_connections`: how long a connection over the limit waits
    /// for a slot before it gets 503 (HTTP) or is closed (TCP).
    pub queue_timeout: Option<ConfigDuration>,
    /// Once the listener drains (removed, shutdown, upgrade) or an
    /// endpoint its connections go to is removed: how long long-lived
    /// connections (TCP, WebSocket, HTTP/2) may go on before they are
    /// closed. Default: until `[shutdown] grace` (or, for a removed
    /// listener or endpoint, until they end).
    pub drain_timeout: Option<ConfigDuration>,
    /// Routes from the `urlprefix-` tags of Consul services (Fabio's
    /// convention).
    #[serde(default)]
    pub consul_tag_routes: bool,
    /// Add `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`
    /// to requests (default true).
    pub forwarded_headers: Option<bool>,
    /// `https` and `tls` listeners: certificate chains and their keys, as
    /// PEM files; the first is the default for unknown SNI.
    #[serde(default)]
    pub certs: Vec<RawCert>,
    /// The lowest TLS version accepted: "1.2" (default) or "1.3".
    pub min_version: Option<RawTlsVersion>,
    /// A handshake whose SNI names no certificate: "default" (the first
    /// certificate, the default) or "refuse".
    pub unknown_sni: Option<RawUnknownSni>,
    /// `https`: a request whose Host differs from the SNI name gets 421
    /// (default true).
    pub sni_host_check: Option<bool>,
    /// `https` and `tls`: PEM CA certificates client certificates are
    /// verified with (mutual TLS).
    pub client_ca: Option<String>,
    /// With `client_ca`: "required" (default) or "optional".
    pub client_auth: Option<RawClientAuth>,
    /// `https` with `client_ca`: the request header that carries a verified
    /// client certificate's subject upstream (any such header a client
    /// sends is removed).
    pub client_subject_header: Option<String>,
    /// `tcp`: route TLS connections on their ClientHello's SNI name
    /// without terminating TLS.
    #[serde(default)]
    pub sni_routes: Vec<RawSniRoute>,
    /// Read a PROXY protocol header (v1 or v2) first on every connection;
    /// only from `trusted` networks.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Networks (CIDR, or single addresses) allowed to send PROXY headers.
    #[serde(default)]
    pub trusted: Vec<String>,
    /// One line per request (HTTP) or connection (TCP); none by default.
    pub access_log: Option<RawAccessLog>,
    /// `http` and `https`: the request ID header (on by default, as
    /// `X-Request-Id`).
    pub request_id: Option<RawRequestId>,
    /// `http` and `https`: W3C trace context; passed through untouched,
    /// and started when absent with `start = true`.
    pub trace_context: Option<RawTraceContext>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// "json" (default), "haproxy", "combined", or a template of `%field`s.
    pub format: Option<String>,
    /// A file, or "-" for standard output (default).
    pub path: Option<String>,
    /// The share of lines written, 0.0 to 1.0 (default 1.0); errors are
    /// always written.
    pub sample: Option<f64>,
    /// "all" (default) or "errors".
    pub only: Option<RawOnly>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawOnly {
    All,
    Errors,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestId {
    /// Default true for `http` and `https` listeners.
    pub enabled: Option<bool>,
    /// Default "x-request-id".
    pub header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraceContext {
    /// Start a trace (a new `traceparent`) for requests without a valid
    /// one (default false).
    pub start: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA certificates to verify servers with (default: the system's).
    pub ca_file: Option<String>,
    /// The name servers are verified under (default: each server's IP).
    pub server_name: Option<String>,
    /// A client certificate and key to present (mutual TLS).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Verify servers' certificates (default true).
    pub verify: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawSendProxy {
    V1,
    V2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniRoute {
    pub sni: String,
    pub backend: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    /// Default: the key is in the `cert` file too (HAProxy's combined PEM).
    pub key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RawTlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawUnknownSni {
    Default,
    Refuse,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawMode {
    #[default]
    Http,
    Tcp,
    /// HTTP over TLS terminated here.
    Https,
    /// TLS terminated here, then TCP.
    Tls,
}

impl RawMode {
    /// The protocol spoken once any TLS is off.
    pub fn inner(self) -> crate::config::Mode {
        match self {
            Self::Http | Self::Https => crate::config::Mode::Http,
            Self::Tcp | Self::Tls => crate::config::Mode::Tcp,
        }
    }

    pub fn terminates_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub listener: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// The backend; or, with `service_from`, none: the Consul service named
    /// by the request.
    pub backend: Option<String>,
    /// `path`: `/{service}/...`; `host`: `{service}.{domain}`.
    pub service_from: Option<RawServiceFrom>,
    pub domain: Option<String>,
    /// With `service_from = "path"`: forward `/{service}/rest` as `/rest`.
    #[serde(default)]
    pub strip_service: bool,
    /// On-demand backends unused this long are retired.
    pub idle_timeout: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawServiceFrom {
    Path,
    Host,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    #[serde(default)]
    pub balance: RawBalance,
    /// With `balance = "hash"`: hash this request header instead of the
    /// client address.
    pub hash_header: Option<String>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
    pub respond: Option<RawRespond>,
    /// Endpoints from Consul: passing instances of this service.
    pub consul_service: Option<String>,
    pub consul_tag: Option<String>,
    pub consul_datacenter: Option<String>,
    /// Endpoints from mDNS: the instances of a go-micro service
    /// (`"greeter"`), or of a DNS-SD service type (`"_http._tcp.local."`).
    pub mdns_service: Option<String>,
    /// `http1` (default) or `http2` (prior knowledge, h2c) towards the servers.
    pub protocol: Option<RawProtocol>,
    #[serde(default)]
    pub timeouts: RawBackendTimeouts,
    /// Active health checks of each endpoint.
    pub health_check: Option<RawHealthCheck>,
    /// With every endpoint unhealthy or ejected, use them all anyway.
    #[serde(default)]
    pub fail_open: bool,
    /// Passive outlier ejection.
    pub outlier: Option<RawOutlier>,
    /// Further attempts on other endpoints after a failure.
    pub retries: Option<u32>,
    /// `connect` (default) and `reset`.
    pub retry_on: Option<Vec<String>>,
    pub retry_budget: Option<RawRetryBudget>,
    /// Requests (HTTP) or connections (TCP) in flight per endpoint.
    pub max_connections_per_server: Option<usize>,
    /// Send a PROXY protocol header ("v1" or "v2") on each connection to
    /// a server (backends of tcp and tls listeners).
    pub send_proxy: Option<RawSendProxy>,
    /// TLS to the servers.
    pub tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// `tcp` (connect), `http` (a GET whose status is in `expect_status`)
    /// or `grpc` (`grpc.health.v1.Health/Check`, which must say SERVING).
    #[serde(rename = "type")]
    pub kind: RawCheckKind,
    pub path: Option<String>,
    /// Host header of HTTP checks, `:authority` of gRPC checks (default:
    /// the endpoint's address).
    pub host: Option<String>,
    /// The service a gRPC check asks about (default "": the whole server).
    pub service: Option<String>,
    /// `"200-399"` or `"200"`.
    pub expect_status: Option<String>,
    pub interval: Option<ConfigDuration>,
    pub timeout: Option<ConfigDuration>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    /// A random extra delay in `[0, jitter)` before each check.
    pub jitter: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawCheckKind {
    Tcp,
    Http,
    Grpc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failed requests in a row (5xx, broken exchange, timeout, failed
    /// connect); default 5 once `outlier` is written, 0 = off.
    pub consecutive_failures: Option<u32>,
    /// Failed connects in a row; default 3 (with or without `outlier`), 0 = off.
    pub consecutive_connect_failures: Option<u32>,
    pub base_ejection: Option<ConfigDuration>,
    pub max_ejection: Option<ConfigDuration>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    /// Retries allowed as a share of requests, in percent.
    pub percent: Option<u32>,
    /// Retries always allowed per second, whatever the traffic.
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    #[default]
    RoundRobin,
    LeastConn,
    P2c,
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Http1,
    Http2,
}

/// `"10.0.0.1:80"`, `"web.internal:80"`, `"_web._tcp.service.consul"` or
/// `{ address = "...", weight = 3, required = true }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawServer {
    Address(String),
    Detailed(RawServerDetailed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerDetailed {
    pub address: String,
    pub weight: Option<u32>,
    /// A host name that must resolve at start (and when a reload adds it).
    #[serde(default)]
    pub required: bool,
}

/// The built-in responder: a fixed answer with no upstream at all.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<u16>,
    pub body: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
