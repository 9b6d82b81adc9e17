//! Keep-alive HTTP/1.1 connections to one backend. Each backend owns its pool, so removing a
//! backend closes its idle connections, and connecting is a separate step from sending: a request
//! whose connect failed never reached a backend and can be retried whatever its method.

use crate::clock::Clock;
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// A request body on its way to a backend: nothing, kept bytes (replayable), or the client's
/// stream (sent once).
pub enum UpstreamBody {
    /// No body.
    Empty,
    /// A body read whole, so the request can be sent again.
    Full(Option<Bytes>),
    /// The client's body, streamed through.
    Stream(Incoming),
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
#[derive(Debug)]
pub enum ConnectError {
    /// The TCP connect did not finish within the connect timeout.
    Timeout,
    /// The connect or the HTTP/1 handshake failed.
    Failed(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => write!(f, "connect timed out"),
            ConnectError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// A connection ready for one request.
pub struct Conn {
    /// Sends the request.
    pub sender: SendRequest<UpstreamBody>,
    /// Whether it served a request before (a reused connection may have been closed by the
    /// backend just now: the keep-alive race).
    pub reused: bool,
}

/// Pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// At most this many idle connections are kept.
    pub max_idle: usize,
}

/// The idle connections to one backend.
pub struct Pool {
    address: String,
    cfg: PoolConfig,
    clock: Clock,
    idle: Mutex<Vec<(SendRequest<UpstreamBody>, Nanos)>>,
}

impl Pool {
    /// An empty pool for `address` (host:port).
    pub fn new(address: String, cfg: PoolConfig, clock: Clock) -> Self {
        Pool {
            address,
            cfg,
            clock,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SendRequest<UpstreamBody>, Nanos)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: the most recently used idle one that is still open, or a new one.
    pub async fn checkout(&self) -> Result<Conn, ConnectError> {
        let idle_ns = self.cfg.idle_timeout.as_nanos() as Nanos;
        loop {
            let candidate = {
                let now = self.clock.now();
                let mut idle = self.lock();
                let mut found = None;
                while let Some((sender, since)) = idle.pop() {
                    if sender.is_closed() || now.saturating_sub(since) > idle_ns {
                        continue;
                    }
                    found = Some(sender);
                    break;
                }
                found
            };
            let Some(mut sender) = candidate else { break };
            if sender.is_ready() {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
            // Just checked in: the connection task may not have finished the last response yet.
            if let Ok(Ok(())) =
                tokio::time::timeout(Duration::from_millis(50), sender.ready()).await
            {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
        }
        self.connect().await
    }

    async fn connect(&self) -> Result<Conn, ConnectError> {
        let stream =
            tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(&self.address))
                .await
                .map_err(|_| ConnectError::Timeout)?
                .map_err(|e| ConnectError::Failed(format!("connect to {}: {e}", self.address)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Failed(format!("handshake with {}: {e}", self.address)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            reused: false,
        })
    }

    /// Returns a connection whose response was read to the end, for the next request.
    pub fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.cfg.max_idle {
            idle.push((conn.sender, self.clock.now()));
        }
    }

    /// Closes idle connections older than the idle timeout.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let idle_ns = self.cfg.idle_timeout.as_nanos() as Nanos;
        self.lock()
            .retain(|(s, since)| !s.is_closed() && now.saturating_sub(*since) <= idle_ns);
    }

    /// Closes every idle connection (the backend is leaving).
    pub fn close_idle(&self) {
        self.lock().clear();
    }

    /// Idle connections held.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }
}
