//! Access logs, request IDs and trace context, seen from outside: lines are
//! parsed (JSON), never grepped, and each kind of request and failure is
//! checked field by field.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(10);

/// The JSON lines of the log file at `path` once `count` lines are there.
async fn lines(path: &Path, count: usize) -> Vec<Value> {
    let mut found = Vec::new();
    eventually(
        &format!("{count} lines in {}", path.display()),
        DEADLINE,
        || {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            found = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            let enough = found.len() >= count;
            async move { enough }
        },
    )
    .await;
    found
}

fn log_path(sy: &Switchyard) -> PathBuf {
    sy.dir.path().join("access.log")
}

/// An address nothing listens on: connects to it are refused.
async fn refused_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn line_for<'a>(lines: &'a [Value], key: &str, value: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l[key] == value)
        .unwrap_or_else(|| panic!("a line with {key} = {value} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_h2_websocket_and_tcp_each_get_a_line_with_their_fields() {
    let b = Backend::start("b").await;
    let (ws_addr, _ws) = websocket_echo().await;
    let (echo_addr, _echo) = tcp_echo().await;
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
access_log = {{ path = "access.log" }}

[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "echo"
access_log = {{ path = "access.log" }}

[[routes]]
listener = "web"
path_prefix = "/socket"
backend = "ws"

[[routes]]
listener = "web"
path_prefix = "/"
backend = "b"

[[backends]]
name = "b"
servers = ["{b}"]

[[backends]]
name = "ws"
servers = ["{ws_addr}"]

[[backends]]
name = "echo"
servers = ["{echo_addr}"]
"#,
        b = b.addr
    );
    let sy = Switchyard::start(&config).await;
    let path = log_path(&sy);

    // HTTP/1.1, with a user agent and a query.
    let mut c = HttpClient::connect(sy.addr("web")).await;
    let req = Request::get("/hello?x=1")
        .header("host", "one.test")
        .header("user-agent", "test-agent/1")
        .body(full(""))
        .unwrap();
    let (status, headers, _) = c.send(req).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap().to_string();

    // HTTP/2 (h2c).
    let stream = TcpStream::connect(sy.addr("web")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender
        .send_request(Request::get("http://two.test/h2").body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    // WebSocket: its line comes when the tunnel closes.
    let stream = TcpStream::connect(sy.addr("web")).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("ws://three.test/socket", stream)
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);

    // TCP: 5 bytes in, echoed, then the server's goodbye.
    let mut tcp = TcpStream::connect(sy.addr("raw")).await.unwrap();
    tcp.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    tcp.read_exact(&mut echoed).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"<eof seen>");

    let lines = lines(&path, 4).await;
    let h1 = line_for(&lines, "path", "/hello?x=1");
    assert_eq!(h1["listener"], "web");
    assert_eq!(h1["method"], "GET");
    assert_eq!(h1["host"], "one.test");
    assert_eq!(h1["protocol"], "HTTP/1.1");
    assert_eq!(h1["status"], 200);
    assert_eq!(h1["client_ip"], "127.0.0.1");
    assert!(h1["client_port"].as_u64().unwrap() > 0);
    assert_eq!(h1["backend"], "b");
    assert_eq!(h1["endpoint"], b.addr.to_string());
    assert_eq!(h1["attempts"], 1);
    assert_eq!(h1["retries"], 0);
    assert_eq!(h1["bytes_out"], 1, "the body is the backend's name: {h1}");
    assert_eq!(h1["termination"], "ok");
    assert_eq!(h1["termination_state"], "--");
    assert_eq!(h1["request_id"], id.as_str());
    assert_eq!(h1["user_agent"], "test-agent/1");
    assert!(
        h1["connect_ms"].as_f64().is_some(),
        "a new connection: {h1}"
    );
    let (ttfb, total) = (
        h1["ttfb_ms"].as_f64().unwrap(),
        h1["duration_ms"].as_f64().unwrap(),
    );
    assert!(ttfb > 0.0 && ttfb <= total, "{h1}");
    assert!(h1["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(h1["tls_version"], Value::Null);

    let h2 = line_for(&lines, "path", "/h2");
    assert_eq!(h2["protocol"], "HTTP/2.0");
    assert_eq!(h2["host"], "two.test");
    assert_eq!(h2["status"], 200);
    assert_eq!(h2["backend"], "b");

    let ws = line_for(&lines, "path", "/socket");
    assert_eq!(ws["status"], 101);
    assert_eq!(ws["backend"], "ws");
    assert_eq!(ws["endpoint"], ws_addr.to_string());
    assert_eq!(ws["termination"], "ok");
    assert!(
        ws["bytes_in"].as_u64().unwrap() > 4 && ws["bytes_out"].as_u64().unwrap() > 4,
        "tunnel bytes both ways: {ws}"
    );

    let tcp = line_for(&lines, "protocol", "TCP");
    assert_eq!(tcp["listener"], "raw");
    assert_eq!(tcp["status"], Value::Null);
    assert_eq!(tcp["method"], Value::Null);
    assert_eq!(tcp["backend"], "echo");
    assert_eq!(tcp["endpoint"], echo_addr.to_string());
    assert_eq!(tcp["bytes_in"], 5);
    assert_eq!(tcp["bytes_out"], 15, "the echo, then `<eof seen>`");
    assert_eq!(tcp["termination"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_with_their_status_and_termination() {
    let held = Backend::held("slow").await;
    let dead = refused_addr().await;
    let config = format!(
        r#"
[limits]
max_header_bytes = 8192

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
access_log = {{ path = "access.log" }}

[[routes]]
listener = "web"
path_prefix = "/dead"
backend = "dead"

[[routes]]
listener = "web"
path_prefix = "/slow"
backend = "slow"

[[routes]]
listener = "web"
path_prefix = "/away"
backend = "away"

[[backends]]
name = "dead"
servers = ["{dead}"]

[[backends]]
name = "slow"
servers = ["{slow}"]
timeouts = {{ request = "300ms" }}

[[backends]]
name = "away"
servers = ["{slow}"]
"#,
        slow = held.addr
    );
    let sy = Switchyard::start(&config).await;
    let path = log_path(&sy);
    let web = sy.addr("web");

    assert_eq!(get(web, "/dead", None).await.0, StatusCode::BAD_GATEWAY);
    assert_eq!(get(web, "/slow", None).await.0, StatusCode::GATEWAY_TIMEOUT);

    let mut c = HttpClient::connect(web).await;
    let req = Request::get("/big")
        .header("x-big", "y".repeat(16000))
        .body(full(""))
        .unwrap();
    let (status, _, _) = c.send(req).await.unwrap();
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // A client that asks and leaves before the answer.
    let arrived = held.arrived();
    let mut gone = TcpStream::connect(web).await.unwrap();
    gone.write_all(b"GET /away HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    eventually("the request reaches the backend", DEADLINE, || {
        let n = held.arrived();
        async move { n > arrived }
    })
    .await;
    drop(gone);

    let lines = lines(&path, 4).await;
    let bad_gateway = line_for(&lines, "path", "/dead");
    assert_eq!(bad_gateway["status"], 502);
    assert_eq!(bad_gateway["termination"], "connect_failed");
    assert_eq!(bad_gateway["termination_state"], "SC");
    assert_eq!(bad_gateway["endpoint"], dead.to_string());
    assert!(bad_gateway["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(bad_gateway["ttfb_ms"], Value::Null);

    let timeout = line_for(&lines, "path", "/slow");
    assert_eq!(timeout["status"], 504);
    assert_eq!(timeout["termination"], "upstream_timeout");
    assert_eq!(timeout["termination_state"], "sH");
    assert!(
        timeout["duration_ms"].as_f64().unwrap() >= 300.0,
        "{timeout}"
    );

    let too_large = lines
        .iter()
        .find(|l| l["status"] == 431)
        .expect("a 431 line");
    assert_eq!(too_large["termination"], "head_too_large");
    assert_eq!(too_large["listener"], "web");

    let away = line_for(&lines, "path", "/away");
    assert_eq!(away["status"], 499);
    assert_eq!(away["termination"], "client_closed");
    assert_eq!(away["termination_state"], "CH");
    assert_eq!(away["backend"], "away");
    held.release(10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_kept_or_replaced_and_seen_everywhere() {
    let b = Backend::start("b").await;
    // Defaults only: request IDs are on without a word of config.
    let config = single_backend_with(b.addr, "", r#"access_log = { path = "access.log" }"#, "");
    let sy = Switchyard::start(&config).await;
    let mut c = HttpClient::connect(sy.addr("web")).await;

    let ask = |id: Option<&str>, path: &str| {
        let mut req = Request::get(path);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.body(full("")).unwrap()
    };
    let (_, generated, _) = c.send(ask(None, "/generated")).await.unwrap();
    let (_, kept, _) = c.send(ask(Some("abc-123"), "/kept")).await.unwrap();
    let (_, replaced, _) = c
        .send(ask(Some("bad id; drop table"), "/replaced"))
        .await
        .unwrap();

    let id = |h: &http::HeaderMap| h["x-request-id"].to_str().unwrap().to_string();
    let seen = |h: &http::HeaderMap| h["x-seen-request-id"].to_str().unwrap().to_string();
    assert_eq!(id(&generated).len(), 36, "a UUID");
    assert_eq!(seen(&generated), id(&generated), "the backend saw it");
    assert_eq!(id(&kept), "abc-123");
    assert_eq!(seen(&kept), "abc-123");
    assert_ne!(id(&replaced), "bad id; drop table");
    assert_eq!(id(&replaced).len(), 36);
    assert_eq!(seen(&replaced), id(&replaced));

    let lines = lines(&log_path(&sy), 3).await;
    for (path, headers) in [
        ("/generated", &generated),
        ("/kept", &kept),
        ("/replaced", &replaced),
    ] {
        assert_eq!(line_for(&lines, "path", path)["request_id"], id(headers));
    }

    // Off, or under another name.
    let off = single_backend_with(b.addr, "", "request_id = { enabled = false }", "");
    let sy = Switchyard::start(&off).await;
    let (_, h, _) = HttpClient::connect(sy.addr("web"))
        .await
        .send(ask(None, "/"))
        .await
        .unwrap();
    assert!(h.get("x-request-id").is_none());
    assert_eq!(seen(&h), "");
    let renamed = single_backend_with(b.addr, "", r#"request_id = { header = "x-trace" }"#, "");
    let sy = Switchyard::start(&renamed).await;
    let (_, h, _) = HttpClient::connect(sy.addr("web"))
        .await
        .send(ask(None, "/"))
        .await
        .unwrap();
    assert_eq!(h["x-trace"].len(), 36);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_untouched_and_starts_only_when_asked() {
    let b = Backend::start("b").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let with_trace = || {
        Request::get("/")
            .header("traceparent", parent)
            .header("tracestate", "vendor=1")
            .body(full(""))
            .unwrap()
    };
    let config = single_backend_with(b.addr, "", r#"access_log = { path = "access.log" }"#, "");
    let sy = Switchyard::start(&config).await;
    let mut c = HttpClient::connect(sy.addr("web")).await;
    let (_, h, _) = c.send(with_trace()).await.unwrap();
    assert_eq!(h["x-seen-traceparent"], parent);
    assert_eq!(h["x-seen-tracestate"], "vendor=1");
    let (_, h, _) = c.get("/none", None).await.unwrap();
    assert_eq!(h["x-seen-traceparent"], "", "not started by default");
    let lines = lines(&log_path(&sy), 2).await;
    assert_eq!(
        line_for(&lines, "path", "/")["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(line_for(&lines, "path", "/none")["trace_id"], Value::Null);

    let config = single_backend_with(b.addr, "", "trace_context = { start = true }", "");
    let sy = Switchyard::start(&config).await;
    let mut c = HttpClient::connect(sy.addr("web")).await;
    let (_, h, _) = c.get("/", None).await.unwrap();
    let started = h["x-seen-traceparent"].to_str().unwrap();
    assert_eq!(started.len(), 55, "{started}");
    assert!(started.starts_with("00-") && started.ends_with("-01"));
    let (_, h, _) = c.send(with_trace()).await.unwrap();
    assert_eq!(h["x-seen-traceparent"], parent, "a valid one is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_only_errors_keep_every_error() {
    let b = Backend::start("b").await;
    for setting in [
        r#"access_log = { path = "access.log", sample = 0.0 }"#,
        r#"access_log = { path = "access.log", only = "errors" }"#,
    ] {
        let config = format!(
            r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
{setting}

[[routes]]
listener = "web"
path_prefix = "/ok"
backend = "b"

[[backends]]
name = "b"
servers = ["{}"]
"#,
            b.addr
        );
        let sy = Switchyard::start(&config).await;
        let mut c = HttpClient::connect(sy.addr("web")).await;
        for _ in 0..20 {
            assert_eq!(c.get("/ok", None).await.unwrap().0, StatusCode::OK);
        }
        assert_eq!(
            c.get("/nowhere", None).await.unwrap().0,
            StatusCode::NOT_FOUND
        );
        // The 404 came last: any line of the requests before it would be
        // in the file before its line.
        let lines = lines(&log_path(&sy), 1).await;
        assert_eq!(lines.len(), 1, "{setting}: only the error: {lines:#?}");
        assert_eq!(lines[0]["status"], 404);
        assert_eq!(lines[0]["termination"], "no_route");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_access_log_and_request_id_settings_are_refused_with_their_key() {
    let b = Backend::start("b").await;
    for (setting, key) in [
        (r#"access_log = { format = "%nope" }"#, "access_log.format"),
        (r#"access_log = { sample = 1.5 }"#, "access_log.sample"),
        (
            r#"access_log = { path = "/no/such/dir/access.log" }"#,
            "access_log.path",
        ),
        (
            r#"request_id = { header = "bad header" }"#,
            "request_id.header",
        ),
        (
            r#"request_id = { header = "connection" }"#,
            "request_id.header",
        ),
    ] {
        let error = Switchyard::try_start(&single_backend_with(b.addr, "", setting, ""))
            .await
            .err()
            .unwrap_or_else(|| panic!("{setting} is refused"));
        assert!(error.contains(key), "{setting}: {error}");
    }
    let tcp = format!(
        r#"
[[listeners]]
name = "raw"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "b"
request_id = {{ enabled = true }}

[[backends]]
name = "b"
servers = ["{}"]
"#,
        b.addr
    );
    let error = Switchyard::try_start(&tcp).await.err().expect("refused");
    assert!(error.contains("request_id"), "{error}");
}

/// The real binary: the default (JSON on standard output), SIGUSR1 and
/// logrotate's rename, under load, losing no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_and_sigusr1_loses_no_line_under_load() {
    let b = Backend::start("b").await;
    let config = single_backend_with(b.addr, "", r#"access_log = { path = "access.log" }"#, "");
    let sy = SwitchyardProcess::start(&config);
    let path = sy.dir.path().join("access.log");
    let web = sy.addr("web");

    let load = Load::start(web, 4);
    let rotated = |n: usize| sy.dir.path().join(format!("access.log.{n}"));
    for n in 1..=3 {
        // Lines go to the file for a while...
        eventually("lines in the current file", DEADLINE, || {
            let has = std::fs::metadata(&path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
            async move { has }
        })
        .await;
        std::fs::rename(&path, rotated(n)).unwrap();
        if n % 2 == 1 {
            // ...then logrotate moves it and signals (`postrotate`),
            sy.signal(libc::SIGUSR1);
        }
        // ...or only moves it: the writer notices within a second.
        eventually("a new file at the path", DEADLINE, || {
            let exists = path.exists();
            async move { exists }
        })
        .await;
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0);
    let count = || {
        (1..=3)
            .map(rotated)
            .chain([path.clone()])
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum::<usize>()
    };
    eventually(&format!("{sent} lines across the files"), DEADLINE, || {
        let n = count();
        async move { n >= sent }
    })
    .await;
    assert_eq!(count(), sent, "no line lost, none doubled");
    for p in (1..=3).map(rotated).chain([path.clone()]) {
        for l in std::fs::read_to_string(&p).unwrap().lines() {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: a whole line: {l}"));
        }
    }
    assert_eq!(
        sy.metric(r#"switchyard_access_log_lines_total{listener="web"}"#)
            .await,
        Some(sent as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_access_log_is_json_on_standard_output() {
    let b = Backend::start("b").await;
    let sy = SwitchyardProcess::start(&single_backend_with(b.addr, "", "access_log = {}", ""));
    let (status, _) = get(sy.addr("web"), "/stdout", None).await;
    assert_eq!(status, StatusCode::OK);
    eventually("a line on standard output", DEADLINE, || {
        let found = sy.stdout_lines().iter().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["path"] == "/stdout" && v["status"] == 200)
        });
        async move { found }
    })
    .await;
}

/// A full disk (`/dev/full`) and a pipe nobody reads: requests go on at
/// full speed, lines are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_or_a_stalled_pipe_never_slows_requests() {
    let b = Backend::start("b").await;

    let sy = SwitchyardProcess::start(&single_backend_with(
        b.addr,
        "",
        r#"access_log = { path = "/dev/full" }"#,
        "",
    ));
    let mut c = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..200 {
        let answer = tokio::time::timeout(Duration::from_secs(5), c.get("/", None)).await;
        assert_eq!(answer.expect("never held up").unwrap().0, StatusCode::OK);
    }
    let series = r#"switchyard_access_log_dropped_total{listener="web",reason="write_error"}"#;
    eventually("200 lines dropped on write errors", DEADLINE, || {
        let sy = &sy;
        async move { sy.metric(series).await == Some(200.0) }
    })
    .await;
    drop(sy);

    // A FIFO with a reader that never reads: the writer blocks on it, the
    // queue fills, and lines are dropped while requests go on.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let reader_path = fifo.clone();
    let _reader = std::thread::spawn(move || {
        // Opened, never read; the test's end closes it.
        let f = std::fs::File::open(reader_path).unwrap();
        std::thread::sleep(Duration::from_secs(120));
        drop(f);
    });
    let config = single_backend_with(
        b.addr,
        "",
        &format!(r#"access_log = {{ path = "{}" }}"#, fifo.display()),
        "",
    );
    let sy = SwitchyardProcess::start(&config);
    let load = Load::start(sy.addr("web"), 8);
    let series = r#"switchyard_access_log_dropped_total{listener="web",reason="queue_full"}"#;
    eventually(
        "lines dropped on a full queue",
        Duration::from_secs(120),
        || {
            let sy = &sy;
            async move { sy.metric(series).await.unwrap_or(0.0) > 0.0 }
        },
    )
    .await;
    // Still answering at once while the writer is stuck.
    let mut c = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..50 {
        let answer = tokio::time::timeout(Duration::from_secs(5), c.get("/", None)).await;
        assert_eq!(answer.expect("never held up").unwrap().0, StatusCode::OK);
    }
    let (sent, failed) = load.finish().await;
    assert_eq!(failed, 0, "of {sent}");
}
