//! Listener sockets, accept loops, and connection draining.
//!
//! Listeners are keyed by [`ListenerKey`] and diffed on every swap: an
//! unchanged key keeps its socket and accept loop (never closed and re-bound,
//! so no SYN is lost); a new key is bound *before* the table is published, so
//! a bind failure rejects the whole reload; a removed key stops accepting and
//! its open connections drain.
//!
//! Draining never closes an idle HTTP/1 connection under a client that may be
//! sending its next request: that request is answered with
//! `Connection: close` instead. HTTP/2 connections get a GOAWAY. Whatever is
//! still open when the shutdown grace period ends is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ::http::HeaderValue;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{self, ConnCtx, ConnTls};
use super::io::{ClientCounters, ClientIo, ClientTimeouts, ConnActivity};
use super::tcp;
use super::workers::Workers;
use crate::config::{Config, Mode};
use crate::sockets::{Slot, SocketRegistry};
use crate::table::{ListenerKey, TableHandle};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// How long a turned-away connection is read from before and after its
/// answer.
const REJECT_READ_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("{location}: binding listener `{name}` to {bind}")]
pub struct BindError {
    pub location: crate::config::Location,
    pub name: Arc<str>,
    pub bind: SocketAddr,
    #[source]
    pub source: io::Error,
}

struct RunningListener {
    name: Arc<str>,
    local_addr: SocketAddr,
    /// Stops this listener's accept loop (and so closes its socket).
    stop_accept: CancellationToken,
    /// Tells this listener's connections to finish up.
    drain: Arc<Drain>,
    /// Ends this listener's connections: at its `drain_timeout` after the
    /// drain began, or with every other listener's at the grace deadline.
    cut: Arc<Latch>,
    drain_timeout: Option<Duration>,
    /// Swapped when `max_connections` changes; connections keep the permit
    /// of the semaphore they were admitted by.
    limit: Arc<ArcSwap<Semaphore>>,
    max_connections: Option<usize>,
    /// Connections waiting for a slot under the limit, on every worker.
    waiting: Arc<AtomicUsize>,
}

/// Sockets bound for a reload that has not been published yet (one per
/// worker for each new listener). Dropping it closes them, which is what a
/// rejected reload must do.
pub struct Prepared {
    bound: Vec<(ListenerKey, Arc<str>, Vec<std::net::TcpListener>)>,
}

/// Where accept loops, and so connections, run.
pub enum Placement {
    /// On the caller's runtime (the control task's): in-process tests and
    /// embedding.
    Here,
    /// One accept loop per worker, each on its own `SO_REUSEPORT` socket.
    Workers(Arc<Workers>),
}

impl Placement {
    /// Sockets to bind per listener.
    fn sockets(&self) -> usize {
        match self {
            Self::Here => 1,
            Self::Workers(w) => w.len().max(1),
        }
    }
}

/// Every running listener, owned by the control plane.
pub struct ListenerSet {
    running: HashMap<ListenerKey, RunningListener>,
    table: TableHandle,
    placement: Placement,
    /// Connections accepted, by worker.
    accepted: prometheus::IntCounterVec,
    /// Ends every remaining connection when the grace period is over.
    hard_stop: Arc<Latch>,
    /// Every connection and tunnel task, for waiting at shutdown.
    tasks: TaskTracker,
    /// Where sockets come from (inherited ones first) and are kept for a
    /// binary upgrade.
    sockets: SocketRegistry,
}

impl ListenerSet {
    pub fn new(
        table: TableHandle,
        placement: Placement,
        accepted: prometheus::IntCounterVec,
        sockets: SocketRegistry,
    ) -> Self {
        Self {
            running: HashMap::new(),
            table,
            placement,
            accepted,
            hard_stop: Arc::new(Latch::default()),
            tasks: TaskTracker::new(),
            sockets,
        }
    }

