//! The shape the catalog and health list reads share (§3, §4): a required
//! path argument, then `?filter`, `?tag`/`?node-meta` and the blocking-read
//! parameters in that order, and a JSON list that `?filter` trims after ACLs
//! had their say.

use http::Response;
use serde_json::Value;

use super::acl::Authz;
use super::blocking::{MetaStyle, Outcome, ReadRequest};
use super::catalog_store::{Catalog, Service};
use super::filter::{self, Filter};
use super::router::Ctx;
use super::selection::{Selection, may_read_instance, readable};
use super::wire::{ApiError, Body};

/// `400 <missing>` for an empty path argument (service name, node, state).
pub fn require(argument: &str, missing: &str) -> Result<(), ApiError> {
    if argument.is_empty() {
        Err(ApiError::bad_request(missing))
    } else {
        Ok(())
    }
}

/// One evaluation of a list read, before `?filter`.
pub struct Listing {
    pub index: u64,
    pub entries: Vec<Value>,
    /// ACLs hid entries (`X-Consul-Results-Filtered-By-ACLs`).
    pub hidden: bool,
}

/// A list read whose `?filter`, selection and blocking parameters were
/// checked.
pub struct ListRead<'a> {
    filter: Option<Filter>,
    selection: Selection,
    read: ReadRequest<'a>,
}

impl<'a> ListRead<'a> {
    pub fn prepare(ctx: &'a Ctx) -> Result<Self, ApiError> {
        let filter = filter::from_query(&ctx.query)?;
        let selection = Selection::from_query(&ctx.query);
        let read = ReadRequest::prepare(ctx, MetaStyle::Catalog)?;
        Ok(Self {
            filter,
            selection,
            read,
        })
    }

    /// Serves `list` as a blocking read, with `?filter` applied to its
    /// entries on every evaluation.
    pub async fn serve(
        self,
        list: impl Fn(&Catalog, &Authz, &Selection) -> Listing,
    ) -> Result<Response<Body>, ApiError> {
        let Self {
            filter,
            selection,
            read,
        } = self;
        read.serve(|st, authz| {
            let mut listing = list(&st.catalog, authz, &selection);
            filter::retain(&mut listing.entries, filter.as_ref());
            Outcome::json(listing.index, Value::Array(listing.entries)).filtered(listing.hidden)
        })
        .await
    }

    /// `/v1/catalog/service/<name>` and `/v1/health/service/<name>`: the
    /// instances of `name` that `?tag`/`?node-meta` select and ACLs let
    /// through, at the service's index, turned into entries by `entries`.
    pub async fn serve_instances(
        self,
        name: &str,
        entries: impl Fn(&Catalog, Vec<&Service>) -> Vec<Value>,
    ) -> Result<Response<Body>, ApiError> {
        self.serve(|catalog, authz, selection| {
            let selected = catalog
                .instances(name)
                .filter(|i| selection.instance_matches(catalog, i));
            let (visible, hidden) = readable(selected, |i| may_read_instance(authz, i));
            Listing {
                index: catalog.service_index(name),
                entries: entries(catalog, visible),
                hidden,
            }
        })
        .await
    }
}
