//! Runtime re-resolution of backend host names and SRV names.
//!
//! One task per distinct name (`web.internal` for A/AAAA, or an SRV name),
//! shared by every backend that lists it. The task looks the name up, keeps
//! the answer in its [`DnsName`], and looks again when the answer's TTL runs
//! out (clamped to `min_ttl..=max_ttl`), or sooner when a connection to one
//! of the addresses failed (at most once per `min_ttl`).
//!
//! An answer is confirmed until its TTL runs out, counted from the start of
//! the lookup that got it (or from its arrival, for a lookup slower than
//! the TTL). If no lookup has confirmed it again by then, it is held: still
//! used for `hold_valid` (timeouts, SERVFAIL, and while the lookup is still
//! in flight) or `hold_nx` (once a lookup said NXDOMAIN or no records), both
//! counted from that TTL expiry, while lookups retry with jittered backoff.
//! A timer drops the addresses when the hold ends, whatever a slow lookup is
//! still waiting for; the backend answers 503 until the name resolves again.
//! A changed answer is reported to the control task, which replaces the
//! endpoint sets of the backends that use the name.
//!
//! ```text
//! lookup ok ──TTL──▶ confirmed_until ──hold──▶ hold_until: timer drops the answer
//! `resolved`         +500 ms: `holding`        `failed`   (until a lookup succeeds)
//! ```
//!
//! hickory's own cache is turned off: the refresh schedule here is the
//! cache, and a cached answer would hide a change that `max_ttl` asked to
//! see.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use prometheus::IntCounterVec;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use super::Watched;
use crate::backoff::Backoff;
use crate::config::{Config, ResolverSpec};
pub use crate::config::{DnsQuery, QueryKind};

/// How late a refresh may be before `/status` calls its answer held. A
/// refresh starts the moment the TTL runs out and normally returns within a
/// few ms; without this grace every refresh would flash `holding`.
const OVERDUE_GRACE: Duration = Duration::from_millis(500);

/// One address of an answer. SRV answers carry their own port and weight;
/// A/AAAA answers take both from the server entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct DnsRecord {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub weight: Option<u32>,
}

impl DnsRecord {
    fn describe(&self) -> String {
        match (self.port, self.weight) {
            (Some(port), Some(w)) => format!("{} weight {w}", SocketAddr::new(self.ip, port)),
            (Some(port), None) => SocketAddr::new(self.ip, port).to_string(),
            _ => self.ip.to_string(),
        }
    }
}

/// A name's answer as handed to a successor process.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DnsSeed {
    pub name: String,
    pub kind: crate::config::QueryKind,
    pub records: Vec<DnsRecord>,
    /// How long its TTL had left.
    pub ttl_left_ms: u64,
}

/// A usable answer: sorted, never empty.
#[derive(Debug, PartialEq, Eq)]
pub struct DnsAnswer {
    pub records: Vec<DnsRecord>,
}

/// Why a lookup failed, as a metric label and for choosing the hold time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureKind {
    NxDomain,
    NoRecords,
    Timeout,
    ServFail,
    Other,
}

impl FailureKind {
    fn label(self) -> &'static str {
        match self {
            Self::NxDomain => "nxdomain",
            Self::NoRecords => "no_records",
            Self::Timeout => "timeout",
            Self::ServFail => "servfail",
            Self::Other => "error",
        }
    }

    fn hold(self, settings: &ResolverSpec) -> Duration {
        match self {
            Self::NxDomain | Self::NoRecords => settings.hold_nx,
            Self::Timeout | Self::ServFail | Self::Other => settings.hold_valid,
        }
    }

    fn of(error: &NetError) -> Self {
        if error.is_nx_domain() {
            Self::NxDomain
        } else if error.is_no_records_found() {
            Self::NoRecords
        } else {
            match error {
                NetError::Timeout => Self::Timeout,
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => Self::ServFail,
                _ => Self::Other,
            }
        }
    }
}

#[derive(Debug, Clone)]
struct LookupFailure {
    kind: FailureKind,
    message: String,
}

impl From<NetError> for LookupFailure {
    fn from(error: NetError) -> Self {
        Self {
            kind: FailureKind::of(&error),
            message: error.to_string(),
        }
    }
}

