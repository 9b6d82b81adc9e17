//! The TOML schema: one struct per section, every key with a default unless marked required.
//! Semantic checks that serde cannot express live in `validate.rs`.

use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients connect.
    pub listener: Listener,
    /// The admin API and metrics.
    pub admin: Admin,
    /// The tokio runtime.
    pub runtime: Runtime,
    /// Which policy picks a backend, and its knobs.
    pub balancer: Balancer,
    /// How the proxy talks to backends.
    pub upstream: Upstream,
    /// What happens when every backend is full.
    pub overload: Overload,
    /// The sliding window behind `/api/v1/signals`.
    pub signals: Signals,
    /// Active health checks.
    pub health: crate::lifecycle::Health,
    /// Passive outlier detection.
    pub outlier: crate::lifecycle::Outlier,
    /// Draining.
    pub lifecycle: crate::lifecycle::Lifecycle,
    /// Safe retries and their budget.
    pub retries: crate::lifecycle::Retries,
    /// At-most-once for `Idempotency-Key`.
    pub idempotency: crate::lifecycle::Idempotency,
    /// Static backends.
    pub backends: Vec<StaticBackend>,
    /// Backends that ebbtide starts itself.
    pub provider: Option<Provider>,
    /// Backends found in a service registry (Kubernetes EndpointSlices).
    pub discovery: Option<Discovery>,
    /// `ebbtide autoscale` with several replicas: only the holder of a Kubernetes Lease acts.
    pub leader_election: Option<LeaderElection>,
    /// Scaling the provider's fleet; absent: a fixed `provider.count`.
    pub autoscaler: Option<crate::autoscaler::Autoscaler>,
    /// What `ebbtide simulate` runs; ignored by `ebbtide serve`.
    pub simulation: Option<crate::simulation::Simulation>,
    /// The access log and request ids.
    pub log: Log,
}

/// `[listener]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Listener {
    /// Socket address clients connect to.
    pub address: String,
    /// A client must send a request's headers within this time, counted from accept (for a new
    /// connection, the whole HTTP/2 preface and first request too); an HTTP/1 keep-alive
    /// connection that sends no new request for this long is closed too.
    pub header_read_timeout: HumanDuration,
    /// Request bodies up to this many bytes are read whole before a backend slot is taken (as
    /// NGINX's request buffering), so a slow upload holds no backend; a longer body without a
    /// `Content-Length` is read ahead this far, then streamed. 0 streams every body.
    pub request_buffer: usize,
    /// Longest silence between two reads of a request body; the request then gets 408.
    pub body_read_timeout: HumanDuration,
    /// After `body_read_timeout` from its start, a request body must keep arriving at this many
    /// bytes per second on average (one more second allowed per `min_body_rate` bytes
    /// received, as Apache's mod_reqtimeout); 0: no rate limit.
    pub min_body_rate: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more gets 431.
    pub max_headers: usize,
    /// Longest request target (URI) in bytes; longer gets 414.
    pub max_uri_bytes: usize,
    /// Most connections open at once from one client IP address; more are closed at accept.
    /// 0: no limit.
    pub max_connections_per_client: u32,
    /// Most concurrent HTTP/2 streams on one client connection.
    pub max_streams_per_connection: u32,
    /// Most concurrent HTTP/2 streams from one client IP address across all of its
    /// connections; more are refused with `REFUSED_STREAM` (the client may retry them). 0: no
    /// limit.
    pub max_streams_per_client: u32,
    /// `[[listener.tls]]`: TLS on this listener (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`).
    /// The first certificate is the default; the others are chosen by SNI from their DNS
    /// names. Empty: plain HTTP. Certificates reload on SIGHUP and when their files change.
    pub tls: Vec<TlsCert>,
    /// PEM file of the CA certificates that sign client certificates: clients are asked for a
    /// certificate (mutual TLS, RFC 8446 4.3.2). Relative paths are from the config's directory.
    pub client_ca: Option<String>,
    /// With `client_ca`: "required" (the default; a client without a valid certificate is
    /// refused in the handshake) or "optional" (a certificate, if sent, must be valid).
    pub client_auth: Option<ClientAuth>,
    /// A plain-HTTP listener that answers every request with 308 to the same host and path
    /// over https (as NGINX's `return 308 https://$host$request_uri`); needs `tls`.
    pub redirect_address: Option<String>,
    /// Who serves plain HTTP/1.1 client connections: "native" (the default), the parse-once
    /// lane that forwards HTTP/1.1 requests itself and hands the rest of a connection (HTTP/1.0,
    /// upgrades, `Idempotency-Key`, gRPC, `hash_key`, TLS or h2 backends) to hyper (issue 18;
    /// see `balancer/src/shell/proxy/native`), or "hyper" for every connection. TLS
    /// connections and HTTP/2 are served by hyper either way.
    pub http1: Http1Engine,
}

