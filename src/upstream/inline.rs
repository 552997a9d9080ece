//! Upstream HTTP/1.1 connections that each request drives itself, through a
//! small HTTP/1.1 client written for the proxy's hot path.
//!
//! Most requests a proxy sees have no body. For those, hyper's client
//! connection was the most expensive part of a proxied request: each request
//! went through a channel and a oneshot to the connection's dispatcher, and
//! every response on a kept-alive connection got a fresh 8 KiB read buffer
//! (the previous response's head still referenced the old one), which at
//! hundreds of connections meant cold memory on every request. Profiled, it
//! was 42 % of the user-space instructions per request. Written by hand
//! here, with `httparse` (the parser hyper uses) for the heads:
//!
//! - the request future writes the head and reads the response head
//!   itself; the response body reads the rest from the same connection, so
//!   there is no task, channel or wake-up between the two sides;
//! - one read buffer per connection, reused from its start for every
//!   exchange once the previous response has been forwarded; response
//!   header values are slices of it, not copies;
//! - response framing per RFC 9112 §6.3: no body for HEAD, 1xx, 204 and
//!   304; chunked (trailers forwarded); Content-Length; else until close.
//!   1xx interim responses are skipped (the request has no body to wait
//!   for). A connection is kept only after a complete, framed response
//!   that did not ask to close it.
//!
//! Requests with a body, upgrades and HTTP/2 upstreams use hyper's client
//! (`upstream.rs`); its full-duplex body handling is not repeated here.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_utils::atomic::AtomicCell;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::connect::{UpstreamError, connect_tcp};
use crate::config::UpstreamTimeouts;
use crate::headers;
use crate::upstream::state::EndpointState;

/// Distinct endpoints whose connections one client connection keeps.
const INLINE_PER_CLIENT: usize = 4;
/// What a read asks room for; also the buffer's size after a reclaim.
const READ_SIZE: usize = 8 * 1024;
/// The largest read asked for while streaming a long body.
const MAX_READ_SIZE: usize = 64 * 1024;
/// Response heads (and chunked trailers) longer than this are refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields in one response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// A chunk-size line longer than this is malformed (HAProxy and nginx
/// accept far shorter ones).
const MAX_CHUNK_LINE: usize = 4096;

