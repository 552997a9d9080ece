//! The config file: loading, includes and validation with precise errors.
//!
//! ```text
//! file(s) ──read──▶ Raw* (serde, unknown keys rejected) ──validate──▶ Config
//! ```
//!
//! A [`Config`] is fully checked: every reference resolves, every address
//! parses, every bind is unique. Loading collects every problem it can find
//! before failing, each located by file and key path (`backends[1].servers[0]`),
//! so `switchyard check` and a failed reload show them all at once.

mod duration;
pub mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

pub use duration::ConfigDuration;
use raw::{RawConfig, RawFragment};

/// Default values, HAProxy-like but with explicit units.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Shorter than the 5 s after which Node.js, Apache and uvicorn close idle
/// connections, so a request rarely meets a connection the server is
/// closing even when the server sends no `Keep-Alive: timeout` hint (one
/// that does is followed too); HAProxy purges idle server connections
/// after 5 s as well.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// nginx's `send_timeout` and `proxy_read_timeout`.
pub const DEFAULT_CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_STALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9900";
/// DNS defaults: HAProxy's `hold valid`/`hold nx` spirit, with TTLs clamped
/// so a zero TTL cannot cause a query storm and a day-long TTL cannot pin a
/// dead address.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_HOLD_VALID: Duration = Duration::from_secs(30);
pub const DEFAULT_HOLD_NX: Duration = Duration::from_secs(30);
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_DNS_ATTEMPTS: usize = 2;
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(500);
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(10);
/// Consul defaults: consul-template's blocking wait and retry backoff.
pub const DEFAULT_CONSUL_ADDRESS: &str = "http://127.0.0.1:8500";
pub const DEFAULT_CONSUL_WAIT: Duration = Duration::from_secs(60);
pub const DEFAULT_CONSUL_RETRY_MIN: Duration = Duration::from_millis(250);
pub const DEFAULT_CONSUL_RETRY_MAX: Duration = Duration::from_secs(60);
/// consul-template's `max_stale`: stale reads on, answers from a server more
/// than 2 s behind the leader read again from the leader.
pub const DEFAULT_CONSUL_MAX_STALE: Duration = Duration::from_secs(2);
/// The spread of the next blocking query after a change (a fleet of
/// sidecars woken by one change then does not ask again in the same
/// millisecond). Off by default: a change that follows within the pause is
/// seen only when it ends, which took a lone sidecar's p99 from 9 ms to
/// 367 ms at 500 ms (bench/consul_convergence.rs); a fleet turns it on.
pub const DEFAULT_CONSUL_CHANGE_JITTER: Duration = Duration::ZERO;
/// How long the read that confirms a suspect empty answer may block.
pub const DEFAULT_CONSUL_EMPTY_CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// mDNS defaults: go-micro's domain and record TTL; a watched service is
/// asked for again every minute besides the refreshes its TTLs ask for.
pub const DEFAULT_MDNS_DOMAIN: &str = "micro";
pub const DEFAULT_MDNS_QUERY_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_MDNS_TTL: Duration = Duration::from_secs(120);
/// The version go-micro gives a service that sets none.
pub const DEFAULT_MDNS_VERSION: &str = "latest";
/// Upper bound of a server weight, as HAProxy's (1..=256).
pub const MAX_WEIGHT: u32 = 256;
/// Template defaults: consul-template's file mode and command timeout.
pub const DEFAULT_TEMPLATE_PERMS: u32 = 0o644;
/// Request head limit: nginx's large_client_header_buffers is 4 × 8 KiB;
/// hyper cannot go below 8 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Health checks: HAProxy's `inter 2s rise 2 fall 3`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
/// Outlier ejection: Envoy's consecutive-5xx detector (on only when
/// `outlier` is written), with a larger cap.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// Connect failures in a row that eject an endpoint, on by default: a
/// refused or timed-out connect is local evidence (Envoy's local-origin
/// detector, HAProxy's `observe layer4`).
pub const DEFAULT_CONSECUTIVE_CONNECT_FAILURES: u32 = 3;
/// Short, because getting back is cheap: after the period one trial
/// request goes to the endpoint, and a failed trial connect is retried
/// elsewhere at no cost to the client.
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// Retries: two more attempts on a failed connect, within linkerd's
/// default budget (20 % of requests plus 10 a second).
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_PERCENT: u32 = 20;
pub const DEFAULT_RETRY_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated configuration: what `table::compile` turns into a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The files whose change means a reload: the main file, every included
    /// file that is not a template's output, and every template source.
    pub files: Vec<PathBuf>,
    pub admin_bind: SocketAddr,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    pub limits: Limits,
    pub resolver: ResolverSpec,
    /// Set when the file has `[consul]` or a backend uses Consul.
    pub consul: Option<ConsulSpec>,
    /// Set when the file has `[mdns]`, or a backend or a registration
    /// uses mDNS.
    pub mdns: Option<MdnsSpec>,
    pub kv: Option<KvSpec>,
    pub templates: Vec<TemplateSpec>,
    pub register: Vec<RegisterSpec>,
    pub listeners: Vec<ListenerSpec>,
    pub routes: Vec<RouteSpec>,
    pub backends: Vec<BackendSpec>,
}

