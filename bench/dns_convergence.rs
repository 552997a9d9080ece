//! Time from a DNS record change to traffic moving, against the TTL.
//!
//! An in-process DNS server (the one the tests use) answers `web.test` with
//! a 1 s TTL; Switchyard runs in-process in front of two backends on the
//! same port of 127.0.0.2 and 127.0.0.3; one keep-alive client sends
//! requests back to back. Each round moves the record to the other address
//! at a random point of the TTL window and measures:
//!
//! - change → traffic: from the record change to the first answer from the
//!   new address (at most the TTL plus the refresh overhead);
//! - refresh → traffic: from the lookup that saw the new record (the DNS
//!   server timestamps it) to that first answer: the overhead alone, which
//!   the target bounds at 100 ms.
//!
//! Run: `cargo bench --bench dns_convergence` (about 25 s).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use support::dns::DnsServer;
use support::{Backend, HttpClient, Switchyard, web_config};

const ROUNDS: usize = 20;
const TTL: u32 = 1;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dns = DnsServer::start().await;
    let (a, b) = Backend::pair_on_one_port(("127.0.0.2", "a"), ("127.0.0.3", "b")).await;
    let ips: [IpAddr; 2] = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    dns.set_addresses("web.test", &ips[..1], TTL);
    let config = web_config(
        &format!(
            "[resolver]\nnameservers = [\"{}\"]\nmin_ttl = \"1s\"",
            dns.addr
        ),
        "",
        &format!("servers = [\"web.test:{}\"]", a.addr.port()),
    );
    let sy = Switchyard::start(&config).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let names = ["a", "b"];
    let mut change_to_traffic = Vec::new();
    let mut refresh_to_traffic = Vec::new();
    let mut failed = 0;
    for round in 0..ROUNDS {
        let to = (round + 1) % 2;
        // A random point of the TTL window.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
        let changed = Instant::now();
        dns.set_addresses("web.test", &ips[to..=to], TTL);
        let deadline = changed + Duration::from_secs(10);
        let moved = loop {
            match client.get("/", None).await {
                Ok((status, _, body)) if status.is_success() => {
                    if body == names[to] {
                        break Instant::now();
                    }
                }
                _ => {
                    failed += 1;
                    client = HttpClient::connect(sy.addr("web")).await;
                }
            }
            assert!(Instant::now() < deadline, "traffic did not move in 10 s");
        };
        let refresh = dns
            .first_query_since("web.test", RecordType::A, changed)
            .expect("a lookup after the change");
        change_to_traffic.push(moved - changed);
        refresh_to_traffic.push(moved.saturating_duration_since(refresh));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let report = |what: &str, v: &mut Vec<Duration>| {
        v.sort();
        println!(
            "| {what} | {:.1} | {:.1} | {:.1} |",
            ms(v[v.len() / 2]),
            ms(v[v.len() * 9 / 10]),
            ms(v[v.len() - 1])
        );
    };
    println!(
        "\nDNS record change to traffic moving: {ROUNDS} changes, TTL {TTL} s, {failed} failed requests\n"
    );
    println!("| interval | p50 ms | p90 ms | max ms |");
    println!("| --- | ---: | ---: | ---: |");
    report(
        "record change → first answer from the new address",
        &mut change_to_traffic,
    );
    report(
        "lookup that saw the change → first answer from the new address",
        &mut refresh_to_traffic,
    );
    drop((a, b));
}