/// Where a watched name stands, for `/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NameState {
    /// No lookup has finished yet.
    #[default]
    Pending,
    /// The last lookup succeeded and its answer's TTL has not run out.
    Resolved,
    /// The answer's TTL ran out and no lookup has confirmed it since (the
    /// refresh failed or is overdue), or an early refresh failed; the answer
    /// is still used until the hold ends.
    Holding,
    /// Lookups fail and no answer is held: the name has no endpoints.
    Failed,
}

#[derive(Debug, Default)]
struct NameStatus {
    state: NameState,
    ttl: Option<Duration>,
    next_refresh: Option<SystemTime>,
    last_success: Option<SystemTime>,
    last_change: Option<(SystemTime, Instant)>,
    last_error: Option<String>,
    /// When the held answer's TTL runs out: the start of the lookup that
    /// last got it plus its clamped TTL, i.e. when its refresh is due. The
    /// hold counts from here, however long the lookups after it take.
    /// `None` when no answer is held.
    confirmed_until: Option<Instant>,
    /// What the lookups since the last success said, if any failed: picks
    /// `hold_valid` or `hold_nx`.
    failure: Option<FailureKind>,
    /// When the held answer goes unless a lookup confirms it first:
    /// `confirmed_until` plus the hold. Computed by the task, which has the
    /// settings; `None` when no answer is held.
    hold_until: Option<Instant>,
}

impl NameStatus {
    /// Recomputes `hold_until`, after a lookup or when the settings changed.
    /// The hold is `hold_valid` until a lookup says the name is gone: while
    /// a lookup is in flight nothing is known yet.
    fn rehold(&mut self, settings: &ResolverSpec) {
        let hold = self
            .failure
            .map_or(settings.hold_valid, |kind| kind.hold(settings));
        self.hold_until = self.confirmed_until.map(|c| c + hold);
    }

    /// The state `/status` shows: `Resolved` becomes `Holding` once the
    /// refresh is overdue, before the lookup in flight has failed.
    fn shown_state(&self, now: Instant) -> NameState {
        let overdue = self
            .confirmed_until
            .is_some_and(|c| now >= c + OVERDUE_GRACE);
        match self.state {
            NameState::Resolved if overdue => NameState::Holding,
            state => state,
        }
    }
}

/// `at` on the wall clock, for `/status`.
fn wall_clock(at: Instant, now: Instant) -> SystemTime {
    let wall = SystemTime::now();
    match at.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall.checked_sub(now.duration_since(at)).unwrap_or(wall),
    }
}

/// One watched name: its current answer and what `/status` shows of it.
/// Shared by the name's task (the only writer), the backends that use it,
/// and the admin API.
pub struct DnsName {
    pub query: DnsQuery,
    answer: ArcSwapOption<DnsAnswer>,
    /// Asks the task for an early lookup (a connection to an address failed).
    refresh: Notify,
    /// Lookups finished so far, to wait for the first one.
    lookups_done: watch::Sender<u64>,
    status: Mutex<NameStatus>,
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsName")
            .field("query", &self.query)
            .field("answer", &self.answer.load())
            .finish()
    }
}

/// `/status` view of one watched name.
#[derive(Debug, Serialize)]
pub struct DnsWatchStatus {
    pub kind: &'static str,
    pub name: String,
    pub query: QueryKind,
    pub state: NameState,
    pub addresses: Vec<String>,
    pub ttl_seconds: Option<f64>,
    pub next_refresh: Option<String>,
    pub last_success: Option<String>,
    pub last_change: Option<String>,
    pub last_error: Option<String>,
    /// While `holding`: when the addresses go unless a lookup succeeds.
    pub hold_until: Option<String>,
}

impl DnsName {
    fn new(query: DnsQuery) -> Self {
        Self {
            query,
            answer: ArcSwapOption::empty(),
            refresh: Notify::new(),
            lookups_done: watch::Sender::new(0),
            status: Mutex::new(NameStatus::default()),
        }
    }

    /// Holds a handed-over answer as if a lookup had brought it, with the
    /// TTL it had left.
    fn seed(&self, seed: DnsSeed, settings: &ResolverSpec) {
        let now = Instant::now();
        self.answer.store(Some(Arc::new(DnsAnswer {
            records: seed.records,
        })));
        let mut s = self.lock();
        s.state = NameState::Resolved;
        s.confirmed_until = Some(now + Duration::from_millis(seed.ttl_left_ms));
        s.last_change = Some((SystemTime::now(), now));
        s.rehold(settings);
    }

