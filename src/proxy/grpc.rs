//! What the HTTP proxy knows of gRPC: which requests are gRPC calls, their
//! deadline (`grpc-timeout`), and the statuses Switchyard answers with when
//! it must fail a call itself.
//!
//! gRPC is HTTP/2 with a body of length-prefixed messages and a status in
//! the trailers, so the proxy forwards it like any other request; three
//! things differ (see `proxy::http`):
//!
//! - a call that Switchyard fails (no endpoint, failed connect, timeout)
//!   gets a *trailers-only* response, HTTP 200 with `grpc-status` and
//!   `grpc-message` in one HEADERS frame that ends the stream, which every
//!   gRPC client reads as a status (a `502` page is an `UNAVAILABLE` with a
//!   garbled message at best);
//! - the upstream wait is bounded by the call's deadline as well as by the
//!   backend's request timeout, and a response still streaming at the
//!   deadline is ended with `DEADLINE_EXCEEDED` trailers (`proxy::body`),
//!   which resets the upstream stream;
//! - an upstream stream reset before the response head becomes the status
//!   the gRPC spec maps its reason to (`REFUSED_STREAM` is `UNAVAILABLE`,
//!   `CANCEL` is `CANCELLED`, …), as the client would have read it had it
//!   been connected directly. Resets after the head are passed on as
//!   resets, with their reason, by hyper.
//!
//! Spec: <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::error_chain::sources;

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
static APPLICATION_GRPC_WEB: HeaderValue = HeaderValue::from_static("application/grpc-web");

/// The gRPC status codes Switchyard answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Cancelled = 1,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Cancelled => "1",
            Self::DeadlineExceeded => "4",
            Self::PermissionDenied => "7",
            Self::ResourceExhausted => "8",
            Self::Unimplemented => "12",
            Self::Internal => "13",
            Self::Unavailable => "14",
        })
    }
}

/// A gRPC call, as far as the proxy cares: 8 bytes, as it is carried
/// through the forwarding future of every request (as an `Option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcCall {
    /// `grpc-timeout` in whole milliseconds (rounded up), `u32::MAX`
    /// without one (or past ~49 days, which is the same in practice).
    timeout_ms: u32,
    /// gRPC-Web (`application/grpc-web*`): its trailers travel in the body,
    /// so the proxy never adds trailers of its own to it.
    web: bool,
}

impl GrpcCall {
    /// The call `req` is, if it is one: a POST whose content type is
    /// `application/grpc`, `application/grpc+<codec>` or gRPC-Web.
    #[inline]
    pub fn of<B>(req: &Request<B>) -> Option<Self> {
        // Most requests are not POSTs: one comparison, no header lookup.
        if req.method() != Method::POST {
            return None;
        }
        let web = kind(req.headers().get(header::CONTENT_TYPE)?.as_bytes())?;
        let timeout_ms = req
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|v| parse_timeout(v.as_bytes()))
            .map_or(u32::MAX, |t| {
                u32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
            });
        Some(Self { timeout_ms, web })
    }

    /// The call's deadline, for a request that arrived at `started`.
    pub fn deadline(self, started: Instant) -> Option<Instant> {
        (self.timeout_ms != u32::MAX)
            .then(|| started + Duration::from_millis(u64::from(self.timeout_ms)))
    }

    /// Whether the proxy may end this call's response with trailers of its
    /// own (native gRPC over HTTP/2 or HTTP/1.1 with trailers).
    pub fn takes_trailers(self) -> bool {
        !self.web
    }

    /// Native gRPC (not gRPC-Web), which only HTTP/2 servers speak.
    pub fn needs_http2(self) -> bool {
        !self.web
    }

    /// A trailers-only response with `code` and `message`: HTTP 200, the
    /// gRPC content type, and no body, so hyper ends the stream with the
    /// HEADERS frame. `http_status` is what a plain HTTP client would have
    /// got; it is kept in the response's extensions for the request
    /// metrics (see [`counted_status`]).
    pub fn failure<B>(
        self,
        code: Code,
        message: &'static str,
        http_status: StatusCode,
        body: B,
    ) -> Response<B> {
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        let content_type = if self.web {
            &APPLICATION_GRPC_WEB
        } else {
            &APPLICATION_GRPC
        };
        headers.insert(header::CONTENT_TYPE, content_type.clone());
        headers.insert(GRPC_STATUS.clone(), code.header());
        headers.insert(GRPC_MESSAGE.clone(), message_value(message));
        response.extensions_mut().insert(StoodFor(http_status));
        response
    }
}

