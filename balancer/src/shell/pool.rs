//! Connections to one backend. Each backend owns its pool, so removing a backend closes its idle
//! connections, and connecting is a separate step from sending: a request whose connect (or TLS
//! handshake) failed never reached a backend and can be retried whatever its method.
//!
//! HTTP/1 (`http1`, and `https` over TLS): keep-alive connections, one request at a time each.
//! A connection has no task of its own: whoever holds it drives it (hyper's `Connection` future
//! is polled by the request that uses it, then by the response body it streams). A spawned
//! connection task would cost two task wake-ups per request (request in through a channel,
//! response out through a oneshot) for nothing, since one request at a time uses a connection.
//! An idle connection in the pool is polled by nobody; the next checkout (or sweep) polls it
//! once to learn whether the backend closed it meanwhile.
//!
//! HTTP/2 (`h2c`, and `h2` over TLS): streams multiplexed on a few shared connections, see
//! [`h2`].

mod connect;
mod h2;

pub use connect::{Connector, Io};
pub use h2::Stream;

use crate::clock::Clock;
use crate::proxy::{ClientBody, ClientBodyError};
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::upstream_tls::TlsTarget;
use ebbtide_config::Protocol;

/// A request body on its way to a backend: nothing, kept bytes (replayable), or the client's
/// stream (sent once).
pub enum UpstreamBody {
    /// No body.
    Empty,
    /// A body read whole, so the request can be sent again.
    Full(Option<Bytes>),
    /// The client's body, streamed through.
    Stream(ClientBody),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamBody::Empty => f.write_str("Empty"),
            UpstreamBody::Full(b) => write!(f, "Full({} bytes)", b.as_ref().map_or(0, |b| b.len())),
            UpstreamBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl UpstreamBody {
    /// A copy to send on another try, when this body can be replayed.
    pub fn replay(&self) -> Option<UpstreamBody> {
        match self {
            UpstreamBody::Empty => Some(UpstreamBody::Empty),
            UpstreamBody::Full(b) => Some(UpstreamBody::Full(b.clone())),
            UpstreamBody::Stream(_) => None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Empty => Poll::Ready(None),
            UpstreamBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            UpstreamBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            UpstreamBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Stream(s) => s.size_hint(),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// The TCP connect did not finish within the connect timeout.
    Timeout,
    /// The connect, the TLS handshake or the HTTP handshake failed.
    Failed(String),
    /// The balancer itself could not connect: out of file descriptors, memory, buffers or
    /// local ports. Not the backend's failure: it must not be ejected for it.
    Local(String),
}

impl ConnectError {
    /// Whether the failure was the balancer's own, not the backend's.
    pub fn is_local(&self) -> bool {
        matches!(self, ConnectError::Local(_))
    }

    /// The error for a failed `connect` to `address`.
    fn from_connect(address: &str, e: std::io::Error) -> Self {
        let text = format!("connect to {address}: {e}");
        let local = matches!(
            e.kind(),
            std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::OutOfMemory
        ) || out_of_descriptors(&e);
        if local {
            ConnectError::Local(text)
        } else {
            ConnectError::Failed(text)
        }
    }
}

/// Whether `e` says this process (or the system) ran out of file descriptors or socket
/// buffers: EMFILE, ENFILE, ENOBUFS (Linux numbers; the balancer has no `libc` dependency).
fn out_of_descriptors(e: &std::io::Error) -> bool {
    cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(23 | 24 | 105))
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Failed(e) | ConnectError::Local(e) => write!(f, "{e}"),
        }
    }
}

/// hyper's state machine for one HTTP/1 connection: reads, writes, parses, when polled.
type Driver = Connection<TokioIo<Io>, UpstreamBody>;

/// A request that could not be sent: hyper's error, and the request itself when it was handed
/// back unsent (so it never reached the backend).
#[derive(Debug)]
pub struct SendError {
    error: hyper::Error,
    unsent: Option<http::Request<UpstreamBody>>,
}

impl SendError {
    /// What went wrong.
    pub fn error(&self) -> &hyper::Error {
        &self.error
    }

    /// The request, if it was handed back unsent.
    pub fn take_message(&mut self) -> Option<http::Request<UpstreamBody>> {
        self.unsent.take()
    }
}

