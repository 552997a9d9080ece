//! Sources that change a backend's endpoints while Switchyard runs.
//!
//! Discovery never rebuilds routes: it replaces the endpoint set of the
//! backends that use a changed source (the second level of swap in the
//! design), and the control task does the replacing so that config reloads
//! and discovery updates are applied one at a time, in order.

pub mod consul;
pub mod dns;
pub mod kvdir;
pub mod register;
pub mod tag_routes;

use std::future::Future;
use std::sync::Arc;

/// A watched item (a DNS name, a Consul query) and the task that keeps it
/// current; the task stops when this is dropped, so removing an item from
/// its registry is all it takes to stop watching it.
struct Watched<T> {
    item: Arc<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Watched<T> {
    fn spawn(item: Arc<T>, task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            item,
            task: tokio::spawn(task),
        }
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
