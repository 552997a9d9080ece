//! Request accounting, so tests can assert what a client sent: how many
//! requests, how many blocking ones, and with which token; when each
//! arrived; and the reads the servers behind the agents did (forwarded
//! requests and agent-cache refreshes), at the leader or any server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

#[derive(Debug)]
struct Record {
    /// Percent-decoded path.
    path: String,
    /// Carried `index` > 0.
    blocking: bool,
    token: Option<String>,
    at: Instant,
}

#[derive(Debug, Default)]
pub struct RequestLog {
    records: Mutex<Vec<Record>>,
    /// Reads at the servers, with their path: every read not answered from
    /// an agent cache, plus one per agent-cache refresh.
    server_reads: Mutex<Vec<(Instant, String)>>,
    /// Those that needed the leader (not `?stale`).
    leader_reads: AtomicUsize,
}

impl RequestLog {
    pub fn record(&self, path: &str, blocking: bool, token: Option<String>) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Record {
                path: path.to_string(),
                blocking,
                token,
                at: Instant::now(),
            });
    }

    pub fn server_read(&self, path: &str, at_leader: bool) {
        self.server_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), path.to_string()));
        if at_leader {
            self.leader_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When each server read under `path_prefix` happened, in order.
    pub fn server_read_times(&self, path_prefix: &str) -> Vec<Instant> {
        self.server_reads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, path)| path.starts_with(path_prefix))
            .map(|(at, _)| *at)
            .collect()
    }

    pub fn leader_reads(&self) -> usize {
        self.leader_reads.load(Ordering::Relaxed)
    }

    /// When each request under `path_prefix` arrived, in order.
    pub fn arrivals(&self, path_prefix: &str) -> Vec<Instant> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .map(|r| r.at)
            .collect()
    }

    pub fn count(&self, path_prefix: &str) -> usize {
        self.count_where(path_prefix, |_| true)
    }

    pub fn blocking_count(&self, path_prefix: &str) -> usize {
        self.count_where(path_prefix, |r| r.blocking)
    }

    /// The token of the latest request under `path_prefix` (`None` if that
    /// request had none, or there was no such request).
    pub fn last_token(&self, path_prefix: &str) -> Option<String> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .rev()
            .find(|r| r.path.starts_with(path_prefix))
            .and_then(|r| r.token.clone())
    }

    fn count_where(&self, path_prefix: &str, keep: impl Fn(&Record) -> bool) -> usize {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.path.starts_with(path_prefix) && keep(r))
            .count()
    }
}
