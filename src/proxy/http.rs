//! HTTP mode: route each request by the current table and forward it.
//!
//! The service cannot fail: every error becomes a short text response
//! (404 no route, 502 no connection, 503 no endpoint, 504 upstream timeout),
//! or for a gRPC call a gRPC status (see [`super::grpc`]).
//! Bodies stream both ways and are never buffered whole. Upgrade requests
//! (WebSocket and others) are passed through as a byte tunnel after the
//! upstream's `101`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::body::{Completion, ProxyBody};
use super::gateway;
use super::grpc::{self, Code, GrpcCall};
use super::io::{ByteCounts, ConnActivity, Counted};
use super::listener::Drain;
use super::proxy_protocol;
use super::trace;
use crate::access_log::{self, AccessLog, Record, Termination, Text};
use crate::config::{BackendTarget, HashOn, Protocol, RespondSpec};
use crate::error_chain::ErrorChain;
use crate::headers::{connection_has, strip_hop_by_hop};
use crate::table::{ListenerEntry, ListenerKey, RouteTarget, TableHandle};
use crate::upstream::body::RequestBody;
use crate::upstream::body::RequestBodyError;
use crate::upstream::connect::{H1Sender, UpstreamError};
use crate::upstream::h1::codec;
use crate::upstream::h1::conn::{
    ExchangeError, ExchangeTimeouts, H1Body, H1Conn, H1Error, UNREPEATABLE_MAX_IDLE,
};
use crate::upstream::health::Outcome;
use crate::upstream::select::{self, HashInput};
use crate::upstream::state::ActiveGuard;
use crate::upstream::tls::Dial;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Everything a request needs from its client connection.
pub struct ConnCtx {
    pub key: ListenerKey,
    pub table: TableHandle,
    /// The listener as it was when the connection was accepted: routes the
    /// connection's remaining requests if its listener is removed while it
    /// drains. Only this entry is kept alive, not the whole table.
    pub accept_listener: Arc<ListenerEntry>,
    pub peer: SocketAddr,
    /// The client IP, formatted once per connection for X-Forwarded-For.
    pub peer_header: HeaderValue,
    pub activity: Arc<ConnActivity>,
    /// Set when the listener drains: HTTP/1 responses then carry
    /// `Connection: close`.
    pub drain: Arc<Drain>,
    pub hard_stop: Arc<super::listener::Latch>,
    pub tasks: TaskTracker,
    /// `[limits]` as of the connection's start.
    pub limits: crate::config::Limits,
    /// `timeouts.client_stall` as of the connection's start.
    pub client_stall: std::time::Duration,
    /// The address the client connected to (for PROXY headers sent on).
    pub local: SocketAddr,
    /// Set when the connection came in over TLS.
    pub tls: Option<ConnTls>,
}

/// What a request needs to know of its connection's TLS session.
pub struct ConnTls {
    /// "1.2" or "1.3".
    pub version: &'static str,
    /// The name the client asked for in the handshake, if any.
    pub sni: Option<Box<str>>,
    /// The listener's `sni_host_check` when the connection was accepted.
    pub sni_host_check: bool,
    /// The listener's `client_subject_header`, and the subject of the
    /// client's verified certificate, if it showed one.
    pub client_subject: Option<(HeaderName, Option<HeaderValue>)>,
}

impl ConnTls {
    /// Whether a request for `host` may be served on this connection: its
    /// host (without port) must be the SNI name, or the check is off, or
    /// there was no SNI (a client connecting by address).
    fn allows(&self, host: Option<&str>) -> bool {
        let (true, Some(sni), Some(host)) = (self.sni_host_check, self.sni.as_deref(), host) else {
            return true;
        };
        let host = match host.rsplit_once(':') {
            Some((name, port)) if !name.ends_with(']') || port.is_empty() => {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            }
            Some((name, _)) => name,
            None => host,
        };
        host.trim_end_matches('.').eq_ignore_ascii_case(sni)
    }
}

/// Why a request got no upstream response; each maps to one status.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("no route matched")]
    NoRoute,
    #[error("backend `{0}` has no usable endpoint")]
    NoEndpoint(Arc<str>),
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("upstream request failed")]
    Upstream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream gave no response head in time")]
    Timeout,
    #[error("the gRPC call's deadline (grpc-timeout) passed before the response head")]
    DeadlineExceeded,
    #[error("backend `{0}` speaks HTTP/1.1; gRPC needs protocol = \"http2\"")]
    GrpcNeedsHttp2(Arc<str>),
    #[error("request body over the configured limit")]
    BodyTooLarge,
    #[error("the client stopped sending the request body")]
    ClientStalled,
    #[error("the request names no known service")]
    UnknownService,
    #[error("the request's host is not the name of the connection's TLS handshake")]
    Misdirected,
    /// Framing or Host fields that RFC 9112 says to refuse (see
    /// [`check_request`]).
    #[error("invalid request: {0}")]
    BadRequest(&'static str),
    #[error("the request body has a transfer coding other than chunked")]
    UnknownCoding,
}

impl ProxyError {
    fn termination(&self) -> Termination {
        match self {
            Self::NoRoute | Self::UnknownService => Termination::NoRoute,
            Self::NoEndpoint(_) => Termination::NoEndpoint,
            Self::Connect(_) => Termination::ConnectFailed,
            Self::Upstream(_) => Termination::UpstreamReset,
            Self::Timeout | Self::DeadlineExceeded => Termination::UpstreamTimeout,
            Self::BodyTooLarge => Termination::BodyTooLarge,
            Self::ClientStalled => Termination::ClientTimeout,
            Self::Misdirected => Termination::Misdirected,
            Self::BadRequest(_) | Self::UnknownCoding | Self::GrpcNeedsHttp2(_) => {
                Termination::BadRequest
            }
        }
    }

    /// The client connection is closed after this answer: the request's
    /// framing was in doubt, so nothing after it on the connection is.
    fn closes(&self) -> bool {
        matches!(self, Self::BadRequest(_) | Self::UnknownCoding)
    }

