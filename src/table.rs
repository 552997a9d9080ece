//! Compiled routing snapshots.
//!
//! A [`Table`] is what the data plane reads: the listeners, routes and
//! backends of one validated config, resolved for fast lookup, with metric
//! handles already attached. A table never changes; the control plane
//! compiles a new one and [`TableHandle::publish`] swaps it in with one
//! atomic store.
//!
//! ```text
//! Config ──compile──▶ Table ──publish──▶ TableHandle ──current()──▶ proxy
//! ```
//!
//! Endpoint sets are not part of a table's own value: each [`Backend`] owns an
//! `ArcSwap<EndpointSet>` that discovery can replace on its own. `compile`
//! reuses the previous `Arc<Backend>` when a definition is unchanged, and the
//! previous [`EndpointState`] of every (backend, address) that stays; that is
//! how endpoints, health and pooled connections survive a reload.

pub mod diff;
pub mod gateway;
pub mod routes;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::FxHashMap as HashMap;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::RetrySpec;
use crate::config::{BackendSpec, BackendTarget, Balance, Config, ListenerSpec, ServerTarget};
use crate::discovery::consul::{self, ConsulWatch, WatchData, WatchKey};
use crate::discovery::dns::{DnsName, DnsQuery};
use crate::discovery::mdns::MdnsWatch;
use crate::metrics::{BackendCounters, ListenerMetrics, Metrics, RequestMetrics};
use crate::upstream::health::{EjectReason, Outcome};
use crate::upstream::select::{self, Endpoint, EndpointSet, HashInput, Origin, Policy};
use crate::upstream::state::{ActiveGuard, EndpointState};
use routes::Router;

/// Identifies a listener socket across swaps: an unchanged key keeps its
/// socket. Port-0 binds get a fresh port each time they are bound, so they
/// are told apart by listener name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub bind: SocketAddr,
    pub ephemeral_name: Option<Arc<str>>,
}

impl ListenerKey {
    pub fn of(spec: &ListenerSpec) -> Self {
        Self {
            bind: spec.bind,
            ephemeral_name: (spec.bind.port() == 0).then(|| spec.name.clone()),
        }
    }
}

/// A backend and its live endpoints.
pub struct Backend {
    pub spec: BackendSpec,
    /// Replaced whole by whoever owns the endpoint list (config or discovery).
    pub endpoints: ArcSwap<EndpointSet>,
    /// Turn counter for round robin and tie-breaking; survives endpoint changes.
    pub(crate) turn: AtomicUsize,
    pub counters: BackendCounters,
    /// Bounds retries to a share of requests.
    pub retry_budget: RetryBudget,
    /// The DNS names among the servers, whose answers make up part of the
    /// endpoint set.
    pub dns: Vec<Arc<DnsName>>,
    /// The Consul watch of a `consul_service` backend.
    pub consul: Option<Arc<ConsulWatch>>,
    /// The mDNS watch of an `mdns_service` backend.
    pub mdns: Option<Arc<MdnsWatch>>,
    /// A gateway route's registry of on-demand backends.
    pub gateway: Option<Arc<crate::table::gateway::Gateway>>,
    /// Request metric handles of this backend per listener, carried to the
    /// next definition of the backend: resolving a label set takes a lock in
    /// the prometheus crate, and a 10,000-route reload would otherwise
    /// resolve 60,000 of them. Only `compile` touches it.
    request_metrics: Mutex<Vec<(Arc<str>, Arc<RequestMetrics>)>>,
}

impl Backend {
    pub fn name(&self) -> &Arc<str> {
        &self.spec.name
    }

