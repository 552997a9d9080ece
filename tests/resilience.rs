//! Failing backends and hostile clients: active health checks (rise/fall),
//! outlier ejection, retries and their budget, fail-open, header and body
//! limits.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{
    AbortOnDrop, Backend, HttpClient, Load, Switchyard, endpoint, eventually, full, get,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A backend whose answers the test scripts: `/health` answers the next
/// status of `health` (200 once it is empty), every other path answers
/// `status` with body `name`, or, when `status` is 0, closes the
/// connection without an answer.
struct Scripted {
    addr: SocketAddr,
    health: Arc<Mutex<VecDeque<u16>>>,
    status: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl Scripted {
    async fn start(name: &'static str, status: u16, health: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(health.iter().copied().collect::<VecDeque<_>>()));
        let status = Arc::new(AtomicU16::new(status));
        let checks = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (sc, st, ch, rq) = (
            script.clone(),
            status.clone(),
            checks.clone(),
            requests.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let (sc, st, ch, rq) = (sc.clone(), st.clone(), ch.clone(), rq.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (sc, st, ch, rq) = (sc.clone(), st.clone(), ch.clone(), rq.clone());
                        async move {
                            let code = if req.uri().path() == "/health" {
                                ch.fetch_add(1, Ordering::SeqCst);
                                sc.lock().unwrap().pop_front().unwrap_or(200)
                            } else {
                                rq.fetch_add(1, Ordering::SeqCst);
                                let _ = req.into_body().collect().await;
                                st.load(Ordering::SeqCst)
                            };
                            if code == 0 {
                                return Err("slam");
                            }
                            let mut resp = Response::new(full(name));
                            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                            Ok::<_, &str>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            health: script,
            status,
            checks,
            requests,
            _task: AbortOnDrop(task),
        }
    }
}

fn backend_config(servers: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"b\"\n\n\
         [[backends]]\nname = \"b\"\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

/// A port nothing listens on.
async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_only_the_requests_in_flight_and_returns_after_rise() {
    let a = Backend::start("a").await;
    let a_addr = a.addr;
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&backend_config(
        &[a.addr, b.addr],
        "health_check = { type = \"http\", path = \"/health\", interval = \"100ms\", timeout = \"500ms\", rise = 3, fall = 2 }\n\
         outlier = { consecutive_failures = 2, base_ejection = \"1s\" }",
    ))
    .await;
    let clients = 4;
    let load = Load::start(sy.addr("web"), clients);
    eventually("traffic on both", WAIT, || async {
        a.hits() > 50 && b.hits() > 50
    })
    .await;

    drop(a); // the process dies: listener and open connections
    eventually("a out of rotation", WAIT, || async {
        endpoint(&sy.status().await, a_addr)["healthy"] == false
    })
    .await;
    let at_down = load.failed();
    eprintln!("failed requests when a left rotation: {at_down}");
    assert!(
        at_down <= clients,
        "{at_down} failed requests: more than the {clients} that can be in flight"
    );
    // Out of rotation: no more failures.
    let b_before = b.hits();
    eventually("more traffic on b", WAIT, || async {
        b.hits() > b_before + 300
    })
    .await;
    assert_eq!(
        load.failed(),
        at_down,
        "requests failed after a left rotation"
    );

    // Back on the same port: in rotation again after `rise` good checks.
    let a = Backend::restart_at(a_addr, "a").await;
    eventually("a healthy again", WAIT, || async {
        endpoint(&sy.status().await, a_addr)["healthy"] == true
    })
    .await;
    let checks = &endpoint(&sy.status().await, a_addr)["health_checks"];
    let changes = checks["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{checks}");
    assert_eq!(changes[1]["healthy"], true);
    assert!(
        checks["successes_in_a_row"].as_u64().unwrap() >= 3,
        "{checks}"
    );
    let a_before = a.hits();
    eventually("traffic on a again", WAIT, || async {
        a.hits() > a_before + 50
    })
    .await;
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, at_down, "{failed} of {sent} failed");
    assert!(
        sy.metric("switchyard_health_checks_total{backend=\"b\",result=\"failure\"}")
            .await
            .unwrap()
            >= 2.0
    );
}

#[tokio::test]
async fn a_flapping_backend_follows_rise_and_fall_exactly() {
    // rise 2, fall 3; checks numbered from 1. Down after the failures at
    // 5, 6, 7; up after the successes at 10, 11; nothing else changes.
    let script = [
        200, 500, 500, 200, 500, 500, 500, 200, 500, 200, 200, 500, 500, 200,
    ];
    let flappy = Scripted::start("flappy", 200, &script).await;
    let steady = Backend::start("steady").await;
    let sy = Switchyard::start(&backend_config(
        &[flappy.addr, steady.addr],
        "health_check = { type = \"http\", path = \"/health\", expect_status = \"200-299\", interval = \"30ms\", jitter = \"0s\", rise = 2, fall = 3 }",
    ))
    .await;
    eventually("the script played", WAIT, || async {
        flappy.checks.load(Ordering::SeqCst) > script.len() + 2
    })
    .await;
    let e = endpoint(&sy.status().await, flappy.addr);
    let changes: Vec<(u64, bool)> = e["health_checks"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_u64().unwrap(),
                c["healthy"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(changes, vec![(7, false), (11, true)], "{e}");
    assert_eq!(e["healthy"], true);
    assert!(flappy.health.lock().unwrap().is_empty());
}

#[tokio::test]
async fn with_every_endpoint_unhealthy_503_unless_fail_open() {
    let sick = Scripted::start("sick", 200, &[500; 1000]).await;
    let check =
        "health_check = { type = \"http\", path = \"/health\", interval = \"30ms\", fall = 1 }";
    let sy = Switchyard::start(&backend_config(&[sick.addr], check)).await;
    eventually("503 once the only endpoint is down", WAIT, || async {
        get(sy.addr("web"), "/", None).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, metrics) = sy.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "switchyard_endpoint_up{{backend=\"b\",endpoint=\"{}\"}} 0",
            sick.addr
        )),
        "{metrics}"
    );
    let sy = Switchyard::start(&backend_config(
        &[sick.addr],
        &format!("{check}\nfail_open = true"),
    ))
    .await;
    eventually("the endpoint marked down", WAIT, || async {
        endpoint(&sy.status().await, sick.addr)["healthy"] == false
    })
    .await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "sick".into())
    );
}

