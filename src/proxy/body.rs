//! The response body the proxy sends to clients.
//!
//! Either the upstream's body, streamed frame by frame, or a small local body
//! (errors, the `respond` backend). Both carry a [`Completion`] that runs
//! once when the response is over: it observes the request duration, ends the
//! request's in-flight marks, and hands a cleanly finished upstream HTTP/1.1
//! connection back to its endpoint's pool.
//!
//! An upstream body read by our HTTP/1.1 client is read from that
//! connection's socket by the poll itself (see `upstream::h1`). A body from
//! hyper's client gets the same `upstream_stall` timeout here: a body that
//! brings no byte for that long is cut and counted.
//!
//! A gRPC call with a deadline (`grpc-timeout`) is also ended at that
//! deadline: the upstream body is dropped, which resets its stream, and the
//! client gets `DEADLINE_EXCEEDED` trailers in its place (`proxy::grpc`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::io::InflightGuard;
use crate::access_log::{AccessLog, Record, Termination};
use crate::metrics::RequestMetrics;
use crate::stall::StallTimer;
use crate::upstream::connect::H1Sender;
use crate::upstream::h1::conn::{H1Body, H1Error};
use crate::upstream::pool;
use crate::upstream::state::ActiveGuard;

/// Work to finish when a response ends, however it ends.
pub struct Completion {
    started: Instant,
    metrics: Arc<RequestMetrics>,
    _inflight: InflightGuard,
    upstream: Option<ActiveGuard>,
    /// Where the upstream connection goes when the body ends cleanly.
    reuse: Reuse,
    /// The access log entry, when the listener keeps a log; written when
    /// the response ends, or when the request is dropped unanswered.
    log: Option<Box<Record>>,
}

