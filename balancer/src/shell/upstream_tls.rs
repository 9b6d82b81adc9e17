//! TLS to backends (`protocol = "h2"` or `"https"`): rustls client settings built once from
//! `[upstream] ca` (or the system's bundle) and shared by every backend that uses them, a
//! backend's own `tls_ca` and `server_name`, and ALPN: `h2` for HTTP/2 (RFC 9113 §3.2: a backend
//! that does not select it is refused at connect), `http/1.1` for HTTPS.
//!
//! Verification is always on: the backend's certificate must chain to a configured authority and
//! name the server name (the host of its address unless `server_name` says otherwise).

use ebbtide_config::Protocol;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;

/// ALPN protocol ids (IANA "TLS Application-Layer Protocol Negotiation (ALPN) Protocol IDs").
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What a TLS backend's connections are made with.
#[derive(Clone)]
pub struct TlsTarget {
    /// rustls' client settings (authorities, ALPN).
    pub config: Arc<ClientConfig>,
    /// Sent as SNI and checked against the certificate.
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsTarget({:?})", self.server_name)
    }
}

/// Client settings for (h2, https) over the same authorities.
type Shared = (Arc<ClientConfig>, Arc<ClientConfig>);

/// The TLS settings shared by backends without a `tls_ca` of their own: built once, from
/// `[upstream] ca` or the system's bundle, when the first TLS backend needs them.
#[derive(Default)]
pub struct UpstreamTls {
    /// `[upstream] ca`; None: the system's bundle.
    ca: Option<String>,
    /// (h2, https) client settings over the default authorities, made on first use.
    shared: std::sync::OnceLock<Result<Shared, String>>,
}

impl UpstreamTls {
    /// Settings whose default authorities come from `ca` (a PEM file), or from the system's
    /// bundle when None.
    pub fn new(ca: Option<String>) -> Self {
        UpstreamTls {
            ca,
            shared: std::sync::OnceLock::new(),
        }
    }

    /// How to reach `address` over TLS with `protocol` (None for a protocol without TLS):
    /// verified with `ca` (a PEM file) when given, else with the shared authorities, against
    /// `server_name` or else the host of `address`.
    pub fn target(
        &self,
        protocol: Protocol,
        address: &str,
        ca: Option<&str>,
        server_name: Option<&str>,
    ) -> Result<Option<TlsTarget>, String> {
        if !protocol.is_tls() {
            return Ok(None);
        }
        let config = match ca {
            Some(file) => {
                let roots = Arc::new(roots_from(file)?);
                client_config(roots, protocol)
            }
            None => {
                let (h2, https) = self
                    .shared
                    .get_or_init(|| {
                        let file = match &self.ca {
                            Some(f) => f.clone(),
                            None => ebbtide_config::system_ca_bundle()
                                .ok_or_else(|| {
                                    format!(
                                        "no certificate authorities to verify TLS backends with: \
                                         set [upstream] ca (no system bundle at {})",
                                        ebbtide_config::SYSTEM_CA_BUNDLES.join(", ")
                                    )
                                })?
                                .to_string(),
                        };
                        let roots = Arc::new(roots_from(&file)?);
                        Ok((
                            client_config(roots.clone(), Protocol::H2),
                            client_config(roots, Protocol::Https),
                        ))
                    })
                    .as_ref()
                    .map_err(Clone::clone)?;
                if protocol == Protocol::H2 {
                    h2.clone()
                } else {
                    https.clone()
                }
            }
        };
        let name = match server_name {
            Some(n) => n.to_string(),
            None => host_of(address).to_string(),
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| format!("`{name}` is not a valid TLS server name"))?;
        Ok(Some(TlsTarget {
            config,
            server_name,
        }))
    }
}

/// The host of `host:port` (brackets of an IPv6 literal removed).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The authorities in a PEM file.
fn roots_from(file: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("CA file `{file}`: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file `{file}`: {e}"))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("CA file `{file}` holds no usable certificate"));
    }
    Ok(roots)
}

/// Client settings for `protocol` over `roots`: TLS 1.2 and 1.3 (rustls' safe defaults, ring
/// as the provider), ALPN `h2` or `http/1.1`.
fn client_config(roots: Arc<RootCertStore>, protocol: Protocol) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![match protocol {
        Protocol::H2 => ALPN_H2.to_vec(),
        _ => ALPN_HTTP1.to_vec(),
    }];
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address_unless_given() {
        assert_eq!(host_of("backend-1:443"), "backend-1");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }

    #[test]
    fn plain_protocols_need_no_tls_and_a_bad_ca_file_is_an_error() {
        let tls = UpstreamTls::new(Some("/nonexistent/ca.pem".into()));
        assert!(tls
            .target(Protocol::H2c, "127.0.0.1:1", None, None)
            .unwrap()
            .is_none());
        let err = tls
            .target(Protocol::H2, "127.0.0.1:1", None, None)
            .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn alpn_follows_the_protocol() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("ebbtide-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let tls = UpstreamTls::new(Some(ca.display().to_string()));
        let h2 = tls
            .target(Protocol::H2, "127.0.0.1:1", None, Some("localhost"))
            .unwrap()
            .unwrap();
        assert_eq!(h2.config.alpn_protocols, vec![b"h2".to_vec()]);
        let https = tls
            .target(Protocol::Https, "127.0.0.1:1", None, None)
            .unwrap()
            .unwrap();
        assert_eq!(https.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(
            https.server_name,
            ServerName::try_from("127.0.0.1").unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
