//! Idle upstream connections of one endpoint, most recent first.
//!
//! A [`Pool`] keeps, per thread, a stack of idle connections, each with the
//! moment after which it must not be used again ([`Idle::usable_until`]:
//! the backend's idle limit, shortened by the server's own `Keep-Alive:
//! timeout` hint). Taking pops the most recently returned connection:
//!
//! - under steady load a few hot connections carry the traffic, and the
//!   rest age at the bottom, where the server's idle timeout closes them
//!   without ever meeting a request (FIFO reuse would cycle through every
//!   connection and meet each one at its oldest);
//! - expired connections are dropped as they are met, at the bottom when a
//!   connection is returned and at the top when one is taken, so a pool
//!   needs no timer.
//!
//! One stack per thread: the request path neither locks nor shares a cache
//! line with other threads, and with one runtime per thread a connection
//! stays on the runtime whose reactor it is registered with. A pool is
//! created on first use, so endpoints that never see a protocol cost
//! nothing for it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use thread_local::ThreadLocal;
use tokio::time::Instant;

/// Idle connections kept per endpoint and thread; more close on return.
pub const MAX_IDLE_PER_THREAD: usize = 512;
/// A connection is given up this long before the server's announced idle
/// timeout, so a request never races the server's close.
const IDLE_HINT_MARGIN: Duration = Duration::from_secs(1);

/// How long an idle connection may be used again: the backend's idle
/// limit, or shortly before the server's announced idle timeout
/// (`Keep-Alive: timeout=N`) if that comes first.
pub fn reuse_window(max_idle: Duration, hint: Option<Duration>) -> Duration {
    let hinted = hint.map(|hint| {
        hint.checked_sub(IDLE_HINT_MARGIN)
            .filter(|d| !d.is_zero())
            .unwrap_or(hint / 2)
    });
    hinted.map_or(max_idle, |h| h.min(max_idle))
}

/// A connection waiting in a pool.
pub struct Idle<T> {
    pub conn: T,
    /// When it went idle.
    pub since: Instant,
    /// Not to be used after this (the idle limit, or the server's hint).
    pub usable_until: Instant,
}

/// Idle connections to one endpoint (see the module doc).
pub struct Pool<T: Send> {
    stacks: ThreadLocal<RefCell<VecDeque<Idle<T>>>>,
}

impl<T: Send> Default for Pool<T> {
    fn default() -> Self {
        Self {
            stacks: ThreadLocal::new(),
        }
    }
}

impl<T: Send> Pool<T> {
    /// The most recently returned connection that is still usable at `now`
    /// and idle for no longer than `max_idle` (stricter for requests that
    /// may not be sent twice); expired ones met on the way are dropped.
    pub fn take(&self, now: Instant, max_idle: Option<Duration>) -> Option<Idle<T>> {
        let mut stack = self.stacks.get()?.borrow_mut();
        while let Some(top) = stack.pop_back() {
            if now >= top.usable_until {
                continue; // expired: dropped
            }
            if max_idle.is_some_and(|max| now.saturating_duration_since(top.since) > max) {
                // Still good for others; too old for this request.
                stack.push_back(top);
                return None;
            }
            return Some(top);
        }
        None
    }

    /// Keeps `idle` for later; drops expired connections at the bottom and
    /// the oldest one when the stack is full.
    pub fn put(&self, idle: Idle<T>) {
        let now = idle.since;
        let mut stack = self
            .stacks
            .get_or(|| RefCell::new(VecDeque::with_capacity(4)))
            .borrow_mut();
        while stack
            .front()
            .is_some_and(|bottom| now >= bottom.usable_until)
        {
            stack.pop_front();
        }
        if stack.len() >= MAX_IDLE_PER_THREAD {
            stack.pop_front();
        }
        stack.push_back(idle);
    }

    /// Idle connections on this thread, for tests and status.
    pub fn len_here(&self) -> usize {
        self.stacks.get().map_or(0, |s| s.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(conn: u32, since: Instant, life: u64) -> Idle<u32> {
        Idle {
            conn,
            since,
            usable_until: since + Duration::from_secs(life),
        }
    }

    #[test]
    fn most_recent_first_and_expired_ones_dropped() {
        let pool = Pool::default();
        let t = Instant::now();
        pool.put(idle(1, t, 10));
        pool.put(idle(2, t + Duration::from_secs(1), 10));
        pool.put(idle(3, t + Duration::from_secs(2), 1));
        let now = t + Duration::from_secs(2);
        assert_eq!(pool.take(now, None).map(|i| i.conn), Some(3));
        pool.put(idle(3, now, 1));
        // At t+3.5 s the newest (3) has expired: skipped and dropped.
        let later = t + Duration::from_millis(3500);
        assert_eq!(pool.take(later, None).map(|i| i.conn), Some(2));
        assert_eq!(pool.len_here(), 1);
        // Returning one drops the expired ones at the bottom.
        pool.put(idle(4, t + Duration::from_secs(20), 10));
        assert_eq!(pool.len_here(), 1);
        assert_eq!(
            pool.take(t + Duration::from_secs(21), None).map(|i| i.conn),
            Some(4)
        );
    }

    #[test]
    fn a_stricter_idle_limit_leaves_the_connection_for_others() {
        let pool = Pool::default();
        let t = Instant::now();
        pool.put(idle(1, t, 10));
        let now = t + Duration::from_secs(2);
        assert!(pool.take(now, Some(Duration::from_secs(1))).is_none());
        assert_eq!(pool.take(now, None).map(|i| i.conn), Some(1));
    }

    #[test]
    fn a_full_stack_drops_its_oldest() {
        let pool = Pool::default();
        let t = Instant::now();
        for i in 0..=MAX_IDLE_PER_THREAD as u32 {
            pool.put(idle(i, t, 10));
        }
        assert_eq!(pool.len_here(), MAX_IDLE_PER_THREAD);
        let mut last = None;
        while let Some(i) = pool.take(t, None) {
            last = Some(i.conn);
        }
        assert_eq!(last, Some(1), "connection 0 was dropped");
    }

    #[test]
    fn each_thread_has_its_own_stack() {
        let pool = std::sync::Arc::new(Pool::default());
        let t = Instant::now();
        pool.put(idle(1, t, 10));
        let other = pool.clone();
        let seen = std::thread::spawn(move || other.take(t, None).map(|i| i.conn))
            .join()
            .unwrap();
        assert_eq!(seen, None);
        assert_eq!(pool.take(t, None).map(|i| i.conn), Some(1));
    }
}
