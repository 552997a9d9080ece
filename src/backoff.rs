//! Jittered exponential backoff for control-plane retry loops.
//!
//! One [`Backoff`] per loop: [`next_delay`](Backoff::next_delay) after each
//! failure, [`reset`](Backoff::reset) after a success. The ceiling doubles
//! from `min` up to `max`, and each delay is drawn at random from the upper
//! half of it ("equal jitter", as in the AWS architecture blog's "Exponential
//! Backoff and Jitter"), so loops that failed together (one nameserver or
//! agent down for many names or services) do not retry in step, while a
//! delay never drops below `min` or exceeds `max`.
//!
//! Every control-plane retry loop uses it: DNS name tasks, Consul watches
//! and Consul registrations.

use std::time::Duration;

/// Retry delays for one loop; see the module doc.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Failures since the last [`reset`](Self::reset).
    failures: u32,
}

impl Backoff {
    /// `min` is the shortest delay and `max` the longest; `max < min` is
    /// treated as `max == min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The delay before retrying after one more failure: random in
    /// `[ceiling / 2, ceiling]` with `ceiling = min(min × 2ⁿ, max)` for the
    /// n-th consecutive failure, and never below `min`.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // 2^16 × min is past any sensible max; the cap keeps the shift defined.
        let ceiling = self
            .min
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max);
        let half = ceiling / 2;
        let jitter = half.mul_f64(fastrand::f64());
        (ceiling - jitter).max(self.min)
    }

    /// After a success: the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last [`reset`](Self::reset), for logs.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_within_bounds_and_jitter() {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let mut b = Backoff::new(100 * MS, 1000 * MS);
            let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
            // Ceilings 200, 400, 800, 1000, 1000, 1000 ms; each delay in
            // the upper half of its ceiling.
            for (d, ceiling) in delays.iter().zip([200, 400, 800, 1000, 1000, 1000]) {
                assert!(
                    *d >= ceiling / 2 * MS && *d <= ceiling * MS,
                    "{d:?} outside the upper half of {ceiling} ms"
                );
            }
            seen.push(delays[0]);
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 10, "no jitter: {seen:?}");
    }

    /// What the jitter is for: loops that fail together (one resolver or
    /// agent down) must not retry in lock-step.
    #[test]
    fn two_loops_with_the_same_settings_do_not_retry_in_step() {
        let (mut a, mut b) = (
            Backoff::new(250 * MS, 60_000 * MS),
            Backoff::new(250 * MS, 60_000 * MS),
        );
        let delays =
            |b: &mut Backoff| -> Vec<Duration> { (0..12).map(|_| b.next_delay()).collect() };
        let (da, db) = (delays(&mut a), delays(&mut b));
        assert_ne!(da, db, "same delays: lock-step");
        for d in da.iter().chain(&db) {
            assert!((250 * MS..=60_000 * MS).contains(d), "{d:?} out of bounds");
        }
        assert_eq!((a.failures(), b.failures()), (12, 12));
    }

    #[test]
    fn never_below_min_nor_above_max() {
        let mut b = Backoff::new(300 * MS, 400 * MS);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!((300 * MS..=400 * MS).contains(&d), "{d:?}");
        }
        let mut equal = Backoff::new(500 * MS, 100 * MS);
        assert_eq!(equal.next_delay(), 500 * MS);
    }

    #[test]
    fn reset_starts_over_and_many_failures_do_not_overflow() {
        let mut b = Backoff::new(100 * MS, Duration::MAX);
        for _ in 0..100 {
            b.next_delay();
        }
        assert!(b.next_delay() >= 100 * MS * (1 << 15));
        b.reset();
        assert!(b.next_delay() <= 200 * MS);
    }
}