    fn status_and_body(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NoRoute => (StatusCode::NOT_FOUND, "no route for this request\n"),
            Self::NoEndpoint(_) => (StatusCode::SERVICE_UNAVAILABLE, "no server available\n"),
            Self::Connect(UpstreamError::Tls { .. }) => (
                StatusCode::BAD_GATEWAY,
                "TLS handshake with upstream server failed\n",
            ),
            Self::Connect(_) => (
                StatusCode::BAD_GATEWAY,
                "cannot connect to upstream server\n",
            ),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream server failed\n"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream server timed out\n"),
            Self::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                "deadline (grpc-timeout) exceeded waiting for the upstream server\n",
            ),
            Self::GrpcNeedsHttp2(_) => (
                StatusCode::BAD_GATEWAY,
                "the backend speaks HTTP/1.1; gRPC needs protocol = \"http2\"\n",
            ),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            Self::ClientStalled => (StatusCode::REQUEST_TIMEOUT, "request body timed out\n"),
            Self::UnknownService => (StatusCode::NOT_FOUND, "unknown service\n"),
            Self::Misdirected => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected request: this host is not the one the TLS connection was made for\n",
            ),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad request\n"),
            Self::UnknownCoding => (
                StatusCode::NOT_IMPLEMENTED,
                "transfer coding not implemented\n",
            ),
        }
    }

    /// The gRPC status a call gets instead: the codes the gRPC spec maps
    /// the HTTP statuses to (404 is `UNIMPLEMENTED`, 400 `INTERNAL`), with
    /// every failure to reach a server `UNAVAILABLE` (which clients may
    /// retry) and every timeout `DEADLINE_EXCEEDED`. The message is the
    /// HTTP body's text.
    fn grpc_status(&self) -> Code {
        match self {
            Self::NoRoute | Self::UnknownService => Code::Unimplemented,
            Self::NoEndpoint(_) | Self::Connect(_) | Self::Misdirected => Code::Unavailable,
            Self::Upstream(e) => grpc::upstream_failure(e.as_ref()),
            Self::Timeout | Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::BodyTooLarge => Code::ResourceExhausted,
            Self::ClientStalled => Code::Cancelled,
            Self::BadRequest(_) | Self::UnknownCoding | Self::GrpcNeedsHttp2(_) => Code::Internal,
        }
    }
}

/// Every `grpc-message` Switchyard sends for a [`ProxyError`] (for the
/// test that they need no percent-encoding).
#[cfg(test)]
pub(crate) fn grpc_messages() -> impl Iterator<Item = &'static str> {
    let io = || std::io::Error::other("x");
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    [
        ProxyError::NoRoute,
        ProxyError::NoEndpoint("b".into()),
        ProxyError::Connect(UpstreamError::Connect { addr, source: io() }),
        ProxyError::Connect(UpstreamError::Tls { addr, source: io() }),
        ProxyError::Upstream(Box::new(io())),
        ProxyError::Timeout,
        ProxyError::DeadlineExceeded,
        ProxyError::BodyTooLarge,
        ProxyError::ClientStalled,
        ProxyError::UnknownService,
        ProxyError::Misdirected,
        ProxyError::BadRequest("x"),
        ProxyError::UnknownCoding,
        ProxyError::GrpcNeedsHttp2("b".into()),
    ]
    .into_iter()
    .map(|e| e.status_and_body().1.trim_end())
}

/// One request, start to response head.
pub async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    if let Some(ConnTls {
        client_subject: Some((header, subject)),
        ..
    }) = &ctx.tls
    {
        // Only the handshake may say who the client is.
        let headers = req.headers_mut();
        headers.remove(header);
        if let Some(subject) = subject {
            headers.insert(header.clone(), subject.clone());
        }
    }
    let inflight = ctx.activity.begin();
    let table = ctx.table.current();
    let listener: &ListenerEntry = table.listener(&ctx.key).unwrap_or(&ctx.accept_listener);
    let request_id = listener
        .spec
        .request_id
        .as_ref()
        .map(|name| (name, trace::request_id(req.headers_mut(), name)));
    if listener.spec.start_traces {
        trace::start_trace(req.headers_mut());
    }
    let log = listener
        .access_log
        .as_ref()
        .map(|log| log_record(log, &req, &ctx, request_id.as_ref().map(|(_, id)| id)));
    let mut response = route(req, &ctx, listener, started, inflight, log).await;
    if let Some((name, id)) = request_id {
        response.headers_mut().insert(name.clone(), id);
    }
    let status = response.status();
    if let Some(log) = response.body_mut().log() {
        log.status = Some(status.as_u16());
    }
    Ok(response)
}

/// Routes a request and forwards it, or answers it here.
async fn route(
    req: Request<Incoming>,
    ctx: &Arc<ConnCtx>,
    listener: &ListenerEntry,
    started: Instant,
    inflight: super::io::InflightGuard,
    log: Option<Box<Record>>,
) -> Response<ProxyBody> {
    let grpc = GrpcCall::of(&req);
    let unrouted = |error, inflight, log| {
        let completion = Completion::new(started, listener.unrouted.clone(), inflight, log);
        let response = error_response(ctx, error, grpc, completion);
        listener.unrouted.count(grpc::counted_status(&response));
        response
    };
    let host = match check_request(&req) {
        Ok(host) => host,
        Err(error) => return unrouted(error, inflight, log),
    };
    if let Some(tls) = &ctx.tls
        && !tls.allows(host)
    {
        return unrouted(ProxyError::Misdirected, inflight, log);
    }
    let Some(target) = listener.route(host, req.uri().path()) else {
        return unrouted(ProxyError::NoRoute, inflight, log);
    };
    let mut completion = Completion::new(started, target.metrics.clone(), inflight, log);
    if let Some(log) = completion.log() {
        log.backend = Some(target.backend.name().clone());
    }
    let response = match &target.backend.spec.target {
        BackendTarget::Respond(spec) => respond(ctx, spec, completion),
        // Boxed: hyper moves the request future by value, and the forwarding
        // state would be copied with it; one allocation is cheaper.
        BackendTarget::Servers(_) | BackendTarget::Consul(_) | BackendTarget::Mdns(_) => {
            // Not a `match` around the await: its scrutinee (the size of a
            // response) would then be kept in this future while it waits.
            let outbound = match prepare(req, target, ctx, started, grpc, completion) {
                Ok(outbound) => outbound,
                Err(response) => {
                    target.metrics.count(grpc::counted_status(&response));
                    return response;
                }
            };
            Box::pin(forward(outbound)).await
        }
        BackendTarget::Gateway(spec) => {
            Box::pin(via_gateway(
                req, target, spec, ctx, started, grpc, completion,
            ))
            .await
        }
    };
    target.metrics.count(grpc::counted_status(&response));
    response
}

