//! One upstream HTTP/1.1 connection, driven by the request that uses it.
//!
//! The request future writes the head and reads the response head itself;
//! the response body ([`H1Body`]) reads the rest from the same connection
//! as the client's side polls it. There is no task, channel or wake-up
//! between the two sides, and one read buffer per connection, reused from
//! its start for every exchange once the previous response has been
//! forwarded (response header values are slices of it).
//!
//! Generic over the stream (`AsyncRead + AsyncWrite`), so a TLS stream
//! plugs in where a `TcpStream` is today. Timers:
//!
//! - the response head must arrive by the request's deadline (`request`
//!   timeout, else 504);
//! - after the head, a body that brings no byte for `upstream_stall` ends
//!   with [`H1Error::Stalled`]: the connection is closed and the client's
//!   response cut (HAProxy's `timeout server`, Pingora's `read_timeout`).
//!
//! One timer per connection serves both: registered with tokio once, then
//! moved to each new deadline, which for a later deadline takes no lock.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::codec::{self, BodyStep, CodecError, Framing, ResponseHead};
use crate::upstream::connect::UpstreamError;
use crate::upstream::pool;
use crate::upstream::tls::{Dial, UpstreamStream};

/// What a read asks room for; also the buffer's size after a reclaim.
const READ_SIZE: usize = 8 * 1024;
/// The largest read asked for while streaming a long body.
const MAX_READ_SIZE: usize = 64 * 1024;
/// A request that may not be sent twice (POST and other non-idempotent
/// methods) only takes a pooled connection idle for less than this: if the
/// server closed it just as the request went out, nobody could tell whether
/// the request was processed, so it could not be retried. Servers close
/// idle connections after seconds, not milliseconds.
pub const UNREPEATABLE_MAX_IDLE: Duration = Duration::from_millis(500);

/// Why an exchange on a connection failed after it started.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("writing the request upstream")]
    Write(#[source] io::Error),
    #[error("reading the response")]
    Read(#[source] io::Error),
    #[error("the server closed the connection before a complete response head")]
    ClosedBeforeHead,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no response head before the request timeout")]
    TimedOut,
    #[error("no response body bytes for {0:?}")]
    Stalled(Duration),
}

impl H1Error {
    /// Nothing of the response arrived: on a reused connection the server
    /// most likely closed it just as the request went out.
    fn no_response(&self) -> bool {
        matches!(
            self,
            Self::Write(_) | Self::Read(_) | Self::ClosedBeforeHead
        )
    }
}

/// Why [`H1Conn::exchange`] got no response head.
#[derive(Debug)]
pub enum ExchangeError {
    /// No connection: nothing was sent.
    Connect(UpstreamError),
    /// The request may have reached the server.
    Send(H1Error),
}

/// A stream whose idle state can be checked without blocking or
/// registering for a wake-up: has the server closed it, or sent something
/// unasked, while it sat in a pool?
pub trait IdleProbe {
    /// `true` when nothing arrived; reads into `buf` otherwise.
    fn is_quiet(&mut self, buf: &mut BytesMut) -> bool;
}

impl IdleProbe for TcpStream {
    /// One read attempt, which costs no system call unless the socket
    /// became readable while idle (tokio tracks readiness).
    fn is_quiet(&mut self, buf: &mut BytesMut) -> bool {
        match self.try_read_buf(buf) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false, // closed (0) or unsolicited bytes
        }
    }
}

/// An upstream HTTP/1.1 connection owned by whichever request uses it.
pub struct H1Conn<S = UpstreamStream> {
    stream: S,
    /// Bytes read from the server and not handed on yet.
    buf: BytesMut,
    /// The request head being written; kept for its capacity.
    head: Vec<u8>,
    /// The server's `Keep-Alive: timeout`, from its latest response.
    idle_hint: Option<Duration>,
    /// The request's deadline while waiting for a head, then the body's
    /// stall deadline (see the module doc).
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the stall deadline was last moved: it moves
    /// when a read next blocks (one clock read per wait, not per read).
    progressed: bool,
    /// `upstream_stall` of the exchange in progress: the longest wait for
    /// a response body byte. Kept here rather than in [`H1Body`], which
    /// is moved several times per request.
    stall: Duration,
}

