//! TLS termination on the client listener, with rustls: certificates and keys from PEM files,
//! several certificates chosen by SNI, ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3 only,
//! optional client certificates, and the plain-HTTP listener that redirects to https.
//!
//! Certificates reload without a restart: the server config's certificate resolver reads a
//! set that a reload swaps whole ([`Tls::reload`] on SIGHUP, [`Tls::watch`] when the files
//! change), so handshakes after the swap get the new certificates while connections already
//! open keep theirs. A set that fails to load (a missing file, a key that does not match its
//! certificate) is refused with an error in the log, and the running one stays.
//!
//! The files are read by one function, [`Tls::check`] / [`Tls::new`], which `ebbtide check`,
//! start-up and reloads all use, so they agree on what is a valid set.

use ebbtide_config::{ClientAuth, Listener, TlsCert};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A TLS connection from a client.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// One thing wrong with the TLS files, at the config key that names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsProblem {
    /// Dotted key path, e.g. `listener.tls[1].key`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn problem(key: String, message: impl Into<String>) -> Vec<TlsProblem> {
    vec![TlsProblem {
        key,
        message: message.into(),
    }]
}

/// The `[listener]` keys TLS is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    certs: Vec<TlsCert>,
    client_ca: Option<String>,
    client_auth: ClientAuth,
}

impl Files {
    fn of(l: &Listener) -> Files {
        Files {
            certs: l.tls.clone(),
            client_ca: l.client_ca.clone(),
            client_auth: l.client_auth.unwrap_or_default(),
        }
    }

    /// Modification time and length of every file, in a fixed order: what the watcher compares.
    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let paths = self
            .certs
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .chain(self.client_ca.as_ref());
        paths
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }
}

