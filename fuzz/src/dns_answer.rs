//! DNS answers, as Switchyard reads them: a nameserver on loopback (UDP,
//! and TCP for truncated answers) sends the input's bytes as its reply to
//! every query, and Switchyard's own watcher (`discovery::dns`, hickory's
//! resolver underneath) looks up a required A/AAAA name and an SRV name
//! whose targets it resolves in turn, exactly as it does for a backend's
//! servers.
//!
//! Input: one flags byte, then the reply. Flags bit 0 clear: the reply is
//! framed for the query it answers, so the fuzzer spends its time past the
//! header: its first 12 bytes are the header (the query's ID put in, QR
//! set, opcode QUERY, one question), the query's question follows, then
//! the rest of the input (answer, authority and additional records). Bit
//! 0 set: the input is the whole reply, only the ID replaced.
//!
//! Checked: hickory-proto decodes the bytes or refuses them, never a
//! panic; a reply that decodes is looked up end to end: an answer the
//! watcher keeps is non-empty, sorted, without duplicates, with the port
//! and weight its kind promises (SRV: both, weight >= 1; A/AAAA: neither),
//! and `/status` shows it; a required name with no answer fails the
//! config with an error that names it, and only then.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::Message;
use switchyard::config::{self, Config, QueryKind};
use switchyard::discovery::dns::DnsWatcher;
use switchyard::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// The name the config requires, and the SRV name it also lists.
const REQUIRED: &str = "web.fuzz";
const SRV: &str = "_http._tcp.web.fuzz";

/// What the nameserver answers: the input's reply, and whether it is
/// framed for the query (flags bit 0 clear).
#[derive(Default)]
struct Reply {
    bytes: Vec<u8>,
    framed: bool,
}

pub struct Harness {
    rt: Runtime,
    config: Config,
    metrics: Metrics,
    reply: Arc<Mutex<Reply>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub fn start() -> Self {
        let rt = super::runtime();
        let reply = Arc::new(Mutex::new(Reply::default()));
        let addr = rt.block_on(nameserver(reply.clone()));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config_text(addr)).expect("write config");
        let config = config::load(&path).expect("the dns_answer config is valid");
        Self {
            rt,
            config,
            metrics: Metrics::new().expect("metrics"),
            reply,
            _dir: dir,
        }
    }

    pub fn run(&mut self, data: &[u8]) {
        let Some((&flags, bytes)) = data.split_first() else {
            return;
        };
        // Decoding is hickory-proto's: it must refuse bad bytes, not panic.
        if let Ok(message) = Message::from_vec(bytes) {
            let _ = message.to_vec();
        }
        let framed = flags & 1 == 0;
        // A reply the resolver cannot decode is dropped, and the lookup
        // waits for its timeout: the bytes checked above are all there is
        // to learn from it, so it is not looked up end to end.
        let sample = reply_to(SAMPLE_QUERY, bytes, framed);
        if Message::from_vec(&sample).is_err() {
            return;
        }
        *self.reply.lock().unwrap() = Reply {
            bytes: bytes.to_vec(),
            framed,
        };
        self.rt.block_on(lookup(&self.config, &self.metrics));
    }
}

/// One watcher's first lookups of the config's names, and the checks.
async fn lookup(config: &Config, metrics: &Metrics) {
    let (changed, _changes) = mpsc::unbounded_channel();
    let mut watcher = DnsWatcher::new(changed, metrics.dns_lookups.clone());
    let (plan, errors) = match watcher.prepare(config).await {
        Ok(plan) => (plan, Vec::new()),
        Err((plan, errors)) => (plan, errors),
    };
    let names = watcher.names();
    assert_eq!(names.len(), 2, "the config's two names are watched");
    for name in &names {
        let status = name.status();
        let answer = name.answer();
        let shown = status.addresses.len();
        match answer {
            None => assert_eq!(shown, 0, "/status shows addresses of no answer"),
            Some(answer) => {
                let records = &answer.records;
                assert!(!records.is_empty(), "an empty answer kept");
                assert!(
                    records.windows(2).all(|w| w[0] < w[1]),
                    "records not sorted and unique: {records:?}"
                );
                match name.query.kind {
                    QueryKind::Srv => assert!(
                        records
                            .iter()
                            .all(|r| r.port.is_some() && r.weight.is_some_and(|w| w >= 1)),
                        "an SRV record without port or weight: {records:?}"
                    ),
                    QueryKind::Addresses => assert!(
                        records
                            .iter()
                            .all(|r| r.port.is_none() && r.weight.is_none()),
                        "an address record with a port or weight: {records:?}"
                    ),
                }
                assert_eq!(shown, records.len(), "/status shows another answer");
            }
        }
        if &*name.query.name == REQUIRED {
            let named = errors
                .iter()
                .any(|e| e.starts_with("required server name") && e.contains(REQUIRED));
            assert_eq!(
                name.answer().is_none(),
                named,
                "a required name's answer and the errors disagree: {errors:?}"
            );
        }
    }
    watcher.abort(plan);
}