/// A response head from an upstream connection; its body follows on it.
pub struct H1Response<S = UpstreamStream> {
    pub head: Response<()>,
    pub body: H1Body<S>,
    /// How long connecting took; `None` on a pooled connection.
    pub connect: Option<Duration>,
}

/// The body of a response, read from the connection it owns until the
/// body ends.
pub struct H1Body<S = UpstreamStream> {
    conn: Option<Box<H1Conn<S>>>,
    framing: Framing,
    /// The server allows another request after this response.
    keep_alive: bool,
}

/// The settings an exchange needs from its backend.
#[derive(Debug, Clone, Copy)]
pub struct ExchangeTimeouts {
    pub connect: Duration,
    /// The response head must be in by then.
    pub deadline: Instant,
    /// The longest wait for a response body byte.
    pub stall: Duration,
}

impl H1Conn<UpstreamStream> {
    pub async fn connect(
        addr: SocketAddr,
        timeout: Duration,
        dial: Dial<'_>,
    ) -> Result<Box<Self>, UpstreamError> {
        let stream = crate::upstream::tls::connect_with_header(
            addr,
            timeout,
            dial.tls,
            true,
            dial.proxy_header,
        );
        Ok(Self::new(stream.await?))
    }

    /// Sends a body-less request on `cached` (an idle connection from the
    /// endpoint's pool) or on a new connection to `addr`, and reads the
    /// response head. When a reused connection turns out closed without a
    /// byte of answer, an idempotent request is sent once more on a new
    /// connection.
    pub async fn exchange<B>(
        cached: Option<Box<Self>>,
        addr: SocketAddr,
        timeouts: ExchangeTimeouts,
        req: &Request<B>,
        extra: &[Option<(&HeaderName, &HeaderValue)>],
        dial: Dial<'_>,
    ) -> Result<H1Response, ExchangeError> {
        let mut cached = cached.and_then(|mut c| c.still_open().then_some(c));
        let is_head = req.method() == Method::HEAD;
        loop {
            let reused = cached.is_some();
            let mut connect = None;
            let mut conn = match cached.take() {
                Some(conn) => conn,
                // Boxed: connecting is rare, and its future would otherwise
                // enlarge every request's.
                None => {
                    let started = Instant::now();
                    let conn = Box::pin(Self::connect(addr, timeouts.connect, dial))
                        .await
                        .map_err(ExchangeError::Connect)?;
                    connect = Some(started.elapsed());
                    conn
                }
            };
            codec::encode_request_head(&mut conn.head, req, extra);
            conn.arm(timeouts.deadline);
            conn.stall = timeouts.stall;
            match conn.send_and_read_head(is_head).await {
                Ok(head) => {
                    conn.idle_hint = head.idle_hint;
                    return Ok(H1Response {
                        head: head.response,
                        body: H1Body {
                            conn: Some(conn),
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                        },
                        connect,
                    });
                }
                Err(e) if reused && e.no_response() && req.method().is_idempotent() => {
                    tracing::debug!(error = %e, endpoint.addr = %addr, "Reused upstream connection closed; sending again on a new one");
                }
                Err(e) => return Err(ExchangeError::Send(e)),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + IdleProbe + Unpin> H1Conn<S> {
    pub fn new(stream: S) -> Box<Self> {
        Box::new(Self {
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(256),
            idle_hint: None,
            timer: None,
            progressed: false,
            stall: Duration::MAX,
        })
    }

    /// How long this connection may be used again once idle: the
    /// backend's idle limit, or shortly before the server's announced idle
    /// timeout if that comes first.
    pub fn reuse_window(&self, max_idle: Duration) -> Duration {
        pool::reuse_window(max_idle, self.idle_hint)
    }

    /// Sets the deadline of the exchange about to start.
    fn arm(&mut self, deadline: Instant) {
        match &mut self.timer {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Polls `io`; when it is pending, fails once the armed deadline has
    /// passed.
    fn poll_until_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<Result<T, H1Error>>,
    ) -> Poll<Result<T, H1Error>> {
        if let Poll::Ready(result) = io(self, cx) {
            return Poll::Ready(result);
        }
        match self.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(H1Error::TimedOut)),
            _ => Poll::Pending,
        }
    }

    /// A body read is blocked: `Ready` once no byte came for `stall`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.progressed || self.timer.is_none() {
            self.progressed = false;
            self.arm(Instant::now() + self.stall);
        }
        match self.timer.as_mut() {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Whether an idle connection is still usable: the server has neither
    /// closed it nor sent anything unasked.
    fn still_open(&mut self) -> bool {
        self.buf.clear();
        self.buf.reserve(READ_SIZE);
        self.stream.is_quiet(&mut self.buf)
    }

    async fn send_and_read_head(&mut self, is_head: bool) -> Result<ResponseHead, H1Error> {
        let mut written = 0;
        while written < self.head.len() {
            written += poll_fn(|cx| {
                self.poll_until_deadline(cx, |conn, cx| conn.poll_write_head(cx, written))
            })
            .await?;
        }
        self.buf.clear();
        loop {
            if !self.buf.is_empty()
                && let Some(head) = codec::parse_response_head(&mut self.buf, is_head)?
            {
                return Ok(head);
            }
            let read = poll_fn(|cx| {
                self.poll_until_deadline(cx, |conn, cx| conn.poll_fill(cx, READ_SIZE))
            });
            if read.await? == 0 {
                return Err(H1Error::ClosedBeforeHead);
            }
        }
    }

    /// Writes what is left of the request head from `from`.
    fn poll_write_head(
        &mut self,
        cx: &mut Context<'_>,
        from: usize,
    ) -> Poll<Result<usize, H1Error>> {
        match ready!(Pin::new(&mut self.stream).poll_write(cx, &self.head[from..])) {
            Ok(0) => Poll::Ready(Err(H1Error::Write(io::ErrorKind::WriteZero.into()))),
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(H1Error::Write(e))),
        }
    }

    /// Reads what the server has sent into the buffer; `0` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<usize, H1Error>> {
        // Empty and no longer shared with a forwarded response, the buffer
        // is reused from its start: its first lines are the ones in cache.
        if self.buf.capacity() - self.buf.len() < want.min(READ_SIZE) {
            self.buf.reserve(want);
        }
        let n = ready!(poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf))
            .map_err(H1Error::Read)?;
        self.progressed |= n > 0;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + IdleProbe + Unpin> H1Body<S> {
    /// The body is over, and its connection may be given to the next
    /// request: all of a framed body was read and nothing more arrived.
    pub fn take_reusable(&mut self) -> Option<Box<H1Conn<S>>> {
        let reusable = self.framing.is_done()
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.buf.is_empty());
        if reusable { self.conn.take() } else { None }
    }

    pub fn is_end_stream(&self) -> bool {
        self.framing.is_done()
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
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match self.framing.decode(&mut conn.buf)? {
                BodyStep::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                BodyStep::Trailers(t) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                BodyStep::End => return Poll::Ready(None),
                BodyStep::NeedMore => {}
            }
            let want = self.framing.wanted(MAX_READ_SIZE);
            match conn.poll_fill(cx, want) {
                Poll::Ready(Ok(0)) => {
                    self.keep_alive = false;
                    return match self.framing.decode_eof()? {
                        BodyStep::Data(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                        _ => Poll::Ready(None),
                    };
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => {
                    ready!(conn.poll_stall(cx));
                    return Poll::Ready(Some(Err(H1Error::Stalled(conn.stall))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
