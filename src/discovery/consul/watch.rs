//! Blocking-query watches, one request loop per distinct [`WatchKey`],
//! following the client obligations of the Consul API spec (§2.5) and
//! consul-template's view loop (§8.1):
//!
//! - start at index 0 (an immediate read), then block with the last index;
//! - an index that went backwards resets to 0 (snapshot restore, reaped
//!   tombstones); the data of that answer is discarded;
//! - the same index, or equal data, is not a change;
//! - with `stale`, an answer whose server last heard from the leader more
//!   than `max_stale` ago (`X-Consul-LastContact`, or `Age` for a cached
//!   one) is read again at once from the leader, as consul-template does;
//! - requests start at least 100 ms apart (plus 0–20 ms when that rule
//!   delays one), consul-template's rate limit, so a query that keeps
//!   returning early under churn degrades to ten requests a second;
//! - after the index moved, the next blocking query waits a random
//!   0–`change_jitter`: a thousand sidecars woken by one change do not all
//!   ask again in the same millisecond. The change itself is applied at
//!   once; only the re-arm is spread;
//! - **an empty answer is suspect** when it comes without a known leader
//!   (`X-Consul-KnownLeader: false`), right after an index reset, or right
//!   after a failed request (an agent restarting refuses connections, then
//!   may answer before it has synced). A suspect empty answer never
//!   replaces non-empty data at once: a second read, from the leader and
//!   blocking up to `empty_confirm_wait` on the suspect answer's index,
//!   must also be empty (with a known leader) first. consul-template
//!   renders empty files in exactly these moments (hashicorp/consul-template
//!   #1131, #1713). An empty answer that is not suspect (instances
//!   deregistered, keys deleted) applies at once;
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

use super::client::{ConsulClient, ConsulError, ReadOptions, Reply};
use super::data::{WatchData, WatchKey};
use crate::backoff::Backoff;
use crate::config::ConsulSpec;

/// consul-template's rate limit: request starts at least this far apart...
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// ...plus up to this much when the rule delays one.
const MIN_INTERVAL_DITHER_MS: u64 = 20;

/// Paces one watch's requests.
#[derive(Default)]
struct Pace {
    last_start: Option<tokio::time::Instant>,
}

impl Pace {
    /// Waits `delay`, and at least [`MIN_INTERVAL`] since the previous
    /// start; then counts a start.
    async fn wait(&mut self, delay: Duration) {
        let now = tokio::time::Instant::now();
        let mut until = now + delay;
        if let Some(earliest) = self.last_start.map(|t| t + MIN_INTERVAL)
            && earliest > now
        {
            let dither = Duration::from_millis(fastrand::u64(0..MIN_INTERVAL_DITHER_MS));
            until = until.max(earliest + dither);
        }
        if until > now {
            tokio::time::sleep_until(until).await;
        }
        self.started();
    }

    /// Counts a start that skipped the wait (the leader read that repeats a
    /// too-stale answer).
    fn started(&mut self) {
        self.last_start = Some(tokio::time::Instant::now());
    }
}

/// How a watch behaves, from the `[consul]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPolicy {
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub change_jitter: Duration,
    pub empty_confirm_wait: Duration,
}

impl WatchPolicy {
    pub fn new(spec: &ConsulSpec) -> Self {
        Self {
            retry_min: spec.retry_min,
            retry_max: spec.retry_max,
            change_jitter: spec.change_jitter,
            empty_confirm_wait: spec.empty_confirm_wait,
        }
    }

    /// A random pause in `0..=change_jitter`.
    fn jitter(&self) -> Duration {
        let max = u64::try_from(self.change_jitter.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=max))
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
    /// Suspect empty answers held back for a confirming read.
    empty_held: u64,
    /// Stale or cached answers read again from the leader (`max_stale`).
    stale_retries: u64,
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
    /// Empty answers held back until a second read confirmed or refuted
    /// them (no known leader, index reset, failed request just before).
    pub empty_answers_held: u64,
    /// Answers over `max_stale` that were read again from the leader.
    pub stale_retries: u64,
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
            empty_answers_held: s.empty_held,
            stale_retries: s.stale_retries,
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
    pub policy: WatchPolicy,
}

/// The next request of a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// As the settings say: blocking on the last index, stale and cached
    /// when allowed.
    Read,
    /// The same read from the leader, at once: the answer was over
    /// `max_stale`.
    LeaderRetry,
    /// A second read of a suspect empty answer: from the leader, blocking
    /// on that answer's index for up to `empty_confirm_wait`.
    Confirm { index: u64 },
}

/// What made the next answer suspect, if it is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspect {
    None,
    AfterReset,
    AfterFailure,
}

/// What [`WatchTask::accept`] made of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Applied (or equal to what we had); `moved` when its index differs
    /// from the one sent.
    Taken { changed: bool, moved: bool },
    /// The index went backwards: read again from 0.
    Reset,
    /// A suspect empty answer, held until a second read at this index.
    Held { index: u64 },
}