/// `[listener] http1`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Http1Engine {
    /// hyper's HTTP/1 server for every connection.
    Hyper,
    /// The native parse-once lane, handing over to hyper what it does not serve: about half
    /// the CPU per request of hyper's, and no buffers held by an idle connection
    /// (`bench/native-h1.sh`, `bench/run.sh`).
    #[default]
    Native,
}

/// One `[[listener.tls]]` entry: a certificate chain and its private key, PEM files. Relative
/// paths are from the config file's directory.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsCert {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `[listener] client_auth`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A client without a valid certificate is refused.
    #[default]
    Required,
    /// A client may send no certificate; one it sends must be valid.
    Optional,
}

impl Listener {
    /// Makes the relative paths of `tls` and `client_ca` relative to `dir` (the config file's
    /// directory), so that `ebbtide serve` finds the files wherever it is started from.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        let resolve = |p: &mut String| {
            if !p.is_empty() && std::path::Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).display().to_string();
            }
        };
        for t in &mut self.tls {
            resolve(&mut t.cert);
            resolve(&mut t.key);
        }
        if let Some(ca) = &mut self.client_ca {
            resolve(ca);
        }
    }
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            address: "127.0.0.1:8080".into(),
            header_read_timeout: HumanDuration::from_secs(10),
            request_buffer: 64 * 1024,
            body_read_timeout: HumanDuration::from_secs(10),
            min_body_rate: 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_connections_per_client: 1024,
            max_streams_per_connection: 100,
            max_streams_per_client: 1024,
            tls: Vec::new(),
            client_ca: None,
            client_auth: None,
            redirect_address: None,
            http1: Http1Engine::Native,
        }
    }
}

/// What the access log writes per request (`[log] access`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// No access log.
    #[default]
    Off,
    /// Apache's/NGINX's "combined" line, followed by ebbtide's own fields as `key=value`.
    Combined,
    /// One JSON object per line.
    Json,
}

impl AccessLogFormat {
    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            AccessLogFormat::Off => "off",
            AccessLogFormat::Combined => "combined",
            AccessLogFormat::Json => "json",
        }
    }
}

/// `[log]`: the access log and request ids.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// One line per request: "off", "combined" or "json".
    pub access: AccessLogFormat,
    /// Where the access log goes; absent: standard output. The file is opened for appending
    /// and opened again on SIGHUP (for logrotate).
    pub access_path: Option<std::path::PathBuf>,
    /// Lines that may wait for the writer; when that many wait, a new line is dropped and
    /// counted (`ebbtide_access_log_dropped_total`) rather than making a request wait.
    pub access_buffer: usize,
    /// Give every request an `X-Request-Id` (the client's own when it sent a valid one), sent
    /// to the backend and returned on the response.
    pub request_id: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            access: AccessLogFormat::Off,
            access_path: None,
            access_buffer: 4096,
            request_id: true,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// Socket address of the admin API; loopback unless a token is set.
    pub address: String,
    /// Bearer token the admin API requires; required when `address` is not loopback.
    pub token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: "127.0.0.1:9901".into(),
            token: None,
        }
    }
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Runtime {
    /// Worker threads of the tokio runtime; default: the number of cores.
    pub worker_threads: Option<usize>,
    /// How `ebbtide serve` spreads client connections over the worker threads.
    pub accept: AcceptMode,
}

