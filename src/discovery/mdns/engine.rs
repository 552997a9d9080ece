//! go-micro's side of mDNS: a querier and a responder for the `micro.`
//! domain, in one task with two sockets.
//!
//! mdns-sd only takes service types ending in `._tcp.local.`, and go-micro
//! names its services `greeter.micro.`, so this side builds and parses its
//! packets with hickory-proto and does what go-micro's `util/mdns` does on
//! the wire:
//!
//! - queries (PTR `greeter.micro.`) go out from an ephemeral port, as
//!   go-micro's client sends them: a go-micro server answers the source
//!   address by unicast, which on port 5353 could land in another
//!   process's socket;
//! - every response heard on 224.0.0.251:5353 (answers, announcements,
//!   goodbyes) or on the query port is learned from: SRV, TXT and the A
//!   records that came in the same packet make an instance; a record
//!   with TTL 0 is a goodbye and removes it;
//! - a watched service is asked for three times at start, then every
//!   `query_interval`, and again at 80, 85, 90 and 95 % of an instance's
//!   TTL (RFC 6762 §5.2); an instance whose records were not renewed goes
//!   at expiry; one whose endpoint refused a connect is asked for at once
//!   and dropped unless it answers within [`VERIFY_TIMEOUT`] (§10.4);
//! - `[[register]]` services are announced (three unsolicited responses,
//!   then every `interval`), queries for them answered (by unicast to a
//!   querier on another port than 5353, echoing its question as go-micro's
//!   client requires), and withdrawn with a goodbye (TTL 0).
//!
//! IPv4 only: go-micro prefers its A records, and one family keeps a
//! shared network's traffic small.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::gomicro::{self, ServiceTxt};
use super::watch::{MdnsInstance, MdnsWatch};
use crate::config::MdnsTarget;

pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
pub const PORT: u16 = 5353;
/// How long an instance whose endpoint refused a connect has to answer a
/// query. RFC 6762 §10.4 waits ten seconds for a cache's own doubts; a
/// refused connect is stronger evidence, and traffic waits on it.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries at start, one second apart then two, before `query_interval`.
const START_QUERIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// At most one query per service this often (refreshes and failures
/// coalesce).
const MIN_QUERY_GAP: Duration = Duration::from_millis(900);
/// Unsolicited announcements after a registration, one second apart then
/// two, as go-micro's server sends them; then every `interval`.
const ANNOUNCE_GAPS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];
/// Largest packet read.
const MAX_PACKET: usize = 9000;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no usable IPv4 interface for mDNS{0}")]
    NoInterface(String),
    #[error("listing network interfaces: {0}")]
    Interfaces(std::io::Error),
    #[error("mDNS socket: {0}")]
    Socket(std::io::Error),
}

/// A service announced the go-micro way.
#[derive(Debug, Clone, PartialEq)]
pub struct Announcement {
    pub id: String,
    pub service: String,
    pub ips: Vec<Ipv4Addr>,
    pub port: u16,
    pub txt: ServiceTxt,
    /// Unsolicited announcements repeat this often.
    pub every: Duration,
}

enum Command {
    Watch(Arc<MdnsWatch>),
    Unwatch(Arc<MdnsWatch>),
    Announce(Box<Announcement>),
    /// Sends the goodbye; `done` is told once it is on the wire.
    Withdraw {
        id: String,
        done: Option<oneshot::Sender<()>>,
    },
}

/// The handle of the engine task; the task ends when the handle and every
/// [`Announced`] guard are dropped, after the goodbyes they queued.
pub struct Engine {
    commands: mpsc::UnboundedSender<Command>,
    wake: Arc<Notify>,
    /// The IPv4 addresses of the interfaces used, loopback last.
    pub addresses: Vec<Ipv4Addr>,
}

/// Keeps a service announced; dropping it sends the goodbye.
pub struct Announced {
    id: String,
    commands: mpsc::UnboundedSender<Command>,
}

