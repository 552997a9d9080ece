//! Whether an endpoint may take traffic: active health checks and passive
//! ejection, the two ways an endpoint leaves rotation and comes back.
//!
//! **Active checks**, HAProxy style: one task per checked endpoint. Every
//! `interval` (plus a random `[0, jitter)` so checks of many endpoints do
//! not fire together) the task connects (`tcp`), sends a `GET` and reads
//! the status (`http`), or asks `grpc.health.v1.Health/Check` for SERVING
//! (`grpc`, see [`grpc`]), each within `timeout`. `fall` failures in a row take
//! a healthy endpoint out of rotation; `rise` successes in a row bring an
//! unhealthy one back. Endpoints start healthy, and the first check runs
//! within the first jitter period, so a dead server is found within `fall`
//! checks of start. The control task calls [`HealthChecks::sync`] after
//! every table swap and endpoint update: checks start for new endpoints and
//! stop for gone ones. A task holds the endpoint's state (shared with every
//! table that lists it), so health survives reloads.
//!
//! **Passive ejection** (HAProxy's `observe`, Envoy's outlier detection):
//! every attempt reports an [`Outcome`]; consecutive failed connects, or
//! consecutive failed requests, eject the endpoint for a period that grows
//! with each ejection in a series. No timer runs, on the request path or
//! elsewhere: once the period is over, the next request that picks the
//! endpoint claims its trial, and the trial's outcome readmits it or ejects
//! it again for longer.
mod grpc;

use super::tls::UpstreamTls;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;

use super::select::EndpointSet;
use super::state::{CheckRecord, EjectionRecord, EndpointState, clock_ms};
use crate::config::{CheckKind, HealthCheckSpec, OutlierSpec};
use crate::metrics::Metrics;

/// State changes kept per endpoint for `/status`.
const HISTORY: usize = 16;

/// The running checks, by endpoint state: the key is the state's address,
/// kept valid by the `Arc` in `Running` while it is in the map.
pub struct HealthChecks {
    running: HashMap<usize, Running>,
    metrics: Metrics,
}

struct Running {
    state: Arc<EndpointState>,
    spec: HealthCheckSpec,
    /// The backend's TLS: checks speak it as requests do.
    tls: Option<Arc<UpstreamTls>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthChecks {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            running: HashMap::new(),
            metrics,
        }
    }

    /// Checks exactly the endpoints in `checked`, each with its backend's
    /// current `health_check`; stops every other check.
    pub fn sync<'a>(&mut self, checked: impl IntoIterator<Item = CheckedEndpoint<'a>>) {
        let mut wanted: HashMap<usize, CheckedEndpoint<'a>> = HashMap::new();
        for checked in checked {
            wanted.insert(Arc::as_ptr(&checked.0) as usize, checked);
        }
        self.running.retain(|key, running| {
            let keep = wanted
                .get(key)
                .is_some_and(|(_, spec, tls)| **spec == running.spec && *tls == running.tls);
            if !keep && !wanted.contains_key(key) {
                // No longer checked: nothing may hold it out of rotation.
                running.state.set_healthy(true);
                running.state.record().checks = None;
            }
            keep
        });
        for (key, (state, spec, tls)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let results = CheckCounters {
                success: self
                    .metrics
                    .health_checks
                    .with_label_values(&[&state.backend, "success"]),
                failure: self
                    .metrics
                    .health_checks
                    .with_label_values(&[&state.backend, "failure"]),
            };
            let task = tokio::spawn(check_loop(
                state.clone(),
                spec.clone(),
                tls.clone(),
                results,
            ));
            self.running.insert(
                key,
                Running {
                    state,
                    spec: spec.clone(),
                    tls,
                    task,
                },
            );
        }
    }
}

struct CheckCounters {
    success: IntCounter,
    failure: IntCounter,
}

/// An endpoint to check, its backend's check, and its backend's TLS.
pub type CheckedEndpoint<'a> = (
    Arc<EndpointState>,
    &'a HealthCheckSpec,
    Option<Arc<UpstreamTls>>,
);

async fn check_loop(
    state: Arc<EndpointState>,
    spec: HealthCheckSpec,
    tls: Option<Arc<UpstreamTls>>,
    counters: CheckCounters,
) {
    let jitter = || {
        let max = spec.jitter.as_millis() as u64;
        Duration::from_millis(if max == 0 { 0 } else { fastrand::u64(0..max) })
    };
    tokio::time::sleep(jitter()).await;
    loop {
        let probed = probe(state.addr, &spec.kind, tls.as_deref(), spec.timeout);
        let result = match tokio::time::timeout(spec.timeout, probed).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", spec.timeout)),
        };
        match &result {
            Ok(()) => counters.success.inc(),
            Err(_) => counters.failure.inc(),
        }
        record(&state, &spec, result);
        tokio::time::sleep(spec.interval + jitter()).await;
    }
}

