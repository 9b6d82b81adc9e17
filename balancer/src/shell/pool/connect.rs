//! Opening a connection to a backend: TCP, then TLS when its protocol asks for it (with ALPN
//! `h2` checked for `protocol = "h2"`). The connect timeout covers both. Whatever fails here
//! fails before a request was written, so the request never reached the backend.

use super::ConnectError;
use crate::upstream_tls::{TlsTarget, ALPN_H2};
use ebbtide_config::Protocol;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection's byte stream: plain TCP, or TLS over it.
pub enum Io {
    /// `http1`, `h2c`.
    Plain(TcpStream),
    /// `https`, `h2`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// How one backend is reached.
#[derive(Debug, Clone)]
pub struct Connector {
    /// host:port.
    pub(crate) address: String,
    /// What is spoken on the connection.
    pub(crate) protocol: Protocol,
    /// TLS settings, for `h2` and `https`.
    pub(crate) tls: Option<TlsTarget>,
    /// For TCP connect and TLS handshake together.
    pub(crate) timeout: Duration,
}

impl Connector {
    /// Connections to `address` speaking `protocol`, over TLS with `tls` (for `h2` and
    /// `https`), each made within `timeout`.
    pub fn new(
        address: String,
        protocol: Protocol,
        tls: Option<TlsTarget>,
        timeout: Duration,
    ) -> Self {
        Connector {
            address,
            protocol,
            tls,
            timeout,
        }
    }

    /// host:port.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What is spoken on its connections.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A connection, within the connect timeout.
    pub async fn connect(&self) -> Result<Io, ConnectError> {
        tokio::time::timeout(self.timeout, self.open())
            .await
            .map_err(|_| ConnectError::Timeout)?
    }

    async fn open(&self) -> Result<Io, ConnectError> {
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|e| ConnectError::from_connect(&self.address, e))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Io::Plain(stream));
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.server_name.clone(), stream)
            .await
            .map_err(|e| {
                ConnectError::Failed(format!("TLS handshake with {}: {e}", self.address))
            })?;
        if self.protocol == Protocol::H2 && stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(ConnectError::Failed(format!(
                "{} did not agree to HTTP/2 (ALPN h2) in its TLS handshake",
                self.address
            )));
        }
        Ok(Io::Tls(Box::new(stream)))
    }
}
