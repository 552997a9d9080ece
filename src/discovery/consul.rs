//! Consul as a source: an HTTP client, shared blocking-query watches, and
//! the last-known-good state file.
//!
//! The control task owns a [`ConsulWatcher`]. Before a config is compiled,
//! [`ConsulWatcher::prepare`] starts a watch for every query the config
//! needs that is not watched yet and waits a little for the first answers
//! (falling back to the state file for those Consul did not answer); after
//! the swap, [`ConsulWatcher::commit`] stops the watches nothing needs any
//! more. A watch whose data changes sends its key to the control task, which
//! replaces the endpoint sets of the backends that use it, marks the
//! templates that read it, and reloads when the catalog's tag routes changed.

pub mod client;
pub mod data;
pub mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Watched;
use crate::config::{BackendTarget, Config, ConsulSpec, ConsulTarget};
pub use client::{ConsulClient, ConsulError, ReadOptions};
pub use data::{Instance, KvPair, WatchData, WatchKey};
pub use watch::{ConsulWatch, ConsulWatchStatus, WatchPolicy};

/// How long a start or reload waits for the first answers of new watches
/// before going on (with state-file data or none).
const FIRST_ANSWER_BUDGET: Duration = Duration::from_secs(3);

/// The watch a Consul backend uses: passing instances only.
pub fn service_watch(target: &ConsulTarget) -> WatchKey {
    WatchKey::Service {
        name: target.service.to_string(),
        tag: target.tag.as_deref().map(str::to_string),
        datacenter: target.datacenter.as_deref().map(str::to_string),
        passing_only: true,
    }
}

/// Every watch `config` needs.
fn wanted(config: &Config) -> HashSet<WatchKey> {
    config
        .backends
        .iter()
        .filter_map(|b| match &b.target {
            BackendTarget::Consul(t) => Some(service_watch(t)),
            _ => None,
        })
        .collect()
}

/// Who wants a watch besides the config's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOwner {
    Templates,
    /// On-demand backends of gateway routes.
    Gateway,
    /// The catalog, for tag routes and gateway routes.
    Catalog,
}

/// The watches the running config and its templates use.
pub struct ConsulWatcher {
    spec: Option<ConsulSpec>,
    client: Option<Arc<ConsulClient>>,
    running: HashMap<WatchKey, Watched<ConsulWatch>>,
    changed: mpsc::UnboundedSender<WatchKey>,
    /// What the running config's backends use.
    backend_keys: HashSet<WatchKey>,
    /// What the templates read in their latest renders, and what gateway
    /// routes use (the catalog, on-demand services).
    other_keys: HashMap<KeyOwner, HashSet<WatchKey>>,
}

/// What [`ConsulWatcher::prepare`] started, to commit or undo.
pub struct ConsulPlan {
    spec: Option<ConsulSpec>,
    client: Option<Arc<ConsulClient>>,
    started: Vec<WatchKey>,
}

impl ConsulWatcher {
    /// `changed` receives a watch's key each time its data changes.
    pub fn new(changed: mpsc::UnboundedSender<WatchKey>) -> Self {
        Self {
            spec: None,
            client: None,
            running: HashMap::new(),
            changed,
            backend_keys: HashSet::new(),
            other_keys: HashMap::new(),
        }
    }

    /// The client of the current `[consul]` settings, once a config or a
    /// template needed one.
    pub fn client(&self) -> Option<Arc<ConsulClient>> {
        self.client.clone()
    }

