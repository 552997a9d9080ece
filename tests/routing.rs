//! Routing, balancing, forwarding headers and error answers over real sockets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_exact_host_wildcard_host_path_prefix_and_default() {
    let (exact, wild, deep, path, default) = (
        Backend::start("exact").await,
        Backend::start("wild").await,
        Backend::start("deep-wild").await,
        Backend::start("path").await,
        Backend::start("default").await,
    );
    let sy = Switchyard::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "default"

[[routes]]
path_prefix = "/static/"
backend = "path"

[[routes]]
host = "*.example.com"
backend = "wild"

[[routes]]
host = "*.eu.example.com"
backend = "deep"

[[routes]]
host = "api.example.com"
path_prefix = "/v1/"
backend = "exact"

[[backends]]
name = "exact"
servers = ["{}"]
[[backends]]
name = "wild"
servers = ["{}"]
[[backends]]
name = "deep"
servers = ["{}"]
[[backends]]
name = "path"
servers = ["{}"]
[[backends]]
name = "default"
servers = ["{}"]
"#,
        exact.addr, wild.addr, deep.addr, path.addr, default.addr
    ))
    .await;
    let addr = sy.addr("web");
    let cases = [
        ("api.example.com", "/v1/users", "exact"),
        ("API.example.com:8080", "/v1/", "exact"),
        // exact host without a matching path falls back to the wildcard
        ("api.example.com", "/v2/users", "wild"),
        ("www.example.com", "/", "wild"),
        ("x.eu.example.com", "/", "deep-wild"),
        ("other.org", "/static/app.js", "path"),
        ("other.org", "/", "default"),
        ("example.com", "/", "default"),
    ];
    let mut client = HttpClient::connect(addr).await;
    for (host, path, want) in cases {
        let (status, _, body) = client.get(path, Some(host)).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, want),
            "{host}{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_and_no_default_gives_404() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
[[routes]]
host = "a.test"
backend = "b"
[[backends]]
name = "b"
servers = ["{}"]
"#,
        b.addr
    ))
    .await;
    let (status, body) = get(sy.addr("web"), "/", Some("nope.test")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, "no route for this request\n");
    assert_eq!(get(sy.addr("web"), "/", Some("a.test")).await.1, "b");
}

fn balanced(balance: &str, extra: &str, servers: &[&Backend]) -> String {
    let list: Vec<String> = servers.iter().map(|b| format!("\"{}\"", b.addr)).collect();
    format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "pool"

[[backends]]
name = "pool"
balance = "{balance}"
{extra}
servers = [{}]
"#,
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exact() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let sy = Switchyard::start(&balanced("round_robin", "", &bs.iter().collect::<Vec<_>>())).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let (_, _, body) = client.get("/", None).await.unwrap();
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 100), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let sy = Switchyard::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "pool"
[[backends]]
name = "pool"
servers = [{{ address = "{}", weight = 3 }}, "{}"]
"#,
        a.addr, b.addr
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..400 {
        client.get("/", None).await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (300, 100));
}

