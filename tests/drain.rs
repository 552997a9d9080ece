//! Drain deadlines: a listener's `drain_timeout` ends the long-lived
//! connections of a removed listener, and of an endpoint a change removed;
//! without one they run to their end, as before.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tcp_config(listener: &str, server: SocketAddr, drain_timeout: Option<&str>) -> String {
    let timeout = drain_timeout.map_or(String::new(), |t| format!("drain_timeout = \"{t}\"\n"));
    format!(
        r#"
[[listeners]]
name = "{listener}"
bind = "127.0.0.1:0"
mode = "tcp"
default_backend = "echo"
{timeout}
[[backends]]
name = "echo"
servers = ["{server}"]
"#
    )
}

/// Round trip through an open TCP tunnel.
async fn echo(stream: &mut TcpStream, text: &[u8]) -> bool {
    if stream.write_all(text).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; text.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == text
}

/// Waits for the proxy to close `stream` (EOF, not a reset).
async fn closed_cleanly(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(within, stream.read(&mut buf))
        .await
        .expect("closed by the deadline");
    assert_eq!(read.expect("a clean close, not a reset"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_listener_closes_long_connections_at_its_drain_timeout() {
    let (echo_addr, _echo) = tcp_echo().await;
    let sy = Switchyard::start(&tcp_config("old", echo_addr, Some("300ms"))).await;
    let mut stream = TcpStream::connect(sy.addr("old")).await.unwrap();
    assert!(echo(&mut stream, b"before").await);
    // The listener goes away; its connection keeps working until the
    // deadline, then is closed.
    sy.write_config(&tcp_config("new", echo_addr, None));
    sy.reload().await;
    assert!(
        echo(&mut stream, b"draining").await,
        "still served while draining"
    );
    closed_cleanly(&mut stream, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_drain_timeout_a_removed_listener_lets_connections_run() {
    let (echo_addr, _echo) = tcp_echo().await;
    let sy = Switchyard::start(&tcp_config("old", echo_addr, None)).await;
    let mut stream = TcpStream::connect(sy.addr("old")).await.unwrap();
    sy.write_config(&tcp_config("new", echo_addr, None));
    sy.reload().await;
    // Well past any deadline one would set in a test: still open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(echo(&mut stream, b"still here").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_s_long_connections_end_at_the_drain_timeout() {
    let (first, _a) = tcp_echo().await;
    let (second, _b) = tcp_echo().await;
    let sy = Switchyard::start(&tcp_config("web", first, Some("300ms"))).await;
    let mut old = TcpStream::connect(sy.addr("web")).await.unwrap();
    assert!(echo(&mut old, b"to the first server").await);
    // The server is replaced; the listener stays.
    sy.write_config(&tcp_config("web", second, Some("300ms")));
    sy.reload().await;
    assert!(echo(&mut old, b"draining").await);
    let mut new = TcpStream::connect(sy.addr("web")).await.unwrap();
    assert!(echo(&mut new, b"to the second server").await);
    closed_cleanly(&mut old, Duration::from_secs(5)).await;
    // The new server's connection is not affected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(echo(&mut new, b"still here").await);
}
