//! `/v1/agent/...` (§5): the local agent's services and checks, TTL
//! updates, and its self-description.
//!
//! The agent's node is `ConsulOptions::node_name`. Registrations reach the
//! catalog synchronously (no anti-entropy delay); identical
//! re-registrations change nothing and wake nobody. Non-TTL checks are not
//! run: they keep their initial status unless a test sets it.

use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::acl::{Access, Authz, Resource};
use super::catalog_store::{Check, CheckStatus, Service};
use super::decode::{Fields, parse_body};
use super::register::{self, CheckDefinition};
use super::render;
use super::router::Ctx;
use super::wire::{ApiError, Body, empty_response, json_response};

fn unknown_check(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
    ))
}

fn ok() -> Result<Response<Body>, ApiError> {
    Ok(empty_response(StatusCode::OK))
}

/// A catalog check from its definition, on the agent's node.
fn build_check(
    node: &str,
    id: String,
    name: String,
    definition: &CheckDefinition,
    service: Option<&Service>,
    now: Instant,
) -> Check {
    let status = definition.status.unwrap_or(CheckStatus::Critical);
    Check {
        notes: definition.notes.clone(),
        service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
        service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
        check_type: definition.check_type.to_string(),
        interval: definition.interval,
        timeout: definition.timeout,
        ttl: definition.ttl,
        ttl_deadline: definition.ttl.map(|ttl| now + ttl),
        deregister_after: definition.deregister_after,
        output_max: definition.output_max,
        ..Check::new(node, &id, &name, status)
    }
}

/// `service:write` for a service check, `node:write` for a node check.
fn require_check_write(authz: &Authz, node: &str, service_name: &str) -> Result<(), ApiError> {
    if service_name.is_empty() {
        authz.require(Resource::Node, node, Access::Write)
    } else {
        authz.require(Resource::Service, service_name, Access::Write)
    }
}

pub fn register_service(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let definition = register::parse_service(&ctx.body)?;
    ctx.authz()?
        .require(Resource::Service, &definition.name, Access::Write)?;
    let replace_checks = ctx
        .query
        .get("replace-existing-checks")
        .is_some_and(|v| v.is_empty() || v == "true");
    let node = ctx.shared.options.node_name.as_str();
    let service = Service {
        node: node.to_string(),
        id: definition.id.clone(),
        name: definition.name.clone(),
        tags: definition.tags.clone(),
        address: definition.address.clone(),
        port: definition.port,
        meta: definition.meta.clone(),
        tagged_addresses: definition.tagged_addresses.clone(),
        weights: definition.weights,
        enable_tag_override: definition.enable_tag_override,
        create_index: 0,
        modify_index: 0,
    };
    let several = definition.checks.len() > 1;
    let now = Instant::now();
    let checks: Vec<Check> = definition
        .checks
        .iter()
        .enumerate()
        .map(|(position, check)| {
            let id = check.id.clone().unwrap_or_else(|| {
                if several {
                    format!("service:{}:{}", definition.id, position + 1)
                } else {
                    format!("service:{}", definition.id)
                }
            });
            let name = check
                .name
                .clone()
                .unwrap_or_else(|| format!("Service '{}' check", definition.name));
            build_check(node, id, name, check, Some(&service), now)
        })
        .collect();
    ctx.shared.write(|st| {
        st.commit(|st, index| {
            let mut changed = st.catalog.upsert_service(service, index);
            let kept: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
            for check in checks {
                changed |= st.catalog.upsert_check(check, index);
            }
            if replace_checks {
                let stale: Vec<String> = st
                    .catalog
                    .node_checks(node)
                    .filter(|c| c.service_id == definition.id && !kept.contains(&c.id))
                    .map(|c| c.id.clone())
                    .collect();
                for id in stale {
                    changed |= st.catalog.remove_check(node, &id, index);
                }
            }
            ((), changed)
        })
    });
    ok()
}

pub fn deregister_service(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let node = ctx.shared.options.node_name.as_str();
    let name = ctx
        .shared
        .read(|st| st.catalog.service(node, id).map(|s| s.name.clone()));
    let Some(name) = name else {
        return Err(ApiError::not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        )));
    };
    ctx.authz()?
        .require(Resource::Service, &name, Access::Write)?;
    ctx.shared
        .write(|st| st.commit(|st, index| ((), st.catalog.remove_service(node, id, index))));
    ok()
}

pub fn register_check(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let definition = register::parse_standalone_check(&ctx.body)?;
    let node = ctx.shared.options.node_name.as_str();
    let service = match &definition.service_id {
        None => None,
        Some(service_id) => {
            let found = ctx
                .shared
                .read(|st| st.catalog.service(node, service_id).cloned());
            Some(found.ok_or_else(|| {
                ApiError::not_found(format!("ServiceID {service_id:?} does not exist"))
            })?)
        }
    };
    let authz = ctx.authz()?;
    require_check_write(
        &authz,
        node,
        service.as_ref().map_or("", |s| s.name.as_str()),
    )?;
    let id = definition.id.clone().unwrap_or_default();
    let name = definition.name.clone().unwrap_or_default();
    let check = build_check(
        node,
        id,
        name,
        &definition,
        service.as_ref(),
        Instant::now(),
    );
    ctx.shared
        .write(|st| st.commit(|st, index| ((), st.catalog.upsert_check(check, index))));
    ok()
}

