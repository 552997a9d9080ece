//! Request accounting, so tests can assert what a client sent: how many
//! requests, how many blocking ones, and with which token.

use std::sync::{Mutex, PoisonError};

#[derive(Debug)]
struct Record {
    /// Percent-decoded path.
    path: String,
    /// Carried `index` > 0.
    blocking: bool,
    token: Option<String>,
}

#[derive(Debug, Default)]
pub struct RequestLog {
    records: Mutex<Vec<Record>>,
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
            });
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
