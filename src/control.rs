//! The control plane: loads config, compiles and publishes tables, keeps the
//! last good one when a change is bad, and records what happened.
//!
//! One task owns every change, so reloads never interleave: SIGHUP,
//! `POST /reload` and file changes all become [`ControlMsg`]s on one channel.
//!
//! ```text
//! trigger ──▶ load + validate ──▶ bind new listeners ──▶ compile ──▶ publish
//!                  │ error              │ error                         │
//!                  └────────── keep last good, report ◀─┘      diff, drain, report
//! ```

mod gateway;
pub mod status;
pub mod templating;
mod watch;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHashSet;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, ConfigErrors};
use crate::discovery::consul::{ConsulPlan, ConsulWatch, ConsulWatcher, WatchKey};
use crate::discovery::dns::{DnsName, DnsPlan, DnsQuery, DnsWatcher};
use crate::discovery::mdns::{MdnsPlan, MdnsWatch, MdnsWatcher};
use crate::discovery::register::{RegistrationStatus, Registrations};
use crate::discovery::tag_routes::{self, TagRoute};
use crate::error_chain::ErrorChain;
use crate::metrics::Metrics;
use crate::proxy::listener::{BindError, ListenerSet, Placement};
use crate::sockets::SocketRegistry;
use crate::table::diff::ConfigDiff;
use crate::table::gateway::Gateway;
use crate::table::{self, Backend, CompileContext, CompileError, Table, TableHandle};
use crate::template::{Dep, TemplateStatus};
use crate::upgrade::{self, HandedState, Predecessor, Relaunch, UpgradeError, Upgraded};
use crate::upstream::health::HealthChecks;
use crate::upstream::state::EndpointState;
use gateway::{CATALOG, GatewayControl, watch_catalog};
use templating::{KvDirStatus, Templating};
use tokio_util::sync::CancellationToken;
use watch::ConfigWatcher;

/// Quiet time after the last file event before reloading: editors write a
/// file in several steps.
const FILE_DEBOUNCE: Duration = Duration::from_millis(150);
/// How often drained endpoints are forgotten.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// How often a replaced process tells its successor what it still serves.
const DRAIN_REPORT_EVERY: Duration = Duration::from_millis(500);
/// Reload attempts `/status` lists under `reloads`.
pub const RELOAD_HISTORY: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Not `#[from]`: that would make the errors the source too, and
    /// printing the chain would list them twice.
    #[error("invalid config:\n{0}")]
    Config(ConfigErrors),
    #[error(transparent)]
    BindListener(#[from] BindError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("watching config files")]
    Watch(#[from] notify::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("discovery:\n{}", .0.join("\n"))]
    Discovery(Vec<String>),
    #[error("templates:\n{}", .0.join("\n"))]
    Templates(Vec<String>),
}

impl From<ConfigErrors> for StartError {
    fn from(e: ConfigErrors) -> Self {
        Self::Config(e)
    }
}

/// What made a reload happen, shown in `/status` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Start,
    Signal,
    Admin,
    FileChange,
    Api,
    /// A template whose output the config includes rendered new text.
    Template,
    /// A Consul service's `urlprefix-` tags changed.
    ConsulTags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    Success,
    /// The files parse to the config already running: nothing to swap.
    Unchanged,
    Failure,
}

/// One reload attempt, as `/status` and `POST /reload` show it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    pub at: String,
    pub trigger: Trigger,
    pub result: ReloadResult,
    /// The table version in use after this attempt.
    pub version: u64,
    /// Every problem found, each naming its file and key.
    pub errors: Vec<String>,
    pub diff: Option<ConfigDiff>,
}

pub enum ControlMsg {
    Reload {
        trigger: Trigger,
        reply: Option<oneshot::Sender<ReloadRecord>>,
    },
    /// Drain and stop; replies `true` when every connection finished in time.
    Shutdown { reply: oneshot::Sender<bool> },
    /// Start the binary again and hand it the sockets; on success this
    /// process drains and its control task ends. Sent only by a caller
    /// that has [`BoardState::begin_upgrade`]d.
    Upgrade {
        reply: oneshot::Sender<Result<Upgraded, UpgradeError>>,
    },
}

