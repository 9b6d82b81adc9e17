//! The backend registry: who is in the fleet, in which state, and the per-backend counters the
//! policies read. Membership changes (rare) swap an immutable snapshot; per-request counters are
//! atomics inside each backend, so the hot path takes no lock beyond a read of the snapshot.

pub use crate::api::BackendInfo;
use crate::clock::Clock;
use crate::cold_start::{ColdStarts, FirstRequest};
use crate::ewma::PeakEwma;
use crate::limit::AdaptiveLimit;
use crate::outlier::{Ejection, OutlierDetector};
use crate::policy::{BackendView, Candidates};
use crate::pool::{Pool, PoolConfig};
use crate::proxy::Tunnels;
use crate::slow_start::{starts_ramp, Ramp, SlowStart};
use crate::upstream_tls::UpstreamTls;
use ebbtide_config::time::Nanos;
use ebbtide_config::Protocol;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

pub use crate::lifecycle::BackendState;
use crate::lifecycle::Event;

/// How a backend came to be in the fleet; the admin API may remove any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `[[backends]]` in the config file.
    Static,
    /// `POST /api/v1/backends`.
    Api,
    /// Started by ebbtide's provider.
    Provider,
    /// Found by `[discovery]` (a Kubernetes Service's endpoints).
    Discovery,
}

/// What is needed to add a backend.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// host:port.
    pub address: String,
    /// Concurrent requests it serves; None: unknown.
    pub capacity: Option<u32>,
    /// Share for weighted policies.
    pub weight: u32,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// How it was added.
    pub origin: Origin,
    /// Lease end; None: no lease.
    pub lease_until: Option<Nanos>,
    /// Its own slow-start window instead of `[balancer] slow_start`; None: the balancer's.
    pub slow_start: Option<Nanos>,
    /// How the proxy speaks to it.
    pub transport: Transport,
}

#[cfg(test)]
impl BackendSpec {
    /// A backend of the unit tests: no capacity, weight 1, free, no lease, the balancer's slow
    /// start, plain HTTP/1.1; tests override the fields they are about.
    pub(crate) fn plain(address: impl Into<String>, origin: Origin) -> Self {
        BackendSpec {
            address: address.into(),
            capacity: None,
            weight: 1,
            cost_per_hour: 0.0,
            origin,
            lease_until: None,
            slow_start: None,
            transport: Transport::default(),
        }
    }
}

/// How the proxy speaks to a backend: the protocol, and for TLS the authorities and the name to
/// verify it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transport {
    /// `http1` (the default), `h2c`, `h2` or `https`.
    pub protocol: Protocol,
    /// TLS: a PEM file of authorities of its own, instead of `[upstream] ca`.
    pub tls_ca: Option<String>,
    /// TLS: the name to verify its certificate against (default: the host of its address).
    pub server_name: Option<String>,
}

impl Transport {
    /// `protocol` with the shared authorities and the address's host as the server name.
    pub fn protocol(protocol: Protocol) -> Self {
        Transport {
            protocol,
            ..Transport::default()
        }
    }
}

/// Status codes counted per backend: 100..=599.
const CODES: usize = 500;

/// One backend of the fleet, shared by every request that uses it.
pub struct Backend {
    /// Stable identity (never reused in a process).
    pub id: u64,
    /// host:port as given.
    pub address: String,
    /// The authority requests to it carry in their URI.
    pub authority: http::uri::Authority,
    /// Concurrent requests it serves; None: unknown.
    pub capacity: Option<u32>,
    /// Share for weighted policies.
    pub weight: u32,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// How it was added.
    pub origin: Origin,
    state: AtomicU8,
    in_flight: AtomicU32,
    lease_until: AtomicU64,
    /// Latency estimate for `peak_ewma`.
    pub ewma: PeakEwma,
    responses: Box<[AtomicU64]>,
    /// Requests that got no response from it (connect failure, reset, timeout).
    pub failures: AtomicU64,
    /// Its keep-alive connections.
    pub pool: Pool,
    /// Its open tunnels (WebSockets), and the signal that ends them when it leaves.
    pub tunnels: Tunnels,
    /// A concurrency limit learnt from latency, when `capacity` is not configured.
    pub limit: Option<AdaptiveLimit>,
    outlier: OutlierDetector,
    probe_passes: AtomicU32,
    probe_fails: AtomicU32,
    ejected_until: AtomicU64,
    /// When it last became active, if that started a slow-start ramp; 0: not ramping.
    ramp_since: AtomicU64,
    /// Its own slow-start window, if any.
    slow_start: Option<Nanos>,
    clock: Clock,
    /// Its cold start, when the autoscaler launched it (see [`Backend::expect_first_request`]).
    first_request: FirstRequest,
    /// The registry's cold-start histogram, which its first request goes to.
    cold_starts: Arc<ColdStarts>,
}