/// One HTTP/1 connection, driven by its holder (see the module doc).
struct H1 {
    sender: SendRequest<UpstreamBody>,
    /// None once the connection has ended (closed by either side, or failed).
    driver: Option<Box<Driver>>,
    /// The worker thread that opened it (`[runtime] accept = "per_worker"`; else `None`): its
    /// socket is registered with that worker's runtime, so only that worker reuses it. Used from
    /// another, each of its wake-ups would pass through the opener's thread.
    worker: Option<usize>,
}

enum Link {
    H1(H1),
    H2(Stream),
}

/// A connection ready for one request: an HTTP/1 connection driven by its holder, or a stream
/// leased on a shared HTTP/2 connection.
pub struct Conn {
    link: Link,
    /// Whether it served a request before (a reused connection may have been closed by the
    /// backend just now: the keep-alive race).
    pub reused: bool,
}

impl H1 {
    fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if let Some(d) = self.driver.as_mut() {
            if Pin::new(&mut **d).poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }

    fn is_open(&self) -> bool {
        self.driver.is_some() && !self.sender.is_closed()
    }

    /// Polls the connection once without registering for wake-ups: picks up a close by the
    /// backend that the socket has already reported, and leaves no waker of an old task behind.
    fn poll_idle(&mut self) {
        self.poll_drive(&mut Context::from_waker(Waker::noop()));
    }

    async fn send(
        &mut self,
        req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let mut response = pin!(self.sender.try_send_request(req));
        std::future::poll_fn(|cx| {
            self.poll_drive(cx);
            // Only the connection, polled just above, completes the response: its own waker would
            // be a second wake-up of this same task for nothing.
            let mut quiet = Context::from_waker(Waker::noop());
            match response.as_mut().poll(&mut quiet) {
                Poll::Pending if self.driver.is_none() => {
                    // The connection ended and dropped its side: the response future now holds
                    // hyper's error (or the unsent request).
                    response.as_mut().poll(cx)
                }
                other => other,
            }
        })
        .await
        .map_err(|mut e| SendError {
            unsent: e.take_message(),
            error: e.into_error(),
        })
    }
}

impl Conn {
    /// Lets an HTTP/1 connection read, write and parse what it can now. `cx` is woken when it can
    /// do more (socket readiness, a body wanting data). Once it has ended, the driver is dropped,
    /// which closes the socket and fails any request still waiting on it. An HTTP/2 stream needs
    /// nothing: its connection has its own tasks.
    pub fn poll_drive(&mut self, cx: &mut Context<'_>) {
        if let Link::H1(c) = &mut self.link {
            c.poll_drive(cx);
        }
    }

    /// Whether the connection is still open (as far as it has been driven).
    pub fn is_open(&self) -> bool {
        match &self.link {
            Link::H1(c) => c.is_open(),
            Link::H2(_) => true,
        }
    }

    /// Whether requests on it go as HTTP/2 streams.
    pub fn is_h2(&self) -> bool {
        matches!(self.link, Link::H2(_))
    }