    /// The addresses to use now; `None` before the first answer and after a
    /// hold expired.
    pub fn answer(&self) -> Option<Arc<DnsAnswer>> {
        self.answer.load_full()
    }

    /// Asks for a lookup sooner than the TTL would; the task rate-limits.
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// Seconds since the answer last changed, if it ever did.
    pub fn seconds_since_change(&self) -> Option<f64> {
        self.lock()
            .last_change
            .map(|(_, at)| at.elapsed().as_secs_f64())
    }

    pub fn status(&self) -> DnsWatchStatus {
        let s = self.lock();
        let now = Instant::now();
        let time =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        let state = s.shown_state(now);
        let hold_until = match state {
            NameState::Holding => s.hold_until.map(|t| wall_clock(t, now)),
            _ => None,
        };
        DnsWatchStatus {
            kind: "dns",
            name: self.query.name.to_string(),
            query: self.query.kind,
            state,
            addresses: self
                .answer()
                .map(|a| a.records.iter().map(DnsRecord::describe).collect())
                .unwrap_or_default(),
            ttl_seconds: s.ttl.map(|t| t.as_secs_f64()),
            next_refresh: time(s.next_refresh),
            last_success: time(s.last_success),
            last_change: time(s.last_change.map(|(t, _)| t)),
            last_error: s.last_error.clone(),
            hold_until: time(hold_until),
        }
    }

    /// Waits until at least one lookup has finished.
    async fn first_lookup(&self) {
        let mut done = self.lookups_done.subscribe();
        // Only fails if the sender is gone, and `self` owns it.
        let _ = done.wait_for(|n| *n > 0).await;
    }

    /// Never held across an await; a poisoned lock still holds valid data.
    fn lock(&self) -> MutexGuard<'_, NameStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the held answer goes unless a lookup confirms it first.
    fn hold_until(&self) -> Option<Instant> {
        self.lock().hold_until
    }

    /// Records a good answer, confirmed until `confirmed_until`; `true` when
    /// the addresses changed.
    fn succeeded(
        &self,
        records: Vec<DnsRecord>,
        ttl: Duration,
        confirmed_until: Instant,
        settings: &ResolverSpec,
    ) -> bool {
        let answer = DnsAnswer { records };
        let changed = self.answer.load().as_deref() != Some(&answer);
        if changed {
            self.answer.store(Some(Arc::new(answer)));
        }
        let mut s = self.lock();
        s.state = NameState::Resolved;
        s.ttl = Some(ttl);
        s.last_success = Some(SystemTime::now());
        // NB: a lookup slower than the TTL (its first tries timed out) still
        // confirms its answer as it arrives; counting only from its start
        // would end the hold of the answer it just brought.
        s.confirmed_until = Some(confirmed_until.max(Instant::now()));
        s.failure = None;
        s.rehold(settings);
        if changed {
            s.last_change = Some((SystemTime::now(), Instant::now()));
        }
        changed
    }

    /// Records a failed lookup; `true` when the addresses changed (the hold
    /// is over). NB: the hold still counts from `confirmed_until`, so an
    /// early refresh that fails before the TTL runs out does not shorten it.
    fn failed(&self, failure: &LookupFailure, settings: &ResolverSpec) -> bool {
        let mut s = self.lock();
        s.last_error = Some(format!("{}: {}", failure.kind.label(), failure.message));
        s.ttl = None;
        s.failure = Some(failure.kind);
        s.rehold(settings);
        match s.hold_until {
            Some(until) if Instant::now() >= until => self.drop_held(&mut s),
            Some(_) => {
                s.state = NameState::Holding;
                false
            }
            None => {
                s.state = NameState::Failed;
                false
            }
        }
    }

    /// The hold timer for `until` fired; `true` when the addresses changed.
    /// A lookup may have moved the hold since (it confirmed the answer, or
    /// said the name is gone and dropped it): then nothing happens.
    fn hold_ended(&self, until: Instant) -> bool {
        let mut s = self.lock();
        match s.hold_until {
            Some(current) if current <= until => self.drop_held(&mut s),
            _ => false,
        }
    }

