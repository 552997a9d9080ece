//! Access logs: one line per HTTP request and per TCP connection, per
//! listener, in JSON, HAProxy's format, "combined" or a template.
//!
//! The data path fills a [`Record`] and hands it to [`AccessLog::submit`],
//! which pushes it onto one bounded lock-free queue and returns: it never
//! formats, never writes and never waits. One writer thread (see
//! [`writer`]) formats and writes every line. When the queue is full (the
//! disk or the pipe cannot keep up) the record is dropped and counted in
//! `switchyard_access_log_dropped_total{reason="queue_full"}`.

pub mod format;
pub mod record;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use prometheus::IntCounter;

pub use format::Format;
pub use record::{Protocol, Record, Termination, Text, Texts};

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sink {
    Stdout,
    /// Appended to; reopened on SIGUSR1 and when it is moved or removed
    /// (logrotate without `copytruncate`).
    File(PathBuf),
}

/// Which lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// 5xx responses and everything that did not end normally.
    Errors,
}

/// A listener's `access_log` setting, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub format: Format,
    pub sink: Sink,
    /// The share of normal lines written; errors are always written.
    pub sample: f64,
    pub only: Only,
}

/// The listener's counters of its access log.
#[derive(Debug, Clone)]
pub struct AccessLogCounters {
    /// Lines written.
    pub lines: IntCounter,
    /// Lines dropped because the queue was full.
    pub dropped_queue_full: IntCounter,
    /// Lines dropped because writing them failed (full disk, closed pipe,
    /// a file that cannot be opened).
    pub dropped_write_error: IntCounter,
}

/// One listener's access log, as compiled into its table entry.
#[derive(Debug)]
pub struct AccessLog {
    pub listener: Arc<str>,
    pub spec: AccessLogSpec,
    pub counters: AccessLogCounters,
}

impl AccessLog {
    pub fn new(listener: Arc<str>, spec: AccessLogSpec, counters: AccessLogCounters) -> Self {
        // Started with the first log, so a config without one runs no thread.
        writer::Writer::global();
        Self {
            listener,
            spec,
            counters,
        }
    }

    /// A record for a request or connection of this listener: one the
    /// writer is done with when there is one, so that in steady state the
    /// data path allocates nothing for its log (and the writer thread
    /// frees nothing the workers allocated).
    pub fn record(
        self: &Arc<Self>,
        client: std::net::SocketAddr,
        protocol: Protocol,
    ) -> Box<Record> {
        match writer::Writer::global().reuse() {
            Some(mut record) => {
                record.reset(self.clone(), client, protocol);
                record
            }
            None => Box::new(Record::new(self.clone(), client, protocol)),
        }
    }

    /// Queues `record` for writing when `only` and `sample` keep it.
    /// Never blocks: a full queue drops the line and counts it.
    pub fn submit(record: Box<Record>) {
        let log = &record.log;
        if !record.is_error() {
            let sampled_out = log.spec.sample < 1.0 && fastrand::f64() >= log.spec.sample;
            if log.spec.only == Only::Errors || sampled_out {
                return;
            }
        }
        writer::Writer::global().push(record);
    }

    #[cfg(test)]
    pub fn for_tests(listener: &str, format: Format, sink: Sink) -> Self {
        let counter = || IntCounter::new("test", "test").expect("a valid metric name");
        Self {
            listener: listener.into(),
            spec: AccessLogSpec {
                format,
                sink,
                sample: 1.0,
                only: Only::All,
            },
            counters: AccessLogCounters {
                lines: counter(),
                dropped_queue_full: counter(),
                dropped_write_error: counter(),
            },
        }
    }
}

/// Reopens every log file (SIGUSR1), on the writer thread.
pub fn reopen() {
    if let Some(writer) = writer::Writer::started() {
        writer.reopen();
    }
}

/// Writes what is queued; waits at most `timeout` (at shutdown).
pub fn flush(timeout: std::time::Duration) {
    if let Some(writer) = writer::Writer::started() {
        writer.flush(timeout);
    }
}
