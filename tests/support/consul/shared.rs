//! The context every connection, request and test hook shares: options,
//! state, the wake-up channel of blocked queries, leadership, faults and
//! request accounting.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::accounting::RequestLog;
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
    /// stale reads, at least a minute while there is no leader.
    pub fn last_contact_ms(&self, stale: bool) -> u64 {
        if !stale {
            return 0;
        }
        let lag = self.stale_lag_ms.load(Ordering::SeqCst);
        if self.leader() {
            lag
        } else {
            lag.max(LEADERLESS_LAST_CONTACT.as_millis() as u64)
        }
    }
}
