//! A go-micro node's mDNS side, for tests: what go-micro's
//! `util/mdns` server and client put on the wire, written from their source
//! (not from Switchyard's), with its own TXT encoding.
//!
//! - [`Node`]: go-micro's server for one registered node: answers a browse
//!   (PTR `greeter.micro.`) with PTR, SRV, A and TXT to the asker's
//!   address, echoing the question; announces SRV, A and TXT (no PTR)
//!   three times at start; says goodbye with the same records at TTL 0.
//! - [`browse`]: go-micro's `GetService`: a PTR query from an ephemeral
//!   port, answers whose question is not ours ignored, entries complete
//!   once they have an address, a port and a TXT record.
//! - [`Listener`]: go-micro's watcher: everything heard on port 5353.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// go-micro's TXT: the hex of zlib(JSON of mdnsTxt), in strings of 255.
pub fn encode_txt(
    service: &str,
    version: &str,
    metadata: &BTreeMap<String, String>,
) -> Vec<String> {
    // encoding/json's output for mdnsTxt, fields in declaration order.
    let json = serde_json::json!({
        "Metadata": metadata,
        "Service": service,
        "Version": version,
        "Endpoints": null,
    });
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(json.to_string().as_bytes()).unwrap();
    let hex = hex::encode(z.finish().unwrap());
    hex.as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect()
}

/// The JSON inside go-micro TXT strings.
pub fn decode_txt(strings: &[Box<[u8]>]) -> serde_json::Value {
    let joined: Vec<u8> = strings.iter().flat_map(|s| s.iter().copied()).collect();
    let compressed = hex::decode(joined).expect("TXT is hex");
    let mut json = String::new();
    flate2::read::ZlibDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .expect("TXT is zlib");
    serde_json::from_str(&json).expect("TXT is JSON")
}

/// Bound to 0.0.0.0:5353 beside the others, in the group on loopback (the
/// namespace's only interface).
fn mdns_socket() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5353)).into())
        .unwrap();
    s.join_multicast_v4(&GROUP, &LOOPBACK).unwrap();
    s.set_multicast_if_v4(&LOOPBACK).unwrap();
    s.set_multicast_loop_v4(true).unwrap();
    s.set_nonblocking(true).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

fn ephemeral_socket() -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())
        .unwrap();
    s.set_multicast_if_v4(&LOOPBACK).unwrap();
    s.set_multicast_loop_v4(true).unwrap();
    s.set_nonblocking(true).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// One go-micro node's records (its MDNSService zone).
#[derive(Clone)]
struct Zone {
    service: String,
    instance: String,
    host: String,
    port: u16,
    txt: Vec<String>,
}

impl Zone {
    fn srv_a_txt(&self, ttl: u32) -> Vec<Record> {
        vec![
            Record::from_rdata(
                name(&self.instance),
                ttl,
                RData::SRV(SRV::new(10, 1, self.port, name(&self.host))),
            ),
            Record::from_rdata(name(&self.host), ttl, RData::A(A(LOOPBACK))),
            Record::from_rdata(
                name(&self.instance),
                ttl,
                RData::TXT(TXT::new(self.txt.clone())),
            ),
        ]
    }

    /// What go-micro's zone answers for a question.
    fn records(&self, q: &Query, ttl: u32) -> Vec<Record> {
        let asked = q.name().to_ascii();
        let kind = q.query_type();
        if asked == self.service && matches!(kind, RecordType::PTR | RecordType::ANY) {
            let mut r = vec![Record::from_rdata(
                name(&self.service),
                ttl,
                RData::PTR(PTR(name(&self.instance))),
            )];
            r.extend(self.srv_a_txt(ttl));
            r
        } else if asked == self.instance && kind == RecordType::ANY {
            self.srv_a_txt(ttl)
        } else {
            Vec::new()
        }
    }
}

fn response(id: u16, queries: Vec<Query>, answers: Vec<Record>) -> Vec<u8> {
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.authoritative = true;
    m.queries = queries;
    m.answers = answers;
    m.to_vec().unwrap()
}

/// A go-micro node's mDNS server.
pub struct Node {
    zone: Zone,
    ttl: u32,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<UdpSocket>,
}