impl Backend {
    /// The current state.
    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Applies a lifecycle event: the only way a backend's state changes. One compare-and-swap
    /// on the state, with [`crate::lifecycle::transition`] deciding from the state it finds,
    /// so two events racing are applied one after the other (a passing probe cannot overwrite
    /// a drain that landed first). Returns (from, to) when the event applied; None when it does
    /// not apply in the current state.
    ///
    /// On the way out of `ejected` to `active` the ejection is forgotten (its end, and the
    /// outlier detector's run of failures); on the way in, probe passes count from 0, so `rise`
    /// counts passes made while ejected.
    pub fn apply(&self, event: Event) -> Option<(BackendState, BackendState)> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let from = BackendState::from_u8(cur);
            let to = crate::lifecycle::transition(from, event)?;
            if to == from {
                return Some((from, to));
            }
            match self.state.compare_exchange_weak(
                cur,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if starts_ramp(from, to, self.origin == Origin::Static) {
                        self.ramp_since
                            .store(self.clock.now().max(1), Ordering::Release);
                    }
                    match (from, to) {
                        (BackendState::Ejected, BackendState::Active) => {
                            self.ejected_until.store(0, Ordering::Release);
                            self.outlier.reinstate();
                        }
                        (_, BackendState::Ejected) => self.probe_passes.store(0, Ordering::Relaxed),
                        _ => {}
                    }
                    return Some((from, to));
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Requests sent to it and not finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The concurrency it may be given: the configured capacity, else the learnt limit.
    pub fn effective_capacity(&self) -> Option<u32> {
        self.capacity
            .or_else(|| self.limit.as_ref().map(|l| l.limit()))
    }

    /// The slots it has in all. A configured capacity counts its tunnels (upgraded connections)
    /// as requests, as HAProxy's `maxconn` counts them; a learnt limit is one of requests, learnt
    /// from their latency, and a tunnel is none it could measure: the slots are then the limit
    /// plus the open tunnels.
    fn slots(&self) -> Option<u32> {
        match (self.capacity, &self.limit) {
            (Some(c), _) => Some(c),
            (None, Some(l)) => Some(l.limit().saturating_add(self.tunnels.open())),
            (None, None) => None,
        }
    }

    /// Takes a slot if it has one free: a compare-and-swap, so two requests racing for the last
    /// slot cannot both get it and capacity is never exceeded.
    pub fn try_acquire(&self) -> bool {
        let cap = self.slots();
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cap.is_some_and(|c| cur >= c) {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives a slot back.
    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a response status from it. The first answer below 500 after
    /// [`Backend::expect_first_request`] ends its cold start.
    pub fn count_response(&self, status: u16) {
        if (100..600).contains(&status) {
            self.responses[(status - 100) as usize].fetch_add(1, Ordering::Relaxed);
        }
        if status < 500 {
            if let Some((provider, ns)) = self.first_request.served(|| self.clock.now()) {
                self.cold_starts.observe(provider, ns);
                tracing::info!(
                    backend = %self.address,
                    provider,
                    cold_start_ms = ns / 1_000_000,
                    "first request served"
                );
            }
        }
    }

    /// The autoscaler decided at `decided_at` (core time) to launch this backend with
    /// `provider`: its first served request records the cold start
    /// (`ebbtide_cold_start_seconds`). A renewal keeps the first decision time.
    pub fn expect_first_request(&self, provider: &str, decided_at: Nanos) {
        self.first_request.arm(provider, decided_at);
    }

    /// Its cold start in nanoseconds, once its first request was served.
    pub fn cold_start(&self) -> Option<Nanos> {
        self.first_request.measured()
    }

    /// (status, count) for every status seen at least once.
    pub fn response_counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.responses.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16 + 100, n))
        })
    }

    /// A try that got a response: feeds the latency estimate, the limiter and the outlier count.
    /// `in_flight_at_start` counts its tunnels, which the limiter leaves out (see `slots`).
    pub fn on_success(&self, rtt: Nanos, in_flight_at_start: u32, now: Nanos) {
        self.ewma.observe(rtt, now);
        self.outlier.record_success(now);
        if let Some(l) = &self.limit {
            l.on_sample(rtt, self.requests_of(in_flight_at_start), false, now);
        }
    }

    /// Of `in_flight` requests and tunnels, the requests.
    fn requests_of(&self, in_flight: u32) -> u32 {
        in_flight.saturating_sub(self.tunnels.open()).max(1)
    }

    /// A try that got no response; `sent` is (how long it waited, requests in flight when it
    /// was sent) when the request was sent at all.
    pub fn on_failure(&self, sent: Option<(Nanos, u32)>, now: Nanos) {
        if let (Some(l), Some((rtt, in_flight))) = (&self.limit, sent) {
            l.on_sample(rtt, self.requests_of(in_flight), true, now);
        }
    }

    /// Counts a failure for passive outlier detection; returns the ejection end when this
    /// failure crosses the threshold (the caller checks the fleet-wide share before ejecting).
    pub fn record_outlier_failure(
        &self,
        cfg: &ebbtide_config::Outlier,
        now: Nanos,
    ) -> Option<Ejection> {
        if cfg.consecutive_failures == 0 {
            return None;
        }
        self.outlier.record_failure(now)
    }

    /// The passive outlier detection settings it runs with.
    pub fn outlier_config(&self) -> crate::outlier::OutlierConfig {
        self.outlier.config()
    }

    /// Forgets an ejection the fleet guard refused.
    pub fn cancel_ejection(&self, e: Ejection) {
        self.outlier.cancel_ejection(e);
    }
    /// Takes an active backend out of rotation until `until` (passive outlier detection);
    /// false if it was not active.
    pub fn eject(&self, until: Nanos) -> bool {
        let ok = self.apply(Event::OutlierEjected).is_some();
        if ok {
            self.ejected_until.store(until, Ordering::Release);
        }
        ok
    }

    /// When an outlier ejection ends; None when it is not ejected by outlier detection.
    pub fn ejected_until(&self) -> Option<Nanos> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Counts a health probe; returns (passes in a row, failures in a row).
    pub fn record_probe(&self, ok: bool) -> (u32, u32) {
        if ok {
            self.probe_fails.store(0, Ordering::Relaxed);
            (self.probe_passes.fetch_add(1, Ordering::Relaxed) + 1, 0)
        } else {
            self.probe_passes.store(0, Ordering::Relaxed);
            (0, self.probe_fails.fetch_add(1, Ordering::Relaxed) + 1)
        }
    }

    /// When its lease ends; None: it has none.
    pub fn lease_until(&self) -> Option<Nanos> {
        match self.lease_until.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Its slow-start factor at `now` under the balancer's settings `slow_start`.
    pub fn ramp(&self, slow_start: &SlowStart, now: Nanos) -> Ramp {
        match self.ramp_since.load(Ordering::Acquire) {
            0 => Ramp::FULL,
            since => slow_start
                .with_window(self.slow_start)
                .ramp(Some(since), now),
        }
    }

    /// The policy's view of it at `now`, under the balancer's slow-start settings.
    pub fn view(&self, now: Nanos, slow_start: &SlowStart) -> BackendView {
        BackendView {
            id: self.id,
            in_flight: self.in_flight(),
            capacity: self.slots(),
            weight: self.weight,
            ewma_latency_ns: self.ewma.estimate(now),
            cost_per_hour: self.cost_per_hour,
            accepting: self.state() == BackendState::Active,
            ramp: self.ramp(slow_start, now),
        }
    }

    /// The admin API's description of it; `slow_start` gives its ramp.
    pub fn info(&self, now: Nanos, slow_start: &SlowStart) -> BackendInfo {
        BackendInfo {
            id: self.id,
            address: self.address.clone(),
            state: self.state(),
            in_flight: self.in_flight(),
            capacity: self.capacity,
            learnt_limit: self.limit.as_ref().map(|l| l.limit()),
            weight: self.weight,
            cost_per_hour: self.cost_per_hour,
            origin: self.origin,
            ewma_latency_ms: self.ewma.estimate(now) as f64 / 1e6,
            lease_remaining_seconds: self
                .lease_until()
                .map(|t| t.saturating_sub(now) as f64 / 1e9),
            requests: self.response_counts().map(|(_, n)| n).sum(),
            failures: self.failures.load(Ordering::Relaxed),
            ramp: self.ramp(slow_start, now).as_f64(),
            protocol: self.pool.protocol(),
            cold_start_seconds: self.cold_start().map(|ns| ns as f64 / 1e9),
        }
    }
}