    /// Takes in how one attempt to `state` ended: counts a failed connect
    /// (and asks for an early DNS lookup: the address may be gone, replaced
    /// by one the TTL has not shown yet) and applies passive ejection.
    pub fn report(&self, state: &EndpointState, outcome: Outcome) {
        if outcome == Outcome::ConnectFailed {
            self.counters.connect_errors.inc();
            for name in &self.dns {
                name.refresh_soon();
            }
            if let Some(mdns) = &self.mdns {
                mdns.connect_failed(state.addr);
            }
        }
        let Some(ejection) = state.report(outcome, &self.spec.outlier, &self.endpoints) else {
            return;
        };
        match ejection.reason {
            EjectReason::ConnectFailures => self.counters.ejected_connect.inc(),
            EjectReason::FailingRequests => self.counters.ejected_failing.inc(),
        }
        tracing::warn!(
            backend = %self.name(),
            endpoint = %state.addr,
            reason = ?ejection.reason,
            period = ?ejection.period,
            "Endpoint ejected"
        );
    }

    /// Picks an endpoint for an attempt, never one in `tried`, and counts
    /// the attempt in its in-flight count until the guard drops.
    pub fn acquire(&self, input: &dyn HashInput, tried: &[SocketAddr]) -> Option<ActiveGuard> {
        let set = self.endpoints.load();
        self.pick(&set, input, tried).map(|e| e.state.acquire())
    }

    /// The endpoint for another attempt after the one on `from` failed
    /// (its connect, when `connect_failed`), if `retries` allow one more
    /// and, for a request that reached a server, the retry budget does too;
    /// never an endpoint tried before. Counts the retry. Shared by HTTP and
    /// TCP mode.
    pub fn retry(
        &self,
        tried: &mut Vec<SocketAddr>,
        from: SocketAddr,
        input: &dyn HashInput,
        connect_failed: bool,
    ) -> Option<ActiveGuard> {
        let spec = &self.spec.retry;
        // A failed connect never reached a server: sending the request
        // elsewhere adds no load, so the budget (which guards servers
        // against retry storms) covers only requests that were sent.
        if tried.len() >= spec.retries as usize
            || (!connect_failed && !self.retry_budget.try_retry(spec))
        {
            return None;
        }
        tried.push(from);
        let next = self.acquire(input, tried)?;
        self.counters.retries(connect_failed).inc();
        Some(next)
    }

    /// Picks an endpoint from `set` (the set loaded for this unit of work),
    /// skipping the addresses in `avoid`; see [`select::pick`].
    pub fn pick<'s>(
        &self,
        set: &'s EndpointSet,
        input: &dyn HashInput,
        avoid: &[SocketAddr],
    ) -> Option<&'s Endpoint> {
        let policy = Policy {
            spec: &self.spec,
            turn: &self.turn,
        };
        select::pick(&policy, set, input, avoid)
    }

    /// The states of the current endpoints.
    pub fn endpoint_states(&self) -> impl Iterator<Item = Arc<EndpointState>> + use<> {
        let set = self.endpoints.load_full();
        (0..set.endpoints.len()).map(move |i| set.endpoints[i].state.clone())
    }

    /// The metric handles for requests from `listener`, created on first use.
    fn request_metrics(&self, listener: &Arc<str>, metrics: &Metrics) -> Arc<RequestMetrics> {
        // A poisoned lock only means another compile panicked mid-push; the
        // vector itself is always valid.
        let mut known = self
            .request_metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, m)) = known.iter().find(|(l, _)| l == listener) {
            return m.clone();
        }
        let m = Arc::new(metrics.requests(listener, self.name()));
        known.push((listener.clone(), m.clone()));
        m
    }
}

/// Keeps retries to a share of the backend's requests (Finagle's and
/// linkerd's retry budget): in each 10 s window, at most `min_per_second`
/// per second plus `percent` of the requests started in it. The request
/// path only bumps a counter; the window is looked at when a retry is
/// wanted, which is rare.
#[derive(Debug)]
pub struct RetryBudget {
    requests: AtomicU64,
    window: Mutex<BudgetWindow>,
}

#[derive(Debug)]
struct BudgetWindow {
    started: Instant,
    requests_before: u64,
    retries: u64,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            window: Mutex::new(BudgetWindow {
                started: Instant::now(),
                requests_before: 0,
                retries: 0,
            }),
        }
    }
}

