//! Bodies stream without buffering; upgrades, h2c and TCP half-close pass.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

fn one_backend(addr: std::net::SocketAddr, extra: &str) -> String {
    single_backend(addr, "", extra)
}

/// Uploads and downloads 64 MiB through the real binary and checks that its
/// peak memory grows by less than 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_without_buffering() {
    let b = Backend::start("b").await;
    let sy = SwitchyardProcess::start(&one_backend(b.addr, ""));
    let addr = sy.addr("web");
    let mut client = HttpClient::connect(addr).await;
    // Warm up: first connections, pools and lazily built structures.
    client.get("/", None).await.unwrap();
    let (rss_before, hwm_before) = sy.memory();

    let upload = Request::post("/upload").body(streamed(64 * MIB)).unwrap();
    let (status, _, body) = client.send(upload).await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, (64 * MIB).to_string()));

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(stream))
            .await
            .unwrap();
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender
        .send_request(
            Request::get(format!("/download/{}", 64 * MIB))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(received, 64 * MIB);

    let (rss_after, hwm_after) = sy.memory();
    let growth = hwm_after.saturating_sub(hwm_before.max(rss_before));
    eprintln!(
        "memory: rss before {} KiB, peak before {} KiB, rss after {} KiB, peak after {} KiB, peak growth {} KiB",
        rss_before / 1024,
        hwm_before / 1024,
        rss_after / 1024,
        hwm_after / 1024,
        growth / 1024
    );
    assert!(
        growth < 16 * MIB as u64,
        "peak memory grew by {} KiB",
        growth / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let (ws_addr, _ws) = websocket_echo().await;
    let sy = Switchyard::start(&one_backend(ws_addr, "")).await;
    let stream = TcpStream::connect(sy.addr("web")).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://echo.test/socket", stream)
        .await
        .expect("websocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo arrives")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_through_the_proxy_to_http1_and_http2_upstreams() {
    let b = Backend::start("b").await;
    for (protocol, upstream_version) in [("http1", "HTTP/1.1"), ("http2", "HTTP/2.0")] {
        let sy =
            Switchyard::start(&one_backend(b.addr, &format!("protocol = \"{protocol}\""))).await;
        let stream = TcpStream::connect(sy.addr("web")).await.unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .expect("h2c handshake with the proxy");
        let _conn = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        // Concurrent streams on one connection.
        let mut streams = Vec::new();
        for i in 0..20 {
            let mut sender = sender.clone();
            streams.push(tokio::spawn(async move {
                let req = Request::get(format!("http://h2.test/item/{i}"))
                    .body(full(""))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let version = resp.headers()["x-seen-version"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let host = resp.headers()["x-seen-forwarded-host"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (version, host, body)
            }));
        }
        for s in streams {
            let (version, host, body) = s.await.unwrap();
            assert_eq!(&body[..], b"b");
            assert_eq!(version, upstream_version, "upstream protocol {protocol}");
            assert_eq!(host, "h2.test");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_with_half_close() {
    let (echo, _echo) = tcp_echo().await;
    let sy = Switchyard::start(&single_backend_with(echo, "", "mode = \"tcp\"", "")).await;
    for size in [5usize, 1024 * 1024] {
        let mut conn = TcpStream::connect(sy.addr("web")).await.unwrap();
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let (mut rd, mut wr) = conn.split();
        let writer = async {
            wr.write_all(&payload).await.unwrap();
            // Half-close: we are done sending but still want the answer.
            wr.shutdown().await.unwrap();
        };
        let mut answer = Vec::new();
        let reader = rd.read_to_end(&mut answer);
        let ((), read) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(writer, reader)
        })
        .await
        .expect("echo completes");
        read.unwrap();
        let mut want = payload.clone();
        want.extend_from_slice(b"<eof seen>");
        assert_eq!(answer.len(), want.len());
        assert!(answer == want, "echo differs");
    }
}
