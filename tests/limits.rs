//! Client-side limits under load: slow request heads and many idle
//! keep-alive connections.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The two tests load the same two cores; run them one at a time so one
/// does not eat the other's latency budget.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACTIVE_WEB: &str = "switchyard_listener_active_connections{listener=\"web\"}";

/// Raises this process's open-file soft limit to the hard limit; returns
/// the hard limit.
fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    assert_eq!(soft, hard, "soft open-file limit raised to the hard limit");
    hard
}

// === slow request heads ===

const SLOW_CLIENTS: usize = 300;
const HEADER_READ: Duration = Duration::from_secs(1);
/// How long a slow client waits to be closed, from its first byte.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// Slow clients reconnect until this much time has passed, so the attack
/// lasts longer than one `header_read` period.
const ATTACK: Duration = Duration::from_millis(4_500);
/// Not a divisor of `HEADER_READ`: a byte arriving just as Switchyard
/// closes makes the close a reset rather than a FIN (unread data).
const TRICKLE_EVERY: Duration = Duration::from_millis(220);

const NORMAL_CLIENTS: usize = 4;
const NORMAL_FOR: Duration = Duration::from_secs(2);
const NORMAL_MAX_REQUESTS: usize = 10_000;
const NORMAL_LATENCY_BOUND: Duration = Duration::from_secs(1);

/// How Switchyard ended one slow connection, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
enum SlowEnd {
    /// Clean close (FIN), no response bytes.
    Eof,
    /// Connection reset (RST), no response bytes.
    Reset,
    /// Switchyard answered, then (maybe) closed: the first response line.
    Answered(String),
    /// Still open when the client gave up waiting (`CLOSE_WITHIN`).
    StillOpen,
}

/// One slowloris connection: a partial request head, then one more header
/// byte every `TRICKLE_EVERY`, never finishing the head. Counts itself in
/// `sent_head` once the partial head is sent. Returns how it ended and
/// when, counted from the first byte sent.
async fn slowloris_once(addr: SocketAddr, sent_head: &AtomicUsize) -> (SlowEnd, Duration) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("slow client connects");
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow.test\r\n")
        .await
        .expect("slow client sends a partial head");
    let first_byte = Instant::now();
    sent_head.fetch_add(1, Ordering::SeqCst);
    let trickle = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut tick = tokio::time::interval_at(first_byte + TRICKLE_EVERY, TRICKLE_EVERY);
    let give_up = tokio::time::sleep_until(first_byte + CLOSE_WITHIN);
    tokio::pin!(give_up);
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        tokio::select! {
            biased;
            read = s.read(&mut buf) => {
                let end = match read {
                    Ok(0) => SlowEnd::Eof,
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        SlowEnd::Answered(text.lines().next().unwrap_or("").to_string())
                    }
                    Err(_) => SlowEnd::Reset,
                };
                return (end, first_byte.elapsed());
            }
            () = &mut give_up => return (SlowEnd::StillOpen, first_byte.elapsed()),
            _ = tick.tick() => {
                let byte = trickle[sent % trickle.len()];
                sent += 1;
                if s.write_all(&[byte]).await.is_err() {
                    return (SlowEnd::Reset, first_byte.elapsed());
                }
            }
        }
    }
}

/// One slow client: after `delay`, slowloris connections back to back until
/// `ATTACK` has passed since `start`, so the attack outlasts `header_read`.
async fn slow_client(
    addr: SocketAddr,
    start: Instant,
    delay: Duration,
    sent_head: Arc<AtomicUsize>,
) -> Vec<(SlowEnd, Duration)> {
    tokio::time::sleep_until(start + delay).await;
    let mut ends = Vec::new();
    while start.elapsed() < ATTACK {
        ends.push(slowloris_once(addr, &sent_head).await);
    }
    ends
}

/// Keep-alive `GET /` back to back for `NORMAL_FOR`; returns each request's
/// latency and how many failed (an error or a status other than 200).
async fn normal_client(addr: SocketAddr) -> (Vec<Duration>, usize) {
    let mut client = HttpClient::connect(addr).await;
    let (mut latencies, mut failed) = (Vec::new(), 0);
    let until = Instant::now() + NORMAL_FOR;
    while Instant::now() < until && latencies.len() < NORMAL_MAX_REQUESTS {
        let sent = Instant::now();
        let answer = client.get("/", None).await;
        latencies.push(sent.elapsed());
        match answer {
            Ok((StatusCode::OK, _, body)) if body == "b" => {}
            _ => {
                failed += 1;
                client = HttpClient::connect(addr).await;
            }
        }
    }
    (latencies, failed)
}

