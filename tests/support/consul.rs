//! A Consul-compatible HTTP server for integration tests, built from the
//! shared wire contract `spec/consul-api.md` (section numbers below refer to
//! it; §10 lists the test-server obligations).
//!
//! Serves KV, health, catalog, agent and status endpoints over real HTTP/1.1
//! on 127.0.0.1 with one global Raft-like index, per-resource indexes,
//! blocking queries and optional ACLs. Tests script it through
//! [`ConsulServer`]'s hooks: direct state edits (which bump the index and
//! wake blocked queries), a simulated snapshot restore, leader loss,
//! injected faults, and request accounting.
//!
//! ```text
//! client ──HTTP──▶ server ─▶ router ─▶ kv | health | catalog | agent
//!                                        │ reads block in `blocking`
//! test ──hooks──▶ ConsulServer ─▶ Shared { State (kv_store, catalog_store) }
//!                                        │ writes wake blocked reads
//!                               timers ──┘ (TTL expiry, critical reaping)
//! ```
//!
//! Fleet modelling (issue 21): more agents on the same state
//! ([`ConsulServer::add_agent`]), each with its own cache and per-client
//! connection limit; an agent restart; elections whose stale reads come
//! from an empty follower; arrival times, server reads and open
//! connections for the load a fleet of sidecars puts on Consul.
//!
//! Left out: sessions and locks (`acquire`/`release` answer as if no
//! session existed), `near`, gzip, the anti-entropy delay, running HTTP/TCP
//! checks, DNS.

mod accounting;
mod acl;
mod agent;
mod agent_cache;
mod blocking;
mod catalog;
mod catalog_store;
mod decode;
mod duration;
mod faults;
mod filter;
mod health;
mod kv;
mod kv_store;
mod listing;
mod options;
mod register;
mod render;
mod router;
mod routes;
mod selection;
mod server;
mod shared;
mod state;
mod timers;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use acl::{Access, AclOptions, AclToken, Policy, Resource, Rule};
#[allow(unused_imports)]
pub use faults::Fault;
#[allow(unused_imports)]
pub use options::{ConsulOptions, ServiceInstance};

use catalog_store::{Check, CheckStatus, SERF_CHECK_ID, Service};
use shared::Shared;

/// A running test server; stops when dropped or shut down.
pub struct ConsulServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The listeners, one per agent; the first is [`addr`](Self::addr).
    agents: Mutex<Vec<AgentListener>>,
    timers: JoinHandle<()>,
}

/// One agent: a listener on the shared state, with its own cache.
struct AgentListener {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

fn check_status(text: &str) -> CheckStatus {
    CheckStatus::parse(text)
        .unwrap_or_else(|| panic!("status must be passing, warning or critical, not {text:?}"))
}

impl ConsulServer {
    /// A server on a free port with default options.
    pub async fn start() -> Self {
        Self::start_with(ConsulOptions::default()).await
    }

    pub async fn start_with(options: ConsulOptions) -> Self {
        let listener = server::bind(options.port).await;
        let addr = listener.local_addr().expect("Consul test server address");
        let shared = Arc::new(Shared::new(options));
        let server = tokio::spawn(server::run(listener, shared.clone(), Arc::default()));
        let timers = tokio::spawn(timers::run(shared.clone()));
        Self {
            addr,
            shared,
            agents: Mutex::new(vec![AgentListener {
                addr,
                task: Some(server),
            }]),
            timers,
        }
    }

    /// Another agent on the same cluster state, on a free port: its own
    /// cache and per-client connection limit. Returns its address.
    pub async fn add_agent(&self) -> SocketAddr {
        let listener = server::bind(None).await;
        let addr = listener.local_addr().expect("Consul test agent address");
        let task = tokio::spawn(server::run(listener, self.shared.clone(), Arc::default()));
        self.lock_agents().push(AgentListener {
            addr,
            task: Some(task),
        });
        addr
    }