/// What to do with an upstream connection after a clean end of body. Its
/// reuse window is kept in milliseconds: the completion travels inside
/// the response body, which is moved several times per request.
enum Reuse {
    Nothing,
    /// Back to hyper's pool.
    Hyper {
        sender: H1Sender,
        window_ms: u32,
    },
    /// Our client's connection, taken from the body, back to its pool.
    Ours {
        idle_ms: u32,
    },
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Completion {
    pub fn new(
        started: Instant,
        metrics: Arc<RequestMetrics>,
        inflight: InflightGuard,
        log: Option<Box<Record>>,
    ) -> Self {
        Self {
            started,
            metrics,
            _inflight: inflight,
            upstream: None,
            reuse: Reuse::Nothing,
            log,
        }
    }

    /// The access log entry, to fill in as the request goes on.
    #[inline]
    pub fn log(&mut self) -> Option<&mut Record> {
        self.log.as_deref_mut()
    }

    /// Takes the access log entry out, for a tunnel that logs at its end.
    pub fn take_log(&mut self) -> Option<Box<Record>> {
        self.log.take()
    }

    /// Notes how the request ended, for the access log.
    #[inline]
    pub fn terminated(&mut self, termination: Termination) {
        if let Some(log) = self.log() {
            log.termination = termination;
        }
    }

    /// Notes an upstream attempt to `endpoint`, for the access log.
    #[inline]
    pub fn attempt(&mut self, endpoint: std::net::SocketAddr) {
        if let Some(log) = self.log() {
            log.attempts += 1;
            log.endpoint = Some(endpoint);
        }
    }

    /// Notes the upstream's response head: when it came, and how long the
    /// connect took (`None` on a reused connection).
    #[inline]
    pub fn answered(&mut self, connect: Option<Duration>) {
        let started = self.started;
        if let Some(log) = self.log() {
            log.first_byte = Some(started.elapsed());
            log.connect = connect;
        }
    }

    /// Ties the endpoint's in-flight count, and the hyper connection to
    /// return to its pool (`idle` and the server's `hint` bound its reuse),
    /// to the end of this response.
    pub fn with_upstream(
        mut self,
        active: ActiveGuard,
        sender: Option<H1Sender>,
        idle: Duration,
        hint: Option<Duration>,
    ) -> Self {
        self.upstream = Some(active);
        if let Some(sender) = sender {
            let window_ms = millis(pool::reuse_window(idle, hint));
            self.reuse = Reuse::Hyper { sender, window_ms };
        }
        self
    }

    /// Ties the end of this response to returning our client's connection
    /// to the endpoint's pool, for at most `idle`.
    pub fn with_h1(mut self, active: ActiveGuard, idle: Duration) -> Self {
        self.upstream = Some(active);
        self.reuse = Reuse::Ours {
            idle_ms: millis(idle),
        };
        self
    }

    fn finish(mut self, end: End, h1: Option<&mut H1Body>) {
        let now = Instant::now();
        let ms = |ms: u32| Duration::from_millis(u64::from(ms));
        if let Some(mut log) = self.log.take() {
            log.duration = now.saturating_duration_since(self.started);
            if log.termination == Termination::Ok {
                log.termination = match end {
                    End::Complete => Termination::Ok,
                    End::Dropped => Termination::ClientClosed,
                    End::UpstreamFailed => Termination::UpstreamResetBody,
                    End::UpstreamStalled => Termination::UpstreamStalled,
                    End::DeadlineExceeded => Termination::UpstreamTimeout,
                };
            }
            AccessLog::submit(log);
        }
        let body_complete = end == End::Complete;
        if body_complete && let Some(active) = &self.upstream {
            let pool = &active.endpoint().pool;
            match std::mem::replace(&mut self.reuse, Reuse::Nothing) {
                Reuse::Hyper { sender, window_ms } => {
                    pool.checkin_h1(sender, now, now + ms(window_ms));
                }
                Reuse::Ours { idle_ms } => {
                    if let Some(conn) = h1.and_then(H1Body::take_reusable) {
                        let until = now + conn.reuse_window(ms(idle_ms));
                        pool.put_h1(conn, now, until);
                    }
                }
                Reuse::Nothing => {}
            }
        }
        self.metrics
            .duration
            .observe(now.saturating_duration_since(self.started).as_secs_f64());
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    /// Dropped before its end: the client went away.
    Dropped,
    UpstreamFailed,
    UpstreamStalled,
    /// A gRPC call's deadline passed while the body was under way.
    DeadlineExceeded,
}

impl Drop for Completion {
    /// A request dropped before it had a response (the client went away
    /// while it waited) is logged here.
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.duration = self.started.elapsed();
            log.status = Some(499);
            if log.termination == Termination::Ok {
                log.termination = Termination::ClientClosedEarly;
            }
            AccessLog::submit(log);
        }
    }
}

enum Kind {
    /// From hyper's client, with its stall timer (made on first wait).
    /// Boxed: the other kinds are smaller, and a body is moved several
    /// times per request.
    Upstream(Box<(Incoming, StallTimer)>),
    /// A gRPC call's, from hyper's client, ended at the call's deadline.
    Grpc(Box<GrpcUpstream>),
    /// From our HTTP/1.1 client, which keeps its own timer.
    H1(H1Body),
    Local(Option<Bytes>),
}

/// A gRPC response body with a deadline.
struct GrpcUpstream {
    /// `None` once the deadline passed: dropping it reset the stream.
    body: Option<Incoming>,
    stall: StallTimer,
    deadline: Pin<Box<Sleep>>,
}

pub struct ProxyBody {
    kind: Kind,
    completion: Option<Completion>,
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error(transparent)]
    H1(#[from] H1Error),
    #[error("no response body byte from the upstream for {0:?}")]
    Stalled(Duration),
}

impl ProxyBody {
    /// A body from hyper's client, cut after `stall` without a byte.
    pub fn upstream(body: Incoming, stall: Duration, completion: Completion) -> Self {
        Self {
            kind: Kind::Upstream(Box::new((body, StallTimer::new(stall)))),
            completion: Some(completion),
        }
    }