/// Where this process stands in a binary upgrade (`/status` `upgrade`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UpgradeState {
    #[default]
    Idle,
    InProgress {
        since: String,
    },
    /// A new process serves; this one drains and exits.
    Replaced {
        by_pid: u32,
        at: String,
    },
}

/// The last upgrade this process tried, for `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeRecord {
    pub at: String,
    pub result: &'static str,
    pub new_pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub took_ms: u64,
}

/// What the process lifecycle gives the control task beyond the config:
/// the sockets, how to start a successor, and what to stop when one serves.
pub struct Lifecycle {
    pub sockets: SocketRegistry,
    pub relaunch: Option<Relaunch>,
    /// Stops the admin server's accept loop (its socket has moved on).
    pub admin_stop: CancellationToken,
    /// Set when this process has been replaced and has drained.
    pub retired: CancellationToken,
    /// What the process this one replaces knew, to start from.
    pub handed: HandedState,
}

/// State the admin API reads; written only by the control task.
#[derive(Default)]
pub struct StatusBoard(Mutex<BoardState>);

#[derive(Default)]
pub struct BoardState {
    pub last_reload: Option<ReloadRecord>,
    pub last_failure: Option<ReloadRecord>,
    /// The latest [`RELOAD_HISTORY`] attempts, oldest first; kept by
    /// [`BoardState::record_reload`].
    pub reloads: VecDeque<ReloadRecord>,
    pub listener_addrs: Vec<(Arc<str>, SocketAddr)>,
    /// Endpoints removed by a swap that still have work in flight.
    pub draining: Vec<Arc<EndpointState>>,
    /// The DNS names being watched, sorted.
    pub dns: Vec<Arc<DnsName>>,
    /// The Consul watches, sorted.
    pub consul: Vec<Arc<ConsulWatch>>,
    /// The mDNS watches, sorted.
    pub mdns: Vec<Arc<MdnsWatch>>,
    pub templates: Vec<TemplateStatus>,
    pub kv_dir: Option<KvDirStatus>,
    /// The gateway routes' on-demand backends.
    pub gateway: Option<Arc<Gateway>>,
    /// Services registered in Consul (live state).
    pub registrations: Vec<Arc<Mutex<RegistrationStatus>>>,
    pub shutting_down: bool,
    pub upgrade: UpgradeState,
    pub last_upgrade: Option<UpgradeRecord>,
    /// The process this one replaced, while it drains.
    pub predecessor: Option<PredecessorStatus>,
    pub predecessor_link: Option<Predecessor>,
}

/// The replaced process's drain, as it reports it (`/status`).
#[derive(Debug, Clone, Serialize)]
pub struct PredecessorStatus {
    pub pid: u32,
    /// Connections it still serves.
    pub draining_connections: usize,
    pub since: String,
}

impl BoardState {
    /// Keeps one reload attempt: the last one, the last failure, and the
    /// bounded history the status page lists.
    pub fn record_reload(&mut self, record: &ReloadRecord) {
        if record.result == ReloadResult::Failure {
            self.last_failure = Some(record.clone());
        }
        if self.reloads.len() == RELOAD_HISTORY {
            self.reloads.pop_front();
        }
        self.reloads.push_back(record.clone());
        self.last_reload = Some(record.clone());
    }

    /// Claims the one upgrade a process may run at a time.
    pub fn begin_upgrade(&mut self) -> Result<(), UpgradeError> {
        match self.upgrade {
            UpgradeState::Idle if self.shutting_down => Err(UpgradeError::ShuttingDown),
            UpgradeState::Idle => {
                self.upgrade = UpgradeState::InProgress { since: now() };
                Ok(())
            }
            UpgradeState::InProgress { .. } => Err(UpgradeError::InProgress),
            UpgradeState::Replaced { by_pid, .. } => Err(UpgradeError::Replaced(by_pid)),
        }
    }
}