fn config_text(nameserver: SocketAddr) -> String {
    format!(
        r#"
[resolver]
nameservers = ["{nameserver}"]
timeout = "250ms"
attempts = 1

[[listeners]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "app"

[[backends]]
name = "app"
servers = [{{ address = "{REQUIRED}:80", required = true }}, "{SRV}"]
"#
    )
}

/// A query as hickory sends one (ID 0x1234, recursion desired, one
/// question `web.fuzz. IN A`, an EDNS OPT record), to see whether a reply
/// decodes before asking the resolver.
const SAMPLE_QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\
\x03web\x04fuzz\x00\x00\x01\x00\x01\
\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";

/// The reply to `query`: the input's `bytes`, with the query's ID, and
/// when `framed`, the header made a response to one question followed by
/// the query's question.
fn reply_to(query: &[u8], bytes: &[u8], framed: bool) -> Vec<u8> {
    let mut reply = bytes.to_vec();
    if !framed {
        if reply.len() >= 2 && query.len() >= 2 {
            reply[..2].copy_from_slice(&query[..2]);
        }
        return reply;
    }
    let mut header = [0u8; 12];
    let n = bytes.len().min(12);
    header[..n].copy_from_slice(&bytes[..n]);
    header[..2].copy_from_slice(query.get(..2).unwrap_or(&[0, 0]));
    // QR (response), opcode 0 (QUERY); the other flag bits are the input's.
    header[2] = (header[2] | 0x80) & !0x78;
    header[4..6].copy_from_slice(&[0, 1]);
    let mut reply = header.to_vec();
    reply.extend_from_slice(question(query));
    reply.extend_from_slice(bytes.get(12..).unwrap_or(&[]));
    reply
}

/// The first question of a query: its name (labels, uncompressed, as a
/// resolver writes them), type and class.
fn question(query: &[u8]) -> &[u8] {
    let body = query.get(12..).unwrap_or(&[]);
    let mut at = 0;
    while let Some(&len) = body.get(at) {
        at += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    &body[..(at + 4).min(body.len())]
}

/// The nameserver: UDP and TCP on one port (a resolver retries a
/// truncated answer over TCP on the same port), every query answered
/// with the current reply.
async fn nameserver(reply: Arc<Mutex<Reply>>) -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns udp");
        let addr = udp.local_addr().expect("dns addr");
        // The port may be taken for TCP: then try another.
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().expect("dns addr");
    let answer = {
        let reply = reply.clone();
        move |query: &[u8]| {
            let r = reply.lock().unwrap();
            reply_to(query, &r.bytes, r.framed)
        }
    };
    let udp_answer = answer.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&udp_answer(&buf[..n]), peer).await;
        }
    });
    tokio::spawn(async move {
        while let Ok((socket, _)) = tcp.accept().await {
            let answer = answer.clone();
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(2),
                serve_tcp(socket, answer),
            ));
        }
    });
    addr
}

/// Answers length-prefixed queries on one TCP connection until it closes.
async fn serve_tcp(
    mut socket: tokio::net::TcpStream,
    answer: impl Fn(&[u8]) -> Vec<u8>,
) -> std::io::Result<()> {
    loop {
        let len = usize::from(socket.read_u16().await?);
        let mut query = vec![0u8; len];
        socket.read_exact(&mut query).await?;
        let reply = answer(&query);
        let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        socket.write_u16(len).await?;
        socket.write_all(&reply[..usize::from(len)]).await?;
    }
}
