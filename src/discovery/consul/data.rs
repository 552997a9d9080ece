//! What a Consul watch asks for, and the data it gets back, decoded from
//! Consul's JSON into plain sorted values that compare by content.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::client::escape_path;

/// One distinct Consul query. Watches are shared by key: ten backends on the
/// same service make one request loop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum WatchKey {
    /// One KV key.
    Key(String),
    /// Every KV entry under a prefix (`?recurse`).
    Prefix(String),
    /// Key names under a prefix (`?keys`), optionally cut at a separator.
    Keys {
        prefix: String,
        separator: Option<String>,
    },
    /// Instances of a service with their health (`/v1/health/service`).
    Service {
        name: String,
        tag: Option<String>,
        datacenter: Option<String>,
        passing_only: bool,
    },
    /// Every service name with its tags (`/v1/catalog/services`).
    Catalog { datacenter: Option<String> },
}

impl fmt::Display for WatchKey {
    /// consul-template's dependency notation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => write!(f, "kv.key({k})"),
            Self::Prefix(p) => write!(f, "kv.list({p})"),
            Self::Keys { prefix, separator } => match separator {
                Some(s) => write!(f, "kv.keys({prefix}|{s})"),
                None => write!(f, "kv.keys({prefix})"),
            },
            Self::Service {
                name,
                tag,
                datacenter,
                passing_only,
            } => {
                write!(f, "health.service({name}")?;
                if let Some(t) = tag {
                    write!(f, "|tag={t}")?;
                }
                if let Some(dc) = datacenter {
                    write!(f, "|dc={dc}")?;
                }
                if *passing_only {
                    f.write_str("|passing")?;
                }
                f.write_str(")")
            }
            Self::Catalog { datacenter } => match datacenter {
                Some(dc) => write!(f, "catalog.services(dc={dc})"),
                None => f.write_str("catalog.services"),
            },
        }
    }
}

impl WatchKey {
    /// The request path under /v1/ and its query parameters.
    pub fn request(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            Self::Key(k) => (format!("kv/{}", escape_path(k)), Vec::new()),
            Self::Prefix(p) => (
                format!("kv/{}", escape_path(p)),
                vec![("recurse", String::new())],
            ),
            Self::Keys { prefix, separator } => {
                let mut q = vec![("keys", String::new())];
                if let Some(s) = separator {
                    q.push(("separator", s.clone()));
                }
                (format!("kv/{}", escape_path(prefix)), q)
            }
            Self::Service {
                name,
                tag,
                datacenter,
                passing_only,
            } => {
                let mut q = Vec::new();
                if *passing_only {
                    q.push(("passing", "1".to_string()));
                }
                if let Some(t) = tag {
                    q.push(("tag", t.clone()));
                }
                if let Some(dc) = datacenter {
                    q.push(("dc", dc.clone()));
                }
                (format!("health/service/{}", escape_path(name)), q)
            }
            Self::Catalog { datacenter } => (
                "catalog/services".into(),
                datacenter.iter().map(|dc| ("dc", dc.clone())).collect(),
            ),
        }
    }

    /// The agent can answer it from its cache (`?cached`): health/service
    /// (background refresh) and catalog/services (simple); KV cannot.
    pub fn cacheable(&self) -> bool {
        matches!(self, Self::Service { .. } | Self::Catalog { .. })
    }

    /// Decodes a reply body (`None` for a KV 404: no such key yet).
    pub fn decode(&self, body: Option<&[u8]>) -> Result<WatchData, String> {
        let json = |body: &[u8]| -> Result<serde_json::Value, String> {
            serde_json::from_slice(body).map_err(|e| e.to_string())
        };
        match self {
            Self::Key(_) | Self::Prefix(_) => {
                let Some(body) = body else {
                    return Ok(WatchData::Kv(Vec::new()));
                };
                let entries: Vec<RawKv> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let mut pairs = entries
                    .into_iter()
                    .map(KvPair::try_from)
                    .collect::<Result<Vec<_>, _>>()?;
                pairs.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(WatchData::Kv(pairs))
            }
            Self::Keys { .. } => {
                let Some(body) = body else {
                    return Ok(WatchData::Keys(Vec::new()));
                };
                let mut keys: Vec<String> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                keys.sort();
                Ok(WatchData::Keys(keys))
            }
            Self::Service { .. } => {
                let body = body.ok_or("404 from a health endpoint")?;
                let entries: Vec<RawHealthEntry> =
                    serde_json::from_slice(body).map_err(|e| e.to_string())?;
                let mut instances: Vec<Instance> =
                    entries.into_iter().map(Instance::from).collect();
                instances.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
                Ok(WatchData::Service(instances))
            }
            Self::Catalog { .. } => {
                let body = body.ok_or("404 from the catalog")?;
                let value = json(body)?;
                let map: BTreeMap<String, Vec<String>> =
                    serde_json::from_value(value).map_err(|e| e.to_string())?;
                Ok(WatchData::Catalog(
                    map.into_iter()
                        .map(|(k, mut tags)| {
                            // Consul gives no tag order; sort for stable output.
                            tags.sort();
                            tags.dedup();
                            (k, tags)
                        })
                        .collect(),
                ))
            }
        }
    }
}

/// The latest data of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchData {
    /// Sorted by key; empty when the key or prefix has nothing.
    Kv(Vec<KvPair>),
    Keys(Vec<String>),
    /// Sorted by node, then service ID.
    Service(Vec<Instance>),
    Catalog(BTreeMap<String, Vec<String>>),
}