impl RetryBudget {
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_retry(&self, spec: &RetrySpec) -> bool {
        let now = Instant::now();
        let requests = self.requests.load(Ordering::Relaxed);
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(w.started) > BUDGET_WINDOW {
            *w = BudgetWindow {
                started: now,
                requests_before: requests,
                retries: 0,
            };
        }
        let seconds = now.duration_since(w.started).as_secs_f64().max(1.0);
        let allowed = f64::from(spec.budget_min_per_second) * seconds
            + requests.saturating_sub(w.requests_before) as f64 * f64::from(spec.budget_percent)
                / 100.0;
        if (w.retries as f64) < allowed {
            w.retries += 1;
            true
        } else {
            false
        }
    }
}

/// Where a matched request goes, with the metric handles for that pair.
pub struct RouteTarget {
    pub backend: Arc<Backend>,
    pub metrics: Arc<RequestMetrics>,
    /// The listener's `forwarded_headers`.
    pub forwarded_headers: bool,
}

pub struct ListenerEntry {
    pub key: ListenerKey,
    pub spec: ListenerSpec,
    pub router: Router<RouteTarget>,
    pub default_target: Option<RouteTarget>,
    /// Requests that matched nothing (404), counted with an empty backend.
    pub unrouted: Arc<RequestMetrics>,
    pub metrics: ListenerMetrics,
    /// For `https` and `tls` listeners: what new handshakes use.
    pub tls: Option<TlsListener>,
    /// For `tcp` listeners with `sni_routes`.
    pub sni_routes: Option<SniRoutes>,
    /// For listeners that read PROXY headers: refusals by reason.
    pub proxy_protocol_failures: Option<crate::metrics::ProxyProtocolFailures>,
    /// Where this listener's requests and connections are logged.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// A `tcp` listener's routes on the SNI name of passed-through handshakes.
pub struct SniRoutes {
    pub names: crate::tls::names::NameTable<usize>,
    /// Indexed by `names`' values.
    pub targets: Vec<RouteTarget>,
    /// ClientHellos that could not be read, by reason.
    pub metrics: crate::metrics::TlsMetrics,
}

impl SniRoutes {
    /// The target for a hello's SNI name, else the listener's default.
    pub fn target<'a>(
        &'a self,
        sni: Option<&str>,
        default: Option<&'a RouteTarget>,
    ) -> Option<&'a RouteTarget> {
        sni.and_then(|name| self.names.lookup(name))
            .and_then(|&i| self.targets.get(i))
            .or(default)
    }
}

/// A TLS listener's handshake settings and counters in one table.
pub struct TlsListener {
    pub config: Arc<rustls::ServerConfig>,
    pub metrics: crate::metrics::TlsMetrics,
}

impl ListenerEntry {
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&RouteTarget> {
        self.router
            .route(host, path)
            .or(self.default_target.as_ref())
    }
}

/// One immutable routing snapshot.
pub struct Table {
    pub version: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<Arc<ListenerEntry>>,
    /// By name; also the index the next compile looks its backends up in.
    pub backends: HashMap<Arc<str>, Arc<Backend>>,
}

impl Table {
    /// The listener for a socket. A linear scan: listeners are few and the
    /// comparison is cheaper than hashing.
    pub fn listener(&self, key: &ListenerKey) -> Option<&Arc<ListenerEntry>> {
        self.listeners.iter().find(|l| &l.key == key)
    }

    /// The endpoints whose backend has a `health_check`, with that check.
    pub fn checked_endpoints(
        &self,
    ) -> impl Iterator<Item = crate::upstream::health::CheckedEndpoint<'_>> + '_ {
        self.backends.values().flat_map(|b| {
            let check = b.spec.health_check.as_ref();
            check.into_iter().flat_map(move |spec| {
                b.endpoint_states()
                    .map(move |state| (state, spec, b.spec.tls.clone()))
            })
        })
    }