/// The `[limits]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: None,
        }
    }
}

/// A service to register with the local Consul agent, or to announce by
/// mDNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterSpec {
    pub name: String,
    pub id: String,
    pub registry: Registry,
    /// go-micro's service version (mDNS registrations).
    pub version: String,
    pub address: Option<String>,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: std::collections::BTreeMap<String, String>,
    pub check: Option<RegisterCheck>,
    pub deregister_critical_after: Option<Duration>,
    pub interval: Duration,
}

impl RegisterSpec {
    /// Where Switchyard itself checks the service: the registered address
    /// when it is an IP, else loopback.
    pub fn local_addr(&self) -> SocketAddr {
        let ip = self
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        SocketAddr::new(ip, self.port)
    }
}

/// Where a `[[register]]` service is made known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registry {
    Consul,
    /// Announced on the local network by multicast DNS: the go-micro way,
    /// or as a DNS-SD service when the name is a service type.
    Mdns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterCheck {
    pub kind: RegisterCheckKind,
    /// Consul's interval (http, tcp) or Switchyard's own (ttl).
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterCheckKind {
    Http {
        path: String,
    },
    Tcp,
    /// Switchyard checks the service (HTTP `path`, or a connect) and passes
    /// or fails the TTL.
    Ttl {
        ttl: Duration,
        path: Option<String>,
    },
}

/// The `[kv]` section: a directory whose files are keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSpec {
    /// Absolute.
    pub dir: PathBuf,
}

/// One `[[templates]]` block. Paths are absolute (relative ones are taken
/// from the config file's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// The source as written in the file: how logs and `/status` name it.
    pub name: Arc<str>,
    pub source: PathBuf,
    pub destination: PathBuf,
    pub perms: u32,
    pub backup: bool,
    pub command: Option<String>,
    pub command_timeout: Duration,
    pub wait: Option<Wait>,
    /// A `key()` that does not exist fails the render instead of holding it.
    pub error_on_missing_key: bool,
    /// The destination is one of the config's `include`s: a changed output
    /// reloads Switchyard's own config.
    pub included: bool,
}

/// Quiescence bounds of a template (consul-template's `wait`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

/// The `[consul]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSpec {
    /// Scheme, host and port, without a trailing slash.
    pub address: String,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub datacenter: Option<String>,
    /// `?stale` on reads: any server may answer.
    pub stale: bool,
    /// A stale or cached answer older than this (`X-Consul-LastContact`,
    /// `Age`) is read again from the leader; zero: no bound.
    pub max_stale: Duration,
    /// `?cached` on the endpoints the agent caches (health/service,
    /// catalog/services), with `Cache-Control: max-age` from `max_stale`.
    pub cached: bool,
    pub wait: Duration,
    pub state_file: Option<PathBuf>,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Upper bound of the random pause before a watch's next blocking
    /// query after its index moved.
    pub change_jitter: Duration,
    /// How long the second read of a suspect empty answer may block.
    pub empty_confirm_wait: Duration,
}

impl Default for ConsulSpec {
    /// Every default, with the default address (not CONSUL_HTTP_ADDR).
    fn default() -> Self {
        Self {
            address: DEFAULT_CONSUL_ADDRESS.to_string(),
            token_file: None,
            ca_file: None,
            datacenter: None,
            stale: true,
            max_stale: DEFAULT_CONSUL_MAX_STALE,
            cached: false,
            wait: DEFAULT_CONSUL_WAIT,
            state_file: None,
            retry_min: DEFAULT_CONSUL_RETRY_MIN,
            retry_max: DEFAULT_CONSUL_RETRY_MAX,
            change_jitter: DEFAULT_CONSUL_CHANGE_JITTER,
            empty_confirm_wait: DEFAULT_CONSUL_EMPTY_CONFIRM_WAIT,
        }
    }
}

