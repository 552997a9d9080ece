//! An authoritative DNS server over UDP whose records tests change while
//! Switchyard runs, and which counts the queries it receives.
//!
//! Messages are parsed and written by hickory-proto; the zone is a map the
//! test edits. A name that is in the zone with other record types answers
//! NOERROR with no records (NODATA); a name not in the zone answers
//! NXDOMAIN, as a real authoritative server would. A silent name gets no
//! reply at all, as behind a nameserver that went down: the client times out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use super::AbortOnDrop;

/// How the server answers for one name.
#[derive(Debug, Clone)]
pub enum Answer {
    Records {
        ttl: u32,
        addresses: Vec<IpAddr>,
        srv: Vec<SrvRecord>,
    },
    ServFail,
    NxDomain,
    /// Queries are counted and dropped unanswered.
    Silent,
}

#[derive(Debug, Clone)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

#[derive(Default)]
struct Zone {
    names: HashMap<String, Answer>,
    /// Every query received: (name, type, when).
    queries: Vec<(String, RecordType, Instant)>,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    _task: AbortOnDrop,
}

/// Zone keys are lowercase and fully qualified, as queries arrive.
fn key(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

impl DnsServer {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let served = zone.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(response) = answer(&served, &request) else {
                    continue;
                };
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Self {
            addr,
            zone,
            _task: AbortOnDrop(task),
        }
    }

    fn set(&self, name: &str, answer: Answer) {
        self.zone.lock().unwrap().names.insert(key(name), answer);
    }

    /// A and AAAA records for `name`.
    pub fn set_addresses(&self, name: &str, addresses: &[IpAddr], ttl: u32) {
        self.set(
            name,
            Answer::Records {
                ttl,
                addresses: addresses.to_vec(),
                srv: Vec::new(),
            },
        );
    }

    pub fn set_srv(&self, name: &str, records: Vec<SrvRecord>, ttl: u32) {
        self.set(
            name,
            Answer::Records {
                ttl,
                addresses: Vec::new(),
                srv: records,
            },
        );
    }

    pub fn set_servfail(&self, name: &str) {
        self.set(name, Answer::ServFail);
    }

    /// Queries for `name` go unanswered until it is set again; what it
    /// answered before is forgotten.
    pub fn set_silent(&self, name: &str) {
        self.set(name, Answer::Silent);
    }

    /// The name stops existing.
    pub fn remove(&self, name: &str) {
        self.zone.lock().unwrap().names.remove(&key(name));
    }

    /// Queries received for `name` (any type).
    pub fn queries(&self, name: &str) -> usize {
        let name = key(name);
        let zone = self.zone.lock().unwrap();
        zone.queries.iter().filter(|(n, _, _)| *n == name).count()
    }

    /// When the first query of one type for `name` arrived at or after `since`.
    pub fn first_query_since(
        &self,
        name: &str,
        kind: RecordType,
        since: Instant,
    ) -> Option<Instant> {
        let name = key(name);
        let zone = self.zone.lock().unwrap();
        zone.queries
            .iter()
            .find(|(n, t, at)| *n == name && *t == kind && *at >= since)
            .map(|(_, _, at)| *at)
    }

    /// Queries for `name` of one type received at or after `since`.
    pub fn queries_since(&self, name: &str, kind: RecordType, since: Instant) -> usize {
        let name = key(name);
        let zone = self.zone.lock().unwrap();
        zone.queries
            .iter()
            .filter(|(n, t, at)| *n == name && *t == kind && *at >= since)
            .count()
    }
}

/// The reply to `request`; `None` to drop it unanswered.
fn answer(zone: &Mutex<Zone>, request: &Message) -> Option<Message> {
    let id = request.metadata.id;
    let mut response = Message::new(id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return Some(response);
    };
    response.add_query(query.clone());
    let name = query.name.to_ascii().to_ascii_lowercase();
    let mut zone = zone.lock().unwrap();
    zone.queries
        .push((name.clone(), query.query_type, Instant::now()));
    match zone.names.get(&name) {
        None | Some(Answer::NxDomain) => {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Some(Answer::ServFail) => {
            response.metadata.response_code = ResponseCode::ServFail;
        }
        Some(Answer::Silent) => return None,
        Some(Answer::Records {
            ttl,
            addresses,
            srv,
        }) => {
            let owner = query.name.clone();
            let records: Vec<Record> = match query.query_type {
                RecordType::A => addresses
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                        IpAddr::V6(_) => None,
                    })
                    .map(|rdata| Record::from_rdata(owner.clone(), *ttl, rdata))
                    .collect(),
                RecordType::AAAA => addresses
                    .iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                        IpAddr::V4(_) => None,
                    })
                    .map(|rdata| Record::from_rdata(owner.clone(), *ttl, rdata))
                    .collect(),
                RecordType::SRV => srv
                    .iter()
                    .filter_map(|s| {
                        let target = Name::from_ascii(key(&s.target)).ok()?;
                        Some(RData::SRV(SRV::new(s.priority, s.weight, s.port, target)))
                    })
                    .map(|rdata| Record::from_rdata(owner.clone(), *ttl, rdata))
                    .collect(),
                _ => Vec::new(),
            };
            response.add_answers(records);
        }
    }
    Some(response)
}