    /// A gRPC call's body from hyper's client, cut after `stall` without a
    /// byte, and ended with `DEADLINE_EXCEEDED` trailers at `deadline`.
    pub fn grpc(
        body: Incoming,
        stall: Duration,
        deadline: Instant,
        completion: Completion,
    ) -> Self {
        Self {
            kind: Kind::Grpc(Box::new(GrpcUpstream {
                body: Some(body),
                stall: StallTimer::new(stall),
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
            })),
            completion: Some(completion),
        }
    }

    /// A body read by our HTTP/1.1 client.
    pub fn h1(body: H1Body, completion: Completion) -> Self {
        Self {
            kind: Kind::H1(body),
            completion: Some(completion),
        }
    }

    pub fn local(data: Bytes, completion: Completion) -> Self {
        Self {
            kind: Kind::Local((!data.is_empty()).then_some(data)),
            completion: Some(completion),
        }
    }

    fn complete(&mut self, end: End) {
        if let Some(c) = self.completion.take() {
            let h1 = match &mut self.kind {
                Kind::H1(body) => Some(body),
                _ => None,
            };
            c.finish(end, h1);
        }
    }

    /// The access log entry of the request this body answers.
    pub fn log(&mut self) -> Option<&mut Record> {
        self.completion.as_mut().and_then(Completion::log)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(upstream) => match Pin::new(&mut upstream.0).poll_frame(cx) {
                Poll::Ready(frame) => {
                    upstream.1.progress();
                    Poll::Ready(frame.map(|r| r.map_err(BodyError::from)))
                }
                Poll::Pending => match upstream.1.poll_blocked(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(BodyError::Stalled(upstream.1.limit()))))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
            Kind::Grpc(grpc) => {
                let Some(body) = grpc.body.as_mut() else {
                    return Poll::Ready(None);
                };
                // Checked first: a server that never pauses is cut too.
                if grpc.deadline.as_mut().poll(cx).is_ready() {
                    grpc.body = None;
                    this.complete(End::DeadlineExceeded);
                    let trailers = super::grpc::deadline_trailers();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(frame) => {
                        grpc.stall.progress();
                        Poll::Ready(frame.map(|r| r.map_err(BodyError::from)))
                    }
                    Poll::Pending => match grpc.stall.poll_blocked(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(BodyError::Stalled(grpc.stall.limit()))))
                        }
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
            Kind::H1(body) => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(BodyError::from))),
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(log) = this.log()
                    && let Some(data) = frame.data_ref()
                {
                    log.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete(End::Complete),
            Poll::Ready(Some(Err(error))) => {
                let stalled = matches!(
                    error,
                    BodyError::Stalled(_) | BodyError::H1(H1Error::Stalled(_))
                );
                if stalled && let Some(c) = &this.completion {
                    c.metrics.upstream_stalls.inc();
                }
                this.complete(if stalled {
                    End::UpstreamStalled
                } else {
                    End::UpstreamFailed
                });
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(upstream) => upstream.0.is_end_stream(),
            Kind::Grpc(grpc) => grpc.body.as_ref().is_none_or(Incoming::is_end_stream),
            Kind::H1(body) => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(upstream) => upstream.0.size_hint(),
            Kind::Grpc(grpc) => grpc
                .body
                .as_ref()
                .map_or_else(SizeHint::default, Incoming::size_hint),
            Kind::H1(body) => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may drop a body it knows is empty without polling it.
        let end = if self.is_end_stream() {
            End::Complete
        } else {
            End::Dropped
        };
        self.complete(end);
    }
}

#[cfg(test)]
mod tests {
    /// A response body (with its completion) is moved several times per
    /// request, by us and by hyper: every byte it grows is copied again
    /// each time (measured: 56 bytes more cost ~350 instructions per
    /// request). Grow it only on purpose.
    #[test]
    fn a_response_body_stays_small() {
        // 8 bytes of each are the access log entry's pointer (issue 20).
        assert!(std::mem::size_of::<super::ProxyBody>() <= 120);
        assert!(std::mem::size_of::<super::Completion>() <= 80);
    }
}
