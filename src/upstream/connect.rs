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

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::inline::{InlineConn, ParkedPool};

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
    /// Idle inline connections no client connection keeps (see `inline.rs`).
    inline: OnceLock<Box<ParkedPool>>,
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

    /// Keeps an idle inline connection for any client connection.
    pub fn park_inline(&self, conn: Box<InlineConn>, now: Instant) {
        self.inline
            .get_or_init(|| Box::new(ParkedPool::new(MAX_IDLE_PER_ENDPOINT)))
            .park(conn, now);
    }

    /// An idle inline connection within its `idle` timeout.
    pub fn unpark_inline(&self, now: Instant) -> Option<Box<InlineConn>> {
        self.inline.get()?.unpark(now)
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