/// Why an exchange on an inline connection failed after it started.
#[derive(Debug, thiserror::Error)]
pub enum InlineError {
    #[error("writing the request upstream")]
    Write(#[source] io::Error),
    #[error("reading the response")]
    Read(#[source] io::Error),
    #[error("the server closed the connection before a complete response head")]
    ClosedBeforeHead,
    #[error("the server closed the connection before the body ended")]
    ClosedInBody,
    #[error("invalid response head")]
    Parse(#[source] httparse::Error),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("no response head before the request timeout")]
    TimedOut,
}

impl InlineError {
    /// Nothing of the response arrived: on a reused connection the server
    /// most likely closed it just as the request went out.
    fn no_response(&self) -> bool {
        matches!(
            self,
            Self::Write(_) | Self::Read(_) | Self::ClosedBeforeHead
        )
    }
}

/// Why [`InlineConn::exchange`] got no response head.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection: nothing was sent.
    Connect(UpstreamError),
    /// The request may have reached the server.
    Send(InlineError),
}

/// An upstream HTTP/1.1 connection owned by whichever request uses it.
pub struct InlineConn {
    stream: TcpStream,
    /// Bytes read from the server and not handed on yet.
    buf: BytesMut,
    /// The request head being written; kept for its capacity.
    head: Vec<u8>,
    idle_since: Instant,
    /// The backend's `idle` timeout: idle longer, the connection is closed.
    max_idle: Duration,
    /// Fires at the request timeout of the exchange in progress. Registered
    /// with tokio's timer once, then moved to each request's (later)
    /// deadline, which takes no lock: a request costs no timer registration
    /// or removal. An expired one is re-registered on the next exchange.
    timer: Option<Pin<Box<Sleep>>>,
}

/// How the rest of a response body arrives.
#[derive(Debug)]
pub enum Framing {
    /// Nothing (more) to read.
    Done,
    /// This many bytes.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the server closes.
    UntilClose,
}

/// Where a chunked body's decoder is.
#[derive(Debug)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// A response head from an inline connection; its body follows on `conn`.
pub struct InlineResponse {
    pub head: Response<()>,
    pub body: InlineBody,
}

/// The body of a response read from an inline connection, which it owns
/// until the body ends.
pub struct InlineBody {
    conn: Option<Box<InlineConn>>,
    framing: Framing,
    /// The server allows another request after this response.
    keep_alive: bool,
}

impl InlineConn {
    pub async fn connect(
        addr: std::net::SocketAddr,
        timeouts: UpstreamTimeouts,
    ) -> Result<Box<Self>, UpstreamError> {
        let stream = connect_tcp(addr, timeouts.connect).await?;
        Ok(Box::new(Self {
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(256),
            idle_since: Instant::now(),
            max_idle: timeouts.idle,
            timer: None,
        }))
    }

    /// Sets the deadline of the exchange about to start.
    fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Polls `io`; when it is pending, fails once the deadline has passed.
    fn poll_until_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<Result<T, InlineError>>,
    ) -> Poll<Result<T, InlineError>> {
        if let Poll::Ready(result) = io(self, cx) {
            return Poll::Ready(result);
        }
        match self.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(InlineError::TimedOut)),
            _ => Poll::Pending,
        }
    }

    /// Idle no longer than its backend allows.
    fn fresh_at(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.idle_since) <= self.max_idle
    }

    /// Fresh, and still open.
    fn reusable_at(&mut self, now: Instant) -> bool {
        self.fresh_at(now) && self.still_open()
    }

    /// Whether an idle connection is still usable: the server has neither
    /// closed it nor sent anything unasked. Costs no system call unless the
    /// socket became readable while idle.
    fn still_open(&mut self) -> bool {
        self.buf.clear();
        self.buf.reserve(READ_SIZE);
        match self.stream.try_read_buf(&mut self.buf) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false, // closed (0) or unsolicited bytes
        }
    }

    /// Sends a body-less request and reads the response head, on `cached`
    /// (a connection from [`InlineCache::take`]) or on a new connection,
    /// failing with [`InlineError::TimedOut`] if the head is not in by
    /// `deadline`. When a reused connection turns out closed without a byte
    /// of answer, an idempotent request is sent once more on a fresh
    /// connection.
    pub async fn exchange<B>(
        cached: Option<Box<InlineConn>>,
        addr: std::net::SocketAddr,
        timeouts: UpstreamTimeouts,
        deadline: Instant,
        req: &Request<B>,
        extra: &[Option<(&HeaderName, &HeaderValue)>],
    ) -> Result<InlineResponse, ExchangeError> {
        let mut cached = cached.and_then(|mut c| c.still_open().then_some(c));
        let is_head = req.method() == Method::HEAD;
        loop {
            let reused = cached.is_some();
            let mut conn = match cached.take() {
                Some(conn) => conn,
                // Boxed: connecting is rare, and its future would otherwise
                // enlarge every request's.
                None => Box::pin(Self::connect(addr, timeouts))
                    .await
                    .map_err(ExchangeError::Connect)?,
            };
            encode_head(&mut conn.head, req, extra);
            conn.arm(deadline);
            match conn.send_and_read_head(is_head).await {
                Ok((head, framing, keep_alive)) => {
                    return Ok(InlineResponse {
                        head,
                        body: InlineBody {
                            conn: Some(conn),
                            framing,
                            keep_alive,
                        },
                    });
                }
                Err(e) if reused && e.no_response() && req.method().is_idempotent() => {
                    tracing::debug!(error = %e, endpoint.addr = %addr, "Reused upstream connection closed; sending again on a new one");
                }
                Err(e) => return Err(ExchangeError::Send(e)),
            }
        }
    }

    async fn send_and_read_head(
        &mut self,
        is_head: bool,
    ) -> Result<(Response<()>, Framing, bool), InlineError> {
        let mut written = 0;
        while written < self.head.len() {
            written += poll_fn(|cx| {
                self.poll_until_deadline(cx, |conn, cx| conn.poll_write_head(cx, written))
            })
            .await?;
        }
        self.buf.clear();
        loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = parse_head(&mut self.buf, is_head)? {
                    return Ok(parsed);
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(InlineError::HeadTooLarge);
                }
            }
            let read = poll_fn(|cx| {
                self.poll_until_deadline(cx, |conn, cx| conn.poll_fill(cx, READ_SIZE))
            });
            if read.await? == 0 {
                return Err(InlineError::ClosedBeforeHead);
            }
        }
    }

    /// Writes what is left of the request head from `from`.
    fn poll_write_head(
        &mut self,
        cx: &mut Context<'_>,
        from: usize,
    ) -> Poll<Result<usize, InlineError>> {
        match ready!(Pin::new(&mut self.stream).poll_write(cx, &self.head[from..])) {
            Ok(0) => Poll::Ready(Err(InlineError::Write(io::ErrorKind::WriteZero.into()))),
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(InlineError::Write(e))),
        }
    }

    /// Reads what the server has sent into the buffer; `0` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, InlineError>> {
        // Empty and no longer shared with a forwarded response, the buffer
        // is reused from its start: its first lines are the ones in cache.
        if self.buf.capacity() - self.buf.len() < want.min(READ_SIZE) {
            self.buf.reserve(want);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf).map_err(InlineError::Read)
    }
}

