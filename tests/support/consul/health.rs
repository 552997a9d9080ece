//! `/v1/health/service|checks|state|node/...` (§3): entries with node,
//! service and checks; check lists; all blocking reads.

use http::Response;
use serde_json::Value;

use super::blocking::{MetaStyle, Outcome, ReadRequest};
use super::catalog_store::CheckStatus;
use super::filter;
use super::render;
use super::router::Ctx;
use super::selection::{Selection, may_read_check, may_read_instance};
use super::wire::{ApiError, Body};

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `?passing`: absent → off, empty → on, else `ParseBool` or `400`.
fn passing_only(ctx: &Ctx) -> Result<bool, ApiError> {
    match ctx.query.get("passing") {
        None => Ok(false),
        Some("") => Ok(true),
        Some(text) => {
            parse_go_bool(text).ok_or_else(|| ApiError::bad_request("Invalid value for ?passing"))
        }
    }
}

pub async fn service(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let passing = passing_only(ctx)?;
    let expression = filter::from_query(&ctx.query)?;
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let selected: Vec<_> = catalog
            .instances(name)
            .filter(|i| selection.instance_matches(catalog, i))
            .collect();
        let visible: Vec<_> = selected
            .iter()
            .filter(|i| may_read_instance(authz, i))
            .collect();
        let mut entries: Vec<Value> = visible
            .iter()
            .filter(|i| {
                !passing
                    || catalog
                        .instance_checks(i)
                        .all(|c| c.status == CheckStatus::Passing)
            })
            .map(|i| render::health_entry(catalog, i))
            .collect();
        filter::retain(&mut entries, expression.as_ref());
        Outcome::json(catalog.service_index(name), Value::Array(entries))
            .filtered(visible.len() != selected.len())
    })
    .await
}

pub async fn checks(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let expression = filter::from_query(&ctx.query)?;
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let mut hidden = false;
        let mut checks: Vec<Value> = Vec::new();
        for instance in catalog.instances(name) {
            if !selection.node_matches(catalog, &instance.node) {
                continue;
            }
            if !may_read_instance(authz, instance) {
                hidden = true;
                continue;
            }
            checks.extend(
                catalog
                    .instance_checks(instance)
                    .filter(|c| !c.service_id.is_empty())
                    .map(|c| render::check(catalog, c, false)),
            );
        }
        filter::retain(&mut checks, expression.as_ref());
        Outcome::json(catalog.service_index(name), Value::Array(checks)).filtered(hidden)
    })
    .await
}

pub async fn state(ctx: &Ctx, wanted: &str) -> Result<Response<Body>, ApiError> {
    if wanted.is_empty() {
        return Err(ApiError::bad_request("Missing check state"));
    }
    let expression = filter::from_query(&ctx.query)?;
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let in_state: Vec<_> = catalog
            .checks()
            .filter(|c| wanted == "any" || c.status.as_str() == wanted)
            .filter(|c| selection.node_matches(catalog, &c.node))
            .collect();
        let mut checks: Vec<Value> = in_state
            .iter()
            .filter(|c| may_read_check(authz, &c.node, &c.service_name))
            .map(|c| render::check(catalog, c, false))
            .collect();
        let hidden = checks.len() != in_state.len();
        filter::retain(&mut checks, expression.as_ref());
        Outcome::json(catalog.checks_index(), Value::Array(checks)).filtered(hidden)
    })
    .await
}

pub async fn node(ctx: &Ctx, node: &str) -> Result<Response<Body>, ApiError> {
    if node.is_empty() {
        return Err(ApiError::bad_request("Missing node name"));
    }
    let expression = filter::from_query(&ctx.query)?;
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let on_node: Vec<_> = catalog.node_checks(node).collect();
        let mut checks: Vec<Value> = on_node
            .iter()
            .filter(|c| may_read_check(authz, &c.node, &c.service_name))
            .map(|c| render::check(catalog, c, false))
            .collect();
        let hidden = checks.len() != on_node.len();
        filter::retain(&mut checks, expression.as_ref());
        let index = catalog.nodes_index().max(catalog.checks_index());
        Outcome::json(index, Value::Array(checks)).filtered(hidden)
    })
    .await
}
