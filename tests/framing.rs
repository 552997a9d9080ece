//! HTTP/1.1 framing through the proxy: the ambiguous and invalid messages
//! of `bench/framing_conformance.py` (which runs them through HAProxy and
//! nginx too, into docs/framing-conformance.md), each sent as raw bytes.
//!
//! Every case must come out safe: Switchyard refuses the message (400,
//! 501, 502), or forwards it so that client, proxy and server agree on
//! where each message ends. The upstream here reads what Switchyard
//! forwards as a strict RFC 9112 server would (CRLF line ends, no folding,
//! one framing field with one value, one Host) and records a problem for
//! anything else; bytes smuggled inside a body must never reach it as a
//! request of their own.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{AbortOnDrop, Switchyard, endpoint, single_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// The longest any one read here waits.
const WAIT: Duration = Duration::from_secs(5);

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
const CHUNKED: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";

// === a strict server ===

/// A request as the upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// What a strict server objects to in what it received.
    problem: Option<String>,
}

impl Seen {
    fn field(&self, name: &str) -> Vec<&[u8]> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// How the upstream answers.
#[derive(Clone, Copy)]
enum Script {
    /// Every request gets its own bytes back, as received.
    Echo,
    /// The first request is answered as soon as its head is in, before its
    /// body is read (then read); later ones are echoed.
    Early,
    /// The first request gets these bytes, then later ones are echoed.
    Respond(&'static [u8]),
    /// The first request gets these bytes and the connection closes.
    RespondClose(&'static [u8]),
    /// The first request gets these bytes, then every byte is echoed.
    RespondTunnel(&'static [u8]),
}

struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: AbortOnDrop,
}

impl Upstream {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            for conn in 0.. {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(serve(socket, conn, script, log.clone()));
            }
        });
        Self {
            addr,
            seen,
            _task: AbortOnDrop(task),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// The requests seen; panics on any a strict server objects to.
    fn requests(&self) -> Vec<Seen> {
        let seen = self.seen();
        for s in &seen {
            assert!(s.problem.is_none(), "forwarded ambiguously: {s:?}");
            assert_ne!(
                s.target, "/smuggled",
                "a smuggled request reached the server"
            );
        }
        seen
    }
}

async fn serve(mut socket: TcpStream, conn: usize, script: Script, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut early_sent = false;
    loop {
        let parsed = parse_request(&buf);
        let (seen, used) = match parsed {
            Parsed::Done(seen, used) => (Seen { conn, ..seen }, used),
            Parsed::Bad(problem) => {
                let target =
                    String::from_utf8_lossy(buf.split(|&b| b == b' ').nth(1).unwrap_or(b""));
                log.lock().unwrap().push(Seen {
                    conn,
                    target: target.into_owned(),
                    fields: Vec::new(),
                    body: Vec::new(),
                    problem: Some(problem),
                });
                let _ = socket
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                return;
            }
            Parsed::Partial { head_done } => {
                if head_done && !early_sent && matches!(script, Script::Early) {
                    let first = log.lock().unwrap().is_empty();
                    if first {
                        early_sent = true;
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
                let mut chunk = [0u8; 16 * 1024];
                match socket.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
                continue;
            }
        };
        let raw: Vec<u8> = buf.drain(..used).collect();
        let first = {
            let mut log = log.lock().unwrap();
            log.push(seen);
            log.len() == 1
        };
        if std::mem::take(&mut early_sent) {
            continue;
        }
        let answer: Vec<u8> = match script {
            Script::Respond(bytes) | Script::RespondClose(bytes) | Script::RespondTunnel(bytes)
                if first =>
            {
                bytes.to_vec()
            }
            _ => {
                let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", raw.len())
                    .into_bytes();
                a.extend_from_slice(&raw);
                a
            }
        };
        if socket.write_all(&answer).await.is_err() {
            return;
        }
        match script {
            Script::RespondClose(_) if first => return,
            Script::RespondTunnel(_) if first => {
                let (mut r, mut w) = socket.split();
                let _ = w.write_all(&buf).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                return;
            }
            _ => {}
        }
    }
}

enum Parsed {
    Done(Seen, usize),
    Partial { head_done: bool },
    Bad(String),
}

const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~";

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || TOKEN.contains(&b)
}

/// One request off the front of `buf`, read strictly (RFC 9112): what a
/// server that accepts nothing ambiguous makes of the bytes.
fn parse_request(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.windows(2).any(|w| w == b"\n\n") {
            return Parsed::Bad("bare LF ends the head".into());
        }
        return Parsed::Partial { head_done: false };
    };
    let head = &buf[..end];
    for (i, &b) in head.iter().enumerate() {
        let lf_alone = b == b'\n' && (i == 0 || head[i - 1] != b'\r');
        let cr_alone = b == b'\r' && head.get(i + 1) != Some(&b'\n');
        if lf_alone || cr_alone {
            return Parsed::Bad("bare CR or LF in the head".into());
        }
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if parts.len() != 3 || parts[2] != b"HTTP/1.1" {
        return Parsed::Bad(format!("request line {:?}", String::from_utf8_lossy(line)));
    }
    let target = String::from_utf8_lossy(parts[1]).into_owned();
    let mut fields = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parsed::Bad(format!("field line {:?}", String::from_utf8_lossy(line)));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Parsed::Bad(format!(
                "field name {:?} (folded?)",
                String::from_utf8_lossy(name)
            ));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Parsed::Bad(format!(
                "control byte in {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        fields.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    let mut seen = Seen {
        conn: 0,
        target,
        fields,
        body: Vec::new(),
        problem: None,
    };
    let (te, cl, host) = (
        seen.field("transfer-encoding"),
        seen.field("content-length"),
        seen.field("host"),
    );
    if host.len() > 1 {
        return Parsed::Bad("more than one Host".into());
    }
    let rest = &buf[end + 4..];
    let used = match (te.as_slice(), cl.as_slice()) {
        ([_, ..], [_, ..]) => {
            return Parsed::Bad("both Content-Length and Transfer-Encoding".into());
        }
        ([te], []) if te.eq_ignore_ascii_case(b"chunked") => match dechunk(rest) {
            Ok(Some((body, used))) => {
                seen.body = body;
                used
            }
            Ok(None) => return Parsed::Partial { head_done: true },
            Err(e) => return Parsed::Bad(e),
        },
        ([_, ..], []) => return Parsed::Bad(format!("Transfer-Encoding {te:?}")),
        ([], [cl]) => {
            let Some(n) = std::str::from_utf8(cl)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                return Parsed::Bad(format!("Content-Length {cl:?}"));
            };
            if rest.len() < n {
                return Parsed::Partial { head_done: true };
            }
            seen.body = rest[..n].to_vec();
            n
        }
        ([], [_, _, ..]) => return Parsed::Bad("Content-Length twice".into()),
        ([], []) => 0,
    };
    Parsed::Done(seen, end + 4 + used)
}

/// A chunked body off the front of `buf`, strictly: the data and the
/// bytes it took, `None` when more are needed.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let (mut at, mut body) = (0, Vec::new());
    loop {
        let Some(len) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + len];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = std::str::from_utf8(&line[..digits])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .filter(|_| digits > 0 && (digits == line.len() || line[digits] == b';'))
            .ok_or_else(|| format!("chunk size line {:?}", String::from_utf8_lossy(line)))?;
        at += len + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            let Some(end) = buf[at - 2..].windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            return Ok(Some((body, at - 2 + end + 4)));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data without CRLF".into());
        }
        at += size + 2;
    }
}

