//! HTTP plumbing shared by every endpoint: query strings, error bodies and
//! response builders.
//!
//! Consul answers success with compact JSON (`?pretty` indents and adds a
//! newline), errors with plain text, and agent writes with an empty `200`.
//! [`ApiError`] is the one way a handler fails; the router turns it into a
//! response, optionally prefixed with `rpc error making call: ` (§6).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

pub type Body = Full<Bytes>;

pub const JSON: &str = "application/json";
pub const TEXT: &str = "text/plain; charset=utf-8";

/// A decoded query string, in request order, repeated names kept.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Decodes `a=1&b&c=x+y` as Go's `url.ParseQuery` does (`+` is a space).
    pub fn parse(raw: Option<&str>) -> Self {
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|part| !part.is_empty())
            .map(|part| match part.split_once('=') {
                Some((name, value)) => (decode(name), decode(value)),
                None => (decode(part), String::new()),
            })
            .collect();
        Self { pairs }
    }

    /// Presence flag: `?recurse`, `?recurse=` and `?recurse=false` are all on.
    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name` when present and not empty (Go's
    /// `query.Get(name) != ""`).
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Every value of a repeatable parameter such as `tag`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Go's `url.Values.Encode`: sorted by name, `QueryEscape`d.
    pub fn encode_sorted(&self) -> String {
        self.encode_sorted_without(&[])
    }

    /// [`encode_sorted`](Self::encode_sorted) leaving out `names`.
    pub fn encode_sorted_without(&self, names: &[&str]) -> String {
        let mut pairs: Vec<&(String, String)> = self
            .pairs
            .iter()
            .filter(|(n, _)| !names.contains(&n.as_str()))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs
            .iter()
            .map(|(n, v)| format!("{}={}", query_escape(n), query_escape(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Characters Go's `url.QueryEscape` leaves alone: `A-Za-z0-9-_.~`.
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_escape(s: &str) -> String {
    s.split(' ')
        .map(|part| utf8_percent_encode(part, QUERY_ESCAPE).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// A failed request: status and the plain-text message Consul would send.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Errors that come back from a server RPC (ACL, leader, internal);
    /// these get the optional `rpc error making call: ` prefix.
    pub from_rpc: bool,
    /// Extra headers, e.g. `X-Consul-KnownLeader: false` on a leaderless read.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, from_rpc: bool) -> Self {
        Self {
            status,
            message: message.into(),
            from_rpc,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, false)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message, false)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message, true)
    }

    /// A `500` from the server side (`No cluster leader`, `invalid session`).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message, true)
    }

    pub fn acl_not_found() -> Self {
        Self::forbidden("ACL not found")
    }

    pub fn no_leader() -> Self {
        let mut error = Self::internal("No cluster leader");
        error.headers.push((
            HeaderName::from_static("x-consul-knownleader"),
            HeaderValue::from_static("false"),
        ));
        error
    }

    pub fn with_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, message, false)
    }

    pub fn into_response(self, rpc_prefix: bool) -> Response<Body> {
        let message = if rpc_prefix && self.from_rpc {
            format!("rpc error making call: {}", self.message)
        } else {
            self.message
        };
        let mut response = text_response(self.status, TEXT, message.into_bytes());
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A JSON body, compact, or indented with a trailing newline for `?pretty`.
pub fn json_response(value: &serde_json::Value, pretty: bool) -> Response<Body> {
    let text = if pretty {
        serde_json::to_string_pretty(value).map(|s| s + "\n")
    } else {
        serde_json::to_string(value)
    };
    // Serialising a `Value` cannot fail: its map keys are strings.
    let text = text.unwrap_or_default();
    text_response(StatusCode::OK, JSON, text.into_bytes())
}

/// A body with an explicit content type.
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Status only, empty body, no content type (agent writes, KV 404).
pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Sets a header from a value known to be valid (digits, fixed words).
pub fn set_header(response: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
}