    /// Every endpoint state of every backend, for status and metrics.
    pub fn endpoint_states(&self) -> impl Iterator<Item = Arc<EndpointState>> + '_ {
        self.backends.values().flat_map(|b| b.endpoint_states())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Validation guarantees references resolve; this guards the invariant.
    #[error("route or listener refers to unknown backend `{0}`")]
    UnknownBackend(Arc<str>),
    /// The control task starts watching every name before compiling.
    #[error("DNS name {0} is not being watched")]
    UnwatchedName(DnsQuery),
    #[error("Consul query {0} is not being watched")]
    UnwatchedConsul(WatchKey),
    #[error("mDNS service {0} is not being watched")]
    UnwatchedMdns(crate::config::MdnsTarget),
    #[error("listener `{0}`: cannot set up TLS: {1}")]
    Tls(Arc<str>, rustls::Error),
}

/// What a compile draws on besides the config and the previous table.
pub struct CompileContext<'a> {
    /// The state of a (backend, address) that an earlier swap removed and
    /// that is still draining, so an address that comes back keeps its
    /// counters and connections.
    pub find_draining: &'a dyn Fn(&str, SocketAddr) -> Option<Arc<EndpointState>>,
    /// The watched DNS name for a query (watching starts before a compile).
    pub dns: &'a dyn Fn(&DnsQuery) -> Option<Arc<DnsName>>,
    /// The running Consul watch for a key (likewise).
    pub consul: &'a dyn Fn(&WatchKey) -> Option<Arc<ConsulWatch>>,
    /// The running mDNS watch for a service (likewise).
    pub mdns: &'a dyn Fn(&crate::config::MdnsTarget) -> Option<Arc<MdnsWatch>>,
    /// The registry gateway routes make their backends in.
    pub gateway: Option<&'a Arc<crate::table::gateway::Gateway>>,
}

impl CompileContext<'_> {
    /// No draining endpoints and no DNS names: for configs of addresses only.
    pub const STATIC: CompileContext<'static> = CompileContext {
        find_draining: &|_, _| None,
        dns: &|_| None,
        consul: &|_| None,
        mdns: &|_| None,
        gateway: None,
    };
}

/// Builds a table from a validated config.
///
/// `previous` provides state to carry over: unchanged backends are reused as
/// they are, and a changed backend keeps the state of every address it
/// still lists.
pub fn compile(
    config: Arc<Config>,
    version: u64,
    previous: Option<&Table>,
    ctx: &CompileContext<'_>,
    metrics: &Metrics,
) -> Result<Table, CompileError> {
    let mut backends: HashMap<Arc<str>, Arc<Backend>> =
        HashMap::with_capacity_and_hasher(config.backends.len(), Default::default());
    for spec in &config.backends {
        let before = previous.and_then(|t| t.backends.get(&spec.name));
        let reused = before.filter(|b| b.spec == *spec).map(Arc::clone);
        let backend = match reused {
            Some(b) => b,
            None => Arc::new(new_backend(spec, before, ctx, metrics)?),
        };
        backends.insert(spec.name.clone(), backend);
    }
    let target =
        |listener: &ListenerSpec, backend: &Arc<str>| -> Result<RouteTarget, CompileError> {
            let backend = backends
                .get(backend)
                .ok_or_else(|| CompileError::UnknownBackend(backend.clone()))?;
            Ok(RouteTarget {
                backend: backend.clone(),
                metrics: backend.request_metrics(&listener.name, metrics),
                forwarded_headers: listener.forwarded_headers,
            })
        };
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for spec in &config.listeners {
        let mut router = Router::default();
        for route in config.routes.iter().filter(|r| r.listener == spec.name) {
            router.insert(
                &route.host,
                &route.path_prefix,
                target(spec, &route.backend)?,
            );
        }
        let default_target = spec
            .default_backend
            .as_ref()
            .map(|b| target(spec, b))
            .transpose()?;
        listeners.push(Arc::new(ListenerEntry {
            key: ListenerKey::of(spec),
            spec: spec.clone(),
            router,
            default_target,
            unrouted: target_metrics_unrouted(previous, spec, metrics),
            metrics: metrics.listener(&spec.name),
            tls: match &spec.tls {
                Some(tls) => Some(TlsListener {
                    config: crate::tls::server_config(tls, metrics.tls_sni_counters(&spec.name))
                        .map_err(|e| CompileError::Tls(spec.name.clone(), e))?,
                    metrics: metrics.tls(&spec.name),
                }),
                None => None,
            },
            proxy_protocol_failures: spec
                .proxy_protocol
                .as_ref()
                .map(|_| metrics.proxy_protocol_failures(&spec.name)),
            access_log: spec.access_log.as_ref().map(|log| {
                Arc::new(crate::access_log::AccessLog::new(
                    spec.name.clone(),
                    log.clone(),
                    metrics.access_log(&spec.name),
                ))
            }),
            sni_routes: if spec.sni_routes.is_empty() {
                None
            } else {
                let mut names = crate::tls::names::NameTable::default();
                let mut targets = Vec::with_capacity(spec.sni_routes.len());
                for (i, route) in spec.sni_routes.iter().enumerate() {
                    names.insert(&route.sni, i);
                    targets.push(target(spec, &route.backend)?);
                }
                Some(SniRoutes {
                    names,
                    targets,
                    metrics: metrics.tls(&spec.name),
                })
            },
        }));
    }
    Ok(Table {
        version,
        config,
        listeners,
        backends,
    })
}