    /// Ends the hold: the name has no addresses until a lookup succeeds.
    fn drop_held(&self, s: &mut NameStatus) -> bool {
        // `last_error` outlives successes: only a failure since the last
        // success explains this hold. Without one, the refresh is still
        // waiting on its timeouts.
        let error = match s.failure {
            Some(_) => s.last_error.as_deref().unwrap_or("lookup failed"),
            None => "lookup overdue",
        };
        tracing::warn!(name = %self.query, error, "DNS hold ended, addresses dropped");
        self.answer.store(None);
        s.state = NameState::Failed;
        s.confirmed_until = None;
        s.hold_until = None;
        s.last_change = Some((SystemTime::now(), Instant::now()));
        true
    }
}

/// Looks `query` up once. Returns the sorted addresses and how long they
/// are valid.
async fn lookup(
    resolver: &TokioResolver,
    query: &DnsQuery,
) -> Result<(Vec<DnsRecord>, Duration), LookupFailure> {
    let (mut records, valid_until) = match query.kind {
        QueryKind::Addresses => {
            let found = resolver.lookup_ip(&*query.name).await?;
            let records = found
                .iter()
                .map(|ip| DnsRecord {
                    ip,
                    port: None,
                    weight: None,
                })
                .collect::<Vec<_>>();
            (records, found.valid_until())
        }
        QueryKind::Srv => lookup_srv(resolver, &query.name).await?,
    };
    records.sort();
    records.dedup();
    if records.is_empty() {
        return Err(LookupFailure {
            kind: FailureKind::NoRecords,
            message: format!("no addresses for {query}"),
        });
    }
    Ok((
        records,
        valid_until.saturating_duration_since(Instant::now()),
    ))
}

/// SRV records of the lowest priority, each target resolved to its
/// addresses (from the additional section when the server sent them).
async fn lookup_srv(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<DnsRecord>, Instant), LookupFailure> {
    let found = resolver.srv_lookup(name).await?;
    let srvs: Vec<_> = found
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    let Some(best) = srvs.iter().map(|s| s.priority).min() else {
        return Err(LookupFailure {
            kind: FailureKind::NoRecords,
            message: format!("no SRV records for {name}"),
        });
    };
    let mut valid_until = found.valid_until();
    let mut records = Vec::new();
    let mut last_failure = None;
    for srv in srvs.iter().filter(|s| s.priority == best) {
        let weight = Some(u32::from(srv.weight.max(1)));
        let record = |ip| DnsRecord {
            ip,
            port: Some(srv.port),
            weight,
        };
        let glue: Vec<IpAddr> = found
            .additionals()
            .iter()
            .filter(|r| r.name == srv.target)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        if !glue.is_empty() {
            records.extend(glue.into_iter().map(record));
            continue;
        }
        match resolver.lookup_ip(Name::clone(&srv.target)).await {
            Ok(ips) => {
                valid_until = valid_until.min(ips.valid_until());
                records.extend(ips.iter().map(record));
            }
            // One target failing leaves the others usable.
            Err(error) => last_failure = Some(LookupFailure::from(error)),
        }
    }
    match (records.is_empty(), last_failure) {
        (true, Some(failure)) => Err(failure),
        _ => Ok((records, valid_until)),
    }
}

/// What one name's task needs.
struct NameTask {
    name: Arc<DnsName>,
    resolver: Arc<TokioResolver>,
    settings: ResolverSpec,
    changed: mpsc::UnboundedSender<DnsQuery>,
    lookups: IntCounterVec,
}