/// `Some(web)` for a gRPC content type, `None` for any other.
fn kind(content_type: &[u8]) -> Option<bool> {
    const PREFIX: &[u8] = b"application/grpc";
    let head = content_type.get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &content_type[PREFIX.len()..];
    match rest.first() {
        None | Some(b'+' | b';') => Some(false),
        Some(b'-') if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"-web") => Some(true),
        // `application/grpcfoo`: some other type.
        Some(_) => None,
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`). Anything else is no deadline, left for the server to judge.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The trailers that end a response still streaming at its deadline.
pub fn deadline_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert(GRPC_STATUS.clone(), Code::DeadlineExceeded.header());
    trailers.insert(GRPC_MESSAGE.clone(), message_value(DEADLINE_MESSAGE));
    trailers
}

/// The message of a call Switchyard ended at its `grpc-timeout`.
pub const DEADLINE_MESSAGE: &str = "deadline (grpc-timeout) exceeded during the response";

/// A `grpc-message` value. The messages are ours and plain printable
/// ASCII without `%`, which the spec's percent-encoding leaves as they are
/// (`messages_need_no_percent_encoding` checks each).
fn message_value(message: &'static str) -> HeaderValue {
    HeaderValue::from_static(message)
}

/// The HTTP status a gRPC failure stands for (503 for `UNAVAILABLE` with
/// no endpoint, …), kept with the response so the request metrics count
/// Switchyard's failures by class even though the response is a 200.
#[derive(Debug, Clone, Copy)]
struct StoodFor(StatusCode);

/// The status to count a response under: its own, or the HTTP status a
/// gRPC failure of Switchyard's stands for.
#[inline]
pub fn counted_status<B>(response: &Response<B>) -> StatusCode {
    response
        .extensions()
        .get::<StoodFor>()
        .map_or(response.status(), |s| s.0)
}

/// Whether a server's trailers-only answer (`grpc-status` in the response
/// head, as servers send an error before any message) is a server-side
/// failure for passive ejection. The codes are those Envoy's outlier
/// detection maps to a 5xx (`Grpc::Utility::grpcToHttpStatus`): UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS;
/// the rest (NOT_FOUND, PERMISSION_DENIED, …) are the caller's problem.
/// A status in trailers after messages is not looked at: that would mean
/// watching every body to its end.
pub fn head_status_is_server_error(headers: &HeaderMap) -> bool {
    matches!(
        headers.get(&GRPC_STATUS).map(HeaderValue::as_bytes),
        Some(b"2" | b"4" | b"12" | b"13" | b"14" | b"15")
    )
}

/// The status for an upstream exchange that broke before its response
/// head: a stream reset by the server maps as the gRPC spec says
/// (§Errors); anything else (a closed connection, GOAWAY) is
/// `UNAVAILABLE`.
pub fn upstream_failure(error: &(dyn std::error::Error + 'static)) -> Code {
    let reset = sources(error)
        .filter_map(|e| e.downcast_ref::<h2::Error>())
        .find(|e| !e.is_go_away() && !e.is_io())
        .and_then(h2::Error::reason);
    match reset {
        Some(h2::Reason::REFUSED_STREAM) | None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_grpc_statuses_in_the_head_are_failures() {
        let head = |status: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(s) = status {
                h.insert(GRPC_STATUS.clone(), HeaderValue::from_static(s));
            }
            head_status_is_server_error(&h)
        };
        for failure in ["2", "4", "12", "13", "14", "15"] {
            assert!(head(Some(failure)), "{failure}");
        }
        for fine in ["0", "1", "3", "5", "7", "8", "9", "16", "140", "x"] {
            assert!(!head(Some(fine)), "{fine}");
        }
        assert!(!head(None));
    }

    fn call(content_type: &str, timeout: Option<&str>) -> Option<GrpcCall> {
        let mut req = Request::post("/pkg.Svc/Method")
            .header(header::CONTENT_TYPE, content_type)
            .body(())
            .expect("request");
        if let Some(t) = timeout {
            req.headers_mut().insert(
                GRPC_TIMEOUT.clone(),
                HeaderValue::from_str(t).expect("value"),
            );
        }
        GrpcCall::of(&req)
    }

    #[test]
    fn grpc_content_types_are_told_from_others() {
        for (ct, expected) in [
            ("application/grpc", Some(false)),
            ("application/grpc+proto", Some(false)),
            ("application/grpc+json", Some(false)),
            ("Application/GRPC; charset=utf-8", Some(false)),
            ("application/grpc-web", Some(true)),
            ("application/grpc-web+proto", Some(true)),
            ("application/grpc-web-text", Some(true)),
            ("application/grpcx", None),
            ("application/grpc-foo", None),
            ("application/json", None),
            ("application/grp", None),
            ("", None),
        ] {
            assert_eq!(call(ct, None).map(|c| c.web), expected, "{ct:?}");
        }
        let get = Request::get("/")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(())
            .expect("request");
        assert_eq!(GrpcCall::of(&get), None, "only POSTs are calls");
    }

    #[test]
    fn grpc_timeout_follows_the_spec() {
        for (value, expected) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("30S", Some(Duration::from_secs(30))),
            ("250m", Some(Duration::from_millis(250))),
            ("30000000u", Some(Duration::from_secs(30))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("0m", Some(Duration::ZERO)),
            ("123456789m", None), // nine digits
            ("10", None),
            ("m", None),
            ("10s", None),
            ("-5S", None),
            ("", None),
        ] {
            assert_eq!(parse_timeout(value.as_bytes()), expected, "{value:?}");
        }
    }

    #[test]
    fn deadlines_round_up_to_the_millisecond() {
        let started = Instant::now();
        let at = |t| call("application/grpc", t).and_then(|c| c.deadline(started));
        assert_eq!(at(None), None);
        assert_eq!(at(Some("bad")), None);
        assert_eq!(at(Some("1500u")), Some(started + Duration::from_millis(2)));
        assert_eq!(at(Some("3S")), Some(started + Duration::from_secs(3)));
        // Longer than u32 milliseconds: as good as none.
        assert_eq!(at(Some("99999999H")), None);
    }

    #[test]
    fn a_failure_is_a_trailers_only_response() {
        let c = call("application/grpc+proto", None).expect("call");
        let r = c.failure(
            Code::Unavailable,
            "no server available",
            StatusCode::SERVICE_UNAVAILABLE,
            (),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no server available");
        assert_eq!(counted_status(&r), StatusCode::SERVICE_UNAVAILABLE);
        let web = call("application/grpc-web-text", None).expect("call");
        let r = web.failure(Code::Internal, "x", StatusCode::BAD_GATEWAY, ());
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc-web");
        assert!(!web.takes_trailers());
        assert_eq!(counted_status(&Response::new(())), StatusCode::OK);
    }

    #[test]
    fn resets_map_as_the_spec_says() {
        #[derive(Debug, thiserror::Error)]
        #[error("upstream request failed")]
        struct Wrapped(#[source] h2::Error);
        for (reason, code) in [
            (h2::Reason::REFUSED_STREAM, Code::Unavailable),
            (h2::Reason::CANCEL, Code::Cancelled),
            (h2::Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (h2::Reason::INADEQUATE_SECURITY, Code::PermissionDenied),
            (h2::Reason::INTERNAL_ERROR, Code::Internal),
            (h2::Reason::PROTOCOL_ERROR, Code::Internal),
        ] {
            let error = Wrapped(h2::Error::from(reason));
            assert_eq!(upstream_failure(&error), code, "{reason:?}");
        }
        let io = std::io::Error::other("connection closed");
        assert_eq!(upstream_failure(&io), Code::Unavailable);
    }

    #[test]
    fn messages_need_no_percent_encoding() {
        // Every message Switchyard sends; `proxy::http` uses these.
        for message in crate::proxy::http::grpc_messages().chain([DEADLINE_MESSAGE]) {
            assert!(
                message
                    .bytes()
                    .all(|b| (0x20..=0x7e).contains(&b) && b != b'%'),
                "{message:?}"
            );
        }
    }
}
