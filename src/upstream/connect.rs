//! Connections to upstream servers: TCP connects, hyper's client
//! connections, and the pools that keep them per endpoint.
//!
//! HTTP/1.1 connections, ours ([`H1Conn`]) and hyper's, wait in
//! most-recent-first pools ([`Pool`]) between requests: a request takes
//! one, and the response body gives it back when it ends cleanly, so a
//! connection is only reused once its previous exchange is complete.
//! HTTP/2 connections are multiplexed: one per endpoint, shared by cloning
//! its sender.
//!
//! The pools live in the endpoint's state, so they survive config swaps;
//! when an endpoint is dropped, its idle connections close with it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1::conn::H1Conn;
use super::pool::{Idle, Pool};
use super::tls::{Dial, UpstreamTls};

/// The body type sent upstream: the client's request body, streamed.
pub type UpstreamBody = super::body::RequestBody;
pub type H1Sender = http1::SendRequest<UpstreamBody>;
pub type H2Sender = http2::SendRequest<UpstreamBody>;

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
    #[error("TLS handshake with {addr}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

/// Upstream connections to one endpoint.
#[derive(Default)]
pub struct UpstreamPool {
    /// Idle connections of our HTTP/1.1 client (body-less requests).
    /// Created on first use (and boxed: a pool is a few hundred bytes), so
    /// endpoints that never see a protocol cost nothing for it.
    h1: OnceLock<Box<Pool<Box<H1Conn>>>>,
    /// Idle hyper HTTP/1.1 connections (requests with bodies, upgrades).
    hyper_h1: OnceLock<Box<Pool<H1Sender>>>,
    h2: ArcSwapOption<H2Sender>,
    h2_connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("h1_idle_here", &self.h1.get().map_or(0, |p| p.len_here()))
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
    /// The most recent idle connection of our client usable at `now`, and
    /// idle no longer than `max_idle` when that is given.
    pub fn take_h1(&self, now: Instant, max_idle: Option<Duration>) -> Option<Box<H1Conn>> {
        Some(self.h1.get()?.take(now, max_idle)?.conn)
    }

    /// Keeps a connection of our client whose last exchange completed.
    pub fn put_h1(&self, conn: Box<H1Conn>, now: Instant, usable_until: Instant) {
        self.h1.get_or_init(|| Box::new(Pool::default())).put(Idle {
            conn,
            since: now,
            usable_until,
        });
    }

    /// An idle hyper connection still open and usable, or a new one.
    pub async fn checkout_h1(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        dial: Dial<'_>,
    ) -> Result<H1Checkout, UpstreamError> {
        if let Some(pool) = self.hyper_h1.get().filter(|_| dial.proxy_header.is_none()) {
            while let Some(idle) = pool.take(Instant::now(), None) {
                let mut sender = idle.conn;
                if sender.is_closed() {
                    continue;
                }
                // Returned at end of body; the connection task may still be
                // finishing that exchange, which takes one poll.
                if sender.ready().await.is_ok() {
                    return Ok(H1Checkout {
                        sender,
                        reused: true,
                    });
                }
            }
        }
        Ok(H1Checkout {
            sender: Box::pin(connect_h1(addr, connect_timeout, dial)).await?,
            reused: false,
        })
    }

    /// Returns a hyper connection whose last exchange completed.
    pub fn checkin_h1(&self, sender: H1Sender, now: Instant, usable_until: Instant) {
        if sender.is_closed() {
            return;
        }
        self.hyper_h1
            .get_or_init(|| Box::new(Pool::default()))
            .put(Idle {
                conn: sender,
                since: now,
                usable_until,
            });
    }

    /// The endpoint's HTTP/2 connection, opened on first use or when the
    /// previous one closed.
    pub async fn h2_sender(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<H2Sender, UpstreamError> {
        if let Some(s) = self.h2.load().as_deref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        // One connect at a time per endpoint; the others then reuse it.
        let _connecting = self.h2_connecting.lock().await;
        if let Some(s) = self.h2.load().as_deref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let stream = super::tls::connect(addr, connect_timeout, tls, true).await?;
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

async fn connect_h1(
    addr: SocketAddr,
    timeout: Duration,
    dial: Dial<'_>,
) -> Result<H1Sender, UpstreamError> {
    let stream =
        super::tls::connect_with_header(addr, timeout, dial.tls, true, dial.proxy_header).await?;
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