/// Writes the request line and header fields, then `extra` fields (the
/// request has no body, so no framing header is added).
fn encode_head<B>(
    out: &mut Vec<u8>,
    req: &Request<B>,
    extra: &[Option<(&HeaderName, &HeaderValue)>],
) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers().iter().chain(extra.iter().flatten().copied()) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where one header field sits in the head's bytes (offset, length).
#[derive(Clone, Copy, Default)]
struct FieldAt {
    name: (u32, u32),
    value: (u32, u32),
}

impl FieldAt {
    /// Heads are at most [`MAX_HEAD_BYTES`], so offsets fit in `u32`.
    fn of(base: usize, h: &httparse::Header<'_>) -> Self {
        let span = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        Self {
            name: span(h.name.as_bytes()),
            value: span(h.value),
        }
    }
}

/// Header storage for httparse, left uninitialised until parsed into.
fn header_storage<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Parses a complete response head off the front of `buf`, skipping 1xx
/// interim responses; `None` when more bytes are needed.
fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, InlineError> {
    loop {
        let mut storage = header_storage();
        let mut fields = [FieldAt::default(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut parsed, buf, &mut storage)
            .map_err(InlineError::Parse)?
        {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let code = parsed.code.unwrap_or(0);
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let status = StatusCode::from_u16(code).map_err(|_| InlineError::Invalid("status code"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(InlineError::Invalid(
                    "101 to a request that asked no upgrade",
                ));
            }
            buf.advance(len);
            continue;
        }
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        for (at, h) in fields.iter_mut().zip(parsed.headers.iter()) {
            *at = FieldAt::of(base, h);
        }
        let head = buf.split_to(len).freeze();
        let mut hop = HopByHop::default();
        let mut headers = HeaderMap::with_capacity(count);
        fill_header_map(&mut headers, &head, &fields[..count], Some(&mut hop))?;
        let (framing, keep_alive) = framing_of(status, version, &headers, &hop, is_head)?;
        if matches!(framing, Framing::Chunked(_)) {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3);
            // a stale length must not reach the client.
            headers.remove(header::CONTENT_LENGTH);
        }
        for name in hop.named_by_connection {
            headers.remove(name);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some((response, framing, keep_alive)));
    }
}

/// What a response head said in its hop-by-hop fields, which are read
/// here and never copied into the header map that is forwarded.
#[derive(Default)]
struct HopByHop {
    close: bool,
    keep_alive: bool,
    /// The last Transfer-Encoding field.
    transfer_encoding: Option<HeaderValue>,
    /// Fields the Connection header names (rare; no allocation otherwise).
    named_by_connection: Vec<HeaderName>,
}

impl HopByHop {
    fn read_connection(&mut self, value: &HeaderValue) {
        for token in headers::elements(value) {
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                self.keep_alive = true;
            }
        }
        self.named_by_connection
            .extend(headers::named_by_connection(value));
    }
}

