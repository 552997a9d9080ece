//! The PROXY protocol: read on listeners behind another load balancer
//! (only from trusted networks), and sent to backends of tcp listeners.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn http_config(backends: &[&Backend], extra: &str) -> String {
    let servers: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "app"
proxy_protocol = true
{extra}

[timeouts]
header_read = "300ms"

[[backends]]
name = "app"
balance = "hash"
servers = [{}]
"#,
        servers.join(", ")
    )
}

/// A v2 header as an AWS NLB sends it: PROXY command, TCP over IPv4, and
/// TLVs (a VPC endpoint ID, 0xEA, and the authority, 0x02).
fn v2_with_tlvs(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, local),
    )
    .write_tlv(0xEA, b"\x01vpce-0123456789abcdef")
    .and_then(|b| b.write_tlv(0x02, b"api.example.com"))
    .and_then(|b| b.build())
    .expect("header")
}

/// Sends `header` then one request on a fresh connection; the answer.
async fn request_after(addr: SocketAddr, header: &[u8]) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n");
    stream.write_all(&bytes).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let header_value = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let body = text.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
    Some((status, header_value("x-seen-xff"), body))
}

#[tokio::test]
async fn the_client_address_comes_from_v1_and_v2_headers_into_forwarded_for_and_hash() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&http_config(&[&a, &b], r#"trusted = ["127.0.0.0/8"]"#)).await;
    let addr = sy.addr("web");
    let local: SocketAddr = "192.0.2.1:80".parse().unwrap();

    let v1 = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 80\r\n";
    let (status, xff, _) = request_after(addr, v1).await.expect("answer");
    assert_eq!((status, xff.as_str()), (200, "203.0.113.7"));
    let v1_6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 80\r\n";
    let (_, xff, _) = request_after(addr, v1_6).await.expect("answer");
    assert_eq!(xff, "2001:db8::7");
    let client: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let (status, xff, _) = request_after(addr, &v2_with_tlvs(client, local))
        .await
        .expect("answer");
    assert_eq!((status, xff.as_str()), (200, "198.51.100.9"));

    // A load balancer's own checks name no client: the peer is used.
    for header in [
        &b"PROXY UNKNOWN\r\n"[..],
        &ppp::v2::Builder::new(0x20, 0x00).build().unwrap(),
    ] {
        let (status, xff, _) = request_after(addr, header).await.expect("answer");
        assert_eq!((status, xff.as_str()), (200, "127.0.0.1"));
    }

    // `hash` balances on the client from the header: each client always
    // reaches one backend, and different clients reach both.
    let mut seen = std::collections::HashSet::new();
    for i in 1..=24u8 {
        let header = format!("PROXY TCP4 10.9.8.{i} 192.0.2.1 5000 80\r\n");
        let (_, _, first) = request_after(addr, header.as_bytes())
            .await
            .expect("answer");
        for _ in 0..3 {
            let (_, _, again) = request_after(addr, header.as_bytes())
                .await
                .expect("answer");
            assert_eq!(again, first, "client 10.9.8.{i} moved between backends");
        }
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        2,
        "24 clients all hashed to one backend: {seen:?}"
    );
}

