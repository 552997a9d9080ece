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
//! What the workers share is read-mostly: the published table (one
//! `ArcSwap`), each listener's drain latch, stop token and connection
//! limit, and the metrics. The control task, discovery, templates and the
//! admin server run apart, on the caller's runtime, and reach a worker only
//! by handing it a job ([`Workers::run_on`]): "start accepting on this
//! socket". A worker ends when the [`Workers`] handle is dropped; the tasks
//! still on its runtime are dropped with it.

use std::io;
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// Work handed to a worker: runs inside its runtime, where it may spawn.
type Job = Box<dyn FnOnce() + Send>;

/// How many tasks a worker polls before it looks for new I/O events again.
/// tokio's default (61) lets a burst of ready connections run long before
/// the next readiness check; a shorter interval keeps the wait of a
/// connection whose bytes just arrived short (see bench/RESULTS.md).
const EVENT_INTERVAL: u32 = 61;

/// The running workers.
pub struct Workers {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    /// Detached on drop: a worker ends by itself once its job channel
    /// closes.
    _threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let mut jobs = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .event_interval(EVENT_INTERVAL)
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("switchyard-worker-{index}"))
                .spawn(move || runtime.block_on(run(rx)))?;
            jobs.push(tx);
            threads.push(thread);
        }
        Ok(Self {
            jobs,
            _threads: threads,
        })
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
}
