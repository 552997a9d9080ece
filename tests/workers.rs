//! Thread per core: the same promises with two data-plane workers, each on
//! its own runtime and its own `SO_REUSEPORT` socket of every listener.
//! Connections land on both workers; swaps, listener diffs, drains and
//! limits hold across them.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use support::*;
use switchyard::control::ReloadResult;

const WORKERS: usize = 2;
const WAIT: Duration = Duration::from_secs(10);

fn config(backend: &Backend, extra_listener: bool, listener_extra: &str) -> String {
    let extra = if extra_listener {
        "[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.2:0\"\ndefault_backend = \"b\"\n"
    } else {
        ""
    };
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"b\"\n{listener_extra}\n\
         {extra}\n[[backends]]\nname = \"b\"\nservers = [\"{}\"]\n",
        backend.addr
    )
}

/// Accepted connections per worker, from `/metrics`.
async fn per_worker(sy: &Switchyard) -> Vec<f64> {
    let mut counts = Vec::new();
    for w in 0..WORKERS {
        let series = format!("switchyard_worker_connections_total{{worker=\"{w}\"}}");
        counts.push(sy.metric(&series).await.unwrap_or(0.0));
    }
    counts
}

/// Opens keep-alive connections until both workers have accepted some.
async fn clients_on_both_workers(sy: &Switchyard, addr: std::net::SocketAddr) -> Vec<HttpClient> {
    let mut clients = Vec::new();
    for _ in 0..64 {
        let mut c = HttpClient::connect(addr).await;
        assert_eq!(c.get("/", None).await.unwrap().0, StatusCode::OK);
        clients.push(c);
        let counts = per_worker(sy).await;
        if clients.len() >= 8 && counts.iter().all(|&c| c > 0.0) {
            return clients;
        }
    }
    panic!(
        "64 connections never reached both workers: {:?}",
        per_worker(sy).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_evenly_over_the_workers() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start_with_workers(&config(&b, false, ""), WORKERS).await;
    let mut clients = clients_on_both_workers(&sy, sy.addr("web")).await;
    // 48 keep-alive connections: the kernel's hashing alone leaves one
    // worker 20-40 % busier; a busier worker hands connections over.
    while clients.len() < 48 {
        let mut c = HttpClient::connect(sy.addr("web")).await;
        assert_eq!(c.get("/", None).await.unwrap().0, StatusCode::OK);
        clients.push(c);
    }
    let counts = per_worker(&sy).await;
    eprintln!("{} connections per worker: {counts:?}", clients.len());
    assert_eq!(counts.iter().sum::<f64>(), clients.len() as f64);
    assert!((counts[0] - counts[1]).abs() <= 4.0, "{counts:?}");
    assert_eq!(
        sy.metric("switchyard_listener_active_connections{listener=\"web\"}")
            .await,
        Some(clients.len() as f64),
        "one gauge for the listener, whatever worker holds the connection"
    );
}

/// 16 keep-alive clients on both workers, the config swapped 100 times
/// between two backends: every request answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_storm_across_workers_loses_nothing() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let sy = Arc::new(Switchyard::start_with_workers(&config(&one, false, ""), WORKERS).await);
    let addr = sy.addr("web");
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (done, answered) = (done.clone(), answered.clone());
            tokio::spawn(async move {
                let mut client = HttpClient::connect(addr).await;
                while !done.load(Ordering::SeqCst) {
                    let (status, _, body) =
                        client.get("/", None).await.expect("request must not fail");
                    assert_eq!(status, StatusCode::OK, "{body}");
                    assert!(body == "one" || body == "two", "{body}");
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for swap in 0..100 {
        let due = swap * 50;
        eventually("clients make progress", Duration::from_secs(60), || async {
            answered.load(Ordering::SeqCst) >= due
        })
        .await;
        let next = if swap % 2 == 0 { &two } else { &one };
        sy.write_config(&config(next, false, ""));
        let record = sy.reload().await;
        assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    }
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("no client saw a failure");
    }
    let counts = per_worker(&sy).await;
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "both workers served: {counts:?}"
    );
    eprintln!(
        "{} requests over 100 swaps, connections per worker {counts:?}",
        answered.load(Ordering::SeqCst)
    );
    assert!(one.hits() > 0 && two.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_is_added_on_every_worker_and_drained_on_every_worker() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start_with_workers(&config(&b, false, ""), WORKERS).await;
    sy.write_config(&config(&b, true, ""));
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    let extra = sy.addr("extra");
    // Served on both workers' sockets.
    let before = per_worker(&sy).await;
    let mut clients = clients_on_both_workers(&sy, extra).await;
    let after = per_worker(&sy).await;
    assert!(
        after.iter().zip(&before).all(|(a, b)| a > b),
        "both workers accept on the new listener: {before:?} -> {after:?}"
    );

    // Removed: no worker accepts any more, and every open keep-alive
    // connection, on either worker, gets its next answer marked close.
    sy.write_config(&config(&b, false, ""));
    let record = sy.reload().await;
    assert_eq!(
        record.diff.as_ref().unwrap().listeners.removed,
        vec!["extra"]
    );
    eventually(
        "no worker accepts on the removed listener",
        WAIT,
        || async {
            let mut refused = 0;
            for _ in 0..8 {
                if tokio::net::TcpStream::connect(extra).await.is_err() {
                    refused += 1;
                }
            }
            refused == 8
        },
    )
    .await;
    for client in &mut clients {
        let (status, headers, body) = client.get("/", None).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));
        assert_eq!(headers["connection"], "close");
    }
    eventually("the drained connections are closed", WAIT, || async {
        sy.metric("switchyard_listener_active_connections{listener=\"extra\"}")
            .await
            .unwrap_or(0.0)
            == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_is_per_listener_not_per_worker() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start_with_workers(
        &config(&b, false, "max_connections = 4\nqueue_timeout = \"200ms\""),
        WORKERS,
    )
    .await;
    let addr = sy.addr("web");
    // Twelve clients at once, holding their connections: four are served,
    // the rest turned away, whichever worker accepted them.
    let mut served = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = HttpClient::connect(addr).await;
        match c.get("/", None).await {
            Ok((StatusCode::OK, _, _)) => served.push(c),
            Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) => refused += 1,
            other => panic!("{:?}", other.map(|a| a.0)),
        }
    }
    assert_eq!((served.len(), refused), (4, 8));
    let counts = per_worker(&sy).await;
    assert!(
        counts.iter().all(|&c| c > 0.0),
        "both workers took connections: {counts:?}"
    );
    assert_eq!(
        sy.metric("switchyard_listener_rejected_connections_total{listener=\"web\"}")
            .await,
        Some(8.0)
    );
}