fn target_metrics_unrouted(
    previous: Option<&Table>,
    spec: &ListenerSpec,
    metrics: &Metrics,
) -> Arc<RequestMetrics> {
    previous
        .and_then(|t| t.listeners.iter().find(|l| l.spec.name == spec.name))
        .map(|l| l.unrouted.clone())
        .unwrap_or_else(|| Arc::new(metrics.requests(&spec.name, "")))
}

/// A backend for a new or changed definition; `before` is the previous
/// definition of the same name, whose metric handles and endpoint states it
/// keeps.
fn new_backend(
    spec: &BackendSpec,
    before: Option<&Arc<Backend>>,
    ctx: &CompileContext<'_>,
    metrics: &Metrics,
) -> Result<Backend, CompileError> {
    let mut dns: Vec<Arc<DnsName>> = Vec::new();
    for server in spec.servers() {
        if let Some(query) = server.target.dns_query() {
            let name = (ctx.dns)(&query).ok_or(CompileError::UnwatchedName(query))?;
            if !dns.iter().any(|n| Arc::ptr_eq(n, &name)) {
                dns.push(name);
            }
        }
    }
    let consul = match &spec.target {
        BackendTarget::Consul(target) => {
            let key = consul::service_watch(target);
            Some((ctx.consul)(&key).ok_or(CompileError::UnwatchedConsul(key))?)
        }
        _ => None,
    };
    let mdns = match &spec.target {
        BackendTarget::Mdns(target) => {
            Some((ctx.mdns)(target).ok_or_else(|| CompileError::UnwatchedMdns(target.clone()))?)
        }
        _ => None,
    };
    let current = before.map(|b| b.endpoints.load_full());
    let endpoints = endpoint_set(
        spec,
        &dns,
        consul.as_deref(),
        mdns.as_deref(),
        current.as_deref(),
        ctx.find_draining,
    );
    Ok(Backend {
        spec: spec.clone(),
        endpoints: ArcSwap::from_pointee(endpoints),
        turn: AtomicUsize::new(0),
        counters: before.map_or_else(
            || metrics.backend_counters(&spec.name),
            |b| b.counters.clone(),
        ),
        retry_budget: RetryBudget::default(),
        dns,
        consul,
        mdns,
        gateway: matches!(spec.target, BackendTarget::Gateway(_))
            .then(|| ctx.gateway.cloned())
            .flatten(),
        request_metrics: Mutex::new(before.map_or_else(Vec::new, |b| {
            b.request_metrics
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })),
    })
}

/// A gateway's on-demand backend for the Consul service of `spec`, whose
/// watch is `watch` (running and answered).
pub fn on_demand_backend(
    spec: &BackendSpec,
    watch: Arc<ConsulWatch>,
    metrics: &Metrics,
) -> Result<Backend, CompileError> {
    let ctx = CompileContext {
        consul: &|_| Some(watch.clone()),
        ..CompileContext::STATIC
    };
    new_backend(spec, None, &ctx, metrics)
}

