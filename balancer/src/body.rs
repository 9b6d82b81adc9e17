//! The response body the proxy hands to hyper: either the backend's streamed body or a short
//! body of ebbtide's own (an error). It carries the request's completion guard, so the end of the
//! response (or the client going away) is what frees the backend slot and records the latency.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// What the proxy answers with. No boxing: one enum, so no allocation per response.
pub struct ProxyBody<G> {
    inner: Inner,
    _guard: Option<G>,
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl<G> ProxyBody<G> {
    /// The backend's body, streamed through; `guard` is dropped when it ends or is abandoned.
    pub fn upstream(body: Incoming, guard: G) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            _guard: Some(guard),
        }
    }

    /// A body of ebbtide's own.
    pub fn full(bytes: impl Into<Bytes>, guard: Option<G>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes.into())),
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for ProxyBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