impl StatusBoard {
    /// Never held across an await or on the data path; a poisoned lock only
    /// means a panic elsewhere, and the state is still readable.
    pub fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Control {
    path: PathBuf,
    table: TableHandle,
    listeners: ListenerSet,
    metrics: Metrics,
    board: Arc<StatusBoard>,
    /// `None` when the config is reloaded only on request (`--no-watch`).
    watcher: Option<ConfigWatcher>,
    file_events: mpsc::Receiver<()>,
    sources: Sources,
    dns_events: mpsc::UnboundedReceiver<DnsQuery>,
    consul_events: mpsc::UnboundedReceiver<WatchKey>,
    mdns_events: mpsc::UnboundedReceiver<config::MdnsTarget>,
    templating: Templating,
    health: HealthChecks,
    registrations: Registrations,
    gateway: GatewayControl,
    /// The tag routes merged into the running table.
    tag_routes: Vec<TagRoute>,
    lifecycle: Lifecycle,
}

/// Endpoint states that left their backend and still drain, by address.
struct DrainingIndex(HashMap<SocketAddr, Vec<Arc<EndpointState>>>);

impl DrainingIndex {
    /// The draining state of (backend, address), so an address that comes
    /// back keeps its counters and connections.
    fn find(&self, backend: &str, addr: SocketAddr) -> Option<Arc<EndpointState>> {
        self.0
            .get(&addr)?
            .iter()
            .find(|s| &*s.backend == backend)
            .cloned()
    }
}

/// The discovery sources, prepared and committed together with each config.
struct Sources {
    dns: DnsWatcher,
    consul: ConsulWatcher,
    mdns: MdnsWatcher,
}

struct SourcesPlan {
    dns: DnsPlan,
    consul: ConsulPlan,
    mdns: MdnsPlan,
}

impl Sources {
    /// Starts what `config` adds; on failure nothing it started is left.
    async fn prepare(&mut self, config: &config::Config) -> Result<SourcesPlan, Vec<String>> {
        let dns = match self.dns.prepare(config).await {
            Ok(plan) => plan,
            Err((plan, errors)) => {
                self.dns.abort(plan);
                return Err(errors);
            }
        };
        let consul = match self.consul.prepare(config).await {
            Ok(consul) => consul,
            Err((consul, error)) => {
                self.consul.abort(consul);
                self.dns.abort(dns);
                return Err(vec![error]);
            }
        };
        match self.mdns.prepare(config).await {
            Ok(mdns) => Ok(SourcesPlan { dns, consul, mdns }),
            Err((mdns, error)) => {
                self.mdns.abort(mdns);
                self.consul.abort(consul);
                self.dns.abort(dns);
                Err(vec![error])
            }
        }
    }

    fn commit(&mut self, plan: SourcesPlan, config: &config::Config, board: &StatusBoard) {
        self.dns.commit(plan.dns, config);
        self.consul.commit(plan.consul, config);
        self.mdns.commit(plan.mdns, config);
        self.consul.save_state();
        let mut b = board.lock();
        b.dns = self.dns.names();
        b.consul = self.consul.watches();
        b.mdns = self.mdns.watches();
    }