impl Node {
    /// Registers node `id` of `service` on port `port` with records of
    /// `ttl` seconds (go-micro's are 120).
    pub async fn start(service: &str, id: &str, port: u16, version: &str, ttl: u32) -> Self {
        let host = format!("{}.", hostname());
        let metadata = BTreeMap::from([
            ("protocol".to_string(), "http".to_string()),
            ("registry".to_string(), "mdns".to_string()),
        ]);
        let zone = Zone {
            service: format!("{service}.micro."),
            instance: format!("{id}.{service}.micro."),
            host,
            port,
            txt: encode_txt(service, version, &metadata),
        };
        let socket = mdns_socket();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let z = zone.clone();
        let task = tokio::spawn(async move {
            let group = SocketAddr::from(SocketAddrV4::new(GROUP, 5353));
            // go-micro's announcement: the instance's ANY records.
            let announcement = response(0, Vec::new(), z.srv_a_txt(ttl));
            let mut announce_at = [0u64, 1, 3].into_iter().map(Duration::from_secs);
            let started = tokio::time::Instant::now();
            let mut next = announce_at.next();
            let mut buf = vec![0u8; 9000];
            loop {
                let wait = next.map_or(Duration::from_secs(3600), |at| {
                    (started + at).saturating_duration_since(tokio::time::Instant::now())
                });
                tokio::select! {
                    _ = &mut stopped => return socket,
                    () = tokio::time::sleep(wait) => {
                        socket.send_to(&announcement, group).await.unwrap();
                        next = announce_at.next();
                    }
                    got = socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = got else { continue };
                        let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                        if query.metadata.message_type != MessageType::Query {
                            continue;
                        }
                        let answers: Vec<Record> =
                            query.queries.iter().flat_map(|q| z.records(q, ttl)).collect();
                        if !answers.is_empty() {
                            // go-micro sends even its multicast answer to
                            // the asker's address, question included.
                            let reply = response(0, query.queries.clone(), answers);
                            let _ = socket.send_to(&reply, from).await;
                        }
                    }
                }
            }
        });
        Self {
            zone,
            ttl,
            stop: Some(stop),
            task,
        }
    }

    /// go-micro's Deregister: the records again at TTL 0.
    pub async fn goodbye(mut self) {
        let _ = self.ttl;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let socket = (&mut self.task).await.unwrap();
        let bye = response(0, Vec::new(), self.zone.srv_a_txt(0));
        socket
            .send_to(&bye, SocketAddr::from(SocketAddrV4::new(GROUP, 5353)))
            .await
            .unwrap();
    }

    /// The process dies: no goodbye, no more answers.
    pub fn vanish(self) {
        self.task.abort();
    }
}

/// One node as go-micro's `GetService` sees it.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: String,
    pub addr: SocketAddr,
    pub txt: serde_json::Value,
}

/// go-micro's `GetService(service)`: one PTR query, answers collected for
/// `window`.
pub async fn browse(service: &str, window: Duration) -> Vec<Found> {
    let socket = ephemeral_socket();
    let question = Query::query(name(&format!("{service}.micro.")), RecordType::PTR);
    let mut m = Message::new(0, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = false;
    m.add_query(question.clone());
    socket
        .send_to(
            &m.to_vec().unwrap(),
            SocketAddr::from(SocketAddrV4::new(GROUP, 5353)),
        )
        .await
        .unwrap();
    let mut found: Vec<Found> = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    let mut buf = vec![0u8; 9000];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let Ok(reply) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        // go-micro's query() drops answers to other questions.
        if reply.queries.first().map(|q| q.name()) != Some(question.name()) {
            continue;
        }
        let records: Vec<&Record> = reply.answers.iter().chain(&reply.additionals).collect();
        for srv in records.iter().filter_map(|r| match &r.data {
            RData::SRV(s) if r.ttl > 0 => Some((r.name.to_ascii(), s)),
            _ => None,
        }) {
            let (instance, srv) = srv;
            let ip = records.iter().find_map(|r| match &r.data {
                RData::A(a) if r.name == srv.target => Some(a.0),
                _ => None,
            });
            let txt = records.iter().find_map(|r| match &r.data {
                RData::TXT(t) if r.name.to_ascii() == instance => Some(decode_txt(&t.txt_data)),
                _ => None,
            });
            let (Some(ip), Some(txt)) = (ip, txt) else {
                continue;
            };
            let id = instance
                .strip_suffix(&format!(".{service}.micro."))
                .unwrap_or(&instance)
                .to_string();
            if !found.iter().any(|f| f.id == id) {
                found.push(Found {
                    id,
                    addr: SocketAddr::new(ip.into(), srv.port),
                    txt,
                });
            }
        }
    }
    found
}

/// go-micro's watcher: every response heard on port 5353.
pub struct Listener {
    socket: UdpSocket,
}

impl Listener {
    pub fn start() -> Self {
        Self {
            socket: mdns_socket(),
        }
    }

    /// Waits (up to `within`) for a goodbye (SRV at TTL 0) of `instance`.
    pub async fn goodbye_of(&self, instance: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; 9000];
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf)).await
        {
            let Ok(m) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if m.metadata.message_type == MessageType::Response
                && m.answers.iter().any(|r| {
                    matches!(r.data, RData::SRV(_))
                        && r.ttl == 0
                        && r.name.to_ascii().eq_ignore_ascii_case(instance)
                })
            {
                return true;
            }
        }
        false
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