// === a client reading strictly ===

/// A response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    fields: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Vec<&[u8]> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One response off the front of `buf` (`eof`: the connection ended
/// after it), strictly: one framing field, one length, CRLF.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    eof: bool,
) -> Result<Option<(Answer, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let mut fields = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("field line {line:?}"))?;
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(format!("field name {name:?}"));
        }
        fields.push((name.to_ascii_lowercase(), value.trim().as_bytes().to_vec()));
    }
    let mut answer = Answer {
        status,
        fields,
        body: Vec::new(),
    };
    let rest = &buf[end + 4..];
    let (te, cl) = (
        answer.field("transfer-encoding"),
        answer.field("content-length"),
    );
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding".into());
    }
    if cl.len() > 1 || cl.iter().any(|v| v.contains(&b',')) {
        return Err(format!("Content-Length {cl:?}"));
    }
    let bodiless = head_request || status < 200 || status == 204 || status == 304;
    let used = if bodiless {
        0
    } else if let [te] = te.as_slice() {
        if !te.eq_ignore_ascii_case(b"chunked") {
            return Err(format!("Transfer-Encoding {te:?}"));
        }
        match dechunk(rest)? {
            Some((body, used)) => {
                answer.body = body;
                used
            }
            None => return Ok(None),
        }
    } else if let [cl] = cl.as_slice() {
        let n: usize = std::str::from_utf8(cl)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("Content-Length {cl:?}"))?;
        if rest.len() < n {
            return Ok(None);
        }
        answer.body = rest[..n].to_vec();
        n
    } else if eof {
        answer.body = rest.to_vec();
        rest.len()
    } else {
        return Ok(None);
    };
    Ok(Some((answer, end + 4 + used)))
}

