//! HTTP/1.1 spoken directly on the socket, for the engine's connections: the loop that owns the
//! connection writes the request bytes and reads the answer itself, so a request costs one write
//! and (usually) one read, with no task, channel or pool between the loop and the socket. The
//! answer's head is parsed with `httparse` (hyper's own parser); the body is counted and dropped:
//! `Content-Length`, `chunked`, or up to the end of the connection.

use super::report::ErrorKind;
use super::requests::Outgoing;
use super::tls::{Dial, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What came back.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) bytes: u64,
}

/// One keep-alive connection, opened on first use and reopened after it closed or broke.
pub(crate) struct RawConn {
    dial: Dial,
    stream: Option<Stream>,
    /// Bytes read and not consumed yet.
    buf: Vec<u8>,
    /// Where the unconsumed bytes of `buf` start.
    pos: usize,
    out: Vec<u8>,
    keepalive: bool,
    /// Requests answered on the current connection.
    used: u64,
}

/// How an answer's body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl RawConn {
    pub(crate) fn new(dial: Dial, keepalive: bool) -> RawConn {
        RawConn {
            dial,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            out: Vec::with_capacity(1024),
            keepalive,
            used: 0,
        }
    }

    /// Opens the connection if none is open.
    pub(crate) async fn open(&mut self) -> Result<(), ErrorKind> {
        if self.stream.is_some() {
            return Ok(());
        }
        self.stream = Some(self.dial.connect().await?);
        self.buf.clear();
        self.pos = 0;
        self.used = 0;
        Ok(())
    }

    /// Whether a connection is open (as far as is known without reading it).
    pub(crate) fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Drops the connection (after a timeout or an error left it mid-exchange).
    pub(crate) fn reset(&mut self) {
        self.stream = None;
        self.buf.clear();
        self.pos = 0;
    }

    /// Sends `req` and reads its answer. A connection that was open before this request (kept
    /// alive, or opened ahead of the schedule and idle since) and turns out to have been closed
    /// by the server before any answer byte came is reopened and the request sent once more,
    /// as browsers and wrk do. (A warm connection idle past the server's first-request timeout
    /// is one: counting it as an error failed tests/live_vs_sim.rs, whose load starts with
    /// 10 s of nothing.)
    pub(crate) async fn send(&mut self, req: &Outgoing) -> Result<Reply, ErrorKind> {
        match (&req.wire, self.keepalive) {
            (Some(wire), true) => {
                self.out.clear();
                self.out.extend_from_slice(wire);
            }
            _ => serialize(req, self.keepalive, &mut self.out),
        }
        let head_only = req.method == http::Method::HEAD;
        for attempt in 0..2 {
            let reused = self.stream.is_some();
            self.open().await?;
            match self.exchange(head_only).await {
                Ok(reply) => {
                    self.used += 1;
                    return Ok(reply);
                }
                Err(Failure::BeforeAnswer) if reused && attempt == 0 => self.reset(),
                Err(_) => {
                    self.reset();
                    return Err(ErrorKind::Other);
                }
            }
        }
        Err(ErrorKind::Other)
    }

    async fn exchange(&mut self, head_only: bool) -> Result<Reply, Failure> {
        let stream = self.stream.as_mut().expect("opened");
        stream
            .write_all(&self.out)
            .await
            .map_err(|_| Failure::BeforeAnswer)?;
        let mut first = true;
        loop {
            // The head: read until it parses.
            let (status, framing, close, head_len) = loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf[self.pos..]) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let (framing, close) = framing_of(&resp, status, head_only);
                        break (status, framing, close, n);
                    }
                    Ok(httparse::Status::Partial) => {
                        let n = self.fill().await.map_err(|_| Failure::Broken)?;
                        if n == 0 {
                            return Err(if first && self.buf.len() == self.pos {
                                Failure::BeforeAnswer
                            } else {
                                Failure::Broken
                            });
                        }
                        first = false;
                    }
                    Err(_) => return Err(Failure::Broken),
                }
            };
            self.pos += head_len;
            if (100..200).contains(&status) && status != 101 {
                // An interim answer (100 Continue): the real one follows.
                continue;
            }
            let bytes = match framing {
                Framing::None => 0,
                Framing::Length(n) => {
                    self.skip(n).await?;
                    n
                }
                Framing::Chunked => self.chunked().await?,
                Framing::UntilClose => {
                    let mut n = (self.buf.len() - self.pos) as u64;
                    self.buf.clear();
                    self.pos = 0;
                    loop {
                        let got = self.fill().await.map_err(|_| Failure::Broken)?;
                        if got == 0 {
                            break;
                        }
                        n += got as u64;
                        self.buf.clear();
                    }
                    self.stream = None;
                    n
                }
            };
            self.compact();
            if close || !self.keepalive {
                self.reset();
            }
            return Ok(Reply { status, bytes });
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the connection.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.compact();
            self.buf.reserve(16 * 1024);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or(std::io::ErrorKind::NotConnected)?;
        stream.read_buf(&mut self.buf).await
    }

    /// Moves the unconsumed bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Consumes `n` body bytes, reading as needed, keeping none.
    async fn skip(&mut self, mut n: u64) -> Result<(), Failure> {
        loop {
            let avail = (self.buf.len() - self.pos) as u64;
            let take = avail.min(n);
            self.pos += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.buf.clear();
            self.pos = 0;
            if self.fill().await.map_err(|_| Failure::Broken)? == 0 {
                return Err(Failure::Broken);
            }
        }
    }

    /// One CRLF-ended line, without the CRLF.
    async fn line(&mut self) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > 64 * 1024 {
                return Err(Failure::Broken);
            }
            if self.fill().await.map_err(|_| Failure::Broken)? == 0 {
                return Err(Failure::Broken);
            }
        }
    }

    /// A chunked body: its data bytes, counted.
    async fn chunked(&mut self) -> Result<u64, Failure> {
        let mut total = 0u64;
        loop {
            let line = self.line().await?;
            let hex = line
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            let size = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or(Failure::Broken)?;
            if size == 0 {
                // Trailers, up to an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(total);
            }
            self.skip(size).await?;
            total += size;
            if !self.line().await?.is_empty() {
                return Err(Failure::Broken);
            }
        }
    }
}