/// An immutable list of the fleet, swapped whole when membership changes.
#[derive(Default)]
pub struct Snapshot {
    /// The backends, in the order they were added.
    pub backends: Vec<Arc<Backend>>,
    /// Changes whenever the list does.
    pub generation: u64,
    /// The balancer's slow-start settings (`[balancer] slow_start`), swapped with the list on
    /// a reload.
    pub slow_start: SlowStart,
}

impl Snapshot {
    /// The policies' view of the snapshot at `now`.
    pub fn at(&self, now: Nanos) -> FleetAt<'_> {
        FleetAt { snap: self, now }
    }
}

/// A snapshot seen at one instant, as policies want it.
pub struct FleetAt<'a> {
    snap: &'a Snapshot,
    now: Nanos,
}

impl Candidates for FleetAt<'_> {
    fn len(&self) -> usize {
        self.snap.backends.len()
    }
    fn view(&self, i: usize) -> BackendView {
        self.snap.backends[i].view(self.now, &self.snap.slow_start)
    }
    fn generation(&self) -> u64 {
        self.snap.generation
    }
}

/// What every backend of a registry is built with.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// Decay of the peak-EWMA latency estimate.
    pub ewma_decay: Nanos,
    /// Connection pool settings.
    pub pool: PoolConfig,
    /// Learn a concurrency limit for backends without a configured capacity.
    pub adaptive_limit: bool,
    /// Passive outlier detection.
    pub outlier: crate::outlier::OutlierConfig,
    /// Slow start of backends that become active.
    pub slow_start: SlowStart,
}

