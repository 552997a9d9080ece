//! `/v1/catalog/...` (§4) and `/v1/status/...` (§5.5): service names with
//! their tags, flat `ServiceNode` lists, nodes, datacenters, leader, peers.

use std::collections::{BTreeMap, BTreeSet};

use http::Response;
use serde_json::{Value, json};

use super::acl::Resource;
use super::blocking::{MetaStyle, Outcome, ReadRequest};
use super::filter;
use super::render;
use super::router::Ctx;
use super::selection::{Selection, may_read_instance};
use super::wire::{ApiError, Body, json_response};

/// The address `/v1/status/leader` and `/v1/status/peers` report.
const SERVER_RPC_ADDR: &str = "127.0.0.1:8300";

pub async fn services(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let mut hidden = false;
        let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for instance in catalog.services() {
            if !selection.node_matches(catalog, &instance.node) {
                continue;
            }
            if !authz.can_read(Resource::Service, &instance.name) {
                hidden = true;
                continue;
            }
            tags.entry(&instance.name)
                .or_default()
                .extend(instance.tags.iter().map(String::as_str));
        }
        Outcome::json(catalog.services_index(), json!(tags)).filtered(hidden)
    })
    .await
}

pub async fn service(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let expression = filter::from_query(&ctx.query)?;
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let selected: Vec<_> = catalog
            .instances(name)
            .filter(|i| selection.instance_matches(catalog, i))
            .collect();
        let mut entries: Vec<Value> = selected
            .iter()
            .filter(|i| may_read_instance(authz, i))
            .map(|i| render::service_node(catalog, i))
            .collect();
        let hidden = entries.len() != selected.len();
        filter::retain(&mut entries, expression.as_ref());
        Outcome::json(catalog.service_index(name), Value::Array(entries)).filtered(hidden)
    })
    .await
}

pub async fn nodes(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let expression = filter::from_query(&ctx.query)?;
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let selected: Vec<_> = catalog
            .nodes()
            .filter(|n| selection.node_matches(catalog, &n.name))
            .collect();
        let mut nodes: Vec<Value> = selected
            .iter()
            .filter(|n| authz.can_read(Resource::Node, &n.name))
            .map(|n| render::node(n))
            .collect();
        let hidden = nodes.len() != selected.len();
        filter::retain(&mut nodes, expression.as_ref());
        Outcome::json(catalog.nodes_index(), Value::Array(nodes)).filtered(hidden)
    })
    .await
}

pub fn datacenters(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    Ok(json_response(
        &json!([ctx.shared.options.datacenter]),
        ctx.pretty(),
    ))
}

pub fn leader(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let leader = if ctx.shared.leader() {
        SERVER_RPC_ADDR
    } else {
        ""
    };
    Ok(json_response(&json!(leader), ctx.pretty()))
}

pub fn peers(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    Ok(json_response(&json!([SERVER_RPC_ADDR]), ctx.pretty()))
}