    /// Binds the listeners of `config` that are not running yet.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, BindError> {
        let mut bound = Vec::new();
        for spec in &config.listeners {
            let key = ListenerKey::of(spec);
            if self.running.contains_key(&key) {
                continue;
            }
            // Sockets handed over by the process this one replaces (or by
            // systemd) are used as they are, however many there are: each
            // may hold queued connections.
            let inherited = self.sockets.take_inherited(&slot_of(&key));
            let sockets = if inherited.is_empty() {
                bind(spec.bind, self.placement.sockets())
            } else {
                inherited
                    .into_iter()
                    .map(|s| s.set_nonblocking(true).map(|()| s))
                    .collect()
            }
            .map_err(|source| BindError {
                location: spec.location.clone(),
                name: spec.name.clone(),
                bind: spec.bind,
                source,
            })?;
            bound.push((key, spec.name.clone(), sockets));
        }
        Ok(Prepared { bound })
    }

    /// Starts the prepared listeners and stops the ones `config` no longer
    /// has. Call right after publishing the table made from `config`.
    pub fn commit(&mut self, prepared: Prepared, config: &Config) {
        let wanted: HashMap<ListenerKey, &crate::config::ListenerSpec> = config
            .listeners
            .iter()
            .map(|s| (ListenerKey::of(s), s))
            .collect();
        for (key, name, sockets) in prepared.bound {
            let local_addr = sockets
                .first()
                .and_then(|s| s.local_addr().ok())
                .unwrap_or(key.bind);
            // The limit is in place before the accept loops start, so no
            // connection is ever admitted by an unlimited semaphore.
            let max_connections = wanted.get(&key).and_then(|s| s.max_connections);
            let permits = max_connections.unwrap_or(Semaphore::MAX_PERMITS);
            let running = RunningListener {
                name: name.clone(),
                local_addr,
                stop_accept: CancellationToken::new(),
                drain: Arc::new(Drain::default()),
                cut: Arc::new(Latch::child(&self.hard_stop)),
                drain_timeout: wanted.get(&key).and_then(|s| s.drain_timeout),
                limit: Arc::new(ArcSwap::from_pointee(Semaphore::new(permits))),
                max_connections,
                waiting: Arc::default(),
            };
            let workers = self.placement.sockets();
            let served: Arc<[prometheus::IntCounter]> = (0..workers)
                .map(|w| self.accepted.with_label_values(&[&w.to_string()]))
                .collect();
            self.sockets.serve(slot_of(&key), &sockets);
            for (index, socket) in sockets.into_iter().enumerate() {
                let worker = index % workers;
                let accept = AcceptLoop {
                    key: key.clone(),
                    table: self.table.clone(),
                    limit: running.limit.clone(),
                    stop: running.stop_accept.clone(),
                    drain: running.drain.clone(),
                    hard_stop: running.cut.clone(),
                    tasks: self.tasks.clone(),
                    served: served.clone(),
                    waiting: running.waiting.clone(),
                    worker,
                    workers: match &self.placement {
                        Placement::Here => None,
                        Placement::Workers(workers) => Some(Arc::downgrade(workers)),
                    },
                };
                let name = name.clone();
                let start = move || match TcpListener::from_std(socket) {
                    Ok(listener) => {
                        tokio::spawn(accept.run(listener));
                    }
                    // Only fails outside a runtime; jobs run inside one.
                    Err(error) => {
                        tracing::error!(%error, listener = %name, "Cannot register listener socket");
                    }
                };
                match &self.placement {
                    Placement::Here => start(),
                    Placement::Workers(workers) => workers.run_on(worker, start),
                }
            }
            tracing::info!(listener = %name, addr = %local_addr, "Listening");
            self.running.insert(key, running);
        }
        self.running.retain(|key, running| match wanted.get(key) {
            Some(spec) => {
                running.name = spec.name.clone();
                running.drain_timeout = spec.drain_timeout;
                if running.max_connections != spec.max_connections {
                    let permits = spec.max_connections.unwrap_or(Semaphore::MAX_PERMITS);
                    running.limit.store(Arc::new(Semaphore::new(permits)));
                    running.max_connections = spec.max_connections;
                }
                true
            }
            None => {
                tracing::info!(listener = %running.name, addr = %running.local_addr, "Listener removed; draining");
                self.sockets.release(&slot_of(key));
                running.begin_drain();
                false
            }
        });
    }

    /// Every connection (and tunnel) task: `len()` counts what is open.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Setting it closes every connection at once (the end of the grace
    /// period, brought forward).
    pub fn cut_handle(&self) -> Arc<Latch> {
        self.hard_stop.clone()
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.running
            .values()
            .map(|r| (r.name.clone(), r.local_addr))
            .collect()
    }

    /// Stops accepting everywhere, drains, and after `grace` closes whatever
    /// is left. Returns how many connections had to be closed.
    pub async fn shutdown(&mut self, grace: Duration) -> bool {
        for running in self.running.values() {
            running.begin_drain();
        }
        self.tasks.close();
        let drained = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !drained {
            self.hard_stop.set();
            self.tasks.wait().await;
        }
        drained
    }
}