impl Announced {
    /// Sends the goodbye and waits until it is on the wire (or the engine
    /// is gone).
    pub async fn withdraw(self) {
        let (done, sent) = oneshot::channel();
        let _ = self.commands.send(Command::Withdraw {
            id: self.id.clone(),
            done: Some(done),
        });
        let _ = sent.await;
    }
}

impl Drop for Announced {
    fn drop(&mut self) {
        // A second goodbye after `withdraw` finds nothing and sends none.
        let _ = self.commands.send(Command::Withdraw {
            id: std::mem::take(&mut self.id),
            done: None,
        });
    }
}

/// The interfaces `spec` selects: (name, IPv4 address).
pub fn interfaces(
    wanted: &[crate::config::MdnsInterface],
) -> Result<Vec<(String, Ipv4Addr)>, EngineError> {
    use crate::config::MdnsInterface;
    let all = if_addrs::get_if_addrs().map_err(EngineError::Interfaces)?;
    let mut found: Vec<(String, Ipv4Addr)> = all
        .iter()
        .filter(|i| i.is_oper_up() && !i.is_p2p())
        .filter_map(|i| match i.ip() {
            IpAddr::V4(ip) => Some((i.name.clone(), ip)),
            IpAddr::V6(_) => None,
        })
        .filter(|(name, ip)| {
            wanted.is_empty()
                || wanted.iter().any(|w| match w {
                    MdnsInterface::Name(n) => n == name,
                    MdnsInterface::Addr(a) => a == ip,
                })
        })
        .collect();
    found.sort_by_key(|(_, ip)| (ip.is_loopback(), *ip));
    found.dedup_by_key(|(_, ip)| *ip);
    if found.is_empty() {
        let which = if wanted.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = wanted
                .iter()
                .map(|w| match w {
                    MdnsInterface::Name(n) => n.clone(),
                    MdnsInterface::Addr(a) => a.to_string(),
                })
                .collect();
            format!(
                " among {} (is it up, with an IPv4 address?)",
                names.join(", ")
            )
        };
        return Err(EngineError::NoInterface(which));
    }
    Ok(found)
}

impl Engine {
    /// Binds the sockets on `addresses` and starts the task; `changed`
    /// hears each watched service whose instances changed.
    pub fn start(
        addresses: Vec<Ipv4Addr>,
        domain: String,
        query_interval: Duration,
        ttl: Duration,
        changed: mpsc::UnboundedSender<MdnsTarget>,
    ) -> Result<Self, EngineError> {
        let multicast = multicast_socket(&addresses).map_err(EngineError::Socket)?;
        let unicast = query_socket().map_err(EngineError::Socket)?;
        let (commands, rx) = mpsc::unbounded_channel();
        let wake = Arc::new(Notify::new());
        let task = Task {
            domain,
            ttl: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            query_interval,
            addresses: addresses.clone(),
            hostname: format!("{}.", crate::discovery::register::hostname()),
            watches: Vec::new(),
            cache: HashMap::new(),
            hosts: HashMap::new(),
            announced: HashMap::new(),
            changed,
            wake: wake.clone(),
        };
        tokio::spawn(task.run(multicast, unicast, rx));
        Ok(Self {
            commands,
            wake,
            addresses,
        })
    }

    /// Shared by the engine's watches: wakes the task for their connect
    /// failures.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub fn watch(&self, watch: Arc<MdnsWatch>) {
        let _ = self.commands.send(Command::Watch(watch));
    }

    pub fn unwatch(&self, watch: Arc<MdnsWatch>) {
        let _ = self.commands.send(Command::Unwatch(watch));
    }

    /// Announces `service` until the guard is dropped.
    pub fn announce(&self, announcement: Announcement) -> Announced {
        let id = announcement.id.clone();
        let _ = self
            .commands
            .send(Command::Announce(Box::new(announcement)));
        Announced {
            id,
            commands: self.commands.clone(),
        }
    }
}

