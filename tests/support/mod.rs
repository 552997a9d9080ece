//! Real servers and a real Switchyard for integration tests.
//!
//! Everything binds 127.0.0.x:0 and is aborted when dropped. Helpers panic
//! with a message on failure, which fails the test that used them.

#![allow(dead_code)] // each test binary uses a different subset

pub mod consul;
pub mod dns;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchyard::app::{App, AppOptions};
use switchyard::control::{ReloadRecord, Trigger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Aborts a task when dropped, so servers die with their test.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A body of `total` bytes sent in 64 KiB chunks, never held whole.
pub fn streamed(total: usize) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let mut left = total;
    let stream = futures_util::stream::iter(std::iter::from_fn(move || {
        (left > 0).then(|| {
            let n = left.min(CHUNK);
            left -= n;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..n)))
        })
    }));
    BodyExt::boxed(StreamBody::new(stream))
}

// === HTTP backend ===

/// What a test backend does with a request.
#[derive(Clone)]
enum Behaviour {
    /// Answers with its name, and echoes forwarding headers as `x-seen-*`.
    Name,
    /// Like `Name`, but each request waits for a permit from the test.
    Held(Arc<Semaphore>),
}

/// HTTP/1.1 and h2c backend on an ephemeral port. Paths:
/// `/download/N` streams N bytes; `/upload` answers with the body length;
/// anything else answers with the backend's name.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: &'static str,
    hits: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    release: Option<Arc<Semaphore>>,
    /// Connection tasks, aborted with the backend: dropping a `Backend` is
    /// like killing its process, open connections included.
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    _task: AbortOnDrop,
}

impl Drop for Backend {
    fn drop(&mut self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Backend {
    pub async fn start(name: &'static str) -> Self {
        Self::start_on("127.0.0.1", name, Behaviour::Name).await
    }

    pub async fn start_at(ip: &str, name: &'static str) -> Self {
        Self::start_on(ip, name, Behaviour::Name).await
    }

    /// Every request waits until the test calls [`Backend::release`].
    pub async fn held(name: &'static str) -> Self {
        Self::start_on(
            "127.0.0.1",
            name,
            Behaviour::Held(Arc::new(Semaphore::new(0))),
        )
        .await
    }

    /// A backend on exactly `addr`; `None` if the address is taken.
    pub async fn start_bound(addr: SocketAddr, name: &'static str) -> Option<Self> {
        let listener = TcpListener::bind(addr).await.ok()?;
        Some(Self::serve(listener, name, Behaviour::Name))
    }

    /// A backend on `addr` again after the one there was dropped, waiting
    /// (ten seconds at most) for the port to be free.
    pub async fn restart_at(addr: SocketAddr, name: &'static str) -> Self {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(b) = Self::start_bound(addr, name).await {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{addr} stayed taken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Two backends on the same port of two addresses (127.0.0.2 and
    /// 127.0.0.3, say), as two instances behind one DNS name would be.
    pub async fn pair_on_one_port(
        a: (&str, &'static str),
        b: (&str, &'static str),
    ) -> (Self, Self) {
        for _ in 0..20 {
            let first = Self::start_at(a.0, a.1).await;
            let second_addr = SocketAddr::new(a_ip(b.0), first.addr.port());
            if let Some(second) = Self::start_bound(second_addr, b.1).await {
                return (first, second);
            }
        }
        panic!("no common free port on {} and {}", a.0, b.0);
    }

    /// Like [`pair_on_one_port`](Self::pair_on_one_port), the first one
    /// holding every request until released.
    pub async fn held_pair_on_one_port(
        a: (&str, &'static str),
        b: (&str, &'static str),
    ) -> (Self, Self) {
        for _ in 0..20 {
            let held = Behaviour::Held(Arc::new(Semaphore::new(0)));
            let first = Self::start_on(a.0, a.1, held).await;
            let second_addr = SocketAddr::new(a_ip(b.0), first.addr.port());
            if let Some(second) = Self::start_bound(second_addr, b.1).await {
                return (first, second);
            }
        }
        panic!("no common free port on {} and {}", a.0, b.0);
    }

    async fn start_on(ip: &str, name: &'static str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind backend");
        Self::serve(listener, name, behaviour)
    }

    fn serve(listener: TcpListener, name: &'static str, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().expect("backend addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let release = match &behaviour {
            Behaviour::Held(s) => Some(s.clone()),
            Behaviour::Name => None,
        };
        let (h, a) = (hits.clone(), arrived.clone());
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conn_tasks = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (h, a, behaviour) = (h.clone(), a.clone(), behaviour.clone());
                let svc = service_fn(move |req| {
                    let (h, a, behaviour) = (h.clone(), a.clone(), behaviour.clone());
                    async move {
                        a.fetch_add(1, Ordering::SeqCst);
                        if let Behaviour::Held(gate) = &behaviour {
                            gate.acquire().await.expect("gate").forget();
                        }
                        let resp = backend_answer(name, req).await;
                        h.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(io), svc)
                        .await;
                });
                let mut tasks = conn_tasks.lock().unwrap();
                tasks.retain(|t: &tokio::task::AbortHandle| !t.is_finished());
                tasks.push(conn.abort_handle());
            }
        });
        Self {
            addr,
            name,
            hits,
            arrived,
            connections,
            release,
            conns,
            _task: AbortOnDrop(task),
        }
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests received so far (answered or held).
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Connections the proxy opened to this backend so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.release
            .as_ref()
            .expect("not a held backend")
            .add_permits(n);
    }
}

async fn backend_answer(name: &'static str, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if let Some(n) = path.strip_prefix("/download/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(streamed(n));
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => break,
            }
        }
        return Response::new(full(total.to_string()));
    }
    // Every value of the header, so a repeated one shows.
    let seen = |h: &str| {
        req.headers()
            .get_all(h)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut resp = Response::new(full(name));
    for (theirs, ours) in [
        ("x-forwarded-for", "x-seen-xff"),
        ("x-forwarded-proto", "x-seen-proto"),
        ("x-forwarded-host", "x-seen-forwarded-host"),
        ("host", "x-seen-host"),
        ("x-hop", "x-seen-hop"),
        ("x-client-subject", "x-seen-client-subject"),
        ("x-request-id", "x-seen-request-id"),
        ("traceparent", "x-seen-traceparent"),
        ("tracestate", "x-seen-tracestate"),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(&seen(theirs)) {
            resp.headers_mut().insert(ours, v);
        }
    }
    resp.headers_mut().insert(
        "x-seen-version",
        http::HeaderValue::from_str(&format!("{:?}", req.version())).unwrap(),
    );
    if let Some(pq) = req.uri().path_and_query()
        && let Ok(v) = http::HeaderValue::from_str(pq.as_str())
    {
        resp.headers_mut().insert("x-seen-path", v);
    }
    resp
}

// === WebSocket and TCP backends ===

/// WebSocket server echoing every message.
pub async fn websocket_echo() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let addr = listener.local_addr().expect("ws addr");
    let task = tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() || ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, AbortOnDrop(task))
}

