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
//!
//! ## The hash of `balance = "hash"`
//!
//! Ring points and keys are hashed with 64-bit XXH3 and seed 0 (the
//! published xxHash spec; `xxhsum -H3` prints the same values), never with
//! `std`'s `DefaultHasher`, whose algorithm may change with the toolchain:
//! a key maps to the same server whatever build or version of Switchyard
//! runs, so two versions side by side during an upgrade agree. The bytes
//! hashed are:
//!
//! - a ring point: the endpoint address as text (`10.0.0.1:8080`,
//!   `[2001:db8::1]:8080`) followed by the point number, a `u32` in
//!   little-endian; an endpoint of weight `w` has points
//!   `0..w × RING_POINTS_PER_WEIGHT` (40);
//! - a header key: the header value's bytes, as received;
//! - a client address: the IP's octets, 4 for IPv4 (an IPv4-mapped IPv6
//!   address counts as its IPv4 one), 16 for IPv6; the port is not hashed.
//!
//! A key belongs to the first point at or after its hash, wrapping around.
//! `tests::hash_mapping_is_pinned` fails if any of this changes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use xxhash_rust::xxh3::xxh3_64;

use super::state::EndpointState;
use crate::config::{BackendSpec, Balance};

/// Where an endpoint came from, shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Static,
    Dns,
    Consul,
    Mdns,
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

/// The consistent-hash ring of `endpoints`, its points hashed as the
/// module doc says.
fn build_ring(endpoints: &[Endpoint]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::new();
    let mut bytes = Vec::with_capacity(64);
    for (i, e) in endpoints.iter().enumerate() {
        let addr = e.addr.to_string();
        for point in 0..e.weight.max(1) * RING_POINTS_PER_WEIGHT {
            ring.push((ring_point(&mut bytes, &addr, point), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// The hash of ring point `point` of the endpoint whose address is `addr`
/// as text; `bytes` is scratch space, reused across points.
fn ring_point(bytes: &mut Vec<u8>, addr: &str, point: u32) -> u64 {
    bytes.clear();
    bytes.extend_from_slice(addr.as_bytes());
    bytes.extend_from_slice(&point.to_le_bytes());
    hash_key(bytes)
}

/// The hash of a `balance = "hash"` key (a header value): XXH3-64, seed 0,
/// of `bytes` as given. Stable across builds; see the module doc.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
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
pub struct ClientAddrKey(pub IpAddr);

impl HashInput for ClientAddrKey {
    fn hash_bytes(&self, _on: &crate::config::HashOn) -> u64 {
        hash_ip(self.0)
    }
}

/// The hash of a client address as a `balance = "hash"` key: its octets,
/// with an IPv4-mapped IPv6 address (a dual-stack listener's view of an
/// IPv4 client) taken as the IPv4 one, so both listeners agree.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => hash_key(&v6.octets()),
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

    /// Pins the `balance = "hash"` mapping of the module doc: any change to
    /// the hash, the bytes hashed or the ring layout moves sticky clients,
    /// and must fail here. The values were computed independently with the
    /// reference C library (`XXH3_64bits` of libxxhash 0.8).
    #[test]
    fn hash_mapping_is_pinned() {
        // The algorithm: XXH3-64, seed 0 (the spec's empty-input vector).
        assert_eq!(hash_key(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash_key(b"alice"), 0x4da1_0dd6_1a01_16b0);
        assert_eq!(hash_key(b"bob"), 0x1403_c0c4_0f49_b8e5);
        // Client addresses: the octets; IPv4-mapped IPv6 as IPv4.
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(hash_ip(ip("192.0.2.7")), 0x54e8_211e_31db_05c1);
        assert_eq!(hash_ip(ip("::ffff:192.0.2.7")), 0x54e8_211e_31db_05c1);
        assert_eq!(hash_ip(ip("2001:db8::7")), 0x223d_514b_acc6_af55);
        // A ring point: the address as text, then the point number (LE u32).
        assert_eq!(
            ring_point(&mut Vec::new(), "127.0.0.1:1000", 0),
            0x0797_6a52_241d_56e4
        );

        // Keys on the ring of 127.0.0.1:1000..=1002 with weights 1, 2, 1.
        let s = set(&[1, 2, 1], true);
        let owner = |hash| s.ring_index(hash).unwrap();
        let headers = [
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
            "mallory", "oscar",
        ];
        let by_header: Vec<usize> = headers
            .iter()
            .map(|k| owner(hash_key(k.as_bytes())))
            .collect();
        assert_eq!(by_header, [2, 0, 2, 1, 0, 0, 1, 2, 1, 2, 0, 2]);
        let clients = [
            "192.0.2.1",
            "192.0.2.2",
            "192.0.2.3",
            "192.0.2.4",
            "198.51.100.9",
            "203.0.113.77",
            "2001:db8::1",
            "2001:db8::2",
        ];
        let by_client: Vec<usize> = clients.iter().map(|a| owner(hash_ip(ip(a)))).collect();
        assert_eq!(by_client, [0, 1, 1, 1, 0, 1, 2, 1]);
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
