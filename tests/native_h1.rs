//! `[listener] http1 = "native"` end to end: the parse-once lane (balancer/src/shell/proxy/native)
//! and its hand-over to hyper, with raw sockets on both sides so that the bytes are checked.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// What a raw backend saw: each request's head and body as received.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
    count: AtomicU64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads one request (head, then a Content-Length or chunked body) from `s` into `buf`;
/// returns the head and the body's raw bytes, or None at end of stream.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    let body_end = |b: &[u8]| -> Option<usize> {
        if header(&head, "transfer-encoding").is_some() {
            // Enough for the tests' bodies: the last chunk, then trailers up to an empty line.
            let last = find(b, b"0\r\n")?;
            find(&b[last..], b"\r\n\r\n")
                .map(|i| last + i + 4)
                .or_else(|| b[last..].starts_with(b"0\r\n\r\n").then_some(last + 5))
        } else {
            let n: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
            (b.len() >= n).then_some(n)
        }
    };
    loop {
        if let Some(n) = body_end(buf) {
            let body = buf.drain(..n).collect();
            return Some((head, body));
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// The answer of the raw backend to a request for `path`.
fn answer(path: &str, method: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let echo = format!("{head}{}", String::from_utf8_lossy(body));
    match path {
        "/204" => b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n".to_vec(),
        "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 9\r\n\r\n".to_vec(),
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n\
                        5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: done\r\n\r\n"
            .to_vec(),
        "/hop" => b"HTTP/1.1 200 OK\r\nConnection: x-internal\r\nX-Internal: secret\r\n\
                    Keep-Alive: timeout=5\r\nX-Public: ok\r\nContent-Length: 3\r\n\r\nhop"
            .to_vec(),
        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                      HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            .to_vec(),
        "/close" => b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec(),
        "/size" => {
            let n = body.len().to_string();
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{n}", n.len()).into_bytes()
        }
        "/ws" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_vec(),
        _ if method == "HEAD" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
        _ => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{echo}",
            echo.len()
        )
        .into_bytes(),
    }
}

/// A keep-alive HTTP/1.1 backend on raw sockets that answers by path (see [`answer`]) and
/// keeps what it received. `/ws` switches to echoing bytes; `/close` closes after answering.
async fn raw_backend() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, body)) = read_request(&mut s, &mut buf).await {
                    seen.count.fetch_add(1, Ordering::SeqCst);
                    let line = head.lines().next().unwrap_or("").to_string();
                    let mut parts = line.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let text = format!("{head}{}", String::from_utf8_lossy(&body));
                    seen.requests.lock().unwrap().push(text);
                    if s.write_all(&answer(&path, &method, &head, &body))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match path.as_str() {
                        "/close" => return,
                        "/ws" => {
                            let mut b = [0u8; 1024];
                            while let Ok(n) = s.read(&mut b).await {
                                if n == 0 || s.write_all(&b[..n]).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A backend that reads a request and closes without answering.
async fn closing_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).await.is_some() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, count)
}

fn native(backends: &[SocketAddr], extra: &str) -> Ebbtide {
    start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nhttp1 = \"native\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{extra}\n{}",
        backends_toml(backends, None)
    ))
}

