//! Routes from Consul tags, Fabio's convention: an instance tagged
//! `urlprefix-<host><path>` (`urlprefix-/users/`, `urlprefix-api.example.com/v1/`)
//! asks for a route from that host and path prefix to the instances of its
//! service that carry the tag. Listeners with `consul_tag_routes = true`
//! get them.
//!
//! The routes are computed from the catalog (service names with their
//! tags) and appended to the config before each compile, so a tag that
//! appears or goes is one table swap, with in-flight requests finishing on
//! the table they started with. A route the config itself has wins over a
//! tag route for the same listener, host and prefix.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::config::{
    BackendSpec, BackendTarget, Config, ConsulTarget, HostPattern, Mode, RouteSpec,
    UpstreamTimeouts,
};

pub const TAG_PREFIX: &str = "urlprefix-";

/// One route a tag asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TagRoute {
    pub service: String,
    pub tag: String,
    pub host: HostPattern,
    pub path_prefix: String,
}

/// Every valid `urlprefix-` tag in the catalog, sorted.
pub fn from_catalog(catalog: &BTreeMap<String, Vec<String>>) -> Vec<TagRoute> {
    let mut routes: Vec<TagRoute> = catalog
        .iter()
        .flat_map(|(service, tags)| tags.iter().filter_map(move |tag| parse(service, tag)))
        .collect();
    routes.sort();
    routes
}

/// `urlprefix-api.example.com/v1/` → host `api.example.com`, prefix `/v1/`;
/// `urlprefix-/v1/` → any host. Options after a space (Fabio's
/// `strip=`, `proto=`) are not supported: such tags are skipped.
fn parse(service: &str, tag: &str) -> Option<TagRoute> {
    let rest = tag.strip_prefix(TAG_PREFIX)?;
    if rest.contains(char::is_whitespace) {
        return None;
    }
    let slash = rest.find('/')?;
    let (host, path) = rest.split_at(slash);
    let host = match host.to_ascii_lowercase() {
        h if h.is_empty() => HostPattern::Any,
        h => match h.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => HostPattern::Suffix(suffix.to_string()),
            Some(_) => return None,
            None if h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') =>
            {
                HostPattern::Exact(h)
            }
            None => return None,
        },
    };
    Some(TagRoute {
        service: service.to_string(),
        tag: tag.to_string(),
        host,
        path_prefix: path.to_string(),
    })
}

/// `config` with the routes and backends `tags` ask for on each listener
/// that enables them; routes the config already has win.
pub fn merge(mut config: Config, tags: &[TagRoute]) -> Config {
    let listeners: Vec<_> = config
        .listeners
        .iter()
        .filter(|l| l.consul_tag_routes && l.mode == Mode::Http)
        .map(|l| l.name.clone())
        .collect();
    if listeners.is_empty() || tags.is_empty() {
        return config;
    }
    let mut taken: HashSet<(String, HostPattern, String)> = config
        .routes
        .iter()
        .map(|r| {
            (
                r.listener.to_string(),
                r.host.clone(),
                r.path_prefix.clone(),
            )
        })
        .collect();
    let mut backends = HashSet::new();
    for t in tags {
        let backend: Arc<str> = format!("{}:{}", t.service, t.tag).into();
        for listener in &listeners {
            let key = (listener.to_string(), t.host.clone(), t.path_prefix.clone());
            if !taken.insert(key) {
                continue;
            }
            config.routes.push(RouteSpec {
                listener: listener.clone(),
                host: t.host.clone(),
                path_prefix: t.path_prefix.clone(),
                backend: backend.clone(),
            });
            if backends.insert(backend.clone()) {
                config.backends.push(tag_backend(&backend, t));
            }
        }
    }
    config
}

/// The instances of the tag's service that carry the tag.
fn tag_backend(name: &Arc<str>, t: &TagRoute) -> BackendSpec {
    let target = BackendTarget::Consul(ConsulTarget {
        service: t.service.as_str().into(),
        tag: Some(t.tag.as_str().into()),
        datacenter: None,
    });
    BackendSpec::with_defaults(name.clone(), target, UpstreamTimeouts::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_a_host_and_a_prefix() {
        let catalog = BTreeMap::from([(
            "users".to_string(),
            vec![
                "urlprefix-/users/".to_string(),
                "urlprefix-API.example.com/v1/".to_string(),
                "urlprefix-*.example.org/".to_string(),
                "urlprefix-nohost".to_string(),
                "urlprefix-/x strip=/x".to_string(),
                "v2".to_string(),
            ],
        )]);
        let routes = from_catalog(&catalog);
        let got: Vec<(HostPattern, &str)> = routes
            .iter()
            .map(|r| (r.host.clone(), r.path_prefix.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (HostPattern::Suffix(".example.org".into()), "/"),
                (HostPattern::Any, "/users/"),
                (HostPattern::Exact("api.example.com".into()), "/v1/"),
            ]
        );
    }
}
