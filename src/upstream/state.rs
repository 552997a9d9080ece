//! Live state of one (backend, address): what outlives every swap.
//!
//! An [`EndpointState`] is shared by `Arc` between consecutive endpoint sets
//! and tables, keyed by (backend, address), so in-flight counts, health,
//! ejection and pooled connections survive config reloads and discovery
//! changes. Written by the request path (counts, ejection atomics), the
//! health checks and nothing else; never locked on the request path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use super::connect::UpstreamPool;
use super::health::EjectReason;

/// Live state of one (backend, address).
#[derive(Debug)]
pub struct EndpointState {
    pub backend: Arc<str>,
    pub addr: SocketAddr,
    /// Requests (HTTP) or connections (TCP) in flight; drives `least_conn`.
    active: AtomicUsize,
    /// Decided by active health checks; always true without them.
    healthy: AtomicBool,
    /// Passive ejection: 0 while the endpoint is in rotation, else the
    /// [`clock_ms`] time its ejection period ends. After that one request
    /// (the trial) may go to it; claiming the trial moves this time on by
    /// the trial window, so the others keep skipping it meanwhile. One
    /// atomic, read with one load on the request path, and no timer: an
    /// ejection ends when traffic finds it over.
    pub(super) ejected_until: AtomicU64,
    /// A request claimed the trial and has not reported yet; its outcome
    /// ends the ejection or renews it.
    pub(super) trial: AtomicBool,
    /// Failures in a row seen by requests (failed connects, broken
    /// exchanges, timeouts, 5xx), for the `consecutive_failures` detector.
    pub(super) consecutive_failures: AtomicU32,
    /// Failed connects in a row, for the `consecutive_connect_failures`
    /// detector.
    pub(super) consecutive_connect_failures: AtomicU32,
    /// Attempts reported so far (requests in HTTP mode, connects in TCP
    /// mode), retries included: the status page's request rate is its
    /// change between two looks. Lives as long as the state, so it survives
    /// reloads with it.
    pub(super) requests: AtomicU64,
    /// The attempts among `requests` that failed: a failed connect, a
    /// broken or timed-out exchange, a 5xx answer.
    pub(super) failures: AtomicU64,
    /// Details for `/status`; written on the (rare) state changes and by
    /// the health check task, never on the request path.
    record: Mutex<EndpointRecord>,
    /// Set when a swap removed this endpoint from its backend. Informational:
    /// membership is decided by the snapshot a request loaded, so a request
    /// routed by the previous snapshot may still pick this endpoint.
    draining: AtomicBool,
    /// Wakes the long-lived connections waiting for [`EndpointState::removed_for`].
    removed: tokio::sync::Notify,
    /// Idle upstream connections to this address, reused across requests.
    pub pool: UpstreamPool,
}

/// Milliseconds on a process-wide monotonic clock, never 0 (0 means "not
/// ejected" in [`EndpointState`]).
pub fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

impl EndpointState {
    pub fn new(backend: Arc<str>, addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            backend,
            addr,
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            trial: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            record: Mutex::default(),
            draining: AtomicBool::new(false),
            removed: tokio::sync::Notify::new(),
            pool: UpstreamPool::default(),
        })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Attempts reported so far, and how many of them failed. Two relaxed
    /// loads: a reader may see a failure before its attempt, so the failure
    /// count is capped at the attempt count.
    pub fn attempts(&self) -> (u64, u64) {
        let failures = self.failures.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        (requests, failures.min(requests))
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        if draining {
            self.removed.notify_waiters();
        }
    }

    /// Completes once this endpoint has been out of its backend for
    /// `timeout` (a listener's `drain_timeout`): a long-lived connection to
    /// it ends then. An endpoint that comes back in the meantime starts
    /// the wait over.
    pub async fn removed_for(&self, timeout: std::time::Duration) {
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            // Registered before the flag is read, so a removal between the
            // two is not missed.
            removed.as_mut().enable();
            if !self.is_draining() {
                removed.await;
            }
            tokio::time::sleep(timeout).await;
            if self.is_draining() {
                return;
            }
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Out of rotation by passive ejection (its trial may be due).
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// In rotation, or ejected with its period over (a trial may go).
    fn admits_traffic(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || clock_ms() >= until
    }

    /// May receive new traffic from a snapshot that lists it.
    pub fn is_usable(&self) -> bool {
        self.is_healthy() && self.admits_traffic()
    }

    /// Health and ejection details; never locked on the request path.
    pub fn record(&self) -> MutexGuard<'_, EndpointRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one unit of work in flight until the guard drops.
    pub fn acquire(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// What `/status` shows of an endpoint's health checks and ejections.
#[derive(Debug, Default, Clone)]
pub struct EndpointRecord {
    /// Active checks, when the backend has them.
    pub checks: Option<CheckRecord>,
    /// Times ejected in the current series (ejection periods grow with it).
    pub ejections: u32,
    /// When the last ejection ended, to start a new series after a long
    /// good spell.
    pub last_ejection_end: Option<Instant>,
    /// The ejection in force.
    pub ejection: Option<EjectionRecord>,
}

/// An ejection in force, for `/status`.
#[derive(Debug, Clone)]
pub struct EjectionRecord {
    pub reason: EjectReason,
    pub since: SystemTime,
    /// When its period ends; the next request after it is the trial.
    pub until: SystemTime,
}

/// Active health check history of one endpoint.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckRecord {
    /// Checks run so far.
    pub checks: u64,
    pub successes_in_a_row: u32,
    pub failures_in_a_row: u32,
    pub last_error: Option<String>,
    /// The latest state changes: (check number, healthy after it).
    pub changes: std::collections::VecDeque<(u64, bool)>,
}

/// One request or connection in flight to an endpoint.
#[derive(Debug)]
pub struct ActiveGuard(Arc<EndpointState>);

impl ActiveGuard {
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