/// The certificates of one load, by the names SNI chooses them with.
#[derive(Debug)]
pub(crate) struct CertSet {
    /// The first `[[listener.tls]]` entry: for a client without SNI or with a name no
    /// certificate has.
    default: Arc<CertifiedKey>,
    /// Exact DNS names, lower case.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` as `example.com`: matches one more label on the left (RFC 6125 6.4.3).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// A set from certificates and their DNS names, the first the default; where two
    /// certificates have a name, the first listed keeps it.
    pub(crate) fn new(keys: Vec<(Arc<CertifiedKey>, Vec<String>)>) -> Option<CertSet> {
        let default = keys.first()?.0.clone();
        let mut set = CertSet {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (key, names) in keys {
            for name in names {
                let name = name.to_ascii_lowercase();
                let (map, name) = match name.strip_prefix("*.") {
                    Some(base) => (&mut set.wildcard, base.to_string()),
                    None => (&mut set.exact, name),
                };
                map.entry(name).or_insert_with(|| key.clone());
            }
        }
        Some(set)
    }

    /// The certificate for the SNI name `sni`: an exact name, else a wildcard one label up,
    /// else the default.
    pub(crate) fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        // rustls hands SNI over in lower case; a mixed-case one is lower-cased once here.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }

    /// Reads every `[[listener.tls]]` entry: all the problems, or the set.
    fn load(certs: &[TlsCert], provider: &CryptoProvider) -> Result<CertSet, Vec<TlsProblem>> {
        let mut keys = Vec::with_capacity(certs.len());
        let mut problems = Vec::new();
        for (i, entry) in certs.iter().enumerate() {
            match load_entry(i, entry, provider) {
                Ok(k) => keys.push(k),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        CertSet::new(keys).ok_or_else(|| {
            problem(
                "listener.tls".into(),
                "has no entries; add one with cert and key",
            )
        })
    }
}

/// Reads a file for `key`, naming both in the error.
fn read(key: &str, path: &str) -> Result<Vec<u8>, Vec<TlsProblem>> {
    std::fs::read(path).map_err(|e| problem(key.into(), format!("cannot read `{path}`: {e}")))
}

/// Every PEM `CERTIFICATE` of the file at `path`, at least one.
fn read_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, Vec<TlsProblem>> {
    let pem = read(key, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if c.is_empty() => Err(problem(
            key.into(),
            format!("`{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        )),
        Ok(c) => Ok(c),
        Err(e) => Err(problem(key.into(), format!("`{path}`: invalid PEM: {e}"))),
    }
}

/// One certificate chain and its key, checked against each other, with its DNS names.
fn load_entry(
    i: usize,
    entry: &TlsCert,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), Vec<TlsProblem>> {
    let cert_key = format!("listener.tls[{i}].cert");
    let key_key = format!("listener.tls[{i}].key");
    let chain = read_certs(&cert_key, &entry.cert);
    let key = read(&key_key, &entry.key).and_then(|pem| {
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            let why = match e {
                rustls_pki_types::pem::Error::NoItemsFound => "holds no PEM private key \
                     (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_string(),
                e => format!("invalid PEM: {e}"),
            };
            problem(key_key.clone(), format!("`{}` {why}", entry.key))
        })
    });
    let (chain, key) = match (chain, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => {
            let mut all = c.err().unwrap_or_default();
            all.extend(k.err().unwrap_or_default());
            return Err(all);
        }
    };
    let names: Vec<String> = match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(ee) => ee.valid_dns_names().map(str::to_string).collect(),
        Err(e) => {
            return Err(problem(
                cert_key,
                format!(
                    "the first certificate of `{}` is not a valid X.509 certificate: {e}",
                    entry.cert
                ),
            ))
        }
    };
    if i > 0 && names.is_empty() {
        return Err(problem(
            cert_key,
            format!(
                "`{}` names no DNS host (subjectAltName), so SNI can never choose it; only the \
                 first [[listener.tls]] entry, the default, may be without names",
                entry.cert
            ),
        ));
    }
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| problem(key_key.clone(), format!("`{}`: {e}", entry.key)))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(problem(
                key_key,
                format!(
                    "`{}` does not match the certificate in `{}` (their public keys differ)",
                    entry.key, entry.cert
                ),
            ))
        }
        Err(e) => return Err(problem(key_key, format!("`{}`: {e}", entry.key))),
    }
    Ok((Arc::new(certified), names))
}

/// Hands each handshake the certificate its SNI name picks from the current set.
#[derive(Debug)]
struct SniResolver {
    set: RwLock<Arc<CertSet>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        Some(set.pick(hello.server_name()).clone())
    }
}

/// What was loaded last, for reloads and the file watcher.
struct Loaded {
    files: Files,
    stamps: Vec<Option<(SystemTime, u64)>>,
}

/// TLS on the client listener: the rustls server config (swapped whole only when the client
/// CA settings change) and the certificate set its resolver reads (swapped on every reload).
pub struct Tls {
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    config: RwLock<Arc<ServerConfig>>,
    loaded: Mutex<Loaded>,
}

