//! The response body the proxy hands to hyper: the backend's streamed body, a short body of
//! ebbtide's own, or (rarely) a kept prefix followed by the rest of a stream. It carries the
//! request's completion guard: the end of the response (or the client going away) is what frees
//! the backend slot and records the latency, and a clean end returns the connection to its pool.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Told when a streamed body has been read to its end (and not merely dropped).
pub trait OnEnd {
    /// The body ended cleanly.
    fn on_end(&mut self);
}

impl OnEnd for () {
    fn on_end(&mut self) {}
}

/// What the proxy answers with. One enum, so no allocation per response on the common paths.
pub struct ProxyBody<G: OnEnd> {
    inner: Inner<G>,
    guard: Option<G>,
}

enum Inner<G: OnEnd> {
    Upstream(Incoming),
    Full(Option<Bytes>),
    Prefixed(Option<Bytes>, Box<ProxyBody<G>>),
}

impl<G: OnEnd> ProxyBody<G> {
    /// The backend's body, streamed through; `guard` is told of a clean end and then dropped.
    pub fn upstream(body: Incoming, guard: G) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
            guard: Some(guard),
        }
    }

    /// A body of ebbtide's own.
    pub fn full(bytes: impl Into<Bytes>, guard: Option<G>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes.into())),
            guard,
        }
    }

    /// `prefix`, then the rest of `rest` (a body partly read already).
    pub fn prefixed(prefix: Bytes, rest: ProxyBody<G>) -> Self {
        ProxyBody {
            inner: Inner::Prefixed(Some(prefix), Box::new(rest)),
            guard: None,
        }
    }
}

impl<G: OnEnd + Unpin> Body for ProxyBody<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Prefixed(prefix, rest) => match prefix.take().filter(|b| !b.is_empty()) {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        };
        if let Poll::Ready(None) = polled {
            if let Some(g) = this.guard.as_mut() {
                g.on_end();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Inner::Prefixed(p, rest) => {
                p.as_ref().is_none_or(|b| b.is_empty()) && rest.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Prefixed(p, rest) => {
                let n = p.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + n);
                if let Some(u) = r.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}