/// One response read off a client connection: its head and body (by its framing; a body until
/// close when it has none).
struct Resp {
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> u16 {
        self.head[9..12].parse().unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

/// Reads what is there from `s` into `buf`: how many bytes (0 at end of stream).
async fn fill<R: AsyncRead + Unpin>(s: &mut R, buf: &mut Vec<u8>) -> usize {
    let mut tmp = [0u8; 8192];
    let n = s.read(&mut tmp).await.unwrap_or(0);
    buf.extend_from_slice(&tmp[..n]);
    n
}

/// Reads one response to a request with method `method` from `s`, leftovers kept in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Resp {
    read_response_from(s, buf, method).await
}

/// [`read_response`] off any reader (the read half of a split connection, say).
async fn read_response_from<R: AsyncRead + Unpin>(
    s: &mut R,
    buf: &mut Vec<u8>,
    method: &str,
) -> Resp {
    tokio::time::timeout(LIMIT, async {
        let end = loop {
            if let Some(i) = find(buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                fill(s, buf).await > 0,
                "closed before a response head: {buf:?}"
            );
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let status: u16 = head[9..12].parse().unwrap();
        if status < 200 {
            return Resp { head, body: vec![] };
        }
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let body_end = |b: &[u8]| -> Option<usize> {
            if no_body {
                Some(0)
            } else if header(&head, "transfer-encoding").is_some() {
                let last = find(b, b"\r\n0\r\n")
                    .map(|i| i + 2)
                    .or_else(|| b.starts_with(b"0\r\n").then_some(0))?;
                find(&b[last..], b"\r\n\r\n").map(|i| last + i + 4)
            } else if let Some(n) = header(&head, "content-length") {
                let n: usize = n.parse().unwrap();
                (b.len() >= n).then_some(n)
            } else {
                None
            }
        };
        loop {
            if let Some(n) = body_end(buf) {
                let body = buf.drain(..n).collect();
                return Resp { head, body };
            }
            if fill(s, buf).await == 0 {
                let body = std::mem::take(buf);
                return Resp { head, body };
            }
        }
    })
    .await
    .expect("no response in time")
}

async fn connect(lb: &Ebbtide) -> TcpStream {
    TcpStream::connect(lb.addr).await.unwrap()
}

/// Sends `req` on a new connection and reads one response.
async fn exchange(lb: &Ebbtide, req: &str) -> Resp {
    let mut s = connect(lb).await;
    s.write_all(req.as_bytes()).await.unwrap();
    let method = req.split(' ').next().unwrap();
    read_response(&mut s, &mut Vec::new(), method).await
}

#[tokio::test]
async fn hop_by_hop_fields_go_and_forwarded_fields_come_both_ways() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let r = exchange(
        &lb,
        "GET /echo?q=1 HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, X-Secret\r\n\
         X-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: k\r\nTE: trailers\r\n\
         X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: ftp\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.head);
    let sent = seen.requests.lock().unwrap()[0].clone();
    assert!(sent.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{sent}");
    // The lane's own spelling (hyper's client writes names in lower case): the lane served it.
    assert!(sent.contains("\r\nX-Forwarded-For: "), "{sent}");
    assert_eq!(header(&sent, "host"), Some("app.test"), "{sent}");
    assert_eq!(header(&sent, "x-kept"), Some("yes"), "{sent}");
    assert_eq!(
        header(&sent, "x-forwarded-for"),
        Some("10.0.0.1, 127.0.0.1"),
        "{sent}"
    );
    assert_eq!(header(&sent, "x-forwarded-proto"), Some("http"), "{sent}");
    assert_eq!(
        header(&sent, "x-forwarded-host"),
        Some("app.test"),
        "{sent}"
    );
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert_eq!(header(&sent, gone), None, "{gone} passed: {sent}");
    }
    // The request id goes to the backend and comes back on the response.
    let id = header(&sent, "x-request-id")
        .expect("an id is sent")
        .to_string();
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));