/// The access log entry for a request, with what its head says.
fn log_record(
    log: &Arc<AccessLog>,
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    request_id: Option<&HeaderValue>,
) -> Box<Record> {
    let mut record = log.record(ctx.peer, access_log::Protocol::of(req.version()));
    fn text(v: Option<&HeaderValue>) -> &str {
        v.and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    let headers = req.headers();
    let path = req.uri().path_and_query().map_or("", |pq| pq.as_str());
    let (user_agent, referer) = (
        headers.get(header::USER_AGENT),
        headers.get(header::REFERER),
    );
    let mut texts = std::mem::take(&mut record.texts);
    texts.reserve(
        req.method().as_str().len()
            + request_host(req).map_or(0, str::len)
            + path.len()
            + request_id.map_or(0, HeaderValue::len)
            + 32
            + user_agent.map_or(0, HeaderValue::len)
            + referer.map_or(0, HeaderValue::len),
    );
    texts.push(Text::Method, req.method().as_str());
    if let Some(host) = request_host(req) {
        texts.push(Text::Host, host);
    }
    texts.push(Text::Path, path);
    if let Some(id) = request_id {
        texts.push(Text::RequestId, text(Some(id)));
    }
    if let Some(trace) = trace::trace_id(headers) {
        texts.push(Text::TraceId, trace);
    }
    if user_agent.is_some() {
        texts.push(Text::UserAgent, text(user_agent));
    }
    if referer.is_some() {
        texts.push(Text::Referer, text(referer));
    }
    if let Some(tls) = &ctx.tls {
        record.tls_version = Some(tls.version);
        if let Some(sni) = &tls.sni {
            texts.push(Text::Sni, sni);
        }
    }
    record.texts = texts;
    record
}

/// A gateway route: the request names a Consul service; its on-demand
/// backend answers, at the rewritten path when asked.
async fn via_gateway(
    mut req: Request<Incoming>,
    target: &RouteTarget,
    spec: &crate::config::GatewaySpec,
    ctx: &Arc<ConnCtx>,
    started: Instant,
    grpc: Option<GrpcCall>,
    completion: Completion,
) -> Response<ProxyBody> {
    let named = gateway::service_of(
        &spec.from,
        spec.strip_service,
        request_host(&req),
        req.uri().path(),
    )
    .map(|(service, path)| (service.to_string(), path.map(str::to_string)));
    let (Some((service, path)), Some(registry)) = (named, &target.backend.gateway) else {
        return error_response(ctx, ProxyError::UnknownService, grpc, completion);
    };
    let Some(backend) = registry.backend(&service, &target.backend.spec).await else {
        return error_response(ctx, ProxyError::UnknownService, grpc, completion);
    };
    if let Some(path) = path {
        let with_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        match with_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return error_response(ctx, ProxyError::UnknownService, grpc, completion),
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    let routed = RouteTarget {
        backend,
        metrics: target.metrics.clone(),
        forwarded_headers: target.forwarded_headers,
    };
    match prepare(req, &routed, ctx, started, grpc, completion) {
        Ok(outbound) => forward(outbound).await,
        Err(response) => response,
    }
}

/// Refuses what RFC 9112 says a server must refuse and hyper lets
/// through, and returns the host the request is for (as
/// [`request_host`]):
///
/// - more than one Host field, or a Host value that is no `uri-host
///   [":" port]` (§3.2): 400. A target with an authority (absolute-form,
///   HTTP/2) names the host instead of the field (§3.2.2), and
///   [`prepare_request`] replaces the field with it, so the server sees
///   the host the request was routed by;
/// - a body with a transfer coding besides `chunked` (hyper decodes the
///   chunks and nothing else, so the server would get the body with the
///   coding silently dropped): 501 (§6.1); `chunked` twice: 400.
///
/// hyper itself answers 400 to the rest (CL with different values, TE
/// without final `chunked`, TE in HTTP/1.0, obs-fold, whitespace before a
/// colon, NUL/CR/LF in a field) and decodes a body by Transfer-Encoding
/// alone when both fields came, closing the connection after it. Bad chunk
/// lines show only as the body is read; `forward` answers them 400 (see
/// [`is_malformed`]). An HTTP/1.1 request without Host is let through (the server
/// gets one naming it; see [`finish_target`]), unlike §3.2's 400.
fn check_request(req: &Request<Incoming>) -> Result<Option<&str>, ProxyError> {
    // One lookup either way: `get_all` finds what `get` would.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let field = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host field"));
    }
    if field.is_some_and(|h| !h.as_bytes().iter().all(|&b| HOST_BYTES[usize::from(b)])) {
        return Err(ProxyError::BadRequest("invalid Host field"));
    }
    // Only a request with a body can have a transfer coding (hyper refuses
    // Transfer-Encoding without a final `chunked`), so most skip the lookup.
    if !req.body().is_end_stream() {
        let mut chunked = 0;
        for value in req.headers().get_all(header::TRANSFER_ENCODING) {
            let Ok(value) = value.to_str() else {
                return Err(ProxyError::UnknownCoding);
            };
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if !coding.eq_ignore_ascii_case("chunked") {
                    return Err(ProxyError::UnknownCoding);
                }
                chunked += 1;
            }
        }
        if chunked > 1 {
            return Err(ProxyError::BadRequest("chunked applied twice"));
        }
    }
    Ok(req
        .uri()
        .host()
        .or_else(|| field.and_then(|h| h.to_str().ok())))
}

/// The bytes of a Host value (RFC 3986 §3.2.2 `reg-name`, an IPv4 address
/// or a bracketed IP literal, then `:port`); checked by bytes only, enough
/// that none can mean something else to a server (whitespace, a path,
/// userinfo, a query).
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            );
        i += 1;
    }
    table
};

/// The host a request is for: the URI authority (HTTP/2, absolute-form) or
/// the Host header.
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

fn respond(ctx: &ConnCtx, spec: &RespondSpec, completion: Completion) -> Response<ProxyBody> {
    local_response(
        ctx,
        spec.status,
        spec.body.clone(),
        &spec.headers,
        completion,
    )
}