impl RunningListener {
    /// Stops accepting and tells the connections to finish; with a
    /// `drain_timeout`, ends whatever is still open when it runs out.
    fn begin_drain(&self) {
        self.stop_accept.cancel();
        self.drain.set();
        if let Some(timeout) = self.drain_timeout {
            let cut = self.cut.clone();
            let name = self.name.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(timeout) => {
                        tracing::info!(listener = %name, ?timeout, "Drain timeout: closing the listener's remaining connections");
                        cut.set();
                    }
                    () = cut.wait() => {}
                }
            });
        }
    }
}

/// The registry's name for a listener's sockets.
fn slot_of(key: &ListenerKey) -> Slot {
    Slot::Listener {
        bind: key.bind,
        name: key.ephemeral_name.as_deref().map(str::to_owned),
    }
}

/// Binds `count` listening sockets to `addr`, sharing it with
/// `SO_REUSEPORT` when more than one (the kernel then spreads new
/// connections over them). A port-0 address gets one port for all.
fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        // Lets a restarted process bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        let socket: std::net::TcpListener = socket.into();
        if addr.port() == 0 {
            addr = socket.local_addr()?;
        }
        sockets.push(socket);
    }
    Ok(sockets)
}

/// One accept loop: a listener's socket on one worker, and what its
/// connections share with those of the other workers.
struct AcceptLoop {
    key: ListenerKey,
    table: TableHandle,
    /// `max_connections`, for the listener as a whole (every worker).
    limit: Arc<ArcSwap<Semaphore>>,
    stop: CancellationToken,
    drain: Arc<Drain>,
    hard_stop: Arc<Latch>,
    tasks: TaskTracker,
    /// Connections served, by worker (the one a connection was handed to).
    served: Arc<[prometheus::IntCounter]>,
    /// Connections over the limit waiting for a slot, on every worker;
    /// bounded so a flood cannot pile up sockets.
    waiting: Arc<AtomicUsize>,
    /// This loop's worker, and all of them (weak: the workers own the
    /// runtimes this loop runs on), to balance connections over them.
    worker: usize,
    workers: Option<std::sync::Weak<Workers>>,
}

