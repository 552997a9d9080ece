//! The client socket wrapper: byte counters and client-side timeouts.
//!
//! Two timeouts act here rather than in hyper, because hyper's single
//! `header_read_timeout` also counts the idle time between keep-alive
//! requests and cannot tell the two apart:
//!
//! - `header_read`: once the first byte of a request head has arrived, the
//!   whole head must arrive within this time (slowloris protection; HTTP/1
//!   only, HTTP/2 frames are not request heads);
//! - `client_idle`: a connection with nothing in flight and no traffic in
//!   either direction for this long is closed (HAProxy's `timeout client`);
//! - `client_stall`: a write to the client that cannot go out (the client
//!   stopped reading) for this long fails the connection, so a client that
//!   stops reading does not hold an upstream connection and its endpoint's
//!   in-flight count forever.
//!
//! The HTTP service tells this wrapper what is in flight through
//! [`ConnActivity`]; a wrapped TCP connection never has anything "in flight",
//! so only inactivity counts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::stall::StallTimer;

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Shared between a client connection's socket wrapper and its HTTP service.
#[derive(Debug, Default)]
pub struct ConnActivity {
    /// Requests whose response has not finished.
    inflight: AtomicU32,
    /// Requests started on this connection so far.
    started: AtomicU64,
    /// The client opened with the HTTP/2 preface.
    h2: AtomicBool,
}

impl ConnActivity {
    /// Marks a request as started; in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    /// Requests started on this connection, the current one included.
    pub fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    fn idle(&self) -> bool {
        self.inflight.load(Ordering::Relaxed) == 0
    }
}

/// One request in flight on a client connection.
#[derive(Debug)]
pub struct InflightGuard(Arc<ConnActivity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The listener's counters a wrapped connection adds to.
#[derive(Clone)]
pub struct ClientCounters {
    pub received: IntCounter,
    pub sent: IntCounter,
    /// Connections cut by `client_stall`.
    pub stalls: IntCounter,
}

/// Which timeouts a wrapped connection enforces.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// `None` for TCP mode, where there are no request heads.
    pub header_read: Option<Duration>,
    pub client_idle: Duration,
    pub client_stall: Duration,
}

pub struct ClientIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
    timeouts: ClientTimeouts,
    /// Reads and writes that moved bytes. The clock is read only when a read
    /// blocks with nothing in flight, not on every I/O: `last_progress` is
    /// stamped then if this count moved since the last stamp.
    progress: u64,
    stamped_progress: u64,
    last_progress: Instant,
    /// The request count when the first byte of a not-yet-complete request
    /// head arrived (a later count means it completed), and when that was
    /// first noticed by a blocked read.
    head_started: Option<(u64, Option<Instant>)>,
    preface_checked: bool,
    /// Armed lazily, only when a read would block with nothing in flight, and
    /// reset only when it fires early or must fire earlier: one reset per
    /// idle period instead of one per request.
    timer: Option<Pin<Box<Sleep>>>,
    armed_for: Option<Instant>,
    received: IntCounter,
    sent: IntCounter,
    /// Writes the client does not take: `client_stall`.
    write_stall: StallTimer,
    stalls: IntCounter,
}

impl<T> ClientIo<T> {
    pub fn new(
        inner: T,
        activity: Arc<ConnActivity>,
        timeouts: ClientTimeouts,
        counters: ClientCounters,
    ) -> Self {
        Self {
            inner,
            activity,
            timeouts,
            progress: 0,
            stamped_progress: 0,
            last_progress: Instant::now(),
            head_started: None,
            preface_checked: false,
            timer: None,
            armed_for: None,
            received: counters.received,
            sent: counters.sent,
            write_stall: StallTimer::new(timeouts.client_stall),
            stalls: counters.stalls,
        }
    }

    fn on_read(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.progress += 1;
        self.received.inc_by(data.len() as u64);
        if !self.preface_checked {
            self.preface_checked = true;
            if data.starts_with(H2_PREFACE_START) {
                self.activity.h2.store(true, Ordering::Relaxed);
            }
        }
        if self.timeouts.header_read.is_some() && self.activity.idle() {
            let started = self.activity.started.load(Ordering::Relaxed);
            if self.head_started.is_none_or(|(seen, _)| seen != started) {
                self.head_started = Some((started, None));
            }
        }
    }

    fn on_written(&mut self, n: usize) {
        if n > 0 {
            self.progress += 1;
            self.sent.inc_by(n as u64);
            self.write_stall.progress();
        }
    }