/// The `[mdns]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnsSpec {
    /// Empty: every IPv4 interface that is up and not point-to-point.
    pub interfaces: Vec<MdnsInterface>,
    /// go-micro's domain, without dots (`micro`).
    pub domain: String,
    pub query_interval: Duration,
    /// TTL of announced records, whole seconds.
    pub ttl: Duration,
}

impl Default for MdnsSpec {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            domain: DEFAULT_MDNS_DOMAIN.into(),
            query_interval: DEFAULT_MDNS_QUERY_INTERVAL,
            ttl: DEFAULT_MDNS_TTL,
        }
    }
}

/// An interface mDNS is used on, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MdnsInterface {
    Name(String),
    Addr(std::net::Ipv4Addr),
}

/// What an `mdns_service` names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MdnsTarget {
    /// A go-micro service, by name, in the `[mdns]` domain.
    GoMicro(Arc<str>),
    /// A DNS-SD service type, lowercase, with the final dot:
    /// `_http._tcp.local.`.
    DnsSd(Arc<str>),
}

impl MdnsTarget {
    /// A name ending in `._tcp.local` or `._udp.local` (a final dot
    /// optional) is a DNS-SD service type; anything else a go-micro service.
    pub fn parse(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        let bare = lower.strip_suffix('.').unwrap_or(&lower);
        if bare.ends_with("._tcp.local") || bare.ends_with("._udp.local") {
            Self::DnsSd(format!("{bare}.").into())
        } else {
            Self::GoMicro(name.into())
        }
    }

    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::GoMicro(n) | Self::DnsSd(n) => n,
        }
    }

    /// `go-micro` or `dns-sd`.
    pub fn flavour(&self) -> &'static str {
        match self {
            Self::GoMicro(_) => "go-micro",
            Self::DnsSd(_) => "dns-sd",
        }
    }
}

impl fmt::Display for MdnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[resolver]` section: how backend host names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSpec {
    /// `None`: the system's configuration (/etc/resolv.conf).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Bounds on the refresh interval, whatever the answer's TTL says.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long the last good answer is kept past its TTL expiry while
    /// lookups fail (timeout, SERVFAIL, refused) or are still in flight.
    pub hold_valid: Duration,
    /// How long the last good answer is kept past its TTL expiry once the
    /// name does not exist (NXDOMAIN) or has no addresses.
    pub hold_nx: Duration,
    /// Per query, and the number of tries per nameserver.
    pub timeout: Duration,
    pub attempts: usize,
    /// Retry backoff after a failed lookup, doubled up to `retry_max`, with
    /// jitter (see `backoff`).
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl Default for ResolverSpec {
    fn default() -> Self {
        Self {
            nameservers: None,
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            hold_valid: DEFAULT_HOLD_VALID,
            hold_nx: DEFAULT_HOLD_NX,
            timeout: DEFAULT_DNS_TIMEOUT,
            attempts: DEFAULT_DNS_ATTEMPTS,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
        }
    }
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            idle: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            stall: DEFAULT_UPSTREAM_STALL_TIMEOUT,
        }
    }
}

/// Client-side timeouts, process-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A request head must arrive completely this long after its first byte.
    pub header_read: Duration,
    /// A client connection with nothing in flight and no traffic is closed.
    pub client_idle: Duration,
    /// While an exchange is under way, a client that takes no response
    /// byte (HTTP/1) or sends no request body byte for this long is cut.
    pub client_stall: Duration,
}

/// Where an item was defined, for errors found after validation (a bind
/// that fails). Never part of equality: moving an item is not a change.
#[derive(Debug, Clone)]
pub struct Location {
    pub file: Arc<Path>,
    pub key: String,
}

impl PartialEq for Location {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`", self.file.display(), self.key)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSpec {
    pub location: Location,
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub mode: Mode,
    pub default_backend: Option<Arc<str>>,
    /// Connections accepted at once; past it the listener stops accepting
    /// and new connections wait in the kernel's backlog (HAProxy `maxconn`).
    pub max_connections: Option<usize>,
    /// How long a connection over `max_connections` waits for a slot.
    pub queue_timeout: Duration,
    /// How long connections may outlive the start of a drain (of the
    /// listener, or of the endpoint they go to); `None`: no deadline of
    /// the listener's own.
    pub drain_timeout: Option<Duration>,
    /// Routes from Consul services' `urlprefix-` tags.
    pub consul_tag_routes: bool,
    /// Add `X-Forwarded-For`, `-Proto` and `-Host` to requests (HTTP).
    pub forwarded_headers: bool,
    /// Set for `https` and `tls` listeners: TLS is terminated here.
    pub tls: Option<Arc<crate::tls::TlsServerSpec>>,
    /// `tcp` listeners: backends chosen by the ClientHello's SNI name, in
    /// config order (the first route for a name wins).
    pub sni_routes: Vec<SniRoute>,
    /// Set when connections start with a PROXY protocol header: the
    /// networks allowed to send one.
    pub proxy_protocol: Option<Arc<[ipnet::IpNet]>>,
    /// One line per request or connection, when set.
    pub access_log: Option<crate::access_log::AccessLogSpec>,
    /// The request ID header (HTTP), when request IDs are on.
    pub request_id: Option<http::HeaderName>,
    /// Start a W3C trace for requests without one (HTTP).
    pub start_traces: bool,
}

