//! The addresses behind one backend and the state that outlives swaps.
//!
//! An [`EndpointSet`] is immutable and replaced whole (by a config swap now,
//! by DNS or Consul later). The per-address [`EndpointState`] (in-flight
//! count, health, pooled upstream connections) is shared by `Arc` between
//! consecutive sets, keyed by (backend, address), so it survives every swap.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::proxy::upstream::UpstreamPool;

/// Where an endpoint came from, shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Static,
    Dns,
    Consul,
}

/// Live state of one (backend, address).
#[derive(Debug)]
pub struct EndpointState {
    pub backend: Arc<str>,
    pub addr: SocketAddr,
    /// Requests (HTTP) or connections (TCP) in flight; drives `least_conn`.
    active: AtomicUsize,
    /// Decided by active health checks; always true without them.
    healthy: AtomicBool,
    /// Set by passive outlier ejection until its period ends.
    ejected: AtomicBool,
    /// Failures in a row seen by requests (connect errors, broken
    /// exchanges, 5xx), for outlier ejection.
    consecutive_failures: AtomicU32,
    /// Details for `/status`; written on the (rare) state changes and by
    /// the health check task, never on the request path.
    record: Mutex<EndpointRecord>,
    /// Set when a swap removed this endpoint from its backend. Informational:
    /// membership is decided by the snapshot a request loaded, so a request
    /// routed by the previous snapshot may still pick this endpoint.
    draining: AtomicBool,
    /// Idle upstream connections to this address, reused across requests.
    pub pool: UpstreamPool,
}

