//! Which catalog entries a read keeps: `?tag=` (repeatable, all required,
//! case-insensitive as in Consul), `?node-meta=k:v` (repeatable) and ACL
//! read rights on services and nodes.

use super::acl::{Authz, Resource};
use super::catalog_store::{Catalog, Service};
use super::wire::Query;

/// The `tag` and `node-meta` parameters of one request.
pub struct Selection {
    tags: Vec<String>,
    node_meta: Vec<(String, String)>,
}

impl Selection {
    pub fn from_query(query: &Query) -> Self {
        Self {
            tags: query.all("tag").map(str::to_lowercase).collect(),
            node_meta: query
                .all("node-meta")
                .map(|pair| match pair.split_once(':') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (pair.to_string(), String::new()),
                })
                .collect(),
        }
    }

    pub fn node_matches(&self, catalog: &Catalog, node: &str) -> bool {
        let Some(node) = catalog.node(node) else {
            return self.node_meta.is_empty();
        };
        self.node_meta
            .iter()
            .all(|(k, v)| node.meta.get(k) == Some(v))
    }

    pub fn instance_matches(&self, catalog: &Catalog, instance: &Service) -> bool {
        self.tags.iter().all(|wanted| {
            instance
                .tags
                .iter()
                .any(|tag| tag.to_lowercase() == *wanted)
        }) && self.node_matches(catalog, &instance.node)
    }
}

/// The `selected` items that `may_read` allows, and whether it refused any
/// (the answer is then marked filtered by ACLs).
pub fn readable<T>(
    selected: impl IntoIterator<Item = T>,
    may_read: impl Fn(&T) -> bool,
) -> (Vec<T>, bool) {
    let (visible, refused): (Vec<T>, Vec<T>) = selected.into_iter().partition(may_read);
    (visible, !refused.is_empty())
}

/// `service:read` on the instance's service and `node:read` on its node.
pub fn may_read_instance(authz: &Authz, instance: &Service) -> bool {
    authz.can_read(Resource::Service, &instance.name)
        && authz.can_read(Resource::Node, &instance.node)
}

/// `node:read`, and `service:read` for a service check.
pub fn may_read_check(authz: &Authz, node: &str, service_name: &str) -> bool {
    authz.can_read(Resource::Node, node)
        && (service_name.is_empty() || authz.can_read(Resource::Service, service_name))
}
