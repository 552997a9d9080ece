//! Active health checks: one task per checked endpoint, HAProxy style.
//!
//! Every `interval` (plus a random `[0, jitter)` so checks of many
//! endpoints do not fire together) the task connects (`tcp`) or sends a
//! `GET` and reads the status (`http`), each within `timeout`. `fall`
//! failures in a row take a healthy endpoint out of rotation; `rise`
//! successes in a row bring an unhealthy one back. Endpoints start healthy,
//! and the first check runs within the first jitter period, so a dead
//! server is found within `fall` checks of start.
//!
//! The control task calls [`HealthChecks::sync`] after every table swap and
//! endpoint update: checks start for new endpoints and stop for gone ones.
//! The task holds the endpoint's state (shared with every table that lists
//! it), so health survives reloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;

use crate::config::{CheckKind, HealthCheckSpec};
use crate::metrics::Metrics;
use crate::table::Table;
use crate::table::endpoints::{CheckRecord, EndpointState};

/// State changes kept per endpoint for `/status`.
const HISTORY: usize = 16;

/// The running checks, by endpoint state: the key is the state's address,
/// kept valid by the `Arc` in [`Running`] while it is in the map.
pub struct HealthChecks {
    running: HashMap<usize, Running>,
    metrics: Metrics,
}

struct Running {
    state: Arc<EndpointState>,
    spec: HealthCheckSpec,
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

    /// Checks exactly the endpoints of `table`'s backends that have a
    /// `health_check`, with their backend's current spec.
    pub fn sync(&mut self, table: &Table) {
        let mut wanted: HashMap<usize, (Arc<EndpointState>, &HealthCheckSpec)> = HashMap::new();
        for backend in table.backends.values() {
            if let Some(spec) = &backend.spec.health_check {
                for state in backend.endpoint_states() {
                    wanted.insert(Arc::as_ptr(&state) as usize, (state, spec));
                }
            }
        }
        self.running.retain(|key, running| {
            let keep = wanted
                .get(key)
                .is_some_and(|(_, spec)| **spec == running.spec);
            if !keep && !wanted.contains_key(key) {
                // No longer checked: nothing may hold it out of rotation.
                running.state.set_healthy(true);
                running.state.record().checks = None;
            }
            keep
        });
        for (key, (state, spec)) in wanted {
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
            let task = tokio::spawn(check_loop(state.clone(), spec.clone(), results));
            self.running.insert(
                key,
                Running {
                    state,
                    spec: spec.clone(),
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

async fn check_loop(state: Arc<EndpointState>, spec: HealthCheckSpec, counters: CheckCounters) {
    let jitter = || {
        let max = spec.jitter.as_millis() as u64;
        Duration::from_millis(if max == 0 { 0 } else { fastrand::u64(0..max) })
    };
    tokio::time::sleep(jitter()).await;
    loop {
        let result = match tokio::time::timeout(spec.timeout, probe(state.addr, &spec.kind)).await {
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

/// One check of `addr`: a connect, or a GET whose status must be in range.
/// Also used to check a local service before registering it in Consul.
pub async fn probe(addr: std::net::SocketAddr, kind: &CheckKind) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let CheckKind::Http { path, host, expect } = kind else {
        return Ok(());
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
