//! A request body the native lane streams to the backend instead of reading it whole first:
//! a `Content-Length` body larger than `[listener] request_buffer` (and not kept for retries),
//! or a chunked one that has not ended within `request_buffer`. As `forward` does with hyper,
//! such a body is sent once (no retry after it started), through one bounded buffer ([`Room`]), each read
//! within the client's `BodyLimits`; what goes wrong on the client's side is told apart from
//! what the backend did (`client_body`'s rule: a slow or broken upload is not a failing backend).

use super::super::client_body::{BodyLimits, ClientFault};
use super::room::Room;
use crate::core::h1::chunked::ChunkedDecoder;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// What is left of the body to come from the client.
#[derive(Debug)]
pub(super) enum Rest {
    /// So many bytes of a `Content-Length` body.
    Length(u64),
    /// A chunked body, its decoder where the bytes read so far left it.
    Chunked(ChunkedDecoder),
}

/// Why an upload stopped before its end.
#[derive(Debug)]
pub(super) enum UploadError {
    /// The client's doing: it closed, sent invalid chunks, or was too slow.
    Client(ClientFault),
    /// The backend stopped taking the body (it may still answer: an early 413, say).
    Backend(io::Error),
}

/// The rest of one request body, streamed from the client to the backend.
#[derive(Debug)]
pub(super) struct Upload {
    rest: Rest,
    limits: BodyLimits,
    /// Bytes read past the end of a chunked body: the start of the client's next request.
    spill: Vec<u8>,
    finished: bool,
}

impl Upload {
    pub(super) fn new(rest: Rest, limits: BodyLimits) -> Self {
        Upload {
            rest,
            limits,
            spill: Vec::new(),
            finished: false,
        }
    }

    /// Whether the whole body has been read from the client (else the client connection holds
    /// unread body bytes and can serve no further request).
    pub(super) fn finished(&self) -> bool {
        self.finished
    }

    /// The bytes read past the body's end (the next request's), taken.
    pub(super) fn take_spill(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spill)
    }

    /// Copies the rest of the body from `client` to `up`. The client's reads are bounded by
    /// `limits` from the call on (the time spent waiting for a slot is not the client's).
    pub(super) async fn run<R, W>(&mut self, client: &mut R, up: &mut W) -> Result<(), UploadError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let start = Instant::now();
        let mut last = start;
        let mut received = 0u64;
        let mut room = match self.rest {
            Rest::Length(left) => Room::for_length(left),
            Rest::Chunked(_) => Room::new(),
        };
        let mut buf = Vec::new();
        loop {
            let space = room.get();
            let want = match &self.rest {
                Rest::Length(0) => break,
                Rest::Length(left) => usize::try_from(*left).map_or(space, |l| l.min(space)),
                Rest::Chunked(dec) if dec.is_done() => break,
                Rest::Chunked(_) => space,
            };
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let due = self.limits.deadline(start, last, received);
            let n = match tokio::time::timeout_at(due, client.read(&mut buf[..want])).await {
                Err(_) => return Err(UploadError::Client(ClientFault::TooSlow)),
                Ok(Err(_)) | Ok(Ok(0)) => return Err(UploadError::Client(ClientFault::Broken)),
                Ok(Ok(n)) => n,
            };
            last = Instant::now();
            received += n as u64;
            room.after(n);
            let body = match &mut self.rest {
                Rest::Length(left) => {
                    *left -= n as u64;
                    n
                }
                Rest::Chunked(dec) => {
                    let (i, _) = dec
                        .check(&buf[..n])
                        .map_err(|_| UploadError::Client(ClientFault::Broken))?;
                    self.spill.extend_from_slice(&buf[i..n]);
                    i
                }
            };
            up.write_all(&buf[..body])
                .await
                .map_err(UploadError::Backend)?;
        }
        self.finished = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: BodyLimits = BodyLimits {
        timeout: Duration::from_secs(5),
        min_rate: 0,
    };

    #[tokio::test]
    async fn a_length_body_is_copied_and_nothing_after_it_is_read() {
        let mut client: &[u8] = b"helloGET / HTTP/1.1\r\n";
        let mut up = Vec::new();
        let mut u = Upload::new(Rest::Length(5), LIMITS);
        u.run(&mut client, &mut up).await.unwrap();
        assert!(u.finished());
        assert_eq!(up, b"hello");
        assert_eq!(client, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_chunked_body_is_checked_and_what_follows_it_kept() {
        let mut client: &[u8] = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1\r\n";
        let mut up = Vec::new();
        let mut u = Upload::new(Rest::Chunked(ChunkedDecoder::new()), LIMITS);
        u.run(&mut client, &mut up).await.unwrap();
        assert_eq!(up, b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
        assert_eq!(u.take_spill(), b"GET /next HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_short_or_invalid_body_is_the_clients_fault() {
        let mut client: &[u8] = b"hel";
        let mut u = Upload::new(Rest::Length(5), LIMITS);
        let e = u.run(&mut client, &mut Vec::new()).await.unwrap_err();
        assert!(
            matches!(e, UploadError::Client(ClientFault::Broken)),
            "{e:?}"
        );
        assert!(!u.finished());
        let mut client: &[u8] = b"zz\r\n";
        let mut u = Upload::new(Rest::Chunked(ChunkedDecoder::new()), LIMITS);
        let e = u.run(&mut client, &mut Vec::new()).await.unwrap_err();
        assert!(
            matches!(e, UploadError::Client(ClientFault::Broken)),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_stalled_body_is_too_slow() {
        // The client's end stays open and silent.
        let (mut client, _keep) = tokio::io::duplex(64);
        let limits = BodyLimits {
            timeout: Duration::from_millis(20),
            min_rate: 0,
        };
        let mut u = Upload::new(Rest::Length(5), limits);
        let e = u.run(&mut client, &mut Vec::new()).await.unwrap_err();
        assert!(
            matches!(e, UploadError::Client(ClientFault::TooSlow)),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_backend_that_stops_taking_the_body_is_told_apart() {
        let mut client: &[u8] = b"hello";
        let (mut up, far) = tokio::io::duplex(64);
        drop(far);
        let mut u = Upload::new(Rest::Length(5), LIMITS);
        let e = u.run(&mut client, &mut up).await.unwrap_err();
        assert!(matches!(e, UploadError::Backend(_)), "{e:?}");
    }
}