#[tokio::test]
async fn consecutive_failures_eject_an_endpoint_for_a_growing_period_within_the_cap() {
    let bad = Scripted::start("bad", 500, &[]).await;
    let good = Backend::start("good").await;
    let sy = Switchyard::start(&backend_config(
        &[bad.addr, good.addr],
        "outlier = { consecutive_failures = 3, base_ejection = \"300ms\", max_ejection = \"10s\" }",
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(client.get("/", None).await.unwrap().0);
    }
    // Round robin: bad answers every other request until its third 500.
    let errors = answers.iter().filter(|s| s.is_server_error()).count();
    assert_eq!(errors, 3, "{answers:?}");
    assert_eq!(bad.requests.load(Ordering::SeqCst), 3);
    let e = endpoint(&sy.status().await, bad.addr);
    assert_eq!(e["ejected"], true, "{e}");
    assert_eq!(e["ejection"]["reason"], "failing_requests", "{e}");
    assert_eq!(e["ejection"]["ejections"], 1, "{e}");
    let ejections = "switchyard_outlier_ejections_total{backend=\"b\",reason=\"failing_requests\"}";
    assert_eq!(sy.metric(ejections).await, Some(1.0));

    // After 300 ms one trial request goes to it; its 500 ejects it again,
    // now for 600 ms, and the other requests never see it meanwhile.
    let first_wait = requests_until(&bad, &mut client, 4).await;
    assert!(first_wait < WAIT, "{first_wait:?}");
    assert_eq!(sy.metric(ejections).await, Some(2.0));
    assert_eq!(
        endpoint(&sy.status().await, bad.addr)["ejection"]["ejections"],
        2
    );
    let second_wait = requests_until(&bad, &mut client, 5).await;
    assert!(
        second_wait >= Duration::from_millis(550),
        "the second period grows: {second_wait:?}"
    );

    // Healthy again: the next trial's 200 ends the ejection.
    bad.status.store(200, Ordering::SeqCst);
    eventually("a trial brings it back", WAIT, || async {
        let mut c = HttpClient::connect(sy.addr("web")).await;
        c.get("/", None).await.unwrap();
        endpoint(&sy.status().await, bad.addr)["ejected"] == false
    })
    .await;

    // The cap: with both failing, at most half of the backend is ejected.
    bad.status.store(500, Ordering::SeqCst);
    let worse = Scripted::start("worse", 500, &[]).await;
    let sy = Switchyard::start(&backend_config(
        &[bad.addr, worse.addr],
        "outlier = { consecutive_failures = 2, base_ejection = \"10s\", max_ejected_percent = 50 }",
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..20 {
        client.get("/", None).await.unwrap();
    }
    let status = sy.status().await;
    let ejected = [bad.addr, worse.addr]
        .iter()
        .filter(|a| endpoint(&status, **a)["ejected"] == true)
        .count();
    assert_eq!(ejected, 1, "{status}");
}

/// Sends requests until `bad` has seen `n`; how long that took. Every
/// request but the one `bad` answers is answered 200 by the good endpoint.
async fn requests_until(bad: &Scripted, client: &mut HttpClient, n: usize) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let (status, _, body) = client.get("/", None).await.unwrap();
        if bad.requests.load(Ordering::SeqCst) >= n {
            return started.elapsed();
        }
        assert_eq!((status, body.as_str()), (StatusCode::OK, "good"));
        assert!(started.elapsed() < WAIT, "no trial request");
    }
}

#[tokio::test]
async fn failed_connects_are_retried_outside_the_budget_and_eject_the_endpoint() {
    let dead = refusing_addr().await;
    let live = Backend::start("live").await;
    let retries = "switchyard_upstream_retries_total{backend=\"b\",reason=\"connect\"}";
    let connect_errors = "switchyard_upstream_connect_errors_total{backend=\"b\"}";
    // Defaults: the first three requests that pick the dead endpoint are
    // sent to the live one instead; then the dead one is ejected and no
    // request picks it.
    let sy = Switchyard::start(&backend_config(&[dead, live.addr], "")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..20 {
        let (status, _, body) = client.get("/", None).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "live"));
    }
    assert_eq!(sy.metric(retries).await, Some(3.0));
    assert_eq!(sy.metric(connect_errors).await, Some(3.0));
    assert_eq!(endpoint(&sy.status().await, dead)["ejected"], true);

    // No retries, no ejection: the dead one costs its share of requests.
    let sy = Switchyard::start(&backend_config(
        &[dead, live.addr],
        "retries = 0\noutlier = { consecutive_failures = 0, consecutive_connect_failures = 0 }",
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut bad_gateway = 0;
    for _ in 0..20 {
        if client.get("/", None).await.unwrap().0 == StatusCode::BAD_GATEWAY {
            bad_gateway += 1;
        }
    }
    assert_eq!(bad_gateway, 10);

    // No retries, default ejection: three fail, then none.
    let sy = Switchyard::start(&backend_config(&[dead, live.addr], "retries = 0")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut bad_gateway = 0;
    for _ in 0..20 {
        if client.get("/", None).await.unwrap().0 == StatusCode::BAD_GATEWAY {
            bad_gateway += 1;
        }
    }
    assert_eq!(bad_gateway, 3);

    // An exhausted budget (none per request, one a second) does not stop
    // retries of failed connects: they never reached a server.
    let sy = Switchyard::start(&backend_config(
        &[dead, live.addr],
        "retry_budget = { percent = 0, min_per_second = 1 }\n\
         outlier = { consecutive_failures = 0, consecutive_connect_failures = 0 }",
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..20 {
        assert_eq!(client.get("/", None).await.unwrap().0, StatusCode::OK);
    }
    // Round robin: each request's first pick is the dead one (the retry's
    // pick takes the next turn), so every request needs its retry.
    assert_eq!(sy.metric(retries).await, Some(20.0));
}

#[tokio::test]
async fn broken_exchanges_are_retried_only_for_idempotent_requests_without_a_body() {
    let slammer = Scripted::start("slammer", 0, &[]).await;
    let live = Backend::start("live").await;
    let sy = Switchyard::start(&backend_config(
        &[slammer.addr, live.addr],
        "retry_on = [\"connect\", \"reset\"]",
    ))
    .await;
    let addr = sy.addr("web");
    for _ in 0..6 {
        assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "live".into()));
    }
    assert!(slammer.requests.load(Ordering::SeqCst) >= 3);
    // A POST with a body is never sent twice: half of them fail.
    let mut client = HttpClient::connect(addr).await;
    let mut failed = 0;
    for _ in 0..6 {
        let req = Request::post("/").body(full("payload")).unwrap();
        match client.send(req).await {
            Ok((StatusCode::OK, _, _)) => {}
            _ => {
                failed += 1;
                client = HttpClient::connect(addr).await;
            }
        }
    }
    assert_eq!(failed, 3);
    // Without `reset` in retry_on, a broken GET is not retried either.
    let sy = Switchyard::start(&backend_config(&[slammer.addr, live.addr], "")).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(sy.addr("web"), "/", None).await.0);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        2,
        "{statuses:?}"
    );

    // Retries of sent requests draw on the budget: with none per request
    // and one a second, one or two broken GETs are rescued, no more.
    let sy = Switchyard::start(&backend_config(
        &[slammer.addr, live.addr],
        "retry_on = [\"connect\", \"reset\"]\nretry_budget = { percent = 0, min_per_second = 1 }",
    ))
    .await;
    let mut failed = 0;
    for _ in 0..20 {
        if get(sy.addr("web"), "/", None).await.0 != StatusCode::OK {
            failed += 1;
        }
    }
    let retries = sy
        .metric("switchyard_upstream_retries_total{backend=\"b\",reason=\"reset\"}")
        .await
        .unwrap_or(0.0);
    assert!((1.0..=2.0).contains(&retries), "{retries} retries");
    // A rescued request takes two turns of the round robin, so the broken
    // endpoint gets 10 or 11 of the 20 first picks.
    assert!((8..=10).contains(&failed), "{failed} failed");
}

#[tokio::test]
async fn per_server_connection_limit_skips_full_endpoints() {
    let held = Backend::held("held").await;
    let free = Backend::start("free").await;
    let sy = Switchyard::start(&backend_config(
        &[held.addr, free.addr],
        "max_connections_per_server = 1",
    ))
    .await;
    let addr = sy.addr("web");
    // The first request sits on `held`; while it does, everything goes to `free`.
    let parked = tokio::spawn(async move { get(addr, "/", None).await });
    eventually("a request parked on held", WAIT, || async {
        held.arrived() == 1
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "free".into()));
    }
    held.release(1);
    assert_eq!(parked.await.unwrap(), (StatusCode::OK, "held".into()));
}

/// Sends raw bytes on a fresh connection and returns the response head's
/// status line.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn oversized_heads_get_431_and_oversized_bodies_413() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&format!(
        "[limits]\nmax_header_bytes = 8192\nmax_body_bytes = 1000\n{}",
        backend_config(&[b.addr], "")
    ))
    .await;
    let addr = sy.addr("web");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(
        raw_status(addr, big.as_bytes()).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // A declared length over the limit: refused before any upstream work.
    let declared = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n{}",
        "b".repeat(2000)
    );
    assert_eq!(
        raw_status(addr, declared.as_bytes()).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    assert_eq!(b.hits(), 0);
    // A chunked body that grows past it while streaming.
    let chunk = "c".repeat(600);
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    assert_eq!(
        raw_status(addr, chunked.as_bytes()).await,
        "HTTP/1.1 413 Payload Too Large"
    );
    // Within the limits: served.
    let mut client = HttpClient::connect(addr).await;
    let req = Request::post("/").body(full("d".repeat(900))).unwrap();
    assert_eq!(client.send(req).await.unwrap().0, StatusCode::OK);
}
