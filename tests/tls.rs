//! TLS termination: certificates chosen by SNI, ALPN, certificates that
//! change while running, bad certificates rejected whole, clients that do
//! not speak TLS. Real handshakes over loopback with certificates made here.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use support::tls::{Ca, Leaf, connect, presented, trusting_client, verifying_client};
use support::*;
use switchyard::control::ReloadResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An https listener with the given `certs = [...]` entries in front of
/// `backend`; extra listener keys in `extra`.
fn https_config(backend: &Backend, certs: &[&str], extra: &str) -> String {
    let certs: Vec<String> = certs
        .iter()
        .map(|n| format!("{{ cert = \"{n}.pem\", key = \"{n}.key\" }}"))
        .collect();
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "app"
certs = [{}]
{extra}

[[backends]]
name = "app"
servers = ["{}"]
"#,
        certs.join(", "),
        backend.addr
    )
}

/// A Switchyard in a directory holding `leaves` as `name.pem`/`name.key`.
async fn start_with_certs(config: &str, leaves: &[(&str, &Leaf)]) -> Switchyard {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, leaf) in leaves {
        leaf.write(dir.path(), name);
    }
    Switchyard::start_in(dir, config).await
}

#[tokio::test]
async fn sni_picks_the_exact_then_the_wildcard_then_the_default_certificate() {
    let ca = Ca::new();
    let default = ca.leaf(&["default.test"]);
    let exact = ca.leaf(&["a.test"]);
    let wildcard = ca.leaf(&["*.wild.test"]);
    let app = Backend::start("app").await;
    let sy = start_with_certs(
        &https_config(&app, &["default", "exact", "wildcard"], ""),
        &[
            ("default", &default),
            ("exact", &exact),
            ("wildcard", &wildcard),
        ],
    )
    .await;
    let addr = sy.addr("web");
    let any = trusting_client(&[]);
    for (sni, expected, why) in [
        (Some("a.test"), &exact, "exact name"),
        (Some("A.Test"), &exact, "names compare without case"),
        (
            Some("x.wild.test"),
            &wildcard,
            "one label under the wildcard",
        ),
        (
            Some("x.y.wild.test"),
            &default,
            "a wildcard covers one label only",
        ),
        (
            Some("wild.test"),
            &default,
            "a wildcard does not cover its domain",
        ),
        (Some("unknown.test"), &default, "unknown name"),
        (None, &default, "no SNI"),
    ] {
        let stream = connect(addr, sni, any.clone()).await.expect("handshake");
        assert!(
            presented(&stream) == expected.der,
            "{why}: {sni:?} got another certificate"
        );
    }
    // A client that verifies against the CA accepts the exact and wildcard
    // certificates: the chain and names are served as a browser needs them.
    for sni in ["a.test", "x.wild.test", "default.test"] {
        let stream = connect(addr, Some(sni), verifying_client(&ca, &[])).await;
        assert!(stream.is_ok(), "{sni}: {:?}", stream.err());
    }
    assert_eq!(
        sy.metric(r#"switchyard_tls_sni_fallbacks_total{listener="web",outcome="default"}"#)
            .await,
        Some(4.0)
    );
    let status = sy.status().await;
    let web = &status["listeners"][0];
    assert_eq!(web["mode"], "https");
    assert_eq!(web["tls"]["certificates"][1]["names"][0], "a.test");
}

#[tokio::test]
async fn unknown_sni_can_be_refused() {
    let ca = Ca::new();
    let exact = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let sy = start_with_certs(
        &https_config(&app, &["exact"], r#"unknown_sni = "refuse""#),
        &[("exact", &exact)],
    )
    .await;
    let addr = sy.addr("web");
    assert!(
        connect(addr, Some("other.test"), trusting_client(&[]))
            .await
            .is_err()
    );
    assert!(connect(addr, None, trusting_client(&[])).await.is_err());
    assert!(
        connect(addr, Some("a.test"), trusting_client(&[]))
            .await
            .is_ok()
    );
    assert_eq!(
        sy.metric(r#"switchyard_tls_sni_fallbacks_total{listener="web",outcome="refused"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(
        sy.metric(r#"switchyard_tls_handshake_failures_total{listener="web",reason="handshake"}"#)
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn https_requests_reach_the_backend_with_forwarded_proto_https_over_http1_and_h2() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let logged = r#"access_log = { path = "access.log" }"#;
    let sy = start_with_certs(&https_config(&app, &["site"], logged), &[("site", &leaf)]).await;
    let addr = sy.addr("web");

    let stream = connect(addr, Some("a.test"), verifying_client(&ca, &[b"http/1.1"]))
        .await
        .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut client = HttpClient::over(stream).await;
    let (status, headers, body) = client.get("/", Some("a.test")).await.expect("answer");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    assert_eq!(headers["x-seen-proto"], "https");

    let stream = connect(
        addr,
        Some("a.test"),
        verifying_client(&ca, &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = http::Request::get("https://a.test/")
        .body(full(""))
        .expect("request");
    let resp = sender.send_request(req).await.expect("h2 answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-seen-proto"], "https");
    assert_eq!(
        sy.metric(
            r#"switchyard_tls_handshakes_total{listener="web",resumed="false",version="1.3"}"#
        )
        .await,
        Some(2.0)
    );
    // The access log names the TLS version and SNI name of each request.
    let log = sy.dir.path().join("access.log");
    let mut lines = Vec::new();
    eventually("two access log lines", Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
            .collect();
        let done = lines.len() == 2;
        async move { done }
    })
    .await;
    for (line, protocol) in lines.iter().zip(["HTTP/1.1", "HTTP/2.0"]) {
        assert_eq!(line["tls_version"], "1.3", "{line}");
        assert_eq!(line["tls_sni"], "a.test", "{line}");
        assert_eq!(line["protocol"], protocol, "{line}");
    }
}

#[tokio::test]
async fn a_host_that_is_not_the_sni_name_gets_421_unless_the_check_is_off() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test", "b.test"]);
    let app = Backend::start("app").await;
    let sy = start_with_certs(&https_config(&app, &["site"], ""), &[("site", &leaf)]).await;
    let stream = connect(sy.addr("web"), Some("a.test"), trusting_client(&[]))
        .await
        .expect("handshake");
    let mut client = HttpClient::over(stream).await;
    let (status, _, _) = client.get("/", Some("b.test")).await.expect("answer");
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    for host in ["a.test", "A.TEST:443", "a.test."] {
        let (status, _, _) = client.get("/", Some(host)).await.expect("answer");
        assert_eq!(status, StatusCode::OK, "Host: {host}");
    }

    let app2 = Backend::start("app").await;
    let off = start_with_certs(
        &https_config(&app2, &["site"], "sni_host_check = false"),
        &[("site", &leaf)],
    )
    .await;
    let stream = connect(off.addr("web"), Some("a.test"), trusting_client(&[]))
        .await
        .expect("handshake");
    let mut client = HttpClient::over(stream).await;
    let (status, _, _) = client.get("/", Some("b.test")).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
}

/// Renewals: a certificate file replaced while clients connect without
/// pause: every request succeeds, new handshakes get the new certificate,
/// and a connection opened before keeps working on the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_handshakes_without_a_failed_request() {
    const SWAPS: usize = 6;
    let ca = Ca::new();
    let first = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let sy = Arc::new(
        Switchyard::start_watching_in(
            {
                let dir = tempfile::tempdir().expect("tempdir");
                first.write(dir.path(), "site");
                dir
            },
            &https_config(&app, &["site"], ""),
        )
        .await,
    );
    let addr = sy.addr("web");
    let client = verifying_client(&ca, &[]);

    let early = connect(addr, Some("a.test"), client.clone())
        .await
        .expect("handshake");
    assert!(presented(&early) == first.der);
    let mut early = HttpClient::over(early).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answered = async {
                    let stream = connect(addr, Some("a.test"), client.clone()).await.ok()?;
                    let mut c = HttpClient::over(stream).await;
                    c.get("/", Some("a.test")).await.ok()
                }
                .await;
                match answered {
                    Some((StatusCode::OK, _, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let mut latest = first.clone();
    for swap in 1..=SWAPS {
        latest = ca.leaf(&["a.test"]);
        latest.write(sy.dir.path(), "site");
        let expected = latest.der.clone();
        // A fresh client each time: one that resumes a session is shown
        // the certificate of the session it resumes.
        eventually(
            &format!("swap {swap} serves the new certificate"),
            Duration::from_secs(10),
            || {
                let (client, expected) = (verifying_client(&ca, &[]), expected.clone());
                async move {
                    match connect(addr, Some("a.test"), client).await {
                        Ok(s) => presented(&s) == expected,
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the swaps"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 20,
        "too little load to mean anything"
    );
    let (status, _, body) = early
        .get("/", Some("a.test"))
        .await
        .expect("old connection answers");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
    let expiry = sy
        .metric(&format!(
            r#"switchyard_tls_certificate_expiry_timestamp_seconds{{cert_file="{}",listener="web",name="a.test"}}"#,
            sy.dir.path().join("site.pem").display()
        ))
        .await;
    assert!(expiry.is_some_and(|t| t > 0.0), "expiry metric: {expiry:?}");
    drop(latest);
}

/// Each kind of bad replacement is rejected whole, with the file and the
/// reason; the running certificate keeps serving.
#[tokio::test]
async fn a_bad_replacement_is_rejected_with_file_and_reason_and_the_old_certificate_serves() {
    let ca = Ca::new();
    let good = ca.leaf(&["a.test"]);
    let other = ca.leaf(&["a.test"]);
    let expired = ca.leaf_with(&["a.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let app = Backend::start("app").await;
    let sy = start_with_certs(&https_config(&app, &["site"], ""), &[("site", &good)]).await;
    let addr = sy.addr("web");
    let dir = sy.dir.path().to_path_buf();
    let cert_file = dir.join("site.pem");
    let key_file = dir.join("site.key");
    let cases: [(&str, String, String, &std::path::Path, &str); 4] = [
        (
            "garbage",
            "not a certificate".into(),
            good.key_pem.clone(),
            &cert_file,
            "no certificate",
        ),
        (
            "key of another certificate",
            good.cert_pem.clone(),
            other.key_pem.clone(),
            &key_file,
            "does not match",
        ),
        (
            "expired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            &cert_file,
            "expired",
        ),
        (
            "truncated key",
            good.cert_pem.clone(),
            good.key_pem[..good.key_pem.len() / 2].to_string(),
            &key_file,
            "key",
        ),
    ];
    for (what, cert, key, blamed, reason) in cases {
        support::tls::write_atomically(&cert_file, &cert);
        support::tls::write_atomically(&key_file, &key);
        let record = sy.reload().await;
        assert_eq!(record.result, ReloadResult::Failure, "{what}: applied");
        let error = record.errors.join("\n");
        assert!(
            error.contains(&blamed.display().to_string()),
            "{what}: file not named: {error}"
        );
        assert!(error.contains(reason), "{what}: reason not given: {error}");
        let stream = connect(addr, Some("a.test"), verifying_client(&ca, &[]))
            .await
            .expect("old certificate still serves");
        assert!(
            presented(&stream) == good.der,
            "{what}: not the old certificate"
        );
        let status = sy.status().await;
        assert!(
            status["last_failure"]["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{what}: /status: {}",
            status["last_failure"]
        );
    }
    // A good file again is taken.
    let renewed = ca.leaf(&["a.test"]);
    renewed.write(&dir, "site");
    assert_eq!(sy.reload().await.result, ReloadResult::Success);
    let stream = connect(addr, Some("a.test"), verifying_client(&ca, &[]))
        .await
        .expect("handshake");
    assert!(presented(&stream) == renewed.der);
}

#[tokio::test]
async fn a_bad_certificate_at_start_is_a_clear_error() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("site.pem"), "nothing").expect("write");
    std::fs::write(dir.path().join("site.key"), "nothing").expect("write");
    let error = Switchyard::try_start_in(
        dir,
        &https_config(&app, &["site", "missing"], ""),
        switchyard::app::AppOptions {
            watch_config: false,
            workers: 0,
            ..switchyard::app::AppOptions::default()
        },
    )
    .await
    .err()
    .expect("start fails");
    assert!(
        error.contains("listeners[0].certs[0]") && error.contains("site.pem"),
        "{error}"
    );
    assert!(
        error.contains("listeners[0].certs[1].cert") && error.contains("missing.pem"),
        "{error}"
    );
}

/// Clients that do not speak TLS, or never finish, each get a clear end and
/// are counted; the listener keeps serving others.
#[tokio::test]
async fn plain_http_garbage_and_stalled_handshakes_are_answered_or_closed_and_counted() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let config = https_config(&app, &["site"], "") + "\n[timeouts]\nheader_read = \"300ms\"\n";
    let sy = start_with_certs(&config, &[("site", &leaf)]).await;
    let addr = sy.addr("web");

    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTPS"), "{answer}");

    let mut garbage = tokio::net::TcpStream::connect(addr).await.expect("connect");
    garbage.write_all(&[0u8; 64]).await.expect("write");
    closed_by_peer(&mut garbage, "bytes that are not TLS").await;

    // A ClientHello record header that promises more than is ever sent.
    let mut truncated = tokio::net::TcpStream::connect(addr).await.expect("connect");
    truncated
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    for stream in [&mut truncated, &mut silent] {
        closed_by_peer(stream, "a stalled handshake").await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before header_read"
    );

    // Others are served throughout.
    let stream = connect(addr, Some("a.test"), verifying_client(&ca, &[]))
        .await
        .expect("handshake");
    let (status, _, _) = HttpClient::over(stream)
        .await
        .get("/", Some("a.test"))
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::OK);
    sy.assert_reasons(
        "switchyard_tls_handshake_failures_total",
        "web",
        &[("plain_http", 1.0), ("not_tls", 1.0), ("timeout", 2.0)],
    )
    .await;
}

#[tokio::test]
async fn a_tls_listener_terminates_and_forwards_bytes_unchanged() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["echo.test"]);
    let (echo, _echo_task) = tcp_echo().await;
    let config = format!(
        r#"
[[listeners]]
name = "echo"
bind = "127.0.0.1:0"
mode = "tls"
default_backend = "echo"
certs = [{{ cert = "site.pem", key = "site.key" }}]

[[backends]]
name = "echo"
servers = ["{echo}"]
"#
    );
    let sy = start_with_certs(&config, &[("site", &leaf)]).await;
    let mut stream = connect(
        sy.addr("echo"),
        Some("echo.test"),
        verifying_client(&ca, &[]),
    )
    .await
    .expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).await.expect("write");
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.expect("echo");
    assert!(back == payload, "bytes changed on the way");
    assert_eq!(sy.status().await["listeners"][0]["mode"], "tls");
}

#[tokio::test]
async fn tls_keys_are_refused_on_plain_listeners_and_https_needs_a_certificate() {
    let app = Backend::start("app").await;
    let plain = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "app"
certs = [{{ cert = "site.pem", key = "site.key" }}]
min_version = "1.3"

[[backends]]
name = "app"
servers = ["{}"]
"#,
        app.addr
    );
    let error = Switchyard::try_start(&plain).await.err().expect("rejected");
    assert!(
        error.contains("listeners[0].certs") && error.contains("only for `https`"),
        "{error}"
    );
    assert!(error.contains("listeners[0].min_version"), "{error}");
    let bare = https_config(&app, &[], "");
    let error = Switchyard::try_start(&bare).await.err().expect("rejected");
    assert!(error.contains("needs a certificate"), "{error}");
}

/// SNI routing without termination: the backend does the handshake with
/// the client through Switchyard, which reads only the ClientHello.
#[tokio::test]
async fn sni_routes_pass_tls_through_to_the_backend_the_name_picks() {
    let ca = Ca::new();
    let (a, _a) = support::tls::tls_echo_server(&ca.leaf(&["a.test"]), "A").await;
    let (b, _b) = support::tls::tls_echo_server(&ca.leaf(&["*.b.test"]), "B").await;
    let (other, _o) = support::tls::tls_echo_server(&ca.leaf(&["other.test"]), "O").await;
    let config = format!(
        r#"
[[listeners]]
name = "pass"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "other"
sni_routes = [
  {{ sni = "a.test", backend = "a" }},
  {{ sni = "*.b.test", backend = "b" }},
]

[timeouts]
header_read = "300ms"

[[backends]]
name = "a"
servers = ["{a}"]

[[backends]]
name = "b"
servers = ["{b}"]

[[backends]]
name = "other"
servers = ["{other}"]
"#
    );
    let sy = Switchyard::start(&config).await;
    let addr = sy.addr("pass");
    for (sni, expected) in [
        (Some("a.test"), "A"),
        (Some("A.TEST"), "A"),
        (Some("x.b.test"), "B"),
        (Some("unknown.test"), "O"),
        (None, "O"),
    ] {
        // The client verifies against the CA: the backend's own
        // certificate reached it, through bytes passed on unchanged.
        let config = match sni {
            Some(_) if expected != "O" => verifying_client(&ca, &[]),
            _ => trusting_client(&[]),
        };
        let mut stream = connect(addr, sni, config).await.expect("handshake through");
        let mut name = [0u8; 1];
        stream.read_exact(&mut name).await.expect("backend greets");
        assert_eq!(&name, expected.as_bytes(), "{sni:?}");
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        stream.write_all(&payload).await.expect("write");
        let mut back = vec![0u8; payload.len()];
        stream.read_exact(&mut back).await.expect("echo");
        assert!(back == payload, "{sni:?}: bytes changed");
    }

    // Not TLS, and a hello that never comes: closed and counted.
    let mut plain = tokio::net::TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    closed_by_peer(&mut plain, "not TLS").await;
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    closed_by_peer(&mut silent, "no hello within header_read").await;
    sy.assert_reasons(
        "switchyard_tls_handshake_failures_total",
        "pass",
        &[("not_tls", 1.0), ("timeout", 1.0)],
    )
    .await;
}

#[tokio::test]
async fn sni_routes_are_checked() {
    let app = Backend::start("app").await;
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
sni_routes = [{{ sni = "a.test", backend = "app" }}]

[[listeners]]
name = "pass"
bind = "127.0.0.1:0"
mode = "tcp"
sni_routes = [
  {{ sni = "*.com", backend = "app" }},
  {{ sni = "a.test", backend = "missing" }},
  {{ sni = "A.test", backend = "app" }},
]

[[backends]]
name = "app"
servers = ["{}"]
"#,
        app.addr
    );
    let error = Switchyard::try_start(&config)
        .await
        .err()
        .expect("rejected");
    for expected in [
        "listeners[0].sni_routes",
        "listeners[1].sni_routes[0].sni",
        "listeners[1].sni_routes[1].backend",
        "listeners[1].sni_routes[2].sni",
    ] {
        assert!(error.contains(expected), "{expected} missing in: {error}");
    }
}

/// Sends one GET with a forged subject header; the answer, or `None` when
/// the connection failed (a refused client certificate).
async fn get_with_client(
    addr: std::net::SocketAddr,
    config: Arc<tokio_rustls::rustls::ClientConfig>,
) -> Option<(StatusCode, String)> {
    let stream = connect(addr, Some("a.test"), config).await.ok()?;
    let mut client = HttpClient::over(stream).await;
    let req = http::Request::get("/")
        .header("host", "a.test")
        .header("x-client-subject", "CN=forged")
        .body(full(""))
        .ok()?;
    let (status, headers, _) = client.send(req).await.ok()?;
    let subject = headers
        .get("x-seen-client-subject")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some((status, subject))
}

#[tokio::test]
async fn client_certificates_are_required_or_optional_and_the_verified_subject_goes_upstream() {
    let ca = Ca::new();
    let clients = Ca::new();
    let strangers = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let member = clients.leaf_with(&["client.test"], |p| {
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "billing-service");
    });
    let stranger = strangers.leaf(&["client.test"]);
    let app = Backend::start("app").await;
    for (auth, anonymous) in [
        ("required", None),
        ("optional", Some((StatusCode::OK, String::new()))),
    ] {
        let extra = format!(
            "client_ca = \"clients.pem\"\nclient_auth = \"{auth}\"\nclient_subject_header = \"X-Client-Subject\""
        );
        let dir = tempfile::tempdir().expect("tempdir");
        leaf.write(dir.path(), "site");
        std::fs::write(dir.path().join("clients.pem"), clients.pem()).expect("write");
        let sy = Switchyard::start_in(dir, &https_config(&app, &["site"], &extra)).await;
        let addr = sy.addr("web");
        let (status, subject) =
            get_with_client(addr, support::tls::client_with_certificate(&member))
                .await
                .expect("a member's certificate is taken");
        assert_eq!(status, StatusCode::OK, "{auth}");
        assert_eq!(
            subject, "CN=billing-service",
            "{auth}: the verified subject replaces the forged one"
        );
        assert_eq!(
            get_with_client(addr, support::tls::client_with_certificate(&stranger)).await,
            None,
            "{auth}: a certificate from another CA is refused"
        );
        assert_eq!(
            get_with_client(addr, trusting_client(&[])).await,
            anonymous,
            "{auth}: no certificate"
        );
    }
}

/// Certificates kept in Consul KV, one certificate per key, rendered by a
/// template into one combined PEM file (certificate chain, then key): a
/// renewal in KV reaches new handshakes, a bad certificate in KV never
/// reaches the file nor the listener.
#[tokio::test]
async fn a_certificate_in_consul_kv_renders_to_a_file_and_swaps_in_and_a_bad_one_does_not() {
    let consul = support::consul::ConsulServer::start().await;
    let ca = Ca::new();
    let first = ca.leaf(&["a.test"]);
    consul.kv_put("certs/site/cert", &first.cert_pem);
    consul.kv_put("certs/site/key", &first.key_pem);
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("site.pem.tera"),
        "{{ key(path=\"certs/site/cert\") }}{{ key(path=\"certs/site/key\") }}",
    )
    .expect("write template");
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "app"
certs = [{{ cert = "site.pem" }}]

[consul]
address = "{}"
wait = "2s"
retry_min = "50ms"
retry_max = "400ms"

[[templates]]
source = "site.pem.tera"
destination = "site.pem"
perms = "0600"

[[backends]]
name = "app"
servers = ["{}"]
"#,
        consul.url(),
        app.addr
    );
    let sy = Switchyard::start_in(dir, &config).await;
    let addr = sy.addr("web");
    let shown = || async move {
        connect(addr, Some("a.test"), trusting_client(&[]))
            .await
            .map(|s| presented(&s))
            .ok()
    };
    assert!(shown().await == Some(first.der.clone()));

    let renewed = ca.leaf(&["a.test"]);
    consul.kv_put("certs/site/cert", &renewed.cert_pem);
    consul.kv_put("certs/site/key", &renewed.key_pem);
    let expected = renewed.der.clone();
    eventually(
        "the renewed certificate serves",
        Duration::from_secs(10),
        || {
            let expected = expected.clone();
            async move { shown().await == Some(expected) }
        },
    )
    .await;
    let on_disk = std::fs::read_to_string(sy.dir.path().join("site.pem")).expect("rendered");
    assert!(
        on_disk.contains(renewed.cert_pem.trim()),
        "the file holds the renewal"
    );

    // A broken certificate in KV: rejected, the file and listener keep the
    // renewal, and /status says why.
    consul.kv_put(
        "certs/site/cert",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    eventually(
        "the broken render is rejected",
        Duration::from_secs(10),
        || async { sy.status().await["templates"][0]["state"] == "rejected" },
    )
    .await;
    assert!(shown().await == Some(renewed.der.clone()));
    let on_disk = std::fs::read_to_string(sy.dir.path().join("site.pem")).expect("rendered");
    assert!(
        on_disk.contains(renewed.cert_pem.trim()),
        "the file kept the renewal"
    );
    let status = sy.status().await;
    assert!(
        status["last_failure"]["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("site.pem")),
        "{}",
        status["last_failure"]
    );
}

/// Session resumption: tickets are shared by all workers, so a client
/// resumes wherever its next connection lands; TLS 1.2 resumes too.
#[tokio::test]
async fn sessions_resume_across_workers_and_min_version_refuses_older_clients() {
    use tokio_rustls::rustls::HandshakeKind;
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    leaf.write(dir.path(), "site");
    let sy = Switchyard::try_start_in(
        dir,
        &https_config(&app, &["site"], ""),
        switchyard::app::AppOptions {
            watch_config: false,
            workers: 2,
            ..switchyard::app::AppOptions::default()
        },
    )
    .await
    .expect("starts");
    let addr = sy.addr("web");
    for versions in [
        &[&tokio_rustls::rustls::version::TLS13][..],
        &[&tokio_rustls::rustls::version::TLS12][..],
    ] {
        let client = support::tls::client_with_versions(&ca, versions);
        let mut resumed = 0;
        for _ in 0..12 {
            let mut stream = connect(addr, Some("a.test"), client.clone())
                .await
                .expect("handshake");
            // TLS 1.3 tickets arrive after the handshake: read an answer.
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                resumed += 1;
            }
        }
        assert_eq!(resumed, 11, "{versions:?}: all but the first resume");
    }
    let served: Vec<f64> = [0, 1]
        .iter()
        .map(|w| {
            let sy = &sy;
            async move {
                sy.metric(&format!(
                    r#"switchyard_worker_connections_total{{worker="{w}"}}"#
                ))
                .await
                .unwrap_or(0.0)
            }
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await;
    assert!(
        served.iter().all(|n| *n > 0.0),
        "one worker served everything: {served:?}"
    );

    let strict = start_with_certs(
        &https_config(&app, &["site"], r#"min_version = "1.3""#),
        &[("site", &leaf)],
    )
    .await;
    let old = support::tls::client_with_versions(&ca, &[&tokio_rustls::rustls::version::TLS12]);
    assert!(
        connect(strict.addr("web"), Some("a.test"), old)
            .await
            .is_err()
    );
}

/// `switchyard check` shows each TLS listener's mode and certificates, and
/// names the file and reason of a bad one.
#[test]
fn check_shows_certificates_and_bad_ones() {
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test", "*.b.test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    leaf.write(dir.path(), "site");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        r#"
[[listeners]]
name = "secure"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "hello"
certs = [{ cert = "site.pem", key = "site.key" }]

[[backends]]
name = "hello"
respond = { status = 200, body = "hi" }
"#,
    )
    .expect("write");
    let check = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "-c", config.to_str().expect("path")])
            .output()
            .expect("run switchyard")
    };
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("listener secure 127.0.0.1:0 https"),
        "{stdout}"
    );
    assert!(
        stdout.contains("site.pem: a.test *.b.test, expires"),
        "{stdout}"
    );

    std::fs::write(dir.path().join("site.key"), ca.leaf(&["a.test"]).key_pem).expect("write");
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("site.key") && stderr.contains("does not match"),
        "{stderr}"
    );
}
