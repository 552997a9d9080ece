//! A backend server that dies under load, with nothing configured: passive
//! ejection after failed connects (on by default), retries of failed
//! connects outside the retry budget, and the trial request that brings a
//! returning server back. HTTP and TCP listeners, with and without active
//! health checks.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Backend, Load, Switchyard, endpoint, eventually};

/// Generous: the trial comes one default ejection period (5 s) after the
/// ejection, on a machine that may be running other tests.
const WAIT: Duration = Duration::from_secs(20);
/// Client connections, as `wrk -c8`.
const CLIENTS: usize = 8;

/// Three servers on three loopback addresses, round robin, and `extra`
/// inside the backend; the listener in `mode`.
fn three_servers(servers: &[SocketAddr], mode: &str, extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nmode = \"{mode}\"\ndefault_backend = \"b\"\n\n\
         [[backends]]\nname = \"b\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// How the load reaches the proxy.
#[derive(Clone, Copy, PartialEq)]
enum Clients {
    /// Keep-alive connections, as wrk.
    KeepAlive,
    /// A new connection per request: each one picks an endpoint in TCP mode.
    Fresh,
}

/// The trial: three servers, 8 clients, one server's process
/// killed. Only the requests in flight on it may fail; it is ejected for
/// its failed connects and shown so in `/status`; nothing fails after
/// that; once it is back it returns to rotation by a trial request.
async fn dead_server_costs_only_requests_in_flight(mode: &str, extra: &str, clients: Clients) {
    let a = Backend::start_at("127.0.0.2", "a").await;
    let dead = Backend::start_at("127.0.0.3", "dead").await;
    let c = Backend::start_at("127.0.0.4", "c").await;
    let dead_addr = dead.addr;
    let sy = Switchyard::start(&three_servers(&[a.addr, dead.addr, c.addr], mode, extra)).await;
    let load = match clients {
        Clients::KeepAlive => Load::start(sy.addr("web"), CLIENTS),
        Clients::Fresh => Load::start_fresh(sy.addr("web"), CLIENTS),
    };
    eventually("traffic on all three", WAIT, || async {
        a.hits() > 50 && dead.hits() > 50 && c.hits() > 50
    })
    .await;
    assert_eq!(load.failed(), 0, "failures before the kill");

    drop(dead); // the process dies: its listener and open connections
    let killed = Instant::now();
    eventually("the dead server ejected", WAIT, || async {
        endpoint(&sy.status().await, dead_addr)["ejected"] == true
    })
    .await;
    eprintln!("ejected {:?} after the kill", killed.elapsed());
    let e = endpoint(&sy.status().await, dead_addr);
    assert_eq!(e["ejection"]["reason"], "connect_failures", "{e}");
    assert!(e["ejection"]["until"].is_string(), "{e}");
    let at_ejection = load.failed();
    eprintln!("failed requests when the dead server was ejected: {at_ejection}");
    assert!(
        at_ejection <= CLIENTS,
        "{at_ejection} failed: more than the {CLIENTS} that can be in flight"
    );

    // Ejected: every request goes to the two others, none fails.
    let (a_before, c_before) = (a.hits(), c.hits());
    eventually("more traffic on the others", WAIT, || async {
        a.hits() + c.hits() > a_before + c_before + 2000
    })
    .await;
    assert_eq!(load.failed(), at_ejection, "requests failed after ejection");
    let connect_retries = sy
        .metric("switchyard_upstream_retries_total{backend=\"b\",reason=\"connect\"}")
        .await
        .unwrap_or(0.0);
    let connect_errors = sy
        .metric("switchyard_upstream_connect_errors_total{backend=\"b\"}")
        .await
        .unwrap();
    eprintln!("connect errors {connect_errors}, retries after them {connect_retries}");
    assert!(
        connect_errors <= 3.0 + CLIENTS as f64,
        "{connect_errors} connect errors: the dead server stayed in rotation"
    );

    // Back on its address: the trial after the ejection period finds it.
    let back = Backend::restart_at(dead_addr, "back").await;
    eventually("the server back in rotation", WAIT, || async {
        back.hits() > 50 && endpoint(&sy.status().await, dead_addr)["ejected"] == false
    })
    .await;
    let (sent, failed) = load.finish().await;
    eprintln!("{failed} of {sent} requests failed");
    assert_eq!(failed, at_ejection, "requests failed after the ejection");
    assert_eq!(
        sy.metric("switchyard_outlier_ejections_total{backend=\"b\",reason=\"connect_failures\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_defaults_a_killed_server_costs_only_requests_in_flight() {
    dead_server_costs_only_requests_in_flight("http", "", Clients::KeepAlive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_with_health_checks_a_killed_server_costs_only_requests_in_flight() {
    // Default check timings (every 2 s, fall 3): ejection acts long
    // before the checks do.
    dead_server_costs_only_requests_in_flight(
        "http",
        "health_check = { type = \"http\", path = \"/health\" }",
        Clients::KeepAlive,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_defaults_a_killed_server_costs_only_connections_in_flight() {
    dead_server_costs_only_requests_in_flight("tcp", "", Clients::Fresh).await;
}
