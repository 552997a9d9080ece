//! Micro-benchmarks of the control and data plane's pure parts:
//! route lookup in a 10,000-route table, compiling and publishing a
//! 10,000-backend snapshot, and balancer picks.
//!
//! `cargo bench --bench table` (results in bench/RESULTS.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use switchyard::config::{
    BackendSpec, BackendTarget, Balance, Config, HashOn, HostPattern, ListenerSpec, Location, Mode,
    RouteSpec, ServerSpec, ServerTarget, Timeouts, UpstreamTimeouts,
};
use switchyard::metrics::Metrics;
use switchyard::table::{self, CompileContext, Table, TableHandle};
use switchyard::upstream::select::ClientAddrKey;

const N: usize = 10_000;

fn server(i: usize, j: usize) -> ServerSpec {
    let ip = Ipv4Addr::new(10, (i >> 8) as u8, (i & 0xff) as u8, j as u8 + 1);
    ServerSpec {
        target: ServerTarget::Addr(SocketAddr::new(IpAddr::V4(ip), 8080)),
        required: false,
        weight: 1,
    }
}

fn backend(name: String, balance: Balance, servers: Vec<ServerSpec>) -> BackendSpec {
    BackendSpec {
        balance,
        ..BackendSpec::with_defaults(
            name.into(),
            BackendTarget::Servers(servers),
            UpstreamTimeouts::default(),
        )
    }
}

/// One listener, `n` backends of two servers each, and `n` routes: exact
/// hosts with two path prefixes each, a tenth of them wildcards.
fn config(n: usize, generation: usize) -> Config {
    let backends = (0..n)
        .map(|i| {
            backend(
                format!("svc-{i}"),
                Balance::RoundRobin,
                vec![server(i, generation % 2), server(i, 2)],
            )
        })
        .collect();
    let routes = (0..n)
        .map(|i| {
            let host = if i % 10 == 0 {
                HostPattern::Suffix(format!(".tenant-{i}.example.com"))
            } else {
                HostPattern::Exact(format!("app-{}.example.com", i / 2))
            };
            RouteSpec {
                listener: "web".into(),
                host,
                path_prefix: if i % 2 == 0 {
                    "/".into()
                } else {
                    "/api/v1/".into()
                },
                backend: format!("svc-{i}").into(),
            }
        })
        .collect();
    Config {
        files: Vec::new(),
        admin_bind: "127.0.0.1:9900".parse().unwrap(),
        timeouts: Timeouts {
            header_read: Duration::from_secs(10),
            client_idle: Duration::from_secs(60),
            client_stall: Duration::from_secs(60),
        },
        shutdown_grace: Duration::from_secs(30),
        limits: Default::default(),
        resolver: Default::default(),
        consul: None,
        mdns: None,
        kv: None,
        templates: Vec::new(),
        register: Vec::new(),
        listeners: vec![ListenerSpec {
            location: Location {
                file: Arc::from(Path::new("bench.toml")),
                key: "listeners[0]".into(),
            },
            name: "web".into(),
            bind: "127.0.0.1:8080".parse().unwrap(),
            mode: Mode::Http,
            default_backend: Some("svc-0".into()),
            max_connections: None,
            queue_timeout: Duration::from_secs(1),
            drain_timeout: None,
            consul_tag_routes: false,
            forwarded_headers: true,
            tls: None,
            sni_routes: Vec::new(),
            proxy_protocol: None,
            access_log: None,
            request_id: None,
            start_traces: false,
        }],
        routes,
        backends,
    }
}

fn compile(config: Config, version: u64, previous: Option<&Table>, metrics: &Metrics) -> Table {
    table::compile(
        Arc::new(config),
        version,
        previous,
        &CompileContext::STATIC,
        metrics,
    )
    .expect("compiles")
}

fn route_lookup(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    let table = compile(config(N, 0), 1, None, &metrics);
    let listener = &table.listeners[0];
    let mut g = c.benchmark_group("route lookup, 10k routes");
    for (name, host, path) in [
        (
            "exact host + longest prefix",
            "app-2345.example.com",
            "/api/v1/users/42",
        ),
        (
            "exact host, mixed case + port",
            "App-2345.Example.com:8080",
            "/",
        ),
        ("wildcard host", "eu.tenant-5000.example.com", "/x"),
        ("no host match: default", "unknown.org", "/"),
    ] {
        assert!(listener.route(Some(host), path).is_some());
        g.bench_function(name, |b| {
            b.iter(|| {
                listener
                    .route(std::hint::black_box(Some(host)), path)
                    .is_some()
            })
        });
    }
    g.finish();
}

fn compile_and_swap(c: &mut Criterion) {
    let mut g = c.benchmark_group("10k-backend snapshot");
    g.sample_size(20);
    let metrics = Metrics::new().unwrap();
    let handle = TableHandle::new(compile(config(N, 0), 1, None, &metrics));
    // A reload: every backend changed one server, against the live table.
    let mut generation = 1;
    g.bench_function("compile + publish (reload, all servers changed)", |b| {
        b.iter_batched(
            || {
                generation += 1;
                config(N, generation)
            },
            |next| {
                let current = handle.current();
                let table = compile(next, current.version + 1, Some(&current), &metrics);
                handle.publish(table)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("compile + publish (reload, nothing changed)", |b| {
        b.iter_batched(
            || config(N, generation),
            |next| {
                let current = handle.current();
                let table = compile(next, current.version + 1, Some(&current), &metrics);
                handle.publish(table)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn balancer_pick(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    let mut g = c.benchmark_group("balancer pick, 10 endpoints");
    for (name, balance) in [
        ("round_robin", Balance::RoundRobin),
        ("least_conn", Balance::LeastConn),
        ("p2c", Balance::P2c),
        ("hash", Balance::Hash(HashOn::ClientAddr)),
    ] {
        let mut cfg = config(1, 0);
        cfg.backends = vec![backend(
            "svc-0".into(),
            balance,
            (0..10).map(|j| server(0, j)).collect(),
        )];
        cfg.routes.clear();
        let table = compile(cfg, 1, None, &metrics);
        let backend = table.backends["svc-0"].clone();
        let key = ClientAddrKey("192.0.2.7".parse().unwrap());
        g.bench_with_input(BenchmarkId::from_parameter(name), &backend, |b, backend| {
            b.iter(|| {
                let set = backend.endpoints.load();
                backend.pick(&set, &key, &[]).map(|e| e.addr)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, route_lookup, compile_and_swap, balancer_pick);
criterion_main!(benches);