/// `[runtime] accept`: how client connections are spread over the worker threads.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AcceptMode {
    /// One listener and one multi-thread tokio runtime: a connection's tasks run on whichever
    /// worker is free (work stealing). The default, by measurement (`bench/PER_CORE.md`):
    /// `per_worker` served 1.7x the requests at 0.78x the CPU under closed-loop saturation with
    /// 2 threads, but its p99 at 60% and 90% of saturation was no better, and it cannot move
    /// work off a busy thread (a client with few connections gets one core).
    #[default]
    Shared,
    /// Thread per core, as HAProxy's threads and NGINX's workers: each worker thread runs its
    /// own single-thread runtime and its own listener on the same address (`SO_REUSEPORT`, the
    /// kernel spreads connections by a hash of the client's address and port), and a connection
    /// stays on the thread that accepted it. Health checks, the autoscaler, discovery and the
    /// admin API run on one more thread.
    PerWorker,
}

/// The balancing policies, by config name.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Each backend in turn.
    RoundRobin,
    /// Smooth weighted round robin, as nginx does it.
    WeightedRoundRobin,
    /// Uniformly at random.
    Random,
    /// Join the shortest queue: fewest requests in flight.
    LeastOutstanding,
    /// Power of d choices: the least loaded of d random samples.
    #[default]
    P2c,
    /// p2c over EWMA latency x (in-flight + 1).
    PeakEwma,
    /// Dispatch only to a backend with a free slot below its capacity; the rest wait in a FIFO.
    CentralQueue,
    /// A key (header, cookie or path) maps to a backend; a fleet change moves about 1/n of keys.
    ConsistentHash,
    /// Fill the cheapest backends up to a utilisation target before using dearer ones.
    CostAware,
}

impl PolicyKind {
    /// Every policy, for benchmarks, comparisons and error messages.
    pub const ALL: [PolicyKind; 9] = [
        PolicyKind::RoundRobin,
        PolicyKind::WeightedRoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastOutstanding,
        PolicyKind::P2c,
        PolicyKind::PeakEwma,
        PolicyKind::CentralQueue,
        PolicyKind::ConsistentHash,
        PolicyKind::CostAware,
    ];

    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::WeightedRoundRobin => "weighted_round_robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastOutstanding => "least_outstanding",
            PolicyKind::P2c => "p2c",
            PolicyKind::PeakEwma => "peak_ewma",
            PolicyKind::CentralQueue => "central_queue",
            PolicyKind::ConsistentHash => "consistent_hash",
            PolicyKind::CostAware => "cost_aware",
        }
    }
}

/// `[balancer]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Balancer {
    /// The policy that picks a backend.
    pub policy: PolicyKind,
    /// d for `p2c` and `peak_ewma`: how many backends are sampled per pick.
    pub choices: usize,
    /// Decay time of `peak_ewma`'s latency average: older samples weigh e^(-age/decay).
    pub ewma_decay: HumanDuration,
    /// Where `consistent_hash` takes its key: "path", "header:NAME" or "cookie:NAME", parsed
    /// once when the file is read (a bad value is an error at its key and line).
    pub hash_key: HashKey,
    /// `cost_aware`: fill a backend up to this share of its capacity before using a dearer one.
    pub utilisation_target: f64,
    /// Seed of the random policies, so that runs and simulations can be repeated.
    pub seed: u64,
    /// Slow start (HAProxy's `slowstart`, Envoy's slow-start window): a backend that becomes
    /// active (new, or back from an ejection) gets a share that grows over this long instead of
    /// its full share at once. "0s" (the default, as in HAProxy, Envoy and NGINX) turns it off.
    /// Backends present at startup (static ones) never ramp on their first activation.
    pub slow_start: HumanDuration,
    /// The ramp's curve: factor = (elapsed / slow_start)^(1 / aggression), as Envoy's
    /// `aggression`; 1 (the default) is linear as HAProxy's.
    pub slow_start_aggression: f64,
    /// The smallest share of its weight a ramping backend gets, in percent (Envoy's
    /// `min_weight_percent`, default 10).
    pub slow_start_min_percent: f64,
}