impl WatchTask {
    pub async fn run(self) {
        let (path, query) = self.watch.key.request();
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cacheable = self.watch.key.cacheable();
        let mut pace = Pace::default();
        let mut backoff = Backoff::new(self.policy.retry_min, self.policy.retry_max);
        let mut acl_reported: Option<ConsulError> = None;
        let mut next = Next::Read;
        let mut suspect = Suspect::None;
        let mut delay = Duration::ZERO;
        loop {
            let sent = match next {
                Next::Read => {
                    pace.wait(delay).await;
                    self.client
                        .read_options(self.watch.lock().last_index, cacheable)
                }
                Next::LeaderRetry => {
                    // consul-template repeats a too-stale read at once.
                    pace.started();
                    ReadOptions {
                        stale: false,
                        cached: false,
                        ..self
                            .client
                            .read_options(self.watch.lock().last_index, false)
                    }
                }
                Next::Confirm { index } => {
                    pace.wait(delay).await;
                    ReadOptions {
                        index,
                        wait: self.policy.empty_confirm_wait,
                        stale: false,
                        cached: false,
                    }
                }
            };
            delay = Duration::ZERO;
            let result = self.client.read(&path, &query, sent).await;
            let outcome = match result {
                Ok(reply) if reply.too_stale(&sent, self.client.max_stale()) => {
                    {
                        let mut s = self.watch.lock();
                        s.requests += 1;
                        s.stale_retries += 1;
                    }
                    tracing::debug!(watch = %self.watch.key, last_contact = ?reply.last_contact, age = ?reply.age, "Answer over max_stale; reading from the leader");
                    self.watch.done.send_modify(|n| *n += 1);
                    backoff.reset();
                    next = Next::LeaderRetry;
                    continue;
                }
                Ok(reply) => {
                    let confirming = matches!(next, Next::Confirm { .. });
                    let why = std::mem::replace(&mut suspect, Suspect::None);
                    self.accept(reply, sent.index, confirming, why)
                }
                Err(e) => Err(e),
            };
            self.watch.done.send_modify(|n| *n += 1);
            match outcome {
                Ok(answer) => {
                    backoff.reset();
                    if acl_reported.take().is_some() {
                        tracing::info!(watch = %self.watch.key, "Consul accepts the token again");
                    }
                    next = Next::Read;
                    match answer {
                        Answer::Taken { changed, moved } => {
                            if moved {
                                delay = self.policy.jitter();
                            }
                            if changed && self.changed.send(self.watch.key.clone()).is_err() {
                                return; // the control task is gone
                            }
                        }
                        Answer::Reset => suspect = Suspect::AfterReset,
                        Answer::Held { index } => next = Next::Confirm { index },
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
                    next = Next::Read;
                    suspect = Suspect::AfterFailure;
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

    /// Handles a reply to a request sent with `sent_index`. `confirming`:
    /// it is the second read of a held empty answer. `why`: what makes an
    /// empty answer suspect besides an unknown leader.
    fn accept(
        &self,
        reply: Reply,
        sent_index: u64,
        confirming: bool,
        why: Suspect,
    ) -> Result<Answer, ConsulError> {
        let new_index = reply.index;
        let mut s = self.watch.lock();
        s.requests += 1;
        s.last_error = None;
        s.last_success = Some((SystemTime::now(), Instant::now()));
        if sent_index > 0 && new_index < sent_index {
            // Went backwards: start over with a non-blocking read.
            tracing::info!(watch = %self.watch.key, from = sent_index, to = new_index, "Consul index went backwards; re-reading");
            s.last_index = 0;
            return Ok(Answer::Reset);
        }
        let moved = new_index != sent_index;
        let had_data = self.watch.data.load().is_some() && !s.from_state_file;
        if !confirming && !moved && sent_index > 0 && had_data {
            return Ok(Answer::Taken {
                changed: false,
                moved,
            });
        }
        drop(s);
        let body = (reply.status != http::StatusCode::NOT_FOUND).then_some(&reply.body[..]);
        let data = self.watch.key.decode(body).map_err(ConsulError::Decode)?;
        let mut s = self.watch.lock();
        let current = self.watch.data.load_full();
        if data.is_empty() && current.as_deref().is_some_and(|d| !d.is_empty()) {
            let reason = if !reply.known_leader {
                Some("without a known leader")
            } else {
                match why {
                    Suspect::AfterReset => Some("right after an index reset"),
                    Suspect::AfterFailure => Some("right after a failed request"),
                    Suspect::None => None,
                }
            };
            if let Some(reason) = reason {
                s.empty_held += 1;
                tracing::warn!(watch = %self.watch.key, index = new_index, reason, "Empty answer while the last data was not; keeping that data until a second read confirms it");
                return Ok(Answer::Held {
                    index: new_index.max(1),
                });
            }
            if confirming {
                tracing::info!(watch = %self.watch.key, index = new_index, "A second read confirmed the empty answer; applying it");
            }
        }
        // Index 0 would make the next request non-blocking: a busy loop.
        s.last_index = new_index.max(1);
        let from_file = std::mem::take(&mut s.from_state_file);
        if !from_file && current.as_deref() == Some(&data) {
            return Ok(Answer::Taken {
                changed: false,
                moved,
            });
        }
        let changed = current.as_deref() != Some(&data);
        self.watch.data.store(Some(Arc::new(data)));
        if changed {
            s.last_change = Some(SystemTime::now());
        }
        Ok(Answer::Taken { changed, moved })
    }
}
