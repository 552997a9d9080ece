//! The catalog: nodes, service instances and health checks, with the table
//! indexes and per-service indexes that blocking reads report (§2.2, §3).
//!
//! Every write takes the index of the write and says whether anything a
//! reader can see changed; an identical re-registration changes nothing, as
//! Consul's anti-entropy would not even send it. Checks also carry the
//! agent-side clocks (TTL deadline, critical-since) that [`super::timers`]
//! acts on.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

pub const SERF_CHECK_ID: &str = "serfHealth";

/// `passing` | `warning` | `critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Self::Passing),
            "warning" => Some(Self::Warning),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub node: String,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// `""` when registered without one; readers fall back to the node's.
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, (String, u16)>,
    /// `(Passing, Warning)`.
    pub weights: (u32, u32),
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub node: String,
    pub id: String,
    pub name: String,
    pub status: CheckStatus,
    pub notes: String,
    /// Output as the catalog shows it.
    pub output: String,
    pub service_id: String,
    pub service_name: String,
    /// `""` (externally set), `ttl`, `http`, `tcp`, …
    pub check_type: String,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub ttl: Option<Duration>,
    pub create_index: u64,
    pub modify_index: u64,
    /// Agent-side: output as `/v1/agent/checks` shows it. Output-only
    /// changes reach the catalog only with the next status change (Consul
    /// defers them by `check_update_interval`, 5 min).
    pub agent_output: String,
    /// Agent-side: when a TTL check turns critical without an update.
    pub ttl_deadline: Option<Instant>,
    /// Agent-side: `DeregisterCriticalServiceAfter`.
    pub deregister_after: Option<Duration>,
    pub critical_since: Option<Instant>,
    pub output_max: usize,
}

impl Check {
    /// A check that a test or an external agent sets (no type, no clocks).
    pub fn new(node: &str, id: &str, name: &str, status: CheckStatus) -> Self {
        Self {
            node: node.to_string(),
            id: id.to_string(),
            name: name.to_string(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            check_type: String::new(),
            interval: None,
            timeout: None,
            ttl: None,
            create_index: 0,
            modify_index: 0,
            agent_output: String::new(),
            ttl_deadline: None,
            deregister_after: None,
            critical_since: None,
            output_max: 4096,
        }
    }

    /// The fields a catalog reader sees, for "did anything change".
    fn same_view(&self, other: &Check) -> bool {
        self.name == other.name
            && self.status == other.status
            && self.notes == other.notes
            && self.output == other.output
            && self.service_id == other.service_id
            && self.service_name == other.service_name
            && self.check_type == other.check_type
            && self.interval == other.interval
            && self.timeout == other.timeout
    }
}

/// `(node, id)`: service and check IDs are unique per node (agent).
type Key = (String, String);

fn key(node: &str, id: &str) -> Key {
    (node.to_string(), id.to_string())
}

#[derive(Debug, Default)]
pub struct Catalog {
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<Key, Service>,
    checks: BTreeMap<Key, Check>,
    /// Service name → index of the last change to any instance, its checks
    /// or its node. Kept after the last instance goes, as the index of the
    /// service's deletion.
    service_indexes: HashMap<String, u64>,
    nodes_index: u64,
    services_index: u64,
    checks_index: u64,
}

impl Catalog {
    pub fn high_water(&self) -> u64 {
        self.nodes_index
            .max(self.services_index)
            .max(self.checks_index)
            .max(1)
    }

    pub fn nodes_index(&self) -> u64 {
        self.nodes_index.max(1)
    }

    pub fn services_index(&self) -> u64 {
        self.services_index.max(1)
    }

    pub fn checks_index(&self) -> u64 {
        self.checks_index.max(1)
    }

    /// The index of `/v1/health/service/<name>` and friends.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_indexes
            .get(name)
            .copied()
            .unwrap_or_else(|| self.high_water())
            .max(1)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every instance, ordered by node then service ID.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, node: &str, id: &str) -> Option<&Service> {
        self.services.get(&key(node, id))
    }