impl Default for Balancer {
    fn default() -> Self {
        Balancer {
            policy: PolicyKind::P2c,
            choices: 2,
            ewma_decay: HumanDuration::from_secs(10),
            hash_key: HashKey::Path,
            utilisation_target: 0.8,
            seed: 0x5eed,
            slow_start: HumanDuration::from_secs(0),
            slow_start_aggression: 1.0,
            slow_start_min_percent: 10.0,
        }
    }
}

/// Where `consistent_hash` takes its key: `balancer.hash_key`, written "path", "header:NAME" or
/// "cookie:NAME" and read through [`HashKey::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The request path (without the query).
    #[default]
    Path,
    /// A request header's value; requests without it get no key.
    Header(String),
    /// A cookie's value; requests without it get no key.
    Cookie(String),
}

impl HashKey {
    /// Parses "path", "header:NAME" or "cookie:NAME".
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let s = s.trim();
        if s == "path" {
            return Ok(HashKey::Path);
        }
        if let Some(name) = s.strip_prefix("header:") {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Ok(HashKey::Header(name.to_ascii_lowercase()));
            }
        }
        if let Some(name) = s.strip_prefix("cookie:") {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=')
            {
                return Ok(HashKey::Cookie(name.to_string()));
            }
        }
        Err(format!(
            "`{s}` is not a key source; use \"path\", \"header:NAME\" or \"cookie:NAME\""
        ))
    }
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::Path => f.write_str("path"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HashKey::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for HashKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// Giving up on a TCP connect to a backend after this long answers 502 (or retries elsewhere).
    pub connect_timeout: HumanDuration,
    /// A backend must send response headers within this time, or the client gets 504.
    pub response_timeout: HumanDuration,
    /// Pooled keep-alive connections to backends idle this long are closed.
    pub idle_timeout: HumanDuration,
    /// At most this many idle pooled connections are kept per backend.
    pub max_idle_per_backend: usize,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is closed
    /// (HAProxy's `timeout tunnel`, whose usual setting is 1h). The response timeout bounds
    /// only the upgrade handshake.
    pub tunnel_idle_timeout: HumanDuration,
    /// PEM file of the certificate authorities that sign TLS backends' certificates (`protocol =
    /// "h2"` or `"https"`); absent: the system's bundle. A backend's own `tls_ca` overrides it.
    pub ca: Option<String>,
    /// HTTP/2 backends: most streams ebbtide opens on one connection before it opens another,
    /// when the backend's own `SETTINGS_MAX_CONCURRENT_STREAMS` is not lower.
    pub max_streams_per_connection: u32,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            connect_timeout: HumanDuration::from_secs(1),
            response_timeout: HumanDuration::from_secs(30),
            idle_timeout: HumanDuration::from_secs(90),
            max_idle_per_backend: 64,
            tunnel_idle_timeout: HumanDuration::from_secs(3600),
            ca: None,
            max_streams_per_connection: 100,
        }
    }
}

/// `[overload]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Overload {
    /// Requests that may wait in the balancer for a free backend; one more is shed with 503.
    pub max_queue: usize,
    /// A request that waited this long for a backend is shed with 503 and `Retry-After`.
    pub queue_timeout: HumanDuration,
    /// Learn a concurrency limit from latency for backends without a configured `capacity`.
    pub adaptive_limit: bool,
}

impl Default for Overload {
    fn default() -> Self {
        Overload {
            max_queue: 1024,
            queue_timeout: HumanDuration::from_secs(5),
            adaptive_limit: true,
        }
    }
}

/// `[signals]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Signals {
    /// The sliding window over which rates and latency percentiles are computed.
    pub window: HumanDuration,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            window: HumanDuration::from_secs(10),
        }
    }
}