    /// Sends a request and, over HTTP/1, drives the connection until its response head is in (the
    /// body follows as the caller polls it and keeps driving). A request that could not start
    /// being sent is handed back in the error.
    pub async fn send(
        &mut self,
        req: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, SendError> {
        match &mut self.link {
            Link::H1(c) => c.send(req).await,
            Link::H2(s) => s.send(req).await,
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// At most this many idle connections are kept (per worker thread with
    /// `[runtime] accept = "per_worker"`).
    pub max_idle: usize,
    /// HTTP/2: most streams on one connection (the backend's own limit may be lower).
    pub max_streams: u32,
}

/// The connections to one backend.
pub struct Pool {
    connector: Connector,
    cfg: PoolConfig,
    clock: Clock,
    /// HTTP/1: the idle connections.
    idle: Mutex<Vec<(H1, Nanos)>>,
    /// HTTP/2: the shared connections.
    h2: Option<h2::H2Pool>,
    /// Plain HTTP/1.1 sockets of the native lane (`proxy::native`), idle since, and the worker
    /// thread that opened them (as [`H1::worker`]): no hyper state, no buffer; the lane writes
    /// and parses the bytes itself.
    raw: Mutex<Vec<RawIdle>>,
}

/// An idle native-lane socket: the socket, idle since, and the worker thread whose runtime it is
/// registered with (`None` with one shared runtime).
type RawIdle = (tokio::net::TcpStream, Nanos, Option<usize>);

impl Pool {
    /// An empty HTTP/1 pool for `address` (host:port).
    pub fn new(address: String, cfg: PoolConfig, clock: Clock) -> Self {
        Self::with_protocol(address, Protocol::Http1, None, cfg, clock)
    }

    /// An empty pool for `address` (host:port) speaking `protocol`, over TLS with `tls`
    /// (required for `h2` and `https`).
    pub fn with_protocol(
        address: String,
        protocol: Protocol,
        tls: Option<TlsTarget>,
        cfg: PoolConfig,
        clock: Clock,
    ) -> Self {
        let h2 = protocol.is_h2().then(|| {
            let authority = address
                .parse()
                .unwrap_or_else(|_| http::uri::Authority::from_static("backend"));
            h2::H2Pool::new(cfg.max_streams, protocol.is_tls(), authority, clock)
        });
        Pool {
            connector: Connector {
                address,
                protocol,
                tls,
                timeout: cfg.connect_timeout,
            },
            cfg,
            clock,
            idle: Mutex::new(Vec::new()),
            h2,
            raw: Mutex::new(Vec::new()),
        }
    }

    /// Whether the backend speaks plain HTTP/1.1 (`protocol = "http1"`, no TLS): the only kind
    /// the native lane sends to.
    pub(crate) fn speaks_plain_http1(&self) -> bool {
        self.connector.protocol == Protocol::Http1 && self.connector.tls.is_none()
    }

    fn lock_raw(&self) -> std::sync::MutexGuard<'_, Vec<RawIdle>> {
        self.raw.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A plain socket for the native lane: the most recently used idle one of this worker
    /// thread that the backend has not closed (a read that would block says it is still open
    /// and has sent nothing unasked), or a new one; and whether it was reused.
    pub(crate) async fn checkout_raw(&self) -> Result<(tokio::net::TcpStream, bool), ConnectError> {
        let idle_ns = self.cfg.idle_timeout.as_nanos() as Nanos;
        let now = self.clock.now();
        let worker = crate::shell::workers::current();
        loop {
            let taken = {
                let mut idle = self.lock_raw();
                idle.iter()
                    .rposition(|(_, _, w)| *w == worker)
                    .map(|i| idle.remove(i))
            };
            let Some((s, since, _)) = taken else {
                break;
            };
            if now.saturating_sub(since) > idle_ns {
                continue;
            }
            if matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            {
                return Ok((s, true));
            }
        }
        match self.connector.connect().await? {
            Io::Plain(s) => Ok((s, false)),
            Io::Tls(_) => Err(ConnectError::Failed(format!(
                "{} speaks TLS; the native lane sends plain HTTP/1.1 only",
                self.connector.address
            ))),
        }
    }

    /// Returns a native-lane socket whose response was read to its end.
    pub(crate) fn checkin_raw(&self, s: tokio::net::TcpStream) {
        let worker = crate::shell::workers::current();
        let mut idle = self.lock_raw();
        if idle.iter().filter(|(_, _, w)| *w == worker).count() < self.cfg.max_idle {
            idle.push((s, self.clock.now(), worker));
        }
    }

    /// What the pool speaks.
    pub fn protocol(&self) -> Protocol {
        self.connector.protocol
    }

    /// How its connections are opened (for probes on a connection of their own).
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(H1, Nanos)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: over HTTP/2 a stream on a shared connection; over HTTP/1 the most recently
    /// used idle connection of this worker thread that is still open and ready for a request, or
    /// a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        if let Some(h2) = &self.h2 {
            let stream = h2.checkout(&self.connector).await?;
            return Ok(Conn {
                reused: stream.reused,
                link: Link::H2(stream),
            });
        }
        if let Some(conn) = self.take_idle() {
            return Ok(Conn {
                link: Link::H1(conn),
                reused: true,
            });
        }
        Ok(Conn {
            link: Link::H1(self.connect().await?),
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<H1> {
        let idle_ns = self.cfg.idle_timeout.as_nanos() as Nanos;
        let now = self.clock.now();
        let worker = crate::shell::workers::current();
        loop {
            // The lock is held for the pop alone: polling a connection is hyper's work, and
            // other workers check connections in and out of this pool meanwhile.
            let (mut conn, since) = {
                let mut idle = self.lock();
                let i = idle.iter().rposition(|(c, _)| c.worker == worker)?;
                idle.remove(i)
            };
            if now.saturating_sub(since) > idle_ns {
                continue;
            }
            conn.poll_idle();
            // Ready: it finished its last exchange and waits for a request. A connection that is
            // not (the backend's last response was cut short, or it closed) is dropped.
            if conn.is_open() && conn.sender.is_ready() {
                return Some(conn);
            }
        }
    }

    /// A new connection to the backend (TLS for `https`), within the connect timeout, outside
    /// the pool: an upgraded connection is never given back to it. WebSocket tunnels speak
    /// HTTP/1.1, so an `h2`/`h2c` backend answers the handshake with an error.
    pub async fn connect_tunnel(&self) -> Result<Io, ConnectError> {
        self.connector.connect().await
    }

    async fn connect(&self) -> Result<H1, ConnectError> {
        let io = self.connector.connect().await?;
        let (sender, driver) = http1::handshake(TokioIo::new(io)).await.map_err(|e| {
            ConnectError::Failed(format!("handshake with {}: {e}", self.connector.address))
        })?;
        Ok(H1 {
            sender,
            driver: Some(Box::new(driver)),
            worker: crate::shell::workers::current(),
        })
    }

    /// Returns a connection whose response was read to the end, for the next request. Not
    /// polled here: the next checkout polls it anyway, and a close before then is what it has
    /// to notice. An HTTP/2 stream is simply let go.
    pub fn checkin(&self, conn: Conn) {
        let Link::H1(conn) = conn.link else { return };
        if !conn.is_open() {
            return;
        }
        let mut idle = self.lock();
        let kept = idle.iter().filter(|(c, _)| c.worker == conn.worker).count();
        if kept < self.cfg.max_idle {
            idle.push((conn, self.clock.now()));
        }
    }

    /// Closes idle connections older than the idle timeout, and those the backend closed.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let idle_ns = self.cfg.idle_timeout.as_nanos() as Nanos;
        if let Some(h2) = &self.h2 {
            h2.sweep(now, idle_ns);
        }
        self.lock().retain_mut(|(c, since)| {
            c.poll_idle();
            c.is_open() && now.saturating_sub(*since) <= idle_ns
        });
        self.lock_raw()
            .retain(|(_, since, _)| now.saturating_sub(*since) <= idle_ns);
    }

    /// Closes every idle connection (the backend is leaving); HTTP/2 connections close once
    /// their last stream ends.
    pub fn close_idle(&self) {
        if let Some(h2) = &self.h2 {
            h2.close_idle();
        }
        self.lock().clear();
        self.lock_raw().clear();
    }

    /// Idle HTTP/1 connections held, or HTTP/2 connections held.
    pub fn idle_count(&self) -> usize {
        match &self.h2 {
            Some(h2) => h2.connections(),
            None => self.lock().len(),
        }
    }
}

/// Test helpers shared by this module's tests and the response body's.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Conn, Pool, PoolConfig};
    use crate::body::OnEnd;
    use crate::clock::Clock;
    use std::sync::Arc;
    use std::time::Duration;

    /// An HTTP/1.1 pool for the backend at `addr` that keeps up to 4 idle connections for a
    /// minute.
    pub(crate) fn pool(addr: String) -> Arc<Pool> {
        let cfg = PoolConfig {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
            max_streams: 100,
        };
        Arc::new(Pool::new(addr, cfg, Clock::new()))
    }

    /// Gives the connection back to its pool on a clean end and drives it meanwhile, as the
    /// proxy's completion does.
    pub(crate) struct Checkin(pub Arc<Pool>, pub Option<Conn>);

    impl OnEnd for Checkin {
        fn on_end(&mut self) {
            if let Some(c) = self.1.take() {
                self.0.checkin(c);
            }
        }

        fn poll_upstream(&mut self, cx: &mut std::task::Context<'_>) {
            if let Some(c) = self.1.as_mut() {
                c.poll_drive(cx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_balancers_own_exhaustion_is_not_the_backends_failure() {
        use super::ConnectError;
        use std::io::{Error, ErrorKind};
        let refused = Error::from(ErrorKind::ConnectionRefused);
        assert!(!ConnectError::from_connect("b:1", refused).is_local());
        let no_port = Error::from(ErrorKind::AddrNotAvailable);
        assert!(ConnectError::from_connect("b:1", no_port).is_local());
        if cfg!(target_os = "linux") {
            let emfile = Error::from_raw_os_error(24);
            assert!(ConnectError::from_connect("b:1", emfile).is_local());
        }
    }

    use super::test_support::{pool, Checkin};
    use super::*;
    use crate::body::ProxyBody;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{mpsc, watch};

    /// A keep-alive backend that answers every request with `ok`, counts connections, and closes
    /// the connections open at the time when told to (as a backend's keep-alive timeout would):
    /// each send bumps an epoch, and a connection closes once the epoch passes its own, then says
    /// so on the returned receiver.
    async fn closing_backend() -> (
        String,
        Arc<AtomicU64>,
        watch::Sender<u64>,
        mpsc::UnboundedReceiver<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let (close_tx, close_rx) = watch::channel(0u64);
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut close = close_rx.clone();
                let epoch = *close.borrow();
                let closed = closed_tx.clone();
                tokio::spawn(async move {
                    let mut s = s;
                    tokio::select! {
                        _ = serve_ok(&mut s) => {}
                        _ = close.wait_for(|e| *e > epoch) => {}
                    }
                    drop(s);
                    let _ = closed.send(());
                });
            }
        });
        (addr, accepted, close_tx, closed_rx)
    }

    /// Answers `ok` to each request head on `s` until the peer closes.
    async fn serve_ok(s: &mut TcpStream) {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                got.drain(..end + 4);
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn get() -> http::Request<UpstreamBody> {
        http::Request::builder()
            .uri("/")
            .header("host", "backend")
            .body(UpstreamBody::Empty)
            .unwrap()
    }

    /// One exchange on a checked-out connection, read to the end through the proxy's response
    /// body (which drives the connection and checks it in at the end).
    async fn exchange(pool: &Arc<Pool>) -> bool {
        let mut conn = pool.checkout().await.unwrap();
        let reused = conn.reused;
        let resp = conn.send(get()).await.unwrap();
        let body = ProxyBody::upstream(resp.into_body(), Checkin(pool.clone(), Some(conn)));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        reused
    }

    /// With a listener per worker thread, an idle connection is handed only to the worker that
    /// opened it (its socket is registered with that worker's IO driver).
    #[tokio::test]
    async fn an_idle_connection_goes_only_to_the_worker_that_opened_it() {
        use crate::shell::workers::set_current;
        let (addr, accepted, _close, _closed) = closing_backend().await;
        let pool = pool(addr);
        set_current(Some(0));
        assert!(!exchange(&pool).await, "worker 0: a new connection");
        set_current(Some(1));
        assert!(
            !exchange(&pool).await,
            "worker 1: not worker 0's, a new one"
        );
        assert!(exchange(&pool).await, "worker 1: its own again");
        set_current(Some(0));
        assert!(exchange(&pool).await, "worker 0: its own again");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
        set_current(None);
    }

    /// No task watches an idle connection: the pool must still notice that the backend closed it
    /// (here through `sweep`, which polls each idle connection once) and never hand it out.
    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_dropped_not_reused() {
        let (addr, accepted, close, mut closed) = closing_backend().await;
        let pool = pool(addr);
        assert!(!exchange(&pool).await, "first exchange: a new connection");
        assert!(
            exchange(&pool).await,
            "second exchange: the same connection again"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);

        close.send_modify(|e| *e += 1);
        closed.recv().await.unwrap();
        // The FIN is in our socket now; tokio runs a yielded task again only after its I/O
        // driver has polled, so the socket's readiness is known after this.
        tokio::task::yield_now().await;
        pool.sweep();
        assert_eq!(
            pool.idle_count(),
            0,
            "the closed connection stayed in the pool"
        );
        assert!(!exchange(&pool).await, "after the close: a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// The same close, found by a checkout instead of a sweep.
    #[tokio::test]
    async fn a_checkout_passes_over_a_connection_the_backend_closed() {
        let (addr, accepted, close, mut closed) = closing_backend().await;
        let pool = pool(addr);
        exchange(&pool).await;
        close.send_modify(|e| *e += 1);
        closed.recv().await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(pool.idle_count(), 1);
        assert!(
            !exchange(&pool).await,
            "a new connection, not the closed one"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
