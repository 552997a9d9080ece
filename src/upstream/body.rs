//! The request body sent upstream: the client's body, streamed, counted
//! against `[limits] max_body_bytes`, and cut when the client stops
//! sending it for `client_stall`; or nothing, for a retried request that
//! had no body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;

use crate::error_chain::sources;
use crate::stall::StallTimer;

/// The request body sent upstream (see the module doc).
pub struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes still allowed (`u64::MAX` without a limit).
    remaining: u64,
    /// For a body still to come: the client's stall timer, and the
    /// listener's counter of stalled clients.
    stall: Option<Box<(StallTimer, IntCounter)>>,
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("no request body byte from the client for {0:?}")]
    Stalled(Duration),
    #[error("reading the request body")]
    Client(#[source] hyper::Error),
}

impl RequestBody {
    /// The client's body, at most `limit` bytes, each within `stall` of the
    /// one before (counted in `stalls` when not).
    #[inline]
    pub fn new(inner: Incoming, limit: Option<u64>, stall: Duration, stalls: &IntCounter) -> Self {
        // Most requests have no body: no timer, no counter handle.
        let stall =
            (!inner.is_end_stream()).then(|| Box::new((StallTimer::new(stall), stalls.clone())));
        Self {
            inner: Some(inner),
            remaining: limit.unwrap_or(u64::MAX),
            stall,
        }
    }

    pub fn empty() -> Self {
        Self {
            inner: None,
            remaining: 0,
            stall: None,
        }
    }

    /// The request body's own failure behind `error` (from sending this
    /// body upstream), if that is what ended the exchange.
    pub fn failure<'e>(
        error: &'e (dyn std::error::Error + 'static),
    ) -> Option<&'e RequestBodyError> {
        sources(error).find_map(|e| e.downcast_ref::<RequestBodyError>())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(stall) = this.stall.as_deref_mut() {
                    stall.0.progress();
                }
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.remaining))));
                    }
                    if this.remaining != u64::MAX {
                        this.remaining -= len;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let Some((timer, stalls)) = this.stall.as_deref_mut() else {
                    return Poll::Pending;
                };
                std::task::ready!(timer.poll_blocked(cx));
                stalls.inc();
                Poll::Ready(Some(Err(RequestBodyError::Stalled(timer.limit()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