impl WatchData {
    /// Items in the data, for `/status`.
    pub fn len(&self) -> usize {
        match self {
            Self::Kv(v) => v.len(),
            Self::Keys(v) => v.len(),
            Self::Service(v) => v.len(),
            Self::Catalog(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One KV entry. Compared by content, not by index, so an idempotent write
/// on an old Consul (which bumps the index) is not a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvPair {
    pub key: String,
    #[serde(with = "base64_bytes")]
    pub value: Vec<u8>,
    pub flags: u64,
}

/// One service instance as a backend needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub service: String,
    pub node: String,
    /// `Service.Address`, else `Node.Address`.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    /// `Service.Weights.Passing` (1 when unset).
    pub weight: u32,
    /// Aggregated as consul-template does: maintenance, critical, warning,
    /// passing.
    pub status: String,
}

// === Consul's JSON (PascalCase, unknown fields ignored) ===

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawKv {
    key: String,
    value: Option<String>,
    #[serde(default)]
    flags: u64,
}

impl TryFrom<RawKv> for KvPair {
    type Error = String;

    fn try_from(raw: RawKv) -> Result<Self, String> {
        let value = match raw.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| format!("value of {}: {e}", raw.key))?,
            None => Vec::new(),
        };
        Ok(Self {
            key: raw.key,
            value,
            flags: raw.flags,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealthEntry {
    node: RawNode,
    service: RawService,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNode {
    node: String,
    address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<RawWeights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawWeights {
    passing: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    status: String,
}

impl From<RawHealthEntry> for Instance {
    fn from(e: RawHealthEntry) -> Self {
        let status = aggregate_status(&e.checks);
        Self {
            address: if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            },
            id: e.service.id,
            service: e.service.service,
            node: e.node.node,
            port: e.service.port,
            tags: e.service.tags.unwrap_or_default(),
            meta: e.service.meta.unwrap_or_default(),
            weight: e.service.weights.map_or(1, |w| w.passing.max(1)),
            status,
        }
    }
}

/// consul-template's aggregate: maintenance beats critical beats warning
/// beats passing; no checks counts as passing; an unknown status gives "".
fn aggregate_status(checks: &[RawCheck]) -> String {
    if checks.iter().any(|c| {
        c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:")
    }) {
        return "maintenance".into();
    }
    for level in ["critical", "warning"] {
        if checks.iter().any(|c| c.status == level) {
            return level.into();
        }
    }
    if checks.iter().all(|c| c.status == "passing") {
        "passing".into()
    } else {
        String::new()
    }
}

/// KV values in the state file: base64, as Consul itself sends them.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_entries_fall_back_to_the_node_address_and_aggregate_checks() {
        let body = br#"[
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"api-2","Service":"api","Address":"","Port":7001,"Tags":[],"Weights":{"Passing":3,"Warning":1}},
           "Checks":[{"CheckID":"serfHealth","Status":"passing"},{"CheckID":"service:api-2","Status":"warning"}]},
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"api-1","Service":"api","Address":"10.9.9.9","Port":7000,"Tags":["v2"],"Meta":{"v":"1"}},
           "Checks":[{"CheckID":"_service_maintenance:api-1","Status":"critical"}],
           "Unknown":{"ignored":true}}
        ]"#;
        let key = WatchKey::Service {
            name: "api".into(),
            tag: None,
            datacenter: None,
            passing_only: false,
        };
        let WatchData::Service(instances) = key.decode(Some(body)).unwrap() else {
            panic!("service data");
        };
        assert_eq!(instances[0].node, "n1");
        assert_eq!(instances[0].address, "10.9.9.9");
        assert_eq!(instances[0].status, "maintenance");
        assert_eq!(instances[0].weight, 1);
        assert_eq!(instances[1].address, "10.0.0.2");
        assert_eq!(instances[1].weight, 3);
        assert_eq!(instances[1].status, "warning");
    }

    #[test]
    fn kv_values_are_base64_and_null_is_empty() {
        let body = br#"[{"Key":"b","Value":null,"Flags":0,"ModifyIndex":3},{"Key":"a","Value":"aGk=","Flags":7}]"#;
        let data = WatchKey::Prefix("".into()).decode(Some(body)).unwrap();
        assert_eq!(
            data,
            WatchData::Kv(vec![
                KvPair {
                    key: "a".into(),
                    value: b"hi".to_vec(),
                    flags: 7
                },
                KvPair {
                    key: "b".into(),
                    value: Vec::new(),
                    flags: 0
                },
            ])
        );
        assert_eq!(
            WatchKey::Key("x".into()).decode(None).unwrap(),
            WatchData::Kv(Vec::new())
        );
    }

    #[test]
    fn requests_escape_keys_and_carry_filters() {
        let (path, query) = WatchKey::Service {
            name: "api".into(),
            tag: Some("v2".into()),
            datacenter: None,
            passing_only: true,
        }
        .request();
        assert_eq!(path, "health/service/api");
        assert_eq!(
            query,
            vec![("passing", "1".to_string()), ("tag", "v2".to_string())]
        );
        let (path, _) = WatchKey::Key("app/a b?c".into()).request();
        assert_eq!(path, "kv/app/a%20b%3Fc");
    }
}