/// Appends `fields` to `headers`, values sharing `head`'s bytes. With
/// `hop`, hop-by-hop fields are recorded there instead of appended.
fn fill_header_map(
    headers: &mut HeaderMap,
    head: &Bytes,
    fields: &[FieldAt],
    mut hop: Option<&mut HopByHop>,
) -> Result<(), InlineError> {
    let range = |(at, len): (u32, u32)| at as usize..(at + len) as usize;
    for at in fields {
        let name = HeaderName::from_bytes(&head[range(at.name)])
            .map_err(|_| InlineError::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(range(at.value)))
            .map_err(|_| InlineError::Invalid("header value"))?;
        if let Some(hop) = hop.as_deref_mut()
            && headers::is_hop_by_hop(&name)
        {
            if name == header::CONNECTION {
                hop.read_connection(&value);
            } else if name == header::TRANSFER_ENCODING {
                hop.transfer_encoding = Some(value);
            }
            continue;
        }
        headers.append(name, value);
    }
    Ok(())
}

/// How the body is delimited (RFC 9112 §6.3) and whether the connection
/// may carry another request after it.
fn framing_of(
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
    hop: &HopByHop,
    is_head: bool,
) -> Result<(Framing, bool), InlineError> {
    let keep_alive = !hop.close && (version == Version::HTTP_11 || hop.keep_alive);
    if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Done, keep_alive));
    }
    if let Some(last) = &hop.transfer_encoding {
        let chunked = headers::elements(last)
            .next_back()
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            (Framing::Chunked(Chunk::Size), keep_alive)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InlineError::Invalid("Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| InlineError::Invalid("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(InlineError::Invalid("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, keep_alive),
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::UntilClose, false),
    })
}

impl InlineBody {
    /// The body is over, and its connection may be given to the next
    /// request: all of a framed body was read and nothing more arrived.
    pub fn take_reusable(&mut self) -> Option<Box<InlineConn>> {
        let reusable = matches!(self.framing, Framing::Done)
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if reusable { self.conn.take() } else { None }
    }