/// A gateway's on-demand backend for the go-micro service of `spec`,
/// found by mDNS through `watch`.
pub fn on_demand_mdns_backend(
    spec: &BackendSpec,
    watch: Arc<MdnsWatch>,
    metrics: &Metrics,
) -> Result<Backend, CompileError> {
    let ctx = CompileContext {
        mdns: &|_| Some(watch.clone()),
        ..CompileContext::STATIC
    };
    new_backend(spec, None, &ctx, metrics)
}

/// The endpoints of `spec` as of now: its addresses, the current answers
/// of its DNS names, the passing instances of its Consul service, or the
/// instances its mDNS watch found.
/// Addresses `current` already has keep their state; an address listed
/// twice (two names resolving to it) counts once.
pub fn endpoint_set(
    spec: &BackendSpec,
    dns: &[Arc<DnsName>],
    consul: Option<&ConsulWatch>,
    mdns: Option<&MdnsWatch>,
    current: Option<&EndpointSet>,
    find_draining: &dyn Fn(&str, SocketAddr) -> Option<Arc<EndpointState>>,
) -> EndpointSet {
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(spec.servers().len());
    let mut add = |addr: SocketAddr, weight: u32, origin: Origin| {
        if endpoints.iter().any(|e| e.addr == addr) {
            return;
        }
        let state = current
            .and_then(|set| set.state_of(addr).cloned())
            .or_else(|| find_draining(&spec.name, addr))
            .unwrap_or_else(|| EndpointState::new(spec.name.clone(), addr));
        endpoints.push(Endpoint {
            addr,
            weight,
            origin,
            state,
        });
    };
    if let Some(WatchData::Service(instances)) = consul.and_then(|w| w.data()).as_deref() {
        for instance in instances {
            // Consul registrations carry IP addresses in practice; a host
            // name here would need its own DNS watch, which is not built.
            match instance.address.parse::<std::net::IpAddr>() {
                Ok(ip) if instance.port != 0 => add(
                    SocketAddr::new(ip, instance.port),
                    instance.weight,
                    Origin::Consul,
                ),
                _ => tracing::debug!(
                    backend = %spec.name,
                    instance = %instance.id,
                    address = %instance.address,
                    port = instance.port,
                    "Skipping a Consul instance without an IP address and port"
                ),
            }
        }
    }
    if let Some(watch) = mdns {
        // mDNS has no weights (go-micro's SRV weight is always 1).
        for instance in watch.instances().iter() {
            add(instance.addr, 1, Origin::Mdns);
        }
    }
    for server in spec.servers() {
        let port = match &server.target {
            ServerTarget::Addr(addr) => {
                add(*addr, server.weight, Origin::Static);
                continue;
            }
            ServerTarget::Host { port, .. } => Some(*port),
            // SRV records carry their own port.
            ServerTarget::Srv { .. } => None,
        };
        let answer = server
            .target
            .dns_query()
            .and_then(|q| dns.iter().find(|n| n.query == q))
            .and_then(|n| n.answer());
        for record in answer.iter().flat_map(|a| a.records.iter()) {
            let Some(port) = record.port.or(port) else {
                continue;
            };
            let addr = SocketAddr::new(record.ip, port);
            add(addr, record.weight.unwrap_or(server.weight), Origin::Dns);
        }
    }
    let with_ring = matches!(spec.balance, Balance::Hash(_));
    EndpointSet::new(endpoints, with_ring)
}

/// The published table, shared by every listener task.
#[derive(Clone)]
pub struct TableHandle(Arc<ArcSwap<Table>>);

impl TableHandle {
    pub fn new(table: Table) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The table for one request or one TCP connection. Hold it for the whole
    /// unit of work so it is routed by one version, old or new, never a mix.
    pub fn current(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// Called only by the reload path, only with a fully validated table.
    pub fn publish(&self, next: Table) -> Arc<Table> {
        self.0.swap(Arc::new(next))
    }
}
