//! The deadline for a connection's first request head, counted from accept and kept on the
//! connection's IO itself, so that when it passes the connection can still answer.
//!
//! hyper's own `header_read_timeout` starts only once its HTTP/1.1 parser first waits for a head
//! (after the auto builder has read the first bytes to tell HTTP/1.1 from HTTP/2), and when it
//! fires hyper closes the connection without a word. HAProxy (`timeout http-request`) answers a
//! client that sent part of a request head and then stalled with `408 Request Timeout` before it
//! closes (RFC 9110 §15.5.9), and closes one that sent nothing silently; so does this.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a client that stalled in the middle of its first request head is sent before the close.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The HTTP/2 connection preface (RFC 9113 §3.4): a client that stalls inside it gets no
/// HTTP/1.1 answer.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection whose first request head is still incomplete at the deadline is sent
/// before the close, given the bytes it sent: 408 for part of an HTTP/1.1 head, nothing for
/// nothing or part of the HTTP/2 preface. The native HTTP/1.1 lane, which reads the head
/// itself, answers by this; [`HeadDeadline`] by the same rule, counted as the bytes pass.
pub(crate) fn stall_answer(received: &[u8]) -> Option<&'static [u8]> {
    let n = received.len().min(H2_PREFACE.len());
    let preface = received[..n] == H2_PREFACE[..n];
    (!received.is_empty() && !preface).then_some(REQUEST_TIMEOUT)
}

/// A connection's IO with a deadline for its first request head: once `limit` has passed since
/// accept without the service having been called (`seen`), reads fail, so hyper closes the
/// connection; if the client had sent part of an HTTP/1.1 head, `408 Request Timeout` is written
/// first.
pub(crate) struct HeadDeadline<T> {
    io: T,
    state: State,
    seen: Arc<AtomicBool>,
}

enum State {
    /// No whole request head yet: when it is due, and what has come so far.
    Waiting {
        sleep: Pin<Box<tokio::time::Sleep>>,
        received: usize,
        /// Every byte so far matches the HTTP/2 preface.
        preface: bool,
    },
    /// A request arrived in time (or there is no deadline): reads pass through.
    Passed,
    /// The deadline passed first: every read fails.
    Expired,
}

impl<T> HeadDeadline<T> {
    /// `io` must bring a whole request head within `limit` of now (`None`: no deadline); `seen`
    /// is set by the connection's service when it gets its first request.
    pub(crate) fn new(io: T, limit: Option<Duration>, seen: Arc<AtomicBool>) -> Self {
        let state = match limit {
            Some(limit) => State::Waiting {
                sleep: Box::pin(tokio::time::sleep(limit)),
                received: 0,
                preface: true,
            },
            None => State::Passed,
        };
        HeadDeadline { io, state, seen }
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no whole request head within header_read_timeout of accept",
    )
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let State::Waiting {
            sleep,
            received,
            preface,
        } = &mut this.state
        else {
            return match this.state {
                State::Expired => Poll::Ready(Err(expired())),
                _ => Pin::new(&mut this.io).poll_read(cx, buf),
            };
        };
        if this.seen.load(Ordering::Relaxed) {
            this.state = State::Passed;
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.io).poll_read(cx, buf) {
            let new = &buf.filled()[before..];
            if *preface {
                let at = (*received).min(H2_PREFACE.len());
                let n = new.len().min(H2_PREFACE.len() - at);
                *preface = new[..n] == H2_PREFACE[at..at + n];
            }
            *received += new.len();
            return Poll::Ready(r);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let answer = *received > 0 && !*preface;
        this.state = State::Expired;
        if answer {
            // Best effort: nothing has been written on this connection yet, so the socket's send
            // buffer takes these few bytes at once; if it does not, the close alone remains.
            let _ = Pin::new(&mut this.io).poll_write(cx, REQUEST_TIMEOUT);
            tracing::debug!("request head incomplete at header_read_timeout; 408 and closed");
        } else {
            tracing::debug!("no request within header_read_timeout of accept; closed");
        }
        Poll::Ready(Err(expired()))
    }
}

write_through!(impl[T: AsyncWrite + Unpin] for HeadDeadline<T>);

#[cfg(test)]
mod tests {
    #[test]
    fn a_stall_is_answered_by_what_was_sent() {
        assert_eq!(stall_answer(b""), None);
        assert_eq!(stall_answer(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(stall_answer(H2_PREFACE), None);
        assert_eq!(stall_answer(b"PRIX"), Some(REQUEST_TIMEOUT));
        assert_eq!(stall_answer(b"G"), Some(REQUEST_TIMEOUT));
    }

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads through a `HeadDeadline` of `limit` over one end of a duplex pipe after `sent`
    /// arrived; returns the read's error kind and what the client end then reads.
    async fn stall(sent: &[u8], limit: Duration) -> (io::ErrorKind, Vec<u8>) {
        let (server, mut client) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        let seen = Arc::new(AtomicBool::new(false));
        let mut io = HeadDeadline::new(server, Some(limit), seen);
        let mut buf = [0u8; 64];
        let mut got = 0;
        let err = loop {
            match io.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e.kind(),
            }
        };
        assert_eq!(got, sent.len());
        drop(io);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (err, answer)
    }

    #[tokio::test]
    async fn a_partial_head_gets_408_and_nothing_or_a_partial_preface_gets_nothing() {
        let limit = Duration::from_millis(20);
        let (kind, answer) = stall(b"GET / HTTP/1.1\r\nHost: a", limit).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(answer, REQUEST_TIMEOUT);
        for sent in [&b""[..], b"PRI * HTTP/2.0\r\n", H2_PREFACE] {
            let (kind, answer) = stall(sent, limit).await;
            assert_eq!(kind, io::ErrorKind::TimedOut);
            assert!(answer.is_empty(), "{sent:?}: {answer:?}");
        }
        // "PRI" and then something else is not the preface.
        assert_eq!(stall(b"PRIX", limit).await.1, REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn once_a_request_arrived_reads_pass_through_past_the_deadline() {
        let (server, mut client) = tokio::io::duplex(1024);
        let seen = Arc::new(AtomicBool::new(false));
        let mut io = HeadDeadline::new(server, Some(Duration::from_millis(20)), seen.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 18);
        seen.store(true, Ordering::Relaxed);
        // Past the deadline: the read below waits for data, not for a timer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"more").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 4);
    }
}