    pub fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    pub fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Done => http_body::SizeHint::with_exact(0),
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InlineError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match &mut self.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    if !conn.buf.is_empty() {
                        let data = split_data(&mut conn.buf, remaining);
                        if *remaining == 0 {
                            self.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = usize::try_from(*remaining)
                        .unwrap_or(MAX_READ_SIZE)
                        .min(MAX_READ_SIZE);
                    if ready!(conn.poll_fill(cx, want))? == 0 {
                        return Poll::Ready(Some(Err(InlineError::ClosedInBody)));
                    }
                }
                Framing::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    if ready!(conn.poll_fill(cx, MAX_READ_SIZE))? == 0 {
                        self.framing = Framing::Done;
                        self.keep_alive = false;
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(chunk) => match chunk_step(chunk, &mut conn.buf)? {
                    ChunkStep::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                    ChunkStep::Continue => {}
                    ChunkStep::End => {
                        self.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    ChunkStep::EndWithTrailers(trailers) => {
                        self.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    ChunkStep::NeedMore => {
                        if ready!(conn.poll_fill(cx, READ_SIZE))? == 0 {
                            return Poll::Ready(Some(Err(InlineError::ClosedInBody)));
                        }
                    }
                },
            }
        }
    }
}

/// Takes up to `remaining` buffered body bytes off the front of `buf`.
fn split_data(buf: &mut BytesMut, remaining: &mut u64) -> Bytes {
    let n = buf
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    *remaining -= n as u64;
    buf.split_to(n).freeze()
}

/// What the chunked decoder did with the buffered bytes.
enum ChunkStep {
    Frame(Frame<Bytes>),
    /// Moved to another state; call again.
    Continue,
    NeedMore,
    End,
    EndWithTrailers(HeaderMap),
}

fn chunk_step(chunk: &mut Chunk, buf: &mut BytesMut) -> Result<ChunkStep, InlineError> {
    const BAD: InlineError = InlineError::Invalid("chunked encoding");
    match chunk {
        Chunk::Size => {
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                return if buf.len() > MAX_CHUNK_LINE {
                    Err(BAD)
                } else {
                    Ok(ChunkStep::NeedMore)
                };
            };
            let line = buf.split_to(end + 1);
            let line = line.strip_suffix(b"\r\n").ok_or(BAD)?;
            // The size, then optional whitespace and `;extensions`, ignored.
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 || digits > 16 {
                return Err(BAD);
            }
            let rest = &line[digits..];
            if !rest.is_empty() && !matches!(rest[0], b';' | b' ' | b'\t') {
                return Err(BAD);
            }
            let size = std::str::from_utf8(&line[..digits])
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(BAD)?;
            *chunk = if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            };
            Ok(ChunkStep::Continue)
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Ok(ChunkStep::NeedMore);
            }
            let data = split_data(buf, remaining);
            if *remaining == 0 {
                *chunk = Chunk::DataEnd;
            }
            Ok(ChunkStep::Frame(Frame::data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(ChunkStep::NeedMore);
            }
            if &buf[..2] != b"\r\n" {
                return Err(BAD);
            }
            buf.advance(2);
            *chunk = Chunk::Size;
            Ok(ChunkStep::Continue)
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(ChunkStep::End);
            }
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut fields = [FieldAt::default(); MAX_HEADERS];
            let (len, count) =
                match httparse::parse_headers(buf, &mut storage).map_err(InlineError::Parse)? {
                    httparse::Status::Complete((len, parsed)) => {
                        let base = buf.as_ptr() as usize;
                        for (at, h) in fields.iter_mut().zip(parsed.iter()) {
                            *at = FieldAt::of(base, h);
                        }
                        (len, parsed.len())
                    }
                    httparse::Status::Partial if buf.len() > MAX_HEAD_BYTES => {
                        return Err(InlineError::HeadTooLarge);
                    }
                    httparse::Status::Partial => return Ok(ChunkStep::NeedMore),
                };
            let block = buf.split_to(len).freeze();
            let mut trailers = HeaderMap::with_capacity(count);
            fill_header_map(&mut trailers, &block, &fields[..count], None)?;
            Ok(if trailers.is_empty() {
                ChunkStep::End
            } else {
                ChunkStep::EndWithTrailers(trailers)
            })
        }
    }
}

/// An idle connection kept by a client connection, with its endpoint.
struct Parked {
    endpoint: Arc<EndpointState>,
    conn: Box<InlineConn>,
}

/// The idle inline connections of one client connection, at most one per
/// endpoint and [`INLINE_PER_CLIENT`] in all; the rest wait in their
/// endpoint's shared pool.
///
/// The whole set is taken out of an atomic cell while a request looks into
/// it and put back after, so there is no lock; a concurrent request (HTTP/2
/// streams) that finds the cell empty uses the endpoint's pool instead.
pub struct InlineCache {
    /// Empty only while a request is looking into it. The Vec is boxed so
    /// the cell holds one pointer, which it can swap without a lock.
    #[allow(clippy::box_collection)]
    set: AtomicCell<Option<Box<Vec<Parked>>>>,
}

impl Default for InlineCache {
    fn default() -> Self {
        Self {
            set: AtomicCell::new(Some(Box::new(Vec::with_capacity(INLINE_PER_CLIENT)))),
        }
    }
}

impl Drop for InlineCache {
    /// The client left; its idle upstream connections go on serving others
    /// through their endpoints' pools instead of being closed.
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            for parked in *set {
                let since = parked.conn.idle_since;
                parked.endpoint.pool.park_inline(parked.conn, since);
            }
        }
    }
}