/// Bound to 0.0.0.0:5353 beside other mDNS stacks (SO_REUSEADDR and
/// SO_REUSEPORT, as go-micro, Avahi and mdns-sd bind it), in the group on
/// every interface.
fn multicast_socket(addresses: &[Ipv4Addr]) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    let mut joined = 0;
    let mut last_error = None;
    for ip in addresses {
        match socket.join_multicast_v4(&GROUP, ip) {
            Ok(()) => joined += 1,
            Err(error) => {
                tracing::warn!(interface.addr = %ip, %error, "Cannot join the mDNS group on an interface");
                last_error = Some(error);
            }
        }
    }
    if joined == 0 {
        return Err(last_error.unwrap_or_else(|| std::io::Error::other("no interface")));
    }
    prepare_sender(&socket)?;
    UdpSocket::from_std(socket.into())
}

/// Where queries go out from (and their unicast answers come back to).
fn query_socket() -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).into())?;
    prepare_sender(&socket)?;
    UdpSocket::from_std(socket.into())
}

fn prepare_sender(socket: &Socket) -> std::io::Result<()> {
    // Other programs on this host (a go-micro service beside us) hear
    // what we send, and we hear them.
    socket.set_multicast_loop_v4(true)?;
    // RFC 6762 §11: 255, so receivers can tell on-link packets.
    socket.set_multicast_ttl_v4(255)?;
    socket.set_nonblocking(true)
}

/// A cached record set's lifetime.
#[derive(Debug, Clone, Copy)]
struct Life {
    received: Instant,
    ttl: Duration,
}

impl Life {
    fn new(ttl: u32) -> Self {
        Self {
            received: Instant::now(),
            ttl: Duration::from_secs(u64::from(ttl)),
        }
    }

    fn expires(&self) -> Instant {
        self.received + self.ttl
    }

    /// The `n`th refresh point: 80, 85, 90, 95 % of the TTL.
    fn refresh_at(&self, n: u8) -> Option<Instant> {
        (n < 4).then(|| self.received + self.ttl.mul_f64(0.80 + 0.05 * f64::from(n)))
    }
}

/// What is known of one instance name in the domain.
#[derive(Debug, Default)]
struct Cached {
    /// As first heard, for the node ID's case.
    name: String,
    srv: Option<(String, u16, Life)>,
    txt: Option<(Result<ServiceTxt, String>, Life)>,
    /// The A/AAAA records of the SRV target that came with the SRV.
    addrs: Vec<(IpAddr, Life)>,
    refreshes_sent: u8,
    verify_until: Option<Instant>,
}

struct Watching {
    watch: Arc<MdnsWatch>,
    service: String,
    next_query: Instant,
    start_queries: usize,
    last_query: Option<Instant>,
}

struct Task {
    domain: String,
    ttl: u32,
    query_interval: Duration,
    addresses: Vec<Ipv4Addr>,
    /// Our SRV target, `host.`.
    hostname: String,
    watches: Vec<Watching>,
    /// By lowercase instance name.
    cache: HashMap<String, Cached>,
    /// A/AAAA records by lowercase host name, for SRVs that came alone.
    hosts: HashMap<String, Vec<(IpAddr, Life)>>,
    announced: HashMap<String, Announcing>,
    changed: mpsc::UnboundedSender<MdnsTarget>,
    wake: Arc<Notify>,
}

struct Announcing {
    spec: Announcement,
    next: Option<Instant>,
    sent: usize,
}