/// 300 slowloris clients keep Switchyard's HTTP listener busy for 4.5 s
/// while 4 normal keep-alive clients send requests for 2 s: every normal
/// request is answered 200 within 1 s, and every slow connection is closed
/// (without an answer: hyper writes no 408 for an I/O error) once
/// `header_read` (1 s) has passed since its first byte, its request never
/// reaching the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_cannot_starve_normal_clients() {
    let _serial = SERIAL.lock().await;
    let test_start = Instant::now();
    raise_nofile_limit();
    let b = Backend::start("b").await;
    let sy = Switchyard::start(&single_backend(
        b.addr,
        "[timeouts]\nheader_read = \"1s\"\nclient_idle = \"60s\"\n",
        "",
    ))
    .await;
    let addr = sy.addr("web");
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "b".into()));
    let warm_up_hits = b.hits();

    let attack_start = Instant::now();
    let sent_head = Arc::new(AtomicUsize::new(0));
    // Starts spread over one `header_read` period, so that the clients are
    // not all closed and reconnecting at the same moments.
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|i| {
            let delay = HEADER_READ * i as u32 / SLOW_CLIENTS as u32;
            tokio::spawn(slow_client(addr, attack_start, delay, sent_head.clone()))
        })
        .collect();
    eventually(
        "every slow client has sent its partial head",
        Duration::from_secs(5),
        || async { sent_head.load(Ordering::SeqCst) >= SLOW_CLIENTS },
    )
    .await;
    eventually(
        "Switchyard holds the slow connections open",
        Duration::from_secs(5),
        || async { sy.metric(ACTIVE_WEB).await.unwrap_or(0.0) >= SLOW_CLIENTS as f64 },
    )
    .await;

    let normal_started_at = attack_start.elapsed();
    let normal = futures_util::future::join_all(
        (0..NORMAL_CLIENTS).map(|_| tokio::spawn(normal_client(addr))),
    );
    tokio::pin!(normal);
    // Open connections sampled while the normal clients run: the attack is on.
    let mut open_samples = Vec::new();
    let normal = loop {
        tokio::select! {
            done = &mut normal => break done,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                open_samples.push(sy.metric(ACTIVE_WEB).await.unwrap_or(0.0));
            }
        }
    };
    let normal_ended_at = attack_start.elapsed();
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut per_client = Vec::new();
    for n in normal {
        let (l, f) = n.expect("normal client");
        per_client.push(l.len());
        latencies.extend(l);
        failed += f;
    }
    let fewest_open = open_samples.iter().copied().fold(f64::INFINITY, f64::min);

    let mut ends = Vec::new();
    for s in slow {
        ends.extend(s.await.expect("slow client"));
    }
    let elapsed = test_start.elapsed();

    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    let count = |what: fn(&SlowEnd) -> bool| ends.iter().filter(|(e, _)| what(e)).count();
    let (eof, reset) = (
        count(|e| *e == SlowEnd::Eof),
        count(|e| *e == SlowEnd::Reset),
    );
    let answered: Vec<_> = ends
        .iter()
        .filter_map(|(e, _)| match e {
            SlowEnd::Answered(line) => Some(line.clone()),
            _ => None,
        })
        .collect();
    let still_open = count(|e| *e == SlowEnd::StillOpen);
    let close_times: Vec<Duration> = ends
        .iter()
        .filter(|(e, _)| *e != SlowEnd::StillOpen)
        .map(|(_, t)| *t)
        .collect();
    let earliest = close_times.iter().min().copied().unwrap_or_default();
    let latest = close_times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "normal clients: {} requests ({per_client:?} per client), {failed} failed, \
         p99 {p99:?}, max {max:?}, from {normal_started_at:?} to {normal_ended_at:?} \
         into the attack; {fewest_open} or more connections open meanwhile \
         ({} samples)",
        latencies.len(),
        open_samples.len(),
    );
    eprintln!(
        "slow connections: {} in all, {eof} EOF, {reset} reset, {} answered {answered:?}, \
         {still_open} still open after {CLOSE_WITHIN:?}; closed {earliest:?}..{latest:?} \
         after their first byte; test took {elapsed:?}",
        ends.len(),
        answered.len(),
    );

    // Normal clients were served, fully and promptly, during the attack.
    assert_eq!(failed, 0, "normal requests failed during the attack");
    assert!(
        per_client.iter().all(|&n| n >= 20),
        "a normal client got few requests through: {per_client:?}"
    );
    assert!(
        max < NORMAL_LATENCY_BOUND,
        "a normal request took {max:?} (p99 {p99:?})"
    );
    assert!(
        normal_ended_at < ATTACK && !open_samples.is_empty() && fewest_open >= 200.0,
        "the normal clients did not run during the attack (ended {normal_ended_at:?} \
         in, as few as {fewest_open} connections open)"
    );

    // Every slow connection was closed by Switchyard, no earlier than
    // `header_read` after its first byte (less a little for the client's
    // clock starting after the server's), and without an answer.
    assert!(
        ends.len() >= SLOW_CLIENTS,
        "{} slow connections",
        ends.len()
    );
    assert_eq!(still_open, 0, "slow connections not closed in time");
    assert!(
        answered.is_empty(),
        "slow clients got answers: {answered:?}"
    );
    assert_eq!(eof + reset, ends.len());
    assert!(
        earliest >= HEADER_READ - Duration::from_millis(50),
        "a slow connection was closed {earliest:?} after its first byte, before header_read"
    );
    // None of their requests reached the backend.
    assert_eq!(
        b.hits() - warm_up_hits,
        latencies.len(),
        "the backend saw exactly the normal requests"
    );
    eventually(
        "the slow connections are gone",
        Duration::from_secs(5),
        || async { sy.metric(ACTIVE_WEB).await == Some(0.0) },
    )
    .await;
}

