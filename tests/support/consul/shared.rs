//! The context every connection, request and test hook shares: options,
//! state, the wake-up channel of blocked queries, leadership, faults and
//! request accounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::accounting::RequestLog;
use super::blocking::Outcome;
use super::faults::FaultQueue;
use super::options::ConsulOptions;
use super::state::State;

/// `X-Consul-LastContact` of stale reads while there is no leader.
const LEADERLESS_LAST_CONTACT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Shared {
    pub options: ConsulOptions,
    state: Mutex<State>,
    /// Counts visible changes; blocked queries re-evaluate when it moves.
    changes: watch::Sender<u64>,
    /// Tells the TTL/reaper task that check clocks may have moved.
    pub timers: Notify,
    shutdown: watch::Sender<bool>,
    leader: AtomicBool,
    /// `X-Consul-LastContact` of stale reads, in milliseconds.
    stale_lag_ms: AtomicU64,
    pub faults: FaultQueue,
    pub log: RequestLog,
    /// Requests inside a blocking wait right now.
    pub open_blocking: AtomicUsize,
    /// `X-Consul-LastContact` of stale reads while there is no leader
    /// (at least this; [`LEADERLESS_LAST_CONTACT`] unless an election set it).
    leaderless_contact_ms: AtomicU64,
    /// While there is no leader, stale reads are answered by a follower
    /// that restored an empty snapshot: empty results at index 1 (#1131).
    follower_empty: AtomicBool,
    /// After an agent restart, reads answer empty until then, as an agent
    /// that has not synced yet (#1713).
    unsynced_until: Mutex<Option<Instant>>,
    /// The latest evaluation of each distinct read, by state version: a
    /// write wakes every blocked query, and thousands of them asking the
    /// same few questions get one evaluation per question.
    memo: Mutex<HashMap<String, (u64, Arc<Outcome>)>>,
    /// Client connections open now, and the most at once.
    pub connections: AtomicUsize,
    pub peak_connections: AtomicUsize,
    /// The most connections one client address held at once on one agent.
    pub peak_per_client: AtomicUsize,
    /// Connections refused with the raw `429` of the per-client limit.
    pub refused: AtomicUsize,
}

impl Shared {
    pub fn new(options: ConsulOptions) -> Self {
        let (changes, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let mut state = State::new(options.initial_index);
        // The agent's own node exists from the start, at the initial index.
        let agent_node = options.node_name.clone();
        state.catalog.ensure_node(
            &agent_node,
            "127.0.0.1",
            &[("consul-network-segment".to_string(), String::new())].into(),
            &options.datacenter,
            state.index(),
        );
        Self {
            options,
            state: Mutex::new(state),
            changes,
            timers: Notify::new(),
            shutdown,
            leader: AtomicBool::new(true),
            stale_lag_ms: AtomicU64::new(0),
            faults: FaultQueue::default(),
            log: RequestLog::default(),
            open_blocking: AtomicUsize::new(0),
            leaderless_contact_ms: AtomicU64::new(LEADERLESS_LAST_CONTACT.as_millis() as u64),
            follower_empty: AtomicBool::new(false),
            unsynced_until: Mutex::new(None),
            memo: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            peak_connections: AtomicUsize::new(0),
            peak_per_client: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        }
    }

    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs a write; wakes blocked queries if it changed what they see, and
    /// the timer task so it can recompute its next deadline.
    pub fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = self.write_quietly(f);
        self.timers.notify_one();
        result
    }

    /// [`write`](Self::write) without waking the timer task (used by it).
    pub fn write_quietly<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, wake) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.touch();
            let result = f(&mut state);
            (result, state.take_wake())
        };
        if wake {
            self.wake_all();
        }
        result
    }

    pub fn wake_all(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Subscribe before evaluating, so no change is missed in between.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn until_shutdown(&self) {
        let mut signal = self.shutdown.subscribe();
        let _ = signal.wait_for(|down| *down).await;
    }

    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::SeqCst);
        self.wake_all();
    }

    pub fn set_stale_lag(&self, lag: Duration) {
        let ms = u64::try_from(lag.as_millis()).unwrap_or(u64::MAX);
        self.stale_lag_ms.store(ms, Ordering::SeqCst);
    }

    /// `X-Consul-LastContact`: 0 for leader reads; the configured lag for
    /// stale reads, while there is no leader at least a minute (or what
    /// [`begin_election`](Self::begin_election) set).
    pub fn last_contact_ms(&self, stale: bool) -> u64 {
        if !stale {
            return 0;
        }
        let lag = self.stale_lag_ms.load(Ordering::SeqCst);
        if self.leader() {
            lag
        } else {
            lag.max(self.leaderless_contact_ms.load(Ordering::SeqCst))
        }
    }

    /// The leader is lost; stale reads report `last_contact` and, with
    /// `follower_empty`, come from a follower that restored an empty
    /// snapshot (blocked queries are released at once, as by a restore).
    pub fn begin_election(&self, last_contact: Duration, follower_empty: bool) {
        let ms = u64::try_from(last_contact.as_millis()).unwrap_or(u64::MAX);
        self.leaderless_contact_ms.store(ms, Ordering::SeqCst);
        self.follower_empty.store(follower_empty, Ordering::SeqCst);
        self.leader.store(false, Ordering::SeqCst);
        self.write(|st| st.release_waiters());
    }

    /// A leader again; stale reads back to normal.
    pub fn end_election(&self) {
        self.follower_empty.store(false, Ordering::SeqCst);
        self.leaderless_contact_ms
            .store(LEADERLESS_LAST_CONTACT.as_millis() as u64, Ordering::SeqCst);
        self.set_leader(true);
    }

    /// A stale read is answered by the empty follower now.
    pub fn follower_view_empty(&self) -> bool {
        !self.leader() && self.follower_empty.load(Ordering::SeqCst)
    }

    pub fn set_unsynced_until(&self, until: Option<Instant>) {
        *self
            .unsynced_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    /// The agent restarted and has not synced yet.
    pub fn unsynced(&self) -> bool {
        self.unsynced_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }

    /// `eval` at the current state, or its memoized result for `key` when
    /// nothing was written since. Returns the outcome and the restore epoch.
    pub fn evaluate(&self, key: &str, eval: impl FnOnce(&State) -> Outcome) -> (Arc<Outcome>, u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let version = state.version();
        let epoch = state.restore_epoch();
        let mut memo = self.memo.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, outcome)) = memo.get(key)
            && *at == version
        {
            return (outcome.clone(), epoch);
        }
        let outcome = Arc::new(eval(&state));
        memo.insert(key.to_string(), (version, outcome.clone()));
        (outcome, epoch)
    }

    /// A client connection opened; returns a guard that counts it closed.
    pub fn connection_opened(&self, per_client: usize) -> OpenConnection<'_> {
        let open = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_connections.fetch_max(open, Ordering::SeqCst);
        self.peak_per_client.fetch_max(per_client, Ordering::SeqCst);
        OpenConnection(&self.connections)
    }
}

/// Counts a connection as open while it lives.
pub struct OpenConnection<'a>(&'a AtomicUsize);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
