//! One access log entry as the data path fills it: a fixed set of fields
//! and one string buffer, so a record costs two allocations at most and
//! the writer does all the formatting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::AccessLog;

/// How a request or connection ended; HAProxy's termination state and
/// Envoy's response flags are the models (see [`Termination::haproxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Answered in full (whatever the status).
    Ok,
    /// The client went away before the response head was sent.
    ClientClosedEarly,
    /// The client went away while the response body was being sent.
    ClientClosed,
    /// The client stopped sending the request body (`client_stall`).
    ClientTimeout,
    /// The request head was over `max_header_bytes` (431).
    HeadTooLarge,
    /// The request body was over `max_body_bytes` (413).
    BodyTooLarge,
    /// The request could not be parsed or forwarded (400).
    BadRequest,
    /// No route matched (404), or a gateway route named no known service.
    NoRoute,
    /// The request's host is not the TLS connection's SNI name (421).
    Misdirected,
    /// The backend had no usable endpoint (503).
    NoEndpoint,
    /// Over the listener's `max_connections` past `queue_timeout` (503).
    QueueTimeout,
    /// Every connect attempt failed (502), TLS to the server included.
    ConnectFailed,
    /// The server closed or broke the exchange before its response head.
    UpstreamReset,
    /// No response head within the backend's request timeout (504).
    UpstreamTimeout,
    /// The server broke the connection during the response body.
    UpstreamResetBody,
    /// The server stopped sending the response body (`upstream_stall`).
    UpstreamStalled,
    /// Cut by the listener's `drain_timeout` or the shutdown grace.
    DrainTimeout,
}

impl Termination {
    /// The word the JSON format and the `%termination` field write.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientClosedEarly | Self::ClientClosed => "client_closed",
            Self::ClientTimeout => "client_timeout",
            Self::HeadTooLarge => "head_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::NoRoute => "no_route",
            Self::Misdirected => "misdirected",
            Self::NoEndpoint => "no_endpoint",
            Self::QueueTimeout => "queue_timeout",
            Self::ConnectFailed => "connect_failed",
            Self::UpstreamReset | Self::UpstreamResetBody => "upstream_reset",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamStalled => "upstream_stalled",
            Self::DrainTimeout => "drain_timeout",
        }
    }

    /// HAProxy's two-character termination state (`%tsc`): who ended it
    /// (C client, S server, P proxy, s server timeout, c client timeout,
    /// K killed) and in which phase (H headers, D data, C connect, R
    /// request, Q queue).
    pub fn haproxy(self) -> &'static str {
        match self {
            Self::Ok => "--",
            Self::ClientClosedEarly => "CH",
            Self::ClientClosed => "CD",
            Self::ClientTimeout => "cD",
            Self::HeadTooLarge | Self::BodyTooLarge | Self::BadRequest => "PR",
            Self::NoRoute | Self::Misdirected => "PR",
            Self::NoEndpoint => "SC",
            Self::QueueTimeout => "sQ",
            Self::ConnectFailed => "SC",
            Self::UpstreamReset => "SH",
            Self::UpstreamTimeout => "sH",
            Self::UpstreamResetBody => "SD",
            Self::UpstreamStalled => "sD",
            Self::DrainTimeout => "KD",
        }
    }
}

/// The protocol of a logged request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http10,
    Http11,
    Http2,
    Tcp,
}

impl Protocol {
    pub fn of(version: http::Version) -> Self {
        match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => Self::Http10,
            http::Version::HTTP_2 => Self::Http2,
            _ => Self::Http11,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2.0",
            Self::Tcp => "TCP",
        }
    }
}

/// The text fields of a record, in [`Record::texts`], in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    Method,
    Host,
    Path,
    RequestId,
    TraceId,
    UserAgent,
    Referer,
    Sni,
}

const TEXTS: usize = 8;

/// Text fields packed in one string: one allocation for all of them.
#[derive(Debug, Default)]
pub struct Texts {
    buf: String,
    /// End offset of each field in `buf`, by [`Text`] index.
    ends: [u32; TEXTS],
    /// Which fields are set (an empty field is not a missing one).
    set: u8,
}