impl Task {
    async fn run(
        mut self,
        multicast: UdpSocket,
        unicast: UdpSocket,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        let sockets = Sockets {
            multicast,
            unicast,
            addresses: self.addresses.clone(),
        };
        let mut buf_m = vec![0u8; MAX_PACKET];
        let mut buf_u = vec![0u8; MAX_PACKET];
        let wake = self.wake.clone();
        loop {
            let due = self.next_due();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command, &sockets).await,
                    None => return,
                },
                received = sockets.multicast.recv_from(&mut buf_m) => {
                    if let Ok((n, from)) = received {
                        self.packet(&buf_m[..n], from, &sockets).await;
                    }
                }
                received = sockets.unicast.recv_from(&mut buf_u) => {
                    if let Ok((n, from)) = received {
                        self.packet(&buf_u[..n], from, &sockets).await;
                    }
                }
                () = wake.notified() => self.verify_failed(&sockets).await,
                () = tokio::time::sleep_until(due) => {}
            }
            self.tick(&sockets).await;
        }
    }

    async fn command(&mut self, command: Command, sockets: &Sockets) {
        match command {
            Command::Watch(watch) => {
                let service = watch.target.name().to_string();
                self.watches.push(Watching {
                    watch,
                    service,
                    next_query: Instant::now(),
                    start_queries: 0,
                    last_query: None,
                });
                // What was heard before the watch began counts at once.
                self.publish();
            }
            Command::Unwatch(watch) => self.watches.retain(|w| !Arc::ptr_eq(&w.watch, &watch)),
            Command::Announce(spec) => {
                tracing::info!(service = %spec.service, id = %spec.id, port = spec.port, "Announcing by mDNS");
                self.announced.insert(
                    spec.id.clone(),
                    Announcing {
                        spec: *spec,
                        next: Some(Instant::now()),
                        sent: 0,
                    },
                );
            }
            Command::Withdraw { id, done } => {
                if let Some(gone) = self.announced.remove(&id) {
                    let message = response(0, self.records(&gone.spec, 0));
                    sockets.multicast_all(&message).await;
                    tracing::info!(service = %gone.spec.service, id = %id, "Withdrawn from mDNS (goodbye sent)");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Handles one packet from the network.
    async fn packet(&mut self, bytes: &[u8], from: SocketAddr, sockets: &Sockets) {
        let Ok(message) = Message::from_vec(bytes) else {
            return; // not DNS: ignored, as RFC 6762 asks
        };
        if message.metadata.op_code != OpCode::Query
            || message.metadata.response_code != ResponseCode::NoError
        {
            return;
        }
        match message.metadata.message_type {
            MessageType::Query => self.answer(&message, from, sockets).await,
            MessageType::Response => {
                if self.learn(&message) {
                    self.publish();
                }
            }
        }
    }

    /// Takes in a response's records; `true` when anything of a watched
    /// service's may have changed.
    fn learn(&mut self, message: &Message) -> bool {
        let suffix = format!(".{}.", self.domain);
        let in_domain = |name: &str| name.len() > suffix.len() && name.ends_with(&suffix);
        let mut touched = false;
        let mut srv_here: Vec<(String, String)> = Vec::new();
        for record in message.answers.iter().chain(&message.additionals) {
            let owner = record.name.to_ascii().to_ascii_lowercase();
            match &record.data {
                // A PTR alone makes no instance (go-micro sends SRV and
                // TXT with it); a PTR goodbye (DNS-SD style) removes one.
                RData::PTR(PTR(target)) if in_domain(&owner) => {
                    let key = target.to_ascii().to_ascii_lowercase();
                    if in_domain(&key) && record.ttl == 0 {
                        touched = true;
                        self.cache.remove(&key);
                    }
                }
                RData::SRV(srv) if in_domain(&owner) => {
                    touched = true;
                    if record.ttl == 0 {
                        self.cache.remove(&owner);
                        continue;
                    }
                    let target = srv.target.to_ascii().to_ascii_lowercase();
                    let entry = self.entry(&owner, record);
                    entry.srv = Some((target.clone(), srv.port, Life::new(record.ttl)));
                    entry.refreshes_sent = 0;
                    entry.verify_until = None;
                    srv_here.push((owner, target));
                }
                RData::TXT(txt) if in_domain(&owner) => {
                    touched = true;
                    if record.ttl == 0 {
                        self.cache.remove(&owner);
                        continue;
                    }
                    let decoded = gomicro::decode(&txt.txt_data).map_err(|e| e.to_string());
                    let entry = self.entry(&owner, record);
                    entry.txt = Some((decoded, Life::new(record.ttl)));
                    entry.verify_until = None;
                }
                _ => {}
            }
        }
        // Addresses: of the SRV targets of this packet, kept with their
        // instances (go-micro's client pairs them within a packet too, so
        // one host's goodbye does not take another instance's address),
        // and by host for SRVs that come alone later.
        let addresses: Vec<(String, IpAddr, u32)> = message
            .answers
            .iter()
            .chain(&message.additionals)
            .filter_map(|r| {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => return None,
                };
                Some((r.name.to_ascii().to_ascii_lowercase(), ip, r.ttl))
            })
            .filter(|(_, ip, _)| !ip.is_unspecified())
            .collect();
        for (host, ip, ttl) in &addresses {
            let wanted = self
                .cache
                .values()
                .any(|c| c.srv.as_ref().is_some_and(|(t, _, _)| t == host));
            if !wanted {
                continue;
            }
            touched = true;
            let list = self.hosts.entry(host.clone()).or_default();
            list.retain(|(a, _)| a != ip);
            if *ttl > 0 {
                list.push((*ip, Life::new(*ttl)));
            }
        }
        for (instance, target) in srv_here {
            let here: Vec<(IpAddr, Life)> = addresses
                .iter()
                .filter(|(h, _, ttl)| *h == target && *ttl > 0)
                .map(|(_, ip, ttl)| (*ip, Life::new(*ttl)))
                .collect();
            if let (Some(entry), false) = (self.cache.get_mut(&instance), here.is_empty()) {
                entry.addrs = here;
            }
        }
        if touched {
            for w in &self.watches {
                let service = gomicro::service_name(&w.service, &self.domain).to_ascii_lowercase();
                let about = |name: &str| {
                    name == service
                        || gomicro::instance_id(name, &w.service, &self.domain).is_some()
                };
                let heard = message
                    .answers
                    .iter()
                    .chain(&message.additionals)
                    .any(|r| about(&r.name.to_ascii().to_ascii_lowercase()));
                if heard {
                    w.watch.answered();
                }
            }
        }
        touched
    }

    fn entry(&mut self, owner: &str, record: &Record) -> &mut Cached {
        self.cache
            .entry(owner.to_string())
            .or_insert_with(|| Cached {
                name: record.name.to_ascii(),
                ..Default::default()
            })
    }

    /// The instances of `service` as of now.
    fn view(&self, service: &str) -> Vec<MdnsInstance> {
        let now = Instant::now();
        let mut found = Vec::new();
        for cached in self.cache.values() {
            let Some(id) = gomicro::instance_id(&cached.name, service, &self.domain) else {
                continue;
            };
            let (Some((target, port, srv_life)), Some((Ok(txt), txt_life))) =
                (&cached.srv, &cached.txt)
            else {
                continue;
            };
            if srv_life.expires() <= now || txt_life.expires() <= now || txt.service != service {
                continue;
            }
            let live = |list: &[(IpAddr, Life)]| -> Vec<IpAddr> {
                list.iter()
                    .filter(|(_, life)| life.expires() > now)
                    .map(|(ip, _)| *ip)
                    .collect()
            };
            let mut ips = live(&cached.addrs);
            if ips.is_empty() {
                ips = self.hosts.get(target).map_or_else(Vec::new, |l| live(l));
            }
            // go-micro prefers an IPv4 address.
            ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
            let Some(ip) = ips.first() else {
                continue;
            };
            found.push(MdnsInstance {
                name: id.to_string(),
                addr: SocketAddr::new(*ip, *port),
                version: Some(txt.version.clone()),
                metadata: txt.metadata.clone().unwrap_or_default(),
            });
        }
        found
    }

    /// Publishes every watch's instances; tells the control task of those
    /// that changed.
    fn publish(&self) {
        for w in &self.watches {
            if w.watch.publish(self.view(&w.service)) {
                let _ = self.changed.send(w.watch.target.clone());
            }
        }
    }

    /// Answers a query about what we announce.
    async fn answer(&self, query: &Message, from: SocketAddr, sockets: &Sockets) {
        if self.announced.is_empty() {
            return;
        }
        let mut answers: Vec<Record> = Vec::new();
        let mut unicast_asked = false;
        for q in &query.queries {
            let asked = q.name().to_ascii().to_ascii_lowercase();
            let kind = q.query_type();
            unicast_asked |= q.mdns_unicast_response();
            let any = kind == RecordType::ANY;
            for a in self.announced.values() {
                let spec = &a.spec;
                let service = gomicro::service_name(&spec.service, &self.domain);
                let instance = gomicro::instance_name(&spec.id, &spec.service, &self.domain);
                let mut all = self.records(spec, self.ttl).into_iter();
                let mut take = |types: &[RecordType]| {
                    answers.extend(all.by_ref().filter(|r| types.contains(&r.record_type())));
                };
                if asked == service.to_ascii_lowercase() && (any || kind == RecordType::PTR) {
                    // go-micro answers a browse with every record at once.
                    take(&[
                        RecordType::PTR,
                        RecordType::SRV,
                        RecordType::TXT,
                        RecordType::A,
                    ]);
                } else if asked == instance.to_ascii_lowercase() {
                    match kind {
                        RecordType::ANY => take(&[RecordType::SRV, RecordType::TXT, RecordType::A]),
                        RecordType::SRV => take(&[RecordType::SRV, RecordType::A]),
                        RecordType::TXT => take(&[RecordType::TXT]),
                        _ => {}
                    }
                } else if asked == self.hostname.to_ascii_lowercase()
                    && (any || kind == RecordType::A)
                {
                    take(&[RecordType::A]);
                } else if asked == gomicro::enumeration_name(&self.domain)
                    && (any || kind == RecordType::PTR)
                    && let Some(record) = self.enumeration_record(spec)
                {
                    answers.push(record);
                }
            }
        }
        if answers.is_empty() {
            return;
        }
        answers.dedup();
        if from.port() != PORT {
            // A legacy unicast query (RFC 6762 §6.7), as go-micro's client
            // sends: answered to its port, with its ID and question.
            let mut message = response(query.metadata.id, answers);
            message.queries = query.queries.clone();
            sockets.unicast_to(&message, from).await;
        } else if unicast_asked {
            sockets.unicast_to(&response(0, answers), from).await;
        } else {
            sockets.multicast_all(&response(0, answers)).await;
        }
    }

    /// `_services.micro. PTR greeter._services.micro.`: how go-micro's
    /// `ListServices` learns the name.
    fn enumeration_record(&self, spec: &Announcement) -> Option<Record> {
        let owner = Name::from_ascii(gomicro::enumeration_name(&self.domain)).ok()?;
        let target = Name::from_ascii(format!(
            "{}.{}",
            spec.service,
            gomicro::enumeration_name(&self.domain)
        ))
        .ok()?;
        Some(Record::from_rdata(owner, self.ttl, RData::PTR(PTR(target))))
    }

    /// PTR, SRV, TXT and A records of an announced service.
    fn records(&self, spec: &Announcement, ttl: u32) -> Vec<Record> {
        let names = (
            Name::from_ascii(gomicro::service_name(&spec.service, &self.domain)),
            Name::from_ascii(gomicro::instance_name(
                &spec.id,
                &spec.service,
                &self.domain,
            )),
            Name::from_ascii(&self.hostname),
        );
        let (Ok(service), Ok(instance), Ok(host)) = names else {
            // Validation keeps names to DNS labels; a host name that is
            // not one (set by hand) cannot be announced.
            tracing::warn!(service = %spec.service, id = %spec.id, host = %self.hostname, "Cannot make mDNS names for a registration");
            return Vec::new();
        };
        let mut records = vec![
            Record::from_rdata(service, ttl, RData::PTR(PTR(instance.clone()))),
            // go-micro's own priority and weight.
            Record::from_rdata(
                instance.clone(),
                ttl,
                RData::SRV(SRV::new(10, 1, spec.port, host.clone())),
            ),
            Record::from_rdata(
                instance,
                ttl,
                RData::TXT(TXT::new(gomicro::encode(&spec.txt))),
            ),
        ];
        for ip in &spec.ips {
            records.push(Record::from_rdata(host.clone(), ttl, RData::A(A(*ip))));
        }
        records
    }

    /// Connect failures reported on watched instances: ask for them now,
    /// and drop those that do not answer in time.
    async fn verify_failed(&mut self, sockets: &Sockets) {
        let deadline = Instant::now() + VERIFY_TIMEOUT;
        let mut ask: Vec<String> = Vec::new();
        for w in &self.watches {
            let failed = w.watch.take_failed();
            if failed.is_empty() {
                continue;
            }
            for cached in self.cache.values_mut() {
                let Some(id) = gomicro::instance_id(&cached.name, &w.service, &self.domain) else {
                    continue;
                };
                let port = cached.srv.as_ref().map(|(_, p, _)| *p);
                let ips: Vec<IpAddr> = cached.addrs.iter().map(|(ip, _)| *ip).collect();
                let hit = failed
                    .iter()
                    .any(|a| Some(a.port()) == port && (ips.is_empty() || ips.contains(&a.ip())));
                if hit && cached.verify_until.is_none() {
                    tracing::info!(service = %w.service, instance = id, "Connect failed: asking whether the mDNS instance is still there");
                    cached.verify_until = Some(deadline);
                    ask.push(cached.name.clone());
                }
            }
        }
        for name in ask {
            if let Ok(name) = Name::from_ascii(&name)
                && let Err(error) = sockets.query(&Query::query(name, RecordType::ANY)).await
            {
                tracing::debug!(%error, "Cannot send an mDNS query");
            }
        }
    }

    /// Sends the queries and announcements that are due, and forgets what
    /// expired.
    async fn tick(&mut self, sockets: &Sockets) {
        let now = Instant::now();
        // Expired records, and instances that failed to answer in time.
        let before = self.cache.len();
        let mut changed = false;
        self.cache.retain(|_, c| {
            if c.verify_until.is_some_and(|t| t <= now) {
                tracing::info!(instance = %c.name, "The mDNS instance did not answer after a failed connect: removed");
                return false;
            }
            let srv_live = c.srv.as_ref().is_none_or(|(_, _, l)| l.expires() > now);
            let txt_live = c.txt.as_ref().is_none_or(|(_, l)| l.expires() > now);
            if !(srv_live && txt_live) {
                tracing::info!(instance = %c.name, "mDNS records expired without a refresh: instance removed");
                return false;
            }
            let n = c.addrs.len();
            c.addrs.retain(|(_, l)| l.expires() > now);
            changed |= n != c.addrs.len();
            true
        });
        changed |= before != self.cache.len();
        for list in self.hosts.values_mut() {
            list.retain(|(_, l)| l.expires() > now);
        }
        self.hosts.retain(|_, l| !l.is_empty());
        // Refreshes at 80-95 % of an instance's TTL.
        let mut refresh: Vec<usize> = Vec::new();
        for cached in self.cache.values_mut() {
            let Some((_, _, life)) = &cached.srv else {
                continue;
            };
            if let Some(at) = life.refresh_at(cached.refreshes_sent)
                && at <= now
            {
                cached.refreshes_sent += 1;
                let which = self.watches.iter().position(|w| {
                    gomicro::instance_id(&cached.name, &w.service, &self.domain).is_some()
                });
                refresh.extend(which);
            }
        }
        for i in 0..self.watches.len() {
            let w = &mut self.watches[i];
            let due = w.next_query <= now || refresh.contains(&i);
            if !due || w.last_query.is_some_and(|t| now - t < MIN_QUERY_GAP) {
                continue;
            }
            w.last_query = Some(now);
            w.start_queries += 1;
            w.next_query = now
                + START_QUERIES
                    .get(w.start_queries)
                    .copied()
                    .unwrap_or(self.query_interval);
            w.watch.queried();
            let name = gomicro::service_name(&w.service, &self.domain);
            match Name::from_ascii(&name) {
                Ok(name) => {
                    if let Err(error) = sockets.query(&Query::query(name, RecordType::PTR)).await {
                        w.watch.failed(format!("sending the query: {error}"));
                    }
                }
                Err(error) => w.watch.failed(format!("{name}: {error}")),
            }
        }
        // Announcements.
        let due: Vec<String> = self
            .announced
            .iter()
            .filter(|(_, a)| a.next.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(a) = self.announced.get(&id) else {
                continue;
            };
            let message = response(0, self.records(&a.spec, self.ttl));
            sockets.multicast_all(&message).await;
            if let Some(a) = self.announced.get_mut(&id) {
                let gap = ANNOUNCE_GAPS.get(a.sent).copied().unwrap_or(a.spec.every);
                a.sent += 1;
                a.next = Some(now + gap);
            }
        }
        if changed {
            self.publish();
        }
    }

    /// When the task next has something to do.
    fn next_due(&self) -> Instant {
        let mut due = Instant::now() + Duration::from_secs(3600);
        let mut at = |t: Instant| due = due.min(t);
        for w in &self.watches {
            at(w.next_query
                .max(w.last_query.map_or(w.next_query, |t| t + MIN_QUERY_GAP)));
        }
        for c in self.cache.values() {
            if let Some((_, _, life)) = &c.srv {
                at(life.expires());
                if let Some(r) = life.refresh_at(c.refreshes_sent) {
                    at(r);
                }
            }
            if let Some((_, life)) = &c.txt {
                at(life.expires());
            }
            if let Some(v) = c.verify_until {
                at(v);
            }
            for (_, life) in &c.addrs {
                at(life.expires());
            }
        }
        for a in self.announced.values() {
            if let Some(t) = a.next {
                at(t);
            }
        }
        due
    }
}

/// A response message (authoritative, no question).
fn response(id: u16, answers: Vec<Record>) -> Message {
    let mut message = Message::response(id, OpCode::Query);
    message.metadata.authoritative = true;
    message.answers = answers;
    message
}

struct Sockets {
    multicast: UdpSocket,
    unicast: UdpSocket,
    addresses: Vec<Ipv4Addr>,
}

impl Sockets {
    /// Sends `message` to the group on every interface, from port 5353.
    async fn multicast_all(&self, message: &Message) {
        let Ok(bytes) = message.to_vec() else {
            tracing::warn!("Cannot encode an mDNS message");
            return;
        };
        let group = SocketAddr::from(SocketAddrV4::new(GROUP, PORT));
        for ip in &self.addresses {
            if let Err(error) = SockRef::from(&self.multicast).set_multicast_if_v4(ip) {
                tracing::debug!(interface.addr = %ip, %error, "Cannot pick the mDNS interface");
                continue;
            }
            if let Err(error) = self.multicast.send_to(&bytes, group).await {
                tracing::debug!(interface.addr = %ip, %error, "Cannot send an mDNS response");
            }
        }
    }

    async fn unicast_to(&self, message: &Message, to: SocketAddr) {
        let Ok(bytes) = message.to_vec() else {
            return;
        };
        if let Err(error) = self.multicast.send_to(&bytes, to).await {
            tracing::debug!(to = %to, %error, "Cannot send an mDNS answer");
        }
    }

    /// Sends a query to the group on every interface, from the query port.
    async fn query(&self, query: &Query) -> std::io::Result<()> {
        let mut message = Message::new(0, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = false;
        message.add_query(query.clone());
        let bytes = message.to_vec().map_err(std::io::Error::other)?;
        let group = SocketAddr::from(SocketAddrV4::new(GROUP, PORT));
        let mut last = Ok(());
        for ip in &self.addresses {
            SockRef::from(&self.unicast).set_multicast_if_v4(ip)?;
            if let Err(error) = self.unicast.send_to(&bytes, group).await {
                last = Err(error);
            }
        }
        last
    }
}