fn local_response(
    ctx: &ConnCtx,
    status: StatusCode,
    body: Bytes,
    headers: &[(HeaderName, HeaderValue)],
    completion: Completion,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::local(body, completion));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in headers {
        h.insert(name.clone(), value.clone());
    }
    mark_close_if_draining(ctx, h);
    resp
}

/// The answer to a request Switchyard fails itself: a short text response,
/// or for a gRPC call (`grpc`) a trailers-only gRPC status.
fn error_response(
    ctx: &ConnCtx,
    error: ProxyError,
    grpc: Option<GrpcCall>,
    mut completion: Completion,
) -> Response<ProxyBody> {
    let (status, body) = error.status_and_body();
    completion.terminated(error.termination());
    tracing::debug!(error = %ErrorChain(&error), %status, peer = %ctx.peer, "Request failed");
    if let Some(call) = grpc {
        let (code, message) = (error.grpc_status(), body.trim_end());
        let empty = ProxyBody::local(Bytes::new(), completion);
        let mut response = call.failure(code, message, status, empty);
        mark_close_if_draining(ctx, response.headers_mut());
        if error.closes() && !ctx.activity.is_h2() {
            let headers = response.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    let mut response = local_response(
        ctx,
        status,
        Bytes::from_static(body.as_bytes()),
        &[],
        completion,
    );
    if error.closes() && !ctx.activity.is_h2() {
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A draining HTTP/1 connection answers its next request and closes, so the
/// client never sends a request into a connection we are closing.
fn mark_close_if_draining(ctx: &ConnCtx, headers: &mut HeaderMap) {
    if ctx.drain.is_set() && !ctx.activity.is_h2() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A request ready for its first attempt: what [`prepare`] decided.
///
/// Kept small on purpose: the forwarding future holds it across every
/// await, and that future is moved into a fresh allocation per request, so
/// its size is memory touched per request (the request itself is boxed).
struct Outbound<'a> {
    req: Box<Request<RequestBody>>,
    /// Set for requests that go through our HTTP/1.1 client, which writes these
    /// headers themselves.
    forwarded: Option<Forwarded>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// A copy of the head, to send again after a broken exchange.
    retry_head: Option<Box<http::request::Parts>>,
    hash_key: HashedKey,
    /// Set for a gRPC call: its deadline bounds the wait, and failures
    /// are answered with gRPC statuses.
    grpc: Option<GrpcCall>,
    first: ActiveGuard,
    target: &'a RouteTarget,
    ctx: &'a Arc<ConnCtx>,
    started: Instant,
    completion: Completion,
}

/// Picks the first endpoint and rewrites the request for it; an error
/// response when the request cannot go anywhere.
// The error is the response to send, about as large as the success value;
// both stay on the stack of a synchronous call.
#[allow(clippy::result_large_err)]
fn prepare<'a>(
    mut req: Request<Incoming>,
    target: &'a RouteTarget,
    ctx: &'a Arc<ConnCtx>,
    started: Instant,
    grpc: Option<GrpcCall>,
    mut completion: Completion,
) -> Result<Outbound<'a>, Response<ProxyBody>> {
    let backend = &target.backend;
    let spec = &backend.spec;
    let max_body = ctx.limits.max_body_bytes;
    if let Some(limit) = max_body
        && req.body().size_hint().lower() > limit
    {
        return Err(error_response(
            ctx,
            ProxyError::BodyTooLarge,
            grpc,
            completion,
        ));
    }
    // Said plainly here rather than left to fail at the server, which
    // would answer an HTTP/1.1 POST with something no gRPC client reads.
    if spec.protocol == Protocol::Http1 && grpc.is_some_and(GrpcCall::needs_http2) {
        let error = ProxyError::GrpcNeedsHttp2(backend.name().clone());
        return Err(error_response(ctx, error, grpc, completion));
    }
    let hash_key = request_hash(req.headers(), ctx.peer, &spec.balance);
    let Some(first) = backend.acquire(&hash_key, &[]) else {
        let error = ProxyError::NoEndpoint(backend.name().clone());
        return Err(error_response(ctx, error, grpc, completion));
    };
    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    // Body-less requests to HTTP/1.1 servers (most requests) go through
    // our own client, driven by the request itself (see `upstream::h1`).
    let own_client = spec.protocol == Protocol::Http1
        && upgrade.is_none()
        && req.body().is_end_stream()
        && req.method() != http::Method::CONNECT;
    let forwarded = match prepare_request(
        &mut req,
        ctx,
        first.endpoint().addr,
        spec.protocol,
        upgrade.is_some(),
        own_client,
        target.forwarded_headers,
    ) {
        Ok(forwarded) => forwarded,
        Err(e) => {
            tracing::debug!(error = %e, "Request cannot be forwarded");
            completion.terminated(Termination::BadRequest);
            let (status, body) = (StatusCode::BAD_REQUEST, "bad request\n");
            if let Some(call) = grpc {
                let empty = ProxyBody::local(Bytes::new(), completion);
                return Err(call.failure(Code::Internal, body.trim_end(), status, empty));
            }
            return Err(local_response(
                ctx,
                status,
                Bytes::from_static(body.as_bytes()),
                &[],
                completion,
            ));
        }
    };
    let stalls = &ctx.accept_listener.metrics.client_stalls;
    let req = Box::new(req.map(|body| RequestBody::new(body, max_body, ctx.client_stall, stalls)));
    // A copy of the head, to send again after a broken exchange: only for
    // requests that may be repeated (idempotent, no body) and when asked.
    let retry_head = (spec.retry.on_reset
        && spec.retry.retries > 0
        && upgrade.is_none()
        && req.method().is_idempotent()
        && req.body().is_end_stream())
    .then(|| Box::new(head_of(&req)));
    // Only retries of sent requests (`retry_on = ["reset"]`) draw on the
    // budget, so only then does it need the request count.
    if spec.retry.on_reset && spec.retry.retries > 0 {
        backend.retry_budget.request_started();
    }
    Ok(Outbound {
        req,
        forwarded,
        upgrade,
        retry_head,
        hash_key,
        grpc,
        first,
        target,
        ctx,
        started,
        completion,
    })
}

/// Sends a prepared request, on other endpoints again as retries allow,
/// and turns the upstream's answer into the client's response.
// Not an `async fn`: its argument would be stored twice in the future (as
// the argument and as the local it is moved into); the block reads the
// captured fields in place.
#[allow(clippy::manual_async_fn)]
fn forward(outbound: Outbound<'_>) -> impl Future<Output = Response<ProxyBody>> + '_ {
    async move {
        let (ctx, hash_key, mut completion) =
            (outbound.ctx, &outbound.hash_key, outbound.completion);
        let backend = &outbound.target.backend;
        let spec = &backend.spec;
        let mut req = outbound.req;
        let mut active = outbound.first;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt_started = outbound.started;
        // Read from `outbound` where needed rather than kept in locals:
        // this future is moved per request, and most requests are no calls.
        let grpc = || outbound.grpc;
        let deadline = || {
            outbound
                .grpc
                .and_then(|call| call.deadline(outbound.started))
        };
        // A private connection per request carries the client's PROXY
        // header (see `send`); boxed, so backends without one carry only a
        // null pointer through the request.
        let proxy_header: Option<Box<[u8]>> = match spec.send_proxy {
            None => None,
            Some(v) => proxy_protocol::encode(v, ctx.peer, ctx.local)
                .ok()
                .map(Vec::into_boxed_slice),
        };
        let answer = loop {
            let forwarded = outbound.forwarded.as_ref();
            let dial = Dial {
                tls: spec.tls.as_deref(),
                proxy_header: proxy_header.as_deref(),
            };
            completion.attempt(active.endpoint().addr);
            let sent = send(
                req,
                &active,
                spec,
                forwarded,
                attempt_started,
                deadline(),
                dial,
            )
            .await;
            let failed = match sent {
                Ok(sent) => {
                    let server_error = sent.status().is_server_error()
                        || (grpc().is_some() && grpc::head_status_is_server_error(sent.headers()));
                    let outcome = if server_error {
                        Outcome::Failed
                    } else {
                        Outcome::Answered
                    };
                    backend.report(active.endpoint(), outcome);
                    break sent;
                }
                Err(failed) => failed,
            };
            let from = active.endpoint().addr;
            // A request body the client framed wrong (a bad chunk size or
            // line end, which hyper refuses as it reads) is the client's
            // error: 400 as RFC 9112 §7.1 wants, not 502, and nothing
            // counted against the server.
            if let ProxyError::Upstream(e) = &failed.error
                && let Some(RequestBodyError::Client(e)) = RequestBody::failure(e.as_ref())
                && is_malformed(e)
            {
                let error = ProxyError::BadRequest("invalid request body framing");
                return error_response(ctx, error, grpc(), completion);
            }
            let connect_failed = matches!(failed.error, ProxyError::Connect(_));
            let outcome = if connect_failed {
                Outcome::ConnectFailed
            } else {
                Outcome::Failed
            };
            backend.report(active.endpoint(), outcome);
            let again = match (&failed.error, failed.unsent) {
                (ProxyError::Connect(_), Some(unsent)) => Some(unsent),
                (ProxyError::Upstream(e), _) if RequestBody::failure(e.as_ref()).is_some() => {
                    let error = match RequestBody::failure(e.as_ref()) {
                        Some(RequestBodyError::TooLarge(_)) => ProxyError::BodyTooLarge,
                        Some(RequestBodyError::Stalled(_)) => ProxyError::ClientStalled,
                        _ => ProxyError::Upstream(failed.error.into()),
                    };
                    return error_response(ctx, error, grpc(), completion);
                }
                (ProxyError::Upstream(_), _) => outbound.retry_head.as_ref().map(|head| {
                    Box::new(Request::from_parts(
                        http::request::Parts::clone(head),
                        RequestBody::empty(),
                    ))
                }),
                _ => None,
            };
            let Some(again) = again else {
                return error_response(ctx, failed.error, grpc(), completion);
            };
            let Some(next) = backend.retry(&mut tried, from, hash_key, connect_failed) else {
                return error_response(ctx, failed.error, grpc(), completion);
            };
            tracing::debug!(error = %ErrorChain(&failed.error), %from, to = %next.endpoint().addr, "Retrying on another endpoint");
            active = next;
            req = again;
            attempt_started = Instant::now();
        };
        tracing::trace!(endpoint.addr = %active.endpoint().addr, status = %answer.status(), "Upstream answered");
        completion.answered(answer.connect());

        let (mut parts, body) = match answer {
            Answer::Pooled(mut resp, sender, _) => {
                if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
                    (outbound.upgrade, resp.status())
                {
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    // The tunnel's line is written when it closes.
                    let log = completion.take_log().map(|mut log| {
                        log.status = Some(StatusCode::SWITCHING_PROTOCOLS.as_u16());
                        log
                    });
                    spawn_tunnel(ctx, client_upgrade, upstream_upgrade, active, log);
                    let (parts, _) = resp.into_parts();
                    return Response::from_parts(parts, ProxyBody::local(Bytes::new(), completion));
                }
                let (mut parts, body) = resp.into_parts();
                let hint = codec::idle_hint(&parts.headers);
                let framed = one_length(&mut parts.headers);
                strip_hop_by_hop(&mut parts.headers);
                let idle = spec.timeouts.idle;
                // A connection that carried a PROXY header is this client's;
                // one whose framing was in doubt is used no more.
                let sender = sender.filter(|_| proxy_header.is_none() && framed);
                let completion = completion.with_upstream(active, sender, idle, hint);
                let stall = spec.timeouts.stall;
                let body = match deadline().filter(|_| grpc().is_some_and(GrpcCall::takes_trailers))
                {
                    Some(deadline) => ProxyBody::grpc(body, stall, deadline, completion),
                    None => ProxyBody::upstream(body, stall, completion),
                };
                (parts, body)
            }
            Answer::H1(head, body, _) => {
                let completion = match proxy_header {
                    None => completion.with_h1(active, spec.timeouts.idle),
                    Some(_) => completion.with_upstream(active, None, spec.timeouts.idle, None),
                };
                // Its head comes without hop-by-hop fields (see `h1::codec`).
                (head.into_parts().0, ProxyBody::h1(body, completion))
            }
        };
        mark_close_if_draining(ctx, &mut parts.headers);
        parts.version = if ctx.activity.is_h2() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        Response::from_parts(parts, body)
    }
}

/// Leaves a response read by hyper's client with at most one
/// Content-Length value, as our own client does (`h1::codec`): with
/// Transfer-Encoding (which hyper decoded, and which is not forwarded)
/// a Content-Length is removed, and `false` says the connection must not
/// carry another exchange: both fields may be an attempt at response
/// splitting (RFC 9112 §6.3 ¶3). A list of equal lengths (`5, 5`, which
/// hyper accepts) becomes the one value (RFC 9110 §8.6); differing ones,
/// which hyper lets through only where they frame nothing (HEAD, 304),
/// are removed.
fn one_length(headers: &mut HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return headers.remove(header::CONTENT_LENGTH).is_none();
    }
    let mut fields = headers.get_all(header::CONTENT_LENGTH).iter();
    let listed = match (fields.next(), fields.next()) {
        (Some(first), None) => first.as_bytes().contains(&b','),
        (Some(_), Some(_)) => true,
        (None, _) => false,
    };
    if !listed {
        return true;
    }
    let mut values = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|v| v.trim_ascii());
    let first = values.next().unwrap_or_default();
    let one =
        !first.is_empty() && first.iter().all(u8::is_ascii_digit) && values.all(|v| v == first);
    match one.then(|| HeaderValue::from_bytes(first).ok()).flatten() {
        Some(value) => headers.insert(header::CONTENT_LENGTH, value),
        None => headers.remove(header::CONTENT_LENGTH),
    };
    true
}

/// A client body hyper could not decode (its chunked framing is invalid),
/// as opposed to a client that went away in the middle of it.
fn is_malformed(error: &hyper::Error) -> bool {
    crate::error_chain::sources(error).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        })
    })
}