    fn abort(&mut self, plan: SourcesPlan) {
        self.dns.abort(plan.dns);
        self.consul.abort(plan.consul);
        self.mdns.abort(plan.mdns);
    }
}

impl Control {
    /// Loads the config and starts its listeners; fails when the first config
    /// is invalid or a listener cannot be bound.
    pub async fn start(
        path: &Path,
        watch_files: bool,
        placement: Placement,
        metrics: Metrics,
        board: Arc<StatusBoard>,
        mut lifecycle: Lifecycle,
    ) -> Result<(Self, TableHandle), StartError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut config = config::load(&path)?;
        let (dns_tx, dns_events) = mpsc::unbounded_channel();
        let (consul_tx, consul_events) = mpsc::unbounded_channel();
        let (mdns_tx, mdns_events) = mpsc::unbounded_channel();
        let mut sources = Sources {
            dns: DnsWatcher::new(dns_tx, metrics.dns_lookups.clone()),
            consul: ConsulWatcher::new(consul_tx),
            mdns: MdnsWatcher::new(mdns_tx),
        };
        let handed = std::mem::take(&mut lifecycle.handed);
        sources.dns.seed(handed.dns);
        // Templates render before the first compile, so that the routes
        // they produce are there from the first request.
        let mut templating = Templating::new(metrics.clone(), board.clone());
        let templates = templating
            .prepare(&config.templates)
            .map_err(StartError::Templates)?;
        let kv = templating
            .prepare_kv(config.kv.as_ref())
            .map_err(|e| StartError::Templates(vec![e]))?;
        templating.commit(templates, kv);
        if !templating.set.is_empty() {
            templating
                .render_initial(&mut sources.consul, config.consul.as_ref())
                .await;
            if config.templates.iter().any(|t| t.included) {
                config = config::load_with(&path, &|p| templating.output_for(p))?;
            }
        }
        watch_catalog(&mut sources.consul, &config);
        let config = Arc::new(config);
        let plan = sources
            .prepare(&config)
            .await
            .map_err(StartError::Discovery)?;
        let (gateway, gateway_requests) = Gateway::new();
        board.lock().gateway = Some(gateway.clone());
        let ctx = CompileContext {
            find_draining: &|_, _| None,
            dns: &|q| sources.dns.get(q),
            consul: &|k| sources.consul.get(k),
            mdns: &|t| sources.mdns.get(t),
            gateway: Some(&gateway),
        };
        let table = table::compile(config.clone(), 1, None, &ctx, &metrics)?;
        sources.commit(plan, &config, &board);
        // Endpoints the old process's checks hold down start down here too
        // (they need `rise` good checks to come back), not up for `fall`
        // failed checks' time.
        for (state, _, _) in table.checked_endpoints() {
            if handed
                .unhealthy
                .iter()
                .any(|(backend, addr)| **backend == *state.backend && *addr == state.addr)
            {
                state.set_healthy(false);
            }
        }
        let mut health = HealthChecks::new(metrics.clone());
        health.sync(table.checked_endpoints());
        let mut registrations = Registrations::default();
        registrations.apply(
            &config.register,
            sources.consul.client(),
            sources.mdns.runtime(),
        );
        board.lock().registrations = registrations.statuses();
        let handle = TableHandle::new(table);
        let mut listeners = ListenerSet::new(
            handle.clone(),
            placement,
            metrics.worker_connections.clone(),
            lifecycle.sockets.clone(),
        );
        let prepared = listeners.prepare(&config)?;
        listeners.commit(prepared, &config);
        let (tx, file_events) = mpsc::channel(1);
        let watcher = if watch_files {
            let mut watcher = ConfigWatcher::new(tx)?;
            watcher.watch(&config.files);
            Some(watcher)
        } else {
            None
        };
        metrics.config_version.set(1);
        metrics.set_certificates(&config);
        metrics.reload(true);
        {
            let mut b = board.lock();
            b.listener_addrs = listeners.local_addrs();
            b.record_reload(&ReloadRecord {
                at: now(),
                trigger: Trigger::Start,
                result: ReloadResult::Success,
                version: 1,
                errors: Vec::new(),
                diff: Some(ConfigDiff::initial(&config)),
            });
        }
        // Included outputs are written once the config built from them runs,
        // as on every reload: a start that fails leaves the files alone.
        templating.apply_staged().await;
        Ok((
            Self {
                path,
                table: handle.clone(),
                listeners,
                metrics,
                board,
                watcher,
                file_events,
                sources,
                dns_events,
                consul_events,
                mdns_events,
                templating,
                health,
                registrations,
                gateway: GatewayControl::new(gateway, gateway_requests),
                tag_routes: Vec::new(),
                lifecycle,
            },
            handle,
        ))
    }

