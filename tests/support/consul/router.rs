//! One request from arrival to answer: accounting, injected faults, routing
//! and method checks, body limits, then the endpoint; every answer from a
//! registered endpoint gets `X-Consul-Default-ACL-Policy`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use super::acl::{self, Authz};
use super::agent_cache::AgentCache;
use super::faults::{self, Action};
use super::routes::{self, Endpoint, Resolved};
use super::shared::Shared;
use super::wire::{ApiError, Body, Query, TEXT, empty_response, set_header, text_response};
use super::{agent, catalog, health, kv};

/// Bodies above this are refused outright (KV's own limit is lower).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The request's connection was cut on purpose (`Fault::Disconnect`).
#[derive(Debug)]
pub struct Disconnect;

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by an injected fault")
    }
}

impl std::error::Error for Disconnect {}

/// What an endpoint handler gets.
pub struct Ctx {
    pub shared: Arc<Shared>,
    /// The agent whose listener took the request (its cache).
    pub agent: Arc<AgentCache>,
    /// Percent-decoded.
    pub path: String,
    pub method: Method,
    pub query: Query,
    pub headers: HeaderMap,
    pub token: Option<String>,
    pub body: Bytes,
    /// `Fault::Empty`: answer as if nothing existed, with this
    /// `X-Consul-KnownLeader`.
    pub empty: Option<bool>,
    /// What identifies this read's result: path, query without `index` and
    /// `wait`, token.
    pub memo_key: String,
}

impl Ctx {
    /// The agent can answer it from its cache (§2.4).
    pub fn cacheable(&self) -> bool {
        self.path.starts_with("/v1/health/service/") || self.path == "/v1/catalog/services"
    }

    /// Resolves the request's token (`403 ACL not found` when unknown).
    pub fn authz(&self) -> Result<Authz, ApiError> {
        Authz::resolve(self.shared.options.acl.as_ref(), self.token.as_deref())
    }

    pub fn pretty(&self) -> bool {
        self.query.has("pretty")
    }

    /// `?dc=` other than ours → `500 No path to datacenter`.
    pub fn check_datacenter(&self) -> Result<(), ApiError> {
        match self.query.non_empty("dc") {
            Some(dc) if dc != self.shared.options.datacenter => {
                Err(ApiError::internal("No path to datacenter"))
            }
            _ => Ok(()),
        }
    }

    /// Server writes need a leader.
    pub fn require_leader(&self) -> Result<(), ApiError> {
        if self.shared.leader() {
            Ok(())
        } else {
            Err(ApiError::no_leader())
        }
    }
}

pub async fn handle(
    shared: Arc<Shared>,
    agent: Arc<AgentCache>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Disconnect> {
    let (parts, body) = request.into_parts();
    let path = percent_decode_str(parts.uri.path())
        .decode_utf8_lossy()
        .into_owned();
    let query = Query::parse(parts.uri.query());
    let token = acl::request_token(&query, &parts.headers);
    let blocking = query
        .non_empty("index")
        .and_then(|i| i.parse::<u64>().ok())
        .is_some_and(|i| i > 0);
    shared.log.record(&path, blocking, token.clone());

    let mut empty = None;
    if let Some(fault) = shared.faults.take(&path) {
        match fault.action() {
            Action::Delay(delay) => tokio::time::sleep(delay).await,
            Action::Empty { known_leader } => empty = Some(known_leader),
            Action::Disconnect => return Err(Disconnect),
            Action::ConnectionLimit => return Ok(faults::connection_limit_response()),
            Action::Fail(error) => {
                let response = error.into_response(shared.options.rpc_error_prefix);
                return Ok(with_policy(&shared, response));
            }
        }
    }

    // go-cleanhttp's `PrintablePathCheckHandler` wraps Consul's whole mux.
    if path
        .chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
    {
        return Ok(empty_response(StatusCode::BAD_REQUEST));
    }

    let (endpoint, methods, rest) = match routes::resolve(&path) {
        Resolved::Endpoint {
            endpoint,
            methods,
            rest,
        } => (endpoint, methods, rest),
        Resolved::Redirect(location) => return Ok(redirect(&location, parts.uri.query())),
        Resolved::UnknownApi => {
            return Ok(text_response(
                StatusCode::NOT_FOUND,
                TEXT,
                "Invalid URL path: not a recognized HTTP API endpoint\n",
            ));
        }
        Resolved::Outside => {
            return Ok(text_response(
                StatusCode::NOT_FOUND,
                TEXT,
                "404 page not found\n",
            ));
        }
    };

    let allow = format!("OPTIONS,{}", methods.join(","));
    if parts.method == Method::OPTIONS {
        let mut response = empty_response(StatusCode::OK);
        set_allow(&mut response, &allow);
        return Ok(with_policy(&shared, response));
    }
    if !methods.contains(&parts.method.as_str()) {
        let mut response = ApiError::with_status(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {} not allowed", parts.method),
        )
        .into_response(false);
        set_allow(&mut response, &allow);
        return Ok(with_policy(&shared, response));
    }

    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            let response =
                kv::body_too_large(declared_length(&parts.headers).unwrap_or(MAX_BODY + 1))
                    .into_response(false);
            return Ok(with_policy(&shared, response));
        }
        // The client went away while sending.
        Err(_) => return Err(Disconnect),
    };
    let memo_key = format!(
        "{path}?{}#{}",
        query.encode_sorted_without(&["index", "wait"]),
        token.as_deref().unwrap_or("")
    );
    let ctx = Ctx {
        shared: shared.clone(),
        agent,
        path,
        method: parts.method,
        query,
        headers: parts.headers,
        token,
        body,
        empty,
        memo_key,
    };
    let response = match dispatch(&ctx, endpoint, &rest).await {
        Ok(response) => response,
        Err(error) => error.into_response(shared.options.rpc_error_prefix),
    };
    Ok(with_policy(&shared, response))
}

