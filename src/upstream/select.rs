//! Choosing an endpoint for one request or connection.
//!
//! An [`EndpointSet`] is the immutable list of a backend's endpoints plus
//! the lookup structures the balancers use (a weighted round-robin
//! schedule, a consistent-hash ring), computed once per change so that a
//! pick never allocates or locks. It is replaced whole when the config,
//! DNS or Consul changes the list; each endpoint points at its
//! [`EndpointState`], which outlives the set.
//!
//! [`pick`] applies a backend's balancing algorithm over the set plus the
//! states' atomics. Unhealthy and ejected endpoints are skipped while
//! others are left; `None` means no endpoint may take traffic (503 / close).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::state::EndpointState;
use crate::config::{BackendSpec, Balance};

/// Where an endpoint came from, shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Static,
    Dns,
    Consul,
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

/// What `balance = "hash"` hashes for this unit of work.
pub trait HashInput {
    fn hash_bytes(&self, on: &crate::config::HashOn) -> u64;
}

/// What a pick needs of its backend besides the endpoint set.
pub struct Policy<'a> {
    pub spec: &'a BackendSpec,
    /// The backend's turn counter for round robin and tie-breaking; it
    /// outlives endpoint changes.
    pub turn: &'a AtomicUsize,
}

/// Picks an endpoint of the backend from `set` (the set loaded for this unit of
/// work), skipping the addresses in `avoid` (those a retry already tried)
/// and endpoints at `max_connections_per_server`.
///
/// Endpoints that are unhealthy (active checks) or ejected (passive) are
/// skipped, in this order of fallbacks when nothing is left:
/// 1. healthy endpoints that are not ejected, or whose ejection period is
///    over (the request that picks one is its trial);
/// 2. healthy endpoints, ejected or not: ejection never leaves a backend
///    with no endpoint, so a backend of one server whose server restarts
///    serves again as soon as it is back, not a period later;
/// 3. with `fail_open`, every endpoint.
pub fn pick<'s>(
    policy: &Policy<'_>,
    set: &'s EndpointSet,
    input: &dyn HashInput,
    avoid: &[SocketAddr],
) -> Option<&'s Endpoint> {
    let (found, trial) = pick_among(policy, set, input, |e| !avoid.contains(&e.addr))?;
    if !trial || found.state.claim_trial(policy.spec.outlier.base_ejection) {
        return Some(found);
    }
    // Another request claimed this endpoint's trial first (rare: only at
    // the end of an ejection period); choose again without it.
    let lost = found.addr;
    pick_among(policy, set, input, |e| {
        e.addr != lost && !avoid.contains(&e.addr)
    })
    .map(|(e, _)| e)
}

/// The first fallback tier with an endpoint `allowed` accepts, and whether
/// that endpoint is ejected with its trial due.
fn pick_among<'s>(
    policy: &Policy<'_>,
    set: &'s EndpointSet,
    input: &dyn HashInput,
    allowed: impl Fn(&Endpoint) -> bool,
) -> Option<(&'s Endpoint, bool)> {
    let eps = &set.endpoints;
    if eps.is_empty() {
        return None;
    }
    let limit = policy.spec.max_connections_per_server;
    let open = |i: usize| {
        let e = &eps[i];
        limit.is_none_or(|max| e.state.active() < max) && allowed(e)
    };
    if let Some(i) = choose(policy, set, input, |i| eps[i].state.is_usable() && open(i)) {
        return Some((&eps[i], eps[i].state.is_ejected()));
    }
    let healthy = |i: usize| eps[i].state.is_healthy() && open(i);
    let found = choose(policy, set, input, healthy)
        .or_else(|| (policy.spec.fail_open).then(|| choose(policy, set, input, open))?);
    found.map(|i| (&eps[i], false))
}

/// The balancing algorithm's choice among the endpoints `ok` accepts.
fn choose(
    policy: &Policy<'_>,
    set: &EndpointSet,
    input: &dyn HashInput,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = set.endpoints.len();
    let found = match &policy.spec.balance {
        Balance::RoundRobin => (0..n)
            .map(|_| set.round_robin_index(policy.turn.fetch_add(1, Ordering::Relaxed)))
            .find(|&i| ok(i)),
        Balance::LeastConn => least_loaded(set, policy.turn.fetch_add(1, Ordering::Relaxed), &ok),
        Balance::P2c => power_of_two(set, &ok),
        Balance::Hash(on) => {
            let hash = input.hash_bytes(on);
            set.ring_walk(hash).take(set_ring_limit(n)).find(|&i| ok(i))
        }
    };
    // The fast paths give up after a bounded number of tries; a full scan
    // then finds any endpoint they skipped.
    found.or_else(|| (0..n).find(|&i| ok(i)))
}

fn set_ring_limit(n: usize) -> usize {
    n.saturating_mul(64).max(64)
}

/// `a` carries less load than `b`, relative to their weights.
fn lighter(a: &Endpoint, b: &Endpoint) -> bool {
    (a.state.active() as u64) * u64::from(b.weight)
        < (b.state.active() as u64) * u64::from(a.weight)
}

/// The usable endpoint with the fewest in-flight requests per weight; ties go
/// to the first one after a rotating start, so equal load spreads evenly.
fn least_loaded(set: &EndpointSet, turn: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let eps = &set.endpoints;
    let n = eps.len();
    let mut best: Option<usize> = None;
    for k in 0..n {
        let i = (turn + k) % n;
        if !ok(i) {
            continue;
        }
        if best.is_none_or(|b| lighter(&eps[i], &eps[b])) {
            best = Some(i);
        }
    }
    best
}

/// Two random distinct endpoints, the lighter one wins (Mitzenmacher's
/// power of two choices): nearly least_conn's balance at O(1).
fn power_of_two(set: &EndpointSet, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let eps = &set.endpoints;
    let n = eps.len();
    if n == 1 {
        return ok(0).then_some(0);
    }
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    match (ok(a), ok(b)) {
        (true, true) => Some(if lighter(&eps[b], &eps[a]) { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => None,
    }
}

/// Hash input of a TCP connection or a request without the header.
pub struct ClientAddrKey(pub std::net::IpAddr);

impl HashInput for ClientAddrKey {
    fn hash_bytes(&self, _on: &crate::config::HashOn) -> u64 {
        hash_ip(self.0)
    }
}

pub fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => hash_key(&v4.octets()),
        std::net::IpAddr::V6(v6) => hash_key(&v6.octets()),
    }
}

/// Endpoints on 127.0.0.1:1000 and up with these weights, for tests.
#[cfg(test)]
impl EndpointSet {
    pub(crate) fn of_weights(weights: &[u32], ring: bool) -> Self {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                Endpoint {
                    addr,
                    weight: *w,
                    origin: Origin::Static,
                    state: EndpointState::new("b".into(), addr),
                }
            })
            .collect();
        Self::new(eps, ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], ring: bool) -> EndpointSet {
        EndpointSet::of_weights(weights, ring)
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