/// A raw client connection to the proxy.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr)
                .await
                .expect("connect to the proxy"),
            buf: Vec::new(),
            eof: false,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// The next final response, with the status of each 1xx before it;
    /// `None` when the proxy closed the connection first. Panics on a
    /// response a strict client cannot read, or after [`WAIT`].
    async fn answer(&mut self, head_request: bool) -> Option<(Vec<u16>, Answer)> {
        let deadline = Instant::now() + WAIT;
        let mut interim = Vec::new();
        loop {
            match parse_response(&self.buf, head_request, self.eof) {
                Ok(Some((answer, used))) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&answer.status) && answer.status != 101 {
                        interim.push(answer.status);
                        continue;
                    }
                    return Some((interim, answer));
                }
                // Closed first, or in the middle of a response (left in
                // `buf` for the caller to look at).
                Ok(None) if self.eof => return None,
                Ok(None) => {}
                Err(e) => panic!(
                    "the client cannot read the response: {e}: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            self.fill(deadline).await;
        }
    }

    /// Reads more; panics at `deadline`.
    async fn fill(&mut self, deadline: Instant) {
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
            .await
            .expect("the proxy answers in time");
        match read {
            Ok(0) | Err(_) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
        }
    }

    /// Asserts the proxy closes the connection (within [`WAIT`]) with no
    /// more bytes.
    async fn assert_closed(&mut self, what: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.eof {
            self.fill(deadline).await;
        }
        assert!(
            self.buf.is_empty(),
            "{what}: bytes after the answer: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Sends `request` on a new connection: the answer, and the connection.
async fn send_one(addr: SocketAddr, request: &[u8]) -> (Answer, Client) {
    let mut client = Client::connect(addr).await;
    client.send(request).await;
    let (_, answer) = client.answer(false).await.expect("an answer");
    (answer, client)
}

/// A proxy in front of an upstream following `script`.
async fn proxied(script: Script) -> (Switchyard, Upstream) {
    let upstream = Upstream::start(script).await;
    let sy = Switchyard::start(&single_backend(upstream.addr, "", "")).await;
    (sy, upstream)
}

/// What a request case must come to.
#[derive(Clone, Copy)]
enum Expect {
    /// This status from the proxy, the connection closed, and nothing at
    /// the server.
    Refused(u16),
    /// One request at the server, framed once, with this body.
    Forwarded(&'static [u8]),
}

/// Runs each case on its own connection and checks it (see [`Expect`]).
async fn check_requests(cases: &[(&str, &[u8], Expect)]) {
    let (sy, upstream) = proxied(Script::Echo).await;
    let addr = sy.addr("web");
    for (name, request, expect) in cases {
        upstream.clear();
        let (answer, mut client) = send_one(addr, request).await;
        match expect {
            Expect::Refused(status) => {
                assert_eq!(answer.status, *status, "{name}: {}", answer.text());
                client.assert_closed(name).await;
            }
            Expect::Forwarded(_) => {
                assert_eq!(answer.status, 200, "{name}: {}", answer.text());
                drop(client);
            }
        }
        // A request after the case, on a new connection: once it is
        // answered, whatever the case sent on has arrived.
        let (after, _) = send_one(addr, b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_eq!(after.status, 200, "{name}: the request after it");
        let seen: Vec<Seen> = upstream
            .requests()
            .into_iter()
            .filter(|s| s.target != "/after")
            .collect();
        match expect {
            Expect::Refused(_) => {
                assert!(seen.is_empty(), "{name}: refused, yet forwarded: {seen:?}")
            }
            Expect::Forwarded(body) => {
                assert_eq!(seen.len(), 1, "{name}: {seen:?}");
                assert_eq!(seen[0].body, *body, "{name}");
            }
        }
    }
}

// === requests ===

#[tokio::test]
async fn content_length_and_transfer_encoding_are_refused_or_read_one_way() {
    use Expect::*;
    check_requests(&[
        // Both fields: read by Transfer-Encoding alone, forwarded chunked
        // without the length (see also the close after it, below).
        (
            "te_cl",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Forwarded(b"hello"),
        ),
        (
            "cl_cl_diff",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            Refused(400),
        ),
        (
            "cl_cl_same",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            Forwarded(b"hello"),
        ),
        ("cl_list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", Refused(400)),
        ("cl_plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", Refused(400)),
        (
            "cl_2_64",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\nhello",
            Refused(400),
        ),
        (
            "te_chunked_identity",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(400),
        ),
        (
            "te_gzip",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
            Refused(400),
        ),
        (
            "te_xchunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(400),
        ),
        (
            "te_http10",
            b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(400),
        ),
        (
            "te_space_colon",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
        (
            "te_obs_fold",
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            Refused(400),
        ),
    ])
    .await;
}

/// Regression: hyper decodes the chunks of `gzip, chunked` and nothing
/// else, so the server got a gzip body announced as plain; and `chunked`
/// twice went through as once.
#[tokio::test]
async fn transfer_codings_besides_one_chunked_are_refused() {
    use Expect::*;
    check_requests(&[
        (
            "te_gzip_chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(501),
        ),
        (
            "te_gzip_then_chunked",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(501),
        ),
        (
            "te_twice",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Refused(400),
        ),
        (
            "te_chunked_upper_case",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Forwarded(b"hello"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn invalid_field_syntax_is_refused_and_bare_lf_is_normalised() {
    use Expect::*;
    check_requests(&[
        (
            "space_colon",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo : bar\r\n\r\n",
            Refused(400),
        ),
        (
            "obs_fold",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\r\n b\r\n\r\n",
            Refused(400),
        ),
        (
            "bare_cr",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\rb\r\n\r\n",
            Refused(400),
        ),
        (
            "nul_value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x00b\r\n\r\n",
            Refused(400),
        ),
        (
            "nul_name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-F\x00oo: a\r\n\r\n",
            Refused(400),
        ),
        (
            "ctl_value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x01b\r\n\r\n",
            Refused(400),
        ),
        (
            "del_value",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo: a\x7fb\r\n\r\n",
            Refused(400),
        ),
        (
            "ctl_name",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Foo\x01: a\r\n\r\n",
            Refused(400),
        ),
        (
            "request_line_spaces",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            Refused(400),
        ),
        // RFC 9112 §2.2 lets a recipient take LF for CRLF; the server gets
        // CRLF (the strict upstream refuses anything else).
        (
            "bare_lf",
            b"GET / HTTP/1.1\nHost: h\nX-Foo: a\n\n",
            Forwarded(b""),
        ),
    ])
    .await;
}

/// Regression: a chunked body the client framed wrong got 502 (an
/// upstream failure, counted against the server) instead of 400.
#[tokio::test]
async fn chunked_request_bodies_are_read_strictly() {
    use Expect::*;
    fn chunked(body: &[u8]) -> Vec<u8> {
        let mut r = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        r.extend_from_slice(body);
        r
    }
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "chunk_negative",
            chunked(b"-1\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_0x",
            chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_2_64",
            chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_plus",
            chunked(b"+5\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_size_junk",
            chunked(b"5 x\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_ext_lf",
            chunked(b"5;a\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        ("chunk_bare_lf", chunked(b"5\nhello\n0\n\n"), Refused(400)),
        (
            "chunk_empty_size",
            chunked(&[b"\r\n\r\n".as_slice(), SMUGGLED].concat()),
            Refused(400),
        ),
        (
            "chunk_no_crlf",
            chunked(b"5\r\nhelloXX0\r\n\r\n"),
            Refused(400),
        ),
        (
            "chunk_zeros",
            chunked(b"000000000000000000005\r\nhello\r\n0\r\n\r\n"),
            Forwarded(b"hello"),
        ),
        (
            "chunk_ext",
            chunked(b"5;a=b;c=\"d\"\r\nhello\r\n0;e\r\n\r\n"),
            Forwarded(b"hello"),
        ),
        (
            "chunk_size_ws",
            chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
            Forwarded(b"hello"),
        ),
        (
            "trailer_framing",
            chunked(
                b"5\r\nhello\r\n0\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            Forwarded(b"hello"),
        ),
    ];
    let borrowed: Vec<(&str, &[u8], Expect)> = cases
        .iter()
        .map(|(n, r, e)| (*n, r.as_slice(), *e))
        .collect();
    check_requests(&borrowed).await;

    // None of it counted against the server.
    let (sy, upstream) = proxied(Script::Echo).await;
    let (answer, _) = send_one(sy.addr("web"), &chunked(b"-1\r\nhello\r\n0\r\n\r\n")).await;
    assert_eq!(answer.status, 400);
    let status = sy.status().await;
    assert_eq!(
        endpoint(&status, upstream.addr)["failures_total"],
        0,
        "{status}"
    );
}

#[tokio::test]
async fn one_valid_host_and_the_server_sees_the_one_routed_by() {
    use Expect::*;
    check_requests(&[
        // Regression: both fields went to the server, which may read the
        // other one than Switchyard routed by.
        (
            "dup_host",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            Refused(400),
        ),
        // Regression: a value that is no host went through as it was.
        (
            "bad_host",
            b"GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n",
            Refused(400),
        ),
        (
            "bad_host_space",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            Refused(400),
        ),
        (
            "ipv6_host",
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            Forwarded(b""),
        ),
    ])
    .await;

    let (sy, upstream) = proxied(Script::Echo).await;
    let addr = sy.addr("web");
    // Regression: routed by the target's authority, forwarded with the
    // client's other Host (RFC 9112 §3.2.2: replaced by the authority).
    for request in [
        &b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n"[..],
        b"GET http://user@a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
    ] {
        upstream.clear();
        let (answer, _) = send_one(addr, request).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let seen = upstream.requests();
        assert_eq!(seen[0].target, "/x");
        assert_eq!(seen[0].field("host"), [b"a.example"]);
        assert_eq!(seen[0].field("x-forwarded-host"), [b"a.example"]);
    }
    // HTTP/1.1 without Host (RFC 9112 §3.2 says 400; HAProxy forwards
    // it): the server gets a Host naming itself.
    upstream.clear();
    let (answer, _) = send_one(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        upstream.requests()[0].field("host"),
        [upstream.addr.to_string().as_bytes()]
    );
}

#[tokio::test]
async fn bodies_keep_client_proxy_and_server_in_step() {
    let (sy, upstream) = proxied(Script::Echo).await;
    let addr = sy.addr("web");

    // CL and TE, then a request: read by TE, answered, and the connection
    // closed (RFC 9112 §6.1), so the bytes after it are never a request.
    let mut request =
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    request.extend_from_slice(CHUNKED);
    request.extend_from_slice(SMUGGLED);
    let (answer, mut client) = send_one(addr, &request).await;
    assert_eq!(answer.status, 200);
    client.assert_closed("after both framings").await;
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].field("transfer-encoding"), [b"chunked"]);
    assert!(seen[0].field("content-length").is_empty());

    // Requests pipelined behind a body are answered in order.
    for body in [
        &b"Content-Length: 5\r\n\r\nhello"[..],
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        upstream.clear();
        let mut client = Client::connect(addr).await;
        let mut request = b"POST /1 HTTP/1.1\r\nHost: h\r\n".to_vec();
        request.extend_from_slice(body);
        request.extend_from_slice(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
        client.send(&request).await;
        let first = client.answer(false).await.expect("first answer").1;
        let second = client.answer(false).await.expect("second answer").1;
        assert!(first.text().starts_with("POST /1 "), "{}", first.text());
        assert!(second.text().starts_with("GET /2 "), "{}", second.text());
        let seen = upstream.requests();
        assert_eq!(
            seen.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
            ["/1", "/2"]
        );
        assert_eq!(seen[0].body, b"hello");
    }

    // A GET whose Content-Length body holds a request: one request.
    upstream.clear();
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        SMUGGLED.len()
    )
    .into_bytes();
    request.extend_from_slice(SMUGGLED);
    let (answer, _) = send_one(addr, &request).await;
    assert_eq!(answer.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, SMUGGLED);

    // HTTP/1.0 keep-alive: both requests answered, in order.
    upstream.clear();
    let mut client = Client::connect(addr).await;
    client
        .send(b"GET /1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let first = client.answer(false).await.expect("first answer").1;
    assert!(first.text().starts_with("GET /1 "));
    client.send(b"GET /2 HTTP/1.0\r\nHost: h\r\n\r\n").await;
    let second = client.answer(false).await.expect("second answer").1;
    assert!(second.text().starts_with("GET /2 "));
    client.assert_closed("HTTP/1.0 without keep-alive").await;

    // Expect: 100-continue: the body follows the 100.
    upstream.clear();
    let mut client = Client::connect(addr).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let mut chunk = [0u8; 64];
    let n = timeout(WAIT, client.stream.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    assert!(chunk[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    client.send(b"hello").await;
    let (_, answer) = client.answer(false).await.expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.requests()[0].body, b"hello");
}

#[tokio::test]
async fn an_upstream_answering_before_the_body_leaves_the_rest_a_body() {
    let (sy, upstream) = proxied(Script::Early).await;
    let mut client = Client::connect(sy.addr("web")).await;
    let length = 8 + SMUGGLED.len();
    client
        .send(
            format!("POST /1 HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n12345678")
                .as_bytes(),
        )
        .await;
    let (_, early) = client.answer(false).await.expect("the early answer");
    assert_eq!(early.text(), "early");
    // The rest of the body holds a request, then a real one follows.
    client.send(SMUGGLED).await;
    client.send(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let (_, after) = client.answer(false).await.expect("an answer to /after");
    assert!(after.text().starts_with("GET /after "), "{}", after.text());
    let seen = upstream.requests();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/1", "/after"]);
    assert_eq!(seen[0].body, [&b"12345678"[..], SMUGGLED].concat());
}

// === responses ===

/// What the client must get for `/r1`.
enum Gets {
    /// 502 from the proxy.
    BadGateway,
    /// This status and body, with at most one framing field (the client's
    /// parser refuses anything else).
    Normalised(u16, &'static [u8]),
    /// The head, then the connection cut in the body.
    Cut,
}

/// Sends `/r1` (`first`) and gets `respond` from the upstream, then `/r2`
/// the same way (a POST when `first` is one, so through the same client
/// and pool) on the same connection or, when the proxy closed it, a new
/// one: `/r2` must get its own answer, not what was left of the first.
async fn check_response(
    name: &str,
    respond: Script,
    first: &[u8],
    head: bool,
    gets: Gets,
) -> Upstream {
    let second: &[u8] = if first.starts_with(b"POST") {
        b"POST /r2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    } else {
        b"GET /r2 HTTP/1.1\r\nHost: h\r\n\r\n"
    };
    let (sy, upstream) = proxied(respond).await;
    let addr = sy.addr("web");
    let mut client = Client::connect(addr).await;
    client.send(first).await;
    let answer = client.answer(head).await;
    match (gets, answer) {
        (Gets::BadGateway, Some((_, a))) => assert_eq!(a.status, 502, "{name}: {}", a.text()),
        (Gets::Normalised(status, body), Some((_, a))) => {
            assert_eq!(
                (a.status, a.body.as_slice()),
                (status, body),
                "{name}: {}",
                a.text()
            );
        }
        (Gets::Cut, None) => {}
        (_, answer) => panic!("{name}: got {answer:?}"),
    }
    if client.eof {
        client = Client::connect(addr).await;
    }
    client.send(second).await;
    let answer = match client.answer(false).await {
        Some(answer) => answer.1,
        // Closed as /r2 went out: the proxy had decided to close.
        None => send_one(addr, second).await.0,
    };
    let echoed = &second[..second.iter().position(|&b| b == b'\r').unwrap_or(0)];
    assert!(
        answer.body.starts_with(echoed),
        "{name}: /r2 got {answer:?}"
    );
    upstream
}

const R1: &[u8] = b"GET /r1 HTTP/1.1\r\nHost: h\r\n\r\n";
/// With a body: through hyper's client instead of Switchyard's own.
const POST_R1: &[u8] = b"POST /r1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi";

#[tokio::test]
async fn ambiguous_responses_reach_the_client_with_one_framing() {
    use Gets::*;
    use Script::*;
    const CL_TE: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const CL_LIST: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello";
    // Both paths: our client (GET) and hyper's (POST). Regressions for the
    // POST path: the stale length reached the client (its response cut)
    // and the connection was used again; `5, 5` reached the client.
    for (first, path) in [(R1, "own client"), (POST_R1, "hyper client")] {
        let upstream = check_response(
            path,
            Respond(CL_TE),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        let seen = upstream.requests();
        assert_ne!(
            seen[0].conn, seen[1].conn,
            "{path}: used again after both framings"
        );
        check_response(
            path,
            Respond(CL_LIST),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        check_response(
            path,
            Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\r\n b\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo : a\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\x00b\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\x01b\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-F\x01oo: a\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Foo: a\rb\r\n\r\nhello",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ] {
            let name = format!("{path}: {}", String::from_utf8_lossy(bad));
            check_response(&name, Respond(bad), first, false, BadGateway).await;
        }
        check_response(
            path,
            Respond(b"HTTP/1.1 200 OK\nContent-Length: 5\n\nhello"),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        check_response(
            path,
            Respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0;c\r\n\r\n"),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        // 1xx before the answer: skipped (hyper cannot send them on).
        check_response(
            path,
            Respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        // Bytes after the body are no answer to the next request.
        check_response(
            path,
            Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"),
            first,
            false,
            Normalised(200, b"hello"),
        )
        .await;
        // An invalid chunk size: the response is cut, not completed.
        // Regression for our client: `5 x` was read as 5.
        for size in ["10000000000000000", "-5", "+5", "0x5", "5 x", "5\t;x\r"] {
            let name = format!("{path}: chunk size {size:?}");
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(format!("{size}\r\nhello\r\n0\r\n\r\n").as_bytes());
            check_response(&name, Respond(bytes.leak()), first, false, Cut).await;
        }
        // Valid sizes. Regression for our client: leading zeros beyond 16
        // digits were refused, cutting a valid response.
        for size in ["000000000000000000005", "5 ", "5\t;a=b"] {
            let name = format!("{path}: chunk size {size:?}");
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            bytes.extend_from_slice(format!("{size}\r\nhello\r\n0\r\n\r\n").as_bytes());
            check_response(
                &name,
                Respond(bytes.leak()),
                first,
                false,
                Normalised(200, b"hello"),
            )
            .await;
        }
    }
    // HEAD and 204 carry no body; the bytes sent after them are no answer.
    check_response(
        "HEAD",
        Respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        b"HEAD /r1 HTTP/1.1\r\nHost: h\r\n\r\n",
        true,
        Normalised(200, b""),
    )
    .await;
    check_response(
        "204",
        Respond(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
        R1,
        false,
        Normalised(204, b""),
    )
    .await;
    // `identity` alone codes nothing: the body lasts until the server
    // closes and is sent on with a framing of the proxy's own.
    for (first, path) in [(R1, "own client"), (POST_R1, "hyper client")] {
        let identity =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello world";
        let name = format!("{path}: identity");
        let gets = Normalised(200, b"hello world");
        check_response(&name, RespondClose(identity), first, false, gets).await;
        // Regression: other codings were dropped with the field, so the
        // client got gzip bytes labelled as plain; and `chunked` twice or
        // before another coding was read as once.
        for codings in [
            &b"gzip"[..],
            b"gzip, chunked",
            b"gzip\r\nTransfer-Encoding: chunked",
            b"chunked\r\nTransfer-Encoding: chunked",
            b"chunked, identity",
        ] {
            let mut bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ".to_vec();
            bytes.extend_from_slice(codings);
            bytes.extend_from_slice(b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
            let name = format!("{path}: {}", String::from_utf8_lossy(codings));
            check_response(&name, RespondClose(bytes.leak()), first, false, BadGateway).await;
        }
    }
    // TE in HTTP/1.0 is faulty framing (RFC 9112 §6.1). Our client reads
    // until the server closes and sends the bytes on as they came; hyper's
    // refuses the response.
    check_response(
        "te_http10",
        RespondClose(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        R1,
        false,
        Normalised(200, b"5\r\nhello\r\n0\r\n\r\n"),
    )
    .await;
    check_response(
        "te_http10",
        RespondClose(
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        POST_R1,
        false,
        BadGateway,
    )
    .await;
}

#[tokio::test]
async fn interim_responses_before_101_open_the_tunnel() {
    let (sy, _upstream) = proxied(Script::RespondTunnel(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ))
    .await;
    let mut client = Client::connect(sy.addr("web")).await;
    client
        .send(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
    let (interim, answer) = client.answer(false).await.expect("an answer");
    assert_eq!((interim.as_slice(), answer.status), (&[][..], 101));
    client.send(b"ping").await;
    let deadline = Instant::now() + WAIT;
    while client.buf.len() < 4 {
        client.fill(deadline).await;
    }
    assert_eq!(client.buf, b"ping");
}
