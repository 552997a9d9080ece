//! The on-demand backends of service-name gateway routes.
//!
//! A gateway route (the Micro API gateway's and Fabio's job) sends a
//! request to the Consul service its first path segment or host label
//! names (see `proxy::gateway`), with no route written for it. Backends for such services are made on demand by the control task and
//! kept in a lock-free map the request path reads; each is watched (a
//! Consul blocking query) while used and retired after `idle_timeout`.
//! The Consul catalog tells which services exist, so a request for an
//! unknown name gets 404 without starting any watch.
//!
//! ```text
//! request ─▶ name ─▶ map hit ─────────────────────────────▶ forward
//!                    └ miss ─▶ catalog lacks it ─▶ 404
//!                              └ control task: watch, wait for the
//!                                first answer, make the backend ─▶ forward
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, oneshot};

use super::Backend;
use crate::config::BackendSpec;

/// How long a request waits for the control task to make a backend.
const MAKE_BUDGET: Duration = Duration::from_secs(5);

/// A request for the backend of a service not in the map yet.
pub struct BackendRequest {
    pub service: String,
    /// The gateway route's backend: timeouts and retries for the new one.
    pub template: BackendSpec,
    pub reply: oneshot::Sender<Option<Arc<Backend>>>,
}

/// The on-demand backends of every gateway route, by service name.
pub struct Gateway {
    backends: ArcSwap<HashMap<Arc<str>, OnDemand>>,
    /// Service names in the catalog; `None` until Consul answered.
    catalog: ArcSwapOption<HashSet<String>>,
    requests: mpsc::UnboundedSender<BackendRequest>,
    /// The clock last-use times count from.
    epoch: Instant,
}

#[derive(Clone)]
struct OnDemand {
    backend: Arc<Backend>,
    /// Seconds since `epoch` of the last request.
    last_used: Arc<AtomicU64>,
    idle_timeout: Duration,
}

impl Gateway {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<BackendRequest>) {
        let (requests, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                backends: ArcSwap::default(),
                catalog: ArcSwapOption::empty(),
                requests,
                epoch: Instant::now(),
            }),
            rx,
        )
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The backend for `service`, made on demand; `None` when Consul does
    /// not know the service.
    pub async fn backend(&self, service: &str, template: &BackendSpec) -> Option<Arc<Backend>> {
        if let Some(found) = self.backends.load().get(service) {
            let now = self.now();
            // A write only when the second changed: no shared cache line
            // dirtied per request.
            if found.last_used.load(Ordering::Relaxed) != now {
                found.last_used.store(now, Ordering::Relaxed);
            }
            return Some(found.backend.clone());
        }
        if self
            .catalog
            .load()
            .as_ref()
            .is_some_and(|names| !names.contains(service))
        {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(BackendRequest {
                service: service.to_string(),
                template: template.clone(),
                reply,
            })
            .ok()?;
        tokio::time::timeout(MAKE_BUDGET, answer)
            .await
            .ok()?
            .ok()
            .flatten()
    }

    // === control task side ===

    pub fn get(&self, service: &str) -> Option<Arc<Backend>> {
        self.backends.load().get(service).map(|o| o.backend.clone())
    }

    pub fn insert(&self, service: &str, backend: Arc<Backend>, idle_timeout: Duration) {
        let mut map = HashMap::clone(&self.backends.load());
        map.insert(
            service.into(),
            OnDemand {
                backend,
                last_used: Arc::new(AtomicU64::new(self.now())),
                idle_timeout,
            },
        );
        self.backends.store(Arc::new(map));
    }

    pub fn set_catalog(&self, names: HashSet<String>) {
        self.catalog.store(Some(Arc::new(names)));
    }

    pub fn knows(&self, service: &str) -> Option<bool> {
        self.catalog.load().as_ref().map(|c| c.contains(service))
    }

    /// The services that have a backend.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.backends.load().keys().cloned().collect()
    }

    /// Every on-demand backend, for endpoint updates and `/status`.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.backends
            .load()
            .values()
            .map(|o| o.backend.clone())
            .collect()
    }

    /// Removes the backends unused for their idle timeout, and those of
    /// services gone from the catalog; returns the names removed.
    pub fn retire_idle(&self) -> Vec<Arc<str>> {
        let now = self.now();
        let catalog = self.catalog.load_full();
        let current = self.backends.load();
        let gone: Vec<Arc<str>> = current
            .iter()
            .filter(|(name, o)| {
                now.saturating_sub(o.last_used.load(Ordering::Relaxed)) >= o.idle_timeout.as_secs()
                    || catalog.as_ref().is_some_and(|c| !c.contains(&***name))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if !gone.is_empty() {
            let mut map = HashMap::clone(&current);
            for name in &gone {
                map.remove(name);
            }
            self.backends.store(Arc::new(map));
        }
        gone
    }
}
