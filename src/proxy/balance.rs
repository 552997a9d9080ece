//! Choosing an endpoint of a backend for one request or connection.
//!
//! Every algorithm works on an immutable [`EndpointSet`] plus atomics, so a
//! pick never locks or allocates. Unhealthy and ejected endpoints are
//! skipped while others are left (see [`pick`]); `None` means no endpoint
//! may take traffic (503 / close).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::config::Balance;
use crate::table::Backend;
use crate::table::endpoints::{Endpoint, EndpointSet, hash_key};

/// What `balance = "hash"` hashes for this unit of work.
pub trait HashInput {
    fn hash_bytes(&self, on: &crate::config::HashOn) -> u64;
}

/// Picks an endpoint of `backend` from `set` (the set loaded for this unit of
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
    backend: &Backend,
    set: &'s EndpointSet,
    input: &dyn HashInput,
    avoid: &[SocketAddr],
) -> Option<&'s Endpoint> {
    let (found, trial) = pick_among(backend, set, input, |e| !avoid.contains(&e.addr))?;
    if !trial || found.state.claim_trial(backend.trial_window()) {
        return Some(found);
    }
    // Another request claimed this endpoint's trial first (rare: only at
    // the end of an ejection period); choose again without it.
    let lost = found.addr;
    pick_among(backend, set, input, |e| {
        e.addr != lost && !avoid.contains(&e.addr)
    })
    .map(|(e, _)| e)
}

/// The first fallback tier with an endpoint `allowed` accepts, and whether
/// that endpoint is ejected with its trial due.
fn pick_among<'s>(
    backend: &Backend,
    set: &'s EndpointSet,
    input: &dyn HashInput,
    allowed: impl Fn(&Endpoint) -> bool,
) -> Option<(&'s Endpoint, bool)> {
    let eps = &set.endpoints;
    if eps.is_empty() {
        return None;
    }
    let limit = backend.spec.max_connections_per_server;
    let open = |i: usize| {
        let e = &eps[i];
        limit.is_none_or(|max| e.state.active() < max) && allowed(e)
    };
    if let Some(i) = choose(backend, set, input, |i| eps[i].state.is_usable() && open(i)) {
        return Some((&eps[i], eps[i].state.is_ejected()));
    }
    let healthy = |i: usize| eps[i].state.is_healthy() && open(i);
    let found = choose(backend, set, input, healthy)
        .or_else(|| (backend.spec.fail_open).then(|| choose(backend, set, input, open))?);
    found.map(|i| (&eps[i], false))
}

/// The balancing algorithm's choice among the endpoints `ok` accepts.
fn choose(
    backend: &Backend,
    set: &EndpointSet,
    input: &dyn HashInput,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = set.endpoints.len();
    let found = match &backend.spec.balance {
        Balance::RoundRobin => (0..n)
            .map(|_| set.round_robin_index(backend.turn.fetch_add(1, Ordering::Relaxed)))
            .find(|&i| ok(i)),
        Balance::LeastConn => least_loaded(set, backend.turn.fetch_add(1, Ordering::Relaxed), &ok),
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