    /// Handles messages until shutdown.
    pub async fn run(mut self, mut rx: mpsc::Receiver<ControlMsg>) {
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            let template_due = self.templating.set.next_due();
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(ControlMsg::Reload { trigger, reply }) => {
                        let record = self.reload(trigger).await;
                        if let Some(reply) = reply {
                            let _ = reply.send(record);
                        }
                    }
                    Some(ControlMsg::Shutdown { reply }) => {
                        let drained = self.shutdown().await;
                        let _ = reply.send(drained);
                        return;
                    }
                    Some(ControlMsg::Upgrade { reply }) => {
                        let result = self.upgrade().await;
                        let upgraded = result.as_ref().ok().cloned();
                        let _ = reply.send(result);
                        if let Some(upgraded) = upgraded {
                            self.hand_off_and_drain(upgraded).await;
                            return;
                        }
                    }
                    None => return,
                },
                Some(()) = self.file_events.recv() => {
                    self.debounce_files().await;
                    self.reload(Trigger::FileChange).await;
                }
                Some(query) = self.dns_events.recv() => {
                    // Coalesce a burst (many names changing at once) into
                    // one update per backend.
                    let mut changed = vec![query];
                    while let Ok(q) = self.dns_events.try_recv() {
                        changed.push(q);
                    }
                    self.apply_discovery(&changed, &[], &[]);
                }
                Some(target) = self.mdns_events.recv() => {
                    let mut changed = vec![target];
                    while let Ok(t) = self.mdns_events.try_recv() {
                        changed.push(t);
                    }
                    self.apply_discovery(&[], &[], &changed);
                }
                Some(key) = self.consul_events.recv() => {
                    let mut changed = vec![key];
                    while let Ok(k) = self.consul_events.try_recv() {
                        changed.push(k);
                    }
                    if changed.contains(&CATALOG) {
                        self.update_gateway_catalog();
                        if self.catalog_tag_routes() != self.tag_routes {
                            self.reload(Trigger::ConsulTags).await;
                        }
                    }
                    self.apply_discovery(&[], &changed, &[]);
                    self.sources.consul.save_state();
                    self.templating.set.mark_changed(
                        |d| matches!(d, Dep::Consul(k) if changed.contains(k)),
                        Instant::now(),
                    );
                }
                () = self.templating.kv_changed() => self.templating.rescan_kv().await,
                () = sleep_until(template_due) => self.render_templates().await,
                Some(request) = self.gateway.requests.recv() => self.gateway_request(request),
                Some(service) = self.gateway.ready.recv() => self.gateway_ready(&service),
                _ = prune.tick() => {
                    self.prune_draining();
                    self.retire_gateway_backends();
                }
            }
        }
    }

    /// Renders the templates that are due; an included output that changed
    /// reloads the config, once for the whole batch, and is written only
    /// if that reload is applied.
    async fn render_templates(&mut self) {
        let consul = self.table.current().config.consul.clone();
        let staged = self
            .templating
            .render_due(&mut self.sources.consul, consul.as_ref())
            .await;
        if staged {
            // A reload like any other: it reads every file as it is now, so
            // a broken source or config rejects it and the staged outputs
            // are dropped rather than written beside a table that lacks them.
            let record = self.reload(Trigger::Template).await;
            match record.result {
                ReloadResult::Failure => self.templating.discard_staged(&record.errors),
                ReloadResult::Success | ReloadResult::Unchanged => {
                    self.templating.apply_staged().await
                }
            }
        }
    }

    async fn debounce_files(&mut self) {
        loop {
            tokio::select! {
                Some(()) = self.file_events.recv() => {}
                () = tokio::time::sleep(FILE_DEBOUNCE) => return,
            }
        }
    }

    async fn shutdown(&mut self) -> bool {
        let grace = self.table.current().config.shutdown_grace;
        self.board.lock().shutting_down = true;
        // Out of Consul first, so clients stop being sent here.
        self.registrations.deregister_all().await;
        tracing::info!(grace = ?grace, "Shutting down: draining connections");
        // The registry's duplicates would keep the sockets listening (and
        // queueing connections nobody accepts) after the accept loops stop.
        self.lifecycle.sockets.release_all();
        let drained = self.listeners.shutdown(grace).await;
        if drained {
            tracing::info!("All connections finished");
        } else {
            tracing::warn!("Grace period over; closed the remaining connections");
        }
        drained
    }

    /// Starts the successor and hands it every listening socket. The
    /// control task waits for it, so no reload binds a socket the
    /// successor does not know of.
    async fn upgrade(&mut self) -> Result<Upgraded, UpgradeError> {
        let started = Instant::now();
        let result = match self.lifecycle.relaunch.clone() {
            None => Err(UpgradeError::NotRelaunchable),
            Some(relaunch) => match self.lifecycle.sockets.live() {
                Err(error) => Err(UpgradeError::Socket(error)),
                Ok(sockets) => {
                    let state = self.handed_state();
                    tokio::task::spawn_blocking(move || {
                        upgrade::hand_over(&relaunch, sockets, state)
                    })
                    .await
                    .unwrap_or_else(|join| {
                        Err(UpgradeError::Handover(std::io::Error::other(
                            join.to_string(),
                        )))
                    })
                }
            },
        };
        self.metrics.upgrade(result.is_ok());
        let mut board = self.board.lock();
        board.last_upgrade = Some(UpgradeRecord {
            at: now(),
            result: if result.is_ok() { "success" } else { "failure" },
            new_pid: result.as_ref().ok().map(|u| u.new_pid),
            exit_code: result.as_ref().err().and_then(UpgradeError::exit_code),
            error: result.as_ref().err().map(|e| ErrorChain(e).to_string()),
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        board.upgrade = match &result {
            Ok(upgraded) => UpgradeState::Replaced {
                by_pid: upgraded.new_pid,
                at: now(),
            },
            Err(_) => UpgradeState::Idle,
        };
        result
    }

    /// What a successor should start from: the DNS answers held now and
    /// the endpoints health checks hold down.
    fn handed_state(&self) -> HandedState {
        let table = self.table.current();
        HandedState {
            dns: self.sources.dns.seeds(),
            unhealthy: table
                .checked_endpoints()
                .filter(|(state, _, _)| !state.is_healthy())
                .map(|(state, _, _)| (state.backend.to_string(), state.addr))
                .collect(),
        }
    }

    /// After a successful upgrade: stop accepting (the successor accepts
    /// on the same sockets now), leave Consul registrations and template
    /// outputs to the successor, drain within the grace period, and say
    /// so before the process exits.
    async fn hand_off_and_drain(&mut self, upgraded: Upgraded) {
        tracing::info!(new_pid = upgraded.new_pid, took = ?upgraded.took, "Upgrade: the new process serves; this one stops accepting and drains");
        self.lifecycle.admin_stop.cancel();
        self.watcher = None;
        // The successor registered the same services; stopping the tasks
        // without deregistering or saying goodbye leaves them to it. Templates
        // render only in the control loop, which ends here.
        self.registrations.leave_to_successor();
        let grace = self.table.current().config.shutdown_grace;
        let predecessor = {
            let mut board = self.board.lock();
            board.shutting_down = true;
            board.predecessor_link.take()
        };
        // One old process drains at a time: the one this process replaced
        // closes what it still has now, so upgrades in a row never pile up
        // processes.
        if let Some(predecessor) = predecessor {
            tracing::info!(
                pid = predecessor.pid,
                "Upgrade: asking the process still draining from the last upgrade to finish now"
            );
            predecessor.finish();
        }
        self.lifecycle.sockets.release_all();
        // The successor hears how many connections are left, and may ask
        // for the rest to be closed at once.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (wire, done, tasks, cut) = (
                upgraded.wire.clone(),
                done.clone(),
                self.listeners.tasks(),
                self.listeners.cut_handle(),
            );
            std::thread::spawn(move || {
                if upgrade::report_drain(&wire, DRAIN_REPORT_EVERY, || tasks.len(), &done) {
                    tracing::info!(
                        "Upgrade: the new process asks this one to finish now; closing what is left"
                    );
                    cut.set();
                }
            });
        }
        let drained = self.listeners.shutdown(grace).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        if drained {
            tracing::info!(
                pid = std::process::id(),
                new_pid = upgraded.new_pid,
                "Old process exiting: every connection finished"
            );
        } else {
            tracing::warn!(pid = std::process::id(), new_pid = upgraded.new_pid, grace = ?grace, "Old process exiting: grace period over, closed the remaining connections");
        }
        self.lifecycle.retired.cancel();
    }

    /// Applies the config files as they are now, or keeps the running table.
    pub async fn reload(&mut self, trigger: Trigger) -> ReloadRecord {
        let started = Instant::now();
        let outcome = self.try_reload().await;
        let took = started.elapsed();
        let version = self.table.current().version;
        let record = match outcome {
            Ok(Some(diff)) => {
                // `took` covers reading, validating, compiling and publishing.
                tracing::info!(version, ?trigger, %diff, ?took, "Config applied");
                ReloadRecord {
                    at: now(),
                    trigger,
                    result: ReloadResult::Success,
                    version,
                    errors: Vec::new(),
                    diff: Some(diff),
                }
            }
            Ok(None) => {
                tracing::debug!(version, ?trigger, "Config unchanged");
                ReloadRecord {
                    at: now(),
                    trigger,
                    result: ReloadResult::Unchanged,
                    version,
                    errors: Vec::new(),
                    diff: None,
                }
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(%error, ?trigger, "Config rejected; keeping the running config");
                }
                ReloadRecord {
                    at: now(),
                    trigger,
                    result: ReloadResult::Failure,
                    version,
                    errors,
                    diff: None,
                }
            }
        };
        self.metrics.reload(record.result != ReloadResult::Failure);
        if record.result != ReloadResult::Failure {
            self.templating.retry_rejected();
        }
        self.board.lock().record_reload(&record);
        record
    }

    async fn try_reload(&mut self) -> Result<Option<ConfigDiff>, Vec<String>> {
        let to_strings =
            |e: ConfigErrors| -> Vec<String> { e.0.iter().map(ToString::to_string).collect() };
        let config = config::load_with(&self.path, &|p| self.templating.output_for(p))
            .map_err(to_strings)?;
        let tags = self.catalog_tag_routes();
        let config = tag_routes::merge(config, &tags);
        let current = self.table.current();
        // Files may have been added to `include` even when the result is equal.
        if let Some(watcher) = &mut self.watcher {
            watcher.watch(&config.files);
        }
        let templates = self.templating.prepare(&config.templates)?;
        let kv = self
            .templating
            .prepare_kv(config.kv.as_ref())
            .map_err(|e| vec![e])?;
        if *current.config == config {
            // A template's source may have changed: it renders again.
            self.templating.commit(templates, kv);
            return Ok(None);
        }
        if config.admin_bind != current.config.admin_bind {
            tracing::warn!(
                running = %current.config.admin_bind,
                configured = %config.admin_bind,
                "admin.bind changes take effect at the next restart"
            );
        }
        let prepared = self
            .listeners
            .prepare(&config)
            .map_err(|e| vec![ErrorChain(&e).to_string()])?;
        let version = current.version + 1;
        let draining = self.draining_index();
        let find_draining = |backend: &str, addr: SocketAddr| draining.find(backend, addr);
        // New names are looked up before the compile, so new backends start
        // with their addresses (or the reload fails on a required one).
        let plan = self.sources.prepare(&config).await?;
        let ctx = CompileContext {
            find_draining: &find_draining,
            dns: &|q| self.sources.dns.get(q),
            consul: &|k| self.sources.consul.get(k),
            mdns: &|t| self.sources.mdns.get(t),
            gateway: Some(&self.gateway.registry),
        };
        let table = match table::compile(
            Arc::new(config),
            version,
            Some(&current),
            &ctx,
            &self.metrics,
        ) {
            Ok(table) => table,
            Err(e) => {
                self.sources.abort(plan);
                return Err(vec![e.to_string()]);
            }
        };
        let diff = ConfigDiff::between(&current.config, &table.config);
        let config = table.config.clone();
        self.mark_draining(&current, &table);
        self.health.sync(table.checked_endpoints());
        self.table.publish(table);
        self.tag_routes = tags;
        self.sources.commit(plan, &config, &self.board);
        self.templating.commit(templates, kv);
        self.registrations.apply(
            &config.register,
            self.sources.consul.client(),
            self.sources.mdns.runtime(),
        );
        self.board.lock().registrations = self.registrations.statuses();
        watch_catalog(&mut self.sources.consul, &config);
        self.metrics.config_version.set(version as i64);
        self.metrics.set_certificates(&config);
        self.listeners.commit(prepared, &config);
        self.board.lock().listener_addrs = self.listeners.local_addrs();
        // Freeing a large table takes milliseconds; the control task has
        // better things to do, such as the next reload.
        tokio::task::spawn_blocking(move || drop(current));
        Ok(Some(diff))
    }

    /// Endpoints of `old` that `new` lacks stop taking traffic and are kept
    /// for `/status` until their in-flight work ends; endpoints that came
    /// back stop draining. A backend that `new` reuses as it is keeps its
    /// endpoints, so only changed, added and removed ones are compared.
    fn mark_draining(&self, old: &Table, new: &Table) {
        let changed = |a: &Table, b: &Table| -> Vec<Arc<Backend>> {
            a.backends
                .iter()
                .filter(|(name, x)| !b.backends.get(*name).is_some_and(|y| Arc::ptr_eq(x, y)))
                .map(|(_, x)| x.clone())
                .collect()
        };
        let live = changed(new, old)
            .iter()
            .flat_map(|b| b.endpoint_states())
            .collect::<Vec<_>>();
        let left = changed(old, new)
            .iter()
            .flat_map(|b| b.endpoint_states())
            .collect::<Vec<_>>();
        self.retire(left, &live);
    }

    /// Marks the states in `left` that are not in `live` draining, and the
    /// draining ones that are in `live` live again.
    fn retire(&self, left: Vec<Arc<EndpointState>>, live: &[Arc<EndpointState>]) {
        let live: FxHashSet<*const EndpointState> = live.iter().map(Arc::as_ptr).collect();
        let mut board = self.board.lock();
        board.draining.retain(|s| {
            let back = live.contains(&Arc::as_ptr(s));
            if back {
                s.set_draining(false);
            }
            !back
        });
        let mut listed: FxHashSet<*const EndpointState> =
            board.draining.iter().map(Arc::as_ptr).collect();
        for state in left {
            let ptr = Arc::as_ptr(&state);
            if !live.contains(&ptr) {
                state.set_draining(true);
                if listed.insert(ptr) {
                    board.draining.push(state);
                }
            }
        }
    }

    /// Replaces the endpoint sets of the backends that use a DNS name, a
    /// Consul watch or an mDNS service whose data changed; routes and every
    /// other backend stay as they are.
    fn apply_discovery(
        &mut self,
        dns: &[DnsQuery],
        consul: &[WatchKey],
        mdns: &[config::MdnsTarget],
    ) {
        let table = self.table.current();
        let draining = self.draining_index();
        let find_draining = |backend: &str, addr: SocketAddr| draining.find(backend, addr);
        let on_demand = self.gateway.registry.backends();
        for backend in table.backends.values().chain(on_demand.iter()) {
            let uses = backend.dns.iter().any(|n| dns.contains(&n.query))
                || backend
                    .consul
                    .as_ref()
                    .is_some_and(|w| consul.contains(&w.key))
                || backend
                    .mdns
                    .as_ref()
                    .is_some_and(|w| mdns.contains(&w.target));
            if !uses {
                continue;
            }
            let old = backend.endpoints.load_full();
            let new = table::endpoint_set(
                &backend.spec,
                &backend.dns,
                backend.consul.as_deref(),
                backend.mdns.as_deref(),
                Some(&old),
                &find_draining,
            );
            self.metrics.discovery_updates.inc();
            let live: Vec<_> = new.endpoints.iter().map(|e| e.state.clone()).collect();
            tracing::info!(
                backend = %backend.name(),
                before = old.endpoints.len(),
                after = new.endpoints.len(),
                "Endpoints updated from discovery"
            );
            backend.endpoints.store(Arc::new(new));
            self.retire(
                old.endpoints.iter().map(|e| e.state.clone()).collect(),
                &live,
            );
        }
        if table
            .backends
            .values()
            .any(|b| b.spec.health_check.is_some())
        {
            self.health.sync(table.checked_endpoints());
        }
    }

    /// Draining states by address: few, but looked up once per server of
    /// every changed backend.
    fn draining_index(&self) -> DrainingIndex {
        let mut draining: HashMap<SocketAddr, Vec<Arc<EndpointState>>> = HashMap::new();
        for state in self.board.lock().draining.iter() {
            draining.entry(state.addr).or_default().push(state.clone());
        }
        DrainingIndex(draining)
    }

    fn prune_draining(&self) {
        self.board.lock().draining.retain(|s| s.active() > 0);
    }
}

/// Resolves at `due`, or never.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