/// The parts of a request head, cloned for a retry.
fn head_of(req: &Request<RequestBody>) -> http::request::Parts {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head.into_parts().0
}

/// Why one attempt got no response; `unsent` is the request when nothing
/// of it reached the server.
struct Failed {
    error: ProxyError,
    unsent: Option<Box<Request<RequestBody>>>,
}

impl From<ProxyError> for Failed {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// One attempt: sends `req` to `active`'s endpoint within the backend's
/// request timeout (and a gRPC call's `deadline`), through our HTTP/1.1
/// client when [`prepare`] chose it (`own_client` then carries the
/// forwarding headers it writes).
///
/// With a PROXY header to send (`send_proxy`), every request gets a
/// connection of its own, never pooled: a connection's header names one
/// client, and pooled connections are shared by all.
async fn send(
    req: Box<Request<RequestBody>>,
    active: &ActiveGuard,
    spec: &crate::config::BackendSpec,
    own_client: Option<&Forwarded>,
    attempt_started: Instant,
    deadline: Option<Instant>,
    dial: Dial<'_>,
) -> Result<Answer, Failed> {
    match own_client {
        Some(forwarded) => {
            send_own_h1(
                req,
                forwarded,
                active,
                spec,
                attempt_started,
                deadline,
                dial,
            )
            .await
        }
        // Boxed: these paths are rarer, and their futures (a timer among
        // them) would enlarge every request's (moved) future.
        None => {
            let timeout = attempt_started + spec.timeouts.request;
            let bound = match deadline {
                Some(deadline) if deadline < timeout => Bound::Deadline(deadline),
                _ => Bound::Timeout(timeout),
            };
            Box::pin(send_pooled(*req, active, spec, bound, dial)).await
        }
    }
}

/// What ends the wait for a response head: the backend's request timeout,
/// or a gRPC call's deadline when that comes first.
#[derive(Clone, Copy)]
enum Bound {
    Timeout(Instant),
    Deadline(Instant),
}

/// Sends through hyper's client (HTTP/1 with a body or an upgrade, HTTP/2).
async fn send_pooled(
    req: Request<RequestBody>,
    active: &ActiveGuard,
    spec: &crate::config::BackendSpec,
    bound: Bound,
    dial: Dial<'_>,
) -> Result<Answer, Failed> {
    let (Bound::Timeout(at) | Bound::Deadline(at)) = bound;
    let sent = tokio::time::timeout_at(at, async {
        match spec.protocol {
            Protocol::Http1 => send_hyper_h1(req, active, spec, dial).await,
            Protocol::Http2 => send_h2(req, active, spec).await,
        }
    });
    match (sent.await, bound) {
        (Ok(result), _) => result,
        (Err(_elapsed), Bound::Timeout(_)) => Err(ProxyError::Timeout.into()),
        (Err(_elapsed), Bound::Deadline(_)) => Err(ProxyError::DeadlineExceeded.into()),
    }
}

/// A response head, and where its body comes from.
/// Each carries how long connecting took, `None` on a reused connection.
enum Answer {
    /// Over hyper's client: an HTTP/1.1 sender to return to the pool when
    /// the body ends, or nothing (HTTP/2).
    Pooled(Response<Incoming>, Option<H1Sender>, Option<Duration>),
    /// From our HTTP/1.1 client: the head, and the body that reads the
    /// rest from the connection.
    H1(Response<()>, H1Body, Option<Duration>),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Self::Pooled(resp, _, _) => resp.status(),
            Self::H1(head, _, _) => head.status(),
        }
    }

    fn headers(&self) -> &HeaderMap {
        match self {
            Self::Pooled(resp, _, _) => resp.headers(),
            Self::H1(head, _, _) => head.headers(),
        }
    }

    fn connect(&self) -> Option<Duration> {
        match self {
            Self::Pooled(_, _, connect) | Self::H1(_, _, connect) => *connect,
        }
    }
}

