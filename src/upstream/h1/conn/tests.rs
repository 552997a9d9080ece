use super::*;
use http::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads up to the end of the next request head into `seen` and drops
/// that head; `false` once the client has closed.
async fn read_request_head(socket: &mut TcpStream, seen: &mut Vec<u8>) -> bool {
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            seen.drain(..end + 4);
            return true;
        }
        let mut chunk = [0u8; 1024];
        match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
}

/// A server that answers the request heads of one connection with
/// `answers` in turn: each is written after its delay in milliseconds, or
/// never (`None`: the connection is held open without an answer).
async fn scripted(answers: Vec<(Option<u64>, &'static str)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for (delay, answer) in answers {
            if !read_request_head(&mut socket, &mut seen).await {
                return;
            }
            let Some(delay) = delay else { break };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
        }
        // Held open until the client leaves.
        let mut chunk = [0u8; 1024];
        while socket.read(&mut chunk).await.unwrap_or(0) > 0 {}
    });
    addr
}

fn get(method: Method) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = "/x".parse().unwrap();
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example"));
    req
}

fn timeouts(deadline: Duration, stall: Duration) -> ExchangeTimeouts {
    ExchangeTimeouts {
        connect: Duration::from_secs(1),
        deadline: Instant::now() + deadline,
        stall,
    }
}

const LONG: Duration = Duration::from_secs(30);

/// Reads the body to its end; the connection when it may be reused.
async fn finish(mut body: H1Body) -> Result<(Vec<u8>, Option<Box<H1Conn>>), H1Error> {
    let mut data = Vec::new();
    while let Some(frame) = poll_fn(|cx| body.poll_frame(cx)).await {
        if let Ok(d) = frame?.into_data() {
            data.extend_from_slice(&d);
        }
    }
    Ok((data, body.take_reusable()))
}

#[tokio::test]
async fn a_reused_connection_the_server_closed_is_replaced() {
    // The server answers once per connection and closes; the second
    // request, on the closed connection, goes out again on a new one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..2 {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            read_request_head(&mut socket, &mut seen).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
        }
    });
    let req = get(Method::GET);
    let first = H1Conn::exchange(None, addr, timeouts(LONG, LONG), &req, &[], Dial::default());
    let (_, conn) = finish(first.await.unwrap().body).await.unwrap();
    let mut conn = conn.expect("kept alive");
    // The server's close arrives.
    let started = Instant::now();
    while conn.still_open() {
        assert!(started.elapsed() < LONG, "the close never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = H1Conn::exchange(
        Some(conn),
        addr,
        timeouts(LONG, LONG),
        &req,
        &[],
        Dial::default(),
    );
    assert_eq!(finish(again.await.unwrap().body).await.unwrap().0, b"ok");
}

#[tokio::test]
async fn each_exchange_gets_its_own_deadline_on_a_reused_connection() {
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let addr = scripted(vec![(Some(0), ok), (Some(300), ok), (None, "")]).await;
    let req = get(Method::GET);
    let short = Duration::from_millis(100);
    let first = H1Conn::exchange(
        None,
        addr,
        timeouts(short, LONG),
        &req,
        &[],
        Dial::default(),
    );
    let conn = finish(first.await.unwrap().body).await.unwrap().1;
    // The timer armed for the first deadline moves to the second, later
    // one instead of firing at the first.
    let second = H1Conn::exchange(conn, addr, timeouts(LONG, LONG), &req, &[], Dial::default());
    let conn = finish(second.await.unwrap().body).await.unwrap().1;
    // And back to an earlier one.
    let started = Instant::now();
    match H1Conn::exchange(
        conn,
        addr,
        timeouts(short, LONG),
        &req,
        &[],
        Dial::default(),
    )
    .await
    {
        Err(ExchangeError::Send(H1Error::TimedOut)) => {}
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.head)),
    }
    assert!(started.elapsed() >= short);
}

#[tokio::test]
async fn a_body_that_stops_arriving_ends_after_the_stall_timeout() {
    // The head and two bytes of ten, then nothing.
    let addr = scripted(vec![(
        Some(0),
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab",
    )])
    .await;
    let req = get(Method::GET);
    let stall = Duration::from_millis(200);
    let response = H1Conn::exchange(
        None,
        addr,
        timeouts(LONG, stall),
        &req,
        &[],
        Dial::default(),
    );
    let mut body = response.await.unwrap().body;
    let first = poll_fn(|cx| body.poll_frame(cx)).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "ab");
    let started = Instant::now();
    match poll_fn(|cx| body.poll_frame(cx)).await {
        Some(Err(H1Error::Stalled(d))) => assert_eq!(d, stall),
        other => panic!("expected a stall, got {other:?}"),
    }
    assert!(started.elapsed() >= stall, "{:?}", started.elapsed());
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn a_slow_body_that_keeps_moving_is_not_a_stall() {
    // Five bytes 150 ms apart: 750 ms in all, each gap under the 400 ms
    // stall timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        read_request_head(&mut socket, &mut Vec::new()).await;
        socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .await
            .unwrap();
        for byte in b"slow!" {
            tokio::time::sleep(Duration::from_millis(150)).await;
            socket.write_all(&[*byte]).await.unwrap();
        }
        let _ = socket.read(&mut [0u8; 16]).await;
    });
    let req = get(Method::GET);
    let stall = Duration::from_millis(400);
    let response = H1Conn::exchange(
        None,
        addr,
        timeouts(LONG, stall),
        &req,
        &[],
        Dial::default(),
    );
    let (data, conn) = finish(response.await.unwrap().body).await.unwrap();
    assert_eq!(data, b"slow!");
    assert!(conn.is_some());
}

#[tokio::test]
async fn the_servers_idle_hint_shortens_reuse() {
    let hinted = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok";
    let addr = scripted(vec![(Some(0), hinted)]).await;
    let req = get(Method::GET);
    let response = H1Conn::exchange(None, addr, timeouts(LONG, LONG), &req, &[], Dial::default());
    let conn = finish(response.await.unwrap().body)
        .await
        .unwrap()
        .1
        .unwrap();
    // 5 s announced: given up a second before; the backend's own limit
    // wins when shorter.
    assert_eq!(conn.reuse_window(LONG), Duration::from_secs(4));
    assert_eq!(
        conn.reuse_window(Duration::from_secs(2)),
        Duration::from_secs(2)
    );
}
