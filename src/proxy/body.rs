//! The response body the proxy sends to clients.
//!
//! Either the upstream's body, streamed frame by frame, or a small local body
//! (errors, the `respond` backend). Both carry a [`Completion`] that runs
//! once when the response is over: it observes the request duration, ends the
//! request's in-flight marks, and hands a cleanly finished upstream HTTP/1.1
//! connection back to its pool or to the client connection's inline cache.
//!
//! An upstream body read from an inline connection is read from that
//! connection's socket by the poll itself (see `inline.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::io::InflightGuard;
use crate::metrics::RequestMetrics;
use crate::upstream::connect::H1Sender;
use crate::upstream::inline::{InlineBody, InlineCache, InlineError};
use crate::upstream::state::ActiveGuard;

/// Work to finish when a response ends, however it ends.
pub struct Completion {
    started: Instant,
    metrics: Arc<RequestMetrics>,
    _inflight: InflightGuard,
    upstream: Option<ActiveGuard>,
    reusable: Option<H1Sender>,
    inline_home: Option<Arc<InlineCache>>,
}

impl Completion {
    pub fn new(started: Instant, metrics: Arc<RequestMetrics>, inflight: InflightGuard) -> Self {
        Self {
            started,
            metrics,
            _inflight: inflight,
            upstream: None,
            reusable: None,
            inline_home: None,
        }
    }

    /// Ties the endpoint's in-flight count, and the connection to return to
    /// its pool, to the end of this response.
    pub fn with_upstream(mut self, active: ActiveGuard, sender: Option<H1Sender>) -> Self {
        self.upstream = Some(active);
        self.reusable = sender;
        self
    }

    /// Ties the end of this response to returning an inline connection to
    /// the client connection's cache (`home`), or to the endpoint's pool.
    pub fn with_inline(mut self, active: ActiveGuard, home: Option<Arc<InlineCache>>) -> Self {
        self.upstream = Some(active);
        self.inline_home = home;
        self
    }

    fn finish(mut self, body_complete: bool, inline: Option<&mut InlineBody>) {
        let now = Instant::now();
        if body_complete {
            if let (Some(sender), Some(active)) = (self.reusable.take(), self.upstream.as_ref()) {
                active.endpoint().pool.checkin_h1(sender);
            }
            if let (Some(conn), Some(active)) = (
                inline.and_then(InlineBody::take_reusable),
                self.upstream.as_ref(),
            ) {
                match self.inline_home.take() {
                    Some(home) => home.put(active.endpoint(), conn, now),
                    None => active.endpoint().pool.park_inline(conn, now),
                }
            }
        }
        self.metrics
            .duration
            .observe(now.saturating_duration_since(self.started).as_secs_f64());
    }
}

enum Kind {
    Upstream(Incoming),
    Inline(InlineBody),
    Local(Option<Bytes>),
}

pub struct ProxyBody {
    kind: Kind,
    completion: Option<Completion>,
}

/// A polled frame with its error as a [`BodyError`].
fn with_body_error<E: Into<BodyError>>(
    polled: Poll<Option<Result<Frame<Bytes>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error(transparent)]
    Inline(#[from] InlineError),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, completion: Completion) -> Self {
        Self {
            kind: Kind::Upstream(body),
            completion: Some(completion),
        }
    }

    /// An upstream body read from an inline connection.
    pub fn inline(body: InlineBody, completion: Completion) -> Self {
        Self {
            kind: Kind::Inline(body),
            completion: Some(completion),
        }
    }

    pub fn local(data: Bytes, completion: Completion) -> Self {
        Self {
            kind: Kind::Local((!data.is_empty()).then_some(data)),
            completion: Some(completion),
        }
    }

    fn complete(&mut self, body_complete: bool) {
        if let Some(c) = self.completion.take() {
            let inline = match &mut self.kind {
                Kind::Inline(body) => Some(body),
                _ => None,
            };
            c.finish(body_complete, inline);
        }
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
            Kind::Upstream(body) => with_body_error(Pin::new(body).poll_frame(cx)),
            Kind::Inline(body) => with_body_error(body.poll_frame(cx)),
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(None) => this.complete(true),
            Poll::Ready(Some(Err(_))) => this.complete(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Inline(body) => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Inline(body) => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may drop a body it knows is empty without polling it.
        let complete = self.is_end_stream();
        self.complete(complete);
    }
}
