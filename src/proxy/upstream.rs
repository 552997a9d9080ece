//! Connections to upstream servers: connect, handshake and pooling.
//!
//! HTTP/1.1 connections are pooled per endpoint in a lock-free queue: a
//! request checks one out, and the response body hands it back when it ends
//! cleanly (see `body.rs`), so a connection is only reused once its previous
//! exchange is complete. HTTP/2 connections are multiplexed: one per endpoint,
//! shared by cloning its sender.
//!
//! The pool lives in the endpoint's state, so it survives config swaps; when
//! an endpoint is dropped, its idle connections close with it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::atomic::AtomicCell;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::table::endpoints::EndpointState;

/// The body type sent upstream: the client's request body, streamed.
pub type UpstreamBody = super::body::RequestBody;
pub type H1Sender = http1::SendRequest<UpstreamBody>;
pub type H2Sender = http2::SendRequest<UpstreamBody>;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed on return.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HTTP handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

struct IdleConn {
    sender: H1Sender,
    since: Instant,
}

/// Upstream connections to one endpoint.
#[derive(Default)]
pub struct UpstreamPool {
    /// Created on first use so endpoints that never see HTTP/1 traffic cost
    /// nothing.
    /// Boxed because the queue is cache-padded (128-byte aligned): inline,
    /// it would make every endpoint state an over-aligned allocation, which
    /// glibc serves several times slower, and a reload makes thousands.
    idle: OnceLock<Box<ArrayQueue<IdleConn>>>,
    h2: ArcSwapOption<H2Sender>,
    h2_connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("idle", &self.idle.get().map_or(0, |q| q.len()))
            .finish()
    }
}

/// An HTTP/1.1 connection checked out of a pool.
pub struct H1Checkout {
    pub sender: H1Sender,
    /// Came from the pool: the server may have closed it meanwhile, so a
    /// request that was not sent on it can be retried on a fresh one.
    pub reused: bool,
}

impl UpstreamPool {
    /// An idle connection still open and younger than `max_idle`, or a new one.
    pub async fn checkout_h1(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        max_idle: Duration,
    ) -> Result<H1Checkout, UpstreamError> {
        if let Some(idle) = self.idle.get() {
            while let Some(mut conn) = idle.pop() {
                if conn.sender.is_closed() || conn.since.elapsed() > max_idle {
                    continue;
                }
                // Returned at end of body; the connection task may still be
                // finishing that exchange, which takes one poll.
                if conn.sender.ready().await.is_ok() {
                    return Ok(H1Checkout {
                        sender: conn.sender,
                        reused: true,
                    });
                }
            }
        }
        Ok(H1Checkout {
            sender: Box::pin(connect_h1(addr, connect_timeout)).await?,
            reused: false,
        })
    }

    /// Has an idle HTTP/1.1 connection to hand out (it may turn out closed).
    pub fn has_idle(&self) -> bool {
        self.idle.get().is_some_and(|q| !q.is_empty())
    }

    /// Returns a connection whose last exchange completed.
    pub fn checkin_h1(&self, sender: H1Sender) {
        if sender.is_closed() {
            return;
        }
        let idle = self
            .idle
            .get_or_init(|| Box::new(ArrayQueue::new(MAX_IDLE_PER_ENDPOINT)));
        // A full pool drops (closes) the surplus connection.
        let _ = idle.push(IdleConn {
            sender,
            since: Instant::now(),
        });
    }

    /// The endpoint's HTTP/2 connection, opened on first use or when the
    /// previous one closed.
    pub async fn h2_sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<H2Sender, UpstreamError> {
        if let Some(s) = self.h2.load().as_deref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        // One connect at a time per endpoint; the others then reuse it.
        let _connecting = self.h2_connecting.lock().await;
        if let Some(s) = self.h2.load().as_deref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = connect_tcp(addr, connect_timeout).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, endpoint.addr = %addr, "Upstream h2 connection ended");
            }
        });
        self.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout { addr, timeout })?
        .map_err(|source| UpstreamError::Connect { addr, source })?;
    // Request/response traffic: latency matters more than segment count.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_h1(addr: SocketAddr, timeout: Duration) -> Result<H1Sender, UpstreamError> {
    let stream = connect_tcp(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| UpstreamError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, endpoint.addr = %addr, "Upstream connection ended");
        }
    });
    Ok(sender)
}