/// TCP server that echoes until the client half-closes, then sends a
/// trailer and closes its own half.
pub async fn tcp_echo() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let addr = listener.local_addr().expect("tcp addr");
    let task = tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = io.write_all(b"<eof seen>").await;
                let _ = io.shutdown().await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

// === Switchyard under test ===

/// A Switchyard running in this process on a config file in a temp dir.
pub struct Switchyard {
    pub app: App,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Switchyard {
    /// Starts with `config` (TOML), reloading only when asked. Use port 0
    /// binds; `admin` is added.
    pub async fn start(config: &str) -> Self {
        Self::start_with(
            config,
            AppOptions {
                watch_config: false,
                workers: 0,
                ..AppOptions::default()
            },
        )
        .await
    }

    /// Starts with the config file watched, as `switchyard run` does.
    pub async fn start_watching(config: &str) -> Self {
        Self::start_with(config, AppOptions::default()).await
    }

    /// Starts with `workers` data-plane worker threads, each with its own
    /// runtime and `SO_REUSEPORT` sockets, as `switchyard run --threads`.
    pub async fn start_with_workers(config: &str, workers: usize) -> Self {
        Self::start_with(
            config,
            AppOptions {
                watch_config: false,
                workers,
                ..AppOptions::default()
            },
        )
        .await
    }

    async fn start_with(config: &str, options: AppOptions) -> Self {
        Self::try_start_with(config, options)
            .await
            .expect("switchyard starts")
    }

    /// Starts, or returns the start error (as `switchyard run` prints it).
    pub async fn try_start(config: &str) -> Result<Self, String> {
        Self::try_start_with(
            config,
            AppOptions {
                watch_config: false,
                workers: 0,
                ..AppOptions::default()
            },
        )
        .await
    }

    async fn try_start_with(config: &str, options: AppOptions) -> Result<Self, String> {
        Self::try_start_in(tempfile::tempdir().expect("tempdir"), config, options).await
    }

    /// Like [`try_start_in`](Self::try_start_in), reloading only when
    /// asked; panics if the start fails.
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> Self {
        Self::try_start_in(
            dir,
            config,
            AppOptions {
                watch_config: false,
                workers: 0,
                ..AppOptions::default()
            },
        )
        .await
        .expect("switchyard starts")
    }

    /// Like [`start_in`](Self::start_in), with the config files watched.
    pub async fn start_watching_in(dir: tempfile::TempDir, config: &str) -> Self {
        Self::try_start_in(dir, config, AppOptions::default())
            .await
            .expect("switchyard starts")
    }

    /// Starts with `config` written into `dir`, which already holds the
    /// files it refers to (templates, a kv directory).
    pub async fn try_start_in(
        dir: tempfile::TempDir,
        config: &str,
        options: AppOptions,
    ) -> Result<Self, String> {
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, with_admin(config)).expect("write config");
        let app = App::start(&path, options)
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        Ok(Self {
            app,
            dir,
            config: path,
        })
    }