    /// Instances of one service, ordered by node then service ID.
    pub fn instances<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.values().filter(move |s| s.name == name)
    }

    /// `(node, id)` of every instance with this service ID.
    pub fn instances_with_id(&self, id: &str) -> Vec<(String, String)> {
        self.services
            .keys()
            .filter(|(_, sid)| sid == id)
            .cloned()
            .collect()
    }

    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values()
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        self.checks.get(&key(node, id))
    }

    pub fn check_mut(&mut self, node: &str, id: &str) -> Option<&mut Check> {
        self.checks.get_mut(&key(node, id))
    }

    /// Checks of one node, sorted by check ID.
    pub fn node_checks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.values().filter(move |c| c.node == node)
    }

    /// The node's checks plus the instance's own, sorted by check ID.
    pub fn instance_checks<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Check> + 'a {
        self.node_checks(&service.node)
            .filter(move |c| c.service_id.is_empty() || c.service_id == service.id)
    }

    /// Creates the node (with a passing `serfHealth` check) or updates its
    /// address and meta.
    pub fn ensure_node(
        &mut self,
        name: &str,
        address: &str,
        meta: &BTreeMap<String, String>,
        datacenter: &str,
        index: u64,
    ) -> bool {
        let tagged: BTreeMap<String, String> = ["lan", "lan_ipv4", "wan", "wan_ipv4"]
            .iter()
            .map(|k| (k.to_string(), address.to_string()))
            .collect();
        if let Some(node) = self.nodes.get_mut(name) {
            if node.address == address && node.meta == *meta {
                return false;
            }
            node.address = address.to_string();
            node.tagged_addresses = tagged;
            node.meta = meta.clone();
            node.modify_index = index;
            self.nodes_index = index;
            self.touch_node(name, index);
            return true;
        }
        self.nodes.insert(
            name.to_string(),
            Node {
                id: super::render::uuid_from(&format!("node:{name}")),
                name: name.to_string(),
                address: address.to_string(),
                datacenter: datacenter.to_string(),
                tagged_addresses: tagged,
                meta: meta.clone(),
                create_index: index,
                modify_index: index,
            },
        );
        self.nodes_index = index;
        let mut serf = Check::new(
            name,
            SERF_CHECK_ID,
            "Serf Health Status",
            CheckStatus::Passing,
        );
        serf.output = "Agent alive and reachable".to_string();
        serf.agent_output = serf.output.clone();
        self.upsert_check(serf, index);
        true
    }

    /// Adds or replaces an instance; `false` when identical to what is stored.
    pub fn upsert_service(&mut self, mut service: Service, index: u64) -> bool {
        let k = key(&service.node, &service.id);
        match self.services.get(&k) {
            Some(old) => {
                let mut same = old.clone();
                same.create_index = service.create_index;
                same.modify_index = service.modify_index;
                if same == service {
                    return false;
                }
                service.create_index = old.create_index;
                if old.name != service.name {
                    let old_name = old.name.clone();
                    self.service_indexes.insert(old_name, index);
                }
            }
            None => service.create_index = index,
        }
        service.modify_index = index;
        self.service_indexes.insert(service.name.clone(), index);
        self.services_index = index;
        self.services.insert(k, service);
        true
    }

    /// Adds or replaces a check; `false` when a reader would see no change
    /// (agent-side fields are updated either way).
    pub fn upsert_check(&mut self, mut check: Check, index: u64) -> bool {
        let k = key(&check.node, &check.id);
        if let Some(old) = self.checks.get_mut(&k) {
            check.critical_since = match (old.status, check.status) {
                (CheckStatus::Critical, CheckStatus::Critical) => old.critical_since,
                (_, CheckStatus::Critical) => Some(Instant::now()),
                _ => None,
            };
            if old.same_view(&check) {
                check.create_index = old.create_index;
                check.modify_index = old.modify_index;
                *old = check;
                return false;
            }
            check.create_index = old.create_index;
        } else {
            check.create_index = index;
            check.critical_since = (check.status == CheckStatus::Critical).then(Instant::now);
        }
        check.modify_index = index;
        self.checks_index = index;
        self.touch_check(&check.node, &check.service_id, index);
        self.checks.insert(k, check);
        true
    }

    /// Removes an instance and its checks.
    pub fn remove_service(&mut self, node: &str, id: &str, index: u64) -> bool {
        let Some(service) = self.services.remove(&key(node, id)) else {
            return false;
        };
        let before = self.checks.len();
        self.checks
            .retain(|(n, _), c| !(n == node && c.service_id == id));
        if self.checks.len() != before {
            self.checks_index = index;
        }
        self.services_index = index;
        self.service_indexes.insert(service.name, index);
        true
    }

    pub fn remove_check(&mut self, node: &str, id: &str, index: u64) -> bool {
        let Some(check) = self.checks.remove(&key(node, id)) else {
            return false;
        };
        self.checks_index = index;
        self.touch_check(node, &check.service_id, index);
        true
    }

    /// Sets a check's status (and output, when given) as the catalog sees it.
    pub fn set_check_status(
        &mut self,
        node: &str,
        id: &str,
        status: CheckStatus,
        output: Option<&str>,
        index: u64,
    ) -> bool {
        let Some(check) = self.checks.get_mut(&key(node, id)) else {
            return false;
        };
        let output_changes = output.is_some_and(|o| o != check.output);
        if check.status == status && !output_changes {
            return false;
        }
        if check.status != status {
            check.critical_since = (status == CheckStatus::Critical).then(Instant::now);
        }
        check.status = status;
        if let Some(output) = output {
            check.output = output.to_string();
            check.agent_output = output.to_string();
        }
        check.modify_index = index;
        let service_id = check.service_id.clone();
        self.checks_index = index;
        self.touch_check(node, &service_id, index);
        true
    }

    /// Turns TTL checks whose deadline passed critical. Returns whether the
    /// catalog changed.
    pub fn expire_ttls(&mut self, now: Instant, index: u64) -> bool {
        let expired: Vec<Key> = self
            .checks
            .iter()
            .filter(|(_, c)| c.ttl_deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        for (node, id) in expired {
            let Some(check) = self.checks.get_mut(&key(&node, &id)) else {
                continue;
            };
            check.ttl_deadline = None;
            check.agent_output = "TTL expired".to_string();
            if check.status != CheckStatus::Critical {
                changed |= self.set_check_status(
                    &node,
                    &id,
                    CheckStatus::Critical,
                    Some("TTL expired"),
                    index,
                );
            }
        }
        changed
    }

    /// Removes services whose check has been critical longer than its
    /// `DeregisterCriticalServiceAfter`.
    pub fn reap_critical(&mut self, now: Instant, index: u64) -> bool {
        let doomed: Vec<(String, String, String)> = self
            .checks
            .values()
            .filter(|c| !c.service_id.is_empty())
            .filter(|c| match (c.critical_since, c.deregister_after) {
                (Some(since), Some(after)) => now >= since + after,
                _ => false,
            })
            .map(|c| (c.node.clone(), c.service_id.clone(), c.id.clone()))
            .collect();
        let mut changed = false;
        for (node, service_id, check_id) in doomed {
            // A check whose service is already gone goes by itself, so its
            // deadline cannot stay in the past.
            changed |= self.remove_service(&node, &service_id, index)
                || self.remove_check(&node, &check_id, index);
        }
        changed
    }

    /// When [`expire_ttls`](Self::expire_ttls) or
    /// [`reap_critical`](Self::reap_critical) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.checks
            .values()
            .flat_map(|c| {
                let reap = match (c.critical_since, c.deregister_after) {
                    (Some(since), Some(after)) if !c.service_id.is_empty() => Some(since + after),
                    _ => None,
                };
                [c.ttl_deadline, reap]
            })
            .flatten()
            .min()
    }

    /// Snapshot restore: no index stays above `to`.
    pub fn lower_indexes(&mut self, to: u64) {
        for node in self.nodes.values_mut() {
            node.create_index = node.create_index.min(to);
            node.modify_index = node.modify_index.min(to);
        }
        for service in self.services.values_mut() {
            service.create_index = service.create_index.min(to);
            service.modify_index = service.modify_index.min(to);
        }
        for check in self.checks.values_mut() {
            check.create_index = check.create_index.min(to);
            check.modify_index = check.modify_index.min(to);
        }
        for index in self.service_indexes.values_mut() {
            *index = (*index).min(to);
        }
        self.nodes_index = self.nodes_index.min(to);
        self.services_index = self.services_index.min(to);
        self.checks_index = self.checks_index.min(to);
    }

    /// A check changed: its service's index moves, or for a node check the
    /// index of every service on the node.
    fn touch_check(&mut self, node: &str, service_id: &str, index: u64) {
        if service_id.is_empty() {
            self.touch_node(node, index);
        } else if let Some(service) = self.services.get(&key(node, service_id)) {
            self.service_indexes.insert(service.name.clone(), index);
        }
    }

    fn touch_node(&mut self, node: &str, index: u64) {
        let names: Vec<String> = self
            .services
            .values()
            .filter(|s| s.node == node)
            .map(|s| s.name.clone())
            .collect();
        for name in names {
            self.service_indexes.insert(name, index);
        }
    }
}