    /// A write is blocked: fails once the client has taken nothing for
    /// `client_stall`.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.write_stall.poll_blocked(cx));
        self.stalls.inc();
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "client took no response byte in time",
        ))
    }

    /// Polls the deadline that applies while a read is blocked; `Ready` means
    /// it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.activity.idle() {
            return Poll::Pending;
        }
        let mut now: Option<Instant> = None;
        if self.progress != self.stamped_progress {
            let t = *now.get_or_insert_with(Instant::now);
            self.last_progress = t;
            self.stamped_progress = self.progress;
        }
        let started = self.activity.started.load(Ordering::Relaxed);
        let header_read = self.timeouts.header_read.filter(|_| !self.activity.is_h2());
        let (deadline, what) = match (&mut self.head_started, header_read) {
            (Some((seen, at)), Some(limit)) if *seen == started => {
                let at = *at.get_or_insert_with(|| *now.get_or_insert_with(Instant::now));
                (at + limit, "request head not received in time")
            }
            _ => (
                self.last_progress + self.timeouts.client_idle,
                "client connection idle",
            ),
        };
        let timer = self.timer.get_or_insert_with(|| {
            self.armed_for = Some(deadline);
            Box::pin(tokio::time::sleep_until(deadline))
        });
        if self.armed_for.is_some_and(|armed| armed > deadline) {
            timer.as_mut().reset(deadline);
            self.armed_for = Some(deadline);
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            // Armed for an earlier deadline that has since moved: re-arm.
            if Instant::now() < deadline {
                timer.as_mut().reset(deadline);
                self.armed_for = Some(deadline);
                continue;
            }
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.on_written(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_write_stall(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.on_written(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_write_stall(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn wrap(
        io: tokio::io::DuplexStream,
        header_read: Option<Duration>,
    ) -> (ClientIo<tokio::io::DuplexStream>, Arc<ConnActivity>) {
        let activity = Arc::new(ConnActivity::default());
        let counter = || IntCounter::new("c", "c").unwrap();
        let io = ClientIo::new(
            io,
            activity.clone(),
            ClientTimeouts {
                header_read,
                client_idle: Duration::from_secs(60),
                client_stall: Duration::from_secs(30),
            },
            ClientCounters {
                received: counter(),
                sent: counter(),
                stalls: counter(),
            },
        );
        (io, activity)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_times_out_after_client_idle() {
        let (a, _b) = tokio::io::duplex(64);
        let (mut io, _) = wrap(a, Some(Duration::from_secs(5)));
        let started = Instant::now();
        let err = io.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_pushes_the_idle_deadline_back() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, _) = wrap(a, Some(Duration::from_secs(5)));
        let started = Instant::now();
        let mut buf = [0u8; 8];
        // Blocked for 30 s (the 60 s timer is armed), then some traffic.
        let blocked = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(blocked.is_err());
        io.write_all(b"x").await.unwrap();
        assert_eq!(b.read(&mut buf).await.unwrap(), 1);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(90),
            "60 s after the last traffic"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn partial_head_times_out_after_header_read() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, _) = wrap(a, Some(Duration::from_secs(5)));
        b.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_times_out_while_a_request_is_in_flight() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut io, activity) = wrap(a, Some(Duration::from_secs(5)));
        b.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let guard = activity.begin();
        let blocked = tokio::time::timeout(Duration::from_secs(600), io.read(&mut buf)).await;
        assert!(
            blocked.is_err(),
            "a read with a request in flight must not time out"
        );
        drop(guard);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}

/// Bytes a [`Counted`] stream moved: read from it, written to it; and
/// whether it failed.
#[derive(Debug, Default)]
pub struct ByteCounts {
    read: AtomicU64,
    written: AtomicU64,
    /// Its peer closed its side (a read returned end of stream).
    eof: AtomicBool,
    /// An I/O error other than a write or shutdown after the peer closed
    /// (which only says the peer is gone, as it said it would be).
    failed: AtomicBool,
}

impl ByteCounts {
    /// (read, written) so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// This side broke the exchange (reset, a read error).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// How a relay between a client and an upstream ended, for the access
    /// log: by whichever side failed, else normally.
    pub fn termination(client: &Self, upstream: &Self) -> crate::access_log::Termination {
        use crate::access_log::Termination;
        if client.failed() {
            Termination::ClientClosed
        } else if upstream.failed() {
            Termination::UpstreamResetBody
        } else {
            Termination::Ok
        }
    }

    fn error<T>(&self, error: io::Error, writing: bool) -> Poll<io::Result<T>> {
        if !(writing && self.eof.load(Ordering::Relaxed)) {
            self.failed.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Err(error))
    }
}

/// A stream that counts the bytes it moves into [`ByteCounts`], which
/// outlive it: the counts of a copy that failed half-way are still known
/// (tokio's `copy_bidirectional` reports them only on success).
pub struct Counted<'a, T> {
    inner: T,
    counts: &'a ByteCounts,
}

impl<'a, T> Counted<'a, T> {
    pub fn new(inner: T, counts: &'a ByteCounts) -> Self {
        Self { inner, counts }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        if let Err(e) = ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            return this.counts.error(e, false);
        }
        let n = (buf.filled().len() - before) as u64;
        if n == 0 && room {
            this.counts.eof.store(true, Ordering::Relaxed);
        }
        this.counts.read.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_write(cx, buf)) {
            Ok(n) => {
                this.counts.written.fetch_add(n as u64, Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Err(e) => this.counts.error(e, true),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => this.counts.error(e, true),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_shutdown(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => this.counts.error(e, true),
        }
    }
}