/// How the proxy speaks to a backend (`protocol` of `[[backends]]`, `[provider]` and the admin
/// API's registration).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 over TCP, one request per connection at a time, connections kept alive.
    #[default]
    Http1,
    /// HTTP/2 over TCP with prior knowledge (RFC 9113 §3.3): streams multiplexed on a few
    /// connections. gRPC servers without TLS speak this.
    H2c,
    /// HTTP/2 over TLS, agreed with ALPN `h2` (RFC 9113 §3.2).
    H2,
    /// HTTP/1.1 over TLS (ALPN `http/1.1`).
    Https,
}

impl Protocol {
    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
            Protocol::Https => "https",
        }
    }

    /// Whether it runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::H2 | Protocol::Https)
    }

    /// Whether it is HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::H2 | Protocol::H2c)
    }
}

/// One `[[backends]]` entry: a backend that is there from the start until deleted.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticBackend {
    /// host:port of the backend (required).
    pub address: String,
    /// Requests it serves at once; `central_queue` (and every policy) fills only free slots.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Share for the weighted policies.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Price of running it, for `cost_aware`.
    #[serde(default)]
    pub cost_per_hour: f64,
    /// Its own slow-start window, instead of `[balancer] slow_start` (a static backend ramps
    /// only when it comes back from an ejection).
    #[serde(default)]
    pub slow_start: Option<HumanDuration>,
    /// How the proxy speaks to it.
    #[serde(default)]
    pub protocol: Protocol,
    /// TLS protocols: PEM file of the authorities that sign its certificate (default:
    /// `upstream.ca`, else the system's bundle).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// TLS protocols: the name its certificate is checked against and sent as SNI (default: the
    /// host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_weight() -> u32 {
    1
}

/// The provider kinds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Child processes on this machine, on free loopback ports.
    #[default]
    Local,
    /// The user's own launch and terminate scripts, which print JSON: for clouds and schedulers
    /// without a native provider.
    Command,
    /// Containers on a Docker Engine, from `image`, with CPU and memory limits.
    Docker,
    /// The replicas of a Kubernetes Deployment (any resource with a scale subresource).
    Kubernetes,
}

impl ProviderKind {
    /// The name used in config, for summaries and messages.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Command => "command",
            ProviderKind::Docker => "docker",
            ProviderKind::Kubernetes => "kubernetes",
        }
    }
}

/// `[provider]`: backends that ebbtide starts itself.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Provider {
    /// How backends are started.
    pub kind: ProviderKind,
    /// The command line of one backend; `{port}` is replaced by a free loopback port. When the
    /// first word is `ebbtide`, the running executable is used. With `docker`: the container's
    /// command (the image's CMD when left out), `{port}` replaced by `port`.
    pub command: Vec<String>,
    /// How many to start when no autoscaler decides the count.
    pub count: u32,
    /// Capacity each started backend is registered with.
    pub capacity: Option<u32>,
    /// Price of one started backend per hour.
    pub cost_per_hour: f64,
    /// How the proxy (and the readiness probe) speaks to the backends it starts; TLS ones are
    /// verified with `upstream.ca` (or the system's bundle) against the host of their address.
    pub protocol: Protocol,
    /// How long to wait for a started backend to answer its health check (with `command`, the
    /// launch script's own run counts in it).
    pub boot_timeout: HumanDuration,
    /// `command`: the launch script's command line. It starts one backend and prints one line of
    /// JSON, `{"id": "...", "address": "host:port"}`, on stdout; a non-zero exit is a failure.
    pub launch: Vec<String>,
    /// `command`: the terminate script's command line; `{id}` and `{address}` are replaced by
    /// those of the backend to stop (also in the environment as EBBTIDE_INSTANCE_ID and
    /// EBBTIDE_INSTANCE_ADDRESS).
    pub terminate: Vec<String>,
    /// `command`: how long a terminate script may run before it is killed and the stop counted
    /// as failed.
    pub terminate_timeout: HumanDuration,
    /// `docker`: the image each backend runs (required; it must be on the Docker host already:
    /// nothing is pulled).
    pub image: Option<String>,
    /// `docker`: the container port the backend listens on (required). Published on
    /// 127.0.0.1 at a free host port, unless `network` is set. `kubernetes`: the container port
    /// of the pods (default: the first port of the pod's first container).
    pub port: Option<u16>,
    /// `docker`: a Docker network to attach each container to; the backend is then reached at
    /// the container's address on it (for ebbtide running in a container on the same network).
    pub network: Option<String>,
    /// `docker`: CPUs each container may use (0.5 = half a core), enforced by its cgroup.
    pub cpus: Option<f64>,
    /// `docker`: memory each container may use ("64MiB"), enforced by its cgroup.
    pub memory: Option<crate::container::ByteSize>,
    /// `docker`: environment variables, `{ NAME = "value" }` or `["NAME=value"]`.
    pub env: crate::container::EnvVars,
    /// `docker`: labels added to each container (names starting `ebbtide.` are ebbtide's own).
    pub labels: std::collections::BTreeMap<String, String>,
    /// `docker`: the `ebbtide.owner` label of this ebbtide's containers. Containers with the same
    /// owner that a previous run left are removed at start. Default: `admin-` + `admin.address`,
    /// which no two ebbtide processes on one machine share (required when its port is 0).
    pub owner: Option<String>,
    /// Instance kinds (`[[provider.kinds]]`): none = one kind, the provider's own keys.
    pub kinds: Vec<crate::kinds::InstanceKind>,
    /// `kubernetes`: the namespace of `target` (default: the kubeconfig context's, or the
    /// pod's own namespace in-cluster).
    pub namespace: Option<String>,
    /// `kubernetes`: what to scale, `deployment/NAME` (also `replicaset/`, `statefulset/`, or
    /// `GROUP/VERSION/PLURAL/NAME` for any resource with a scale subresource). Required.
    pub target: Option<String>,
    /// `kubernetes`: the API server's URL, e.g. "http://127.0.0.1:8001" (`kubectl proxy`);
    /// default: kubeconfig (`$KUBECONFIG`, ~/.kube/config), then in-cluster credentials.
    pub api_server: Option<String>,
}

