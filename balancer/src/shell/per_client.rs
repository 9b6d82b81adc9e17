//! Limits per client IP address across all of its connections: how many connections it holds
//! open ([`ConnLimits::max_per_client`]) and how many HTTP/2 streams it has in flight at once
//! ([`ConnLimits::max_streams_per_client`]); hyper's `max_concurrent_streams` bounds only one
//! connection's, so without this a client multiplies it by its connections.
//!
//! [`ConnLimits::max_per_client`]: crate::serve::ConnLimits::max_per_client
//! [`ConnLimits::max_streams_per_client`]: crate::serve::ConnLimits::max_streams_per_client

use bytes::Bytes;
use http::{Request, Response, Version};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The connections and streams open per client IP address.
pub(crate) struct PerClient {
    open: Mutex<HashMap<IpAddr, Entry>>,
    /// Most connections per address; 0: no limit.
    max_conns: u32,
    /// Most HTTP/2 streams in flight per address; 0: no limit.
    max_streams: u32,
}

struct Entry {
    conns: u32,
    /// Streams in flight on all of this address's connections, shared by them so that counting
    /// a stream is one atomic operation, with no lock.
    streams: Arc<AtomicU32>,
}

/// One connection counted in [`PerClient`]; uncounted when dropped.
pub(crate) struct ClientConn {
    table: Arc<PerClient>,
    ip: IpAddr,
    streams: Arc<AtomicU32>,
}

impl PerClient {
    /// A table for these limits, or `None` when both are 0 (nothing to count).
    pub(crate) fn new(max_conns: u32, max_streams: u32) -> Option<Arc<PerClient>> {
        (max_conns > 0 || max_streams > 0).then(|| {
            Arc::new(PerClient {
                open: Mutex::default(),
                max_conns,
                max_streams,
            })
        })
    }

    /// Counts a connection from `ip`, or `None` when `ip` has `max_conns` open already.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<ClientConn> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let e = open.entry(ip).or_insert_with(|| Entry {
            conns: 0,
            streams: Arc::default(),
        });
        if self.max_conns > 0 && e.conns >= self.max_conns {
            if e.conns == 0 {
                open.remove(&ip);
            }
            return None;
        }
        e.conns += 1;
        Some(ClientConn {
            table: self.clone(),
            ip,
            streams: e.streams.clone(),
        })
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = open.get_mut(&self.ip) {
            e.conns -= 1;
            if e.conns == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One HTTP/2 stream counted against its client address; uncounted when dropped, which is when
/// the response body has been sent (or the stream was reset).
pub(crate) struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's service: notes that a whole request head arrived (for the deadline of the
/// first one, [`crate::shell::head_deadline`]) and refuses an HTTP/2 stream past the client
/// address's limit with `RST_STREAM(REFUSED_STREAM)`.
///
/// REFUSED_STREAM rather than `429`: RFC 9113 §8.7 makes it a promise that the request was not
/// processed at all, so any client may retry it, even a POST, on another connection or later,
/// and HTTP/2 clients do so on their own (as for a full `SETTINGS_MAX_CONCURRENT_STREAMS`); a
/// 429 would reach the application as a response that looks like the backend's.
pub(crate) struct ConnService<S> {
    inner: S,
    seen: Arc<AtomicBool>,
    /// The address's stream counter and its limit, when streams are limited.
    streams: Option<(Arc<AtomicU32>, u32)>,
}

impl<S> ConnService<S> {
    /// Wraps `inner` for one connection; `conn` is its entry in the per-client table.
    pub(crate) fn new(inner: S, seen: Arc<AtomicBool>, conn: Option<&ClientConn>) -> Self {
        let streams = conn
            .filter(|c| c.table.max_streams > 0)
            .map(|c| (c.streams.clone(), c.table.max_streams));
        ConnService {
            inner,
            seen,
            streams,
        }
    }
}

impl<S, B> hyper::service::Service<Request<hyper::body::Incoming>> for ConnService<S>
where
    S: hyper::service::Service<
        Request<hyper::body::Incoming>,
        Response = Response<B>,
        Error = std::convert::Infallible,
    >,
{
    type Response = Response<Counted<B>>;
    type Error = h2::Error;
    type Future = ConnFuture<S::Future>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        self.seen.store(true, Ordering::Relaxed);
        let mut slot = None;
        if let (Some((streams, max)), Version::HTTP_2) = (&self.streams, req.version()) {
            if streams.fetch_add(1, Ordering::Relaxed) >= *max {
                streams.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("too many HTTP/2 streams from this client; REFUSED_STREAM");
                return ConnFuture::Refused;
            }
            slot = Some(StreamSlot(streams.clone()));
        }
        ConnFuture::Call {
            fut: self.inner.call(req),
            slot,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`ConnService`]: the inner service's, carrying the stream's slot into the
    /// response body.
    #[project = ConnFutureProj]
    pub(crate) enum ConnFuture<F> {
        /// The stream was refused.
        Refused,
        /// The inner service's call.
        Call { #[pin] fut: F, slot: Option<StreamSlot> },
    }
}

impl<F, B> Future for ConnFuture<F>
where
    F: Future<Output = Result<Response<B>, std::convert::Infallible>>,
{
    type Output = Result<Response<Counted<B>>, h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnFutureProj::Refused => Poll::Ready(Err(h2::Reason::REFUSED_STREAM.into())),
            ConnFutureProj::Call { fut, slot } => {
                let res = match fut.poll(cx) {
                    Poll::Ready(Ok(res)) => res,
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => return Poll::Pending,
                };
                let slot = slot.take();
                Poll::Ready(Ok(res.map(|body| Counted { body, _slot: slot })))
            }
        }
    }
}

/// A response body that holds its stream's [`StreamSlot`] until it is dropped.
pub(crate) struct Counted<B> {
    body: B,
    _slot: Option<StreamSlot>,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn connections_are_counted_per_address_and_streams_shared_across_them() {
        let table = PerClient::new(2, 3).unwrap();
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let a1 = table.enter(a).unwrap();
        let a2 = table.enter(a).unwrap();
        assert!(table.enter(a).is_none(), "a third connection from a");
        let b1 = table.enter(b).unwrap();
        assert!(Arc::ptr_eq(&a1.streams, &a2.streams));
        assert!(!Arc::ptr_eq(&a1.streams, &b1.streams));
        drop(a1);
        let a3 = table.enter(a).unwrap();
        assert!(Arc::ptr_eq(&a3.streams, &a2.streams));
        drop((a2, a3, b1));
        assert!(table.open.lock().unwrap().is_empty(), "entries removed");
    }

    #[test]
    fn no_connection_limit_when_only_streams_are_limited() {
        let table = PerClient::new(0, 1).unwrap();
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let conns: Vec<_> = (0..100).map(|_| table.enter(a).unwrap()).collect();
        assert_eq!(table.open.lock().unwrap()[&a].conns, 100);
        drop(conns);
        assert!(PerClient::new(0, 0).is_none());
    }
}