    let r = exchange(&lb, "GET /hop HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!((r.status(), r.body.as_slice()), (200, &b"hop"[..]));
    assert_eq!(r.header("x-public"), Some("ok"));
    for gone in ["x-internal", "keep-alive", "connection"] {
        assert_eq!(r.header(gone), None, "{gone} passed: {}", r.head);
    }
    // An absolute-form target's authority is the Host.
    exchange(&lb, "GET http://abs.test/p HTTP/1.1\r\nHost: other\r\n\r\n").await;
    let sent = seen.requests.lock().unwrap()[2].clone();
    assert!(sent.starts_with("GET /p HTTP/1.1\r\n"), "{sent}");
    assert_eq!(header(&sent, "host"), Some("abs.test"), "{sent}");
}

#[tokio::test]
async fn head_204_304_and_interim_responses_carry_no_body_and_keep_the_connection_in_step() {
    let (b, _) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    let mut buf = Vec::new();
    for (method, path, status) in [
        ("HEAD", "/len", 200),
        ("GET", "/204", 204),
        ("GET", "/304", 304),
        ("GET", "/early", 200),
        ("GET", "/after", 200),
    ] {
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_response(&mut s, &mut buf, method).await;
        assert_eq!(r.status(), status, "{method} {path}: {}", r.head);
        match path {
            "/len" => assert_eq!(r.header("content-length"), Some("5")),
            "/early" => assert_eq!(r.body, b"ok"),
            "/after" => assert!(String::from_utf8_lossy(&r.body).starts_with("GET /after ")),
            _ => assert!(r.body.is_empty()),
        }
    }
    // Nothing stray on the connection.
    assert!(buf.is_empty(), "{buf:?}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    s.write_all(
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\n\
          Content-Length: 4\r\n\r\nbodyGET /three HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for path in ["/one", "/two", "/three"] {
        let r = read_response(&mut s, &mut buf, "GET").await;
        assert_eq!(r.status(), 200);
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert!(
            body.contains(&format!(" {path} HTTP/1.1")),
            "{path}: {body}"
        );
    }
    let sent = seen.requests.lock().unwrap().clone();
    assert!(sent[1].ends_with("\r\n\r\nbody"), "{}", sent[1]);
}

#[tokio::test]
async fn chunked_bodies_with_trailers_both_ways() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    // A chunked response: relayed as it came, extensions and trailers included.
    let r = exchange(&lb, "GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert!(body.contains("hello") && body.contains(" world"), "{body}");
    assert!(body.contains("X-T: done"), "the trailer is lost: {body}");
    // A chunked request: the backend gets it chunked, trailers and all, from the lane.
    let r = exchange(
        &lb,
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.head);
    let sent = seen.requests.lock().unwrap()[1].clone();
    assert_eq!(
        header(&sent, "transfer-encoding"),
        Some("chunked"),
        "{sent}"
    );
    assert!(
        sent.contains("\r\nX-Forwarded-For: "),
        "not the lane's: {sent}"
    );
    let body = &sent[sent.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        body, "3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n",
        "{sent}"
    );
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!(r.status(), 100, "{}", r.head);
    s.write_all(b"hello").await.unwrap();
    let r = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!(r.status(), 200, "{}", r.head);
    let sent = seen.requests.lock().unwrap()[0].clone();
    assert!(sent.ends_with("hello"), "{sent}");
    assert!(
        sent.contains("\r\nX-Forwarded-For: "),
        "not the lane's: {sent}"
    );
}

/// A body larger than `request_buffer` is streamed through the lane, of either framing, and
/// the connection serves the next request after it.
#[tokio::test]
async fn large_uploads_stream_through_the_lane() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    let mut buf = Vec::new();
    let body = vec![b'x'; 1 << 20];
    let (mut rd, mut wr) = s.split();
    let send = async {
        wr.write_all(b"POST /size HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n")
            .await
            .unwrap();
        wr.write_all(&body).await.unwrap();
        // Chunked, 16 chunks of 64 KiB, then a trailer, then the next request pipelined.
        wr.write_all(b"PUT /size HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..16 {
            wr.write_all(b"10000\r\n").await.unwrap();
            wr.write_all(&body[..1 << 16]).await.unwrap();
            wr.write_all(b"\r\n").await.unwrap();
        }
        wr.write_all(b"0\r\nX-Sum: 1\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
    };
    let mut got = Vec::new();
    let read = async {
        for method in ["POST", "PUT", "GET"] {
            got.push(read_response_from(&mut rd, &mut buf, method).await);
        }
    };
    tokio::time::timeout(LIMIT, async { tokio::join!(send, read) })
        .await
        .expect("uploads did not complete");
    assert_eq!(
        (got[0].status(), got[0].body.as_slice()),
        (200, &b"1048576"[..])
    );
    // The raw chunked body the backend got: sizes, data and trailer as sent.
    let chunked_len = 16 * (7 + (1 << 16) + 2) + "0\r\nX-Sum: 1\r\n\r\n".len();
    assert_eq!(
        (got[1].status(), got[1].body.clone()),
        (200, chunked_len.to_string().into_bytes())
    );
    assert_eq!(got[2].status(), 200);
    let sent = seen.requests.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    for r in &sent {
        assert!(
            r.contains("\r\nX-Forwarded-For: "),
            "not the lane's: {}",
            &r[..200.min(r.len())]
        );
    }
    assert!(sent[1].ends_with("0\r\nX-Sum: 1\r\n\r\n"));
}

/// A backend may answer before it has read the whole body (RFC 9112 9.3: here, 413 and close):
/// the client gets that answer, and its connection closes since the rest of its body is unread.
#[tokio::test]
async fn a_backend_that_answers_before_the_whole_upload_is_passed_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while find(&buf, b"\r\n\r\n").is_none() {
                    if fill(&mut s, &mut buf).await == 0 {
                        return;
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
                    .await;
            });
        }
    });
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&vec![b'x'; 200_000]).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!(
        (r.status(), r.body.as_slice()),
        (413, &b"big"[..]),
        "{}",
        r.head
    );
    assert_eq!(r.header("connection"), Some("close"), "{}", r.head);
}