impl Provider {
    /// The container's command for `docker`: `command`, or none (the image's CMD) when
    /// `command` was left at the local provider's default.
    pub fn container_command(&self) -> &[String] {
        if self.command == Provider::default().command {
            &[]
        } else {
            &self.command
        }
    }
}

impl Default for Provider {
    fn default() -> Self {
        Provider {
            kind: ProviderKind::Local,
            command: [
                "ebbtide",
                "backend",
                "--listen",
                "127.0.0.1:{port}",
                "--service-time",
                "exp:20ms",
                "--workers",
                "4",
                "--boot",
                "container",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            count: 2,
            capacity: None,
            cost_per_hour: 0.05,
            protocol: Protocol::Http1,
            boot_timeout: HumanDuration::from_secs(60),
            launch: Vec::new(),
            terminate: Vec::new(),
            terminate_timeout: HumanDuration::from_secs(60),
            image: None,
            port: None,
            network: None,
            cpus: None,
            memory: None,
            env: Default::default(),
            labels: Default::default(),
            owner: None,
            kinds: Vec::new(),
            namespace: None,
            target: None,
            api_server: None,
        }
    }
}

/// The discovery kinds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    /// The EndpointSlices of a Kubernetes Service.
    #[default]
    Kubernetes,
}

/// A port of a Service: its name, or its number.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    /// The Service port's `port` number.
    Number(u16),
    /// The Service port's `name`.
    Name(String),
}

/// `[discovery]`: backends from a service registry, kept up to date by a watch.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    /// Where backends are found.
    pub kind: DiscoveryKind,
    /// The Service's namespace (default: the kubeconfig context's, or the pod's own).
    pub namespace: Option<String>,
    /// The Service whose endpoints are the backends (required).
    pub service: Option<String>,
    /// Which of the Service's ports (name or number); may be left out when it has one port.
    pub port: Option<PortRef>,
    /// The API server's URL; default: kubeconfig, then in-cluster credentials.
    pub api_server: Option<String>,
    /// Capacity each discovered backend is registered with.
    pub capacity: Option<u32>,
    /// Weight of each discovered backend.
    pub weight: u32,
    /// Price of one discovered backend per hour.
    pub cost_per_hour: f64,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            kind: DiscoveryKind::Kubernetes,
            namespace: None,
            service: None,
            port: None,
            api_server: None,
            capacity: None,
            weight: 1,
            cost_per_hour: 0.0,
        }
    }
}

