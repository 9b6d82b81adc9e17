//! HTTP/2 to one backend (`h2c` prior knowledge, RFC 9113 §3.3, or `h2` over TLS): requests are
//! streams multiplexed on a few shared connections instead of one connection each.
//!
//! A stream is leased from the first open connection with room: fewer streams than the smaller
//! of `[upstream] max_streams_per_connection` and the backend's own
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 §6.5.2, read from the SETTINGS frame that opens
//! the backend's side of the connection). With every connection full, another is opened; one
//! connect at a time per backend, and requests that waited on a connect that failed share its
//! error rather than each trying again in turn. The slots (capacity, central queue, adaptive
//! limit) are taken per request before a stream is leased, so they count streams as they count
//! HTTP/1 requests.
//!
//! Unlike an HTTP/1 connection, an HTTP/2 one is driven by tasks of its own (hyper's): many
//! requests use it at once, so no single request can drive it.

use super::connect::{Connector, Io};
use super::{ConnectError, SendError, UpstreamBody};
use crate::clock::Clock;
use ebbtide_config::time::Nanos;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// One HTTP/2 connection, shared by the streams leased on it.
pub(super) struct H2Conn {
    sender: SendRequest<UpstreamBody>,
    /// Streams leased and not yet given back.
    streams: AtomicU32,
    /// The most streams this connection carries: ours and the backend's limit, whichever is lower.
    limit: u32,
    /// When its last stream ended (clock nanos), for the idle timeout.
    idle_since: AtomicU64,
    /// Whether a stream was leased on it before.
    used: AtomicBool,
    clock: Clock,
}

impl H2Conn {
    fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Takes a stream if the connection has room: a compare-and-swap, so racing leases never
    /// exceed the limit.
    fn try_lease(self: &Arc<Self>, scheme: &Scheme, authority: &Authority) -> Option<Stream> {
        let mut cur = self.streams.load(Ordering::Acquire);
        loop {
            if cur >= self.limit || !self.is_open() {
                return None;
            }
            match self.streams.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        let reused = self.used.swap(true, Ordering::Relaxed);
        Some(Stream {
            conn: self.clone(),
            sender: self.sender.clone(),
            scheme: scheme.clone(),
            authority: authority.clone(),
            reused,
        })
    }
}

/// A stream leased on a connection: given back when dropped (the response has ended, or the
/// client went away, which resets the stream).
pub struct Stream {
    conn: Arc<H2Conn>,
    sender: SendRequest<UpstreamBody>,
    scheme: Scheme,
    /// The backend's address, for `:authority` when the request has no `Host`.
    authority: Authority,
    /// Whether the connection carried a stream before this one.
    pub(super) reused: bool,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn
                .idle_since
                .store(self.conn.clock.now(), Ordering::Release);
        }
    }
}