impl InlineCache {
    /// An idle connection to `endpoint` within its `idle` timeout: this
    /// client connection's own, else one from the endpoint's pool.
    pub fn take(&self, endpoint: &Arc<EndpointState>, now: Instant) -> Option<Box<InlineConn>> {
        if let Some(mut set) = self.set.take() {
            let found = set
                .iter()
                .position(|p| Arc::ptr_eq(&p.endpoint, endpoint))
                .map(|i| set.swap_remove(i));
            self.put_back(set);
            if let Some(parked) = found
                && parked.conn.fresh_at(now)
            {
                return Some(parked.conn);
            }
        }
        endpoint.pool.unpark_inline(now)
    }

    /// Hands the idle connections to their endpoints' pools: the client
    /// went quiet, and other clients may use them meanwhile.
    pub fn release_idle(&self) {
        if let Some(mut set) = self.set.take() {
            for parked in set.drain(..) {
                let since = parked.conn.idle_since;
                parked.endpoint.pool.park_inline(parked.conn, since);
            }
            self.put_back(set);
        }
    }

    /// Keeps a connection whose last exchange completed.
    pub fn put(&self, endpoint: &Arc<EndpointState>, mut conn: Box<InlineConn>, now: Instant) {
        conn.idle_since = now;
        let Some(mut set) = self.set.take() else {
            // A concurrent stream has the set.
            endpoint.pool.park_inline(conn, now);
            return;
        };
        if set.len() < INLINE_PER_CLIENT && !set.iter().any(|p| Arc::ptr_eq(&p.endpoint, endpoint))
        {
            set.push(Parked {
                endpoint: endpoint.clone(),
                conn,
            });
        } else {
            endpoint.pool.park_inline(conn, now);
        }
        self.put_back(set);
    }

    #[allow(clippy::box_collection)]
    fn put_back(&self, set: Box<Vec<Parked>>) {
        // A set stored meanwhile by a concurrent stream: its connections go
        // to their pools rather than being dropped.
        if let Some(other) = self.set.swap(Some(set)) {
            for parked in *other {
                let since = parked.conn.idle_since;
                parked.endpoint.pool.park_inline(parked.conn, since);
            }
        }
    }
}

/// Idle inline connections of one endpoint, shared by every client.
pub struct ParkedPool {
    queue: crossbeam_queue::ArrayQueue<Box<InlineConn>>,
}

