//! Path routing as Go's `ServeMux` does it for Consul's endpoints (§0.1,
//! §0.4): exact paths and subtrees (patterns ending in `/`, longest wins),
//! `301` to the cleaned path for `//`, `/./`, `/../`, and to `<subtree>/`
//! for a subtree root without its slash.

/// A registered endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Kv,
    HealthService,
    HealthChecks,
    HealthState,
    HealthNode,
    CatalogServices,
    CatalogService,
    CatalogNodes,
    CatalogDatacenters,
    AgentServiceRegister,
    AgentServiceDeregister,
    AgentCheckRegister,
    AgentCheckDeregister,
    AgentCheckPass,
    AgentCheckWarn,
    AgentCheckFail,
    AgentCheckUpdate,
    AgentServices,
    AgentChecks,
    AgentSelf,
    StatusLeader,
    StatusPeers,
}

struct Route {
    pattern: &'static str,
    methods: &'static [&'static str],
    endpoint: Endpoint,
}

const GET: &[&str] = &["GET"];
const PUT: &[&str] = &["PUT"];

const ROUTES: &[Route] = &[
    route("/v1/kv/", &["GET", "PUT", "DELETE"], Endpoint::Kv),
    route("/v1/health/service/", GET, Endpoint::HealthService),
    route("/v1/health/checks/", GET, Endpoint::HealthChecks),
    route("/v1/health/state/", GET, Endpoint::HealthState),
    route("/v1/health/node/", GET, Endpoint::HealthNode),
    route("/v1/catalog/services", GET, Endpoint::CatalogServices),
    route("/v1/catalog/service/", GET, Endpoint::CatalogService),
    route("/v1/catalog/nodes", GET, Endpoint::CatalogNodes),
    route("/v1/catalog/datacenters", GET, Endpoint::CatalogDatacenters),
    route(
        "/v1/agent/service/register",
        PUT,
        Endpoint::AgentServiceRegister,
    ),
    route(
        "/v1/agent/service/deregister/",
        PUT,
        Endpoint::AgentServiceDeregister,
    ),
    route(
        "/v1/agent/check/register",
        PUT,
        Endpoint::AgentCheckRegister,
    ),
    route(
        "/v1/agent/check/deregister/",
        PUT,
        Endpoint::AgentCheckDeregister,
    ),
    route("/v1/agent/check/pass/", PUT, Endpoint::AgentCheckPass),
    route("/v1/agent/check/warn/", PUT, Endpoint::AgentCheckWarn),
    route("/v1/agent/check/fail/", PUT, Endpoint::AgentCheckFail),
    route("/v1/agent/check/update/", PUT, Endpoint::AgentCheckUpdate),
    route("/v1/agent/services", GET, Endpoint::AgentServices),
    route("/v1/agent/checks", GET, Endpoint::AgentChecks),
    route("/v1/agent/self", GET, Endpoint::AgentSelf),
    route("/v1/status/leader", GET, Endpoint::StatusLeader),
    route("/v1/status/peers", GET, Endpoint::StatusPeers),
];

const fn route(
    pattern: &'static str,
    methods: &'static [&'static str],
    endpoint: Endpoint,
) -> Route {
    Route {
        pattern,
        methods,
        endpoint,
    }
}

/// Where a path leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// `rest` is the path after a subtree pattern (the KV key, service name).
    Endpoint {
        endpoint: Endpoint,
        methods: &'static [&'static str],
        rest: String,
    },
    /// `301` to this (decoded) path.
    Redirect(String),
    /// `/v1/...` that no endpoint serves.
    UnknownApi,
    /// Outside `/v1/`.
    Outside,
}

/// Resolves a percent-decoded path.
pub fn resolve(path: &str) -> Resolved {
    let cleaned = clean(path);
    if cleaned != path {
        return Resolved::Redirect(cleaned);
    }
    if let Some(exact) = ROUTES.iter().find(|r| r.pattern == path) {
        return Resolved::Endpoint {
            endpoint: exact.endpoint,
            methods: exact.methods,
            rest: String::new(),
        };
    }
    let subtree = ROUTES
        .iter()
        .filter(|r| r.pattern.ends_with('/') && path.starts_with(r.pattern))
        .max_by_key(|r| r.pattern.len());
    if let Some(subtree) = subtree {
        return Resolved::Endpoint {
            endpoint: subtree.endpoint,
            methods: subtree.methods,
            rest: path[subtree.pattern.len()..].to_string(),
        };
    }
    if ROUTES
        .iter()
        .any(|r| r.pattern.strip_suffix('/') == Some(path))
    {
        return Resolved::Redirect(format!("{path}/"));
    }
    if path.starts_with("/v1/") {
        Resolved::UnknownApi
    } else {
        Resolved::Outside
    }
}

/// Go's `path.Clean`, keeping a trailing slash (ServeMux's `cleanPath`).
fn clean(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut cleaned = format!("/{}", segments.join("/"));
    if path.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}
