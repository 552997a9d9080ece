//! One watched mDNS service: the instances found, and what `/status` and
//! the metrics show of it.
//!
//! Written by the source that follows the service (the go-micro engine or
//! a DNS-SD browse); read by the backends that use it and the admin API.
//! The data path only ever calls [`MdnsWatch::connect_failed`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::config::MdnsTarget;

/// One instance of a service, as announced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MdnsInstance {
    /// go-micro's node ID, or the DNS-SD instance's full name.
    pub name: String,
    pub addr: SocketAddr,
    /// go-micro's service version (none for DNS-SD).
    pub version: Option<String>,
    /// go-micro's node metadata, or the DNS-SD TXT properties.
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct State {
    last_change: Option<(SystemTime, Instant)>,
    /// The last packet that said something about the service.
    last_answer: Option<(SystemTime, Instant)>,
    queries: u64,
    last_error: Option<String>,
    /// Endpoints whose connect failed, for the source to verify.
    failed: Vec<SocketAddr>,
}

/// A watched service. Its source is the only writer of the instances.
pub struct MdnsWatch {
    pub target: MdnsTarget,
    /// Sorted by name.
    instances: ArcSwap<Vec<MdnsInstance>>,
    /// The source's wake-up (shared by every watch of one go-micro engine),
    /// replaced when the watch moves to a new source.
    wake: ArcSwap<Notify>,
    /// Becomes true once an instance was found (or the source gave up
    /// waiting), for starts and reloads to wait on.
    found: watch::Sender<bool>,
    started: Instant,
    state: Mutex<State>,
}

/// `/status` view of one watch.
#[derive(Debug, Serialize)]
pub struct MdnsWatchStatus {
    pub kind: &'static str,
    pub service: String,
    /// `go-micro` or `dns-sd`.
    pub flavour: &'static str,
    pub instances: Vec<MdnsInstance>,
    pub queries: u64,
    pub last_answer: Option<String>,
    pub last_change: Option<String>,
    /// Seconds since a packet last told anything about the service (since
    /// the watch started, if none has).
    pub staleness_seconds: f64,
    pub last_error: Option<String>,
}

impl MdnsWatch {
    pub fn new(target: MdnsTarget) -> Self {
        Self {
            target,
            instances: ArcSwap::from_pointee(Vec::new()),
            wake: ArcSwap::from_pointee(Notify::new()),
            found: watch::Sender::new(false),
            started: Instant::now(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn instances(&self) -> Arc<Vec<MdnsInstance>> {
        self.instances.load_full()
    }

    /// Replaces the instances; `true` when they changed.
    pub(super) fn publish(&self, mut next: Vec<MdnsInstance>) -> bool {
        next.sort();
        next.dedup_by(|a, b| a.name == b.name);
        if !next.is_empty() {
            self.found.send_if_modified(|f| !std::mem::replace(f, true));
        }
        if **self.instances.load() == next {
            return false;
        }
        self.instances.store(Arc::new(next));
        self.lock().last_change = Some((SystemTime::now(), Instant::now()));
        true
    }

    /// A packet said something about the service.
    pub(super) fn answered(&self) {
        let mut s = self.lock();
        s.last_answer = Some((SystemTime::now(), Instant::now()));
        s.last_error = None;
    }

    pub(super) fn queried(&self) {
        self.lock().queries += 1;
    }

    pub(super) fn failed(&self, error: String) {
        self.lock().last_error = Some(error);
    }

    /// Waits until an instance was found; callers bound the wait.
    pub async fn first_instance(&self) {
        let mut found = self.found.subscribe();
        let _ = found.wait_for(|f| *f).await;
    }

    /// A connect to `addr` failed: the source asks the network again at
    /// once and drops the instance unless it answers (RFC 6762 §10.4).
    /// Called from the data path, only on failures.
    pub fn connect_failed(&self, addr: SocketAddr) {
        {
            let mut s = self.lock();
            if s.failed.contains(&addr) {
                return;
            }
            s.failed.push(addr);
        }
        self.wake.load().notify_one();
    }

    /// Makes `wake` what [`connect_failed`](Self::connect_failed) wakes.
    pub(super) fn set_wake(&self, wake: Arc<Notify>) {
        self.wake.store(wake);
    }

    /// The addresses whose connects failed since the last call.
    pub(super) fn take_failed(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut self.lock().failed)
    }

    /// Seconds since the last packet about the service (since the start,
    /// if none came).
    pub fn staleness(&self) -> f64 {
        let at = self.lock().last_answer.map_or(self.started, |(_, at)| at);
        at.elapsed().as_secs_f64()
    }

    /// Seconds since the instances last changed, if they ever did.
    pub fn seconds_since_change(&self) -> Option<f64> {
        self.lock()
            .last_change
            .map(|(_, at)| at.elapsed().as_secs_f64())
    }

    pub fn status(&self) -> MdnsWatchStatus {
        let staleness = self.staleness();
        let s = self.lock();
        let time = |t: Option<(SystemTime, Instant)>| {
            t.map(|(t, _)| humantime::format_rfc3339_millis(t).to_string())
        };
        MdnsWatchStatus {
            kind: "mdns",
            service: self.target.to_string(),
            flavour: self.target.flavour(),
            instances: (*self.instances()).clone(),
            queries: s.queries,
            last_answer: time(s.last_answer),
            last_change: time(s.last_change),
            staleness_seconds: staleness,
            last_error: s.last_error.clone(),
        }
    }

    /// Never held across an await; a poisoned lock still holds valid data.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
