//! Blocking-query watches, one request loop per distinct [`WatchKey`],
//! following the client obligations of the Consul API spec (§2.5) and
//! consul-template's view loop (§8.1):
//!
//! - start at index 0 (an immediate read), then block with the last index;
//! - an index that went backwards resets to 0 (snapshot restore, reaped
//!   tombstones); the data of that answer is discarded;
//! - the same index, or equal data, is not a change;
//! - requests are paced by a token bucket (burst 2, one token per 100 ms,
//!   the shape the spec suggests): an isolated change is seen at once, and
//!   a query that keeps returning early under churn degrades to ten
//!   requests a second;
//! - errors back off with a [`Backoff`] (exponential, equal jitter) from
//!   `retry_min` to `retry_max`, so watches that failed together do not
//!   retry in step; the last good data is kept, and an ACL error is logged
//!   once rather than on every retry; the first request after an error is
//!   a plain read, since a restarted cluster may reuse an index.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::client::{ConsulClient, ConsulError};
use super::data::{WatchData, WatchKey};
use crate::backoff::Backoff;

/// Request pacing: a bucket of `BURST` tokens, one back every `REFILL`.
const BURST: f64 = 2.0;
const REFILL: Duration = Duration::from_millis(100);

/// Paces one watch's requests.
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new() -> Self {
        Self {
            tokens: BURST,
            at: Instant::now(),
        }
    }

    /// Waits for a token, then takes it.
    async fn take(&mut self) {
        let now = Instant::now();
        let refilled = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            let wait =
                REFILL.mul_f64(1.0 - self.tokens) + Duration::from_millis(fastrand::u64(0..20));
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.at = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

#[derive(Debug, Default)]
struct WatchState {
    last_index: u64,
    requests: u64,
    last_success: Option<(SystemTime, Instant)>,
    last_change: Option<SystemTime>,
    last_error: Option<String>,
    /// The data came from the state file and Consul has not answered since.
    from_state_file: bool,
    started: Option<Instant>,
}

/// One watched query: its latest data and what `/status` shows of it.
/// Written only by its task (and by the state file at start).
pub struct ConsulWatch {
    pub key: WatchKey,
    data: ArcSwapOption<WatchData>,
    /// Requests finished so far, to wait for the first one.
    done: watch::Sender<u64>,
    state: Mutex<WatchState>,
}

/// `/status` view of one watch.
#[derive(Debug, Serialize)]
pub struct ConsulWatchStatus {
    pub kind: &'static str,
    pub watch: String,
    pub ok: bool,
    pub index: u64,
    pub items: Option<usize>,
    pub requests: u64,
    pub last_success: Option<String>,
    pub last_change: Option<String>,
    pub staleness_seconds: f64,
    pub last_error: Option<String>,
    /// Serving data saved by an earlier run because Consul has not answered.
    pub stale_from_state_file: bool,
}

impl ConsulWatch {
    pub fn new(key: WatchKey) -> Self {
        Self {
            key,
            data: ArcSwapOption::empty(),
            done: watch::Sender::new(0),
            state: Mutex::new(WatchState {
                started: Some(Instant::now()),
                ..Default::default()
            }),
        }
    }

    /// The latest data; `None` until Consul (or the state file) gave some.
    pub fn data(&self) -> Option<Arc<WatchData>> {
        self.data.load_full()
    }

    /// Seconds since the last successful answer (since the watch started,
    /// if there was none): what to alert on for stale routing.
    pub fn staleness(&self) -> f64 {
        let s = self.lock();
        s.last_success
            .map(|(_, at)| at)
            .or(s.started)
            .map_or(0.0, |at| at.elapsed().as_secs_f64())
    }

    /// The last request succeeded.
    pub fn is_ok(&self) -> bool {
        self.lock().last_error.is_none()
    }

    pub fn last_index(&self) -> u64 {
        self.lock().last_index
    }

    pub fn status(&self) -> ConsulWatchStatus {
        let staleness = self.staleness();
        let s = self.lock();
        let time =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        ConsulWatchStatus {
            kind: "consul",
            watch: self.key.to_string(),
            ok: s.last_error.is_none() && s.last_success.is_some(),
            index: s.last_index,
            items: self.data().map(|d| d.len()),
            requests: s.requests,
            last_success: time(s.last_success.map(|(t, _)| t)),
            last_change: time(s.last_change),
            staleness_seconds: staleness,
            last_error: s.last_error.clone(),
            stale_from_state_file: s.from_state_file,
        }
    }

    /// Serves `data` saved by an earlier run until Consul answers.
    pub fn seed(&self, data: WatchData) {
        self.data.store(Some(Arc::new(data)));
        self.lock().from_state_file = true;
    }

    /// Waits until at least one request has finished.
    pub async fn first_answer(&self) {
        let mut done = self.done.subscribe();
        let _ = done.wait_for(|n| *n > 0).await;
    }

    /// Never held across an await; a poisoned lock still holds valid data.
    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What one watch's task needs.
pub struct WatchTask {
    pub watch: Arc<ConsulWatch>,
    pub client: Arc<ConsulClient>,
    pub changed: mpsc::UnboundedSender<WatchKey>,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl WatchTask {
    pub async fn run(self) {
        let (path, query) = self.watch.key.request();
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut pace = TokenBucket::new();
        let mut backoff = Backoff::new(self.retry_min, self.retry_max);
        let mut acl_reported: Option<ConsulError> = None;
        loop {
            pace.take().await;
            let index = self.watch.lock().last_index;
            let result = self.client.get(&path, &query, index).await;
            let outcome = match result {
                Ok(reply) => self.accept(reply, index),
                Err(e) => Err(e),
            };
            self.watch.done.send_modify(|n| *n += 1);
            match outcome {
                Ok(changed) => {
                    backoff.reset();
                    if acl_reported.take().is_some() {
                        tracing::info!(watch = %self.watch.key, "Consul accepts the token again");
                    }
                    if changed && self.changed.send(self.watch.key.clone()).is_err() {
                        return; // the control task is gone
                    }
                }
                Err(error) => {
                    {
                        let mut s = self.watch.lock();
                        s.last_error = Some(error.to_string());
                        // Start over with a plain read once Consul answers
                        // again: a restarted or rebuilt cluster may reuse
                        // the index we hold for different data.
                        s.last_index = 0;
                    }
                    let delay = backoff.next_delay();
                    let failures = backoff.failures();
                    if error.is_acl() {
                        if acl_reported.as_ref() != Some(&error) {
                            tracing::error!(watch = %self.watch.key, %error, "Consul refused the watch; retrying with backoff, keeping the last data");
                            acl_reported = Some(error);
                        }
                    } else {
                        tracing::warn!(watch = %self.watch.key, %error, failures, "Consul watch failed; keeping the last data");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Handles a reply to a request sent with `sent_index`; `Ok(true)` when
    /// the data changed.
    fn accept(&self, reply: super::client::Reply, sent_index: u64) -> Result<bool, ConsulError> {
        let new_index = reply.index;
        let mut s = self.watch.lock();
        s.requests += 1;
        s.last_error = None;
        s.last_success = Some((SystemTime::now(), Instant::now()));
        if sent_index > 0 && new_index < sent_index {
            // Went backwards: start over with a non-blocking read.
            tracing::info!(watch = %self.watch.key, from = sent_index, to = new_index, "Consul index went backwards; re-reading");
            s.last_index = 0;
            return Ok(false);
        }
        // Index 0 would make the next request non-blocking: a busy loop.
        s.last_index = new_index.max(1);
        let had_data = self.watch.data.load().is_some() && !s.from_state_file;
        if sent_index > 0 && new_index == sent_index && had_data {
            return Ok(false);
        }
        drop(s);
        let body = (reply.status != http::StatusCode::NOT_FOUND).then_some(&reply.body[..]);
        let data = self.watch.key.decode(body).map_err(ConsulError::Decode)?;
        let mut s = self.watch.lock();
        let from_file = std::mem::take(&mut s.from_state_file);
        if !from_file && self.watch.data.load().as_deref() == Some(&data) {
            return Ok(false);
        }
        let changed = self.watch.data.load().as_deref() != Some(&data);
        self.watch.data.store(Some(Arc::new(data)));
        if changed {
            s.last_change = Some(SystemTime::now());
        }
        Ok(changed)
    }
}
