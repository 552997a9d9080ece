//! The soak (issue 21): Switchyard as a separate process under mixed load
//! while its world keeps changing, watched for leaks and lost requests.
//!
//! Load, every operation bounded by a 10 s timeout and paced (open loop, so
//! latency is not queueing behind our own clients): keep-alive HTTP
//! clients, clients opening a new connection per request, WebSocket
//! sessions of 20 echoed messages, TCP sessions of 10 echoed chunks, and
//! slow clients that trickle request heads and bodies a few bytes at a
//! time. Backends: two static servers, three servers behind one DNS name,
//! three instances of one Consul service, a WebSocket echo and a TCP echo.
//!
//! Faults, all at once: the config file alternates between two versions
//! (rewritten, then `POST /reload`); the DNS name's A records rotate; Consul
//! instances turn critical, pass again, deregister and register again (at
//! least one stays passing); the test Consul server stops and starts again
//! on the same port (new state, instances registered again, as a restarted
//! dev agent).
//!
//! No fault takes a backend down, so no fault must cost a request: the
//! bound is 0 failed requests of any kind. Each failure is still classified
//! by the fault that explains it (the latest fault in the 2 s before it).
//!
//! Every interval it reports RSS, open fds and tokio tasks of the
//! Switchyard process (from /proc and `switchyard_runtime_tasks`), req/s,
//! HTTP p99 and failures. Bounds, after warm-up (the first 20 %): RSS at
//! most 5 % above its value at the end of warm-up (`--short`: 10 %, see
//! [`Bounds`]); fds and tasks flat under load (the mean of the last fifth
//! within a constant of the first fifth after warm-up) and, with the load
//! stopped, back to within a constant of where they were before it (idle
//! pooled upstream connections, and their connection tasks, counted apart:
//! the pool keeps them until it meets them again); no
//! failed request, no failed reload, no panic in the log; discovery still
//! follows DNS and Consul at the end. Exits 1 when a bound is broken.
//!
//! Run: `cargo bench --bench soak` (30 minutes, release binary);
//! `cargo test --release --bench soak -- --short` or, as CI does, with the
//! debug binary: `cargo test --bench soak -- --short` (2 minutes).
//! `--seconds N` and `--interval N` override the length and the report
//! interval.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use support::consul::{ConsulServer, ServiceInstance, restartable_port};
use support::dns::DnsServer;
use support::{Backend, HttpClient, SwitchyardProcess, full, tcp_echo, websocket_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Every client operation (a request, a message, a chunk) ends within this.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// A failure this soon after a fault is put down to it.
const BLAME_WINDOW: Duration = Duration::from_secs(2);
const DNS_NAME: &str = "api.soak.test";
const CONSUL_SERVICE: &str = "soak-api";

struct Options {
    seconds: u64,
    interval: u64,
    short: bool,
}

impl Options {
    fn from_args() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let short = args.iter().any(|a| a == "--short");
        let value = |name: &str| {
            args.windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].parse::<u64>().expect("a whole number"))
        };
        Self {
            seconds: value("--seconds").unwrap_or(if short { 120 } else { 1800 }),
            interval: value("--interval").unwrap_or(if short { 10 } else { 60 }),
            short,
        }
    }
}

/// The bounds a run must keep; see the module doc.
struct Bounds {
    /// Largest RSS after warm-up over RSS at the end of warm-up.
    rss_growth: f64,
    /// Under load: mean of the last fifth minus mean of the first fifth
    /// after warm-up.
    fds_drift: f64,
    tasks_drift: f64,
    /// Load stopped and idle, after minus before: fds other than pooled
    /// upstream connections; tasks beyond one per pooled connection added
    /// (hyper's connection task).
    fds_idle: i64,
    tasks_idle: i64,
}

impl Bounds {
    fn for_run(short: bool) -> Self {
        Self {
            // Two minutes hold about 25 reloads and three Consul restarts
            // after a 20 s warm-up; the allocator's arenas are still
            // settling then, so the short run only catches gross growth.
            rss_growth: if short { 1.10 } else { 1.05 },
            fds_drift: 12.0,
            tasks_drift: 12.0,
            fds_idle: 4,
            tasks_idle: 4,
        }
    }
}

// === what the clients record ===

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    KeepAlive,
    Fresh,
    WebSocket,
    Tcp,
    Slow,
}

const KINDS: [Kind; 5] = [
    Kind::KeepAlive,
    Kind::Fresh,
    Kind::WebSocket,
    Kind::Tcp,
    Kind::Slow,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KeepAlive => "keep-alive HTTP requests",
            Kind::Fresh => "HTTP requests on new connections",
            Kind::WebSocket => "WebSocket messages echoed",
            Kind::Tcp => "TCP chunks echoed",
            Kind::Slow => "slow-client HTTP requests",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    ConfigSwap,
    DnsChange,
    ConsulFlap,
    ConsulRestart,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ConfigSwap => "config swap",
            Fault::DnsChange => "DNS change",
            Fault::ConsulFlap => "Consul flap",
            Fault::ConsulRestart => "Consul restart",
        }
    }
}

