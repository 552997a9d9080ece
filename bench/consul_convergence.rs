//! Time from a Consul instance turning critical to traffic leaving it.
//!
//! The Consul-compatible test server (the one the tests use) holds two
//! instances of `web`; Switchyard runs in-process with `consul_service =
//! "web"` and round robin; one keep-alive client sends requests back to
//! back. Each round turns instance `a` critical at the test server and
//! measures until traffic has left it (two answers in a row from `b`: with
//! round robin over both, that only happens once `a` is out), then turns it
//! passing again and waits for it to come back. Changes are spaced a random
//! 50–250 ms apart, as isolated health changes are.
//!
//! Run: `cargo bench --bench consul_convergence` (about 30 s).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use support::consul::{ConsulServer, ServiceInstance};
use support::{Backend, HttpClient, Switchyard, web_config};

const ROUNDS: usize = 100;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let consul = ConsulServer::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    for (id, backend) in [("a", &a), ("b", &b)] {
        let mut i = ServiceInstance::new("web", id);
        i.node = format!("node-{id}");
        i.node_address = "127.0.0.1".into();
        i.port = backend.addr.port();
        consul.register(i);
    }
    let config = web_config(
        &format!("[consul]\naddress = \"http://{}\"", consul.addr()),
        "",
        "consul_service = \"web\"",
    );
    let sy = Switchyard::start(&config).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let next = async |client: &mut HttpClient| -> String {
        match client.get("/", None).await {
            Ok((status, _, body)) if status.is_success() => body,
            other => panic!("request failed: {other:?}"),
        }
    };
    let mut leave = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
        let changed = Instant::now();
        consul.set_service_status("a", "critical");
        let deadline = changed + Duration::from_secs(10);
        let mut in_a_row = 0;
        while in_a_row < 2 {
            in_a_row = if next(&mut client).await == "b" {
                in_a_row + 1
            } else {
                0
            };
            assert!(Instant::now() < deadline, "traffic did not leave a in 10 s");
        }
        leave.push(changed.elapsed());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..250))).await;
        consul.set_service_status("a", "passing");
        while next(&mut client).await != "a" {
            assert!(
                Instant::now() < deadline + Duration::from_secs(10),
                "a did not come back"
            );
        }
    }
    leave.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\nConsul instance turning critical to traffic leaving it: {ROUNDS} changes, 0 failed requests\n"
    );
    println!("| p50 ms | p99 ms | max ms |");
    println!("| ---: | ---: | ---: |");
    println!(
        "| {:.1} | {:.1} | {:.1} |",
        ms(leave[ROUNDS / 2]),
        ms(leave[ROUNDS * 99 / 100]),
        ms(leave[ROUNDS - 1])
    );
    drop((a, b));
}