// === inline connections ===

pub type H1Connection = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// Distinct endpoints whose connections one client connection keeps inline.
const INLINE_PER_CLIENT: usize = 4;

/// An upstream HTTP/1.1 connection driven by the client connection's own
/// task instead of a task of its own.
///
/// A spawned connection costs two cross-task wake-ups and a channel hop per
/// request; driving it inline (the request future and then the response body
/// poll it) removes them. Only HTTP/1 client connections use these: their
/// requests come one at a time, so one task can own the upstream side too.
pub struct InlineConn {
    endpoint: Arc<EndpointState>,
    sender: H1Sender,
    conn: H1Connection,
    /// The connection future has completed (closed); never poll it again.
    closed: bool,
    idle_since: Instant,
}

impl InlineConn {
    /// Boxed: the connection is large and moves between the cache, the
    /// request and the response body; a box keeps each move one pointer.
    pub async fn connect(
        endpoint: Arc<EndpointState>,
        timeout: Duration,
    ) -> Result<Box<Self>, UpstreamError> {
        let addr = endpoint.addr;
        let stream = connect_tcp(addr, timeout).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Handshake { addr, source })?;
        Ok(Box::new(Self {
            endpoint,
            sender,
            conn,
            closed: false,
            idle_since: Instant::now(),
        }))
    }

    /// Moves the connection's I/O forward; `false` once it has closed.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed
            && let Poll::Ready(result) = Pin::new(&mut self.conn).poll(cx)
        {
            if let Err(error) = result {
                tracing::debug!(%error, endpoint.addr = %self.endpoint.addr, "Upstream connection ended");
            }
            self.closed = true;
        }
        !self.closed
    }

    /// Waits until the connection takes a new request; `false` if it closed
    /// while idle (the server's keep-alive timeout, typically).
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if !self.drive(cx) {
                return Poll::Ready(false);
            }
            match self.sender.poll_ready(cx) {
                Poll::Ready(result) => Poll::Ready(result.is_ok()),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sends a request and drives the connection until the response head
    /// arrives. An error that hands the request back means nothing was sent.
    pub async fn send(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        let response = self.sender.try_send_request(req);
        tokio::pin!(response);
        std::future::poll_fn(|cx| {
            self.drive(cx);
            response.as_mut().poll(cx)
        })
        .await
    }

    /// Hands a connection that could not stay inline to a task of its own
    /// and the endpoint's shared pool.
    fn demote(self: Box<Self>) {
        // Outside a runtime (process exit) there is nothing to hand it to.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.closed {
            return;
        }
        let Self {
            endpoint,
            sender,
            conn,
            ..
        } = *self;
        let addr = endpoint.addr;
        runtime.spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, endpoint.addr = %addr, "Upstream connection ended");
            }
        });
        endpoint.pool.checkin_h1(sender);
    }
}

/// The inline connections of one client connection, at most one per
/// endpoint and [`INLINE_PER_CLIENT`] in all.
///
/// The whole set is taken out of an atomic cell while a request looks into
/// it and put back after, so there is no lock; a concurrent request (HTTP/2
/// streams) that finds the cell empty uses the shared pool instead.
pub struct InlineCache {
    /// Empty only while a request is looking into it. The Vec is boxed so
    /// the cell holds one pointer, which it can swap without a lock.
    #[allow(clippy::box_collection)]
    set: AtomicCell<Option<Box<Vec<Box<InlineConn>>>>>,
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
    /// through the shared pool instead of being closed.
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            for conn in *set {
                conn.demote();
            }
        }
    }
}

