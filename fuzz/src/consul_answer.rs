//! Consul's answers: the JSON bodies a watch decodes
//! (`WatchKey::decode`: KV entries with base64 values, key lists, health
//! entries, the catalog) and the reply meta the client reads from the
//! headers (`X-Consul-Index`, `X-Consul-KnownLeader`,
//! `X-Consul-LastContact`, `Age`) and the status (ACL, no leader, rate
//! limit), read by `ConsulClient` from a server on loopback.
//!
//! Input: one selector byte (which query, and the status), one line of
//! header values `index leader last-contact age`, then the body.
//!
//! Checked: never a panic; decoded data is sorted as promised and
//! survives the state file (JSON out and back in, unchanged); the index
//! read is the header's number, or 0 when it is not one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchyard::config::ConsulSpec;
use switchyard::discovery::consul::{ConsulClient, WatchData, WatchKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const STATUSES: [u16; 8] = [200, 200, 200, 404, 403, 429, 500, 503];

pub struct Harness {
    rt: Runtime,
    client: ConsulClient,
    /// The raw HTTP answer the server sends next.
    answer: Arc<Mutex<Vec<u8>>>,
}

impl Harness {
    pub fn start() -> Self {
        let rt = super::runtime();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let addr = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind consul");
            let addr = listener.local_addr().expect("consul addr");
            tokio::spawn(serve(listener, answer.clone()));
            addr
        });
        let client = rt.block_on(async { client(addr) });
        Self { rt, client, answer }
    }

    pub fn run(&mut self, data: &[u8]) {
        let Some((&selector, rest)) = data.split_first() else {
            return;
        };
        let (meta, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let key = key_of(selector);
        check_decode(&key, body);
        check_decode(&key, &body[..0]);

        let mut values = meta.split(|&b| b == b' ').map(|v| {
            v.iter()
                .copied()
                .filter(|b| !matches!(b, b'\r' | b'\n' | 0))
        });
        let mut field = |name: &str, out: &mut Vec<u8>| {
            if let Some(v) = values.next() {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend(v);
                out.extend_from_slice(b"\r\n");
            }
        };
        let status = STATUSES[usize::from(selector >> 5)];
        let mut answer = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n").into_bytes();
        let mut index_field = Vec::new();
        field("x-consul-index", &mut index_field);
        answer.extend_from_slice(&index_field);
        field("x-consul-knownleader", &mut answer);
        field("x-consul-lastcontact", &mut answer);
        field("age", &mut answer);
        answer.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        answer.extend_from_slice(body);
        *self.answer.lock().unwrap() = answer;

        let (path, query) = key.request();
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = self.rt.block_on(self.client.get(&path, &query, 0));
        if let Ok(reply) = reply {
            // What a lenient reader takes as the index: the value, trimmed,
            // when it is a number and the field is a valid header.
            let sent = index_field
                .strip_prefix(b"x-consul-index: ")
                .and_then(|v| std::str::from_utf8(v.strip_suffix(b"\r\n")?).ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(sent) = sent {
                assert_eq!(reply.index, sent, "X-Consul-Index read wrong");
            }
            let body = (reply.status != 404).then_some(&reply.body[..]);
            let _ = key.decode(body);
        }
    }
}

/// A client with every `[consul]` default but the address, built the way a
/// user's config builds it.
fn client(addr: SocketAddr) -> ConsulClient {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, format!("[consul]\naddress = \"http://{addr}\"\n")).expect("config");
    let config = switchyard::config::load(&path).expect("a [consul] section alone is valid");
    let spec: &ConsulSpec = config.consul.as_ref().expect("[consul] was given");
    ConsulClient::new(spec).expect("consul client")
}

fn key_of(selector: u8) -> WatchKey {
    match selector % 5 {
        0 => WatchKey::Key("app/a".into()),
        1 => WatchKey::Prefix("app/".into()),
        2 => WatchKey::Keys {
            prefix: "app/".into(),
            separator: Some("/".into()),
        },
        3 => WatchKey::Service {
            name: "web".into(),
            tag: None,
            datacenter: None,
            passing_only: true,
        },
        _ => WatchKey::Catalog { datacenter: None },
    }
}

/// A body decodes or is refused; decoded data is in its promised order
/// and comes back unchanged from the state file's JSON.
fn check_decode(key: &WatchKey, body: &[u8]) {
    let Ok(data) = key.decode(Some(body)) else {
        return;
    };
    match &data {
        WatchData::Kv(pairs) => assert!(pairs.windows(2).all(|w| w[0].key <= w[1].key)),
        WatchData::Keys(keys) => assert!(keys.is_sorted()),
        WatchData::Service(list) => {
            assert!(
                list.windows(2)
                    .all(|w| (&w[0].node, &w[0].id) <= (&w[1].node, &w[1].id))
            );
            assert!(list.iter().all(|i| i.weight >= 1));
        }
        WatchData::Catalog(map) => {
            for tags in map.values() {
                assert!(
                    tags.windows(2).all(|w| w[0] < w[1]),
                    "tags not sorted and unique"
                );
            }
        }
    }
    let saved = serde_json::to_string(&data).expect("watch data serializes");
    let restored: WatchData = serde_json::from_str(&saved).expect("saved watch data reads back");
    assert_eq!(restored, data, "the state file changed the data");
}

/// A one-answer-per-connection HTTP server: reads a request head, writes
/// the current answer, closes.
async fn serve(listener: TcpListener, answer: Arc<Mutex<Vec<u8>>>) {
    while let Ok((mut socket, _)) = listener.accept().await {
        let answer = answer.lock().unwrap().clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut chunk = [0u8; 2048];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut chunk).await {
                    Ok(n) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let _ = socket.write_all(&answer).await;
            let _ = socket.shutdown().await;
        });
    }
}
