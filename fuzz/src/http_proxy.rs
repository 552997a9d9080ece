//! The client request path and the upstream response path together:
//! Switchyard runs in-process (on a current-thread runtime, started on the
//! first input), a client sends the input's request bytes to one of its
//! listeners, and a server on loopback answers the input's response bytes.
//!
//! Input: one flags byte, the client's bytes, [`UPSTREAM`], the server's
//! bytes. Flags bit 0 picks the listener: a plain HTTP one (request IDs,
//! trace context started, a JSON access log), or one that reads a PROXY
//! header first (HAProxy-format access log). Paths under `/r` go to a
//! `respond` backend, the rest to the server.
//!
//! Checked: no panic anywhere in the proxy, and the first response the
//! client gets is a valid HTTP/1.1 head that frames its body one way only
//! (never both Content-Length and Transfer-Encoding, never two lengths).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::app::{App, AppOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Separates the client's bytes from the server's in an input.
pub const UPSTREAM: &[u8] = b"\n--upstream--\n";

/// A client waits this long for the whole answer (the proxy's own
/// timeouts, a few hundred ms, end every exchange well before).
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);

pub struct Harness {
    rt: Runtime,
    listeners: [SocketAddr; 2],
    /// What the server answers on its next connections.
    answer: Arc<Mutex<Vec<u8>>>,
    _app: App,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start() -> Self {
        let rt = super::runtime();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, listeners) = rt.block_on(async {
            let upstream = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind upstream");
            let addr = upstream.local_addr().expect("upstream addr");
            tokio::spawn(serve(upstream, answer.clone()));
            let path = dir.path().join("switchyard.toml");
            std::fs::write(&path, config(addr)).expect("write config");
            let options = AppOptions {
                watch_config: false,
                workers: 0,
                ..AppOptions::default()
            };
            let app = App::start(&path, options).await.expect("switchyard starts");
            let at = |name| app.listener_addr(name).expect("listener bound");
            let listeners = [at("plain"), at("proxied")];
            (app, listeners)
        });
        Self {
            rt,
            listeners,
            answer,
            _app: app,
            _dir: dir,
        }
    }

    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, rest)) = data.split_first() else {
            return;
        };
        let (request, response) = match find(rest, UPSTREAM) {
            Some(at) => (&rest[..at], &rest[at + UPSTREAM.len()..]),
            None => (rest, &[][..]),
        };
        *self.answer.lock().unwrap() = response.to_vec();
        let listener = self.listeners[usize::from(flags & 1)];
        let received = self.rt.block_on(exchange(listener, request));
        if !request.starts_with(b"PRI * HTTP/2.0") {
            check_response(&received);
        }
    }
}

fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[timeouts]
connect = "200ms"
header_read = "300ms"
client_idle = "300ms"
client_stall = "300ms"
request = "300ms"
upstream_stall = "300ms"
upstream_idle = "1s"

[limits]
max_body_bytes = 65536

[[listeners]]
name = "plain"
bind = "127.0.0.1:0"
default_backend = "server"
trace_context = {{ start = true }}
access_log = {{ path = "/dev/null", format = "json" }}

[[listeners]]
name = "proxied"
bind = "127.0.0.1:0"
default_backend = "server"
proxy_protocol = true
trusted = ["127.0.0.0/8"]
access_log = {{ path = "/dev/null", format = "haproxy" }}

[[routes]]
listener = "plain"
path_prefix = "/r"
backend = "respond"

[[routes]]
listener = "proxied"
path_prefix = "/r"
backend = "respond"

[[backends]]
name = "server"
servers = ["{upstream}"]
retries = 1

[[backends]]
name = "respond"
respond = {{ status = 200, body = "ok", headers = {{ "x-from" = "switchyard" }} }}
"#
    )
}

/// The server: reads a request head (or gives up after a short wait),
/// answers the current answer bytes, and closes.
async fn serve(listener: TcpListener, answer: Arc<Mutex<Vec<u8>>>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let answer = answer.lock().unwrap().clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            let head = async {
                while find(&seen, b"\r\n\r\n").is_none() {
                    match socket.read(&mut chunk).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(100), head).await;
            let _ = socket.write_all(&answer).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Sends `request`, closes the sending side, and reads all that comes back.
async fn exchange(listener: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut received = Vec::new();
    let talk = async {
        let mut client = TcpStream::connect(listener)
            .await
            .expect("connect to switchyard");
        // The proxy may answer (and close) before it read everything.
        if client.write_all(request).await.is_ok() {
            let _ = client.shutdown().await;
        }
        let _ = client.read_to_end(&mut received).await;
    };
    let _ = tokio::time::timeout(CLIENT_DEADLINE, talk).await;
    received
}

/// The first response: a complete, valid head with one framing.
fn check_response(received: &[u8]) {
    if received.is_empty() {
        return; // closed without an answer: allowed (e.g. a client reset)
    }
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut fields);
    let parsed = response.parse(received);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(_))),
        "the client got no valid response head: {parsed:?} in {:?}",
        String::from_utf8_lossy(&received[..received.len().min(512)])
    );
    let named = |name: &str| {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .collect::<Vec<_>>()
    };
    let lengths = named("content-length");
    let codings = named("transfer-encoding");
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "a response with Content-Length and Transfer-Encoding"
    );
    assert!(
        lengths.len() <= 1,
        "a response with {} Content-Length fields",
        lengths.len()
    );
    for length in lengths {
        assert!(
            !length.value.is_empty() && length.value.iter().all(u8::is_ascii_digit),
            "Content-Length {:?}",
            String::from_utf8_lossy(length.value)
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
