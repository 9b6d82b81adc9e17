//! HTTPS for the load generator: how a connection is dialled (plain TCP, or TCP then a rustls
//! handshake with SNI and ALPN), and the client config `--cacert` and `--insecure` ask for.
//!
//! A plain-HTTP run pays nothing for this but a match on the stream's kind per read and write.

use super::report::ErrorKind;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The CA bundle used when neither `--cacert` nor `--insecure` is given (Debian's, or the file
/// `SSL_CERT_FILE` names, as OpenSSL does).
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What an https target's connections are made with.
pub(crate) struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// For the server named `host` (sent as SNI and checked against its certificate): trusting
    /// the CAs in `cacert`, or no certificate check at all with `insecure`, offering ALPN `h2`
    /// with `h2`, else `http/1.1`.
    pub(crate) fn new(
        host: &str,
        cacert: Option<&Path>,
        insecure: bool,
        h2: bool,
    ) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoCheck(provider)))
                .with_no_client_auth()
        } else {
            let system = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_CA_FILE.into());
            let file = cacert.unwrap_or(Path::new(&system));
            let pem = std::fs::read(file).map_err(|e| {
                format!(
                    "cannot read the CA certificates in {}: {e}; give --cacert FILE or --insecure",
                    file.display()
                )
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", file.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no PEM certificate", file.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        // An IP literal in brackets ([::1]) is not a DNS name: SNI is then left out.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|e| format!("`{host}` is not a server name: {e}"))?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// How the engine's connections reach the target.
#[derive(Clone)]
pub(crate) struct Dial {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<Arc<Tls>>,
}

impl Dial {
    /// A connection, with its TLS handshake done for an https target.
    pub(crate) async fn connect(&self) -> Result<Stream, ErrorKind> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => {
                let s = tls
                    .connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|_| ErrorKind::Connect)?;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }
}

/// A connection to the target.
pub(crate) enum Stream {
    /// http://
    Plain(TcpStream),
    /// https:// (boxed: rustls's state is large and plain streams should not carry its size).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// `--insecure`: any certificate is accepted (the handshake's signatures are still checked, so
/// the server must hold the key of the certificate it sends), as `curl --insecure`.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
