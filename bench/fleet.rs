//! The fleet model (issue 21): 1,000 sidecars on one Consul cluster.
//!
//! Each sidecar is Switchyard's own watch code, in-process: one
//! `ConsulClient` (connections leave from its own 127.1.x.y, as Consul's
//! per-client connection limit sees them) and one `WatchTask` per watch,
//! for a realistic config of 10 services and 5 KV prefixes (15 distinct
//! blocking queries). 20 apps of 50 replicas; replicas watch the same
//! things, every app watches the shared `svc-00` and the shared routes and
//! backends prefixes. 100 agents with 10 sidecars each (a node of ten
//! pods), every agent on the same cluster state (the Consul-compatible test
//! server of tests/support/consul), with Consul's wait jitter and its
//! default `limits.http_max_conns_per_client = 200` enforced.
//!
//! The test server runs in a child process (this binary again, with
//! `FLEET_ROLE=consul`): 15,000 open blocking queries are 15,000 sockets on
//! each side, and one process may hold 20,000. The two talk over the
//! child's stdin and stdout, one JSON line per answer; times cross as
//! wall-clock nanoseconds.
//!
//! For each mode (reductions off and on, side by side):
//!
//! - steady state: after the start settles, requests at the agents, reads
//!   at the servers (forwarded reads and agent-cache refreshes) and leader
//!   reads over four `wait` periods of 3 s; requests per watch per wait
//!   period; open connections;
//! - one change: an instance of `svc-00` (watched by all 1,000) turns
//!   critical. Time until each sidecar's watch has the new data, and the
//!   requests in the second after: the busiest 10 ms and 100 ms, for the
//!   changed service alone (the fleet re-arming) and for everything.
//!
//! Run: `cargo bench --bench fleet` (about 2 minutes).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::consul::{ConsulOptions, ConsulServer, ServiceInstance};
use switchyard::config::ConsulSpec;
use switchyard::discovery::consul::watch::WatchTask;
use switchyard::discovery::consul::{ConsulClient, ConsulWatch, WatchKey, WatchPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const SIDECARS: usize = 1_000;
const AGENTS: usize = 100;
/// Replicas of one app watch the same things.
const APPS: usize = 20;
/// Services in the catalog, three instances each.
const SERVICES: usize = 50;
const INSTANCES: usize = 3;
const WATCHED_SERVICES: usize = 10;
/// Keys under each KV prefix.
const KEYS_PER_PREFIX: usize = 3;
/// The blocking-query `wait` of every sidecar: short, so that a few
/// periods fit in the steady-state window.
const WAIT: Duration = Duration::from_secs(3);
const STEADY_PERIODS: u32 = 4;
const MAX_STALE: Duration = Duration::from_secs(2);
const JITTER: Duration = Duration::from_millis(500);
/// Consul's default `limits.http_max_conns_per_client`.
const MAX_CONNS_PER_CLIENT: usize = 200;
const CHANGED_SERVICE: &str = "svc-00";
const CHANGED_INSTANCE: &str = "svc-00-0";
/// Sidecars started together, then a pause: a fleet does not boot in one
/// millisecond either.
const START_BATCH: usize = 50;
const START_PAUSE: Duration = Duration::from_millis(50);
const CONVERGE_LIMIT: Duration = Duration::from_secs(10);

/// One set of `[consul]` settings, run against a fresh cluster.
struct Mode {
    name: &'static str,
    stale: bool,
    cached: bool,
    jitter: Duration,
}

const MODES: [Mode; 5] = [
    Mode {
        name: "off: leader reads, no cache, no jitter",
        stale: false,
        cached: false,
        jitter: Duration::ZERO,
    },
    Mode {
        name: "stale (max_stale 2 s)",
        stale: true,
        cached: false,
        jitter: Duration::ZERO,
    },
    Mode {
        name: "stale + jitter 500 ms",
        stale: true,
        cached: false,
        jitter: JITTER,
    },
    Mode {
        name: "stale + cached",
        stale: true,
        cached: true,
        jitter: Duration::ZERO,
    },
    Mode {
        name: "all on: stale + cached + jitter",
        stale: true,
        cached: true,
        jitter: JITTER,
    },
];

fn main() {
    let consul_role = std::env::var_os("FLEET_ROLE").is_some_and(|r| r == "consul");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if consul_role {
        runtime.block_on(serve_consul());
    } else {
        runtime.block_on(fleet());
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    let ns = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn app_of(sidecar: usize) -> usize {
    sidecar % APPS
}

/// The 15 watches of a sidecar: `svc-00` and 9 services of its app's
/// range, the shared routes and backends prefixes and 3 of its app's own.
fn watch_keys(sidecar: usize) -> Vec<WatchKey> {
    let app = app_of(sidecar);
    let service = |name: String| WatchKey::Service {
        name,
        tag: None,
        datacenter: None,
        passing_only: true,
    };
    let mut keys = vec![service(CHANGED_SERVICE.to_string())];
    for k in 0..WATCHED_SERVICES - 1 {
        keys.push(service(format!(
            "svc-{:02}",
            1 + (app * 7 + k) % (SERVICES - 1)
        )));
    }
    for prefix in prefixes(app) {
        keys.push(WatchKey::Prefix(prefix));
    }
    keys
}

fn prefixes(app: usize) -> [String; 5] {
    [
        "switchyard/routes/".to_string(),
        "switchyard/backends/".to_string(),
        format!("apps/app-{app:02}/config/"),
        format!("apps/app-{app:02}/flags/"),
        format!("apps/app-{app:02}/limits/"),
    ]
}

// === The Consul side (child process) ===

/// Writes one answer line for the parent.
fn answer(value: Value) {
    println!("FLEET {value}");
}

/// The most instants within any `span` (sorted input).
fn busiest(times: &[Instant], span: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= span {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

/// Counts and burst peaks of `times` within [from, to).
fn window(mut times: Vec<Instant>, from: Instant, to: Instant) -> Value {
    times.retain(|t| *t >= from && *t < to);
    times.sort();
    json!({
        "count": times.len(),
        "busiest_10ms": busiest(&times, Duration::from_millis(10)),
        "busiest_100ms": busiest(&times, Duration::from_millis(100)),
    })
}

async fn serve_consul() {
    let agents: usize = std::env::var("FLEET_AGENTS")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(AGENTS);
    let consul = ConsulServer::start_with(ConsulOptions {
        jitter: true,
        max_conns_per_client: Some(MAX_CONNS_PER_CLIENT),
        ..ConsulOptions::default()
    })
    .await;
    let mut addrs = vec![consul.addr()];
    for _ in 1..agents {
        addrs.push(consul.add_agent().await);
    }
    for s in 0..SERVICES {
        for i in 0..INSTANCES {
            let name = format!("svc-{s:02}");
            let mut instance = ServiceInstance::new(&name, &format!("{name}-{i}"));
            instance.node = format!("node-{:03}", (s * INSTANCES + i) % 120);
            instance.node_address = format!("10.0.{}.{}", s, i + 1);
            instance.port = 8080;
            instance.tags = vec!["v1".into(), format!("zone-{i}")];
            consul.register(instance);
        }
    }
    let mut all_prefixes: Vec<String> = (0..APPS).flat_map(prefixes).collect();
    all_prefixes.sort();
    all_prefixes.dedup();
    for prefix in &all_prefixes {
        for k in 0..KEYS_PER_PREFIX {
            consul.kv_put(
                &format!("{prefix}key-{k}"),
                format!("value {k} of {prefix}, long enough to look like a setting"),
            );
        }
    }
    let origin = (Instant::now(), unix_ns(SystemTime::now()));
    let instant = |ns: u64| origin.0 + Duration::from_nanos(ns.saturating_sub(origin.1));
    answer(json!({ "agents": addrs }));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["stats"] => answer(json!({
                "at_ns": unix_ns(SystemTime::now()),
                "requests": consul.requests("/v1/"),
                "server_reads": consul.server_read_times("/v1/").len(),
                "leader_reads": consul.leader_reads(),
                "open": consul.open_connections(),
                "peak": consul.peak_connections(),
                "peak_per_client": consul.peak_connections_per_client(),
                "refused": consul.refused_connections(),
            })),
            ["change"] => {
                let at = unix_ns(SystemTime::now());
                consul.set_service_status(CHANGED_INSTANCE, "critical");
                answer(json!({ "at_ns": at }));
            }
            ["window", from, to] => {
                let (Ok(from), Ok(to)) = (from.parse::<u64>(), to.parse::<u64>()) else {
                    answer(json!({ "error": "window wants two times" }));
                    continue;
                };
                let (from, to) = (instant(from), instant(to));
                let changed = format!("/v1/health/service/{CHANGED_SERVICE}");
                answer(json!({
                    "requests": window(consul.arrivals("/v1/"), from, to),
                    "changed_requests": window(consul.arrivals(&changed), from, to),
                    "server_reads": window(consul.server_read_times("/v1/"), from, to),
                    "changed_server_reads": window(consul.server_read_times(&changed), from, to),
                }));
            }
            ["quit"] => break,
            _ => answer(json!({ "error": format!("unknown command {line:?}") })),
        }
    }
    consul.shutdown().await;
}

// === The fleet side (parent process) ===

/// The child process running the test server.
struct Cluster {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    agents: Vec<SocketAddr>,
}

impl Cluster {
    async fn start() -> Self {
        let exe = std::env::current_exe().expect("own executable");
        let mut child = tokio::process::Command::new(exe)
            .env("FLEET_ROLE", "consul")
            .env("FLEET_AGENTS", AGENTS.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Consul test server process");
        let stdin = child.stdin.take().expect("child stdin");
        let stdout = child.stdout.take().expect("child stdout");
        let mut cluster = Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            agents: Vec::new(),
        };
        let hello = cluster.read().await;
        cluster.agents = hello["agents"]
            .as_array()
            .expect("agent addresses")
            .iter()
            .map(|a| {
                a.as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("agent address")
            })
            .collect();
        cluster
    }

    async fn read(&mut self) -> Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("the Consul process answers within 60 s")
                .expect("read from the Consul process")
                .expect("the Consul process is running");
            if let Some(json) = line.strip_prefix("FLEET ") {
                let value: Value = serde_json::from_str(json).expect("an answer line");
                assert!(value.get("error").is_none(), "{value}");
                return value;
            }
        }
    }

    async fn ask(&mut self, command: &str) -> Value {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to the Consul process");
        self.read().await
    }

    async fn stop(mut self) {
        let _ = self.stdin.write_all(b"quit\n").await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One in-process sidecar: its client, its watches, and when its `svc-00`
/// watch last saw new data.
struct Sidecar {
    watches: Vec<Arc<ConsulWatch>>,
    tasks: Vec<JoinHandle<()>>,
    changed_at: Arc<AtomicU64>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn sidecar_ip(i: usize) -> IpAddr {
    // Three octets of room: 127.1.0.1 ..= 127.1.4.200 for 1,000.
    let (hi, lo) = (i / 200, i % 200 + 1);
    IpAddr::V4(Ipv4Addr::new(127, 1, hi as u8, lo as u8))
}

fn start_sidecar(i: usize, agent: SocketAddr, mode: &Mode) -> Sidecar {
    let spec = ConsulSpec {
        address: format!("http://{agent}"),
        stale: mode.stale,
        max_stale: MAX_STALE,
        cached: mode.cached,
        wait: WAIT,
        change_jitter: mode.jitter,
        ..ConsulSpec::default()
    };
    let client =
        Arc::new(ConsulClient::with_local_address(&spec, sidecar_ip(i)).expect("a Consul client"));
    let policy = WatchPolicy::new(&spec);
    let (changed, mut changes) = mpsc::unbounded_channel();
    let mut watches = Vec::new();
    let mut tasks = Vec::new();
    for key in watch_keys(i) {
        let watch = Arc::new(ConsulWatch::new(key));
        watches.push(watch.clone());
        let task = WatchTask {
            watch,
            client: client.clone(),
            changed: changed.clone(),
            policy,
        };
        tasks.push(tokio::spawn(task.run()));
    }
    let changed_at = Arc::new(AtomicU64::new(0));
    let at = changed_at.clone();
    let target = watch_keys(i).swap_remove(0);
    tasks.push(tokio::spawn(async move {
        while let Some(key) = changes.recv().await {
            if key == target {
                at.store(unix_ns(SystemTime::now()), Ordering::SeqCst);
            }
        }
    }));
    Sidecar {
        watches,
        tasks,
        changed_at,
    }
}

/// Requests each watch has made so far.
fn watch_requests(fleet: &[Sidecar]) -> Vec<u64> {
    fleet
        .iter()
        .flat_map(|s| &s.watches)
        .map(|w| w.status().requests)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

struct Steady {
    requests_per_s: f64,
    server_reads_per_s: f64,
    leader_reads_per_s: f64,
    per_watch_per_wait_mean: f64,
    /// Most answers one watch had in the window: one per period is
    /// `STEADY_PERIODS`, or one more when answers fall on both edges.
    most_by_one_watch: u64,
    open: u64,
}

struct Change {
    converged: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    window: Value,
    peak_per_client: u64,
    peak_open: u64,
    refused: u64,
}

async fn run_mode(mode: &Mode) -> (Steady, Change) {
    let mut cluster = Cluster::start().await;
    let mut fleet = Vec::with_capacity(SIDECARS);
    for i in 0..SIDECARS {
        fleet.push(start_sidecar(
            i,
            cluster.agents[i / (SIDECARS / AGENTS)],
            mode,
        ));
        if (i + 1) % START_BATCH == 0 {
            tokio::time::sleep(START_PAUSE).await;
        }
    }
    let first = async {
        for w in fleet.iter().flat_map(|s| &s.watches) {
            w.first_answer().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), first)
        .await
        .expect("every watch answered within 120 s");
    // Past the start: every watch has re-armed (after its jitter) and
    // blocked once.
    tokio::time::sleep(WAIT + mode.jitter + Duration::from_secs(1)).await;

    let window = WAIT * STEADY_PERIODS;
    let (before, requests_before) = (cluster.ask("stats").await, watch_requests(&fleet));
    tokio::time::sleep(window).await;
    let (after, requests_after) = (cluster.ask("stats").await, watch_requests(&fleet));
    let seconds = (n(&after["at_ns"]) - n(&before["at_ns"])) as f64 / 1e9;
    let rate = |key: &str| (n(&after[key]) - n(&before[key])) as f64 / seconds;
    let periods = seconds / WAIT.as_secs_f64();
    let deltas: Vec<u64> = requests_after
        .iter()
        .zip(&requests_before)
        .map(|(a, b)| a - b)
        .collect();
    let watches = deltas.len() as f64;
    let steady = Steady {
        requests_per_s: rate("requests"),
        server_reads_per_s: rate("server_reads"),
        leader_reads_per_s: rate("leader_reads"),
        per_watch_per_wait_mean: deltas.iter().sum::<u64>() as f64 / watches / periods,
        most_by_one_watch: deltas.iter().copied().max().unwrap_or(0),
        open: n(&after["open"]),
    };

    for s in &fleet {
        s.changed_at.store(0, Ordering::SeqCst);
    }
    let at = n(&cluster.ask("change").await["at_ns"]);
    let deadline = Instant::now() + CONVERGE_LIMIT;
    while Instant::now() < deadline
        && fleet
            .iter()
            .any(|s| s.changed_at.load(Ordering::SeqCst) < at)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut took: Vec<Duration> = fleet
        .iter()
        .map(|s| s.changed_at.load(Ordering::SeqCst))
        .filter(|t| *t >= at)
        .map(|t| Duration::from_nanos(t - at))
        .collect();
    took.sort();
    // The re-arms (up to the jitter after the answers) are in by then.
    let second = Duration::from_secs(1);
    let until = at + u64::try_from(second.as_nanos()).unwrap_or(u64::MAX);
    let wait_until = Duration::from_nanos(until.saturating_sub(unix_ns(SystemTime::now())));
    tokio::time::sleep(wait_until + Duration::from_millis(100)).await;
    let window = cluster.ask(&format!("window {at} {until}")).await;
    let stats = cluster.ask("stats").await;
    let change = Change {
        converged: took.len(),
        p50: percentile(&took, 0.5),
        p99: percentile(&took, 0.99),
        max: took.last().copied().unwrap_or_default(),
        window,
        peak_per_client: n(&stats["peak_per_client"]),
        peak_open: n(&stats["peak"]),
        refused: n(&stats["refused"]),
    };
    drop(fleet);
    cluster.stop().await;
    // Let the closed sockets go before the next cluster starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (steady, change)
}

async fn fleet() {
    let started = Instant::now();
    let watches = SIDECARS * (WATCHED_SERVICES + 5);
    println!(
        "\nFleet model: {SIDECARS} sidecars x {} watches ({WATCHED_SERVICES} services, 5 KV prefixes) = {watches} blocking queries, \
         {AGENTS} agents, wait = {} s, Consul wait jitter on, http_max_conns_per_client = {MAX_CONNS_PER_CLIENT}\n",
        WATCHED_SERVICES + 5,
        WAIT.as_secs()
    );
    let mut results = Vec::new();
    for mode in &MODES {
        eprintln!("fleet: {} ...", mode.name);
        let result = run_mode(mode).await;
        eprintln!("fleet: {} done after {:?}", mode.name, started.elapsed());
        results.push((mode, result));
    }

    let steady_ideal = watches as f64 / WAIT.as_secs_f64();
    println!(
        "Steady state over {STEADY_PERIODS} wait periods ({} s). consul-template's documented behaviour, one blocking query per dependency per instance: {steady_ideal:.0} requests/s, 1.00 per watch per wait period (before Consul's wait jitter).\n",
        (WAIT * STEADY_PERIODS).as_secs()
    );
    println!(
        "| mode | requests/s at the agents | reads/s at the servers | leader reads/s | requests per watch per wait period (mean) | most by one watch in {} periods | open connections at Consul |",
        STEADY_PERIODS
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (mode, (s, _)) in &results {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} |",
            mode.name,
            s.requests_per_s,
            s.server_reads_per_s,
            s.leader_reads_per_s,
            s.per_watch_per_wait_mean,
            s.most_by_one_watch,
            s.open
        );
    }
    println!(
        "\nA watch asking once per period has {STEADY_PERIODS} answers in the window, {} when answers fall on both edges.",
        STEADY_PERIODS + 1
    );
    println!(
        "\nOne change: an instance of `{CHANGED_SERVICE}` (watched by all {SIDECARS}) turns critical. Convergence: until each sidecar's watch holds the new data. Requests in the second after the change; busiest 10 ms / 100 ms. consul-template's documented behaviour: all {SIDECARS} re-arm at once (the 100 ms minimum interval has long passed).\n"
    );
    println!(
        "| mode | converged | p50 ms | p99 ms | max ms | requests in 1 s (svc-00 re-arms) | busiest 10 ms / 100 ms, svc-00 | busiest 10 ms / 100 ms, all | server reads in 1 s (svc-00) | server reads busiest 10 ms / 100 ms, svc-00 | most connections per client / at Consul | refused (429) |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (mode, (_, c)) in &results {
        let w = &c.window;
        println!(
            "| {} | {}/{SIDECARS} | {} | {} | {} | {} ({}) | {} / {} | {} / {} | {} ({}) | {} / {} | {} / {} | {} |",
            mode.name,
            c.converged,
            ms(c.p50),
            ms(c.p99),
            ms(c.max),
            n(&w["requests"]["count"]),
            n(&w["changed_requests"]["count"]),
            n(&w["changed_requests"]["busiest_10ms"]),
            n(&w["changed_requests"]["busiest_100ms"]),
            n(&w["requests"]["busiest_10ms"]),
            n(&w["requests"]["busiest_100ms"]),
            n(&w["server_reads"]["count"]),
            n(&w["changed_server_reads"]["count"]),
            n(&w["changed_server_reads"]["busiest_10ms"]),
            n(&w["changed_server_reads"]["busiest_100ms"]),
            c.peak_per_client,
            c.peak_open,
            c.refused
        );
    }
    println!("\n({:.0} s in all)", started.elapsed().as_secs_f64());
}
