//! The request body sent upstream: the client's body, streamed, counted
//! against `[limits] max_body_bytes`; or nothing, for a retried request
//! that had no body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The request body sent upstream: the client's body, streamed, counted
/// against `[limits] max_body_bytes`; or nothing, for a retried request
/// that had no body.
pub struct RequestBody {
    inner: Option<Incoming>,
    /// Bytes still allowed (`u64::MAX` without a limit).
    remaining: u64,
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body larger than the {0}-byte limit")]
    TooLarge(u64),
    #[error("reading the request body")]
    Client(#[source] hyper::Error),
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: Option<u64>) -> Self {
        Self {
            inner: Some(inner),
            remaining: limit.unwrap_or(u64::MAX),
        }
    }

    pub fn empty() -> Self {
        Self {
            inner: None,
            remaining: 0,
        }
    }

    /// Whether `error` (from sending this body upstream) is the limit.
    pub fn is_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if matches!(e.downcast_ref(), Some(RequestBodyError::TooLarge(_))) {
                return true;
            }
            next = e.source();
        }
        false
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
            Poll::Pending => Poll::Pending,
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
