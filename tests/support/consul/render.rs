//! JSON shapes of Consul's answers: KV entries (§1.1), nodes, health entries
//! and checks (§3.1), catalog `ServiceNode`s (§4.2) and agent views (§5.5).
//!
//! Lists are `[]` and tag lists `[]`, never `null`; `Service.Address` stays
//! `""` when unset; a KV entry's empty value is `null` and `Session` is
//! omitted when unlocked.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::catalog_store::{Catalog, Check, Node, Service};
use super::duration;
use super::kv_store::KvEntry;

/// A stable UUID-shaped ID for `seed` (node IDs, token accessors).
pub fn uuid_from(seed: &str) -> String {
    // Two FNV-1a passes with different offsets give 128 bits.
    let fnv = |offset: u64| {
        seed.bytes().fold(offset, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (high, low) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub fn kv_entry(key: &str, entry: &KvEntry) -> Value {
    let value = if entry.value.is_empty() {
        Value::Null
    } else {
        Value::String(base64::engine::general_purpose::STANDARD.encode(&entry.value))
    };
    let mut object = json!({
        "LockIndex": entry.lock_index,
        "Key": key,
        "Flags": entry.flags,
        "Value": value,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    });
    if let (Some(session), Some(map)) = (&entry.session, object.as_object_mut()) {
        map.insert("Session".into(), json!(session));
    }
    object
}

pub fn node(node: &Node) -> Value {
    json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": node.tagged_addresses,
        "Meta": node.meta,
        "CreateIndex": node.create_index,
        "ModifyIndex": node.modify_index,
    })
}

fn tagged_addresses(service: &Service) -> Value {
    let map: Map<String, Value> = service
        .tagged_addresses
        .iter()
        .map(|(name, (address, port))| (name.clone(), json!({"Address": address, "Port": port})))
        .collect();
    Value::Object(map)
}

fn weights(service: &Service) -> Value {
    json!({"Passing": service.weights.0, "Warning": service.weights.1})
}

/// `Service` of a health entry.
pub fn service(service: &Service) -> Value {
    let mut object = json!({
        "ID": service.id,
        "Service": service.name,
        "Tags": service.tags,
        "Address": service.address,
        "Meta": service.meta,
        "Port": service.port,
        "Weights": weights(service),
        "EnableTagOverride": service.enable_tag_override,
        "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "Connect": {},
        "CreateIndex": service.create_index,
        "ModifyIndex": service.modify_index,
    });
    if !service.tagged_addresses.is_empty()
        && let Some(map) = object.as_object_mut()
    {
        map.insert("TaggedAddresses".into(), tagged_addresses(service));
    }
    object
}

fn optional_duration(d: Option<std::time::Duration>) -> String {
    d.map(duration::format).unwrap_or_default()
}

/// A check; `agent_view` shows the agent's latest output instead of the
/// catalog's.
pub fn check(catalog: &Catalog, check: &Check, agent_view: bool) -> Value {
    let service_tags = catalog
        .service(&check.node, &check.service_id)
        .map(|s| s.tags.clone())
        .unwrap_or_default();
    json!({
        "Node": check.node,
        "CheckID": check.id,
        "Name": check.name,
        "Status": check.status.as_str(),
        "Notes": check.notes,
        "Output": if agent_view { &check.agent_output } else { &check.output },
        "ServiceID": check.service_id,
        "ServiceName": check.service_name,
        "ServiceTags": service_tags,
        "Type": check.check_type,
        "Interval": optional_duration(check.interval),
        "Timeout": optional_duration(check.timeout),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": check.create_index,
        "ModifyIndex": check.modify_index,
    })
}

/// One element of `/v1/health/service/<name>`.
pub fn health_entry(catalog: &Catalog, instance: &Service) -> Value {
    let node = catalog.node(&instance.node).map_or(Value::Null, node);
    let checks: Vec<Value> = catalog
        .instance_checks(instance)
        .map(|c| check(catalog, c, false))
        .collect();
    json!({"Node": node, "Service": service(instance), "Checks": checks})
}

/// One element of `/v1/catalog/service/<name>` (node and service merged).
pub fn service_node(catalog: &Catalog, instance: &Service) -> Value {
    let found = catalog.node(&instance.node);
    let mut object = json!({
        "ID": found.map(|n| n.id.as_str()).unwrap_or(""),
        "Node": instance.node,
        "Address": found.map(|n| n.address.as_str()).unwrap_or(""),
        "Datacenter": found.map(|n| n.datacenter.as_str()).unwrap_or(""),
        "TaggedAddresses": found.map(|n| &n.tagged_addresses),
        "NodeMeta": found.map(|n| &n.meta),
        "ServiceKind": "",
        "ServiceID": instance.id,
        "ServiceName": instance.name,
        "ServiceTags": instance.tags,
        "ServiceAddress": instance.address,
        "ServiceWeights": weights(instance),
        "ServiceMeta": instance.meta,
        "ServicePort": instance.port,
        "ServiceEnableTagOverride": instance.enable_tag_override,
        "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
        "ServiceConnect": {},
        "CreateIndex": instance.create_index,
        "ModifyIndex": instance.modify_index,
    });
    if let Some(map) = object.as_object_mut() {
        map.insert("ServiceTaggedAddresses".into(), tagged_addresses(instance));
    }
    object
}

/// A value of `/v1/agent/services`.
pub fn agent_service(service: &Service, datacenter: &str) -> Value {
    let mut object = json!({
        "ID": service.id,
        "Service": service.name,
        "Tags": service.tags,
        "Meta": service.meta,
        "Port": service.port,
        "Address": service.address,
        "Weights": weights(service),
        "EnableTagOverride": service.enable_tag_override,
        "Datacenter": datacenter,
    });
    if !service.tagged_addresses.is_empty()
        && let Some(map) = object.as_object_mut()
    {
        map.insert("TaggedAddresses".into(), tagged_addresses(service));
    }
    object
}