/// Sends requests until one is parked on `busy` (held until released): with
/// both servers idle, balancers break ties so that happens within a few.
async fn park_one_request_on(
    busy: &Backend,
    free: &Backend,
    addr: std::net::SocketAddr,
) -> Vec<tokio::task::JoinHandle<(StatusCode, String)>> {
    let mut parked = Vec::new();
    while busy.arrived() == 0 {
        parked.push(tokio::spawn(async move { get(addr, "/", None).await }));
        let n = parked.len();
        eventually(
            "request reaches a server",
            Duration::from_secs(5),
            || async { busy.arrived() + free.hits() >= n },
        )
        .await;
        assert!(n < 20, "the busy server was never picked");
    }
    parked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_a_busy_server() {
    let busy = Backend::held("busy").await;
    let free = Backend::start("free").await;
    let sy = Switchyard::start(&balanced("least_conn", "", &[&busy, &free])).await;
    let addr = sy.addr("web");
    let parked = park_one_request_on(&busy, &free, addr).await;
    let before = free.hits();
    let mut client = HttpClient::connect(addr).await;
    for _ in 0..50 {
        assert_eq!(client.get("/", None).await.unwrap().2, "free");
    }
    assert_eq!(free.hits() - before, 50);
    assert_eq!(busy.arrived(), 1, "no new request went to the busy server");
    busy.release(100);
    for p in parked {
        assert_eq!(p.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_prefers_the_less_loaded_server() {
    let busy = Backend::held("busy").await;
    let free = Backend::start("free").await;
    let sy = Switchyard::start(&balanced("p2c", "", &[&busy, &free])).await;
    let addr = sy.addr("web");
    let parked = park_one_request_on(&busy, &free, addr).await;
    // With two servers p2c compares both, so the busy one is never chosen.
    let mut client = HttpClient::connect(addr).await;
    for _ in 0..50 {
        assert_eq!(client.get("/", None).await.unwrap().2, "free");
    }
    busy.release(100);
    for p in parked {
        assert_eq!(p.await.unwrap().0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_header_is_sticky_and_spreads_keys() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let sy = Switchyard::start(&balanced(
        "hash",
        "hash_header = \"x-user\"",
        &bs.iter().collect::<Vec<_>>(),
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let mut owner_of = HashMap::new();
    for round in 0..5 {
        for user in 0..60 {
            let req = Request::get("/")
                .header("x-user", format!("user-{user}"))
                .body(full(""))
                .unwrap();
            let (_, _, body) = client.send(req).await.unwrap();
            let first = owner_of.entry(user).or_insert_with(|| body.clone());
            assert_eq!(*first, body, "user-{user} moved in round {round}");
        }
    }
    let mut per_backend: HashMap<&String, usize> = HashMap::new();
    for owner in owner_of.values() {
        *per_backend.entry(owner).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "60 keys should reach all 3 servers: {per_backend:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_client_address_is_sticky() {
    let bs = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let sy = Switchyard::start(&balanced("hash", "", &bs.iter().collect::<Vec<_>>())).await;
    let addr = sy.addr("web");
    let first = get(addr, "/", None).await.1;
    for _ in 0..30 {
        // new connections, new source ports, same client address
        assert_eq!(get(addr, "/", None).await.1, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_removed() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&balanced("round_robin", "", &[&b])).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    // A GET goes over an inline connection, which writes the forwarding
    // headers itself; a POST with a body over hyper's client: same result.
    for (method, body) in [("GET", ""), ("POST", "payload")] {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "shop.example")
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-proto", "https")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .body(full(body))
            .unwrap();
        let (status, headers, _) = client.send(req).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(headers["x-seen-xff"], "10.1.2.3, 127.0.0.1", "{method}");
        assert_eq!(
            headers["x-seen-proto"], "http",
            "{method}: the client's own value is replaced, not repeated"
        );
        assert_eq!(headers["x-seen-forwarded-host"], "shop.example", "{method}");
        assert_eq!(headers["x-seen-host"], "shop.example", "{method}");
        assert_eq!(
            headers["x-seen-hop"], "",
            "{method}: a header named by Connection must not be forwarded"
        );
    }
    // Only some of the fields from the client, or none: each is still set
    // exactly once.
    for (method, body) in [("GET", ""), ("POST", "payload")] {
        for sent in [Some("evil.example"), None] {
            let mut req = Request::builder()
                .method(method)
                .uri("/")
                .header("host", "shop.example");
            if let Some(host) = sent {
                req = req.header("x-forwarded-host", host);
            }
            let (_, headers, _) = client.send(req.body(full(body)).unwrap()).await.unwrap();
            assert_eq!(headers["x-seen-xff"], "127.0.0.1", "{method} {sent:?}");
            assert_eq!(headers["x-seen-proto"], "http", "{method} {sent:?}");
            assert_eq!(
                headers["x-seen-forwarded-host"], "shop.example",
                "{method} {sent:?}"
            );
        }
    }
}

#[tokio::test]
async fn forwarding_headers_can_be_left_out() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend_with(
        b.addr,
        "",
        "forwarded_headers = false",
        "",
    ))
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for (method, body) in [("GET", ""), ("POST", "payload")] {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header("host", "shop.example")
            .header("x-forwarded-for", "10.1.2.3")
            .body(full(body))
            .unwrap();
        let (status, headers, _) = client.send(req).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{method}");
        // The client's own value passes untouched; nothing is added.
        assert_eq!(headers["x-seen-xff"], "10.1.2.3", "{method}");
        assert_eq!(headers["x-seen-proto"], "", "{method}");
        assert_eq!(headers["x-seen-forwarded-host"], "", "{method}");
        assert_eq!(headers["x-seen-host"], "shop.example", "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_backend_answers_itself() {
    let sy = Switchyard::start(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "hello"
[[backends]]
name = "hello"
respond = { status = 418, body = "teapot\n", headers = { "x-from" = "switchyard" } }
"#,
    )
    .await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    let (status, headers, body) = client.get("/", None).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::IM_A_TEAPOT, "teapot\n")
    );
    assert_eq!(headers["x-from"], "switchyard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gives_502_and_counts_a_connect_error() {
    // Bind then drop: nothing listens on this port any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sy = Switchyard::start(&format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "gone"
[[backends]]
name = "gone"
servers = ["{dead}"]
"#
    ))
    .await;
    let (status, body) = get(sy.addr("web"), "/", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "cannot connect to upstream server\n");
    let (_, metrics) = sy.admin_get("/metrics").await;
    assert!(
        metrics.contains("switchyard_upstream_connect_errors_total{backend=\"gone\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "switchyard_http_requests_total{backend=\"gone\",class=\"5xx\",listener=\"web\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_gives_504() {
    let slow = Backend::held("slow").await;
    let sy = Switchyard::start(&single_backend(
        slow.addr,
        "",
        "timeouts = { request = \"200ms\" }",
    ))
    .await;
    let (status, body) = get(sy.addr("web"), "/", None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream server timed out\n");
    slow.release(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_and_others_are_unaffected() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&balanced("round_robin", "", &[&b])).await;
    let addr = sy.addr("web");
    let mut good = HttpClient::connect(addr).await;
    assert_eq!(good.get("/", None).await.unwrap().2, "b");
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
        b"GET /\x01path HTTP/1.1\r\n\r\n",
    ] {
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
            .await
            .expect("proxy closes after a bad request")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
        assert_eq!(good.get("/", None).await.unwrap().2, "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_report_traffic() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let sy = Switchyard::start(&balanced("round_robin", "", &[&a, &b])).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..10 {
        client.get("/", None).await.unwrap();
    }
    let (status, metrics) = sy.admin_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "switchyard_http_requests_total{backend=\"pool\",class=\"2xx\",listener=\"web\"} 10",
        "switchyard_http_request_duration_seconds_count{backend=\"pool\",listener=\"web\"} 10",
        "switchyard_listener_active_connections{listener=\"web\"} 1",
        "switchyard_listener_connections_total{listener=\"web\"} 1",
        &format!(
            "switchyard_endpoint_active_connections{{backend=\"pool\",endpoint=\"{}\"}} 0",
            a.addr
        ),
        &format!(
            "switchyard_endpoint_up{{backend=\"pool\",endpoint=\"{}\"}} 1",
            b.addr
        ),
        "switchyard_config_version 1",
        "switchyard_config_reloads_total{result=\"success\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing {expected}\n{metrics}");
    }
    let bytes = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(bytes("switchyard_listener_received_bytes_total{listener=\"web\"}") > 10 * 16);
    assert!(bytes("switchyard_listener_sent_bytes_total{listener=\"web\"}") > 10 * 40);

    let (_, status) = sy.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["version"], 1);
    assert_eq!(status["last_reload"]["result"], "success");
    assert_eq!(
        status["listeners"][0]["local_addr"],
        sy.addr("web").to_string()
    );
    assert_eq!(status["listeners"][0]["active_connections"], 1);
    let endpoints = status["backends"][0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(endpoints[0]["origin"], "static");
    assert_eq!(endpoints[0]["healthy"], true);
    assert_eq!(endpoints[0]["draining"], false);

    let (code, body) = sy.admin_get("/healthz").await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "ok\n"));
    assert_eq!(sy.admin_get("/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        sy.admin_get("/reload").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_connection_limit_queues_briefly_then_answers_503() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend_with(
        b.addr,
        "",
        "max_connections = 1\nqueue_timeout = \"2s\"",
        "",
    ))
    .await;
    let addr = sy.addr("web");
    let mut first = HttpClient::connect(addr).await;
    assert_eq!(first.get("/", None).await.unwrap().2, "b");
    // A second client waits for the slot: not served while the first
    // connection is open...
    let second = tokio::spawn(async move { get(addr, "/", None).await });
    for _ in 0..20 {
        assert_eq!(first.get("/", None).await.unwrap().2, "b");
    }
    if second.is_finished() {
        panic!(
            "second client was served past the limit: {:?}",
            second.await
        );
    }
    assert_eq!(b.hits(), 21);
    // ...and served as soon as the first leaves, within queue_timeout.
    drop(first);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second client is served once the first leaves")
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "b"));

    // Past queue_timeout a waiting client gets 503 and a closed connection.
    let mut holder = HttpClient::connect(addr).await;
    assert_eq!(holder.get("/", None).await.unwrap().2, "b");
    let started = std::time::Instant::now();
    let mut turned_away = HttpClient::connect(addr).await;
    let (status, headers, body) = turned_away.get("/", None).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["connection"], "close");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered before queue_timeout"
    );
    assert_eq!(
        sy.metric("switchyard_listener_rejected_connections_total{listener=\"web\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(holder.get("/", None).await.unwrap().2, "b");
}

/// A server that answers one request per connection with `Connection: close`.
async fn one_shot_server() -> (
    std::net::SocketAddr,
    AbortOnDrop,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = io
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nonce",
                    )
                    .await;
                let _ = io.shutdown().await;
            });
        }
    });
    (addr, AbortOnDrop(task), accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_closed_by_the_server_are_replaced() {
    let (addr, _server, accepted) = one_shot_server().await;
    let sy = Switchyard::start(&single_backend(addr, "", "")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..20 {
        let (status, headers, body) = client.get("/", None).await.expect("every request answered");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "once"));
        assert!(
            headers.get("connection").is_none(),
            "hop-by-hop header leaked"
        );
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
}

/// One worker thread: the endpoint's idle connections are kept per thread
/// (a multi-thread runtime spreads them over its workers as tasks move).
#[tokio::test]
async fn upstream_connections_outlive_the_clients_that_opened_them() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&balanced("round_robin", "", &[&b])).await;
    let addr = sy.addr("web");
    for _ in 0..10 {
        // One request per client connection, as `Connection: close` clients do.
        assert_eq!(get(addr, "/", None).await.1, "b");
        eventually(
            "the client connection is gone",
            Duration::from_secs(5),
            || async {
                sy.admin_get("/metrics")
                    .await
                    .1
                    .contains("switchyard_listener_active_connections{listener=\"web\"} 0")
            },
        )
        .await;
    }
    // Keep-alive clients, one quiet while the other works, share it too:
    // a connection goes back to the endpoint's pool when its response
    // ends, not to the client that used it.
    let mut quiet = HttpClient::connect(addr).await;
    assert_eq!(quiet.get("/", None).await.unwrap().2, "b");
    let mut busy = HttpClient::connect(addr).await;
    for _ in 0..10 {
        assert_eq!(busy.get("/", None).await.unwrap().2, "b");
    }
    assert_eq!(quiet.get("/", None).await.unwrap().2, "b");
    assert_eq!(
        b.connections(),
        1,
        "one upstream connection served them all"
    );
}

/// An HTTP/1.0 client may send no Host header; the request goes upstream
/// as HTTP/1.1, which requires one, so the proxy names the server (as
/// nginx's default `$proxy_host` does). Without it a strict server answers
/// 400 and closes, and the pooled connection is lost with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_without_host_reaches_the_server_with_one() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend(b.addr, "", "")).await;
    let mut stream = TcpStream::connect(sy.addr("web")).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("x-seen-host: {}\r\n", b.addr)),
        "the server saw Host: {}: {answer}",
        b.addr
    );
}