#[tokio::test]
async fn untrusted_sources_and_broken_headers_are_closed_and_counted() {
    let a = Backend::start("a").await;
    let untrusted = Switchyard::start(&http_config(&[&a], r#"trusted = ["10.0.0.0/8"]"#)).await;
    let header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 80\r\n";
    assert_eq!(
        request_after(untrusted.addr("web"), header)
            .await
            .map(|a| a.0),
        None
    );
    assert_eq!(
        untrusted
            .metric(
                r#"switchyard_proxy_protocol_failures_total{listener="web",reason="untrusted"}"#
            )
            .await,
        Some(1.0)
    );

    let sy = Switchyard::start(&http_config(&[&a], r#"trusted = ["127.0.0.1"]"#)).await;
    let addr = sy.addr("web");
    // A plain request where a header must be, a broken header, and a
    // header that never completes.
    assert_eq!(request_after(addr, b"").await.map(|a| a.0), None);
    assert_eq!(
        request_after(addr, b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n")
            .await
            .map(|a| a.0),
        None
    );
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"PROXY TCP4 1.2.3.4").await.expect("write");
    closed_by_peer(&mut slow, "a header that never completes").await;
    sy.assert_reasons(
        "switchyard_proxy_protocol_failures_total",
        "web",
        &[("malformed", 2.0), ("timeout", 1.0)],
    )
    .await;
    // Others are served throughout.
    let (status, _, _) = request_after(addr, b"PROXY TCP4 203.0.113.7 192.0.2.1 1 80\r\n")
        .await
        .expect("answer");
    assert_eq!(status, 200);
}

/// A TCP server that reads a PROXY header and then answers with the client
/// address it names, followed by whatever the client sends.
async fn header_reading_server() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1024];
                let mut len = 0;
                let (header_len, client) = loop {
                    let Ok(n) = stream.read(&mut buf[len..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    len += n;
                    match ppp::HeaderResult::parse(&buf[..len]) {
                        ppp::HeaderResult::V1(Ok(h)) => {
                            let client = match h.addresses {
                                ppp::v1::Addresses::Tcp4(a) => {
                                    format!("v1 {}:{}", a.source_address, a.source_port)
                                }
                                ppp::v1::Addresses::Tcp6(a) => {
                                    format!("v1 [{}]:{}", a.source_address, a.source_port)
                                }
                                ppp::v1::Addresses::Unknown => "v1 unknown".into(),
                            };
                            break (h.header.len(), client);
                        }
                        ppp::HeaderResult::V2(Ok(h)) => {
                            let client = match h.addresses {
                                ppp::v2::Addresses::IPv4(a) => {
                                    format!("v2 {}:{}", a.source_address, a.source_port)
                                }
                                _ => "v2 other".into(),
                            };
                            break (h.header.len(), client);
                        }
                        _ if len < 200 => continue,
                        _ => return,
                    }
                };
                let mut answer = format!("{client}\n").into_bytes();
                answer.extend_from_slice(&buf[header_len..len]);
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, AbortOnDrop(task))
}

#[tokio::test]
async fn tcp_backends_are_sent_the_client_address_in_v1_or_v2() {
    let (server, _server) = header_reading_server().await;
    for version in ["v1", "v2"] {
        let config = format!(
            r#"
[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "b"

[[listeners]]
name = "behind-lb"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "b"
proxy_protocol = true
trusted = ["127.0.0.0/8", "::1"]

[[backends]]
name = "b"
servers = ["{server}"]
send_proxy = "{version}"
"#
        );
        let sy = Switchyard::start(&config).await;
        let mut direct = TcpStream::connect(sy.addr("plain")).await.expect("connect");
        let me = direct.local_addr().expect("addr");
        direct.write_all(b"hello").await.expect("write");
        direct.shutdown().await.expect("shutdown");
        let mut answer = String::new();
        direct.read_to_string(&mut answer).await.expect("read");
        assert_eq!(answer, format!("{version} {me}\nhello"));

        // In and out: the client named by the incoming header is passed on.
        let mut relayed = TcpStream::connect(sy.addr("behind-lb"))
            .await
            .expect("connect");
        relayed
            .write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nbytes")
            .await
            .expect("write");
        relayed.shutdown().await.expect("shutdown");
        let mut answer = String::new();
        relayed.read_to_string(&mut answer).await.expect("read");
        assert_eq!(answer, format!("{version} 203.0.113.7:51000\nbytes"));
    }
}

#[tokio::test]
async fn https_behind_a_load_balancer_reads_the_header_before_the_handshake() {
    use support::tls::{Ca, verifying_client};
    let ca = Ca::new();
    let leaf = ca.leaf(&["a.test"]);
    let app = Backend::start("app").await;
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
mode = "https"
default_backend = "app"
certs = [{{ cert = "site.pem", key = "site.key" }}]
proxy_protocol = true
trusted = ["127.0.0.0/8"]

[[backends]]
name = "app"
servers = ["{}"]
"#,
        app.addr
    );
    let dir = tempfile::tempdir().expect("tempdir");
    leaf.write(dir.path(), "site");
    let sy = Switchyard::start_in(dir, &config).await;
    // The client library does the TLS; the header goes first on the socket.
    let mut tcp = TcpStream::connect(sy.addr("web")).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
        .await
        .expect("write");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let tls = tokio_rustls::TlsConnector::from(verifying_client(&ca, &[]))
        .connect(name, tcp)
        .await
        .expect("handshake after the header");
    let (status, headers, _) = HttpClient::over(tls)
        .await
        .get("/", Some("a.test"))
        .await
        .expect("answer");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-seen-xff"], "203.0.113.7");
    assert_eq!(headers["x-seen-proto"], "https");
}

#[tokio::test]
async fn proxy_protocol_settings_are_checked() {
    let a = Backend::start("a").await;
    let error = Switchyard::try_start(&http_config(&[&a], ""))
        .await
        .err()
        .expect("rejected");
    assert!(
        error.contains("listeners[0].trusted") && error.contains("needs the networks"),
        "{error}"
    );
    let error = Switchyard::try_start(&http_config(&[&a], r#"trusted = ["10.0.0.0/33", "nope"]"#))
        .await
        .err()
        .expect("rejected");
    assert!(
        error.contains("trusted[0]") && error.contains("trusted[1]"),
        "{error}"
    );
    let http_send = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "app"

[[backends]]
name = "app"
servers = ["{}"]
protocol = "http2"
send_proxy = "v2"
"#,
        a.addr
    );
    let error = Switchyard::try_start(&http_send)
        .await
        .err()
        .expect("rejected");
    assert!(
        error.contains("backends[0].send_proxy") && error.contains("http2"),
        "{error}"
    );
}

/// A v1 PROXY header, read a byte at a time so nothing after it is taken.
async fn read_v1_header(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = Vec::new();
    while !header.ends_with(b"\r\n") && header.len() < 108 {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.ok()?;
        header.push(byte[0]);
    }
    Some(header)
}

/// With `tls` as well, the PROXY header goes first on the TCP connection,
/// before the TLS handshake (as HAProxy's `send-proxy` with `ssl`).
#[tokio::test]
async fn the_header_precedes_tls_to_the_backend() {
    use support::tls::{Ca, server_config};
    let ca = Ca::new();
    let leaf = ca.leaf(&["db.internal"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&leaf, None, &[]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = listener.local_addr().expect("addr");
    let _task = AbortOnDrop(tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Some(header) = read_v1_header(&mut tcp).await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = tls.write_all(&header).await;
                let _ = tls.shutdown().await;
            });
        }
    }));
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
send_proxy = "v1"
tls = {{ ca_file = "ca.pem", server_name = "db.internal" }}
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
    let sy = Switchyard::start_in(dir, &config).await;
    let mut client = TcpStream::connect(sy.addr("db")).await.expect("connect");
    let me = client.local_addr().expect("addr");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.expect("read");
    assert!(
        answer.starts_with(&format!("PROXY TCP4 {} ", me.ip()))
            && answer.contains(&format!(" {} ", me.port())),
        "{answer}"
    );
}

/// An HTTP server behind `send_proxy`: reads the PROXY header, then serves
/// HTTP/1.1 on the rest, answering each request with the client the header
/// named. Counts its connections.
async fn http_after_header_server() -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    AbortOnDrop,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Some(header) = read_v1_header(&mut tcp).await else {
                    return;
                };
                let client = String::from_utf8_lossy(&header)
                    .split(' ')
                    .nth(2)
                    .unwrap_or("none")
                    .to_string();
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| {
                        let client = client.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(full(client)))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, connections, AbortOnDrop(task))
}

/// HTTP backends get the header on connections of their own: every
/// request names its own client, and no connection is shared.
#[tokio::test]
async fn http_backends_are_sent_the_header_on_private_connections() {
    let (server, connections, _server) = http_after_header_server().await;
    let config = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "app"
proxy_protocol = true
trusted = ["127.0.0.0/8"]

[[backends]]
name = "app"
servers = ["{server}"]
send_proxy = "v1"
"#
    );
    let sy = Switchyard::start(&config).await;
    let addr = sy.addr("web");
    for client in ["203.0.113.7", "198.51.100.9", "203.0.113.7"] {
        let header = format!("PROXY TCP4 {client} 192.0.2.1 51000 80\r\n");
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(header.as_bytes()).await.expect("header");
        let mut http = HttpClient::over(stream).await;
        for _ in 0..2 {
            let (status, _, body) = http.get("/", Some("app.test")).await.expect("answer");
            assert_eq!((status, body.as_str()), (StatusCode::OK, client));
        }
        // A body goes through hyper's client: private too.
        let req = http::Request::post("/").body(full("x")).expect("request");
        let (_, _, body) = http.send(req).await.expect("answer");
        assert_eq!(body, client);
    }
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        9,
        "one connection per request, none reused across clients"
    );
}