/// A streamed upload the client breaks off or stalls is the client's fault (400, 408), not
/// the backend's: it is not ejected and takes the next request.
#[tokio::test]
async fn an_upload_the_client_breaks_off_or_stalls_is_its_own_fault() {
    let (b, seen) = raw_backend().await;
    let (b2, seen2) = raw_backend().await;
    let lb = native(
        &[b, b2],
        "[balancer]\npolicy = \"round_robin\"\n[outlier]\nconsecutive_failures = 1\n",
    );
    let stall = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nhttp1 = \"native\"\nbody_read_timeout = \"300ms\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{}",
        backends_toml(&[b], None)
    ));
    let head = b"POST /size HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    // Broken off: half the body, then the client's end closed for writing.
    let mut s = connect(&lb).await;
    s.write_all(head).await.unwrap();
    s.write_all(&vec![b'x'; 500_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let r = read_response(&mut s, &mut Vec::new(), "POST").await;
    assert_eq!(r.status(), 400, "{}", r.head);
    // Stalled: a tenth of the body, then silence past body_read_timeout.
    let mut s = connect(&stall).await;
    s.write_all(head).await.unwrap();
    s.write_all(&vec![b'x'; 100_000]).await.unwrap();
    let r = read_response(&mut s, &mut Vec::new(), "POST").await;
    assert_eq!(r.status(), 408, "{}", r.head);
    // Both backends are still in the first balancer's fleet (one failure would eject one).
    for _ in 0..4 {
        let r = exchange(&lb, "GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(r.status(), 200, "{}", r.head);
    }
    for seen in [&seen, &seen2] {
        let gets = seen
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("GET /next "))
            .count();
        assert_eq!(gets, 2, "round robin over both backends");
    }
}

#[tokio::test]
async fn malformed_and_smuggling_requests_get_their_4xx_and_reach_no_backend() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    for (req, status) in [
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    ] {
        let r = exchange(&lb, req).await;
        assert_eq!(r.status(), status, "{req:?}: {}", r.head);
    }
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
        "x".repeat(40_000)
    );
    assert_eq!(exchange(&lb, &big).await.status(), 431);
    assert_eq!(seen.count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn requests_the_lane_hands_over_still_work() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    let mut buf = Vec::new();
    // A lane request first, then one for hyper on the same connection, then another.
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status(), 200);
    s.write_all(
        b"POST /keyed HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "POST").await.status(), 200);
    s.write_all(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status(), 200);
    // HTTP/1.0.
    let r = exchange(&lb, "GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    // A WebSocket handshake, then bytes both ways through the tunnel.
    let mut s = connect(&lb).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(r.status(), 101, "{}", r.head);
    // A masked text frame "hi" (RFC 6455 5.3), echoed back by the backend as it came.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).await.unwrap();
    let mut got = buf;
    while got.len() < frame.len() {
        let mut tmp = [0u8; 64];
        let n = tokio::time::timeout(LIMIT, s.read(&mut tmp))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    assert_eq!(got, frame);
    assert_eq!(seen.count.load(Ordering::SeqCst), 5);
    // The lane served the first, hyper (lower-case names) the rest of that connection.
    let sent = seen.requests.lock().unwrap().clone();
    assert!(sent[0].contains("\r\nX-Forwarded-For: "), "{}", sent[0]);
    for later in &sent[1..] {
        assert!(later.contains("\r\nx-forwarded-for: "), "{later}");
    }
}

#[tokio::test]
async fn a_get_the_backend_dropped_is_retried_on_another_backend() {
    let (good, seen) = raw_backend().await;
    let (bad, dropped) = closing_backend().await;
    let lb = native(&[bad, good], "[balancer]\npolicy = \"round_robin\"\n");
    // A POST is not retried: the closing backend's failure is the client's 502. (First, and
    // few, so that the closing backend is not yet ejected for consecutive failures.)
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = exchange(
            &lb,
            "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx",
        )
        .await;
        statuses.push(r.status());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    let posts = dropped.load(Ordering::SeqCst);
    assert_eq!(posts, 1);
    for i in 0..4 {
        let r = exchange(&lb, &format!("GET /r{i} HTTP/1.1\r\nHost: a\r\n\r\n")).await;
        assert_eq!(r.status(), 200, "{}", r.head);
    }
    assert!(
        dropped.load(Ordering::SeqCst) > posts,
        "the closing backend was never tried"
    );
    assert_eq!(seen.count.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn signals_and_metrics_count_the_lanes_requests() {
    let (b, _) = raw_backend().await;
    let lb = native(&[b], "");
    let mut s = connect(&lb).await;
    let mut buf = Vec::new();
    for _ in 0..7 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s, &mut buf, "GET").await.status(), 200);
    }
    // A request completes when its guard drops, just after its last byte is written.
    let signals = eventually("7 completions", LIMIT, || async {
        let s = admin_signals(lb.admin).await;
        (s.completions_total == 7).then_some(s)
    })
    .await;
    assert_eq!(signals.arrivals_total, 7);
    let (_, _, metrics) = get(&url(lb.admin, "/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        format!("ebbtide_requests_total{{backend=\"{b}\",code=\"200\"}} 7"),
        "ebbtide_request_duration_seconds_count 7".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}

#[tokio::test]
async fn a_body_until_close_closes_the_client_connection_after_it() {
    let (b, _) = raw_backend().await;
    let lb = native(&[b], "");
    let r = exchange(&lb, "GET /close HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, b"until close");
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_handed_to_hyper() {
    let (b, seen) = raw_backend().await;
    let lb = native(&[b], "");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = tokio::time::timeout(LIMIT, client.get(url(lb.addr, "/h2").parse().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(seen.count.load(Ordering::SeqCst), 1);
}

/// A client that closes its connection while its request is at a backend takes the request
/// with it (as hyper's server does): the backend's connection is closed, not left to run
/// until the response timeout.
#[tokio::test]
async fn a_client_that_leaves_takes_its_request_with_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        assert!(read_request(&mut s, &mut buf).await.is_some());
        // Never answers; reports when the balancer closes the connection.
        while fill(&mut s, &mut buf).await > 0 {}
        let _ = closed_tx.send(());
    });
    let lb = native(&[b], "[upstream]\nresponse_timeout = \"60s\"\n");
    let mut s = connect(&lb).await;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request is at the backend, then leave.
    eventually("the request at the backend", LIMIT, || async {
        let sig = admin_signals(lb.admin).await;
        (sig.in_flight == 1).then_some(())
    })
    .await;
    drop(s);
    tokio::time::timeout(LIMIT, closed_rx)
        .await
        .expect("the backend's connection was kept open after the client left")
        .unwrap();
}