impl ListenerSpec {
    /// The `mode` as written: `http`, `https`, `tcp` or `tls`.
    pub fn mode_name(&self) -> &'static str {
        match (self.mode, self.tls.is_some()) {
            (Mode::Http, false) => "http",
            (Mode::Http, true) => "https",
            (Mode::Tcp, false) => "tcp",
            (Mode::Tcp, true) => "tls",
        }
    }
}

/// A `tcp` listener's route on the SNI name of a passed-through handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniRoute {
    /// Lowercase; `*.domain` for a wildcard.
    pub sni: String,
    pub backend: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Any,
    /// Lowercased, without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Suffix(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub listener: Arc<str>,
    pub host: HostPattern,
    pub path_prefix: String,
    pub backend: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub name: Arc<str>,
    pub balance: Balance,
    pub target: BackendTarget,
    pub protocol: Protocol,
    pub timeouts: UpstreamTimeouts,
    pub health_check: Option<HealthCheckSpec>,
    /// With no usable endpoint, use unhealthy and ejected ones.
    pub fail_open: bool,
    /// Passive ejection; always present, as connect-failure ejection is on
    /// by default.
    pub outlier: OutlierSpec,
    pub retry: RetrySpec,
    pub max_connections_per_server: Option<usize>,
    /// A PROXY protocol header to send first on each server connection.
    pub send_proxy: Option<crate::proxy::proxy_protocol::SendProxy>,
    /// TLS to the servers.
    pub tls: Option<Arc<crate::upstream::tls::UpstreamTls>>,
}

/// Active health checks of a backend's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub jitter: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    Tcp,
    Http {
        path: String,
        host: Option<String>,
        /// Inclusive range of statuses that pass.
        expect: (u16, u16),
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2: passes when the answer
    /// is SERVING.
    Grpc {
        /// The service asked about; "" is the server as a whole.
        service: String,
        /// The `:authority` (default: the endpoint's address).
        host: Option<String>,
    },
}

/// Passive ejection: an endpoint whose connects fail
/// `consecutive_connect_failures` times in a row, or whose requests fail
/// `consecutive_failures` times in a row (connect errors, broken
/// exchanges, timeouts, 5xx), is ejected for `base_ejection` × the times
/// it was ejected in a row, at most `max_ejection`; 0 turns a detector off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSpec {
    pub consecutive_failures: u32,
    pub consecutive_connect_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// Without an `outlier` table: connect failures eject, 5xx answers do not.