impl AcceptLoop {
    async fn run(self, listener: TcpListener) {
        let Self {
            key,
            table,
            limit,
            stop,
            drain,
            hard_stop,
            tasks,
            served,
            waiting,
            worker,
            workers,
        } = self;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "Accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let conn = Connection {
                key: key.clone(),
                table: table.clone(),
                drain: drain.clone(),
                hard_stop: hard_stop.clone(),
                tasks: tasks.clone(),
            };
            let semaphore = limit.load_full();
            match semaphore.clone().try_acquire_owned() {
                Ok(permit) => match workers.as_ref().and_then(std::sync::Weak::upgrade) {
                    Some(workers) => {
                        let target = workers.handoff(worker);
                        if let Some(counter) = served.get(target) {
                            counter.inc();
                        }
                        serve_on(&workers, worker, target, conn, stream, peer, permit);
                    }
                    None => {
                        if let Some(counter) = served.get(worker) {
                            counter.inc();
                        }
                        tasks.spawn(async move {
                            conn.serve(stream, peer).await;
                            drop(permit);
                        });
                    }
                },
                // Over `max_connections`: wait briefly for a slot, then turn
                // the client away with an answer rather than a silent backlog.
                Err(_) => {
                    let waiting = waiting.clone();
                    tasks.spawn(async move {
                        let Some((timeout, mode, rejected, cap)) = conn.queue_settings() else {
                            return;
                        };
                        let queued = waiting.fetch_add(1, Ordering::Relaxed) < cap;
                        let permit = if queued {
                            tokio::time::timeout(timeout, semaphore.acquire_owned())
                                .await
                                .ok()
                                .and_then(Result::ok)
                        } else {
                            None
                        };
                        waiting.fetch_sub(1, Ordering::Relaxed);
                        match permit {
                            Some(permit) => {
                                conn.serve(stream, peer).await;
                                drop(permit);
                            }
                            None => {
                                rejected.inc();
                                conn.log_rejection(peer, mode);
                                reject(stream, mode).await;
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Serves `stream` on worker `target`: the one that accepted it, or the
/// least loaded one when that one was clearly busier (see `workers.rs`).
/// Either way the serving worker counts it in its load.
fn serve_on(
    workers: &Arc<Workers>,
    accepted_by: usize,
    target: usize,
    conn: Connection,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let serving = workers.serving(target);
    let tasks = conn.tasks.clone();
    let in_transit = tasks.token();
    let serve = move |stream: TcpStream| {
        tasks.spawn(async move {
            conn.serve(stream, peer).await;
            drop((permit, serving));
        });
    };
    if target == accepted_by {
        serve(stream);
        drop(in_transit);
        return;
    }
    // The socket leaves this worker's reactor and joins the other's. The
    // token counts it as a task while it travels, so a drain that ends now
    // (shutdown, an upgrade) waits for it rather than exiting under it.
    match stream.into_std() {
        Ok(stream) => workers.run_on(target, move || {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream),
                Err(error) => tracing::debug!(%error, "Cannot take over a connection"),
            }
            drop(in_transit);
        }),
        Err(error) => tracing::debug!(%error, "Cannot hand over a connection"),
    }
}

/// What a connection over the limit gets: HTTP clients a 503 with
/// `Connection: close` once their request head is in, TCP clients a close.
async fn reject(stream: TcpStream, mode: Mode) {
    let answer = (mode == Mode::Http).then(|| {
        crate::lingering::plain_response(
            "503 Service Unavailable",
            "retry-after: 1\r\n",
            "server at capacity, try again\n",
        )
    });
    crate::lingering::answer_and_close(
        stream,
        answer.as_deref().map(str::as_bytes),
        REJECT_READ_TIMEOUT,
    )
    .await;
}

/// A one-way signal: set once, never cleared. Requests read the flag
/// without locking; tasks wait on the token. A listener's drain is one,
/// the hard stop after the drain deadline another.
#[derive(Default)]
pub struct Latch {
    flag: AtomicBool,
    token: CancellationToken,
    /// Setting the parent sets this one too (a listener's own hard stop
    /// under the process-wide one).
    parent: Option<Arc<Latch>>,
}

/// Tells a listener's connections to finish up.
pub type Drain = Latch;

impl Latch {
    pub fn set(&self) {
        // Before the wake-ups, so a woken task sees the flag (`signalled`).
        self.flag.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire) || self.parent.as_ref().is_some_and(|p| p.is_set())
    }

    /// A latch that is set with `parent`, or on its own.
    pub fn child(parent: &Arc<Latch>) -> Self {
        Self {
            flag: AtomicBool::new(false),
            token: parent.token.child_token(),
            parent: Some(parent.clone()),
        }
    }

    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

/// Which signal ended a connection's normal service.
enum Signal {
    Drain,
    Stop,
}

/// Resolves when `drain` or `stop` is set.
///
/// Each token is waited on once, which puts this task on its wait list (a
/// task's waker never changes); after that, a wake-up of the connection's
/// task — two per request — reads two flags, where polling the tokens
/// again would take both of their locks every time.
async fn signalled(drain: &Latch, stop: &Latch) -> Signal {
    let drain_wait = drain.token.cancelled();
    let stop_wait = stop.token.cancelled();
    tokio::pin!(drain_wait, stop_wait);
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if !registered {
            registered = true;
            let _ = drain_wait.as_mut().poll(cx);
            let _ = stop_wait.as_mut().poll(cx);
        }
        if stop.is_set() {
            std::task::Poll::Ready(Signal::Stop)
        } else if drain.is_set() {
            std::task::Poll::Ready(Signal::Drain)
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// A client connection's two ends: `peer` is the client (from a PROXY
/// header when the listener reads one), `local` the address it reached.
#[derive(Debug, Clone, Copy)]
pub struct ConnAddrs {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// What an accepted connection needs from its listener.
struct Connection {
    key: ListenerKey,
    table: TableHandle,
    drain: Arc<Drain>,
    hard_stop: Arc<Latch>,
    tasks: TaskTracker,
}

impl Connection {
    /// For a connection over the limit: how long it may wait, its mode,
    /// the counter of rejections, and how many may wait at once.
    fn queue_settings(&self) -> Option<(Duration, Mode, prometheus::IntCounter, usize)> {
        let table = self.table.current();
        let listener = table.listener(&self.key)?;
        // A TLS client cannot read a plain-text 503: it gets a close.
        let answered_as = match listener.tls {
            Some(_) => Mode::Tcp,
            None => listener.spec.mode,
        };
        Some((
            listener.spec.queue_timeout,
            answered_as,
            listener.metrics.rejected.clone(),
            listener.spec.max_connections.unwrap_or(0).max(64),
        ))
    }

    /// The access log line of a connection turned away at the limit.
    fn log_rejection(&self, peer: SocketAddr, answered_as: Mode) {
        use crate::access_log::{AccessLog, Protocol, Termination};
        let table = self.table.current();
        let Some(log) = table
            .listener(&self.key)
            .and_then(|l| l.access_log.as_ref())
        else {
            return;
        };
        let protocol = match answered_as {
            Mode::Http => Protocol::Http11,
            Mode::Tcp => Protocol::Tcp,
        };
        let mut record = log.record(peer, protocol);
        record.status = (answered_as == Mode::Http).then_some(503);
        record.termination = Termination::QueueTimeout;
        AccessLog::submit(record);
    }

    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        // Only the listener entry is kept for the connection's life; holding
        // the whole table would pin every old snapshot under idle clients.
        let (listener, timeouts, limits) = {
            let table = self.table.current();
            let Some(listener) = table.listener(&self.key).cloned() else {
                return; // removed between accept and now
            };
            (listener, table.config.timeouts, table.config.limits)
        };
        let metrics = listener.metrics.clone();
        metrics.accepted.inc();
        metrics.active.inc();
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(self.key.bind);
        if listener.spec.proxy_protocol.is_none()
            && listener.tls.is_none()
            && listener.sni_routes.is_none()
        {
            let addrs = ConnAddrs { peer, local };
            self.serve_stream(stream, addrs, &listener, timeouts, limits, Learned::Nothing)
                .await;
            metrics.active.dec();
            return;
        }
        // What comes before the connection's own protocol (a PROXY header,
        // a TLS handshake) shares one deadline, as a request head would.
        let deadline = tokio::time::Instant::now() + timeouts.header_read;
        let hard_stop = self.hard_stop.clone();
        // Boxed: a TLS session and its HTTP connection are large, and kept
        // inline they would make every connection's task as large, plain
        // ones included (measured: 12k instructions of copying per accept).
        let addrs = ConnAddrs { peer, local };
        let preamble =
            Box::pin(self.serve_preamble(stream, addrs, &listener, timeouts, limits, deadline));
        tokio::select! {
            () = preamble => {}
            () = hard_stop.wait() => {}
        }
        metrics.active.dec();
    }

    /// A connection whose listener reads a PROXY header or terminates TLS.
    async fn serve_preamble(
        self,
        stream: TcpStream,
        mut addrs: ConnAddrs,
        listener: &Arc<crate::table::ListenerEntry>,
        timeouts: crate::config::Timeouts,
        limits: crate::config::Limits,
        deadline: tokio::time::Instant,
    ) {
        let mut stream = super::rewind::Rewind::new(stream);
        if let (Some(trusted), Some(failures)) = (
            &listener.spec.proxy_protocol,
            &listener.proxy_protocol_failures,
        ) {
            let header = if trusted.iter().any(|net| net.contains(&addrs.peer.ip())) {
                super::proxy_protocol::read_header(&mut stream, deadline).await
            } else {
                Err(super::proxy_protocol::HeaderRefused::Untrusted)
            };
            match header {
                Ok(Some(client)) => addrs.peer = client,
                Ok(None) => {}
                Err(refused) => {
                    failures.count(refused);
                    tracing::debug!(peer = %addrs.peer, reason = refused.reason(), "PROXY header refused");
                    return;
                }
            }
        }
        if let Some(routes) = &listener.sni_routes {
            let learned = match crate::tls::hello::read_client_hello(&mut stream, deadline).await {
                Ok(sni) => Learned::Hello(sni),
                Err(no_hello) => {
                    routes.metrics.failure(no_hello.reason());
                    tracing::debug!(peer = %addrs.peer, reason = no_hello.reason(), "No ClientHello to route on");
                    return;
                }
            };
            self.serve_stream(stream, addrs, listener, timeouts, limits, learned)
                .await;
            return;
        }
        let Some(tls) = &listener.tls else {
            self.serve_stream(stream, addrs, listener, timeouts, limits, Learned::Nothing)
                .await;
            return;
        };
        match crate::tls::accept::handshake(stream, tls.config.clone(), deadline).await {
            Ok(session) => {
                let (_, state) = session.get_ref();
                let version =
                    usize::from(state.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
                let resumed = usize::from(matches!(
                    state.handshake_kind(),
                    Some(rustls::HandshakeKind::Resumed)
                ));
                tls.metrics.handshakes[version][resumed].inc();
                let spec = listener.spec.tls.as_deref();
                let subject_header = spec
                    .and_then(|t| t.client_auth.as_ref())
                    .and_then(|a| a.subject_header.clone());
                let info = ConnTls {
                    version: if version == 1 { "1.3" } else { "1.2" },
                    sni: state.server_name().map(Box::from),
                    sni_host_check: spec.is_some_and(|t| t.sni_host_check),
                    client_subject: subject_header.map(|header| {
                        let subject = state
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(crate::tls::subject_of)
                            .and_then(|s| HeaderValue::from_str(&s).ok());
                        (header, subject)
                    }),
                };
                self.serve_stream(
                    session,
                    addrs,
                    listener,
                    timeouts,
                    limits,
                    Learned::Tls(info),
                )
                .await;
            }
            Err(refusal) => {
                tls.metrics.failure(refusal.reason());
                tracing::debug!(peer = %addrs.peer, reason = refusal.reason(), error = ?refusal, "TLS handshake failed");
                refusal.finish().await;
            }
        }
    }

    /// Serves a connection whose TLS, if any, is already off.
    async fn serve_stream<S>(
        self,
        stream: S,
        addrs: ConnAddrs,
        listener: &Arc<crate::table::ListenerEntry>,
        timeouts: crate::config::Timeouts,
        limits: crate::config::Limits,
        learned: Learned,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = &listener.metrics;
        let activity = Arc::new(ConnActivity::default());
        let mode = listener.spec.mode;
        let io = ClientIo::new(
            stream,
            activity.clone(),
            ClientTimeouts {
                header_read: (mode == Mode::Http).then_some(timeouts.header_read),
                client_idle: timeouts.client_idle,
                client_stall: timeouts.client_stall,
            },
            ClientCounters {
                received: metrics.received_bytes.clone(),
                sent: metrics.sent_bytes.clone(),
                stalls: metrics.client_stalls.clone(),
            },
        );
        match mode {
            Mode::Tcp => serve_tcp(io, addrs, listener, learned, &self.hard_stop).await,
            Mode::Http => {
                let ctx = Arc::new(ConnCtx {
                    key: self.key,
                    accept_listener: listener.clone(),
                    table: self.table,
                    peer: addrs.peer,
                    peer_header: HeaderValue::from_str(&addrs.peer.ip().to_string())
                        .unwrap_or(HeaderValue::from_static("unknown")),
                    activity,
                    drain: self.drain.clone(),
                    hard_stop: self.hard_stop.clone(),
                    tasks: self.tasks,
                    limits,
                    client_stall: timeouts.client_stall,
                    local: addrs.local,
                    tls: match learned {
                        Learned::Tls(tls) => Some(tls),
                        _ => None,
                    },
                });
                serve_http(io, ctx, self.drain, self.hard_stop).await;
            }
        }
    }
}

/// A TCP connection: to the listener's backend, or with `sni_routes` to
/// the one its ClientHello's SNI name picks (read ahead before, see
/// `serve_preamble`; the bytes are still in the stream).
async fn serve_tcp<S>(
    io: ClientIo<S>,
    addrs: ConnAddrs,
    listener: &crate::table::ListenerEntry,
    learned: Learned,
    hard_stop: &Latch,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let default = listener.default_target.as_ref();
    let target = match (&listener.sni_routes, &learned) {
        (Some(routes), Learned::Hello(sni)) => routes.target(sni.as_deref(), default),
        _ => default,
    };
    let log = listener.access_log.as_ref().map(|log| {
        let mut record = log.record(addrs.peer, crate::access_log::Protocol::Tcp);
        let sni = match &learned {
            Learned::Hello(sni) => sni.as_deref(),
            Learned::Tls(tls) => {
                record.tls_version = Some(tls.version);
                tls.sni.as_deref()
            }
            Learned::Nothing => None,
        };
        if let Some(sni) = sni {
            record.texts.push(crate::access_log::Text::Sni, sni);
        }
        record
    });
    match target {
        Some(target) => {
            let drain_timeout = listener.spec.drain_timeout;
            tcp::serve(io, addrs, target, drain_timeout, hard_stop, log).await;
        }
        None => {
            tracing::debug!(peer = %addrs.peer, "No SNI route and no default backend");
            if let Some(mut log) = log {
                log.termination = crate::access_log::Termination::NoRoute;
                crate::access_log::AccessLog::submit(log);
            }
        }
    }
}

/// What was learned of a connection before its own protocol started.
enum Learned {
    Nothing,
    /// It came in over TLS, terminated here.
    Tls(ConnTls),
    /// Its ClientHello, read ahead for `sni_routes`, named this server.
    Hello(Option<String>),
}

async fn serve_http<S>(io: ClientIo<S>, ctx: Arc<ConnCtx>, drain: Arc<Drain>, hard_stop: Arc<Latch>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = ctx.activity.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Header and idle timeouts are enforced by `ClientIo`, which can tell
    // the two apart; hyper's own timer would cut idle keep-alive connections.
    // A head over max_buf_size gets 431 from hyper. Responses are written
    // flattened (one `send` instead of a `writev` of head and body): the
    // vectored path costs more in the kernel than copying a small body, and
    // measured no better on 16 KiB bodies (bench/RESULTS.md).
    let max_header = ctx.limits.max_header_bytes;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .writev(false)
        .max_buf_size(max_header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX));
    let conn_ctx = ctx.clone();
    let service = service_fn(move |req| http::handle(req, ctx.clone()));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            log_conn_end(result, &conn_ctx);
            return;
        }
        signal = signalled(&drain, &hard_stop) => match signal {
            Signal::Drain => {}
            Signal::Stop => return,
        },
    }
    // HTTP/1: keep serving; each response now says `Connection: close`.
    // HTTP/2: GOAWAY tells the client which streams we will still answer.
    if activity.is_h2() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        result = conn.as_mut() => log_conn_end(result, &conn_ctx),
        () = hard_stop.wait() => {}
    }
}

/// Logs how a client connection ended; a request hyper refused before our
/// service saw it (a head too large: 431; unparseable: 400) gets its
/// access log line here.
fn log_conn_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>, ctx: &ConnCtx) {
    let Err(error) = result else {
        return;
    };
    tracing::debug!(error = %error, "Client connection ended with an error");
    let Some(log) = &ctx.accept_listener.access_log else {
        return;
    };
    let Some(refused) = error.downcast_ref::<hyper::Error>() else {
        return;
    };
    use crate::access_log::{AccessLog, Protocol, Termination};
    let (status, termination) = if refused.is_parse_too_large() {
        (431, Termination::HeadTooLarge)
    } else if refused.is_parse() {
        (400, Termination::BadRequest)
    } else {
        return;
    };
    let mut record = log.record(ctx.peer, Protocol::Http11);
    record.status = Some(status);
    record.termination = termination;
    if let Some(tls) = &ctx.tls {
        record.tls_version = Some(tls.version);
    }
    AccessLog::submit(record);
}
