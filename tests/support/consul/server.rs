//! The listener: binds 127.0.0.1, serves HTTP/1.1 with keep-alive (header
//! names title-cased, as Go writes them), enforces the optional per-client
//! connection limit with Consul's raw `429`, and on shutdown lets released
//! requests answer before closing every connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::agent_cache::AgentCache;
use super::faults::raw_connection_limit_bytes;
use super::router;
use super::shared::Shared;

/// How long a given port is retried while a previous server releases it.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// How long open connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

pub async fn bind(port: Option<u16>) -> TcpListener {
    let Some(port) = port else {
        return TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind Consul test server");
    };
    let deadline = tokio::time::Instant::now() + BIND_RETRY;
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("bind Consul test server on 127.0.0.1:{port}: {error}"),
        }
    }
}

/// Open connections per client IP.
type ConnectionCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Accepts until shutdown, then drains and closes every connection. One
/// listener is one agent: its own cache and its own per-client limit.
/// Aborting the task drops every connection at once (an agent that died).
pub async fn run(listener: TcpListener, shared: Arc<Shared>, agent: Arc<AgentCache>) {
    let mut connections = JoinSet::new();
    let counts: ConnectionCounts = Arc::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let Some(slot) = ClientSlot::take(&counts, peer.ip(), shared.options.max_conns_per_client) else {
                    shared.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    connections.spawn(refuse(stream));
                    continue;
                };
                connections.spawn(serve_connection(stream, shared.clone(), agent.clone(), slot));
            }
            () = shared.until_shutdown() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    let _ = drained.await;
    connections.shutdown().await;
}

/// Consul's answer to a connection over the per-client limit.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(&raw_connection_limit_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    agent: Arc<AgentCache>,
    slot: ClientSlot,
) {
    let _open = shared.connection_opened(slot.held);
    let handler = shared.clone();
    let service =
        service_fn(move |request| router::handle(handler.clone(), agent.clone(), request));
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).title_case_headers(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = shared.until_shutdown() => {
            // Blocked queries were released by the same signal; let them answer.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// One counted connection of a client; released on drop.
struct ClientSlot {
    counts: ConnectionCounts,
    ip: IpAddr,
    /// The client's open connections with this one.
    held: usize,
}

impl ClientSlot {
    fn take(counts: &ConnectionCounts, ip: IpAddr, limit: Option<usize>) -> Option<Self> {
        let mut open = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if limit.is_some_and(|limit| *count >= limit) {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
            held: *count,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
        }
    }
}