/// What a client connection's cache has for an endpoint.
pub enum InlineLookup {
    Hit(Box<InlineConn>),
    /// No connection to that endpoint; `room` when a new one may be kept.
    Miss {
        room: bool,
    },
}

impl InlineCache {
    pub fn take(
        &self,
        endpoint: &Arc<EndpointState>,
        max_idle: Duration,
        now: Instant,
    ) -> InlineLookup {
        let Some(mut set) = self.set.take() else {
            // Another request of this connection has the set (HTTP/2).
            return InlineLookup::Miss { room: false };
        };
        let found = set.iter().position(|c| Arc::ptr_eq(&c.endpoint, endpoint));
        let lookup = match found.map(|i| set.swap_remove(i)) {
            Some(conn)
                if conn.closed || now.saturating_duration_since(conn.idle_since) > max_idle =>
            {
                InlineLookup::Miss { room: true }
            }
            Some(conn) => InlineLookup::Hit(conn),
            None => InlineLookup::Miss {
                room: set.len() < INLINE_PER_CLIENT,
            },
        };
        self.set.store(Some(set));
        lookup
    }

    /// Hands the idle connections to their endpoints' shared pools: the
    /// client went quiet, and other clients may use them meanwhile. Returns
    /// whether there were any.
    pub fn release_idle(&self) -> bool {
        let Some(mut set) = self.set.take() else {
            return false;
        };
        let any = !set.is_empty();
        for conn in set.drain(..) {
            conn.demote();
        }
        self.set.store(Some(set));
        any
    }

    /// Keeps a connection whose last exchange completed.
    pub fn put(&self, mut conn: Box<InlineConn>, now: Instant) {
        if conn.closed {
            return;
        }
        conn.idle_since = now;
        let mut set = self
            .set
            .take()
            .unwrap_or_else(|| Box::new(Vec::with_capacity(INLINE_PER_CLIENT)));
        if set.len() < INLINE_PER_CLIENT {
            set.push(conn);
        } else {
            conn.demote();
        }
        // A set stored meanwhile by a concurrent stream is dropped: its
        // connections close, which is safe because they are idle.
        self.set.store(Some(set));
    }
}

/// Why an exchange got no response; a failed connect gives the request
/// back (nothing was sent), for a retry on another endpoint.
pub enum ExchangeError {
    Connect(UpstreamError, Box<Request<UpstreamBody>>),
    Send(hyper::Error),
}

impl InlineConn {
    /// Sends `req` on `cached` (a hit from [`InlineCache::take`]) or on a new
    /// connection, and returns the connection, which must be driven while
    /// the response body is read, with the response head.
    pub async fn exchange(
        cached: Option<Box<InlineConn>>,
        endpoint: &Arc<EndpointState>,
        timeouts: crate::config::UpstreamTimeouts,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Box<Self>, Response<Incoming>), ExchangeError> {
        let mut cached = cached;
        loop {
            let reused = cached.is_some();
            let mut conn = match cached.take() {
                Some(c) => c,
                // Boxed: connecting is rare, and its future would otherwise
                // make every request's future (which is moved) larger.
                None => {
                    match Box::pin(InlineConn::connect(endpoint.clone(), timeouts.connect)).await {
                        Ok(conn) => conn,
                        Err(e) => return Err(ExchangeError::Connect(e, Box::new(req))),
                    }
                }
            };
            if reused && !conn.ready().await {
                continue; // closed while idle; open a fresh one
            }
            match conn.send(req).await {
                Ok(resp) => return Ok((conn, resp)),
                // Not sent on a reused connection that just closed: safe to
                // send again on a fresh one.
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(ExchangeError::Send(e.into_error())),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inline_cache_cell_is_lock_free() {
        // AtomicCell falls back to a global lock for types it cannot swap
        // atomically; a boxed set is one pointer, which it can.
        assert!(AtomicCell::<Option<Box<Vec<Box<InlineConn>>>>>::is_lock_free());
    }
}
