//! Data-plane workers: one thread per core, each running its own
//! current-thread tokio runtime.
//!
//! A worker accepts on its own `SO_REUSEPORT` socket of every listener (the
//! kernel spreads new connections over the sockets), and serves each
//! connection it accepted to the end on its own runtime: its timers, its
//! reactor, and the per-thread upstream pools (`upstream::pool`). Nothing
//! moves between workers and nothing is stolen, so a request never waits
//! behind a task migration and its cache lines stay on one core.
//!
//! The kernel's `SO_REUSEPORT` hashing spreads connections unevenly (64
//! keep-alive connections landed 38/27 on two workers in our runs), and
//! with keep-alive the imbalance lasts as long as the connections do. So
//! a worker that accepts a connection while it serves clearly more than
//! the least loaded worker hands it over ([`Workers::handoff`]), as
//! HAProxy's listeners pick the least loaded thread.
//!
//! What the workers share is read-mostly: the published table (one
//! `ArcSwap`), each listener's drain latch, stop token and connection
//! limit, and the metrics. The control task, discovery, templates and the
//! admin server run apart, on the caller's runtime, and reach a worker only
//! by handing it a job ([`Workers::run_on`]): "start accepting on this
//! socket". A worker ends when the [`Workers`] handle is dropped; the tasks
//! still on its runtime are dropped with it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// Work handed to a worker: runs inside its runtime, where it may spawn.
type Job = Box<dyn FnOnce() + Send>;

/// How many tasks a worker polls before it looks for new I/O events again.
/// Set explicitly because it shapes tail latency: 16 and 4 were measured
/// against tokio's default of 61 and changed neither p99 nor throughput
/// beyond run-to-run noise (bench/RESULTS.md), so the default stays.
const EVENT_INTERVAL: u32 = 61;

/// The running workers.
pub struct Workers {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    /// Client connections each worker serves now.
    loads: Arc<[AtomicUsize]>,
    /// Each worker's runtime, for its task count in the metrics.
    handles: Vec<tokio::runtime::Handle>,
    /// Detached on drop: a worker ends by itself once its job channel
    /// closes.
    _threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let mut jobs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .event_interval(EVENT_INTERVAL)
                .build()?;
            handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || runtime.block_on(run(rx)))?;
            jobs.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            loads: (0..jobs.len()).map(|_| AtomicUsize::new(0)).collect(),
            jobs,
            handles,
            _threads: threads,
        })
    }

    /// The workers' runtimes, in worker order.
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.handles
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Runs `job` on worker `index`'s runtime (so what it spawns runs
    /// there). A worker that has ended drops the job.
    pub fn run_on(&self, index: usize, job: impl FnOnce() + Send + 'static) {
        if let Some(tx) = self.jobs.get(index % self.jobs.len().max(1)) {
            let _ = tx.send(Box::new(job));
        }
    }
}

impl Workers {
    /// Counts a connection served by worker `index` until the guard drops.
    pub fn serving(&self, index: usize) -> Serving {
        let loads = self.loads.clone();
        if let Some(load) = loads.get(index) {
            load.fetch_add(1, Ordering::Relaxed);
        }
        Serving { loads, index }
    }

    /// The worker that should serve a connection accepted by `accepted_by`:
    /// itself, unless it serves clearly more connections than the least
    /// loaded one (by more than two, or an eighth). One relaxed load per
    /// worker; no lock.
    pub fn handoff(&self, accepted_by: usize) -> usize {
        let load = |i: usize| self.loads.get(i).map_or(0, |l| l.load(Ordering::Relaxed));
        let mine = load(accepted_by);
        let (least, least_load) = (0..self.loads.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, l)| l)
            .unwrap_or((accepted_by, mine));
        if mine > least_load + (least_load / 8).max(2) {
            least
        } else {
            accepted_by
        }
    }
}

/// One connection served by a worker, counted in its load.
pub struct Serving {
    loads: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(load) = self.loads.get(self.index) {
            load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A worker's loop: runs jobs until the handle is dropped. The tasks the
/// jobs spawned are served meanwhile by the same runtime.
async fn run(mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_their_worker_thread() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..4 {
            let tx = tx.clone();
            workers.run_on(i, move || {
                let name = std::thread::current().name().map(str::to_string);
                // Inside the worker's runtime: spawning works.
                tokio::spawn(async move {
                    let _ = tx.send((i, name));
                });
            });
        }
        let mut seen: Vec<(usize, Option<String>)> = (0..4).map(|_| rx.recv().unwrap()).collect();
        seen.sort();
        let names: Vec<_> = seen.iter().map(|(_, n)| n.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "switchyard-worker-0",
                "switchyard-worker-1",
                "switchyard-worker-0",
                "switchyard-worker-1"
            ]
        );
    }

    #[test]
    fn a_worker_clearly_busier_than_another_hands_over() {
        let workers = Workers::start(2).unwrap();
        let mut held: Vec<Serving> = (0..10).map(|_| workers.serving(0)).collect();
        held.extend((0..7).map(|_| workers.serving(1)));
        assert_eq!(workers.handoff(0), 1, "10 against 7");
        assert_eq!(workers.handoff(1), 1);
        held.push(workers.serving(1));
        assert_eq!(workers.handoff(0), 0, "10 against 8: close enough");
        drop(held);
        assert_eq!(workers.handoff(0), 0);
    }
}