/// ALPN ids this listener offers, best first (RFC 7301; `h2` from RFC 9113 3.2).
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The rustls server config: TLS 1.3 and 1.2 only (not 1.1 or older, RFC 8996), ALPN `h2` and
/// `http/1.1`, client certificates as `files` asks.
fn server_config(
    files: &Files,
    resolver: Arc<SniResolver>,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, Vec<TlsProblem>> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| problem("listener.tls".into(), e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let key = "listener.client_ca";
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(key, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| problem(key.into(), format!("`{ca}`: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match files.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| problem(key.into(), format!("`{ca}`: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

impl Tls {
    /// Reads the certificates, keys and client CA that `[listener]` names; every problem
    /// found, each at its key.
    pub fn new(l: &Listener) -> Result<Tls, Vec<TlsProblem>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = Files::of(l);
        let stamps = files.stamps();
        let set = CertSet::load(&files.certs, &provider);
        let resolver = Arc::new(SniResolver {
            set: RwLock::new(Arc::new(set?)),
        });
        let config = server_config(&files, resolver.clone(), &provider)?;
        Ok(Tls {
            provider,
            resolver,
            config: RwLock::new(Arc::new(config)),
            loaded: Mutex::new(Loaded { files, stamps }),
        })
    }

    /// What is wrong with the TLS files of `l` (nothing when it has no TLS), for `ebbtide
    /// check` and start-up.
    pub fn check(l: &Listener) -> Vec<TlsProblem> {
        if l.tls.is_empty() {
            return Vec::new();
        }
        Tls::new(l).err().unwrap_or_default()
    }

    /// Loads the files `l` names and swaps them in for new handshakes; connections already
    /// open keep their certificates. On any problem nothing changes and the problems are
    /// logged and returned.
    pub fn reload(&self, l: &Listener) -> Result<(), Vec<TlsProblem>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        self.load_locked(&mut loaded, Files::of(l))
    }

    fn load_locked(&self, loaded: &mut Loaded, files: Files) -> Result<(), Vec<TlsProblem>> {
        // Stamped before reading: a file written during the read is seen again next time.
        // The files named last are watched even when they fail to load, so that fixing
        // them is enough.
        loaded.stamps = files.stamps();
        let previous = std::mem::replace(&mut loaded.files, files.clone());
        let result = CertSet::load(&files.certs, &self.provider).and_then(|set| {
            let config = (files.client_ca.is_some() || previous.client_ca.is_some())
                .then(|| server_config(&files, self.resolver.clone(), &self.provider))
                .transpose()?;
            Ok((set, config))
        });
        match result {
            Ok((set, config)) => {
                let names = set.exact.len() + set.wildcard.len();
                *self.resolver.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
                if let Some(mut config) = config {
                    // Sessions stay resumable across the swap.
                    let old = self
                        .config
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    config.session_storage = old.session_storage.clone();
                    *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                }
                tracing::info!(
                    certificates = files.certs.len(),
                    names,
                    "TLS certificates loaded"
                );
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!("TLS reload refused, keeping the running certificates: {p}");
                }
                Err(problems)
            }
        }
    }

    /// Reloads when a file changed (modification time or length) since the last load; whether
    /// it did.
    pub fn reload_if_changed(&self) -> bool {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.files.stamps() == loaded.stamps {
            return false;
        }
        let files = loaded.files.clone();
        tracing::info!("TLS files changed; reloading");
        let _ = self.load_locked(&mut loaded, files);
        true
    }

    /// Looks at the files every `every` and reloads those that changed, until `stop`.
    pub async fn watch(self: Arc<Self>, every: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let tls = self.clone();
            // A few small blocking reads: off the workers that serve requests.
            let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
        }
    }

    /// The TLS handshake on an accepted connection, with the config in force now; whether the
    /// client chose HTTP/2 by ALPN.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<(TlsStream, bool)> {
        let config = self
            .config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN[0]);
        Ok((tls, h2))
    }
}

/// How often [`Tls::watch`] looks at the files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The answer of the redirect listener: 308 to the same host and target over https, on
/// `https_port` (left out when 443). 308 keeps the method and body (RFC 9110 15.4.9). A request
/// without a usable host gets 400.
pub fn redirect<B>(
    req: &http::Request<B>,
    https_port: u16,
) -> http::Response<http_body_util::Empty<bytes::Bytes>> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            let a: http::uri::Authority = h.parse().ok()?;
            Some(a.host().to_string())
        });
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = host.filter(|h| !h.is_empty()).and_then(|h| {
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        http::HeaderValue::from_str(&format!("https://{h}{port}{target}")).ok()
    });
    let mut resp = http::Response::new(http_body_util::Empty::new());
    match location {
        Some(l) => {
            *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(http::header::LOCATION, l);
        }
        None => *resp.status_mut() = http::StatusCode::BAD_REQUEST,
    }
    resp
}

#[cfg(test)]
mod tests;
