//! TLS to upstream servers: verified by a private CA under a DNS name or an
//! IP address, refused with 502 and a reason when it cannot be verified,
//! mutual TLS, HTTP/1.1 and h2 by ALPN, pooled connections, TCP mode.

mod support;

use std::sync::atomic::Ordering;

use http::StatusCode;
use support::tls::{Ca, tls_echo_server, tls_http_backend};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(server: std::net::SocketAddr, tls: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "secure"

[[backends]]
name = "secure"
servers = ["{server}"]
tls = {tls}
{extra}
"#
    )
}

/// Starts Switchyard in a directory that holds `files`.
async fn start(config: &str, files: &[(&str, &str)]) -> Switchyard {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    Switchyard::start_in(dir, config).await
}

/// One request through a Switchyard whose backend `server` has the upstream
/// `tls` settings (with `files` beside its config).
async fn answer_via(
    server: std::net::SocketAddr,
    tls: &str,
    files: &[(&str, &str)],
) -> (StatusCode, String) {
    let sy = start(&config(server, tls, ""), files).await;
    get(sy.addr("web"), "/", None).await
}

#[tokio::test]
async fn a_private_ca_verifies_servers_by_dns_name_or_ip_address_and_connections_are_reused() {
    let ca = Ca::new();
    let (by_name, sessions, _a) =
        tls_http_backend(&ca.leaf(&["app.internal"]), "named", None).await;
    let sy = start(
        &config(
            by_name,
            r#"{ ca_file = "ca.pem", server_name = "app.internal" }"#,
            "",
        ),
        &[("ca.pem", &ca.pem())],
    )
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..10 {
        let (status, headers, body) = client.get("/", Some("x.test")).await.expect("answer");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "named"));
        assert_eq!(headers["x-seen-version"], "HTTP/1.1");
    }
    // A body goes through hyper's client: also over TLS.
    let req = http::Request::post("/upload")
        .body(full("payload"))
        .expect("request");
    let (status, _, _) = client.send(req).await.expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert!(
        sessions.load(Ordering::SeqCst) <= 2,
        "connections were not reused"
    );

    // No server_name: the certificate must carry the server's IP address.
    let (by_ip, _, _b) = tls_http_backend(&ca.leaf(&["127.0.0.1"]), "by-ip", None).await;
    let sy = start(
        &config(by_ip, r#"{ ca_file = "ca.pem" }"#, ""),
        &[("ca.pem", &ca.pem())],
    )
    .await;
    assert_eq!(
        get(sy.addr("web"), "/", None).await,
        (StatusCode::OK, "by-ip".into())
    );
}

#[tokio::test]
async fn an_unverifiable_server_gets_502_with_the_reason_unless_verify_is_off() {
    let ca = Ca::new();
    let stranger = Ca::new();
    let (server, _, _s) = tls_http_backend(&stranger.leaf(&["app.internal"]), "app", None).await;
    let (status, body) = answer_via(
        server,
        r#"{ ca_file = "ca.pem", server_name = "app.internal" }"#,
        &[("ca.pem", &ca.pem())],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("TLS handshake"), "{body}");

    // The right CA, the wrong name.
    let (named, _, _n) = tls_http_backend(&ca.leaf(&["app.internal"]), "app", None).await;
    let wrong_name = answer_via(
        named,
        r#"{ ca_file = "ca.pem", server_name = "other.internal" }"#,
        &[("ca.pem", &ca.pem())],
    )
    .await;
    assert_eq!(wrong_name.0, StatusCode::BAD_GATEWAY);

    assert_eq!(
        answer_via(server, "{ verify = false }", &[]).await,
        (StatusCode::OK, "app".into())
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let ca = Ca::new();
    let clients = Ca::new();
    let (server, _, _s) =
        tls_http_backend(&ca.leaf(&["app.internal"]), "app", Some(&clients)).await;
    let client = clients.leaf(&["switchyard.internal"]);
    let with = answer_via(
        server,
        r#"{ ca_file = "ca.pem", server_name = "app.internal", client_cert = "client.pem", client_key = "client.key" }"#,
        &[("ca.pem", &ca.pem()), ("client.pem", &client.cert_pem), ("client.key", &client.key_pem)],
    )
    .await;
    assert_eq!(with, (StatusCode::OK, "app".into()));
    let without = answer_via(
        server,
        r#"{ ca_file = "ca.pem", server_name = "app.internal" }"#,
        &[("ca.pem", &ca.pem())],
    )
    .await;
    assert_eq!(without.0, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn() {
    let ca = Ca::new();
    let (server, sessions, _s) = tls_http_backend(&ca.leaf(&["app.internal"]), "app", None).await;
    let sy = start(
        &config(
            server,
            r#"{ ca_file = "ca.pem", server_name = "app.internal" }"#,
            r#"protocol = "http2""#,
        ),
        &[("ca.pem", &ca.pem())],
    )
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..5 {
        let (status, headers, body) = client.get("/", None).await.expect("answer");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "app"));
        assert_eq!(headers["x-seen-version"], "HTTP/2.0");
    }
    assert_eq!(
        sessions.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
}

#[tokio::test]
async fn tcp_listeners_originate_tls_too() {
    let ca = Ca::new();
    let (server, _s) = tls_echo_server(&ca.leaf(&["db.internal"]), "D").await;
    let config = format!(
        r#"
[[listeners]]
name = "db"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "db"

[[backends]]
name = "db"
servers = ["{server}"]
tls = {{ ca_file = "ca.pem", server_name = "db.internal" }}
"#
    );
    let sy = start(&config, &[("ca.pem", &ca.pem())]).await;
    let mut stream = tokio::net::TcpStream::connect(sy.addr("db"))
        .await
        .expect("connect");
    let mut greeting = [0u8; 1];
    stream.read_exact(&mut greeting).await.expect("greeting");
    assert_eq!(&greeting, b"D");
    stream.write_all(b"plain in, TLS out").await.expect("write");
    let mut back = [0u8; 17];
    stream.read_exact(&mut back).await.expect("echo");
    assert_eq!(&back, b"plain in, TLS out");
}

#[tokio::test]
async fn bad_upstream_tls_settings_are_reported() {
    let sy = Switchyard::try_start(&config(
        "127.0.0.1:9".parse().unwrap(),
        r#"{ ca_file = "missing.pem", client_cert = "c.pem", verify = false }"#,
        "",
    ))
    .await;
    let error = sy.err().expect("rejected");
    for expected in [
        "tls.ca_file",
        "missing.pem",
        "tls.client_cert",
        "go together",
        "not used with `verify = false`",
    ] {
        assert!(error.contains(expected), "{expected} missing in: {error}");
    }
}
