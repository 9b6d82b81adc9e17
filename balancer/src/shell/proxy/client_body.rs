//! The client's request body as the proxy reads it: bounded in time (`[listener]
//! body_read_timeout`, `min_body_rate`), and telling what went wrong on the client's side apart
//! from what a backend did. A body that the client cuts off, resets, frames wrongly (an invalid
//! chunk size) or sends too slowly is the client's fault: it must not count as a backend failure
//! or as backend latency (the limiter, the outlier detector, the EWMA), nor be retried.
//!
//! Small bodies are read whole before a backend slot is taken (see `forward`); a streamed body
//! shares a [`BodyWatch`] with the try loop, which reads from it whether a failed try was the
//! client's doing and when the body ended (a backend's latency counts from then).

use crate::clock::Clock;
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// What the client did wrong with its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The body broke off: the connection closed or was reset, the stream was reset, or its
    /// framing was invalid (a bad chunk size, a body shorter than its `Content-Length`).
    Broken = 1,
    /// The body stalled past `body_read_timeout` or fell below `min_body_rate`.
    TooSlow = 2,
}

/// How long a body may take: `timeout` of silence at most, and after `timeout` from the start,
/// `min_rate` bytes per second on average (0: no rate).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `[listener] body_read_timeout`: the longest silence, and the grace before the rate counts.
    pub timeout: Duration,
    /// `[listener] min_body_rate`: bytes per second on average after `timeout` (0: none).
    pub min_rate: u64,
}

impl BodyLimits {
    /// When a body that started at `start`, received `received` bytes and last read at `last`
    /// must have sent more (or ended).
    pub(crate) fn deadline(self, start: Instant, last: Instant, received: u64) -> Instant {
        let idle = last + self.timeout;
        if self.min_rate == 0 {
            return idle;
        }
        let allowed =
            self.timeout + Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        idle.min(start + allowed)
    }
}

/// Shared by a streamed body and the try loop that sent it.
#[derive(Debug, Default)]
pub struct BodyWatch {
    fault: AtomicU8,
    /// When the body's last byte was read (clock nanos); 0 while it is still coming.
    ended_at: AtomicU64,
}

impl BodyWatch {
    /// The client's fault, if its body went wrong.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(ClientFault::Broken),
            2 => Some(ClientFault::TooSlow),
            _ => None,
        }
    }

    /// When the body ended, if it has.
    pub fn ended_at(&self) -> Option<Nanos> {
        match self.ended_at.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    fn set_fault(&self, f: ClientFault) {
        let _ = self
            .fault
            .compare_exchange(0, f as u8, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The error a client body ends with.
#[derive(Debug)]
pub enum ClientBodyError {
    /// hyper's error reading it.
    Read(hyper::Error),
    /// It came too slowly.
    TooSlow,
}

impl ClientBodyError {
    /// Whose fault, as the try loop records it.
    pub fn fault(&self) -> ClientFault {
        match self {
            ClientBodyError::Read(_) => ClientFault::Broken,
            ClientBodyError::TooSlow => ClientFault::TooSlow,
        }
    }
}

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientBodyError::Read(e) => write!(f, "client request body: {e}"),
            ClientBodyError::TooSlow => f.write_str("client request body too slow"),
        }
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientBodyError::Read(e) => Some(e),
            ClientBodyError::TooSlow => None,
        }
    }
}

/// The client's body, read within [`BodyLimits`]. The timer is made on the first read that has
/// to wait, so a body that is already buffered costs no timer.
pub struct ClientBody {
    inner: Incoming,
    /// Bytes read ahead by [`ClientBody::read_prefix`], sent before the rest.
    prefix: bytes::BytesMut,
    /// Trailers read ahead by [`ClientBody::read_prefix`], sent after the prefix (boxed: rare,
    /// and the body stays small).
    trailers: Option<Box<http::HeaderMap>>,
    /// Whether `limits` apply (not to a gRPC stream: see `grpc`).
    timed: bool,
    limits: BodyLimits,
    start: Instant,
    last: Instant,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    watch: Option<Arc<BodyWatch>>,
    clock: Clock,
    done: bool,
}