async fn send_own_h1(
    req: Box<Request<RequestBody>>,
    forwarded: &Forwarded,
    active: &ActiveGuard,
    spec: &crate::config::BackendSpec,
    started: Instant,
    grpc_deadline: Option<Instant>,
    dial: Dial<'_>,
) -> Result<Answer, Failed> {
    let timeouts = spec.timeouts;
    let endpoint = active.endpoint();
    // A request that may not be sent twice takes only a connection used
    // moments ago (see `UNREPEATABLE_MAX_IDLE`).
    let max_idle = (!req.method().is_idempotent()).then_some(UNREPEATABLE_MAX_IDLE);
    let cached = match dial.proxy_header {
        None => endpoint.pool.take_h1(started, max_idle),
        Some(_) => None,
    };
    let extra = match &forwarded.for_ {
        Some(for_) => [
            Some((&X_FORWARDED_FOR, for_)),
            Some((&X_FORWARDED_PROTO, forwarded.proto)),
            forwarded.host.as_ref().map(|h| (&X_FORWARDED_HOST, h)),
        ],
        None => [None, None, None],
    };
    let exchange_timeouts = ExchangeTimeouts {
        connect: timeouts.connect,
        // The connection keeps its own timer for the deadline.
        deadline: grpc_deadline.map_or(started + timeouts.request, |d| {
            d.min(started + timeouts.request)
        }),
        stall: timeouts.stall,
    };
    let exchange = H1Conn::exchange(cached, endpoint.addr, exchange_timeouts, &req, &extra, dial);
    match exchange.await {
        Ok(response) => Ok(Answer::H1(response.head, response.body, response.connect)),
        Err(ExchangeError::Connect(e)) => Err(Failed {
            error: ProxyError::Connect(e),
            unsent: Some(req),
        }),
        Err(ExchangeError::Send(H1Error::TimedOut)) => Err(ProxyError::Timeout.into()),
        Err(ExchangeError::Send(e)) => Err(ProxyError::Upstream(Box::new(e)).into()),
    }
}