impl Default for OutlierSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 0,
            consecutive_connect_failures: DEFAULT_CONSECUTIVE_CONNECT_FAILURES,
            base_ejection: DEFAULT_BASE_EJECTION,
            max_ejection: DEFAULT_MAX_EJECTION,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySpec {
    /// Attempts after the first.
    pub retries: u32,
    /// Also retry idempotent requests without a body whose exchange broke
    /// before any response byte.
    pub on_reset: bool,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            retries: DEFAULT_RETRIES,
            on_reset: false,
            budget_percent: DEFAULT_RETRY_PERCENT,
            budget_min_per_second: DEFAULT_RETRY_MIN_PER_SECOND,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    /// A pooled upstream connection idle longer than this is not reused.
    pub idle: Duration,
    /// Time allowed for the upstream's response head (HTTP), else 504.
    pub request: Duration,
    /// After the head, a response body that brings no byte for this long
    /// is cut and its connection closed.
    pub stall: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    P2c,
    Hash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    ClientAddr,
    /// Falls back to the client address when the request lacks the header.
    Header(HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendTarget {
    Servers(Vec<ServerSpec>),
    Respond(RespondSpec),
    /// Passing instances of a Consul service.
    Consul(ConsulTarget),
    /// The instances of a service announced by mDNS.
    Mdns(MdnsTarget),
    /// A gateway route's: the Consul service the request names, with a
    /// backend made on demand.
    Gateway(GatewaySpec),
}

/// How a gateway route finds the service a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    pub from: ServiceFrom,
    /// Forward `/{service}/rest` as `/rest`.
    pub strip_service: bool,
    /// An on-demand backend unused this long is retired (its watch stops).
    pub idle_timeout: Duration,
    /// Services are go-micro services found by mDNS (`[mdns]` without
    /// `[consul]`), not Consul services.
    pub mdns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFrom {
    /// The first path segment.
    Path,
    /// The host's label before `.{domain}`.
    Host { domain: String },
}

/// On-demand gateway backends are retired after five idle minutes.
pub const DEFAULT_GATEWAY_IDLE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsulTarget {
    pub service: Arc<str>,
    pub tag: Option<Arc<str>>,
    pub datacenter: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub target: ServerTarget,
    pub weight: u32,
    /// Start, or a reload that adds it, fails unless the name resolves.
    pub required: bool,
}

/// What a `servers` entry names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerTarget {
    Addr(SocketAddr),
    /// Every A and AAAA record of `name`, each on `port`.
    Host {
        name: Arc<str>,
        port: u16,
    },
    /// Every SRV record of `name` with the lowest priority: its target's
    /// addresses on its port, weighted by its weight.
    Srv {
        name: Arc<str>,
    },
}

/// A name to watch and the kind of records it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsQuery {
    /// Lowercased, as written in the config.
    pub name: Arc<str>,
    pub kind: QueryKind,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum QueryKind {
    /// A and AAAA records; the port comes from the server entry.
    #[serde(rename = "A/AAAA")]
    Addresses,
    /// SRV records, each giving a target, a port and a weight.
    #[serde(rename = "SRV")]
    Srv,
}

impl fmt::Display for DnsQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            QueryKind::Addresses => "A/AAAA",
            QueryKind::Srv => "SRV",
        };
        write!(f, "{} {kind}", self.name)
    }
}

impl ServerTarget {
    /// The DNS name to watch, if any.
    pub fn dns_query(&self) -> Option<DnsQuery> {
        match self {
            Self::Addr(_) => None,
            Self::Host { name, .. } => Some(DnsQuery {
                name: name.clone(),
                kind: QueryKind::Addresses,
            }),
            Self::Srv { name } => Some(DnsQuery {
                name: name.clone(),
                kind: QueryKind::Srv,
            }),
        }
    }
}

impl fmt::Display for ServerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Host { name, port } => write!(f, "{name}:{port}"),
            Self::Srv { name } => f.write_str(name),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RespondSpec {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl BackendSpec {
    /// A backend with every optional setting at its default: round robin,
    /// HTTP/1.1, no checks or ejection, default retries. For the backends
    /// Switchyard makes itself (gateway routes, tag routes).
    pub fn with_defaults(
        name: Arc<str>,
        target: BackendTarget,
        timeouts: UpstreamTimeouts,
    ) -> Self {
        Self {
            name,
            balance: Balance::RoundRobin,
            target,
            protocol: Protocol::Http1,
            timeouts,
            health_check: None,
            fail_open: false,
            outlier: OutlierSpec::default(),
            retry: RetrySpec::default(),
            max_connections_per_server: None,
            send_proxy: None,
            tls: None,
        }
    }

    pub fn servers(&self) -> &[ServerSpec] {
        match &self.target {
            BackendTarget::Servers(s) => s,
            BackendTarget::Respond(_)
            | BackendTarget::Consul(_)
            | BackendTarget::Mdns(_)
            | BackendTarget::Gateway(_) => &[],
        }
    }
}

// === errors ===

/// One problem, located by file and key path such as `backends[1].servers[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: Arc<Path>,
    /// Empty when the problem is not tied to one key (a syntax error).
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.problem
            )
        }
    }
}