    /// Restarts the first agent: every connection drops, connections are
    /// refused for `down`, then it listens on the same port again with an
    /// empty cache, and for `unsynced` answers every read as if nothing
    /// were registered (an agent that has not synced yet, #1713). The
    /// cluster's data stays. Use a [`restartable_port`].
    pub async fn restart_agent(&self, down: Duration, unsynced: Duration) {
        let task = self.lock_agents()[0].task.take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        tokio::time::sleep(down).await;
        self.shared
            .set_unsynced_until(Some(Instant::now() + unsynced));
        let listener = server::bind(Some(self.addr.port())).await;
        let task = tokio::spawn(server::run(listener, self.shared.clone(), Arc::default()));
        self.lock_agents()[0].task = Some(task);
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, Vec<AgentListener>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A server on `port` (a [`restartable_port`]), to stop and start
    /// again on the same address.
    pub async fn on_port(port: u16) -> Self {
        Self::start_with(ConsulOptions {
            port: Some(port),
            ..Default::default()
        })
        .await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Releases blocked queries (they answer with current data), closes
    /// every connection and frees the port.
    pub async fn shutdown(self) {
        self.shared.begin_shutdown();
        self.timers.abort();
        let tasks: Vec<JoinHandle<()>> = self
            .lock_agents()
            .iter_mut()
            .filter_map(|a| a.task.take())
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    // === state ===

    /// The global index (`initial_index`, normally 1, until the first write).
    pub fn index(&self) -> u64 {
        self.shared.read(|st| st.index())
    }

    /// Stores a KV value (flags 0) as a `PUT` would; returns the index.
    pub fn kv_put(&self, key: &str, value: impl AsRef<[u8]>) -> u64 {
        let value = Bytes::copy_from_slice(value.as_ref());
        let bump = self.shared.options.bump_identical_writes;
        self.shared.write(|st| {
            st.commit_raft(|st, index| ((), st.kv.put(key, value, 0, index, bump)));
            st.index()
        })
    }

    /// Deletes a KV key (leaving a tombstone); returns the index.
    pub fn kv_delete(&self, key: &str) -> u64 {
        self.shared.write(|st| {
            st.commit_raft(|st, index| ((), st.kv.delete(key, index)));
            st.index()
        })
    }

    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.shared
            .read(|st| st.kv.get(key).map(|e| e.value.to_vec()))
    }

    /// Forgets KV tombstones, as Consul does after `tombstone_ttl`.
    pub fn reap_tombstones(&self) {
        self.shared.write(|st| {
            st.kv.reap_tombstones();
            st.mark_changed();
        });
    }

    /// Places an instance in the catalog (creating its node with a passing
    /// `serfHealth` check); returns the index.
    pub fn register(&self, instance: ServiceInstance) -> u64 {
        let status = (!instance.status.is_empty()).then(|| check_status(instance.status));
        let id = if instance.id.is_empty() {
            instance.name.clone()
        } else {
            instance.id.clone()
        };
        let mut tagged_addresses = BTreeMap::new();
        register::add_default_tagged_addresses(
            &mut tagged_addresses,
            &instance.address,
            instance.port,
        );
        let service = Service {
            node: instance.node.clone(),
            id: id.clone(),
            name: instance.name.clone(),
            tags: instance.tags,
            address: instance.address,
            port: instance.port,
            meta: instance.meta,
            tagged_addresses,
            weights: instance.weights.unwrap_or((1, 1)),
            enable_tag_override: false,
            create_index: 0,
            modify_index: 0,
        };
        let check = status.map(|status| Check {
            service_id: id.clone(),
            service_name: instance.name.clone(),
            ..Check::new(
                &instance.node,
                &format!("service:{id}"),
                &format!("Service '{}' check", instance.name),
                status,
            )
        });
        let datacenter = self.shared.options.datacenter.clone();
        self.shared.write(|st| {
            st.commit(|st, index| {
                let mut changed = st.catalog.ensure_node(
                    &instance.node,
                    &instance.node_address,
                    &instance.node_meta,
                    &datacenter,
                    index,
                );
                changed |= st.catalog.upsert_service(service, index);
                if let Some(check) = check {
                    changed |= st.catalog.upsert_check(check, index);
                }
                ((), changed)
            });
            st.index()
        })
    }

    /// Sets every check of the instance(s) with this service ID (creating
    /// `service:<id>` if it has none); returns the index.
    pub fn set_service_status(&self, service_id: &str, status: &str) -> u64 {
        let status = check_status(status);
        let instances = self
            .shared
            .read(|st| st.catalog.instances_with_id(service_id));
        assert!(
            !instances.is_empty(),
            "no service instance with ID {service_id:?}"
        );
        self.shared.write(|st| {
            st.commit(|st, index| {
                let mut changed = false;
                for (node, id) in instances {
                    let check_ids: Vec<String> = st
                        .catalog
                        .node_checks(&node)
                        .filter(|c| c.service_id == id)
                        .map(|c| c.id.clone())
                        .collect();
                    if check_ids.is_empty() {
                        let name = st
                            .catalog
                            .service(&node, &id)
                            .map(|s| s.name.clone())
                            .unwrap_or_default();
                        let check = Check {
                            service_id: id.clone(),
                            service_name: name.clone(),
                            ..Check::new(
                                &node,
                                &format!("service:{id}"),
                                &format!("Service '{name}' check"),
                                status,
                            )
                        };
                        changed |= st.catalog.upsert_check(check, index);
                    }
                    for check_id in check_ids {
                        changed |= st
                            .catalog
                            .set_check_status(&node, &check_id, status, None, index);
                    }
                }
                ((), changed)
            });
            st.index()
        })
    }

    /// Removes every instance with this service ID and its checks.
    pub fn deregister(&self, service_id: &str) -> u64 {
        self.shared.write(|st| {
            st.commit(|st, index| {
                let mut changed = false;
                for (node, id) in st.catalog.instances_with_id(service_id) {
                    changed |= st.catalog.remove_service(&node, &id, index);
                }
                ((), changed)
            });
            st.index()
        })
    }

    /// Sets the node's `serfHealth` check; returns the index.
    pub fn set_node_status(&self, node: &str, status: &str) -> u64 {
        let status = check_status(status);
        let exists = self.shared.read(|st| st.catalog.node(node).is_some());
        assert!(exists, "no node {node:?}");
        self.shared.write(|st| {
            st.commit(|st, index| {
                let changed = st
                    .catalog
                    .set_check_status(node, SERF_CHECK_ID, status, None, index);
                ((), changed)
            });
            st.index()
        })
    }

    /// The status of the first check with this ID (agent node first).
    pub fn check_status(&self, check_id: &str) -> Option<String> {
        let agent_node = self.shared.options.node_name.as_str();
        self.shared.read(|st| {
            st.catalog
                .check(agent_node, check_id)
                .or_else(|| st.catalog.checks().find(|c| c.id == check_id))
                .map(|c| c.status.as_str().to_string())
        })
    }

    // === failure modes ===

    /// Simulates a snapshot restore: every index drops to at most `to`
    /// (never 0) and every blocked query returns at once.
    pub fn lower_index(&self, to: u64) {
        self.shared.write(|st| st.restore_to(to));
    }

    /// Without a leader, default and consistent reads and server writes
    /// answer `500 No cluster leader` (`KnownLeader: false`); `?stale`
    /// reads still answer, with a large `LastContact`. Blocked default
    /// reads fail when the leader goes.
    pub fn set_leader(&self, leader: bool) {
        self.shared.set_leader(leader);
    }

    /// `X-Consul-LastContact` of stale reads.
    pub fn set_stale_lag(&self, lag: Duration) {
        self.shared.set_stale_lag(lag);
    }

    /// The leader is lost and an election runs: leader reads and writes
    /// fail (`500 No cluster leader`), stale reads answer with
    /// `X-Consul-KnownLeader: false` and `last_contact`. With
    /// `follower_empty` they come from a follower that restored an empty
    /// snapshot: empty results at index 1, every blocked query released
    /// (consul-template #1131).
    pub fn begin_election(&self, last_contact: Duration, follower_empty: bool) {
        self.shared.begin_election(last_contact, follower_empty);
    }

    /// A leader again.
    pub fn end_election(&self) {
        self.shared.end_election();
    }

    /// The next `times` requests fail with `fault`.
    pub fn fail_next(&self, times: usize, fault: Fault) {
        self.shared.faults.push("", times, fault);
    }

    /// The next `times` requests whose path starts with `path_prefix` fail.
    pub fn fail_next_on(&self, path_prefix: &str, times: usize, fault: Fault) {
        self.shared.faults.push(path_prefix, times, fault);
    }

    // === accounting ===

    /// Requests received whose (decoded) path starts with `path_prefix`.
    pub fn requests(&self, path_prefix: &str) -> usize {
        self.shared.log.count(path_prefix)
    }

    /// Those of them that carried `index` > 0.
    pub fn blocking_requests(&self, path_prefix: &str) -> usize {
        self.shared.log.blocking_count(path_prefix)
    }

    /// The token the latest such request carried.
    pub fn last_token(&self, path_prefix: &str) -> Option<String> {
        self.shared.log.last_token(path_prefix)
    }

    /// Requests blocked in a wait right now.
    pub fn open_blocking(&self) -> usize {
        self.shared.open_blocking.load(Ordering::SeqCst)
    }

    /// When each request under `path_prefix` arrived, at any agent, in order.
    pub fn arrivals(&self, path_prefix: &str) -> Vec<Instant> {
        self.shared.log.arrivals(path_prefix)
    }

    /// When each read at the servers under `path_prefix` happened: every
    /// read not answered from an agent cache, plus each agent-cache refresh.
    pub fn server_read_times(&self, path_prefix: &str) -> Vec<Instant> {
        self.shared.log.server_read_times(path_prefix)
    }

    /// Server reads that needed the leader (not `?stale`).
    pub fn leader_reads(&self) -> usize {
        self.shared.log.leader_reads()
    }

    /// Client connections open now, at every agent.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most client connections open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak_connections.load(Ordering::SeqCst)
    }

    /// The most connections one client address held at once on one agent.
    pub fn peak_connections_per_client(&self) -> usize {
        self.shared.peak_per_client.load(Ordering::SeqCst)
    }

    /// Connections refused by the per-client limit (the raw `429`).
    pub fn refused_connections(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        // The server task drains and ends by itself within its grace period.
        self.shared.begin_shutdown();
        self.timers.abort();
    }
}

/// A free port below Linux's ephemeral range (32768 and up), for a Consul
/// that a test stops and starts again on the same address. An ephemeral
/// port could meanwhile become the source port of one of Switchyard's own
/// reconnect attempts (a TCP self-connect), and the restart would find it
/// taken.
pub fn restartable_port() -> u16 {
    for _ in 0..200 {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}