async fn send_hyper_h1(
    mut req: Request<RequestBody>,
    active: &ActiveGuard,
    spec: &crate::config::BackendSpec,
    dial: Dial<'_>,
) -> Result<Answer, Failed> {
    let endpoint = active.endpoint();
    // Only a request that kept its Upgrade field (see `prepare_request`)
    // asked to switch protocols.
    let asked_upgrade = req.headers().contains_key(header::UPGRADE);
    loop {
        let checkout_started = Instant::now();
        let checkout = endpoint
            .pool
            .checkout_h1(endpoint.addr, spec.timeouts.connect, dial)
            .await;
        let mut conn = match checkout {
            Ok(conn) => conn,
            Err(e) => {
                return Err(Failed {
                    error: ProxyError::Connect(e),
                    unsent: Some(Box::new(req)),
                });
            }
        };
        let connect = (!conn.reused).then(|| checkout_started.elapsed());
        match conn.sender.try_send_request(req).await {
            // What `h1::codec` refuses and hyper lets through is the
            // server's error here too (dropping the sender closes the
            // connection): a 101 nobody asked for, which hyper hands over
            // as an upgrade and which would leave the client reading a
            // foreign protocol (RFC 9110 §15.2.2); a transfer coding the
            // proxy would drop without decoding (see `TransferCodings`).
            Ok(resp) => {
                let error = if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade {
                    "101 to a request that asked no upgrade"
                } else if codec::TransferCodings::of(resp.headers()).invalid {
                    "transfer coding other than chunked"
                } else {
                    return Ok(Answer::Pooled(resp, Some(conn.sender), connect));
                };
                let error = codec::CodecError::Invalid(error);
                return Err(ProxyError::Upstream(Box::new(error)).into());
            }
            Err(mut e) => match e.take_message() {
                // The pooled connection closed before our request went out:
                // nothing reached the server, so sending it again is safe.
                Some(unsent) if conn.reused => req = unsent,
                _ => return Err(ProxyError::Upstream(Box::new(e.into_error())).into()),
            },
        }
    }
}

async fn send_h2(
    req: Request<RequestBody>,
    active: &ActiveGuard,
    spec: &crate::config::BackendSpec,
) -> Result<Answer, Failed> {
    let endpoint = active.endpoint();
    let mut sender = match endpoint
        .pool
        .h2_sender(endpoint.addr, spec.timeouts.connect, spec.tls.as_deref())
        .await
    {
        Ok(sender) => sender,
        Err(e) => {
            return Err(Failed {
                error: ProxyError::Connect(e),
                unsent: Some(Box::new(req)),
            });
        }
    };
    sender
        .ready()
        .await
        .map_err(|e| Failed::from(ProxyError::Upstream(Box::new(e))))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failed::from(ProxyError::Upstream(Box::new(e))))?;
    // HTTP/2 connections are shared: no request waits for one's connect.
    Ok(Answer::Pooled(resp, None, None))
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and others).
fn is_upgrade(req: &Request<Incoming>) -> bool {
    // A scan of the few names a request has compares enum tags; a hashed
    // lookup costs more for the usual answer, "no".
    req.version() == Version::HTTP_11
        && req.headers().keys().any(|name| name == header::UPGRADE)
        && connection_has(req.headers(), "upgrade")
}

#[derive(Debug, thiserror::Error)]
#[error("request has no usable host or path: {0}")]
struct PrepareError(String);

/// The `X-Forwarded-*` values for a request whose headers are written by
/// our HTTP/1.1 client: appended to its head instead of inserted into the
/// header map, which would grow the map on every request.
pub struct Forwarded {
    /// `None` when the listener adds no forwarding headers.
    for_: Option<HeaderValue>,
    proto: &'static HeaderValue,
    host: Option<HeaderValue>,
}

static PROTO_HTTP: HeaderValue = HeaderValue::from_static("http");
static PROTO_HTTPS: HeaderValue = HeaderValue::from_static("https");

/// `X-Forwarded-Proto` for requests of this connection.
fn proto(ctx: &ConnCtx) -> &'static HeaderValue {
    if ctx.tls.is_some() {
        &PROTO_HTTPS
    } else {
        &PROTO_HTTP
    }
}