/// The agent's check `id`: its service name (`""` for a node check) and
/// whether it is a TTL check; `404` when unknown.
fn local_check(ctx: &Ctx, id: &str) -> Result<(String, bool), ApiError> {
    let node = ctx.shared.options.node_name.as_str();
    ctx.shared
        .read(|st| {
            st.catalog
                .check(node, id)
                .map(|c| (c.service_name.clone(), c.ttl.is_some()))
        })
        .ok_or_else(|| unknown_check(id))
}

pub fn deregister_check(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let node = ctx.shared.options.node_name.as_str();
    let (service_name, _) = local_check(ctx, id)?;
    require_check_write(&ctx.authz()?, node, &service_name)?;
    ctx.shared
        .write(|st| st.commit(|st, index| ((), st.catalog.remove_check(node, id, index))));
    ok()
}

/// `PUT /v1/agent/check/pass|warn|fail/<id>?note=…`.
pub fn ttl_update(ctx: &Ctx, id: &str, status: &str) -> Result<Response<Body>, ApiError> {
    let status = CheckStatus::parse(status).unwrap_or(CheckStatus::Critical);
    let note = ctx.query.get("note").unwrap_or("").to_string();
    update_ttl_check(ctx, id, status, note)
}

/// `PUT /v1/agent/check/update/<id>` with `{"Status": …, "Output": …}`.
pub fn check_update(ctx: &Ctx, id: &str) -> Result<Response<Body>, ApiError> {
    let decode_failed =
        |problem: String| ApiError::bad_request(format!("Request decode failed: {problem}"));
    let value = parse_body(&ctx.body).map_err(decode_failed)?;
    let fields = Fields::of(&value).map_err(decode_failed)?;
    let status = fields
        .string(&["Status"])
        .map_err(decode_failed)?
        .unwrap_or_default();
    let output = fields
        .string(&["Output"])
        .map_err(decode_failed)?
        .unwrap_or_default();
    let Some(status) = CheckStatus::parse(&status) else {
        return Err(ApiError::bad_request(format!(
            "Invalid check status: '{status}'"
        )));
    };
    update_ttl_check(ctx, id, status, output)
}

/// Resets the TTL clock and records the output. Only a status change
/// reaches the catalog at once; output-only changes wait for the next one.
fn update_ttl_check(
    ctx: &Ctx,
    id: &str,
    status: CheckStatus,
    mut output: String,
) -> Result<Response<Body>, ApiError> {
    let node = ctx.shared.options.node_name.as_str();
    let (service_name, is_ttl) = local_check(ctx, id)?;
    require_check_write(&ctx.authz()?, node, &service_name)?;
    if !is_ttl {
        return Err(ApiError::with_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID {id:?} does not have associated TTL"),
        ));
    }
    let now = Instant::now();
    ctx.shared.write(|st| {
        st.commit(|st, index| {
            let Some(check) = st.catalog.check_mut(node, id) else {
                return ((), false);
            };
            truncate(&mut output, check.output_max);
            check.agent_output = output.clone();
            check.ttl_deadline = check.ttl.map(|ttl| now + ttl);
            if check.status == status {
                return ((), false);
            }
            let changed = st
                .catalog
                .set_check_status(node, id, status, Some(&output), index);
            ((), changed)
        })
    });
    ok()
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
    }
}

pub fn services(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let authz = ctx.authz()?;
    let node = ctx.shared.options.node_name.as_str();
    let datacenter = ctx.shared.options.datacenter.as_str();
    let services: Map<String, Value> = ctx.shared.read(|st| {
        st.catalog
            .services()
            .filter(|s| s.node == node && authz.can_read(Resource::Service, &s.name))
            .map(|s| (s.id.clone(), render::agent_service(s, datacenter)))
            .collect()
    });
    Ok(json_response(&Value::Object(services), ctx.pretty()))
}

pub fn checks(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let authz = ctx.authz()?;
    let node = ctx.shared.options.node_name.as_str();
    let checks: Map<String, Value> = ctx.shared.read(|st| {
        st.catalog
            .node_checks(node)
            .filter(|c| {
                if c.service_name.is_empty() {
                    authz.can_read(Resource::Node, node)
                } else {
                    authz.can_read(Resource::Service, &c.service_name)
                }
            })
            .map(|c| (c.id.clone(), render::check(&st.catalog, c, true)))
            .collect()
    });
    Ok(json_response(&Value::Object(checks), ctx.pretty()))
}

pub fn agent_self(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let options = &ctx.shared.options;
    ctx.authz()?
        .require(Resource::Agent, &options.node_name, Access::Read)?;
    let node_id = render::uuid_from(&format!("node:{}", options.node_name));
    let body = json!({
        "Config": {
            "Datacenter": options.datacenter,
            "PrimaryDatacenter": options.datacenter,
            "NodeName": options.node_name,
            "NodeID": node_id,
            "Server": true,
            "Revision": "switchyard-test",
            "Version": "1.20.0",
            "BuildDate": "2026-01-01T00:00:00Z",
        },
        "DebugConfig": {},
        "Coord": {"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
        "Member": {
            "Name": options.node_name,
            "Addr": "127.0.0.1",
            "Port": 8301,
            "Tags": {"dc": options.datacenter, "role": "consul", "id": node_id},
            "Status": 1,
        },
        "Meta": {"consul-network-segment": ""},
        "xDS": {},
    });
    Ok(json_response(&body, ctx.pretty()))
}