impl RegistryConfig {
    /// Defaults, for tests and embedding.
    pub fn defaults() -> Self {
        RegistryConfig {
            ewma_decay: 10_000_000_000,
            pool: PoolConfig {
                connect_timeout: std::time::Duration::from_secs(1),
                idle_timeout: std::time::Duration::from_secs(90),
                max_idle: 64,
                max_streams: 100,
            },
            adaptive_limit: false,
            outlier: Default::default(),
            slow_start: SlowStart::OFF,
        }
    }
}

/// The fleet.
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
    next_id: AtomicU64,
    /// Read when a backend is added, under the `current` write lock (so a reload and an add
    /// cannot interleave: lock order `current`, then `cfg`).
    cfg: std::sync::Mutex<RegistryConfig>,
    clock: Clock,
    /// The authorities TLS backends are verified with, unless they name their own.
    tls: UpstreamTls,
    /// `ebbtide_cold_start_seconds`, fed by the backends' first requests.
    cold_starts: Arc<ColdStarts>,
}

/// Why a backend could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// The address is not host:port.
    BadAddress(String),
    /// Its TLS settings cannot be used (a CA file unreadable, a bad server name).
    Tls(String),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::BadAddress(a) => write!(f, "`{a}` is not host:port"),
            AddError::Tls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl Registry {
    /// An empty fleet whose backends are built with `cfg`.
    pub fn new(cfg: RegistryConfig, clock: Clock) -> Self {
        Registry {
            current: RwLock::new(Arc::new(Snapshot {
                backends: Vec::new(),
                generation: 0,
                slow_start: cfg.slow_start,
            })),
            next_id: AtomicU64::new(1),
            cfg: std::sync::Mutex::new(cfg),
            clock,
            tls: UpstreamTls::default(),
            cold_starts: Arc::default(),
        }
    }

    /// Cold starts so far: launch decision to first request served, by provider.
    pub fn cold_starts(&self) -> &ColdStarts {
        &self.cold_starts
    }

    /// Verifies TLS backends with `tls` (from `[upstream] ca`) instead of the system's bundle.
    pub fn with_upstream_tls(mut self, tls: UpstreamTls) -> Self {
        self.tls = tls;
        self
    }

    /// The fleet now. Cheap: a read lock and a reference count.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<Backend>>)) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut list = cur.backends.clone();
        f(&mut list);
        let slow_start = self
            .cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slow_start;
        *cur = Arc::new(Snapshot {
            backends: list,
            generation: cur.generation + 1,
            slow_start,
        });
    }

    /// Adds a backend in `state`, or, when one with the same address is there, renews its lease
    /// and returns it (`false`: it was not new).
    pub fn add_or_renew(
        &self,
        spec: BackendSpec,
        state: BackendState,
    ) -> Result<(Arc<Backend>, bool), AddError> {
        let authority: http::uri::Authority = spec
            .address
            .parse()
            .map_err(|_| AddError::BadAddress(spec.address.clone()))?;
        if authority.port_u16().is_none() {
            return Err(AddError::BadAddress(spec.address));
        }
        let t = &spec.transport;
        let tls = self
            .tls
            .target(
                t.protocol,
                &spec.address,
                t.tls_ca.as_deref(),
                t.server_name.as_deref(),
            )
            .map_err(AddError::Tls)?;
        let mut result = None;
        self.update(|list| {
            if let Some(b) = list
                .iter()
                .find(|b| b.address == spec.address && b.state() != BackendState::Draining)
            {
                b.lease_until
                    .store(spec.lease_until.unwrap_or(0), Ordering::Release);
                result = Some((b.clone(), false));
                return;
            }
            let cfg = *self.cfg.lock().unwrap_or_else(|e| e.into_inner());
            let b = Arc::new(Backend {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                address: spec.address.clone(),
                authority,
                capacity: spec.capacity,
                weight: spec.weight,
                cost_per_hour: spec.cost_per_hour,
                origin: spec.origin,
                state: AtomicU8::new(state as u8),
                in_flight: AtomicU32::new(0),
                lease_until: AtomicU64::new(spec.lease_until.unwrap_or(0)),
                ewma: PeakEwma::new(cfg.ewma_decay),
                responses: (0..CODES).map(|_| AtomicU64::new(0)).collect(),
                failures: AtomicU64::new(0),
                pool: Pool::with_protocol(
                    spec.address.clone(),
                    spec.transport.protocol,
                    tls,
                    cfg.pool,
                    self.clock,
                ),
                tunnels: Tunnels::default(),
                limit: (spec.capacity.is_none() && cfg.adaptive_limit)
                    .then(|| AdaptiveLimit::new(Default::default())),
                outlier: OutlierDetector::new(cfg.outlier),
                probe_passes: AtomicU32::new(0),
                probe_fails: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                // Added active at once (no health checks): that is its activation.
                ramp_since: AtomicU64::new(
                    if starts_ramp(BackendState::Starting, state, spec.origin == Origin::Static) {
                        self.clock.now().max(1)
                    } else {
                        0
                    },
                ),
                slow_start: spec.slow_start,
                clock: self.clock,
                first_request: FirstRequest::default(),
                cold_starts: self.cold_starts.clone(),
            });
            list.push(b.clone());
            result = Some((b, true));
        });
        Ok(result.expect("update ran"))
    }

    /// The settings backends are built with now.
    pub fn config(&self) -> RegistryConfig {
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Config reload: the latency decay, the outlier thresholds and the slow-start settings
    /// change for every backend and for those added from now on. The pool settings and
    /// `adaptive_limit` are kept (they need a restart).
    pub fn reconfigure(
        &self,
        ewma_decay: Nanos,
        outlier: crate::outlier::OutlierConfig,
        slow_start: SlowStart,
    ) {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        cfg.ewma_decay = ewma_decay;
        cfg.outlier = outlier;
        cfg.slow_start = slow_start;
        if cur.slow_start != slow_start {
            *cur = Arc::new(Snapshot {
                backends: cur.backends.clone(),
                generation: cur.generation,
                slow_start,
            });
        }
        for b in &cur.backends {
            b.ewma.set_decay(ewma_decay);
            b.outlier.set_config(outlier);
        }
    }

    /// Removes a backend by id (it then reads `draining`: [`Event::Removed`]); returns it, or
    /// None when there is none.
    pub fn remove(&self, id: u64) -> Option<Arc<Backend>> {
        let mut removed = None;
        self.update(|list| {
            if let Some(pos) = list.iter().position(|b| b.id == id) {
                removed = Some(list.remove(pos));
            }
        });
        if let Some(b) = &removed {
            b.apply(Event::Removed);
        }
        removed
    }

    /// The backend with `id`.
    pub fn get(&self, id: u64) -> Option<Arc<Backend>> {
        self.snapshot()
            .backends
            .iter()
            .find(|b| b.id == id)
            .cloned()
    }

    /// How many backends are in each state, in [`BackendState::ALL`] order.
    pub fn count_by_state(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for b in &self.snapshot().backends {
            counts[b.state() as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str) -> BackendSpec {
        BackendSpec {
            address: addr.into(),
            capacity: Some(2),
            weight: 1,
            cost_per_hour: 0.0,
            origin: Origin::Api,
            lease_until: None,
            slow_start: None,
            transport: Transport::default(),
        }
    }

    fn at_minimum(r: Ramp) -> bool {
        (r.as_f64() - 0.1).abs() < 1e-4
    }

    /// A backend ramps from each activation (new, or back from an ejection), except a static
    /// one's first: static backends are there at startup.
    #[test]
    fn activations_start_a_ramp_but_not_a_static_backends_first() {
        const S: Nanos = 1_000_000_000;
        let mut cfg = RegistryConfig::defaults();
        cfg.slow_start = SlowStart {
            window: 1_000 * S,
            aggression: 1.0,
            min_weight: 0.1,
        };
        let r = Registry::new(cfg, Clock::new());
        let ss = r.snapshot().slow_start;
        let (api, _) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        let mut s = spec("127.0.0.1:2");
        s.origin = Origin::Static;
        let (fixed, _) = r.add_or_renew(s.clone(), BackendState::Active).unwrap();
        s.address = "127.0.0.1:3".into();
        let (checked, _) = r.add_or_renew(s, BackendState::Starting).unwrap();
        let (started, _) = r
            .add_or_renew(spec("127.0.0.1:4"), BackendState::Starting)
            .unwrap();
        checked.apply(Event::ProbePassed { recovered: false });
        started.apply(Event::ProviderReady);
        // Within a second of a 1000 s window: at the minimum.
        let now = r.clock.now();
        assert!(at_minimum(api.ramp(&ss, now)));
        assert!(at_minimum(started.ramp(&ss, now)));
        assert_eq!(fixed.ramp(&ss, now), Ramp::FULL);
        assert_eq!(checked.ramp(&ss, now), Ramp::FULL);
        // Back from an ejection, a static backend ramps too; the view and the admin JSON show it.
        assert!(fixed.eject(now + S));
        fixed.apply(Event::EjectionOver);
        let now = r.clock.now();
        assert!(at_minimum(fixed.ramp(&ss, now)));
        assert!(at_minimum(r.snapshot().at(now).view(1).ramp));
        assert!((fixed.info(now, &ss).ramp - 0.1).abs() < 1e-4);
        // Full after the window; a reload changes the settings for every backend.
        assert_eq!(fixed.ramp(&ss, now + 2_000 * S), Ramp::FULL);
        r.reconfigure(cfg.ewma_decay, cfg.outlier, SlowStart::OFF);
        assert_eq!(r.snapshot().at(now).view(0).ramp, Ramp::FULL);
    }

    #[test]
    fn capacity_is_never_exceeded_by_try_acquire() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let (b, new) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        assert!(new);
        assert!(b.try_acquire());
        assert!(b.try_acquire());
        assert!(!b.try_acquire());
        b.release();
        assert!(b.try_acquire());
        assert_eq!(b.in_flight(), 2);
    }

    /// A configured capacity counts tunnels as requests; a learnt limit, which is one of
    /// requests, gets them on top, and the limiter is given in-flight counts without them.
    #[test]
    fn tunnels_count_against_a_capacity_but_on_top_of_a_learnt_limit() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let (fixed, _) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        assert!(fixed.try_acquire());
        fixed.tunnels.enter();
        assert!(fixed.try_acquire());
        assert!(
            !fixed.try_acquire(),
            "capacity 2: the tunnel's slot and one request"
        );

        let mut cfg = RegistryConfig::defaults();
        cfg.adaptive_limit = true;
        let r = Registry::new(cfg, Clock::new());
        let mut learnt = spec("127.0.0.1:2");
        learnt.capacity = None;
        let (b, _) = r.add_or_renew(learnt, BackendState::Active).unwrap();
        let limit = b.limit.as_ref().unwrap().limit();
        for _ in 0..3 {
            assert!(b.try_acquire());
            b.tunnels.enter();
        }
        let mut requests = 0;
        while b.try_acquire() {
            requests += 1;
        }
        assert_eq!(
            requests, limit,
            "three tunnels take none of the learnt limit"
        );
        assert_eq!(b.view(0, &SlowStart::OFF).capacity, Some(limit + 3));
        assert_eq!(b.requests_of(limit + 3), limit);
    }

    #[test]
    fn same_address_renews_instead_of_duplicating() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let (a, _) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        let mut s = spec("127.0.0.1:1");
        s.lease_until = Some(42);
        let (b, new) = r.add_or_renew(s, BackendState::Active).unwrap();
        assert!(!new);
        assert_eq!(a.id, b.id);
        assert_eq!(b.lease_until(), Some(42));
        assert_eq!(r.snapshot().backends.len(), 1);
    }

    #[test]
    fn generation_changes_with_membership() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let g0 = r.snapshot().generation;
        let (b, _) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        let g1 = r.snapshot().generation;
        assert_ne!(g0, g1);
        assert!(r.remove(b.id).is_some());
        assert!(r.remove(b.id).is_none());
        assert_ne!(r.snapshot().generation, g1);
    }

    #[test]
    fn bad_addresses_are_refused() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        assert!(r
            .add_or_renew(spec("no port"), BackendState::Active)
            .is_err());
        assert!(r
            .add_or_renew(spec("127.0.0.1"), BackendState::Active)
            .is_err());
    }

    #[test]
    fn responses_are_counted_by_status() {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let (b, _) = r
            .add_or_renew(spec("127.0.0.1:1"), BackendState::Active)
            .unwrap();
        b.count_response(200);
        b.count_response(200);
        b.count_response(503);
        b.count_response(999);
        let counts: Vec<_> = b.response_counts().collect();
        assert_eq!(counts, vec![(200, 2), (503, 1)]);
    }
}