struct Failure {
    kind: Kind,
    began: Instant,
    what: String,
}

struct Stats {
    stop: AtomicBool,
    done: [AtomicU64; 5],
    failures: Mutex<Vec<Failure>>,
    /// Microseconds of HTTP requests (keep-alive and new connections)
    /// since the last report.
    latencies: Mutex<Vec<u32>>,
    faults: Mutex<Vec<(Instant, Fault)>>,
    reload_failures: Mutex<Vec<String>>,
}

impl Stats {
    fn new() -> Self {
        Self {
            stop: AtomicBool::new(false),
            done: Default::default(),
            failures: Mutex::default(),
            latencies: Mutex::default(),
            faults: Mutex::default(),
            reload_failures: Mutex::default(),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ok(&self, kind: Kind, began: Instant) {
        self.done[kind as usize].fetch_add(1, Ordering::Relaxed);
        if matches!(kind, Kind::KeepAlive | Kind::Fresh) {
            let micros = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.latencies.lock().unwrap().push(micros);
        }
    }

    fn fail(&self, kind: Kind, began: Instant, what: impl Into<String>) {
        self.failures.lock().unwrap().push(Failure {
            kind,
            began,
            what: what.into(),
        });
    }

    fn fault(&self, fault: Fault) {
        self.faults.lock().unwrap().push((Instant::now(), fault));
    }

    fn total_done(&self) -> u64 {
        self.done.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// The fault that explains a failure: the latest one from
    /// [`BLAME_WINDOW`] before the operation began to when it failed.
    fn blame(&self, failure: &Failure) -> &'static str {
        let faults = self.faults.lock().unwrap();
        let from = failure.began.checked_sub(BLAME_WINDOW);
        faults
            .iter()
            .rev()
            .find(|(at, _)| {
                from.is_none_or(|from| *at >= from) && *at <= failure.began + OP_TIMEOUT
            })
            .map_or("none (unexplained)", |(_, f)| f.name())
    }
}

/// Waits for the next slot of a client paced at one operation per
/// `period`; a client that fell behind goes on at once, without a burst.
async fn pace(next: &mut tokio::time::Instant, period: Duration) {
    let now = tokio::time::Instant::now();
    if *next > now {
        tokio::time::sleep_until(*next).await;
        *next += period;
    } else {
        *next = now + period;
    }
}

// === the clients ===

/// Paths the HTTP clients cycle through, and the backends each may name.
const PATHS: [(&str, &[&str]); 3] = [
    ("/", &["s1", "s2"]),
    ("/dns/k", &["d1", "d2", "d3"]),
    ("/consul/k", &["c1", "c2", "c3"]),
];

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(OP_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

async fn http_get(client: &mut HttpClient, n: usize) -> Result<(), String> {
    let (path, names) = PATHS[n % PATHS.len()];
    match tokio::time::timeout(OP_TIMEOUT, client.get(path, Some("soak"))).await {
        Err(_) => Err(format!("GET {path}: timed out")),
        Ok(Err(e)) => Err(format!("GET {path}: {e}")),
        Ok(Ok((StatusCode::OK, _, body))) if names.contains(&body.as_str()) => Ok(()),
        Ok(Ok((status, _, body))) => Err(format!("GET {path}: {status} {body:?}")),
    }
}

async fn keep_alive_client(addr: SocketAddr, stats: Arc<Stats>, rate: f64, id: usize) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    let mut client: Option<HttpClient> = None;
    let mut n = id;
    while !stats.stopped() {
        pace(&mut next, period).await;
        let began = Instant::now();
        if client.is_none() {
            match connect(addr).await {
                Ok(io) => client = Some(HttpClient::over(io).await),
                Err(e) => {
                    stats.fail(Kind::KeepAlive, began, e);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        match http_get(c, n).await {
            Ok(()) => stats.ok(Kind::KeepAlive, began),
            Err(e) => {
                stats.fail(Kind::KeepAlive, began, e);
                client = None;
            }
        }
        n += 1;
    }
}

async fn fresh_client(addr: SocketAddr, stats: Arc<Stats>, rate: f64, id: usize) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut next = tokio::time::Instant::now();
    let mut n = id;
    while !stats.stopped() {
        pace(&mut next, period).await;
        let began = Instant::now();
        let result = match connect(addr).await {
            Ok(io) => http_get(&mut HttpClient::over(io).await, n).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => stats.ok(Kind::Fresh, began),
            Err(e) => stats.fail(Kind::Fresh, began, e),
        }
        n += 1;
    }
}

/// Sessions of 20 messages, 100–400 ms apart, each echoed.
async fn websocket_client(addr: SocketAddr, stats: Arc<Stats>, id: usize) {
    while !stats.stopped() {
        let began = Instant::now();
        let session = async {
            let io = connect(addr).await?;
            let (mut ws, _) = tokio::time::timeout(
                OP_TIMEOUT,
                tokio_tungstenite::client_async("ws://soak/ws", io),
            )
            .await
            .map_err(|_| "WebSocket handshake: timed out".to_string())?
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
            for i in 0..20 {
                if stats.stopped() {
                    break;
                }
                let began = Instant::now();
                let text = format!("soak {id} {i}");
                let echoed = tokio::time::timeout(OP_TIMEOUT, async {
                    ws.send(Message::text(text.clone())).await?;
                    ws.next().await.transpose()
                })
                .await;
                match echoed {
                    Ok(Ok(Some(Message::Text(t)))) if t.as_str() == text => {
                        stats.ok(Kind::WebSocket, began)
                    }
                    other => return Err(format!("WebSocket message {i}: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(100..400))).await;
            }
            let _ = tokio::time::timeout(OP_TIMEOUT, ws.close(None)).await;
            Ok::<_, String>(())
        };
        if let Err(e) = session.await {
            stats.fail(Kind::WebSocket, began, e);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sessions of 10 chunks, 100–300 ms apart, each echoed; then a
/// half-close, answered by the echo server's trailer and its own close.
async fn tcp_client(addr: SocketAddr, stats: Arc<Stats>, id: usize) {
    while !stats.stopped() {
        let began = Instant::now();
        let session = async {
            let mut io = connect(addr).await?;
            for i in 0..10 {
                let began = Instant::now();
                let chunk = format!("soak tcp client {id:02} chunk {i:02}!!\n");
                let mut back = vec![0u8; chunk.len()];
                let echoed = tokio::time::timeout(OP_TIMEOUT, async {
                    io.write_all(chunk.as_bytes()).await?;
                    io.read_exact(&mut back).await
                })
                .await;
                match echoed {
                    Ok(Ok(_)) if back == chunk.as_bytes() => stats.ok(Kind::Tcp, began),
                    Ok(Ok(_)) => return Err(format!("TCP chunk {i}: echoed {back:?}")),
                    Ok(Err(e)) => return Err(format!("TCP chunk {i}: {e}")),
                    Err(_) => return Err(format!("TCP chunk {i}: timed out")),
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(100..300))).await;
            }
            let mut rest = Vec::new();
            let closed = tokio::time::timeout(OP_TIMEOUT, async {
                io.shutdown().await?;
                io.read_to_end(&mut rest).await
            })
            .await;
            match closed {
                Ok(Ok(_)) if rest == b"<eof seen>" => Ok(()),
                other => Err(format!("TCP close: {other:?}, then {rest:?}")),
            }
        };
        if let Err(e) = session.await {
            stats.fail(Kind::Tcp, began, e);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes `bytes` three at a time, 20 ms apart.
async fn trickle(io: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    for piece in bytes.chunks(3) {
        io.write_all(piece).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Reads one response with a `Content-Length` body: `(status, body)`.
async fn read_response(io: &mut TcpStream) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = response
            .parse(&buf)
            .map_err(|e| format!("response head: {e}"))?
        {
            let status = response.code.unwrap_or(0);
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .ok_or("response without Content-Length")?;
            while buf.len() < head + length {
                let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed inside the body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((status, buf[head..head + length].to_vec()));
        }
        let n = io.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Keep-alive clients that trickle each request: a GET through the DNS
/// backend, then a POST of 64 bytes to the static backend's `/upload`.
async fn slow_client(addr: SocketAddr, stats: Arc<Stats>) {
    const BODY: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let mut conn: Option<TcpStream> = None;
    let mut n = 0usize;
    while !stats.stopped() {
        let began = Instant::now();
        if conn.is_none() {
            match connect(addr).await {
                Ok(io) => conn = Some(io),
                Err(e) => {
                    stats.fail(Kind::Slow, began, e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(io) = conn.as_mut() else { continue };
        let post = n % 2 == 1;
        let exchange = tokio::time::timeout(OP_TIMEOUT, async {
            if post {
                let head = "POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 64\r\n\r\n";
                trickle(io, head.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                trickle(io, BODY).await.map_err(|e| e.to_string())?;
            } else {
                let head = "GET /dns/slow HTTP/1.1\r\nHost: soak\r\n\r\n";
                trickle(io, head.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            read_response(io).await
        })
        .await;
        let verdict = match exchange {
            Err(_) => Err("timed out".to_string()),
            Ok(Err(e)) => Err(e),
            Ok(Ok((200, body))) if post && body == b"64" => Ok(()),
            Ok(Ok((200, body))) if !post && PATHS[1].1.iter().any(|n| n.as_bytes() == body) => {
                Ok(())
            }
            Ok(Ok((status, body))) => Err(format!("{status} {:?}", String::from_utf8_lossy(&body))),
        };
        match verdict {
            Ok(()) => stats.ok(Kind::Slow, began),
            Err(e) => {
                let what = if post {
                    "POST /upload"
                } else {
                    "GET /dns/slow"
                };
                stats.fail(Kind::Slow, began, format!("{what}: {e}"));
                conn = None;
            }
        }
        n += 1;
    }
}

// === the world that changes ===

struct World {
    statics: [SocketAddr; 2],
    dns_port: u16,
    dns_server: SocketAddr,
    consul_port: u16,
    ws: SocketAddr,
    tcp: SocketAddr,
}

/// One of the two configs the soak alternates between. `b` changes the
/// balancing of two backends and adds a route, so each swap compiles a
/// different table.
fn config(w: &World, b: bool) -> String {
    let (balance, extra_route) = if b {
        (
            "least_conn",
            "[[routes]]\nlistener = \"web\"\npath_prefix = \"/only-in-b/\"\nbackend = \"static\"\n",
        )
    } else {
        ("round_robin", "")
    };
    format!(
        r#"[resolver]
nameservers = ["{dns}"]
min_ttl = "1s"
max_ttl = "5s"

[consul]
address = "http://127.0.0.1:{consul}"

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "static"

[[listeners]]
name = "tcp"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "tcp"

[[routes]]
listener = "web"
path_prefix = "/dns/"
backend = "dns"

[[routes]]
listener = "web"
path_prefix = "/consul/"
backend = "consul"

[[routes]]
listener = "web"
path_prefix = "/ws"
backend = "ws"

{extra_route}
[[backends]]
name = "static"
balance = "{balance}"
servers = ["{s1}", "{s2}"]

[[backends]]
name = "dns"
balance = "{balance}"
servers = ["{DNS_NAME}:{dns_port}"]

[[backends]]
name = "consul"
consul_service = "{CONSUL_SERVICE}"

[[backends]]
name = "ws"
servers = ["{ws}"]

[[backends]]
name = "tcp"
servers = ["{tcp}"]
"#,
        dns = w.dns_server,
        consul = w.consul_port,
        s1 = w.statics[0],
        s2 = w.statics[1],
        dns_port = w.dns_port,
        ws = w.ws,
        tcp = w.tcp,
    )
}

/// Three backends on one port of 127.0.0.2, .3 and .4: the servers behind
/// the DNS name.
async fn dns_backends() -> [Backend; 3] {
    for _ in 0..20 {
        let first = Backend::start_at("127.0.0.2", "d1").await;
        let port = first.addr.port();
        let second = Backend::start_bound(SocketAddr::from(([127, 0, 0, 3], port)), "d2").await;
        let third = Backend::start_bound(SocketAddr::from(([127, 0, 0, 4], port)), "d3").await;
        if let (Some(second), Some(third)) = (second, third) {
            return [first, second, third];
        }
    }
    panic!("no common free port on 127.0.0.2, .3 and .4");
}

/// The soak's model of the Consul catalog, replayed into a restarted
/// server.
struct Instance {
    id: &'static str,
    port: u16,
    registered: bool,
    passing: bool,
}

fn instance(i: &Instance) -> ServiceInstance {
    let mut s = ServiceInstance::new(CONSUL_SERVICE, i.id);
    s.node = format!("node-{}", i.id);
    s.port = i.port;
    s.status = if i.passing { "passing" } else { "critical" };
    s
}

/// A `POST` or `GET` on the admin API: `(status, body)`.
async fn admin(addr: SocketAddr, post: bool, path: &str) -> Result<(StatusCode, String), String> {
    let io = connect(addr).await?;
    let mut client = HttpClient::over(io).await;
    let method = if post { "POST" } else { "GET" };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(full(""))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(OP_TIMEOUT, client.send(req)).await {
        Ok(Ok((status, _, body))) => Ok((status, body)),
        Ok(Err(e)) => Err(format!("{method} {path}: {e}")),
        Err(_) => Err(format!("{method} {path}: timed out")),
    }
}

/// Sum of every series of `family` in `/metrics` whose labels contain
/// `labels` (`""` for all).
async fn metric_sum(admin_addr: SocketAddr, family: &str, labels: &str) -> Option<f64> {
    let (_, body) = admin(admin_addr, false, "/metrics").await.ok()?;
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if name == family && series.contains(labels) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

struct Chaos {
    stats: Arc<Stats>,
    sy_admin: SocketAddr,
    config_path: std::path::PathBuf,
    world: World,
    dns: DnsServer,
    dns_addrs: [IpAddr; 3],
    consul: Option<ConsulServer>,
    instances: Vec<Instance>,
    in_b: bool,
    dns_step: usize,
}

/// How often each fault happens.
struct Schedule {
    swap: Duration,
    dns: Duration,
    flap: Duration,
    restart: Duration,
    consul_down: Duration,
}

impl Chaos {
    async fn swap_config(&mut self) {
        self.in_b = !self.in_b;
        self.stats.fault(Fault::ConfigSwap);
        let text = support::with_admin(&config(&self.world, self.in_b));
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config_path).expect("rename config");
        match admin(self.sy_admin, true, "/reload").await {
            Ok((StatusCode::OK, _)) => {}
            Ok((status, body)) => self
                .stats
                .reload_failures
                .lock()
                .unwrap()
                .push(format!("{status}: {body}")),
            Err(e) => self.stats.reload_failures.lock().unwrap().push(e),
        }
    }

    /// {d1,d2} → {d2,d3} → {d3,d1} → {d1,d2,d3} → ...
    fn change_dns(&mut self) {
        const SETS: [&[usize]; 4] = [&[0, 1], &[1, 2], &[2, 0], &[0, 1, 2]];
        self.dns_step += 1;
        let set: Vec<IpAddr> = SETS[self.dns_step % SETS.len()]
            .iter()
            .map(|&i| self.dns_addrs[i])
            .collect();
        self.stats.fault(Fault::DnsChange);
        self.dns.set_addresses(DNS_NAME, &set, 1);
    }

    /// One change to one instance; at least one instance stays passing.
    fn flap(&mut self) {
        let Some(consul) = &self.consul else { return };
        let passing = self
            .instances
            .iter()
            .filter(|i| i.registered && i.passing)
            .count();
        let i = fastrand::usize(..self.instances.len());
        let inst = &mut self.instances[i];
        self.stats.fault(Fault::ConsulFlap);
        if !inst.registered {
            inst.registered = true;
            inst.passing = true;
            consul.register(instance(inst));
        } else if !inst.passing {
            inst.passing = true;
            consul.set_service_status(inst.id, "passing");
        } else if passing >= 2 && fastrand::bool() {
            inst.passing = false;
            consul.set_service_status(inst.id, "critical");
        } else if passing >= 2 {
            inst.registered = false;
            consul.deregister(inst.id);
        }
    }

    async fn restart_consul(&mut self, down: Duration) {
        self.stats.fault(Fault::ConsulRestart);
        if let Some(consul) = self.consul.take() {
            consul.shutdown().await;
        }
        tokio::time::sleep(down).await;
        self.stats.fault(Fault::ConsulRestart);
        let consul = ConsulServer::on_port(self.world.consul_port).await;
        for i in self.instances.iter().filter(|i| i.registered) {
            consul.register(instance(i));
        }
        self.consul = Some(consul);
    }

    async fn run(&mut self, schedule: &Schedule) {
        let now = tokio::time::Instant::now();
        let (mut swap, mut dns, mut flap, mut restart) = (
            now + schedule.swap,
            now + schedule.dns,
            now + schedule.flap,
            now + schedule.restart,
        );
        while !self.stats.stopped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = tokio::time::Instant::now();
            if now >= swap {
                self.swap_config().await;
                swap += schedule.swap;
            }
            if now >= dns {
                self.change_dns();
                dns += schedule.dns;
            }
            if now >= flap {
                self.flap();
                flap += schedule.flap;
            }
            if now >= restart {
                self.restart_consul(schedule.consul_down).await;
                restart = tokio::time::Instant::now() + schedule.restart;
            }
        }
    }

    /// Back to config A, every instance passing and all three DNS
    /// addresses: the state the soak started from.
    async fn restore(&mut self) {
        if self.in_b {
            self.swap_config().await;
        }
        if let Some(consul) = &self.consul {
            for inst in &mut self.instances {
                if !inst.registered {
                    consul.register(instance(inst));
                } else if !inst.passing {
                    consul.set_service_status(inst.id, "passing");
                }
                inst.registered = true;
                inst.passing = true;
            }
        }
        self.dns.set_addresses(DNS_NAME, &self.dns_addrs, 1);
    }
}

// === measuring the process ===

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    tasks: Option<u64>,
    requests: u64,
    p99_ms: Option<f64>,
    failed: usize,
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The process's open fds, with its TCP sockets sorted by what is at the
/// other end.
#[derive(Clone, Copy, Default)]
struct FdCensus {
    total: u64,
    /// Accepted on a listener: client connections.
    clients: u64,
    /// Connected to a backend: in use or pooled.
    upstream: u64,
}

impl FdCensus {
    /// Everything else: listeners, Consul and DNS clients, epoll, files.
    fn other(&self) -> u64 {
        self.total - self.clients - self.upstream
    }
}

/// Counts `pid`'s fds, matching its sockets' inodes against
/// /proc/net/tcp{,6}: local port `listeners` (not listening) is a client
/// connection, remote port `backends` an upstream one.
fn census(pid: i32, listeners: &[u16], backends: &[u16]) -> FdCensus {
    let mut inodes = std::collections::HashSet::new();
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            total += 1;
            if let Ok(link) = std::fs::read_link(entry.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut c = FdCensus {
        total,
        ..Default::default()
    };
    let port = |field: &str| {
        field
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || !inodes.contains(f[9]) {
                continue;
            }
            let (local, remote, listening) = (port(f[1]), port(f[2]), f[3] == "0A");
            if !listening && local.is_some_and(|p| listeners.contains(&p)) {
                c.clients += 1;
            } else if remote.is_some_and(|p| backends.contains(&p)) {
                c.upstream += 1;
            }
        }
    }
    c
}

async fn tasks(admin_addr: SocketAddr) -> Option<u64> {
    metric_sum(admin_addr, "switchyard_runtime_tasks", "")
        .await
        .map(|t| t as u64)
}

fn p99(latencies: &mut [u32]) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let rank = (latencies.len() * 99).div_ceil(100).max(1) - 1;
    Some(f64::from(latencies[rank]) / 1000.0)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Waits up to `timeout` for `check` to hold; false if it never did.
async fn within<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// fds and tasks once the process has been idle for a while. Pooled
/// upstream connections stay (a pool drops an expired connection when it
/// meets it, and the test backends never close one), so they are counted
/// apart.
async fn idle_counts(
    pid: i32,
    admin_addr: SocketAddr,
    listeners: &[u16],
    backends: &[u16],
) -> (FdCensus, u64) {
    tokio::time::sleep(Duration::from_secs(6)).await;
    (
        census(pid, listeners, backends),
        tasks(admin_addr).await.unwrap_or(0),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = Options::from_args();
    let bounds = Bounds::for_run(options.short);
    let exe = Path::new(env!("CARGO_BIN_EXE_switchyard"));

    let statics = [Backend::start("s1").await, Backend::start("s2").await];
    let dns_backends = dns_backends().await;
    let consul_backends = [
        Backend::start("c1").await,
        Backend::start("c2").await,
        Backend::start("c3").await,
    ];
    let (ws, _ws_task) = websocket_echo().await;
    let (tcp, _tcp_task) = tcp_echo().await;
    let dns = DnsServer::start().await;
    let dns_addrs = dns_backends.each_ref().map(|b| b.addr.ip());
    dns.set_addresses(DNS_NAME, &dns_addrs, 1);
    let consul_port = restartable_port();
    let consul = ConsulServer::on_port(consul_port).await;
    let instances: Vec<Instance> = consul_backends
        .iter()
        .zip(["c1", "c2", "c3"])
        .map(|(b, id)| Instance {
            id,
            port: b.addr.port(),
            registered: true,
            passing: true,
        })
        .collect();
    for i in &instances {
        consul.register(instance(i));
    }
    let world = World {
        statics: statics.each_ref().map(|b| b.addr),
        dns_port: dns_backends[0].addr.port(),
        dns_server: dns.addr,
        consul_port,
        ws,
        tcp,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let sy = SwitchyardProcess::start_exe_in(dir, exe, &config(&world, false), &[]);
    let pid = sy.pid();
    let (web, tcp_listener, sy_admin) = (sy.addr("web"), sy.addr("tcp"), sy.admin);
    // Ready once both discovered backends answer.
    for path in ["/dns/k", "/consul/k"] {
        let answers = within(Duration::from_secs(20), || async {
            let Ok(io) = connect(web).await else {
                return false;
            };
            let mut c = HttpClient::over(io).await;
            matches!(c.get(path, None).await, Ok((StatusCode::OK, _, _)))
        })
        .await;
        assert!(answers, "{path} never answered through Switchyard");
    }
    let listener_ports = [web.port(), tcp_listener.port()];
    let mut backend_ports: Vec<u16> = statics
        .iter()
        .chain(&dns_backends)
        .chain(&consul_backends)
        .map(|b| b.addr.port())
        .collect();
    backend_ports.extend([ws.port(), tcp.port()]);
    let (fds_before, tasks_before) =
        idle_counts(pid, sy_admin, &listener_ports, &backend_ports).await;
    let exe_kind = if exe.to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    println!(
        "\nSoak: {} s, report every {} s, Switchyard {exe_kind} binary (pid {pid}); idle before the load: {} fds ({} upstream), {tasks_before} tasks\n",
        options.seconds, options.interval, fds_before.total, fds_before.upstream
    );

    let stats = Arc::new(Stats::new());
    let mut clients = Vec::new();
    for id in 0..8 {
        clients.push(tokio::spawn(keep_alive_client(
            web,
            stats.clone(),
            200.0,
            id,
        )));
    }
    for id in 0..2 {
        clients.push(tokio::spawn(fresh_client(web, stats.clone(), 50.0, id)));
    }
    for id in 0..4 {
        clients.push(tokio::spawn(websocket_client(web, stats.clone(), id)));
        clients.push(tokio::spawn(tcp_client(tcp_listener, stats.clone(), id)));
        clients.push(tokio::spawn(slow_client(web, stats.clone())));
    }
    let schedule = if options.short {
        Schedule {
            swap: Duration::from_secs(4),
            dns: Duration::from_secs(3),
            flap: Duration::from_secs(1),
            restart: Duration::from_secs(35),
            consul_down: Duration::from_secs(2),
        }
    } else {
        Schedule {
            swap: Duration::from_secs(10),
            dns: Duration::from_secs(3),
            flap: Duration::from_secs(2),
            restart: Duration::from_secs(240),
            consul_down: Duration::from_secs(3),
        }
    };
    let chaos_stats = stats.clone();
    let mut chaos = Chaos {
        stats: chaos_stats,
        sy_admin,
        config_path: sy.config.clone(),
        world,
        dns,
        dns_addrs,
        consul: Some(consul),
        instances,
        in_b: false,
        dns_step: 0,
    };
    let chaos_task = tokio::spawn(async move {
        chaos.run(&schedule).await;
        chaos
    });

    println!("| t (s) | RSS MiB | fds | tasks | req/s | HTTP p99 ms | failed |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let started = Instant::now();
    let interval = Duration::from_secs(options.interval);
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_done = 0;
    let mut last_failed = 0;
    let mut next = tokio::time::Instant::now() + interval;
    while started.elapsed() < Duration::from_secs(options.seconds) {
        tokio::time::sleep_until(next).await;
        next += interval;
        let mut latencies = std::mem::take(&mut *stats.latencies.lock().unwrap());
        let done = stats.total_done();
        let failed = stats.failures.lock().unwrap().len();
        let s = Sample {
            at: started.elapsed(),
            rss_kib: rss_kib(pid),
            fds: fds(pid),
            tasks: tasks(sy_admin).await,
            requests: done - last_done,
            p99_ms: p99(&mut latencies),
            failed: failed - last_failed,
        };
        (last_done, last_failed) = (done, failed);
        println!(
            "| {:.0} | {:.1} | {} | {} | {:.0} | {} | {} |",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.tasks.map_or("?".into(), |t| t.to_string()),
            s.requests as f64 / interval.as_secs_f64(),
            s.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
            s.failed,
        );
        samples.push(s);
    }

    stats.stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = tokio::time::timeout(OP_TIMEOUT * 2, c).await;
    }
    let mut chaos = chaos_task.await.expect("chaos task");
    chaos.restore().await;

    // === verdict ===
    let mut broken: Vec<String> = Vec::new();
    let mut report = String::new();
    let alive = std::fs::metadata(format!("/proc/{pid}")).is_ok();
    if !alive {
        broken.push("Switchyard exited during the soak".into());
    }
    let dns_follows = within(Duration::from_secs(15), || async {
        metric_sum(sy_admin, "switchyard_backend_endpoints", "backend=\"dns\"").await == Some(3.0)
    })
    .await;
    let consul_follows = within(Duration::from_secs(15), || async {
        metric_sum(
            sy_admin,
            "switchyard_backend_endpoints",
            "backend=\"consul\"",
        )
        .await
            == Some(3.0)
    })
    .await;
    if !dns_follows {
        broken.push("the DNS backend did not come back to 3 endpoints within 15 s".into());
    }
    if !consul_follows {
        broken.push("the Consul backend did not come back to 3 endpoints within 15 s".into());
    }
    let (fds_after, tasks_after) =
        idle_counts(pid, sy_admin, &listener_ports, &backend_ports).await;
    let version = metric_sum(sy_admin, "switchyard_config_version", "").await;

    let warm = samples
        .iter()
        .rposition(|s| s.at.as_secs_f64() <= options.seconds as f64 * 0.2 + 1.0)
        .unwrap_or(0);
    let reference = &samples[warm];
    let after = &samples[warm + 1..];
    let rss_max = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let growth = rss_max as f64 / reference.rss_kib.max(1) as f64;
    let fifth = after.len().div_ceil(5).max(1);
    let drift = |f: &dyn Fn(&Sample) -> f64| {
        let first = mean(after.iter().take(fifth).map(f));
        let last = mean(after.iter().rev().take(fifth).map(f));
        last - first
    };
    let fd_drift = drift(&|s| s.fds as f64);
    let task_drift = drift(&|s| s.tasks.unwrap_or(0) as f64);
    if after.is_empty() {
        broken.push("too short: no sample after warm-up".into());
    }
    if growth > bounds.rss_growth {
        broken.push(format!(
            "RSS grew to {:.1} MiB, {:.1} % over {:.1} MiB at the end of warm-up (bound {:.0} %)",
            rss_max as f64 / 1024.0,
            (growth - 1.0) * 100.0,
            reference.rss_kib as f64 / 1024.0,
            (bounds.rss_growth - 1.0) * 100.0
        ));
    }
    if fd_drift > bounds.fds_drift {
        broken.push(format!(
            "open fds drifted up by {fd_drift:.1} under load (bound {})",
            bounds.fds_drift
        ));
    }
    if samples.iter().any(|s| s.tasks.is_none()) {
        broken.push("switchyard_runtime_tasks missing from /metrics".into());
    }
    if task_drift > bounds.tasks_drift {
        broken.push(format!(
            "tasks drifted up by {task_drift:.1} under load (bound {})",
            bounds.tasks_drift
        ));
    }
    let other_idle = fds_after.other() as i64 - fds_before.other() as i64;
    let pooled_more = fds_after.upstream as i64 - fds_before.upstream as i64;
    let tasks_idle = tasks_after as i64 - tasks_before as i64;
    if fds_after.clients > 0 {
        broken.push(format!(
            "{} client connections still open with no client left",
            fds_after.clients
        ));
    }
    if other_idle > bounds.fds_idle {
        broken.push(format!(
            "idle fds other than pooled upstream connections: {} before the load, {} after (bound +{})",
            fds_before.other(),
            fds_after.other(),
            bounds.fds_idle
        ));
    }
    if tasks_idle > pooled_more.max(0) + bounds.tasks_idle {
        broken.push(format!(
            "idle tasks {tasks_before} before the load, {tasks_after} after, with {pooled_more:+} pooled upstream connections (bound: that +{})",
            bounds.tasks_idle
        ));
    }
    let failures = stats.failures.lock().unwrap();
    if !failures.is_empty() {
        broken.push(format!("{} failed operations (bound 0)", failures.len()));
    }
    let reload_failures = stats.reload_failures.lock().unwrap();
    if !reload_failures.is_empty() {
        broken.push(format!(
            "{} reloads failed: {:?}",
            reload_failures.len(),
            reload_failures.first()
        ));
    }
    let log = sy.log_lines();
    let panics: Vec<&String> = log
        .iter()
        .filter(|l| l.to_ascii_lowercase().contains("panic"))
        .collect();
    if !panics.is_empty() {
        broken.push(format!(
            "{} log lines mention a panic, first: {}",
            panics.len(),
            panics[0]
        ));
    }

    let faults = stats.faults.lock().unwrap();
    let count = |f: Fault| faults.iter().filter(|(_, g)| *g == f).count();
    let _ = writeln!(
        report,
        "\nFaults: {} config swaps (config version now {}), {} DNS changes, {} Consul flaps, {} Consul restarts",
        count(Fault::ConfigSwap),
        version.map_or("?".into(), |v| v.to_string()),
        count(Fault::DnsChange),
        count(Fault::ConsulFlap),
        count(Fault::ConsulRestart) / 2,
    );
    let _ = writeln!(report, "\n| load | completed | failed |");
    let _ = writeln!(report, "| --- | ---: | ---: |");
    for kind in KINDS {
        let _ = writeln!(
            report,
            "| {} | {} | {} |",
            kind.name(),
            stats.done[kind as usize].load(Ordering::Relaxed),
            failures.iter().filter(|f| f.kind == kind).count()
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(report, "\nFailures by the fault that explains them:\n");
        let mut classes: Vec<(&str, &str, usize)> = Vec::new();
        for f in failures.iter() {
            let key = (f.kind.name(), stats.blame(f));
            match classes.iter_mut().find(|c| (c.0, c.1) == key) {
                Some(c) => c.2 += 1,
                None => classes.push((key.0, key.1, 1)),
            }
        }
        for (kind, fault, n) in classes {
            let _ = writeln!(report, "- {kind}, {fault}: {n}");
        }
        for f in failures.iter().take(10) {
            let _ = writeln!(
                report,
                "  - at {:.1} s, {}: {}",
                f.began.duration_since(started).as_secs_f64(),
                f.kind.name(),
                f.what
            );
        }
    }
    let _ = writeln!(
        report,
        "\nAfter warm-up ({:.0} s): RSS max {:.1} MiB vs {:.1} MiB at its end ({:+.1} %, bound +{:.0} %); \
         under load fds drift {fd_drift:+.1} (bound {}), tasks drift {task_drift:+.1} (bound {}); \
         idle before/after the load: fds {}/{} of which pooled upstream {}/{}, client {}/{} (other fds bound +{}), \
         tasks {tasks_before}/{tasks_after} (bound: pooled connections added +{}); \
         panics in the log: {}",
        reference.at.as_secs_f64(),
        rss_max as f64 / 1024.0,
        reference.rss_kib as f64 / 1024.0,
        (growth - 1.0) * 100.0,
        (bounds.rss_growth - 1.0) * 100.0,
        bounds.fds_drift,
        bounds.tasks_drift,
        fds_before.total,
        fds_after.total,
        fds_before.upstream,
        fds_after.upstream,
        fds_before.clients,
        fds_after.clients,
        bounds.fds_idle,
        bounds.tasks_idle,
        panics.len(),
    );
    print!("{report}");
    drop((failures, reload_failures, faults));
    drop(chaos);
    drop(sy);
    if broken.is_empty() {
        println!("\nVerdict: PASS (all bounds kept)");
    } else {
        println!("\nVerdict: FAIL");
        for b in &broken {
            println!("- {b}");
        }
        std::process::exit(1);
    }
}