    /// The admin API's `/status` document.
    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = self.admin_get("/status").await;
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Asserts `family{listener, reason}` for each `(reason, count)`.
    pub async fn assert_reasons(&self, family: &str, listener: &str, expected: &[(&str, f64)]) {
        for (reason, count) in expected {
            let series = format!(r#"{family}{{listener="{listener}",reason="{reason}"}}"#);
            assert_eq!(self.metric(&series).await, Some(*count), "{series}");
        }
    }

    /// The value of one metric series in `/metrics` (exact label text).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.admin_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.app
            .listener_addr(listener)
            .unwrap_or_else(|| panic!("listener {listener} is not running"))
    }

    /// Replaces the config file (atomically, as config tools do).
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join(".switchyard.toml.tmp");
        std::fs::write(&tmp, with_admin(config)).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub async fn reload(&self) -> ReloadRecord {
        self.app
            .reload(Trigger::Api)
            .await
            .expect("control task alive")
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let mut c = HttpClient::connect(self.app.admin_addr()).await;
        let (s, _, b) = c.get(path, None).await.expect("admin answers");
        (s, b)
    }

    /// `POST path` on the admin API (`/reload` answers 422 when rejected).
    pub async fn admin_post(&self, path: &str) -> (StatusCode, String) {
        let mut c = HttpClient::connect(self.app.admin_addr()).await;
        let req = Request::post(path).body(full("")).expect("request");
        let (s, _, b) = c.send(req).await.expect("admin answers");
        (s, b)
    }
}

pub fn with_admin(config: &str) -> String {
    if config.contains("[admin]") {
        config.to_string()
    } else {
        // Last: a table header ends whatever section came before it, and
        // top-level keys (`include`) must come before any header.
        format!("{config}\n\n[admin]\nbind = \"127.0.0.1:0\"\n")
    }
}

// === client ===

/// Keep-alive clients sending `GET /` back to back until stopped (or
/// 100,000 requests each); counts every answer that is not a 200.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<usize>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Self {
        Self::start_with(addr, clients, false)
    }

    /// Like [`start`](Self::start), each request on a new connection
    /// (what a TCP listener's connect path sees).
    pub fn start_fresh(addr: SocketAddr, clients: usize) -> Self {
        Self::start_with(addr, clients, true)
    }

    fn start_with(addr: SocketAddr, clients: usize, fresh: bool) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, failed) = (stop.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut client = HttpClient::connect(addr).await;
                    let mut sent = 0;
                    while !stop.load(Ordering::SeqCst) && sent < 100_000 {
                        if fresh && sent > 0 {
                            client = HttpClient::connect(addr).await;
                        }
                        match client.get("/", None).await {
                            Ok((StatusCode::OK, _, _)) => {}
                            _ => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                client = HttpClient::connect(addr).await;
                            }
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        Self {
            stop,
            failed,
            tasks,
        }
    }

    /// Requests failed so far.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops the clients; returns (requests sent, requests failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let mut sent = 0;
        for t in self.tasks {
            sent += t.await.expect("client task");
        }
        (sent, self.failed.load(Ordering::SeqCst))
    }
}

/// One keep-alive HTTP/1.1 client connection.
pub struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
    _conn: AbortOnDrop,
}

pub type Answer = (StatusCode, http::HeaderMap, String);

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let io = TcpStream::connect(addr).await.expect("connect to proxy");
        Self::over(io).await
    }

    /// HTTP/1.1 over a connected stream (a TLS session, say).
    pub async fn over<S>(io: S) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Self {
            sender,
            _conn: AbortOnDrop(task),
        }
    }

    pub async fn get(&mut self, path: &str, host: Option<&str>) -> Result<Answer, hyper::Error> {
        let mut req = Request::get(path);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        self.send(req.body(full("")).expect("request")).await
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> Result<Answer, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }
}