impl ClientBody {
    /// `inner` read within `limits`; `watch`, when given, learns how it ended.
    pub fn new(
        inner: Incoming,
        limits: BodyLimits,
        watch: Option<Arc<BodyWatch>>,
        clock: Clock,
    ) -> Self {
        let now = Instant::now();
        ClientBody {
            inner,
            prefix: bytes::BytesMut::new(),
            trailers: None,
            timed: true,
            limits,
            start: now,
            last: now,
            received: 0,
            timer: None,
            watch,
            clock,
            done: false,
        }
    }

    /// Without the body read timeout and minimum rate: for streams that may be quiet for long
    /// (gRPC), bounded by their deadline instead.
    pub fn untimed(mut self) -> Self {
        self.timed = false;
        self
    }

    /// Reads ahead until the body ends (`Ok(true)`) or more than `limit` bytes were read
    /// (`Ok(false)`); what was read is sent first when the body is then polled, or taken whole
    /// with [`ClientBody::take_prefix`]. A body that ends with trailers reads as not whole
    /// (`Ok(false)`), so that they are sent after the prefix.
    pub async fn read_prefix(&mut self, limit: usize) -> Result<bool, ClientBodyError> {
        while self.prefix.len() <= limit {
            match std::future::poll_fn(|cx| self.poll_client(cx)).await {
                None => return Ok(true),
                Some(Err(e)) => return Err(e),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.prefix.extend_from_slice(&d),
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.trailers = Some(Box::new(t));
                            return Ok(false);
                        }
                    }
                },
            }
        }
        Ok(false)
    }

    /// The bytes [`ClientBody::read_prefix`] read.
    pub fn take_prefix(&mut self) -> Bytes {
        std::mem::take(&mut self.prefix).freeze()
    }

    /// The next frame from the client (not from the prefix read ahead), within the limits.
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received += d.len() as u64;
                    this.last = Instant::now();
                }
                if this.inner.is_end_stream() {
                    this.end();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(ClientBodyError::Read(e)),
            Poll::Ready(None) => {
                this.end();
                Poll::Ready(None)
            }
            Poll::Pending if !this.timed => Poll::Pending,
            Poll::Pending => {
                let deadline = this.limits.deadline(this.start, this.last, this.received);
                let timer = match this.timer.as_mut() {
                    Some(t) => {
                        if t.deadline() != deadline {
                            t.as_mut().reset(deadline);
                        }
                        t
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(ClientBodyError::TooSlow),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn end(&mut self) {
        if !self.done {
            self.done = true;
            if let Some(w) = &self.watch {
                w.ended_at.store(self.clock.now().max(1), Ordering::Release);
            }
        }
    }

    fn fail(&mut self, e: ClientBodyError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.done = true;
        if let Some(w) = &self.watch {
            w.set_fault(e.fault());
        }
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let prefix = std::mem::take(&mut this.prefix).freeze();
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(*t))));
        }
        this.poll_client(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty()
            && self.trailers.is_none()
            && (self.done || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut h = self.inner.size_hint();
        let p = self.prefix.len() as u64;
        h.set_lower(h.lower() + p);
        if let Some(u) = h.upper() {
            h.set_upper(u + p);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_idle_limit_or_the_rate_whichever_comes_first() {
        let l = BodyLimits {
            timeout: Duration::from_secs(10),
            min_rate: 1000,
        };
        let t0 = Instant::now();
        // Fresh: the idle limit.
        assert_eq!(l.deadline(t0, t0, 0), t0 + Duration::from_secs(10));
        // Reading a byte a second keeps the idle limit away, not the rate's.
        let later = t0 + Duration::from_secs(9);
        assert_eq!(
            l.deadline(t0, later, 9),
            t0 + Duration::from_secs(10) + Duration::from_millis(9)
        );
        // Fast enough: the idle limit again.
        assert_eq!(
            l.deadline(t0, later, 1_000_000),
            later + Duration::from_secs(10)
        );
        let no_rate = BodyLimits { min_rate: 0, ..l };
        assert_eq!(
            no_rate.deadline(t0, later, 9),
            later + Duration::from_secs(10)
        );
    }
}