/// Every problem found in one load, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

// === loading ===

/// One parsed file with where it came from, so problems can name it.
pub(crate) struct Sourced<T> {
    pub file: Arc<Path>,
    pub raw: T,
}

/// Reads and validates the config file and its includes. Before any
/// template has rendered: a certificate file that is a template's
/// destination is read from disk if there, and skipped if not (this first
/// reading tells which templates to render; [`load_with`] then reads the
/// config they complete).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_inner(path, None)
}

pub fn load_with(
    path: &Path,
    rendered: &dyn Fn(&Path) -> Option<Arc<str>>,
) -> Result<Config, ConfigErrors> {
    load_inner(path, Some(rendered))
}

/// The latest output of the template whose destination a file is.
type RenderedOutput<'a> = &'a dyn Fn(&Path) -> Option<Arc<str>>;

fn load_inner(path: &Path, rendered: Option<RenderedOutput<'_>>) -> Result<Config, ConfigErrors> {
    let main_file: Arc<Path> = Arc::from(absolute(path));
    let main: RawConfig = parse_file(&main_file).map_err(ConfigErrors)?;
    let base = main_file.parent().unwrap_or_else(|| Path::new("."));
    let destinations: Vec<PathBuf> = main
        .templates
        .iter()
        .map(|t| absolute(&base.join(&t.destination)))
        .collect();
    let mut fragments = Vec::with_capacity(main.include.len());
    let mut problems = Vec::new();
    for (i, inc) in main.include.iter().enumerate() {
        let inc_path: Arc<Path> = Arc::from(absolute(&base.join(inc)));
        let parsed = if destinations.iter().any(|d| **d == *inc_path) {
            let text = rendered.and_then(|r| r(&inc_path)).unwrap_or_default();
            parse_str::<RawFragment>(&inc_path, &text).map(|raw| (raw, true))
        } else {
            parse_file::<RawFragment>(&inc_path).map(|raw| (raw, false))
        };
        match parsed {
            Ok((raw, rendered)) => fragments.push((
                Sourced {
                    file: inc_path,
                    raw,
                },
                rendered,
            )),
            Err(mut e) => {
                if let Some(first) = e.first_mut().filter(|e| e.key.is_empty()) {
                    first.problem = format!("included as `include[{i}]`: {}", first.problem);
                }
                problems.extend(e)
            }
        }
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    // A certificate that is a template's destination is read from the
    // template's latest output, as an include is.
    let read = |file: &Path| -> Result<Option<Vec<u8>>, String> {
        if destinations.iter().any(|d| d == file) {
            return match rendered {
                Some(rendered) => rendered(file)
                    .map(|text| Some(text.as_bytes().to_vec()))
                    .ok_or_else(|| "its template has not rendered yet".to_string()),
                None => Ok(std::fs::read(file).ok()),
            };
        }
        std::fs::read(file).map(Some).map_err(|e| e.to_string())
    };
    validate::validate(
        Sourced {
            file: main_file,
            raw: main,
        },
        fragments,
        &read,
    )
}

/// `path` made absolute without touching the file system (symlinks kept),
/// so an include and a template destination written alike compare equal.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Parses one file, reporting the key path of a type error and the line of
/// a syntax error.
fn parse_file<T: DeserializeOwned>(file: &Arc<Path>) -> Result<T, Vec<ConfigError>> {
    let at = |key: String, problem: String| {
        vec![ConfigError {
            file: file.clone(),
            key,
            problem,
        }]
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| at(String::new(), format!("cannot read file: {e}")))?;
    parse_str(file, &text)
}

pub(crate) fn parse_str<T: DeserializeOwned>(
    file: &Arc<Path>,
    text: &str,
) -> Result<T, Vec<ConfigError>> {
    let located = |e: &toml::de::Error| match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("{} (line {line}, column {col})", e.message().trim_end())
        }
        None => e.message().trim_end().to_string(),
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| {
        vec![ConfigError {
            file: file.clone(),
            key: String::new(),
            problem: format!("syntax error: {}", located(&e)),
        }]
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let mut problem = located(e.inner());
        if problem.contains("untagged enum RawServer") {
            problem = "expected \"ip:port\" or { address = \"ip:port\", weight = N }".into();
        }
        vec![ConfigError {
            file: file.clone(),
            key,
            problem,
        }]
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