async fn dispatch(ctx: &Ctx, endpoint: Endpoint, rest: &str) -> Result<Response<Body>, ApiError> {
    match endpoint {
        Endpoint::Kv => kv::handle(ctx, rest).await,
        Endpoint::HealthService => health::service(ctx, rest).await,
        Endpoint::HealthChecks => health::checks(ctx, rest).await,
        Endpoint::HealthState => health::state(ctx, rest).await,
        Endpoint::HealthNode => health::node(ctx, rest).await,
        Endpoint::CatalogServices => catalog::services(ctx).await,
        Endpoint::CatalogService => catalog::service(ctx, rest).await,
        Endpoint::CatalogNodes => catalog::nodes(ctx).await,
        Endpoint::CatalogDatacenters => catalog::datacenters(ctx),
        Endpoint::StatusLeader => catalog::leader(ctx),
        Endpoint::StatusPeers => catalog::peers(ctx),
        Endpoint::AgentServiceRegister => agent::register_service(ctx),
        Endpoint::AgentServiceDeregister => agent::deregister_service(ctx, rest),
        Endpoint::AgentCheckRegister => agent::register_check(ctx),
        Endpoint::AgentCheckDeregister => agent::deregister_check(ctx, rest),
        Endpoint::AgentCheckPass => agent::ttl_update(ctx, rest, "passing"),
        Endpoint::AgentCheckWarn => agent::ttl_update(ctx, rest, "warning"),
        Endpoint::AgentCheckFail => agent::ttl_update(ctx, rest, "critical"),
        Endpoint::AgentCheckUpdate => agent::check_update(ctx, rest),
        Endpoint::AgentServices => agent::services(ctx),
        Endpoint::AgentChecks => agent::checks(ctx),
        Endpoint::AgentSelf => agent::agent_self(ctx),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn with_policy(shared: &Shared, mut response: Response<Body>) -> Response<Body> {
    let policy = shared
        .options
        .acl
        .as_ref()
        .map_or("allow", |acl| acl.default_policy.as_str());
    set_header(&mut response, "x-consul-default-acl-policy", policy);
    response
}

fn set_allow(response: &mut Response<Body>, allow: &str) {
    if let Ok(value) = HeaderValue::from_str(allow) {
        response.headers_mut().insert(ALLOW, value);
    }
}

/// Characters escaped when a decoded path goes back into `Location`.
const PATH_ESCAPE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?');

fn redirect(path: &str, query: Option<&str>) -> Response<Body> {
    let mut location = utf8_percent_encode(path, PATH_ESCAPE).to_string();
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }
    let mut response = empty_response(StatusCode::MOVED_PERMANENTLY);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}