/// A resource with a scale subresource, from `[provider] target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleTarget {
    /// API group ("apps"; "" for the core group).
    pub group: String,
    /// API version ("v1").
    pub version: String,
    /// Kind ("Deployment"), as an HPA's scaleTargetRef names it.
    pub kind: String,
    /// Resource name in URLs ("deployments").
    pub plural: String,
    /// The object's name.
    pub name: String,
}

impl ScaleTarget {
    /// Parses `deployment/NAME`, `replicaset/NAME`, `statefulset/NAME`, or
    /// `GROUP/VERSION/PLURAL/NAME` (the kind is then PLURAL without its final `s`, capitalised,
    /// for matching an HPA's scaleTargetRef; give the kind's own spelling when that is wrong).
    pub fn parse(text: &str) -> Result<ScaleTarget, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        let (group, version, kind, plural, name) = match parts.as_slice() {
            [kind, name] => {
                let (kind, plural) = match kind.to_ascii_lowercase().as_str() {
                    "deployment" | "deployments" | "deploy" => ("Deployment", "deployments"),
                    "replicaset" | "replicasets" | "rs" => ("ReplicaSet", "replicasets"),
                    "statefulset" | "statefulsets" | "sts" => ("StatefulSet", "statefulsets"),
                    other => {
                        return Err(format!(
                            "`{other}` is not a kind ebbtide knows; write deployment/NAME, \
                             replicaset/NAME, statefulset/NAME or GROUP/VERSION/PLURAL/NAME"
                        ))
                    }
                };
                (
                    "apps".to_string(),
                    "v1".to_string(),
                    kind.to_string(),
                    plural,
                    *name,
                )
            }
            [group, version, plural, name] if !group.is_empty() && !version.is_empty() => {
                let singular = plural.strip_suffix('s').unwrap_or(plural);
                let mut kind = singular.to_string();
                if let Some(f) = kind.get_mut(0..1) {
                    f.make_ascii_uppercase();
                }
                (group.to_string(), version.to_string(), kind, *plural, *name)
            }
            _ => {
                return Err(format!(
                    "`{text}` is not KIND/NAME (e.g. \"deployment/web\") or \
                     GROUP/VERSION/PLURAL/NAME"
                ))
            }
        };
        if !valid_name(name) {
            return Err(format!(
                "`{name}` is not a Kubernetes object name (lowercase letters, digits, `-`, `.`)"
            ));
        }
        Ok(ScaleTarget {
            group,
            version,
            kind,
            plural: plural.to_string(),
            name: name.to_string(),
        })
    }
}

/// `[leader_election]`: several `ebbtide autoscale` replicas, one acting: the holder of a
/// `coordination.k8s.io` Lease, with client-go's semantics (a holder renews every
/// `retry_period`; one that cannot renew within `renew_deadline` stops at once; the others take
/// the Lease once it has gone unrenewed for `lease_duration`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LeaderElection {
    /// The Lease's name.
    pub lease: String,
    /// Its namespace (default: the kubeconfig context's, or the pod's own).
    pub namespace: Option<String>,
    /// This replica's name in the Lease (default: `$POD_NAME`, else the host name and pid).
    pub identity: Option<String>,
    /// How long a Lease holds without renewal.
    pub lease_duration: HumanDuration,
    /// A holder that has not renewed for this long stops acting (before the Lease runs out).
    pub renew_deadline: HumanDuration,
    /// How often the holder renews and the others try.
    pub retry_period: HumanDuration,
    /// The API server's URL; default: kubeconfig, then in-cluster credentials.
    pub api_server: Option<String>,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            lease: "ebbtide-autoscaler".into(),
            namespace: None,
            identity: None,
            lease_duration: HumanDuration::from_secs(15),
            renew_deadline: HumanDuration::from_secs(10),
            retry_period: HumanDuration::from_secs(2),
            api_server: None,
        }
    }
}
