//! Hot swaps: no request lost under load, in-flight work finishes, bad
//! configs never apply, listeners are diffed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use support::*;
use switchyard::control::ReloadResult;

fn config_for(set: &str, servers: &[&Backend]) -> String {
    let list: Vec<String> = servers.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"

[[routes]]
path_prefix = "/"
backend = "{set}"

[[routes]]
path_prefix = "/{set}-only/"
backend = "{set}"

[[backends]]
name = "{set}"
servers = [{}]
"#,
        list.join(", ")
    )
}

/// 16 keep-alive clients send 20,000 requests while the config swaps 200
/// times between two backend sets. Every request must succeed, answered by a
/// backend of a snapshot that was live at some point during that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_storm_under_load_loses_nothing() {
    const CLIENTS: usize = 16;
    const REQUESTS: usize = 20_000;
    const SWAPS: u64 = 200;
    let a = [Backend::start("a1").await, Backend::start("a2").await];
    let b = [Backend::start("b1").await, Backend::start("b2").await];
    let config_a = config_for("alpha", &[&a[0], &a[1]]);
    let config_b = config_for("beta", &[&b[0], &b[1]]);
    let sy = Arc::new(Switchyard::start(&config_a).await);
    let addr = sy.addr("web");

    // Version 1 is set A; version k+1 is the k-th swap: B when k is odd.
    let set_of = |version: u64| {
        if version % 2 == 1 {
            ["a1", "a2"]
        } else {
            ["b1", "b2"]
        }
    };
    let applied = Arc::new(AtomicU64::new(1)); // every version <= this is live or was
    let announced = Arc::new(AtomicU64::new(1)); // no version > this exists yet
    let answered = Arc::new(AtomicUsize::new(0));
    let swaps_done = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (applied, announced, answered, swaps_done) = (
            applied.clone(),
            announced.clone(),
            answered.clone(),
            swaps_done.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(addr).await;
            let mut sent = 0usize;
            while answered.load(Ordering::SeqCst) < REQUESTS || !swaps_done.load(Ordering::SeqCst) {
                let first = applied.load(Ordering::SeqCst);
                let (status, _, body) = client.get("/", None).await.expect("request must not fail");
                let last = announced.load(Ordering::SeqCst);
                assert_eq!(status, StatusCode::OK, "body {body}");
                let valid = (first..=last).any(|v| set_of(v).contains(&body.as_str()));
                assert!(
                    valid,
                    "{body} answered, but only versions {first}..={last} were live"
                );
                answered.fetch_add(1, Ordering::SeqCst);
                sent += 1;
            }
            sent
        }));
    }

    for swap in 1..=SWAPS {
        // Spread the swaps over the run: one per REQUESTS/SWAPS answers.
        let due = (swap as usize - 1) * REQUESTS / SWAPS as usize;
        eventually("clients make progress", Duration::from_secs(60), || async {
            answered.load(Ordering::SeqCst) >= due
        })
        .await;
        let version = swap + 1;
        announced.store(version, Ordering::SeqCst);
        sy.write_config(if swap % 2 == 1 { &config_b } else { &config_a });
        let record = sy.reload().await;
        assert_ne!(record.result, ReloadResult::Failure, "{:?}", record.errors);
        assert_eq!(record.version, version);
        applied.store(version, Ordering::SeqCst);
    }
    swaps_done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client task");
    }
    assert!(total >= REQUESTS, "sent {total}");
    assert_eq!(sy.app.table().version, SWAPS + 1);
    let hits: Vec<usize> = a.iter().chain(&b).map(|s| s.hits()).collect();
    assert!(
        hits.iter().all(|&h| h > 0),
        "every server served some requests: {hits:?}"
    );
    eprintln!("swap storm: {total} requests, {SWAPS} swaps, per-server hits {hits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_to_a_removed_server_completes() {
    let old = Backend::held("old").await;
    let new = Backend::start("new").await;
    let sy = Switchyard::start(&config_for("web", &[&old])).await;
    let addr = sy.addr("web");
    let in_flight = tokio::spawn(async move { get(addr, "/slow", None).await });
    eventually(
        "request reaches the old server",
        Duration::from_secs(5),
        || async { old.arrived() == 1 },
    )
    .await;

    sy.write_config(&config_for("web", &[&new]));
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    assert_eq!(get(addr, "/", None).await.1, "new");

    let (_, status) = sy.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let draining = &status["draining_endpoints"][0];
    assert_eq!(draining["address"], old.addr.to_string());
    assert_eq!(draining["draining"], true);
    assert_eq!(draining["active_connections"], 1);

    // The address comes back while its request is still in flight: it stops
    // draining and keeps its state (the in-flight count) rather than
    // starting over.
    sy.write_config(&config_for("web", &[&new, &old]));
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    let (_, status) = sy.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["draining_endpoints"], serde_json::json!([]));
    let back = status["backends"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == old.addr.to_string())
        .expect("old address listed again")
        .clone();
    assert_eq!(back["draining"], false);
    assert_eq!(back["active_connections"], 1);

    old.release(1);
    let (status, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "old"));
    assert_eq!(old.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_rejected_and_the_old_one_keeps_serving() {
    let good = Backend::start("good").await;
    let other = Backend::start("other").await;
    let valid = config_for("web", &[&good]);
    let sy = Switchyard::start(&valid).await;
    let addr = sy.addr("web");
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let occupied_addr = occupied.local_addr().unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax error",
            format!("{valid}\n[[routes]\nbackend = \"web\"\n"),
            "syntax error",
        ),
        (
            "unknown key",
            valid.replace("path_prefix = \"/\"", "path_prefix = \"/\"\nweight = 3"),
            "`routes[0].weight`",
        ),
        (
            "missing backend",
            format!("{valid}\n[[routes]]\npath_prefix = \"/x/\"\nbackend = \"nope\"\n"),
            "`routes[2].backend`: no backend named `nope`",
        ),
        (
            "duplicate bind",
            format!(
                "{}\n[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:7\"\ndefault_backend = \"web\"\n\
                 [[listeners]]\nname = \"b\"\nbind = \"127.0.0.1:7\"\ndefault_backend = \"web\"\n",
                valid
            ),
            "`listeners[2].bind`: 127.0.0.1:7 is already bound",
        ),
        (
            // Valid on paper, but the new listener cannot bind: the route
            // change in the same file must not apply either.
            "bind failure",
            format!(
                "{}\n[[listeners]]\nname = \"extra\"\nbind = \"{occupied_addr}\"\nmode = \"tcp\"\ndefault_backend = \"other\"\n\
                 [[backends]]\nname = \"other\"\nservers = [\"{}\"]\n",
                config_for("web", &[&other]),
                other.addr
            ),
            "binding listener `extra`",
        ),
    ];
    let mut failures = 0;
    for (what, config, expected) in cases {
        sy.write_config(&config);
        let record = sy.reload().await;
        failures += 1;
        assert_eq!(
            record.result,
            ReloadResult::Failure,
            "{what} must be rejected"
        );
        assert_eq!(record.version, 1, "{what}: version must not move");
        let all = record.errors.join("\n");
        assert!(
            all.contains(expected),
            "{what}: {all:?} should contain {expected:?}"
        );
        assert!(
            all.contains("switchyard.toml"),
            "{what}: errors name the file: {all}"
        );
        assert_eq!(
            get(addr, "/", None).await.1,
            "good",
            "{what}: old config keeps serving"
        );
        let (_, status) = sy.admin_get("/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(status["version"], 1);
        assert_eq!(status["last_failure"]["result"], "failure");
        assert!(status["last_failure"]["errors"][0].as_str().unwrap().len() > 10);
    }
    assert_eq!(other.hits(), 0, "nothing of a rejected config was applied");
    let (_, metrics) = sy.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "switchyard_config_reloads_total{{result=\"failure\"}} {failures}"
        )),
        "{metrics}"
    );
    drop(occupied);

    // And a good config after all that applies.
    sy.write_config(&config_for("web", &[&other]));
    let (code, body) = {
        let mut c = HttpClient::connect(sy.app.admin_addr()).await;
        let req = http::Request::post("/reload").body(full("")).unwrap();
        let (s, _, b) = c.send(req).await.unwrap();
        (s, b)
    };
    assert_eq!(code, StatusCode::OK, "{body}");
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(record["result"], "success");
    assert_eq!(
        record["diff"]["servers"]["added"][0],
        format!("web/{}", other.addr)
    );
    assert_eq!(get(addr, "/", None).await.1, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_diffed_kept_added_and_drained() {
    let b = Backend::start("b").await;
    let base = config_for("web", &[&b]);
    let sy = Switchyard::start(&base).await;
    let web = sy.addr("web");
    let mut kept_client = HttpClient::connect(web).await;
    assert_eq!(kept_client.get("/", None).await.unwrap().2, "b");

    let with_extra = format!(
        "{base}\n[[listeners]]\nname = \"extra\"\nbind = \"127.0.0.2:0\"\ndefault_backend = \"web\"\n"
    );
    sy.write_config(&with_extra.replace(
        "[[routes]]\npath_prefix",
        "[[routes]]\nlistener = \"web\"\npath_prefix",
    ));
    let record = sy.reload().await;
    assert_eq!(record.result, ReloadResult::Success, "{:?}", record.errors);
    assert_eq!(record.diff.as_ref().unwrap().listeners.added, vec!["extra"]);
    assert_eq!(
        sy.addr("web"),
        web,
        "an unchanged listener keeps its socket"
    );
    let extra = sy.addr("extra");
    assert_eq!(get(extra, "/", None).await.1, "b");
    // The connection opened before the swap is still served.
    assert_eq!(kept_client.get("/", None).await.unwrap().2, "b");

    let mut extra_client = HttpClient::connect(extra).await;
    assert_eq!(extra_client.get("/", None).await.unwrap().2, "b");
    sy.write_config(&base);
    let record = sy.reload().await;
    assert_eq!(
        record.diff.as_ref().unwrap().listeners.removed,
        vec!["extra"]
    );
    eventually(
        "removed listener stops accepting",
        Duration::from_secs(5),
        || async { tokio::net::TcpStream::connect(extra).await.is_err() },
    )
    .await;
    // Its open keep-alive connection gets one more answer, marked close.
    let (status, headers, body) = extra_client.get("/", None).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));
    assert_eq!(headers["connection"], "close");
    assert_eq!(kept_client.get("/", None).await.unwrap().2, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_applied_without_being_asked() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let sy = Switchyard::start_watching(&config_for("web", &[&one])).await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await.1, "one");
    sy.write_config(&config_for("web", &[&two]));
    eventually(
        "file change is applied",
        Duration::from_secs(10),
        || async { get(addr, "/", None).await.1 == "two" },
    )
    .await;
    let (_, status) = sy.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_reload"]["trigger"], "file_change");
    assert_eq!(status["version"], 2);

    // A broken edit is reported and changes nothing.
    std::fs::write(&sy.config, "[[listeners]\n").unwrap();
    eventually(
        "broken edit is reported",
        Duration::from_secs(10),
        || async {
            let (_, status) = sy.admin_get("/status").await;
            status.contains("syntax error")
        },
    )
    .await;
    assert_eq!(get(addr, "/", None).await.1, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_state_survives_a_swap() {
    let held = Backend::held("held").await;
    let other = Backend::start("other").await;
    let sy = Switchyard::start(&config_for("web", &[&held])).await;
    let addr = sy.addr("web");
    let in_flight = tokio::spawn(async move { get(addr, "/", None).await });
    eventually("request in flight", Duration::from_secs(5), || async {
        held.arrived() == 1
    })
    .await;
    // Same server, one more beside it, and the backend definition changes.
    sy.write_config(
        &config_for("web", &[&held, &other])
            .replace("servers", "balance = \"least_conn\"\nservers"),
    );
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    let table = sy.app.table();
    let set = table.backends["web"].endpoints.load();
    let kept = set.endpoints.iter().find(|e| e.addr == held.addr).unwrap();
    assert_eq!(kept.state.active(), 1, "the in-flight count carried over");
    // least_conn sees that count: new requests go to the other server.
    for _ in 0..10 {
        assert_eq!(get(addr, "/", None).await.1, "other");
    }
    held.release(1);
    assert_eq!(in_flight.await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_sends_goaway_to_h2_clients_and_finishes_their_streams() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let held = Backend::held("held").await;
    let keep = single_backend(held.addr, "", "");
    let with_h2 = format!(
        "{keep}\n[[listeners]]\nname = \"h2\"\nbind = \"127.0.0.1:0\"\ndefault_backend = \"b\"\n"
    );
    let sy = Switchyard::start(&with_h2).await;
    let stream = tokio::net::TcpStream::connect(sy.addr("h2")).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut s = sender.clone();
    let in_flight = tokio::spawn(async move {
        let resp = s
            .send_request(
                http::Request::get("http://h2.test/")
                    .body(full(""))
                    .unwrap(),
            )
            .await?;
        let status = resp.status();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    });
    eventually("stream in flight", Duration::from_secs(5), || async {
        held.arrived() == 1
    })
    .await;

    sy.write_config(&keep);
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    held.release(1);
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("stream finishes after GOAWAY");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"held"[..]));
    // GOAWAY then close: the client connection ends cleanly, not with an error.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("connection closes");
    assert!(ended.unwrap().is_ok(), "clean h2 shutdown");
}