// === idle keep-alive connections ===

const IDLE_CONNECTIONS: usize = 10_000;
/// Descriptors kept free for everything else in this process (the backend's
/// side of Switchyard's pooled connections, the runtime, the admin client).
const FD_RESERVE: u64 = 200 + OPEN_CONCURRENCY as u64 + 100;
const OPEN_CONCURRENCY: usize = 200;
/// Bytes of Switchyard RSS per idle keep-alive client connection.
const BYTES_PER_IDLE_CONNECTION_BOUND: u64 = 64 * 1024;

/// Reads one HTTP/1.1 response with a `content-length` body: (status, body).
async fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while buf.len() < head_end + length {
        let n = s.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, buf[head_end..head_end + length].to_vec())
}

/// A connection that sent one keep-alive request and read its answer.
async fn served_idle_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .await
        .expect("send request");
    let (status, body) = read_response(&mut s).await;
    assert_eq!((status, body.as_slice()), (200, &b"b"[..]));
    s
}

/// Opens `n` served keep-alive connections, `OPEN_CONCURRENCY` at a time.
async fn open_idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    futures_util::stream::iter(0..n)
        .map(|_| tokio::spawn(served_idle_connection(addr)))
        .buffer_unordered(OPEN_CONCURRENCY)
        .map(|c| c.expect("client task"))
        .collect()
        .await
}

async fn active_connections(admin: SocketAddr) -> Option<f64> {
    let (status, body) = get(admin, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    body.lines()
        .find_map(|l| l.strip_prefix(ACTIVE_WEB)?.strip_prefix(' ')?.parse().ok())
}

/// 10,000 served, now idle keep-alive client connections held open on the
/// real binary: its RSS grows by less than 64 KiB per connection, and it
/// still answers a fresh client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_cost_little_memory() {
    let _serial = SERIAL.lock().await;
    let test_start = Instant::now();
    let hard = raise_nofile_limit();
    let connections = IDLE_CONNECTIONS.min(hard.saturating_sub(FD_RESERVE) as usize);
    if connections < IDLE_CONNECTIONS {
        eprintln!(
            "open-file hard limit is {hard}: measuring {connections} connections, not {IDLE_CONNECTIONS}"
        );
    }
    assert!(
        connections >= 1_000,
        "open-file hard limit {hard} is too low to measure idle connections"
    );

    let b = Backend::start("b").await;
    let sy = SwitchyardProcess::start(&single_backend(
        b.addr,
        "[timeouts]\nclient_idle = \"120s\"\n",
        "",
    ));
    let addr = sy.addr("web");
    let admin = sy.admin;

    // Warm up with one batch: worker threads, the upstream pool, the
    // allocator's arenas. Then close it, so the baseline holds no clients.
    let warm_up = open_idle_connections(addr, OPEN_CONCURRENCY).await;
    drop(warm_up);
    eventually(
        "the warm-up connections are closed",
        Duration::from_secs(10),
        || async { active_connections(admin).await == Some(0.0) },
    )
    .await;
    let (rss_before, _) = sy.memory();

    let opening = Instant::now();
    let idle = open_idle_connections(addr, connections).await;
    let opened_in = opening.elapsed();
    assert_eq!(idle.len(), connections);
    eventually(
        "Switchyard reports every idle connection open",
        Duration::from_secs(10),
        || async { active_connections(admin).await == Some(connections as f64) },
    )
    .await;
    let (rss_after, hwm_after) = sy.memory();

    let per_connection = rss_after.saturating_sub(rss_before) / connections as u64;
    eprintln!(
        "idle keep-alive connections: {connections} (opened in {opened_in:?}); \
         Switchyard RSS before {} KiB, after {} KiB (peak {} KiB); \
         {per_connection} bytes ({:.1} KiB) per connection",
        rss_before / 1024,
        rss_after / 1024,
        hwm_after / 1024,
        per_connection as f64 / 1024.0,
    );
    assert!(
        per_connection < BYTES_PER_IDLE_CONNECTION_BOUND,
        "{per_connection} bytes of RSS per idle connection"
    );

    // Still serving with all of them open.
    assert_eq!(get(addr, "/", None).await, (StatusCode::OK, "b".into()));
    let mut fresh = served_idle_connection(addr).await;
    fresh
        .write_all(b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut fresh).await, (200, b"b".to_vec()));

    drop(idle);
    drop(fresh);
    eventually(
        "Switchyard closes its side of every connection",
        Duration::from_secs(10),
        || async { active_connections(admin).await == Some(0.0) },
    )
    .await;
    eprintln!("test took {:?}", test_start.elapsed());
}
