//! Injected failures: the next N requests (under a path prefix) fail in a
//! chosen way before reaching their endpoint (§10 item 14).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use http::{Response, StatusCode};

use super::wire::{ApiError, Body, text_response};

/// How an injected failure answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `429 Rate limit reached, try again later` (server request limits).
    Status429,
    /// The per-client connection limit's raw `429` (`Connection: close`,
    /// no Consul headers); the connection is closed after it.
    RawConnectionLimit429,
    /// `403 ACL not found`.
    Status403AclNotFound,
    /// `403 Permission denied`.
    Status403PermissionDenied,
    /// `500 No cluster leader`.
    Status500NoLeader,
    /// Answer normally, this much later.
    Delay(Duration),
    /// Close the connection without answering.
    Disconnect,
    /// Answer a read as if nothing existed (`[]`, `{}`, KV `404`) at the
    /// real index, with this `X-Consul-KnownLeader`: the empty answers
    /// consul-template renders (#1131, #1713).
    Empty { known_leader: bool },
}

pub const CONNECTION_LIMIT_BODY: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls\n";

/// The bytes Consul writes before closing an over-limit connection.
pub fn raw_connection_limit_bytes() -> Vec<u8> {
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{CONNECTION_LIMIT_BODY}",
        CONNECTION_LIMIT_BODY.len()
    )
    .into_bytes()
}

/// The same `429` as an HTTP response on an open connection.
pub fn connection_limit_response() -> Response<Body> {
    let mut response = text_response(
        StatusCode::TOO_MANY_REQUESTS,
        "text/plain",
        CONNECTION_LIMIT_BODY,
    );
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What the router does with a request that drew a fault.
pub enum Action {
    /// Serve the request normally after this pause.
    Delay(Duration),
    Disconnect,
    /// Answer with [`connection_limit_response`] and close.
    ConnectionLimit,
    /// Answer with this Consul error.
    Fail(ApiError),
    /// Serve the request, showing an empty result.
    Empty {
        known_leader: bool,
    },
}

impl Fault {
    pub fn action(&self) -> Action {
        match self {
            Self::Status429 => Action::Fail(ApiError::with_status(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached, try again later",
            )),
            Self::RawConnectionLimit429 => Action::ConnectionLimit,
            Self::Status403AclNotFound => Action::Fail(ApiError::acl_not_found()),
            Self::Status403PermissionDenied => {
                Action::Fail(ApiError::forbidden("Permission denied"))
            }
            Self::Status500NoLeader => Action::Fail(ApiError::no_leader()),
            Self::Delay(delay) => Action::Delay(*delay),
            Self::Disconnect => Action::Disconnect,
            Self::Empty { known_leader } => Action::Empty {
                known_leader: *known_leader,
            },
        }
    }
}

#[derive(Debug)]
struct Pending {
    path_prefix: String,
    remaining: usize,
    fault: Fault,
}

/// Faults waiting for requests, first queued first used.
#[derive(Debug, Default)]
pub struct FaultQueue {
    pending: Mutex<Vec<Pending>>,
}

impl FaultQueue {
    pub fn push(&self, path_prefix: &str, times: usize, fault: Fault) {
        if times == 0 {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Pending {
                path_prefix: path_prefix.to_string(),
                remaining: times,
                fault,
            });
    }

    /// The fault this request gets, if any (and one use of it spent).
    pub fn take(&self, path: &str) -> Option<Fault> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let position = pending
            .iter()
            .position(|p| path.starts_with(&p.path_prefix))?;
        let entry = &mut pending[position];
        entry.remaining -= 1;
        let fault = entry.fault.clone();
        if entry.remaining == 0 {
            pending.remove(position);
        }
        Some(fault)
    }
}
