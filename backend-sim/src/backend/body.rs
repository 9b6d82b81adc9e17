//! The backend's response body: bytes or generated filler, streamed in chunks, optionally dripped
//! out slowly. Large responses never sit in memory, and a slow-drip body lets proxy tests see what
//! a slow reader or writer does to them.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The largest chunk handed to hyper at once.
pub(super) const MAX_CHUNK: usize = 64 * 1024;

static FILLER: [u8; MAX_CHUNK] = [b'x'; MAX_CHUNK];

/// Where the body's bytes come from.
enum Source {
    /// Given bytes, sliced off the front as they are sent.
    Bytes(Bytes),
    /// As many filler bytes as are left.
    Filler,
}

/// A response body that streams `remaining` bytes in chunks of at most `chunk`, sleeping `drip`
/// between chunks when set.
pub struct SimBody {
    source: Source,
    remaining: u64,
    chunk: usize,
    drip: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SimBody {
    /// A body holding these bytes.
    pub fn bytes(data: impl Into<Bytes>) -> SimBody {
        let data = data.into();
        SimBody {
            remaining: data.len() as u64,
            source: Source::Bytes(data),
            chunk: MAX_CHUNK,
            drip: None,
            sleep: None,
        }
    }

    /// A body of `size` filler bytes, generated as they are sent.
    pub fn filler(size: u64) -> SimBody {
        SimBody {
            source: Source::Filler,
            remaining: size,
            chunk: MAX_CHUNK,
            drip: None,
            sleep: None,
        }
    }

    /// An empty body.
    pub fn empty() -> SimBody {
        SimBody::bytes(Bytes::new())
    }

    /// Sends the body `chunk` bytes at a time with `pause` between chunks (slow drip).
    pub fn drip(mut self, chunk: usize, pause: Duration) -> SimBody {
        self.chunk = chunk.clamp(1, MAX_CHUNK);
        self.drip = Some(pause);
        self
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = (this.chunk as u64).min(this.remaining) as usize;
        let data = match &mut this.source {
            Source::Bytes(b) => b.split_to(n),
            Source::Filler => Bytes::from_static(&FILLER[..n]),
        };
        this.remaining -= n as u64;
        if let (Some(pause), true) = (this.drip, this.remaining > 0) {
            this.sleep = Some(Box::pin(tokio::time::sleep(pause)));
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