impl NameTask {
    async fn run(self) {
        let s = &self.settings;
        // A reload may have changed the holds of an answer held already.
        self.name.lock().rehold(s);
        let mut backoff = Backoff::new(s.retry_min, s.retry_max);
        loop {
            let started = Instant::now();
            let Some(result) = self.holding(lookup(&self.resolver, &self.name.query)).await else {
                return;
            };
            let label = result
                .as_ref()
                .map_or_else(|f| f.kind.label(), |_| "success");
            self.lookups
                .with_label_values(&[&*self.name.query.name, label])
                .inc();
            let (changed, next) = match result {
                Ok((records, ttl)) => {
                    backoff.reset();
                    let ttl = ttl.clamp(s.min_ttl, s.max_ttl);
                    let due = started + ttl;
                    (self.name.succeeded(records, ttl, due, s), due)
                }
                Err(failure) => {
                    tracing::debug!(name = %self.name.query, error = %failure.message, "DNS lookup failed");
                    // The hold timer, not the retry, ends a hold.
                    (
                        self.name.failed(&failure, s),
                        started + backoff.next_delay(),
                    )
                }
            };
            if changed && !self.report_change() {
                return;
            }
            self.name.lock().next_refresh =
                Some(SystemTime::now() + next.saturating_duration_since(Instant::now()));
            self.name.lookups_done.send_modify(|n| *n += 1);
            let wait = async {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    () = self.name.refresh.notified() => {
                        // Early refresh after a connect failure, rate-limited.
                        tokio::time::sleep_until((started + s.min_ttl).into()).await;
                    }
                }
            };
            if self.holding(wait).await.is_none() {
                return;
            }
        }
    }

    /// Runs `work` (a lookup, or the wait for the next one) to its end, and
    /// meanwhile drops the held answer when its hold ends: a lookup waiting
    /// on timeouts (`timeout` × `attempts` and more) must not keep addresses
    /// past `hold_until`. `None` when the control task is gone.
    async fn holding<F: Future>(&self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            let Some(until) = self.name.hold_until() else {
                return Some(work.await);
            };
            tokio::select! {
                out = &mut work => return Some(out),
                () = tokio::time::sleep_until(until.into()) => {
                    if self.name.hold_ended(until) && !self.report_change() {
                        return None;
                    }
                }
            }
        }
    }

    /// Tells the control task the answer changed; `false` when it is gone.
    fn report_change(&self) -> bool {
        let addresses = self.name.answer().map_or(0, |a| a.records.len());
        tracing::info!(name = %self.name.query, addresses, "DNS answer changed");
        self.changed.send(self.name.query.clone()).is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("reading the system DNS configuration (set `resolver.nameservers` instead): {0}")]
    SystemConfig(#[source] NetError),
    #[error("building the DNS resolver: {0}")]
    Build(#[source] NetError),
}

/// A hickory resolver for the `[resolver]` section.
fn build_resolver(settings: &ResolverSpec) -> Result<TokioResolver, ResolverError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match &settings.nameservers {
        Some(servers) => {
            let servers = servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    // TCP for answers too large for a datagram (many SRV records).
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        }
        None => Resolver::builder(provider).map_err(ResolverError::SystemConfig)?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = settings.timeout;
    options.attempts = settings.attempts;
    builder.build().map_err(ResolverError::Build)
}

/// The names the running config watches, each with its task.
pub struct DnsWatcher {
    /// Answers handed over by an upgrade, used once each.
    seeds: HashMap<DnsQuery, DnsSeed>,
    settings: ResolverSpec,
    resolver: Option<Arc<TokioResolver>>,
    names: HashMap<DnsQuery, Watched<DnsName>>,
    changed: mpsc::UnboundedSender<DnsQuery>,
    lookups: IntCounterVec,
}

/// What [`DnsWatcher::prepare`] started, to commit or undo.
pub struct DnsPlan {
    settings: ResolverSpec,
    resolver: Option<Arc<TokioResolver>>,
    started: Vec<DnsQuery>,
}

impl DnsWatcher {
    /// `changed` receives a name each time its addresses change.
    pub fn new(changed: mpsc::UnboundedSender<DnsQuery>, lookups: IntCounterVec) -> Self {
        Self {
            seeds: HashMap::new(),
            settings: ResolverSpec::default(),
            resolver: None,
            names: HashMap::new(),
            changed,
            lookups,
        }
    }

    /// The watched name for `query`, if the running or prepared config has it.
    pub fn get(&self, query: &DnsQuery) -> Option<Arc<DnsName>> {
        self.names.get(query).map(|w| w.item.clone())
    }

    /// The answers held now, to seed a successor (binary upgrade) with.
    pub fn seeds(&self) -> Vec<DnsSeed> {
        let now = Instant::now();
        self.names
            .values()
            .filter_map(|w| {
                let answer = w.item.answer()?;
                let confirmed_until = w.item.lock().confirmed_until?;
                Some(DnsSeed {
                    name: w.item.query.name.to_string(),
                    kind: w.item.query.kind,
                    records: answer.records.clone(),
                    ttl_left_ms: u64::try_from(
                        confirmed_until.saturating_duration_since(now).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                })
            })
            .collect()
    }

    /// Answers from the process this one replaces: a name started later
    /// holds its seed as that process held it (the same TTL left, then
    /// the same hold), so a nameserver that fails during an upgrade loses
    /// no address.
    pub fn seed(&mut self, seeds: Vec<DnsSeed>) {
        self.seeds = seeds
            .into_iter()
            .filter(|s| !s.records.is_empty())
            .map(|s| {
                let query = DnsQuery {
                    name: Arc::from(s.name.as_str()),
                    kind: s.kind,
                };
                (query, s)
            })
            .collect();
    }

    /// Every watched name, sorted, for `/status` and metrics.
    pub fn names(&self) -> Vec<Arc<DnsName>> {
        let mut names: Vec<_> = self.names.values().map(|w| w.item.clone()).collect();
        names.sort_by(|a, b| a.query.cmp(&b.query));
        names
    }

    /// Starts watching the names `config` adds and waits (one lookup's time
    /// at most) for their first answers, so a new backend starts with its
    /// addresses. Fails when a new `required` server does not resolve, or
    /// the resolver cannot be built; call [`abort`](Self::abort) then.
    pub async fn prepare(&mut self, config: &Config) -> Result<DnsPlan, (DnsPlan, Vec<String>)> {
        let mut plan = DnsPlan {
            settings: config.resolver.clone(),
            resolver: self.resolver.clone(),
            started: Vec::new(),
        };
        let wanted = wanted(config);
        if wanted.is_empty() {
            return Ok(plan);
        }
        if plan.resolver.is_none() || config.resolver != self.settings {
            match build_resolver(&config.resolver) {
                Ok(r) => plan.resolver = Some(Arc::new(r)),
                Err(e) => return Err((plan, vec![format!("resolver: {e}")])),
            }
        }
        let Some(resolver) = plan.resolver.clone() else {
            return Ok(plan);
        };
        for query in wanted.keys() {
            if !self.names.contains_key(query) {
                let name = Arc::new(DnsName::new(query.clone()));
                if let Some(seed) = self.seeds.remove(query) {
                    name.seed(seed, &plan.settings);
                }
                self.names.insert(
                    query.clone(),
                    self.spawn(name, resolver.clone(), &plan.settings),
                );
                plan.started.push(query.clone());
            }
        }
        let first_lookups = plan
            .started
            .iter()
            .filter_map(|q| self.names.get(q).map(|w| w.item.clone()))
            .collect::<Vec<_>>();
        let s = &plan.settings;
        let budget = s.timeout * (s.attempts as u32) + Duration::from_millis(500);
        let _ = tokio::time::timeout(budget, async {
            for name in &first_lookups {
                name.first_lookup().await;
            }
        })
        .await;
        let mut errors: Vec<String> = wanted
            .iter()
            .filter(|(q, required)| **required && plan.started.contains(q))
            .filter_map(|(q, _)| {
                let name = self.names.get(q)?;
                if name.item.answer().is_some() {
                    return None;
                }
                let why = name.item.lock().last_error.clone();
                Some(format!(
                    "required server name {q} does not resolve: {}",
                    why.unwrap_or_else(|| "no answer in time".into())
                ))
            })
            .collect();
        errors.sort();
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err((plan, errors))
        }
    }

    /// Makes `config`'s names the watched set: stops the others, and moves
    /// the rest to a new resolver if the `[resolver]` settings changed.
    pub fn commit(&mut self, plan: DnsPlan, config: &Config) {
        let wanted = wanted(config);
        self.names.retain(|q, _| wanted.contains_key(q));
        let restart = plan.settings != self.settings;
        self.settings = plan.settings;
        self.resolver = plan.resolver;
        if restart && let Some(resolver) = self.resolver.clone() {
            for query in self.names.keys().cloned().collect::<Vec<_>>() {
                if plan.started.contains(&query) {
                    continue;
                }
                if let Some(old) = self.names.remove(&query) {
                    let name = old.item.clone();
                    drop(old);
                    let watched = self.spawn(name, resolver.clone(), &self.settings.clone());
                    self.names.insert(query, watched);
                }
            }
        }
    }

    /// Undoes [`prepare`](Self::prepare): stops the names it started.
    pub fn abort(&mut self, plan: DnsPlan) {
        for query in plan.started {
            self.names.remove(&query);
        }
    }

    fn spawn(
        &self,
        name: Arc<DnsName>,
        resolver: Arc<TokioResolver>,
        settings: &ResolverSpec,
    ) -> Watched<DnsName> {
        let task = NameTask {
            name: name.clone(),
            resolver,
            settings: settings.clone(),
            changed: self.changed.clone(),
            lookups: self.lookups.clone(),
        };
        Watched::spawn(name, task.run())
    }
}

/// Every DNS name `config` uses, with whether any use marks it required.
fn wanted(config: &Config) -> HashMap<DnsQuery, bool> {
    let mut wanted: HashMap<DnsQuery, bool> = HashMap::new();
    for server in config.backends.iter().flat_map(|b| b.servers()) {
        if let Some(query) = server.target.dns_query() {
            *wanted.entry(query).or_default() |= server.required;
        }
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ResolverSpec {
        ResolverSpec {
            hold_valid: Duration::from_secs(30),
            hold_nx: Duration::from_secs(5),
            ..ResolverSpec::default()
        }
    }

    fn name() -> DnsName {
        DnsName::new(DnsQuery {
            name: "web.test".into(),
            kind: QueryKind::Addresses,
        })
    }

    fn records() -> Vec<DnsRecord> {
        vec![DnsRecord {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: None,
            weight: None,
        }]
    }

    fn failure(kind: FailureKind) -> LookupFailure {
        LookupFailure {
            kind,
            message: "test".into(),
        }
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn an_early_refresh_that_fails_does_not_shorten_the_hold() {
        let (name, s) = (name(), settings());
        let due = Instant::now() + TTL;
        assert!(name.succeeded(records(), TTL, due, &s));
        assert_eq!(name.hold_until(), Some(due + s.hold_valid));
        assert!(!name.failed(&failure(FailureKind::Timeout), &s));
        assert_eq!(name.hold_until(), Some(due + s.hold_valid));
        assert_eq!(name.status().state, NameState::Holding);
        assert!(name.status().hold_until.is_some());
        // The name is gone: hold_nx, still from the TTL expiry.
        assert!(!name.failed(&failure(FailureKind::NxDomain), &s));
        assert_eq!(name.hold_until(), Some(due + s.hold_nx));
    }

    #[test]
    fn a_hold_already_over_drops_the_answer_at_the_failure() {
        let (name, s) = (name(), settings());
        assert!(name.succeeded(records(), TTL, Instant::now(), &s));
        name.lock().confirmed_until = Some(Instant::now() - s.hold_nx);
        name.lock().rehold(&s);
        assert!(name.failed(&failure(FailureKind::NxDomain), &s));
        assert!(name.answer().is_none());
        assert_eq!(name.hold_until(), None);
        assert_eq!(name.status().state, NameState::Failed);
    }

    #[test]
    fn the_hold_timer_drops_only_the_hold_it_was_set_for() {
        let (name, s) = (name(), settings());
        let due = Instant::now() + TTL;
        name.succeeded(records(), TTL, due, &s);
        let until = due + s.hold_valid;
        // A success moved the hold on before the old timer fired.
        name.succeeded(records(), TTL, due + TTL, &s);
        assert!(!name.hold_ended(until));
        assert!(name.answer().is_some());
        assert!(name.hold_ended(until + TTL));
        assert!(name.answer().is_none());
        assert_eq!(name.status().state, NameState::Failed);
        assert!(!name.hold_ended(until + TTL), "dropped once");
    }

    #[test]
    fn a_lookup_slower_than_ttl_and_hold_still_confirms_its_answer() {
        let (name, s) = (name(), settings());
        let started = Instant::now() - s.hold_valid - TTL - Duration::from_secs(1);
        name.succeeded(records(), TTL, started + TTL, &s);
        assert!(name.hold_until().is_some_and(|h| h > Instant::now()));
    }

    #[test]
    fn an_overdue_refresh_shows_holding_after_the_grace() {
        let (name, s) = (name(), settings());
        name.succeeded(records(), TTL, Instant::now(), &s);
        let status = name.lock();
        let now = status.confirmed_until.unwrap();
        assert_eq!(status.shown_state(now), NameState::Resolved);
        assert_eq!(
            status.shown_state(now + OVERDUE_GRACE / 2),
            NameState::Resolved
        );
        assert_eq!(status.shown_state(now + OVERDUE_GRACE), NameState::Holding);
    }
}
