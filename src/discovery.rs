//! Sources that change what Switchyard routes to while it runs: DNS names
//! ([`dns`]), Consul blocking queries ([`consul`]: service health, the
//! catalog, KV), multicast DNS on the local network ([`mdns`]: go-micro's
//! registry and DNS-SD) and the local kv directory ([`kvdir`]); and
//! [`register`], which goes the other way and keeps our own services
//! registered with the local Consul agent or announced by mDNS.
//!
//! A source's task only publishes what it found and tells the control
//! task, which applies changes one at a time, in order with config
//! reloads. What a change costs depends on what changed:
//!
//! - a backend's addresses (a DNS answer, a Consul service's healthy
//!   instances): only that backend's endpoint set is replaced, with no
//!   recompile (the second level of swap in the design);
//! - the `urlprefix-` tags in the Consul catalog ([`tag_routes`]) are
//!   routes: a tag that appears or goes causes a reload, one table swap;
//! - Consul KV, the catalog and the kv directory feed templates; a
//!   rendered output that the config includes causes a reload too;
//! - the catalog also tells which services gateway routes may reach; their
//!   backends are made on demand beside the table (`table::gateway`).

pub mod consul;
pub mod dns;
pub mod kvdir;
pub mod mdns;
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