/// Reads `stream` until the peer closes it, within 5 s; panics with
/// `what` if it stays open.
pub async fn closed_by_peer(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "not closed: {what}");
}

/// One request on a fresh connection: `(status, body)`.
pub async fn get(addr: SocketAddr, path: &str, host: Option<&str>) -> (StatusCode, String) {
    let mut c = HttpClient::connect(addr).await;
    let (s, _, b) = c.get(path, host).await.expect("proxy answers");
    (s, b)
}

// === Switchyard as a separate process ===

/// The real binary, for signals, exit codes and memory measurements.
pub struct SwitchyardProcess {
    pub child: std::process::Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    log: Arc<std::sync::Mutex<Vec<String>>>,
    stdout: Arc<std::sync::Mutex<Vec<String>>>,
}

use std::collections::HashMap;
use std::io::BufRead;

impl SwitchyardProcess {
    /// Starts `switchyard run` and waits until it has logged its addresses.
    pub fn start(config: &str) -> Self {
        Self::start_with_args(config, &[])
    }

    /// Like `start`, with extra arguments after `run -c FILE`.
    pub fn start_with_args(config: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_exe_in(
            dir,
            Path::new(env!("CARGO_BIN_EXE_switchyard")),
            config,
            args,
        )
    }

    /// Like `start_with_args`, running the binary at `exe` with its config
    /// in `dir`.
    pub fn start_exe_in(dir: tempfile::TempDir, exe: &Path, config: &str, args: &[&str]) -> Self {
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, with_admin(config)).expect("write config");
        let mut child = std::process::Command::new(exe)
            .args(["--log-format", "json", "run", "-c"])
            .arg(&path)
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let stderr = child.stderr.take().expect("stderr");
        let stdout_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let keep_stdout = stdout_lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                keep_stdout.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut listeners = HashMap::new();
        let admin = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("switchyard logs its start");
            let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
            match v["message"].as_str() {
                Some("Listening") => {
                    listeners.insert(
                        v["listener"].as_str().unwrap().to_string(),
                        v["addr"].as_str().unwrap().parse().unwrap(),
                    );
                }
                Some("Switchyard started") => break v["admin"].as_str().unwrap().parse().unwrap(),
                _ => {}
            }
        };
        Self {
            child,
            admin,
            listeners,
            dir,
            config: path,
            log,
            stdout: stdout_lines,
        }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners[listener]
    }

    /// What the process wrote to standard output (access logs), by line.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The value of one metric series in `/metrics` (exact label text).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let mut c = HttpClient::connect(self.admin).await;
        let (_, _, body) = c.get("/metrics", None).await.expect("admin answers");
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `(VmRSS, VmHWM)` in bytes, from /proc.
    pub fn memory(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .expect("memory field")
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child this test spawned and still owns.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join(".switchyard.toml.tmp");
        std::fs::write(&tmp, with_admin(config)).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "switchyard did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SwitchyardProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn a_ip(ip: &str) -> std::net::IpAddr {
    ip.parse().expect("an IP address")
}

/// The `/status` entry of the endpoint at `addr` of the first backend.
pub fn endpoint(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    status["backends"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {addr} in {status}"))
}

/// A config with one HTTP listener `web` whose default backend `b` has the
/// one server `addr`. `top` goes before the listener (top-level sections),
/// `backend_extra` inside the backend.
pub fn single_backend(addr: SocketAddr, top: &str, backend_extra: &str) -> String {
    single_backend_with(addr, top, "", backend_extra)
}

/// Like [`single_backend`], with `listener_extra` inside the listener.
pub fn single_backend_with(
    addr: SocketAddr,
    top: &str,
    listener_extra: &str,
    backend_extra: &str,
) -> String {
    web_config(
        top,
        listener_extra,
        &format!("servers = [\"{addr}\"]\n{backend_extra}"),
    )
}

/// A config with one HTTP listener `web` whose default backend is `b`,
/// defined by `backend` (the lines after its name): `servers = [...]`,
/// `consul_service = "..."`, and so on. `top` goes first (top-level
/// sections), `listener_extra` inside the listener.
pub fn web_config(top: &str, listener_extra: &str, backend: &str) -> String {
    format!(
        r#"{top}
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "b"
{listener_extra}

[[backends]]
name = "b"
{backend}
"#
    )
}