impl Stream {
    /// Sends a request on a new stream. HTTP/2 carries the target as pseudo-headers (RFC 9113
    /// §8.3.1): `:scheme` from the protocol, `:authority` from the `Host` header (which is then
    /// dropped, as an intermediary converting to HTTP/2 does), `:path` from the target.
    pub(super) async fn send(
        &mut self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let host = req.headers_mut().remove(header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        parts.path_and_query = Some(path.clone());
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        *req.version_mut() = Version::HTTP_2;
        self.sender.try_send_request(req).await.map_err(|mut e| {
            // Handed back unsent: put the head back as the try loop gave it, for another try
            // (perhaps on an HTTP/1 backend).
            let unsent = e.take_message().map(|mut r| {
                *r.uri_mut() = Uri::from(path);
                *r.version_mut() = Version::HTTP_11;
                if let Some(h) = host {
                    r.headers_mut().insert(header::HOST, h);
                }
                r
            });
            SendError {
                error: e.into_error(),
                unsent,
            }
        })
    }
}

/// The HTTP/2 connections to one backend.
pub(super) struct H2Pool {
    conns: Mutex<Vec<Arc<H2Conn>>>,
    /// Held while a connection is being opened, so that one connect serves every request that
    /// found no room; the last connect failure and when it happened.
    opening: tokio::sync::Mutex<Option<(Nanos, ConnectError)>>,
    max_streams: u32,
    scheme: Scheme,
    authority: Authority,
    clock: Clock,
}

impl H2Pool {
    pub(super) fn new(max_streams: u32, tls: bool, authority: Authority, clock: Clock) -> Self {
        H2Pool {
            conns: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(None),
            max_streams: max_streams.max(1),
            scheme: if tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<H2Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream on a connection with room, without waiting; closed connections are dropped on
    /// the way.
    fn lease(&self) -> Option<Stream> {
        let mut conns = self.lock();
        conns.retain(|c| c.is_open());
        conns
            .iter()
            .find_map(|c| c.try_lease(&self.scheme, &self.authority))
    }

    /// A stream: on a connection with room, or on a new one.
    pub(super) async fn checkout(&self, connector: &Connector) -> Result<Stream, ConnectError> {
        if let Some(s) = self.lease() {
            return Ok(s);
        }
        let asked = self.clock.now();
        // Not the hot path: only requests that found every connection full wait here.
        let mut opening = self.opening.lock().await;
        if let Some(s) = self.lease() {
            return Ok(s);
        }
        if let Some((at, e)) = opening.as_ref() {
            if *at >= asked {
                return Err(e.clone());
            }
        }
        match self.open(connector).await {
            Ok(conn) => {
                *opening = None;
                let stream = conn
                    .try_lease(&self.scheme, &self.authority)
                    .ok_or_else(|| ConnectError::Failed("the new connection closed".into()))?;
                self.lock().push(conn);
                Ok(stream)
            }
            Err(e) => {
                *opening = Some((self.clock.now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Opens a connection and waits for the backend's SETTINGS (within what is left of the
    /// connect timeout): a server that does not speak HTTP/2 fails here, before any request
    /// was sent on it.
    async fn open(&self, connector: &Connector) -> Result<Arc<H2Conn>, ConnectError> {
        let started = tokio::time::Instant::now();
        let io = connector.connect().await?;
        let (settings_tx, settings_rx) = oneshot::channel();
        let io = FirstFrame::new(io, settings_tx);
        let failed = |what: String| ConnectError::Failed(format!("{}: {what}", connector.address));
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake::<_, UpstreamBody>(TokioIo::new(io))
            .await
            .map_err(|e| failed(format!("HTTP/2 handshake: {e}")))?;
        let address = connector.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %address, error = %e, "HTTP/2 connection to the backend ended");
            }
        });
        let left = connector.timeout.saturating_sub(started.elapsed());
        let peer_max = match tokio::time::timeout(left, settings_rx).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(_)) => return Err(failed("closed before its HTTP/2 SETTINGS".into())),
            Ok(Ok(Err(what))) => return Err(failed(what)),
            Ok(Ok(Ok(max))) => max,
        };
        Ok(Arc::new(H2Conn {
            sender,
            streams: AtomicU32::new(0),
            limit: peer_max.unwrap_or(u32::MAX).min(self.max_streams).max(1),
            idle_since: AtomicU64::new(self.clock.now()),
            used: AtomicBool::new(false),
            clock: self.clock,
        }))
    }

    /// Closes connections idle (no stream) for longer than `idle_ns`, and closed ones.
    pub(super) fn sweep(&self, now: Nanos, idle_ns: Nanos) {
        self.lock().retain(|c| {
            c.is_open()
                && (c.streams.load(Ordering::Acquire) > 0
                    || now.saturating_sub(c.idle_since.load(Ordering::Acquire)) <= idle_ns)
        });
    }

    /// Forgets every connection: each closes once its last stream ends (the backend is leaving).
    pub(super) fn close_idle(&self) {
        self.lock().clear();
    }

    /// Connections held.
    pub(super) fn connections(&self) -> usize {
        self.lock().len()
    }
}

/// HTTP/2 frame type of SETTINGS (RFC 9113 §6.5) and the id of SETTINGS_MAX_CONCURRENT_STREAMS.
const SETTINGS: u8 = 0x4;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Watches the first frame the backend sends, which must be SETTINGS (RFC 9113 §3.4), and
/// reports its SETTINGS_MAX_CONCURRENT_STREAMS (None: not given, so unlimited), or why it was
/// not an HTTP/2 server. After that, a flag test per read.
struct FirstFrame {
    io: Io,
    seen: Vec<u8>,
    report: Option<oneshot::Sender<Result<Option<u32>, String>>>,
}

impl FirstFrame {
    fn new(io: Io, report: oneshot::Sender<Result<Option<u32>, String>>) -> Self {
        FirstFrame {
            io,
            seen: Vec::new(),
            report: Some(report),
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        if self.report.is_none() {
            return;
        }
        self.seen.extend_from_slice(bytes);
        if let Some(result) = parse_first_frame(&self.seen) {
            self.seen = Vec::new();
            if let Some(r) = self.report.take() {
                let _ = r.send(result);
            }
        }
    }
}

/// The first frame's verdict once enough bytes are in: its SETTINGS_MAX_CONCURRENT_STREAMS, or
/// why it is not an HTTP/2 server preface. None: more bytes needed.
fn parse_first_frame(b: &[u8]) -> Option<Result<Option<u32>, String>> {
    if b.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
    if b[3] != SETTINGS || stream != 0 || !len.is_multiple_of(6) || len > 16_384 {
        return Some(Err(
            "not an HTTP/2 server: its first bytes are not a SETTINGS frame".into(),
        ));
    }
    let payload = b.get(9..9 + len)?;
    let max = payload.chunks_exact(6).fold(None, |max, s| {
        if u16::from_be_bytes([s[0], s[1]]) == MAX_CONCURRENT_STREAMS {
            Some(u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        } else {
            max
        }
    });
    Some(Ok(max))
}

impl AsyncRead for FirstFrame {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.report.is_some() {
            if let Poll::Ready(Ok(())) = &polled {
                if buf.filled().len() == before {
                    // End of stream before a whole first frame: the receiver hears of the close.
                    this.report = None;
                } else {
                    let new = buf.filled()[before..].to_vec();
                    this.watch(&new);
                }
            }
        }
        polled
    }
}

write_through!(impl for FirstFrame);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolConfig};
    use bytes::Bytes;
    use ebbtide_config::Protocol;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    /// An h2c backend advertising `max_streams` (None: no limit) that holds each response until
    /// `release` has a permit; counts accepted connections.
    async fn h2c_backend(
        max_streams: Option<u32>,
        release: Arc<Semaphore>,
    ) -> (String, Arc<AtomicU32>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let release = release.clone();
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.max_concurrent_streams(max_streams);
                tokio::spawn(b.serve_connection(
                    TokioIo::new(s),
                    service_fn(move |req: Request<Incoming>| {
                        let release = release.clone();
                        async move {
                            release.acquire().await.unwrap().forget();
                            let authority = req.uri().authority().map(|a| a.to_string());
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(Bytes::from(
                                    authority.unwrap_or_default(),
                                )),
                            ))
                        }
                    }),
                ));
            }
        });
        (addr, accepted)
    }

    fn h2c_pool(addr: String, max_streams: u32) -> Arc<Pool> {
        let cfg = PoolConfig {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
            max_streams,
        };
        Arc::new(Pool::with_protocol(
            addr,
            Protocol::H2c,
            None,
            cfg,
            Clock::new(),
        ))
    }

    fn get(host: &str) -> Request<UpstreamBody> {
        Request::builder()
            .uri("/x")
            .header(header::HOST, host)
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    /// Many requests at once share connections: as many as the smaller of our cap and the
    /// backend's SETTINGS_MAX_CONCURRENT_STREAMS per connection, then another connection.
    async fn connections_for(ours: u32, theirs: Option<u32>, requests: usize) -> u32 {
        let release = Arc::new(Semaphore::new(0));
        let (addr, accepted) = h2c_backend(theirs, release.clone()).await;
        let pool = h2c_pool(addr, ours);
        let mut held = Vec::new();
        for _ in 0..requests {
            let mut conn = pool.checkout().await.unwrap();
            assert!(conn.is_h2());
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                let resp = conn.send(get("svc.example:50051")).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                let _ = tx.send(body);
                drop(conn);
            });
            held.push(rx);
        }
        release.add_permits(requests);
        for rx in held {
            assert_eq!(
                rx.await.unwrap(),
                "svc.example:50051",
                ":authority is the Host"
            );
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn concurrent_requests_share_a_connection() {
        assert_eq!(connections_for(100, None, 20).await, 1);
    }

    #[tokio::test]
    async fn the_backends_stream_limit_opens_more_connections() {
        assert_eq!(connections_for(100, Some(4), 10).await, 3);
        assert_eq!(connections_for(5, None, 10).await, 2);
    }

    #[tokio::test]
    async fn a_stream_given_back_is_reused_and_idle_connections_are_swept() {
        let release = Arc::new(Semaphore::new(100));
        let (addr, accepted) = h2c_backend(None, release).await;
        let pool = h2c_pool(addr, 100);
        for i in 0..3 {
            let mut conn = pool.checkout().await.unwrap();
            assert_eq!(conn.reused, i > 0);
            let resp = conn.send(get("h")).await.unwrap();
            resp.into_body().collect().await.unwrap();
            pool.checkin(conn);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
        pool.h2.as_ref().unwrap().sweep(u64::MAX, 0);
        assert_eq!(pool.idle_count(), 0);
    }

    /// An HTTP/1 server behind `protocol = "h2c"` fails at connect: the request was never sent.
    #[tokio::test]
    async fn a_server_that_is_not_http2_fails_the_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let pool = h2c_pool(addr, 100);
        let err = pool.checkout().await.err().expect("no connection");
        assert!(err.to_string().contains("not an HTTP/2 server"), "{err}");
        assert!(!err.is_local());
    }

    fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let len = pairs.len() * 6;
        let mut b = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            SETTINGS,
            0,
            0,
            0,
            0,
            0,
        ];
        for (id, v) in pairs {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    #[test]
    fn the_first_settings_frame_gives_the_stream_limit() {
        let f = settings(&[(0x4, 65_535), (MAX_CONCURRENT_STREAMS, 7), (0x6, 16_384)]);
        assert_eq!(parse_first_frame(&f), Some(Ok(Some(7))));
        // Byte by byte: no verdict until the whole frame is in.
        for n in 0..f.len() {
            assert_eq!(parse_first_frame(&f[..n]), None, "{n} bytes");
        }
        assert_eq!(parse_first_frame(&settings(&[(0x4, 1)])), Some(Ok(None)));
        assert_eq!(parse_first_frame(&settings(&[])), Some(Ok(None)));
    }

    #[test]
    fn an_http1_answer_is_not_an_http2_server() {
        let r = parse_first_frame(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert!(matches!(r, Some(Err(_))), "{r:?}");
        // A frame of another type first (DATA on stream 1).
        let r = parse_first_frame(&[0, 0, 0, 0x0, 0, 0, 0, 0, 1]);
        assert!(matches!(r, Some(Err(_))), "{r:?}");
    }
}
