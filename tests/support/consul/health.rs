//! `/v1/health/service|checks|state|node/...` (§3): entries with node,
//! service and checks; check lists; all blocking reads.

use http::Response;

use super::acl::Authz;
use super::catalog_store::{Catalog, Check, CheckStatus};
use super::listing::{ListRead, Listing, require};
use super::render;
use super::router::Ctx;
use super::selection::{may_read_check, may_read_instance, readable};
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
    require(name, "Missing service name")?;
    let passing = passing_only(ctx)?;
    ListRead::prepare(ctx)?
        .serve_instances(name, |catalog, visible| {
            visible
                .into_iter()
                .filter(|i| {
                    !passing
                        || catalog
                            .instance_checks(i)
                            .all(|c| c.status == CheckStatus::Passing)
                })
                .map(|i| render::health_entry(catalog, i))
                .collect()
        })
        .await
}

pub async fn checks(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    require(name, "Missing service name")?;
    ListRead::prepare(ctx)?
        .serve(|catalog, authz, selection| {
            let on_nodes = catalog
                .instances(name)
                .filter(|i| selection.node_matches(catalog, &i.node));
            let (visible, hidden) = readable(on_nodes, |i| may_read_instance(authz, i));
            Listing {
                index: catalog.service_index(name),
                entries: visible
                    .iter()
                    .flat_map(|i| catalog.instance_checks(i))
                    .filter(|c| !c.service_id.is_empty())
                    .map(|c| render::check(catalog, c, false))
                    .collect(),
                hidden,
            }
        })
        .await
}

pub async fn state(ctx: &Ctx, wanted: &str) -> Result<Response<Body>, ApiError> {
    require(wanted, "Missing check state")?;
    ListRead::prepare(ctx)?
        .serve(|catalog, authz, selection| {
            let in_state = catalog
                .checks()
                .filter(|c| wanted == "any" || c.status.as_str() == wanted)
                .filter(|c| selection.node_matches(catalog, &c.node));
            check_listing(catalog, authz, in_state, catalog.checks_index())
        })
        .await
}

pub async fn node(ctx: &Ctx, node: &str) -> Result<Response<Body>, ApiError> {
    require(node, "Missing node name")?;
    ListRead::prepare(ctx)?
        .serve(|catalog, authz, _| {
            let index = catalog.nodes_index().max(catalog.checks_index());
            check_listing(catalog, authz, catalog.node_checks(node), index)
        })
        .await
}

/// The `checks` `authz` may read, rendered as the health endpoints show them.
fn check_listing<'c>(
    catalog: &'c Catalog,
    authz: &Authz,
    checks: impl Iterator<Item = &'c Check>,
    index: u64,
) -> Listing {
    let (visible, hidden) = readable(checks, |c| may_read_check(authz, &c.node, &c.service_name));
    Listing {
        index,
        entries: visible
            .into_iter()
            .map(|c| render::check(catalog, c, false))
            .collect(),
        hidden,
    }
}
