//! The response body the proxy hands to hyper: the backend's streamed body, a short body of
//! ebbtide's own, or (rarely) a kept prefix followed by the rest of a stream. It carries the
//! request's completion guard: the end of the response (or the client going away) is what frees
//! the backend slot and records the latency, and a clean end returns the connection to its pool.
//! The guard also holds the backend connection while the body streams, and drives it: the
//! connection has no task of its own (see [`crate::pool`]).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Told when a streamed body has been read to its end (and not merely dropped).
pub trait OnEnd {
    /// The body ended cleanly.
    fn on_end(&mut self);

    /// Drives whatever feeds the upstream body (the backend connection the guard holds), when
    /// the body has nothing buffered. `cx` must be woken when it can make progress.
    fn poll_upstream(&mut self, _cx: &mut Context<'_>) {}

    /// `len` bytes of body went out (for the access log).
    #[inline]
    fn on_data(&mut self, _len: usize) {}
}

impl OnEnd for () {
    fn on_end(&mut self) {}
}

/// What the proxy answers with. One enum, so no allocation per response on the common paths.
///
/// hyper stops polling a body as soon as [`Body::is_end_stream`] says it is done (a
/// `Content-Length` body after its last byte, an empty body before any poll) and drops it without
/// ever seeing `Ready(None)`. So the guard is also told of a clean end when the last data frame
/// leaves an upstream body at its end, and, failing that, when the body is dropped with its
/// upstream fully read: otherwise no fixed-length response would give its connection back.
pub struct ProxyBody<G: OnEnd> {
    inner: Inner<G>,
    guard: Option<G>,
    ended: bool,
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
            ended: false,
        }
    }

    /// A body of ebbtide's own.
    pub fn full(bytes: impl Into<Bytes>, guard: Option<G>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes.into())),
            guard,
            ended: false,
        }
    }

    /// `prefix`, then the rest of `rest` (a body partly read already).
    pub fn prefixed(prefix: Bytes, rest: ProxyBody<G>) -> Self {
        ProxyBody {
            inner: Inner::Prefixed(Some(prefix), Box::new(rest)),
            guard: None,
            ended: false,
        }
    }

    /// The guard, wherever it is (a prefixed body's is in its rest).
    pub fn guard_mut(&mut self) -> Option<&mut G> {
        match &mut self.inner {
            Inner::Prefixed(_, rest) if self.guard.is_none() => rest.guard_mut(),
            _ => self.guard.as_mut(),
        }
    }

    /// Tells the guard of a clean end, once.
    fn end(&mut self) {
        if !self.ended {
            self.ended = true;
            if let Some(g) = self.guard.as_mut() {
                g.on_end();
            }
        }
    }

    /// Whether the backend's side of an upstream body has been read to its end.
    fn upstream_done(&self) -> bool {
        matches!(&self.inner, Inner::Upstream(b) if b.is_end_stream())
    }
}

impl<G: OnEnd> Drop for ProxyBody<G> {
    fn drop(&mut self) {
        if self.upstream_done() {
            self.end();
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
            Inner::Upstream(b) => match Pin::new(&mut *b).poll_frame(cx) {
                Poll::Pending => match this.guard.as_mut() {
                    Some(g) => {
                        g.poll_upstream(cx);
                        Pin::new(b).poll_frame(cx)
                    }
                    None => Poll::Pending,
                },
                ready => ready,
            },
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Prefixed(prefix, rest) => match prefix.take().filter(|b| !b.is_empty()) {
                Some(p) => {
                    if let Some(g) = rest.guard_mut() {
                        g.on_data(p.len());
                    }
                    Poll::Ready(Some(Ok(Frame::data(p))))
                }
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        };
        if let (Poll::Ready(Some(Ok(frame))), Some(g)) = (&polled, this.guard.as_mut()) {
            if let Some(d) = frame.data_ref() {
                g.on_data(d.len());
            }
        }
        match &polled {
            Poll::Ready(None) => this.end(),
            Poll::Ready(Some(Ok(_))) if this.upstream_done() => this.end(),
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::test_support::{pool, Checkin};
    use crate::pool::UpstreamBody;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A backend answering `GET /n` with n bytes and a `Content-Length`; counts connections.
    async fn backend() -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(s),
                    service_fn(|req: http::Request<Incoming>| async move {
                        let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(vec![b'x'; n])),
                        ))
                    }),
                ));
            }
        });
        (addr, accepted)
    }

    /// hyper's server stops at `is_end_stream` and drops the body without polling it to
    /// `None`: a fixed-length or empty upstream body must still give its connection back.
    #[tokio::test]
    async fn a_body_read_as_hyper_reads_it_returns_its_connection() {
        let (addr, accepted) = backend().await;
        let pool = pool(addr);
        for (i, n) in [5usize, 0, 3, 0, 7].into_iter().enumerate() {
            let mut conn = pool.checkout().await.unwrap();
            assert_eq!(conn.reused, i > 0, "request {i}");
            let req = http::Request::builder()
                .uri(format!("/{n}"))
                .header("host", "backend")
                .body(UpstreamBody::Empty)
                .unwrap();
            let resp = conn.send(req).await.unwrap();
            let mut body = ProxyBody::upstream(resp.into_body(), Checkin(pool.clone(), Some(conn)));
            // What hyper's h1 dispatcher does: poll data frames while the body is not at its
            // end, then drop it.
            let mut got = 0;
            while !body.is_end_stream() {
                let frame = body.frame().await.unwrap().unwrap();
                got += frame.into_data().unwrap().len();
            }
            assert_eq!(got, n);
            drop(body);
            assert_eq!(pool.idle_count(), 1, "request {i}: connection given back");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A body dropped before its end (the client went away) must not give back a connection
    /// that still has response bytes in flight.
    #[tokio::test]
    async fn a_body_dropped_early_does_not_return_its_connection() {
        let (addr, _) = backend().await;
        let pool = pool(addr);
        let mut conn = pool.checkout().await.unwrap();
        let req = http::Request::builder()
            .uri("/100000")
            .header("host", "backend")
            .body(UpstreamBody::Empty)
            .unwrap();
        let resp = conn.send(req).await.unwrap();
        let mut body = ProxyBody::upstream(resp.into_body(), Checkin(pool.clone(), Some(conn)));
        let _ = body.frame().await;
        assert!(!body.is_end_stream());
        drop(body);
        assert_eq!(pool.idle_count(), 0);
    }
}
