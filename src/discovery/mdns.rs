//! Multicast DNS as a source, and as a registry to announce in.
//!
//! A backend's `mdns_service` names either a go-micro service
//! (`"greeter"`: go-micro's default registry, in the domain `micro.`) or a
//! DNS-SD service type (`"_http._tcp.local."`). The two travel the same
//! multicast group but take different paths here:
//!
//! ```text
//! mdns_service = "greeter"           ──▶ engine   (hickory-proto packets,
//! [[register]] registry = "mdns"          go-micro's TXT codec)
//! mdns_service = "_http._tcp.local." ──▶ dnssd    (the mdns-sd crate)
//! [[register]] name = "_x._tcp.local."
//!                    │ instances
//!                    ▼
//!              MdnsWatch ──changed──▶ control task ──▶ endpoint set swap
//! ```
//!
//! The control task owns an [`MdnsWatcher`], prepared and committed with
//! each config as the DNS and Consul watchers are; the sockets and the
//! mdns-sd daemon live in a [`Runtime`] made from the `[mdns]` settings and
//! started on first use.

pub mod dnssd;
pub mod engine;
pub mod gomicro;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::config::{BackendTarget, Config, MdnsSpec, MdnsTarget, RegisterSpec};
use dnssd::{DnsSd, DnsSdAnnounced};
use engine::{Announced, Announcement, Engine};
pub use watch::{MdnsInstance, MdnsWatch, MdnsWatchStatus};

/// How long a start, a reload or a gateway request waits for the first
/// instance of a service it starts watching. Responders answer within a
/// few hundred milliseconds (mdns-sd delays shared answers by up to 120 ms).
pub const FIRST_ANSWER_BUDGET: Duration = Duration::from_secs(1);

/// The mDNS machinery of one `[mdns]` setting: the interfaces, and the
/// go-micro engine and DNS-SD daemon, each started on first use.
pub struct Runtime {
    spec: MdnsSpec,
    interfaces: Vec<(String, Ipv4Addr)>,
    changed: mpsc::UnboundedSender<MdnsTarget>,
    gomicro: OnceLock<Result<Engine, String>>,
    dnssd: OnceLock<Result<DnsSd, String>>,
}

/// A service announced by mDNS: withdrawn with a goodbye when dropped.
pub enum Announcing {
    GoMicro(Announced),
    DnsSd(DnsSdAnnounced),
}

impl Announcing {
    /// Sends the goodbye and waits until it is sent.
    pub async fn withdraw(self) {
        match self {
            Self::GoMicro(a) => a.withdraw().await,
            Self::DnsSd(a) => a.withdraw().await,
        }
    }
}

impl Runtime {
    /// Finds the interfaces `spec` names; the sockets open on first use.
    pub fn new(
        spec: &MdnsSpec,
        changed: mpsc::UnboundedSender<MdnsTarget>,
    ) -> Result<Self, String> {
        let interfaces =
            engine::interfaces(&spec.interfaces).map_err(|e| format!("mdns.interfaces: {e}"))?;
        Ok(Self {
            spec: spec.clone(),
            interfaces,
            changed,
            gomicro: OnceLock::new(),
            dnssd: OnceLock::new(),
        })
    }

