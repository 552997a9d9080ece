//! The access log writer: one thread that drains the queue, formats the
//! lines and writes them, outside every runtime.
//!
//! It wakes every [`TICK`] (or sooner when the queue fills past a quarter,
//! or on SIGUSR1 and at shutdown), so the data path makes no syscall to
//! wake it. A write that blocks (a stalled pipe, a slow disk) blocks only
//! this thread; the queue then fills and further lines are dropped and
//! counted. Files are checked once a second: one moved away or removed
//! (logrotate) is reopened at its path, as on SIGUSR1.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::{AccessLog, Record, Sink};

/// Records waiting for the writer: at 100,000 requests a second, a
/// third of a second of lines.
const QUEUE: usize = 32 * 1024;
/// The longest a line waits in the queue when traffic is light.
const TICK: Duration = Duration::from_millis(50);
/// How often files are checked for having been moved.
const CHECK_FILES: Duration = Duration::from_secs(1);
/// A sink's buffer is written out once it holds this much.
const BUFFER: usize = 64 * 1024;
/// Written records kept for reuse by the data path.
const SPARE: usize = 4096;

/// The process's one writer.
pub struct Writer {
    queue: ArrayQueue<Box<Record>>,
    /// Records written, for [`Writer::reuse`].
    spare: ArrayQueue<Box<Record>>,
    thread: OnceLock<Thread>,
    reopen: AtomicBool,
    /// Flushes asked for, and done: a flush waits for `done` to reach its
    /// request number.
    flush_asked: AtomicU64,
    flush_done: AtomicU64,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

impl Writer {
    /// The writer, started on first use.
    pub fn global() -> &'static Writer {
        let writer = WRITER.get_or_init(|| Writer {
            queue: ArrayQueue::new(QUEUE),
            spare: ArrayQueue::new(SPARE),
            thread: OnceLock::new(),
            reopen: AtomicBool::new(false),
            flush_asked: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
        });
        writer.thread.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || run(writer));
            match spawned {
                Ok(handle) => handle.thread().clone(),
                Err(error) => {
                    // Lines then stay queued and are dropped once it is
                    // full, counted: the proxy goes on.
                    tracing::error!(%error, "Cannot start the access log writer thread");
                    std::thread::current()
                }
            }
        });
        writer
    }

    /// The writer if a log ever started it.
    pub fn started() -> Option<&'static Writer> {
        WRITER.get()
    }

    /// A written record to fill again, if one is spare.
    pub fn reuse(&self) -> Option<Box<Record>> {
        self.spare.pop()
    }

    pub fn push(&self, record: Box<Record>) {
        match self.queue.push(record) {
            Ok(()) => {
                if self.queue.len() > QUEUE / 4
                    && let Some(t) = self.thread.get()
                {
                    t.unpark();
                }
            }
            Err(record) => record.log.counters.dropped_queue_full.inc(),
        }
    }

    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        self.wake();
    }

    pub fn flush(&self, timeout: Duration) {
        let asked = self.flush_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake();
        let deadline = Instant::now() + timeout;
        while self.flush_done.load(Ordering::Acquire) < asked && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wake(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// An open destination and the lines formatted for it.
struct Out {
    file: Option<File>,
    /// (device, inode) of `file`, to notice it was moved.
    id: Option<(u64, u64)>,
    buf: Vec<u8>,
    /// Lines in `buf`, by the log they came from (for the counters).
    pending: Vec<(std::sync::Arc<AccessLog>, u64)>,
    /// Opening failed; retried at the next file check.
    broken: bool,
}

impl Out {
    fn new() -> Self {
        Self {
            file: None,
            id: None,
            buf: Vec::with_capacity(BUFFER),
            pending: Vec::new(),
            broken: false,
        }
    }

    fn count(&mut self, log: &std::sync::Arc<AccessLog>) {
        match self
            .pending
            .iter_mut()
            .find(|(l, _)| std::sync::Arc::ptr_eq(l, log))
        {
            Some((_, n)) => *n += 1,
            None => self.pending.push((log.clone(), 1)),
        }
    }

    fn open(&mut self, path: &Path) {
        let opened = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path);
        match opened {
            Ok(file) => {
                self.id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
                self.file = Some(file);
                if self.broken {
                    tracing::info!(path = %path.display(), "Access log file open again");
                }
                self.broken = false;
            }
            Err(error) => {
                if !self.broken {
                    tracing::warn!(path = %path.display(), %error, "Cannot open the access log file; its lines are dropped");
                }
                self.file = None;
                self.broken = true;
            }
        }
    }

    /// Writes the buffered lines and counts them written or dropped.
    fn write_out(&mut self, sink: &Sink) {
        if self.buf.is_empty() {
            return;
        }
        let written = match sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&self.buf),
            Sink::File(path) => {
                if self.file.is_none() && !self.broken {
                    self.open(path);
                }
                match &mut self.file {
                    Some(file) => file.write_all(&self.buf),
                    None => Err(std::io::Error::other("not open")),
                }
            }
        };
        let ok = match written {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "Access log write failed");
                false
            }
        };
        for (log, n) in self.pending.drain(..) {
            if ok {
                log.counters.lines.inc_by(n);
            } else {
                log.counters.dropped_write_error.inc_by(n);
            }
        }
        self.buf.clear();
    }

    /// Reopens the file when asked, or when the path no longer names it.
    fn check(&mut self, path: &Path, forced: bool) {
        let moved = match std::fs::metadata(path) {
            Ok(m) => self.id != Some((m.dev(), m.ino())),
            Err(_) => true,
        };
        if forced || moved || self.broken {
            self.file = None;
            self.open(path);
        }
    }
}

fn run(writer: &'static Writer) {
    let mut outs: HashMap<Sink, Out> = HashMap::new();
    let mut clock = super::format::Clock::default();
    let mut last_check = Instant::now();
    loop {
        // Read before draining: a flush asked after this point waits for
        // the next round.
        let flush_asked = writer.flush_asked.load(Ordering::Acquire);
        while let Some(record) = writer.queue.pop() {
            let sink = &record.log.spec.sink;
            let out = match outs.get_mut(sink) {
                Some(out) => out,
                None => outs.entry(sink.clone()).or_insert_with(Out::new),
            };
            record
                .log
                .spec
                .format
                .write(&record, &mut clock, &mut out.buf);
            out.count(&record.log);
            if out.buf.len() >= BUFFER {
                let sink = record.log.spec.sink.clone();
                out.write_out(&sink);
            }
            // A full spare queue means the data path has plenty.
            let _ = writer.spare.push(record);
        }
        for (sink, out) in &mut outs {
            out.write_out(sink);
        }
        writer.flush_done.store(flush_asked, Ordering::Release);
        let forced = writer.reopen.swap(false, Ordering::AcqRel);
        if forced || last_check.elapsed() >= CHECK_FILES {
            last_check = Instant::now();
            for (sink, out) in &mut outs {
                if let Sink::File(path) = sink {
                    out.check(path, forced);
                }
            }
            if forced {
                tracing::info!("Access log files reopened");
            }
        }
        if writer.queue.is_empty() && writer.flush_asked.load(Ordering::Acquire) == flush_asked {
            std::thread::park_timeout(TICK);
        }
    }
}

/// The directory a log file goes in must exist (checked with the config).
pub fn check_path(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("directory {} does not exist", dir.display()))
    }
}