/// Turns the client's request into the upstream request, in place. With
/// `own_client`, the `X-Forwarded-*` headers are returned instead of
/// inserted; without `add_forwarded`, there are none (the client's own
/// pass through untouched, as without HAProxy's `option forwardfor`).
// Each argument is one decision `prepare` took; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn prepare_request(
    req: &mut Request<Incoming>,
    ctx: &ConnCtx,
    endpoint: SocketAddr,
    protocol: Protocol,
    upgrade: bool,
    own_client: bool,
    add_forwarded: bool,
) -> Result<Option<Forwarded>, PrepareError> {
    let te_trailers = protocol == Protocol::Http2
        && req
            .headers()
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let upgrade_proto = upgrade
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten();
    // A target's authority (absolute-form, HTTP/2) is the host, not a Host
    // field beside it (RFC 9112 §3.2.2): routing went by it, and the field
    // is replaced with it (a proxy must not forward the received one).
    let (host, has_host_header) = match req.uri().authority() {
        Some(authority) => (authority_host(authority), false),
        None => {
            let field = req.headers().get(header::HOST).cloned();
            let has = field.is_some();
            (field, has)
        }
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(proto) = upgrade_proto {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    let forwarded = if !add_forwarded {
        own_client.then_some(Forwarded {
            for_: None,
            proto: &PROTO_HTTP,
            host: None,
        })
    } else {
        forwarded_headers(headers, ctx, host.clone(), own_client)
    };
    finish_target(req, endpoint, protocol, has_host_header, host)?;
    Ok(forwarded)
}

/// The Host value for a target's authority: without the userinfo
/// (RFC 9112 §3.2), which the Host syntax has no room for.
fn authority_host(authority: &Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
    HeaderValue::from_str(host).ok()
}

/// Adds `X-Forwarded-For` (after the client's own), `-Proto` and `-Host`,
/// or with `own_client` returns them for our client to write.
fn forwarded_headers(
    headers: &mut HeaderMap,
    ctx: &ConnCtx,
    host: Option<HeaderValue>,
    own_client: bool,
) -> Option<Forwarded> {
    // Most clients send none of these: one pass comparing names is cheaper
    // than the hashed lookups and removals of these custom names.
    let client_forwarded = headers.keys().any(|name| {
        name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST
    });
    let prev_xff = client_forwarded
        .then(|| headers.get(&X_FORWARDED_FOR))
        .flatten();
    let xff = match prev_xff {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + ctx.peer_header.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(ctx.peer_header.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| ctx.peer_header.clone())
        }
        None => ctx.peer_header.clone(),
    };
    if own_client {
        // The client's own values are replaced (X-Forwarded-For was
        // folded into `xff` above).
        if client_forwarded {
            for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
                headers.remove(name);
            }
        }
        Some(Forwarded {
            for_: Some(xff),
            proto: proto(ctx),
            host,
        })
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        headers.insert(X_FORWARDED_PROTO.clone(), proto(ctx).clone());
        if let Some(host) = &host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None
    }
}

/// Puts the request in the form its upstream protocol wants: origin-form
/// and a Host header for HTTP/1.1, an absolute URI for HTTP/2.
fn finish_target(
    req: &mut Request<Incoming>,
    endpoint: SocketAddr,
    protocol: Protocol,
    has_host_header: bool,
    host: Option<HeaderValue>,
) -> Result<(), PrepareError> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match protocol {
        Protocol::Http1 => {
            // HTTP/2 clients send the authority instead of a Host header;
            // an HTTP/1.0 client may send neither, and HTTP/1.1 requires
            // one (servers answer 400 without it): name the server itself,
            // as nginx's default `$proxy_host` does.
            if !has_host_header {
                let host = host.or_else(|| HeaderValue::from_str(&endpoint.to_string()).ok());
                if let Some(host) = host {
                    req.headers_mut().insert(header::HOST, host);
                }
            }
            *req.version_mut() = Version::HTTP_11;
            // Origin-form: the upstream connection already names the server.
            *req.uri_mut() = Uri::from(path);
        }
        Protocol::Http2 => {
            let authority = host
                .as_ref()
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                // No host from the client (HTTP/1.0): name the server itself.
                .map_or_else(|| Authority::try_from(endpoint.to_string()), Ok)
                .map_err(|e| PrepareError(e.to_string()))?;
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
            *req.uri_mut() = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|e| PrepareError(e.to_string()))?;
        }
    }
    Ok(())
}

/// Copies bytes both ways between the two upgraded connections until both
/// sides are done; the endpoint counts as busy meanwhile.
fn spawn_tunnel(
    ctx: &ConnCtx,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    active: ActiveGuard,
    log: Option<Box<Record>>,
) {
    let hard_stop = ctx.hard_stop.clone();
    let drain_timeout = ctx.accept_listener.spec.drain_timeout;
    ctx.tasks.spawn(async move {
        let started = std::time::Instant::now();
        let (counts, upstream_counts) = (ByteCounts::default(), ByteCounts::default());
        let tunnel = async {
            let (client, upstream) = tokio::try_join!(client, upstream)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut client = Counted::new(TokioIo::new(client), &counts);
            let mut upstream = Counted::new(TokioIo::new(upstream), &upstream_counts);
            tokio::io::copy_bidirectional(&mut client, &mut upstream)
                .await
                .map(drop)
        };
        let termination = tokio::select! {
            result = tunnel => {
                if let Err(error) = &result {
                    tracing::debug!(%error, endpoint.addr = %active.endpoint().addr, "Tunnel ended");
                }
                ByteCounts::termination(&counts, &upstream_counts)
            }
            () = hard_stop.wait() => Termination::DrainTimeout,
            () = super::tcp::endpoint_removed(&active, drain_timeout) => {
                tracing::debug!(endpoint.addr = %active.endpoint().addr, "Endpoint removed and drain timeout over; closing the tunnel");
                Termination::DrainTimeout
            }
        };
        drop(active);
        if let Some(mut log) = log {
            log.duration = log.first_byte.unwrap_or_default() + started.elapsed();
            (log.bytes_in, log.bytes_out) = counts.get();
            log.termination = termination;
            AccessLog::submit(log);
        }
    });
}

/// The hash for `balance = "hash"` (0 for other algorithms), taken once
/// so that retries do not need the request's headers.
fn request_hash(
    headers: &HeaderMap,
    peer: SocketAddr,
    algorithm: &crate::config::Balance,
) -> HashedKey {
    HashedKey(match algorithm {
        crate::config::Balance::Hash(HashOn::Header(name)) => match headers.get(name) {
            Some(v) => crate::upstream::select::hash_key(v.as_bytes()),
            None => select::hash_ip(peer.ip()),
        },
        crate::config::Balance::Hash(HashOn::ClientAddr) => select::hash_ip(peer.ip()),
        _ => 0,
    })
}

/// A request's balancing hash, computed up front.
struct HashedKey(u64);

impl HashInput for HashedKey {
    fn hash_bytes(&self, _on: &HashOn) -> u64 {
        self.0
    }
}
