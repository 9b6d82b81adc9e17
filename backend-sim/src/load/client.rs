//! The HTTP client side of the load generator: one connection per engine loop, one request at a
//! time on it (no pipelining). Built on hyper's connection API so that every connection and its
//! failures are in plain view.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use super::raw::RawConn;
use super::report::ErrorKind;
use super::requests::Outgoing;
use super::tls::Dial;

/// Where requests go, parsed once.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The socket address its host resolved to.
    pub addr: SocketAddr,
    /// `https://`: the host name to send as SNI and check the certificate against.
    pub tls_name: Option<String>,
    /// The Host header.
    pub host: HeaderValue,
    /// The origin-form request target (path and query).
    pub path: Uri,
}

impl Target {
    /// Parses an `http[s]://host[:port]/path?query` URL and resolves its host.
    pub async fn resolve(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(format!(
                    "`{url}`: scheme `{other}` is not supported; use http:// or https://"
                ))
            }
            None => return Err(format!("`{url}`: give a full URL, e.g. http://{url}")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("`{url}`: no host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(|e| format!("`{url}`: cannot resolve {}: {e}", authority.host()))?
            .next()
            .ok_or_else(|| format!("`{url}`: {} has no address", authority.host()))?;
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| format!("`{url}`: {e}"))?;
        Ok(Target {
            url: url.to_string(),
            addr,
            tls_name: https.then(|| authority.host().to_string()),
            host: HeaderValue::from_str(authority.as_str()).map_err(|e| format!("`{url}`: {e}"))?,
            path,
        })
    }
}

/// What every request carries.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    /// The method.
    pub method: Method,
    /// Extra headers.
    pub headers: HeaderMap,
    /// The body, shared (cloning Bytes is a reference count).
    pub body: Bytes,
}

/// A successful exchange.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Body bytes received.
    pub bytes: u64,
}

/// An HTTP/2 connection (h2c, prior knowledge) shared by the loops of its streams: opened by the
/// first loop that needs it, reopened after it closed.
pub(crate) struct H2Conn {
    dial: Dial,
    sender: RefCell<Option<http2::SendRequest<Full<Bytes>>>>,
    opening: tokio::sync::Mutex<()>,
}

impl H2Conn {
    /// A connection made by `dial`, not opened yet.
    pub(crate) fn new(dial: Dial) -> H2Conn {
        H2Conn {
            dial,
            sender: RefCell::new(None),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<http2::SendRequest<Full<Bytes>>> {
        self.sender
            .borrow()
            .as_ref()
            .filter(|s| !s.is_closed())
            .cloned()
    }

    /// A handle to send a stream on, opening the connection if needed (once, whoever asks).
    async fn handle(&self) -> Result<http2::SendRequest<Full<Bytes>>, ErrorKind> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _opening = self.opening.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let stream = self.dial.connect().await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        *self.sender.borrow_mut() = Some(sender.clone());
        Ok(sender)
    }

    fn reset(&self) {
        self.sender.borrow_mut().take();
    }
}

/// Spawns hyper's HTTP/2 background tasks on the worker's own thread.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// What a loop sends on.
enum Link {
    /// Its own HTTP/1.1 connection, spoken directly on the socket.
    H1(RawConn),
    /// A stream of a shared HTTP/2 connection.
    H2(Rc<H2Conn>),
}

/// One engine loop's way to the target: its own HTTP/1.1 connection (opened on first use,
/// reopened after it broke, one request at a time, no pipelining) or one stream at a time on a
/// shared HTTP/2 connection.
pub(crate) struct Conn {
    link: Link,
}

impl Conn {
    /// An HTTP/1.1 connection made by `dial`, not opened yet; with `keepalive` false each
    /// request gets its own.
    pub(crate) fn h1(dial: Dial, keepalive: bool) -> Conn {
        Conn {
            link: Link::H1(RawConn::new(dial, keepalive)),
        }
    }

    /// Streams on the shared HTTP/2 connection `h2`.
    pub(crate) fn h2(h2: Rc<H2Conn>) -> Conn {
        Conn { link: Link::H2(h2) }
    }

    /// Opens the connection if it is not open.
    pub(crate) async fn open(&mut self) -> Result<(), ErrorKind> {
        match &mut self.link {
            Link::H2(h2) => h2.handle().await.map(|_| ()),
            Link::H1(c) => c.open().await,
        }
    }

    /// Whether the connection is open now (an HTTP/2 one: the shared connection).
    pub(crate) fn is_open(&self) -> bool {
        match &self.link {
            Link::H2(h2) => h2.current().is_some(),
            Link::H1(c) => c.is_open(),
        }
    }

    /// Forgets the connection (after a timeout left it mid-exchange). An HTTP/2 connection
    /// stays: only the stream was abandoned.
    pub(crate) fn reset(&mut self) {
        if let Link::H1(c) = &mut self.link {
            c.reset();
        }
    }

    /// Sends `req` and reads the whole answer, counting its body without keeping it. The caller
    /// bounds the time; a connection left mid-exchange must be [`Conn::reset`].
    pub(crate) async fn send(&mut self, req: &Outgoing) -> Result<Answer, ErrorKind> {
        let h2 = match &mut self.link {
            Link::H1(c) => {
                let reply = c.send(req).await?;
                return Ok(Answer {
                    status: reply.status,
                    bytes: reply.bytes,
                });
            }
            Link::H2(h2) => h2.clone(),
        };
        let mut req = req.to_request();
        // HTTP/2 carries the host in :authority, from an absolute URI.
        if let Some(host) = req.headers_mut().remove(http::header::HOST) {
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string();
            if let Ok(uri) = Uri::builder()
                .scheme(if h2.dial.tls.is_some() {
                    "https"
                } else {
                    "http"
                })
                .authority(host.as_bytes())
                .path_and_query(pq)
                .build()
            {
                *req.uri_mut() = uri;
            }
        }
        *req.version_mut() = http::Version::HTTP_2;
        let mut sender = h2.handle().await?;
        if sender.ready().await.is_err() {
            h2.reset();
            return Err(ErrorKind::Other);
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|_| ErrorKind::Other)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ErrorKind::Other)?;
            if let Some(d) = frame.data_ref() {
                bytes += d.len() as u64;
            }
        }
        Ok(Answer { status, bytes })
    }
}