impl EndpointState {
    pub fn new(backend: Arc<str>, addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            backend,
            addr,
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            record: Mutex::default(),
            draining: AtomicBool::new(false),
            pool: UpstreamPool::default(),
        })
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn set_ejected(&self, ejected: bool) {
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    /// Marks the endpoint ejected; `false` when it already was (another
    /// request's failure got there first).
    pub fn try_eject(&self) -> bool {
        self.ejected
            .compare_exchange(false, true, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// May receive new traffic from a snapshot that lists it.
    pub fn is_usable(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// A request to this endpoint succeeded: the failure streak ends.
    /// Reads before writing, so the common case touches no cache line
    /// exclusively.
    pub fn request_succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to this endpoint failed; returns the failures in a row.
    pub fn request_failed(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn reset_failures(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
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
    /// When the last ejection period ended, to start a new series after a
    /// long good spell.
    pub last_ejection_end: Option<Instant>,
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

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub origin: Origin,
    pub state: Arc<EndpointState>,
}

/// Largest smooth weighted round-robin schedule we precompute; bigger weight
/// sums fall back to cumulative-weight lookup (exact, but less interleaved).
const MAX_SCHEDULE: usize = 1 << 16;
/// Points on the hash ring per unit of weight.
const RING_POINTS_PER_WEIGHT: u32 = 40;

/// An immutable endpoint list plus the lookup structures the balancers use,
/// computed once per change so a pick never allocates or locks.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub endpoints: Vec<Endpoint>,
    /// Round-robin order as endpoint indexes, interleaved by weight.
    schedule: Box<[u32]>,
    /// Cumulative weights, for weight sums too big for `schedule`.
    cumulative: Box<[u64]>,
    /// Consistent-hash ring: (point, endpoint index), sorted by point.
    ring: Box<[(u64, u32)]>,
}

impl EndpointSet {
    pub fn new(endpoints: Vec<Endpoint>, with_ring: bool) -> Self {
        let weight = |e: &Endpoint| u64::from(e.weight.max(1));
        let total: u64 = endpoints.iter().map(weight).sum();
        let all_equal = endpoints.windows(2).all(|w| weight(&w[0]) == weight(&w[1]));
        let mut set = Self {
            schedule: Box::default(),
            cumulative: Box::default(),
            ring: Box::default(),
            endpoints,
        };
        let n = set.endpoints.len();
        if all_equal {
            set.schedule = (0..n as u32).collect();
        } else if (total as usize).saturating_mul(n) <= MAX_SCHEDULE * 16 {
            let weights: Vec<u64> = set.endpoints.iter().map(weight).collect();
            set.schedule = smooth_weighted_schedule(&weights, total);
        } else {
            set.cumulative = set
                .endpoints
                .iter()
                .scan(0u64, |acc, e| {
                    *acc += weight(e);
                    Some(*acc)
                })
                .collect();
        }
        if with_ring {
            set.ring = build_ring(&set.endpoints);
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The state of the endpoint at `addr`; a linear scan, as sets are small.
    pub fn state_of(&self, addr: SocketAddr) -> Option<&Arc<EndpointState>> {
        self.endpoints
            .iter()
            .find(|e| e.addr == addr)
            .map(|e| &e.state)
    }

    /// Index of the endpoint at position `turn` of the round-robin order.
    pub fn round_robin_index(&self, turn: usize) -> usize {
        if !self.schedule.is_empty() {
            return self.schedule[turn % self.schedule.len()] as usize;
        }
        let total = self.cumulative.last().copied().unwrap_or(1);
        let point = turn as u64 % total;
        self.cumulative.partition_point(|&c| c <= point)
    }

    /// Index of the endpoint owning `hash` on the ring.
    pub fn ring_index(&self, hash: u64) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let pos = self.ring.partition_point(|(p, _)| *p < hash) % self.ring.len();
        Some(self.ring[pos].1 as usize)
    }

    /// Ring positions after the owner of `hash`, for skipping unusable ones.
    pub fn ring_walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.ring.partition_point(|(p, _)| *p < hash);
        (0..self.ring.len()).map(move |i| self.ring[(start + i) % self.ring.len()].1 as usize)
    }
}

/// nginx's smooth weighted round robin, unrolled once: weights 5,1,1 give
/// a a b a c a a rather than a a a a a b c.
fn smooth_weighted_schedule(weights: &[u64], total: u64) -> Box<[u32]> {
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

fn build_ring(endpoints: &[Endpoint]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        for point in 0..e.weight.max(1) * RING_POINTS_PER_WEIGHT {
            let mut h = DefaultHasher::new();
            (e.addr, point).hash(&mut h);
            ring.push((h.finish(), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// The hash used for `balance = "hash"` keys.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], ring: bool) -> EndpointSet {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Endpoint {
                    addr,
                    weight: *w,
                    origin: Origin::Static,
                    state: EndpointState::new("b".into(), addr),
                }
            })
            .collect();
        EndpointSet::new(eps, ring)
    }

    #[test]
    fn weighted_schedule_is_exact_and_interleaved() {
        let s = set(&[5, 1, 1], false);
        let order: Vec<usize> = (0..7).map(|t| s.round_robin_index(t)).collect();
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn large_weight_sums_stay_exact() {
        let weights: Vec<u32> = (0..2000).map(|i| 1 + (i % 256)).collect();
        let s = set(&weights, false);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut counts = vec![0u64; weights.len()];
        for t in 0..total as usize {
            counts[s.round_robin_index(t)] += 1;
        }
        assert!(
            counts
                .iter()
                .zip(&weights)
                .all(|(c, w)| *c == u64::from(*w))
        );
    }

    #[test]
    fn ring_is_stable_when_another_endpoint_leaves() {
        let three = set(&[1, 1, 1], true);
        let keys: Vec<u64> = (0..1000u32).map(|k| hash_key(&k.to_be_bytes())).collect();
        let before: Vec<SocketAddr> = keys
            .iter()
            .map(|k| three.endpoints[three.ring_index(*k).unwrap()].addr)
            .collect();
        let two = EndpointSet::new(three.endpoints[..2].to_vec(), true);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| {
                **b != three.endpoints[2].addr
                    && two.endpoints[two.ring_index(**k).unwrap()].addr != **b
            })
            .count();
        assert_eq!(moved, 0, "keys of surviving endpoints must not move");
    }
}