impl ParkedPool {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: crossbeam_queue::ArrayQueue::new(capacity),
        }
    }

    /// Keeps `conn`; a full pool closes it. Each call also looks at the
    /// oldest parked connection and closes it if it outlived its idle time
    /// or the server closed it, so a pool taken from rarely does not keep
    /// dead sockets.
    pub fn park(&self, mut conn: Box<InlineConn>, since: Instant) {
        conn.idle_since = since;
        if let Some(mut oldest) = self.queue.pop()
            && oldest.reusable_at(Instant::now())
        {
            let _ = self.queue.push(oldest);
        }
        let _ = self.queue.push(conn);
    }

    /// The most usable idle connection, dropping stale ones on the way.
    pub fn unpark(&self, now: Instant) -> Option<Box<InlineConn>> {
        while let Some(conn) = self.queue.pop() {
            if conn.fresh_at(now) {
                return Some(conn);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers each request head it reads with the next of
    /// `answers`, written as given (split where `|` appears, with a pause,
    /// to exercise partial reads); closes after the last one.
    async fn scripted(answers: Vec<&'static str>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                if !read_request_head(&mut socket, &mut seen).await {
                    return;
                }
                for (i, part) in answer.split('|').enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    socket.write_all(part.as_bytes()).await.unwrap();
                }
            }
        });
        addr
    }

    /// Reads up to the end of the next request head into `seen` and drops
    /// that head; `false` once the client has closed.
    async fn read_request_head(socket: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
        loop {
            if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                return true;
            }
            let mut chunk = [0u8; 1024];
            match socket.read(&mut chunk).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
    }

    fn test_timeouts() -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: Duration::from_secs(1),
            ..UpstreamTimeouts::default()
        }
    }

    /// A deadline no test reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn get(method: Method) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = "/x?y=1".parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("example"));
        req
    }

    /// Reads the whole body: data, trailers, and whether the connection
    /// could be reused.
    async fn read_all(
        mut body: InlineBody,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), InlineError> {
        let mut data = Vec::new();
        let mut trailers = None;
        while let Some(frame) = poll_fn(|cx| body.poll_frame(cx)).await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok((data, trailers, body.take_reusable().is_some()))
    }

    async fn exchange(
        addr: std::net::SocketAddr,
        method: Method,
    ) -> Result<InlineResponse, ExchangeError> {
        InlineConn::exchange(None, addr, test_timeouts(), far(), &get(method), &[]).await
    }

    #[tokio::test]
    async fn content_length_bodies_keep_the_connection() {
        let addr = scripted(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhe|llo",
        ])
        .await;
        let response = exchange(addr, Method::GET).await.unwrap();
        assert_eq!(response.head.status(), StatusCode::OK);
        assert_eq!(response.head.headers()["x-a"], "1");
        assert_eq!(response.body.size_hint().exact(), Some(5));
        let (data, _, reusable) = read_all(response.body).await.unwrap();
        assert_eq!(data, b"hello");
        assert!(reusable);
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_their_trailers() {
        let addr = scripted(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
             3;ext=1\r\nabc\r|\n0a\r\n0123456789\r\n0\r\nX-Sum: 7\r\n\r\n",
        ])
        .await;
        let response = exchange(addr, Method::GET).await.unwrap();
        assert!(
            !response.head.headers().contains_key(header::CONTENT_LENGTH),
            "a length beside chunked must not reach the client"
        );
        let (data, trailers, reusable) = read_all(response.body).await.unwrap();
        assert_eq!(data, b"abc0123456789");
        assert_eq!(trailers.unwrap()["x-sum"], "7");
        assert!(reusable);
    }

    #[tokio::test]
    async fn hop_by_hop_fields_are_read_but_not_forwarded() {
        let addr = scripted(vec![
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
             X-Private: 1\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nX-Public: 2\r\n\r\n\
             2\r\nok\r\n0\r\n\r\n",
        ])
        .await;
        let response = exchange(addr, Method::GET).await.unwrap();
        let names: Vec<&str> = response.head.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-public"]);
        let (data, trailers, reusable) = read_all(response.body).await.unwrap();
        assert_eq!(data, b"ok");
        assert!(trailers.is_none());
        assert!(reusable);
    }

    #[tokio::test]
    async fn bodies_without_framing_last_until_close_and_end_the_connection() {
        let addr = scripted(vec!["HTTP/1.1 200 OK\r\n\r\nuntil|close"]).await;
        let response = exchange(addr, Method::GET).await.unwrap();
        let (data, _, reusable) = read_all(response.body).await.unwrap();
        assert_eq!(data, b"untilclose");
        assert!(!reusable);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_and_interim_answers_are_skipped() {
        let addr = scripted(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n|HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ])
        .await;
        let mut conn = None;
        for (method, status) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::NO_CONTENT),
            (Method::GET, StatusCode::NOT_MODIFIED),
        ] {
            let response =
                InlineConn::exchange(conn.take(), addr, test_timeouts(), far(), &get(method), &[])
                    .await
                    .unwrap();
            assert_eq!(response.head.status(), status);
            assert!(response.body.is_end_stream());
            let mut body = response.body;
            assert!(poll_fn(|cx| body.poll_frame(cx)).await.is_none());
            conn = body.take_reusable();
            assert!(conn.is_some(), "{status}: the connection stays usable");
        }
    }

    #[tokio::test]
    async fn close_and_http10_answers_are_not_reused() {
        for (answer, kept) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
                true,
            ),
        ] {
            let addr = scripted(vec![answer]).await;
            let (_, _, reusable) = read_all(exchange(addr, Method::GET).await.unwrap().body)
                .await
                .unwrap();
            assert_eq!(reusable, kept, "{answer:?}");
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_not_panics() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 2x0 Odd\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "nonsense\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Le",
        ] {
            let addr = scripted(vec![answer]).await;
            assert!(
                matches!(
                    exchange(addr, Method::GET).await,
                    Err(ExchangeError::Send(_))
                ),
                "{answer:?} must be refused"
            );
        }
        for answer in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        ] {
            let addr = scripted(vec![answer]).await;
            let response = exchange(addr, Method::GET).await.unwrap();
            assert!(
                read_all(response.body).await.is_err(),
                "{answer:?} must fail in the body"
            );
        }
    }

    #[tokio::test]
    async fn a_reused_connection_the_server_closed_is_replaced() {
        // The first server answers once and closes; the request on the
        // closed connection must go out again on a new one.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await.unwrap();
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let response = exchange(addr, Method::GET).await.unwrap();
        let mut body = response.body;
        while poll_fn(|cx| body.poll_frame(cx)).await.is_some() {}
        let conn = body.take_reusable().unwrap();
        // Give the server's close time to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = InlineConn::exchange(
            Some(conn),
            addr,
            test_timeouts(),
            far(),
            &get(Method::GET),
            &[],
        )
        .await
        .unwrap();
        let (data, _, _) = read_all(response.body).await.unwrap();
        assert_eq!(data, b"ok");
    }

    #[tokio::test]
    async fn each_exchange_gets_its_own_deadline_on_a_reused_connection() {
        // One connection: the first request answered at once, the second
        // after 300 ms, the third never.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for delay in [Some(0), Some(300), None] {
                if !read_request_head(&mut socket, &mut seen).await {
                    return;
                }
                let Some(delay) = delay else {
                    // Hold the connection open without answering.
                    let mut chunk = [0u8; 1024];
                    while socket.read(&mut chunk).await.unwrap_or(0) > 0 {}
                    return;
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
        });
        let req = get(Method::GET);
        let exchange =
            |conn, deadline| InlineConn::exchange(conn, addr, test_timeouts(), deadline, &req, &[]);
        async fn reusable(mut body: InlineBody) -> Box<InlineConn> {
            while let Some(frame) = poll_fn(|cx| body.poll_frame(cx)).await {
                frame.unwrap();
            }
            body.take_reusable().expect("kept alive")
        }
        let short = || Instant::now() + Duration::from_millis(100);

        let conn = reusable(exchange(None, short()).await.unwrap().body).await;
        // The timer armed for the first deadline moves to the second,
        // later one instead of firing at the first.
        let second = exchange(Some(conn), Instant::now() + Duration::from_secs(30));
        let conn = reusable(second.await.unwrap().body).await;
        // And back to an earlier one.
        let started = Instant::now();
        match exchange(Some(conn), short()).await {
            Err(ExchangeError::Send(InlineError::TimedOut)) => {}
            other => panic!("expected a timeout, got {:?}", other.map(|r| r.head)),
        }
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn parking_closes_the_oldest_connection_once_the_server_closed_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let first = InlineConn::connect(addr, test_timeouts()).await.unwrap();
        let second = InlineConn::connect(addr, test_timeouts()).await.unwrap();
        // Let both closes arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pool = ParkedPool::new(8);
        pool.park(first, Instant::now());
        assert_eq!(pool.queue.len(), 1);
        pool.park(second, Instant::now());
        assert_eq!(pool.queue.len(), 1, "the closed oldest one was dropped");
    }

    #[test]
    fn request_heads_are_encoded_in_origin_form() {
        let mut out = Vec::new();
        let value = HeaderValue::from_static("10.0.0.1");
        let name = HeaderName::from_static("x-forwarded-for");
        encode_head(&mut out, &get(Method::GET), &[None, Some((&name, &value))]);
        assert_eq!(
            out,
            b"GET /x?y=1 HTTP/1.1\r\nhost: example\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn the_inline_cache_cell_is_lock_free() {
        // AtomicCell falls back to a global lock for types it cannot swap
        // atomically; a boxed set is one pointer, which it can.
        assert!(AtomicCell::<Option<Box<Vec<Parked>>>>::is_lock_free());
    }
}