impl Texts {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: String::with_capacity(n),
            ..Self::default()
        }
    }

    /// Room for `n` more bytes of text.
    pub fn reserve(&mut self, n: usize) {
        self.buf.reserve(n);
    }

    /// Empty again, keeping the buffer for the next record.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends = [0; TEXTS];
        self.set = 0;
    }

    /// Sets `field`; fields must be set in [`Text`] order, each once.
    pub fn push(&mut self, field: Text, value: &str) {
        let i = field as usize;
        // Lines are one per record: a field may not break them, and the
        // writer escapes nothing in the plain formats.
        self.buf.extend(
            value
                .chars()
                .map(|c| if c.is_control() || c == '"' { '?' } else { c }),
        );
        let end = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        for e in &mut self.ends[i..] {
            *e = end;
        }
        self.set |= 1 << i;
    }

    pub fn get(&self, field: Text) -> Option<&str> {
        let i = field as usize;
        if self.set & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.buf.get(start..self.ends[i] as usize)
    }
}

/// One access log entry (see the module doc).
#[derive(Debug)]
pub struct Record {
    /// Where and how it is written.
    pub log: Arc<AccessLog>,
    /// Wall-clock time the request (or connection) started.
    pub time: SystemTime,
    pub client: SocketAddr,
    pub protocol: Protocol,
    pub texts: Texts,
    /// The status sent to the client; `None` for TCP, and 499 (nginx's
    /// convention) when the client left before any response.
    pub status: Option<u16>,
    /// Request body bytes from the client (TCP: bytes from the client).
    pub bytes_in: u64,
    /// Response body bytes to the client (TCP: bytes to the client).
    pub bytes_out: u64,
    pub backend: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts made (0 when none was: no route, no endpoint).
    pub attempts: u32,
    /// Time to connect to the endpoint of the answering attempt; `None`
    /// when it reused a pooled connection.
    pub connect: Option<Duration>,
    /// Time from the start to the response head from upstream.
    pub first_byte: Option<Duration>,
    pub duration: Duration,
    pub termination: Termination,
    /// "1.2" or "1.3" when the client connected over TLS.
    pub tls_version: Option<&'static str>,
}

impl Record {
    pub fn new(log: Arc<AccessLog>, client: SocketAddr, protocol: Protocol) -> Self {
        Self {
            log,
            time: SystemTime::now(),
            client,
            protocol,
            texts: Texts::default(),
            status: None,
            bytes_in: 0,
            bytes_out: 0,
            backend: None,
            endpoint: None,
            attempts: 0,
            connect: None,
            first_byte: None,
            duration: Duration::ZERO,
            termination: Termination::Ok,
            tls_version: None,
        }
    }

    /// Makes a used record new again, keeping its text buffer.
    pub fn reset(&mut self, log: Arc<AccessLog>, client: SocketAddr, protocol: Protocol) {
        let mut texts = std::mem::take(&mut self.texts);
        texts.clear();
        *self = Self::new(log, client, protocol);
        self.texts = texts;
    }

    pub fn text(&self, field: Text) -> Option<&str> {
        self.texts.get(field)
    }

    /// Errors are always written, whatever `sample` and `only` say: a 5xx,
    /// or anything that did not end normally.
    pub fn is_error(&self) -> bool {
        self.termination != Termination::Ok || self.status.is_some_and(|s| s >= 500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_keep_each_field_apart_and_tell_unset_from_empty() {
        let mut t = Texts::default();
        t.push(Text::Method, "GET");
        t.push(Text::Path, "/a?b");
        t.push(Text::RequestId, "");
        t.push(Text::Sni, "example.com");
        assert_eq!(t.get(Text::Method), Some("GET"));
        assert_eq!(t.get(Text::Host), None);
        assert_eq!(t.get(Text::Path), Some("/a?b"));
        assert_eq!(t.get(Text::RequestId), Some(""));
        assert_eq!(t.get(Text::TraceId), None);
        assert_eq!(t.get(Text::Sni), Some("example.com"));
    }

    #[test]
    fn texts_never_carry_a_line_break_or_a_quote() {
        let mut t = Texts::default();
        t.push(Text::Method, "GET");
        t.push(Text::UserAgent, "evil\n\"agent\"\r");
        assert_eq!(t.get(Text::UserAgent), Some("evil??agent??"));
    }
}
