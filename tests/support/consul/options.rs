//! What a test configures: server options and service instances to place
//! in the catalog directly.

use std::collections::BTreeMap;
use std::time::Duration;

use super::acl::AclOptions;

/// How a [`super::ConsulServer`] behaves. `Default` is a modern Consul with
/// ACLs off, a leader, and no wait jitter.
#[derive(Debug, Clone)]
pub struct ConsulOptions {
    /// Port on 127.0.0.1; `None` picks a free one. A given port is retried
    /// for a few seconds while a previous server on it is closing.
    pub port: Option<u16>,
    /// ACLs on with this configuration; `None` = ACLs off.
    pub acl: Option<AclOptions>,
    /// Add `[0, wait/16)` jitter to blocking waits, as Consul does.
    pub jitter: bool,
    /// Prefix 403 and 500 bodies with `rpc error making call: `.
    pub rpc_error_prefix: bool,
    /// Pre-1.6 behaviour: a KV write identical to the stored entry still
    /// bumps its `ModifyIndex` and wakes watchers.
    pub bump_identical_writes: bool,
    /// Pre-1.11 behaviour: a blocked read of a missing key returns on any
    /// KV write (its high-water index moved) instead of waiting on.
    pub wake_while_not_found: bool,
    /// `limits.http_max_conns_per_client`: further connections from the same
    /// IP get the raw `429` and are closed. `None` = unlimited.
    pub max_conns_per_client: Option<usize>,
    /// The global index before the first write (at least 1, "nothing
    /// yet"). A server started on the port of a stopped one begins again
    /// here; raise it to model a restarted cluster whose indexes moved past
    /// the old ones, since a client cannot tell an equal index from "no
    /// change".
    pub initial_index: u64,
    /// `default_query_time` (wait when `?wait` is absent or zero).
    pub default_wait: Duration,
    /// `max_query_time` (cap on `?wait`).
    pub max_wait: Duration,
    pub datacenter: String,
    /// The agent's own node, where `/v1/agent/...` registers services.
    pub node_name: String,
}

impl Default for ConsulOptions {
    fn default() -> Self {
        Self {
            port: None,
            acl: None,
            jitter: false,
            rpc_error_prefix: false,
            bump_identical_writes: false,
            wake_while_not_found: false,
            max_conns_per_client: None,
            initial_index: 1,
            default_wait: Duration::from_secs(5 * 60),
            max_wait: Duration::from_secs(10 * 60),
            datacenter: "dc1".to_string(),
            node_name: "consul-test".to_string(),
        }
    }
}

/// A service instance on some node, placed in the catalog by a test hook as
/// if that node's agent had registered it.
#[derive(Debug, Clone)]
pub struct ServiceInstance {
    /// Created if missing, with a passing `serfHealth` check.
    pub node: String,
    pub node_address: String,
    pub node_meta: BTreeMap<String, String>,
    /// Defaults to `name` when empty.
    pub id: String,
    pub name: String,
    /// `""` = none (clients then use `node_address`).
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// `(Passing, Warning)`; `None` = `{1, 1}`.
    pub weights: Option<(u32, u32)>,
    /// Status of the instance's check `service:<id>`: `passing`, `warning`
    /// or `critical`; `""` registers no service check.
    pub status: &'static str,
}

impl Default for ServiceInstance {
    fn default() -> Self {
        Self {
            node: "node-1".to_string(),
            node_address: "127.0.0.1".to_string(),
            node_meta: BTreeMap::new(),
            id: String::new(),
            name: String::new(),
            address: String::new(),
            port: 0,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weights: None,
            status: "passing",
        }
    }
}

impl ServiceInstance {
    /// Instance `id` of service `name` on node `node-1`, passing, port 0.
    pub fn new(name: &str, id: &str) -> Self {
        Self {
            name: name.to_string(),
            id: id.to_string(),
            ..Self::default()
        }
    }

    /// Instance `id` of service `name` on a node of its own (`node-{id}`)
    /// at 127.0.0.1:`port`, passing: a test backend seen through Consul.
    pub fn on_loopback(name: &str, id: &str, port: u16) -> Self {
        Self {
            node: format!("node-{id}"),
            node_address: "127.0.0.1".into(),
            port,
            ..Self::new(name, id)
        }
    }
}
