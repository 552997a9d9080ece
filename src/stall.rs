//! An inactivity timer for I/O that is in progress: it fires when nothing
//! moved for its limit, and progress pushes it back (HAProxy's `timeout
//! client` / `timeout server` while an exchange is under way, Pingora's
//! read and write timeouts).
//!
//! Cheap on the hot path: the timer is created the first time the I/O
//! blocks, and moved (to a later instant, which takes tokio no lock) only
//! when the I/O blocks again after progress: one clock read per wait,
//! none per read or write that completes.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Sixteen bytes: it lives inside response bodies that are moved several
/// times per request, so the limit is kept in milliseconds.
#[derive(Debug)]
pub struct StallTimer {
    timer: Option<Pin<Box<Sleep>>>,
    /// The limit in milliseconds (longer limits are cut to ~49 days).
    limit_ms: u32,
    /// Bytes moved since the deadline was last set.
    progressed: bool,
}

impl StallTimer {
    pub fn new(limit: Duration) -> Self {
        Self {
            timer: None,
            limit_ms: u32::try_from(limit.as_millis()).unwrap_or(u32::MAX),
            progressed: false,
        }
    }

    pub fn limit(&self) -> Duration {
        Duration::from_millis(u64::from(self.limit_ms))
    }

    /// Bytes moved: the next wait starts its own count.
    pub fn progress(&mut self) {
        self.progressed = true;
    }

    /// The I/O is blocked: `Ready` once nothing has moved for the limit.
    pub fn poll_blocked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let limit = self.limit();
        let timer = match &mut self.timer {
            Some(timer) if !self.progressed => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + limit);
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(limit))),
        };
        self.progressed = false;
        timer.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_limit_without_progress_and_moves_with_it() {
        let mut stall = StallTimer::new(Duration::from_secs(10));
        let started = Instant::now();
        // Blocked for 6 s, then progress, then blocked again: 10 s from
        // the second block, not from the first.
        let blocked =
            tokio::time::timeout(Duration::from_secs(6), poll_fn(|cx| stall.poll_blocked(cx)));
        assert!(blocked.await.is_err());
        stall.progress();
        poll_fn(|cx| stall.poll_blocked(cx)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }
}
