//! The whole exchange with an upstream, through the proxy: timeouts after
//! the response head on both sides (a server that stops sending its body, a
//! client that stops reading or sending), response framing the client must
//! see right (Transfer-Encoding with Content-Length, Transfer-Encoding in
//! HTTP/1.0), and pooled connections racing a server that closes them
//! when idle.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::{
    AbortOnDrop, Backend, HttpClient, Switchyard, eventually, full, single_backend,
    single_backend_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// Reads one request head (and a `Content-Length` body after it) off
/// `socket`; `false` when the client closed first.
async fn read_request(socket: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let body = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while seen.len() < end + 4 + body {
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                    _ => return false,
                }
            }
            seen.drain(..end + 4 + body);
            return true;
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

/// A server answering every request of every connection with `answer`
/// (written as is); with `close`, it closes each connection after its
/// answer. Counts connections.
async fn raw_server(
    answer: &'static [u8],
    close: bool,
) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while read_request(&mut socket, &mut seen).await {
                    if socket.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, AbortOnDrop(task))
}

fn endpoint_active(status: &serde_json::Value) -> u64 {
    status["backends"][0]["endpoints"][0]["active_connections"]
        .as_u64()
        .unwrap()
}

/// Sends `request` on a new connection and reads until the proxy closes
/// it or `limit` passes; what arrived, and whether the proxy closed.
async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, s.read_to_end(&mut got))
        .await
        .is_ok();
    (got, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_sending_its_body_is_cut_and_counted() {
    // Ten bytes of a 100,000-byte body, then nothing.
    let (addr, _, _server) = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789",
        false,
    )
    .await;
    let sy = Switchyard::start(&single_backend(
        addr,
        "",
        "timeouts = { upstream_stall = \"300ms\" }",
    ))
    .await;
    let web = sy.addr("web");
    // Body-less (our client) and with a body (hyper's client): both cut.
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let started = Instant::now();
        let (got, closed) = raw_exchange(web, request, WAIT).await;
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "the client connection is closed, not left hanging");
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.ends_with("0123456789"), "the body is cut: {text}");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
    let stalls = "switchyard_upstream_stalls_total{backend=\"b\",listener=\"web\"}";
    assert_eq!(sy.metric(stalls).await, Some(2.0));
    eventually(
        "the endpoint's in-flight count is back to 0",
        WAIT,
        || async { endpoint_active(&sy.status().await) == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_counted() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend(
        b.addr,
        "[timeouts]\nclient_stall = \"500ms\"\n",
        "",
    ))
    .await;
    // 64 MiB asked for, a few bytes read, then the client reads no more
    // but keeps its connection open.
    let mut s = TcpStream::connect(sy.addr("web")).await.unwrap();
    s.write_all(b"GET /download/67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let _ = s.read(&mut first).await.unwrap();
    eventually("the stalled client is cut", WAIT, || async {
        sy.metric("switchyard_client_stalls_total{listener=\"web\"}")
            .await
            == Some(1.0)
    })
    .await;
    eventually("its upstream exchange is released", WAIT, || async {
        let status = sy.status().await;
        endpoint_active(&status) == 0
            && status["listeners"][0]["active_connections"].as_i64() == Some(0)
    })
    .await;
    drop(s);
    // A client reading slowly but steadily is not a stall: 1 MiB read in
    // small pieces with pauses shorter than the timeout.
    let mut s = TcpStream::connect(sy.addr("web")).await.unwrap();
    s.write_all(b"GET /download/1048576 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(total > 1_048_576, "{total} bytes");
    assert_eq!(
        sy.metric("switchyard_client_stalls_total{listener=\"web\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408() {
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend(
        b.addr,
        "[timeouts]\nclient_stall = \"300ms\"\n",
        "",
    ))
    .await;
    let (got, closed) = raw_exchange(
        sy.addr("web"),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b",
        WAIT,
    )
    .await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 Request Timeout"), "{text}");
    assert!(closed);
    assert_eq!(
        sy.metric("switchyard_client_stalls_total{listener=\"web\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn transfer_encoding_framing_reaches_the_client_right() {
    // Chunked and a Content-Length: decoded by the chunks, the length never
    // forwarded, and the connection not used again.
    let (addr, accepted, _server) = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let sy = Switchyard::start(&single_backend(addr, "", "")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..2 {
        let (status, headers, body) = client.get("/", None).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
        assert!(headers.get("content-length").is_none(), "{headers:?}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "not reused after both fields"
    );

    // A coding other than chunked: the body lasts until the server closes,
    // and the stale length must not frame it for the client.
    let (addr, _, _server) = raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nuntil the close",
        true,
    )
    .await;
    let sy = Switchyard::start(&single_backend(addr, "", "")).await;
    let (status, headers, body) = HttpClient::connect(sy.addr("web"))
        .await
        .get("/", None)
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "until the close"));
    assert!(headers.get("content-length").is_none(), "{headers:?}");

    // Transfer-Encoding in an HTTP/1.0 response is faulty framing: read
    // as it comes until the close, never decoded as chunks.
    let (addr, accepted, _server) = raw_server(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        true,
    )
    .await;
    let sy = Switchyard::start(&single_backend(addr, "", "")).await;
    let mut client = HttpClient::connect(sy.addr("web")).await;
    for _ in 0..2 {
        let (status, _, body) = client.get("/", None).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "5\r\nhello\r\n0\r\n\r\n")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A server that closes a connection once it has been idle for one second
/// between requests, like Node.js or Apache with a short keep-alive
/// timeout; with `hint`, its answers say so (`Keep-Alive: timeout=1`).
async fn closes_idle_after_one_second(hint: bool) -> (SocketAddr, Arc<AtomicUsize>, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer: &'static [u8] = if hint {
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    };
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let next = tokio::time::timeout(
                        Duration::from_secs(1),
                        read_request(&mut socket, &mut seen),
                    );
                    match next.await {
                        Ok(true) => {
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        Ok(false) => return,
                        // Idle for a second: the server decides to close,
                        // and does so a moment later (its event loop is
                        // busy), ignoring a request that arrives meanwhile,
                        // as a real server's close races a request in
                        // flight on a real network.
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, AbortOnDrop(task))
}

/// Eight clients, each sending a request every 0.85-1.15 s for about 6 s,
/// half of them POSTs without a body (which may not be sent twice), so
/// pooled connections keep meeting the server's one-second idle close.
/// Returns (requests, failed).
async fn paced_load(addr: SocketAddr) -> (usize, usize) {
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (failed, sent) = (failed.clone(), sent.clone());
            tokio::spawn(async move {
                for round in 0..6 {
                    let method = if (i + round) % 2 == 0 { "POST" } else { "GET" };
                    let req = Request::builder()
                        .method(method)
                        .uri("/")
                        .body(full(""))
                        .unwrap();
                    let mut client = HttpClient::connect(addr).await;
                    match client.send(req).await {
                        Ok((StatusCode::OK, _, _)) => {}
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                    let pause = 850 + fastrand_ms(i, round);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

/// A spread of 0-300 ms that differs by client and round.
fn fastrand_ms(client: usize, round: usize) -> u64 {
    ((client * 37 + round * 101) % 300) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_idle_connections_after_one_second_loses_no_request() {
    // With the hint: defaults only.
    let (addr, accepted, _server) = closes_idle_after_one_second(true).await;
    let sy = Switchyard::start(&single_backend(addr, "", "")).await;
    let (sent, failed) = paced_load(sy.addr("web")).await;
    eprintln!(
        "with the hint: {failed} of {sent} failed, {} upstream connections",
        accepted.load(Ordering::SeqCst)
    );
    assert_eq!(failed, 0, "{failed} of {sent} failed");
    // Without a hint: an idle limit below the server's.
    let (addr, accepted, _server) = closes_idle_after_one_second(false).await;
    let sy = Switchyard::start(&single_backend_with(
        addr,
        "",
        "",
        "timeouts = { upstream_idle = \"700ms\" }",
    ))
    .await;
    let (sent, failed) = paced_load(sy.addr("web")).await;
    eprintln!(
        "with upstream_idle: {failed} of {sent} failed, {} upstream connections",
        accepted.load(Ordering::SeqCst)
    );
    assert_eq!(failed, 0, "{failed} of {sent} failed");
}