/// Why an exchange failed.
enum Failure {
    /// The connection was closed before any byte of the answer (a stale keep-alive connection).
    BeforeAnswer,
    /// Anything else.
    Broken,
}

/// The body framing of an answer and whether the server closes the connection after it.
fn framing_of(resp: &httparse::Response, status: u16, head_only: bool) -> (Framing, bool) {
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                close = true;
            } else if v.windows(10).any(|w| w == b"keep-alive") {
                close = false;
            }
        }
    }
    let framing = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let close = close || matches!(framing, Framing::UntilClose);
    (framing, close)
}

/// The request's bytes: request line, headers (with `content-length` for a body), body.
pub(crate) fn serialize(req: &Outgoing, keepalive: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        req.uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (k, v) in &req.headers {
        if k == http::header::CONTENT_LENGTH || k == http::header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !req.body.is_empty() || matches!(req.method, http::Method::POST | http::Method::PUT) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(req.body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keepalive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&req.body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Method, Uri};
    use tokio::io::AsyncWriteExt;

    /// A server that answers each request (after reading its head and body) with the next of
    /// `answers`, then closes.
    async fn server(answers: Vec<&'static [u8]>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            for a in answers {
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            buf.drain(..end + 4 + len);
                            break;
                        }
                    }
                    let mut chunk = [0u8; 1024];
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                // In two writes, to exercise partial reads.
                let half = a.len() / 2;
                s.write_all(&a[..half]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(&a[half..]).await.unwrap();
            }
        });
        addr
    }

    fn get() -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("x"));
        Outgoing {
            method: Method::GET,
            uri: Uri::from_static("/a?b=1"),
            headers,
            body: Bytes::new(),
            wire: None,
        }
    }

    #[tokio::test]
    async fn length_chunked_interim_and_close_framings() {
        let addr = server(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\nslow down",
        ])
        .await;
        let mut c = RawConn::new(Dial { addr, tls: None }, true);
        let r = c.send(&get()).await.ok().unwrap();
        assert_eq!((r.status, r.bytes), (200, 5));
        let mut post = get();
        post.method = Method::POST;
        post.body = Bytes::from_static(b"0123456789");
        let r = c.send(&post).await.ok().unwrap();
        assert_eq!((r.status, r.bytes), (201, 19));
        let r = c.send(&get()).await.ok().unwrap();
        assert_eq!((r.status, r.bytes), (204, 0));
        let r = c.send(&get()).await.ok().unwrap();
        assert_eq!((r.status, r.bytes), (503, 9));
        assert!(c.stream.is_none(), "closed after an answer without length");
    }

    #[test]
    fn requests_serialize_with_length_and_close() {
        let mut out = Vec::new();
        let mut post = get();
        post.method = Method::POST;
        post.body = Bytes::from_static(b"{}");
        serialize(&post, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
        );
    }
}