    /// Every running watch by key: the data templates render from.
    pub fn watch_map(&self) -> HashMap<WatchKey, Arc<ConsulWatch>> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.item.clone()))
            .collect()
    }

    /// Makes `keys` the queries `owner` (templates, gateway routes) reads:
    /// starts those not watched yet (returned, to wait for their first
    /// answer where that matters) and stops those nothing uses any more.
    /// `spec` builds the client when no config has yet (templates render before the first compile).
    pub fn set_keys(
        &mut self,
        owner: KeyOwner,
        keys: HashSet<WatchKey>,
        spec: Option<&ConsulSpec>,
    ) -> Vec<Arc<ConsulWatch>> {
        if let (None, Some(spec)) = (&self.client, spec) {
            match ConsulClient::new(spec) {
                Ok(c) => {
                    self.client = Some(Arc::new(c));
                    self.spec = Some(spec.clone());
                }
                Err(error) => tracing::error!(%error, "Consul client for templates"),
            }
        }
        let mut started = Vec::new();
        if let (Some(client), Some(spec)) = (self.client.clone(), self.spec.clone()) {
            for key in &keys {
                if !self.running.contains_key(key) {
                    let watch = Arc::new(ConsulWatch::new(key.clone()));
                    let running = self.spawn(watch.clone(), client.clone(), &spec);
                    self.running.insert(key.clone(), running);
                    started.push(watch);
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

    fn is_wanted(&self, key: &WatchKey) -> bool {
        self.backend_keys.contains(key) || self.other_keys.values().any(|k| k.contains(key))
    }

    pub fn get(&self, key: &WatchKey) -> Option<Arc<ConsulWatch>> {
        self.running.get(key).map(|r| r.item.clone())
    }

    /// Every watch, sorted by key, for `/status` and metrics.
    pub fn watches(&self) -> Vec<Arc<ConsulWatch>> {
        let mut all: Vec<_> = self.running.values().map(|r| r.item.clone()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Starts the watches `config` adds and waits (a few seconds at most)
    /// for their first answers. A watch Consul did not answer starts from
    /// the state file when it has data for it. Fails only when the client
    /// cannot be built (token or CA file unreadable).
    pub async fn prepare(&mut self, config: &Config) -> Result<ConsulPlan, (ConsulPlan, String)> {
        let mut plan = ConsulPlan {
            spec: config.consul.clone(),
            client: self.client.clone(),
            started: Vec::new(),
        };
        let wanted = wanted(config);
        let Some(spec) = &config.consul else {
            return Ok(plan);
        };
        if plan.client.is_none() || self.spec.as_ref() != Some(spec) {
            match ConsulClient::new(spec) {
                Ok(c) => plan.client = Some(Arc::new(c)),
                Err(e) => return Err((plan, format!("consul: {e}"))),
            }
        }
        let Some(client) = plan.client.clone() else {
            return Ok(plan);
        };
        for key in &wanted {
            if !self.running.contains_key(key) {
                let watch = Arc::new(ConsulWatch::new(key.clone()));
                let running = self.spawn(watch, client.clone(), spec);
                self.running.insert(key.clone(), running);
                plan.started.push(key.clone());
            }
        }
        let new: Vec<Arc<ConsulWatch>> = plan.started.iter().filter_map(|k| self.get(k)).collect();
        let _ = tokio::time::timeout(FIRST_ANSWER_BUDGET, async {
            for w in &new {
                w.first_answer().await;
            }
        })
        .await;
        let unanswered: Vec<&Arc<ConsulWatch>> =
            new.iter().filter(|w| w.data().is_none()).collect();
        if let (false, Some(path)) = (unanswered.is_empty(), &spec.state_file) {
            let saved = load_state(path).await;
            for w in unanswered {
                if let Some(data) = saved.get(&w.key.to_string()) {
                    tracing::warn!(watch = %w.key, file = %path.display(), "Consul did not answer; serving the last known data from the state file");
                    w.seed(data.clone());
                }
            }
        }
        Ok(plan)
    }

    /// Makes `config`'s watches the running set; watches move to a new
    /// client when the `[consul]` settings changed.
    pub fn commit(&mut self, plan: ConsulPlan, config: &Config) {
        self.backend_keys = wanted(config);
        let wanted: HashSet<WatchKey> = self
            .running
            .keys()
            .filter(|k| self.is_wanted(k))
            .cloned()
            .collect();
        self.running.retain(|k, _| wanted.contains(k));
        let restart = plan.spec != self.spec;
        self.spec = plan.spec;
        self.client = plan.client;
        if let (true, Some(client), Some(spec)) = (restart, self.client.clone(), self.spec.clone())
        {
            let keys: Vec<WatchKey> = self
                .running
                .keys()
                .filter(|k| !plan.started.contains(k))
                .cloned()
                .collect();
            for key in keys {
                if let Some(old) = self.running.remove(&key) {
                    let watch = old.item.clone();
                    drop(old);
                    let running = self.spawn(watch, client.clone(), &spec);
                    self.running.insert(key, running);
                }
            }
        }
    }

    /// Undoes [`prepare`](Self::prepare).
    pub fn abort(&mut self, plan: ConsulPlan) {
        for key in plan.started {
            self.running.remove(&key);
        }
    }

    /// Writes the data of every watch to the state file, if one is set:
    /// called after that data fed a live snapshot.
    pub fn save_state(&self) {
        let Some(path) = self.spec.as_ref().and_then(|s| s.state_file.clone()) else {
            return;
        };
        let state = StateFile {
            version: 1,
            saved_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            watches: self
                .running
                .values()
                .filter_map(|r| Some((r.item.key.to_string(), (*r.item.data()?).clone())))
                .collect(),
        };
        tokio::task::spawn_blocking(move || {
            if let Err(error) = write_state(&path, &state) {
                tracing::warn!(file = %path.display(), %error, "Cannot save the Consul state file");
            }
        });
    }

    fn spawn(
        &self,
        watch: Arc<ConsulWatch>,
        client: Arc<ConsulClient>,
        spec: &ConsulSpec,
    ) -> Watched<ConsulWatch> {
        let task = watch::WatchTask {
            watch: watch.clone(),
            client,
            changed: self.changed.clone(),
            policy: watch::WatchPolicy::new(spec),
        };
        Watched::spawn(watch, task.run())
    }
}

/// The state file: the data of each watch by its key's display form.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    saved_at: String,
    watches: BTreeMap<String, WatchData>,
}

async fn load_state(path: &Path) -> HashMap<String, WatchData> {
    let path = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let text = std::fs::read(&path).map_err(|e| e.to_string())?;
        serde_json::from_slice::<StateFile>(&text).map_err(|e| e.to_string())
    })
    .await;
    match read {
        Ok(Ok(state)) => state.watches.into_iter().collect(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "No usable Consul state file");
            HashMap::new()
        }
        Err(_) => HashMap::new(),
    }
}

fn write_state(path: &Path, state: &StateFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, &json, None)
}
