//! `/v1/catalog/...` (§4) and `/v1/status/...` (§5.5): service names with
//! their tags, flat `ServiceNode` lists, nodes, datacenters, leader, peers.

use std::collections::{BTreeMap, BTreeSet};

use http::Response;
use serde_json::json;

use super::acl::Resource;
use super::blocking::{MetaStyle, Outcome, ReadRequest};
use super::listing::{ListRead, Listing, require};
use super::render;
use super::router::Ctx;
use super::selection::{Selection, readable};
use super::wire::{ApiError, Body, json_response};

/// The address `/v1/status/leader` and `/v1/status/peers` report.
const SERVER_RPC_ADDR: &str = "127.0.0.1:8300";

pub async fn services(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    let selection = Selection::from_query(&ctx.query);
    let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
    read.serve(|st, authz| {
        let catalog = &st.catalog;
        let on_nodes = catalog
            .services()
            .filter(|i| selection.node_matches(catalog, &i.node));
        let (visible, hidden) = readable(on_nodes, |i| authz.can_read(Resource::Service, &i.name));
        let mut tags: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for instance in visible {
            tags.entry(&instance.name)
                .or_default()
                .extend(instance.tags.iter().map(String::as_str));
        }
        Outcome::json(catalog.services_index(), json!(tags)).filtered(hidden)
    })
    .await
}

pub async fn service(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    require(name, "Missing service name")?;
    ListRead::prepare(ctx)?
        .serve_instances(name, |catalog, visible| {
            visible
                .into_iter()
                .map(|i| render::service_node(catalog, i))
                .collect()
        })
        .await
}

pub async fn nodes(ctx: &Ctx) -> Result<Response<Body>, ApiError> {
    ListRead::prepare(ctx)?
        .serve(|catalog, authz, selection| {
            let selected = catalog
                .nodes()
                .filter(|n| selection.node_matches(catalog, &n.name));
            let (visible, hidden) = readable(selected, |n| authz.can_read(Resource::Node, &n.name));
            Listing {
                index: catalog.nodes_index(),
                entries: visible.into_iter().map(render::node).collect(),
                hidden,
            }
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