/// Applies one check's result: counts it and changes the endpoint's health
/// once `rise` or `fall` results in a row say so.
fn record(state: &EndpointState, spec: &HealthCheckSpec, result: Result<(), String>) {
    let mut r = state.record();
    let c: &mut CheckRecord = r.checks.get_or_insert_with(CheckRecord::default);
    c.checks += 1;
    let healthy = state.is_healthy();
    let change = match result {
        Ok(()) => {
            c.failures_in_a_row = 0;
            c.successes_in_a_row += 1;
            c.last_error = None;
            (!healthy && c.successes_in_a_row >= spec.rise).then_some(true)
        }
        Err(error) => {
            c.successes_in_a_row = 0;
            c.failures_in_a_row += 1;
            c.last_error = Some(error);
            (healthy && c.failures_in_a_row >= spec.fall).then_some(false)
        }
    };
    let Some(now_healthy) = change else { return };
    state.set_healthy(now_healthy);
    if c.changes.len() == HISTORY {
        c.changes.pop_front();
    }
    c.changes.push_back((c.checks, now_healthy));
    if now_healthy {
        tracing::info!(backend = %state.backend, endpoint = %state.addr, rise = spec.rise, "Endpoint healthy again");
    } else {
        tracing::warn!(backend = %state.backend, endpoint = %state.addr, fall = spec.fall, error = c.last_error.as_deref().unwrap_or(""), "Endpoint failed its health checks; out of rotation");
    }
}

/// One check of `addr`: a connect, a GET whose status must be in range, or
/// a gRPC health call that must answer SERVING. Also used to check a local
/// service before registering it in Consul.
pub async fn probe(
    addr: std::net::SocketAddr,
    kind: &CheckKind,
    tls: Option<&UpstreamTls>,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let stream = super::tls::connect(addr, timeout, tls, true)
        .await
        .map_err(|e| crate::error_chain::ErrorChain(&e).to_string())?;
    let (path, host, expect) = match kind {
        CheckKind::Tcp => return Ok(()),
        CheckKind::Grpc { service, host } => {
            let authority = host.clone().unwrap_or_else(|| addr.to_string());
            return grpc::check(stream, &authority, tls.is_some(), service).await;
        }
        CheckKind::Http { path, host, expect } => (path, host, expect),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let host = host.clone().unwrap_or_else(|| addr.to_string());
    let req = Request::get(path.as_str())
        .header(header::HOST, host)
        .header(header::USER_AGENT, "switchyard-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let exchange = sender.send_request(req);
    tokio::pin!(conn, exchange);
    // The connection must be driven for the exchange to move; with
    // `Connection: close` it may finish first, the response already handed
    // over.
    let resp = tokio::select! {
        biased;
        resp = &mut exchange => resp,
        ended = &mut conn => match ended {
            Ok(()) => exchange.await,
            Err(e) => return Err(format!("connection: {e}")),
        },
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    if (expect.0..=expect.1).contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}-{}",
            expect.0, expect.1
        ))
    }
}

// === passive ejection ===

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

impl Outcome {
    /// The attempt worked: an answer below 500, or a connection made.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Answered | Self::Connected)
    }
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

impl EndpointState {
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
        // Counted for `/status`: one add per attempt, a second on failure.
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !outcome.is_success() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(weights: &[u32]) -> ArcSwap<EndpointSet> {
        ArcSwap::from_pointee(EndpointSet::of_weights(weights, false))
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
    fn every_report_counts_an_attempt_and_failures_apart() {
        let s = shared(&[1, 1]);
        let eps = s.load_full();
        let (e, o) = (&eps.endpoints[0].state, OutlierSpec::default());
        assert_eq!(e.attempts(), (0, 0));
        for outcome in [
            Outcome::Answered,
            Outcome::Connected,
            Outcome::Failed,
            Outcome::ConnectFailed,
            Outcome::Answered,
        ] {
            e.report(outcome, &o, &s);
        }
        assert_eq!(e.attempts(), (5, 2));
        // Counted even while ejected, trial or not.
        let eject_at_once = outlier(1, 0, Duration::from_secs(60));
        assert!(
            e.report(Outcome::ConnectFailed, &eject_at_once, &s)
                .is_some()
        );
        e.report(Outcome::ConnectFailed, &eject_at_once, &s);
        assert_eq!(e.attempts(), (7, 4));
        assert_eq!(eps.endpoints[1].state.attempts(), (0, 0));
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
}