    fn gomicro(&self) -> Result<&Engine, String> {
        self.gomicro
            .get_or_init(|| {
                Engine::start(
                    self.interfaces.iter().map(|(_, ip)| *ip).collect(),
                    self.spec.domain.clone(),
                    self.spec.query_interval,
                    self.spec.ttl,
                    self.changed.clone(),
                )
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn dnssd(&self) -> Result<&DnsSd, String> {
        self.dnssd
            .get_or_init(|| {
                DnsSd::start(&self.interfaces).map_err(|e| format!("DNS-SD daemon: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts following `watch`'s service; stops when the guard drops.
    fn follow(self: &Arc<Self>, watch: &Arc<MdnsWatch>) -> Result<Following, String> {
        match &watch.target {
            MdnsTarget::GoMicro(_) => {
                let engine = self.gomicro()?;
                watch.set_wake(engine.wake());
                engine.watch(watch.clone());
                Ok(Following::GoMicro(self.clone(), watch.clone()))
            }
            MdnsTarget::DnsSd(_) => {
                let wake = Arc::new(Notify::new());
                watch.set_wake(wake.clone());
                let task = self
                    .dnssd()?
                    .follow(watch.clone(), wake, self.changed.clone());
                Ok(Following::Task(task))
            }
        }
    }

    /// The addresses a registration without `address` announces: those of
    /// the mDNS interfaces, loopback only when there is nothing else.
    fn own_addresses(&self) -> Vec<Ipv4Addr> {
        let all: Vec<Ipv4Addr> = self.interfaces.iter().map(|(_, ip)| *ip).collect();
        let outside: Vec<Ipv4Addr> = all.iter().copied().filter(|ip| !ip.is_loopback()).collect();
        if outside.is_empty() { all } else { outside }
    }

    /// Announces `spec`: the go-micro way, or as a DNS-SD service when its
    /// name is a service type.
    pub fn announce(&self, spec: &RegisterSpec) -> Result<Announcing, String> {
        let ips = match spec.address.as_deref().map(str::parse::<Ipv4Addr>) {
            Some(Ok(ip)) => vec![ip],
            // Validation allows only IPv4 addresses here.
            Some(Err(_)) | None => self.own_addresses(),
        };
        match MdnsTarget::parse(&spec.name) {
            MdnsTarget::GoMicro(_) => {
                let mut metadata = spec.meta.clone();
                metadata
                    .entry("registry".into())
                    .or_insert_with(|| "mdns".into());
                let announcement = Announcement {
                    id: spec.id.clone(),
                    service: spec.name.clone(),
                    ips,
                    port: spec.port,
                    txt: gomicro::ServiceTxt {
                        metadata: Some(metadata),
                        service: spec.name.clone(),
                        version: spec.version.clone(),
                        endpoints: serde_json::Value::Array(Vec::new()),
                    },
                    every: spec.interval,
                };
                Ok(Announcing::GoMicro(self.gomicro()?.announce(announcement)))
            }
            MdnsTarget::DnsSd(ty) => {
                let properties: BTreeMap<String, String> = spec.meta.clone();
                self.dnssd()?
                    .register(&ty, &spec.id, &ips, spec.port, &properties)
                    .map(Announcing::DnsSd)
                    .map_err(|e| format!("DNS-SD registration: {e}"))
            }
        }
    }
}

/// A watch being followed by a runtime.
enum Following {
    GoMicro(Arc<Runtime>, Arc<MdnsWatch>),
    Task(tokio::task::JoinHandle<()>),
}

impl Drop for Following {
    fn drop(&mut self) {
        match self {
            Self::GoMicro(runtime, watch) => {
                if let Some(Ok(engine)) = runtime.gomicro.get() {
                    engine.unwatch(watch.clone());
                }
            }
            Self::Task(task) => task.abort(),
        }
    }
}

struct Running {
    watch: Arc<MdnsWatch>,
    _following: Option<Following>,
}

/// Who wants a watch besides the config's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    /// On-demand backends of gateway routes.
    Gateway,
}

/// The mDNS watches of the running config, and the runtime they use.
pub struct MdnsWatcher {
    spec: Option<MdnsSpec>,
    runtime: Option<Arc<Runtime>>,
    running: HashMap<MdnsTarget, Running>,
    changed: mpsc::UnboundedSender<MdnsTarget>,
    backend_keys: HashSet<MdnsTarget>,
    other_keys: HashMap<KeyOwner, HashSet<MdnsTarget>>,
}

/// What [`MdnsWatcher::prepare`] started, to commit or undo.
pub struct MdnsPlan {
    spec: Option<MdnsSpec>,
    runtime: Option<Arc<Runtime>>,
    started: Vec<MdnsTarget>,
    /// The runtime is new: watches started before move to it on commit.
    moved: bool,
}

/// Every mDNS target `config`'s backends use.
fn wanted(config: &Config) -> HashSet<MdnsTarget> {
    config
        .backends
        .iter()
        .filter_map(|b| match &b.target {
            BackendTarget::Mdns(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

impl MdnsWatcher {
    /// `changed` hears each service whose instances changed.
    pub fn new(changed: mpsc::UnboundedSender<MdnsTarget>) -> Self {
        Self {
            spec: None,
            runtime: None,
            running: HashMap::new(),
            changed,
            backend_keys: HashSet::new(),
            other_keys: HashMap::new(),
        }
    }

    /// The runtime of the running config, for registrations.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.clone()
    }

    pub fn get(&self, target: &MdnsTarget) -> Option<Arc<MdnsWatch>> {
        self.running.get(target).map(|r| r.watch.clone())
    }

    /// Every watch, sorted, for `/status` and metrics.
    pub fn watches(&self) -> Vec<Arc<MdnsWatch>> {
        let mut all: Vec<_> = self.running.values().map(|r| r.watch.clone()).collect();
        all.sort_by(|a, b| a.target.cmp(&b.target));
        all
    }

    fn start(&mut self, target: &MdnsTarget, runtime: &Arc<Runtime>) -> Arc<MdnsWatch> {
        let watch = Arc::new(MdnsWatch::new(target.clone()));
        let following = match runtime.follow(&watch) {
            Ok(f) => Some(f),
            Err(error) => {
                tracing::error!(service = %target, %error, "Cannot follow an mDNS service");
                watch.failed(error);
                None
            }
        };
        self.running.insert(
            target.clone(),
            Running {
                watch: watch.clone(),
                _following: following,
            },
        );
        watch
    }

    /// Starts the watches `config` adds and waits (a second at most) for
    /// their first instances. Fails when the `[mdns]` interfaces cannot be
    /// found.
    pub async fn prepare(&mut self, config: &Config) -> Result<MdnsPlan, (MdnsPlan, String)> {
        let mut plan = MdnsPlan {
            spec: config.mdns.clone(),
            runtime: self.runtime.clone(),
            started: Vec::new(),
            moved: false,
        };
        let Some(spec) = &config.mdns else {
            plan.runtime = None;
            return Ok(plan);
        };
        if plan.runtime.is_none() || self.spec.as_ref() != Some(spec) {
            match Runtime::new(spec, self.changed.clone()) {
                Ok(r) => {
                    plan.runtime = Some(Arc::new(r));
                    plan.moved = self.runtime.is_some();
                }
                Err(e) => return Err((plan, e)),
            }
        }
        let Some(runtime) = plan.runtime.clone() else {
            return Ok(plan);
        };
        let mut new = Vec::new();
        for target in wanted(config) {
            if !self.running.contains_key(&target) {
                new.push(self.start(&target, &runtime));
                plan.started.push(target);
            }
        }
        let _ = tokio::time::timeout(FIRST_ANSWER_BUDGET, async {
            for w in &new {
                w.first_instance().await;
            }
        })
        .await;
        Ok(plan)
    }

    /// Makes `config`'s watches the running set, on the plan's runtime.
    pub fn commit(&mut self, plan: MdnsPlan, config: &Config) {
        self.backend_keys = wanted(config);
        if plan.runtime.is_none() {
            self.other_keys.clear();
        }
        let keep: HashSet<MdnsTarget> = self
            .running
            .keys()
            .filter(|k| self.is_wanted(k))
            .cloned()
            .collect();
        self.running.retain(|k, _| keep.contains(k));
        self.spec = plan.spec;
        self.runtime = plan.runtime;
        if let (true, Some(runtime)) = (plan.moved, self.runtime.clone()) {
            // The same watches (the backends hold them) on the new sockets.
            for (target, running) in self.running.iter_mut() {
                if plan.started.contains(target) {
                    continue;
                }
                running._following = None;
                running._following = runtime.follow(&running.watch).ok();
            }
        }
    }

    /// Undoes [`prepare`](Self::prepare).
    pub fn abort(&mut self, plan: MdnsPlan) {
        for target in plan.started {
            self.running.remove(&target);
        }
    }

    fn is_wanted(&self, target: &MdnsTarget) -> bool {
        self.backend_keys.contains(target) || self.other_keys.values().any(|k| k.contains(target))
    }

    /// Makes `keys` what `owner` follows: starts the new ones (returned,
    /// to wait for) and stops those nothing uses any more.
    pub fn set_keys(&mut self, owner: KeyOwner, keys: HashSet<MdnsTarget>) -> Vec<Arc<MdnsWatch>> {
        let mut started = Vec::new();
        if let Some(runtime) = self.runtime.clone() {
            for key in &keys {
                if !self.running.contains_key(key) {
                    started.push(self.start(key, &runtime));
                }
            }
        }
        let old = self.other_keys.insert(owner, keys).unwrap_or_default();
        for gone in &old {
            if !self.is_wanted(gone) {
                self.running.remove(gone);
            }
        }
        started
    }
}
