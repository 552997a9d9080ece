//! The addresses behind one backend and the state that outlives swaps.
//!
//! An [`EndpointSet`] is immutable and replaced whole (by a config swap now,
//! by DNS or Consul later). The per-address [`EndpointState`] (in-flight
//! count, health, pooled upstream connections) is shared by `Arc` between
//! consecutive sets, keyed by (backend, address), so it survives every swap.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::config::OutlierSpec;
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
    /// Passive ejection: 0 while the endpoint is in rotation, else the
    /// [`clock_ms`] time its ejection period ends. After that one request
    /// (the trial) may go to it; claiming the trial moves this time on by
    /// the trial window, so the others keep skipping it meanwhile. One
    /// atomic, read with one load on the request path, and no timer: an
    /// ejection ends when traffic finds it over.
    ejected_until: AtomicU64,
    /// A request claimed the trial and has not reported yet; its outcome
    /// ends the ejection or renews it.
    trial: AtomicBool,
    /// Failures in a row seen by requests (failed connects, broken
    /// exchanges, timeouts, 5xx), for the `consecutive_failures` detector.
    consecutive_failures: AtomicU32,
    /// Failed connects in a row, for the `consecutive_connect_failures`
    /// detector.
    consecutive_connect_failures: AtomicU32,
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

    /// Called for the endpoint a request chose among usable ones: `true`
    /// when it may go there, which for an ejected endpoint whose period is
    /// over means this request won the trial. `false` when another request
    /// claimed the trial first.
    pub fn claim_trial(&self, window: Duration) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = clock_ms();
        if now < until {
            return false;
        }
        let next = now + window.as_millis() as u64;
        let won = self
            .ejected_until
            .compare_exchange(until, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if won {
            self.trial.store(true, Ordering::Release);
            tracing::debug!(backend = %self.backend, endpoint = %self.addr, "Ejection period over; sending a trial request");
        }
        won
    }

    /// The trial request (if this report is its outcome) is over; `true`
    /// when it was.
    fn end_trial(&self) -> bool {
        self.trial.load(Ordering::Relaxed) && self.trial.swap(false, Ordering::AcqRel)
    }

    /// Marks the endpoint ejected until `until` (a [`clock_ms`] time);
    /// `false` when it already was (another request's failure got there
    /// first). `renew` ejects again after a failed trial.
    fn set_ejected_until(&self, until: u64, renew: bool) -> bool {
        if renew {
            self.ejected_until.store(until, Ordering::Release);
            return true;
        }
        self.ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Back in rotation: the ejection and both failure streaks end.
    fn readmit(&self) {
        self.ejected_until.store(0, Ordering::Release);
        self.trial.store(false, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.consecutive_connect_failures
            .store(0, Ordering::Relaxed);
    }

    /// An answer came (not a 5xx, or any answer when `any_answer`): both
    /// failure streaks end. Reads before writing, so the common case
    /// touches no cache line exclusively.
    fn streaks_end(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
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

    /// Takes in how one attempt to this endpoint ended and decides
    /// ejection by `outlier`'s detectors. `set` is the backend's current
    /// endpoint set, for the `max_ejected_percent` rule; it is loaded only
    /// when an ejection is due. Returns the ejection that began, for the
    /// caller to count and log.
    pub fn report(
        &self,
        outcome: Outcome,
        outlier: &OutlierSpec,
        set: &ArcSwap<EndpointSet>,
    ) -> Option<Ejection> {
        // The usual case: an answer, no streak, no ejection. Three loads.
        if outcome == Outcome::Answered && self.ejected_until.load(Ordering::Relaxed) == 0 {
            self.streaks_end();
            return None;
        }
        if self.end_trial() {
            return self.trial_ended(outcome, outlier);
        }
        let connect_streak = match outcome {
            Outcome::Answered | Outcome::Connected => {
                self.streaks_end();
                return None;
            }
            Outcome::ConnectFailed => {
                self.consecutive_connect_failures
                    .fetch_add(1, Ordering::Relaxed)
                    + 1
            }
            Outcome::Failed => 0,
        };
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let reason = if outlier.consecutive_connect_failures > 0
            && connect_streak >= outlier.consecutive_connect_failures
        {
            EjectReason::ConnectFailures
        } else if outlier.consecutive_failures > 0 && streak >= outlier.consecutive_failures {
            EjectReason::FailingRequests
        } else {
            return None;
        };
        if self.is_ejected() || !may_eject(&set.load(), outlier) {
            return None;
        }
        self.eject(reason, outlier, false)
    }

    /// The trial request's outcome: back in rotation when it shows the
    /// reason for the ejection gone (a connect worked after connect
    /// failures; an answer below 500 after failing requests), else ejected
    /// again for longer.
    fn trial_ended(&self, outcome: Outcome, outlier: &OutlierSpec) -> Option<Ejection> {
        let reason = self.record().ejection.as_ref().map(|e| e.reason);
        let recovered = match (outcome, reason) {
            (Outcome::Answered | Outcome::Connected, _) => true,
            (Outcome::Failed, Some(EjectReason::ConnectFailures)) => true,
            (Outcome::Failed | Outcome::ConnectFailed, _) => false,
        };
        if recovered {
            self.readmit();
            let mut r = self.record();
            r.ejection = None;
            r.last_ejection_end = Some(Instant::now());
            drop(r);
            tracing::info!(backend = %self.backend, endpoint = %self.addr, "Trial request succeeded; endpoint back in rotation");
            return None;
        }
        let reason = match outcome {
            Outcome::ConnectFailed => EjectReason::ConnectFailures,
            _ => EjectReason::FailingRequests,
        };
        self.eject(reason, outlier, true)
    }

    /// Starts (or, after a failed trial, renews) an ejection whose period
    /// grows with each ejection in a series.
    fn eject(&self, reason: EjectReason, outlier: &OutlierSpec, renew: bool) -> Option<Ejection> {
        let now = Instant::now();
        let mut r = self.record();
        if !renew
            && r.last_ejection_end
                .is_some_and(|end| now.duration_since(end) > outlier.max_ejection)
        {
            r.ejections = 0;
        }
        let ejections = r.ejections + 1;
        let period = outlier
            .base_ejection
            .saturating_mul(ejections)
            .min(outlier.max_ejection);
        if !self.set_ejected_until(clock_ms() + period.as_millis() as u64, renew) {
            return None; // another request's failure got there first
        }
        r.ejections = ejections;
        r.ejection = Some(EjectionRecord {
            reason,
            since: SystemTime::now(),
            until: SystemTime::now() + period,
        });
        Some(Ejection { reason, period })
    }
}

/// How one attempt to an endpoint ended, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head below 500 (HTTP).
    Answered,
    /// A connection was made (TCP mode; nothing more is known).
    Connected,
    /// The connect failed: refused, reset or timed out.
    ConnectFailed,
    /// The exchange broke or timed out after connecting, or the answer was
    /// a 5xx.
    Failed,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectReason {
    /// `consecutive_connect_failures` connects failed in a row.
    ConnectFailures,
    /// `consecutive_failures` requests failed in a row.
    FailingRequests,
}

/// An ejection that just began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub reason: EjectReason,
    pub period: Duration,
}

/// Ejecting one more endpoint of `set` keeps within `max_ejected_percent`;
/// one endpoint may always be ejected (Envoy's rule).
fn may_eject(set: &EndpointSet, outlier: &OutlierSpec) -> bool {
    let ejected = set
        .endpoints
        .iter()
        .filter(|e| e.state.is_ejected())
        .count();
    ejected == 0
        || (ejected + 1) * 100 <= outlier.max_ejected_percent as usize * set.endpoints.len()
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

    fn shared(weights: &[u32]) -> ArcSwap<EndpointSet> {
        ArcSwap::from_pointee(set(weights, false))
    }

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

    fn outlier(connect: u32, failing: u32, base: Duration) -> OutlierSpec {
        OutlierSpec {
            consecutive_failures: failing,
            consecutive_connect_failures: connect,
            base_ejection: base,
            ..OutlierSpec::default()
        }
    }

    #[test]
    fn connect_failures_in_a_row_eject_and_an_answer_ends_the_streak() {
        let s = shared(&[1, 1, 1]);
        let eps = s.load_full();
        let (e, o) = (&eps.endpoints[0].state, OutlierSpec::default());
        for outcome in [
            Outcome::ConnectFailed,
            Outcome::ConnectFailed,
            Outcome::Answered,
        ] {
            assert_eq!(e.report(outcome, &o, &s), None);
        }
        assert_eq!(e.report(Outcome::ConnectFailed, &o, &s), None);
        assert_eq!(e.report(Outcome::ConnectFailed, &o, &s), None);
        let ejection = e.report(Outcome::ConnectFailed, &o, &s).unwrap();
        assert_eq!(ejection.reason, EjectReason::ConnectFailures);
        assert_eq!(ejection.period, o.base_ejection);
        assert!(e.is_ejected() && !e.is_usable());
        assert_eq!(e.record().ejections, 1);
        // Failed exchanges and 5xx answers eject only when asked.
        let s = shared(&[1, 1, 1]);
        let eps = s.load_full();
        let o = OutlierSpec::default();
        let other = &eps.endpoints[1].state;
        for _ in 0..20 {
            assert_eq!(other.report(Outcome::Failed, &o, &s), None);
        }
        let o = outlier(0, 2, Duration::from_secs(1));
        let ejection = other.report(Outcome::Failed, &o, &s).unwrap();
        assert_eq!(ejection.reason, EjectReason::FailingRequests);
    }

    #[test]
    fn at_most_max_ejected_percent_but_always_one() {
        let s = shared(&[1, 1, 1]);
        let eps = s.load_full();
        let o = outlier(1, 0, Duration::from_secs(60));
        assert!(
            eps.endpoints[0]
                .state
                .report(Outcome::ConnectFailed, &o, &s)
                .is_some()
        );
        // A second of three would be 67 % > 50 %.
        assert!(
            eps.endpoints[1]
                .state
                .report(Outcome::ConnectFailed, &o, &s)
                .is_none()
        );
        assert!(!eps.endpoints[1].state.is_ejected());
        let one = shared(&[1]);
        assert!(
            one.load().endpoints[0]
                .state
                .report(Outcome::ConnectFailed, &o, &one)
                .is_some()
        );
    }

    #[test]
    fn one_trial_after_the_period_readmits_or_ejects_for_longer() {
        let s = shared(&[1, 1]);
        let eps = s.load_full();
        let e = &eps.endpoints[0].state;
        // A zero period: the trial is due at once.
        let o = outlier(1, 0, Duration::ZERO);
        let window = Duration::from_secs(3600);
        assert!(e.report(Outcome::ConnectFailed, &o, &s).is_some());
        assert!(e.is_usable(), "period over: a trial may go");
        assert!(e.claim_trial(window));
        assert!(
            !e.is_usable() && !e.claim_trial(window),
            "one trial at a time"
        );
        // The trial fails: ejected again, the series grows.
        let again = e.report(Outcome::ConnectFailed, &o, &s).unwrap();
        assert_eq!(again.reason, EjectReason::ConnectFailures);
        assert_eq!(e.record().ejections, 2);
        // The next trial connects: back in rotation, streaks over.
        assert!(e.claim_trial(window));
        assert_eq!(e.report(Outcome::Connected, &o, &s), None);
        assert!(!e.is_ejected() && e.is_usable());
        assert!(e.record().ejection.is_none());
        // A report that is not the trial's does not end an ejection.
        assert!(e.report(Outcome::ConnectFailed, &o, &s).is_some());
        assert_eq!(e.report(Outcome::Answered, &o, &s), None);
        assert!(e.is_ejected());
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
