//! The admin API's wire format, written once: the server ([`crate::admin`]) serializes these
//! types and every client (`ebbtide autoscale`, `ebbtide load --admin`, the tests) deserializes
//! the same ones, so a renamed field is a compile error on both sides rather than a run-time
//! surprise. [`client::AdminClient`] is the one typed HTTP client they share.
//!
//! Clients ignore fields they do not know (a newer balancer may add some); the registration body
//! is the exception and refuses unknown fields, so that a typo is an error, not a silent default.
//! Error answers are plain text (`400 Bad Request: ...`), not JSON.

use serde::{Deserialize, Serialize};

pub mod client;

pub use crate::registry::{BackendState, Origin};
pub use crate::signals::LatencySummary;
pub use ebbtide_config::Protocol;

/// The answer to `GET /api/v1/signals`: the signal window's counts and latencies plus the
/// balancer's cumulative counters and current gauges.
///
/// The fields are in alphabetical order: that is the order the JSON had when it was assembled as
/// a `serde_json` map, so the bytes on the wire did not change when it became this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Arrivals per second over `span_seconds` (0 when the span is empty).
    pub arrival_rate: f64,
    /// Requests that arrived within the window.
    pub arrivals: u64,
    /// Requests that arrived since the balancer started; cumulative, so that a remote
    /// autoscaler can take rates over its own interval.
    pub arrivals_total: u64,
    /// The mean time at a backend (from the request sent to the response's end) of the
    /// window's completions a backend answered, in milliseconds: the autoscaler's service time,
    /// without the balancer's queue in it. 0 when none, or from a balancer older than this field.
    #[serde(default)]
    pub backend_ms: f64,
    /// Backends by state, now.
    pub backends: BackendCounts,
    /// Completions per second over `span_seconds` (0 when the span is empty).
    pub completion_rate: f64,
    /// Requests that completed within the window (their latencies feed `latency_ms`).
    pub completions: u64,
    /// Requests answered since the balancer started; cumulative, like `arrivals_total`.
    pub completions_total: u64,
    /// Requests at backends now.
    pub in_flight: u64,
    /// Latency over the window's completions, in milliseconds (all 0 when `completions` is 0).
    pub latency_ms: LatencySummary,
    /// The balancing policy's name.
    pub policy: String,
    /// Requests waiting in the balancer for a free backend now.
    pub queue_depth: u64,
    /// Requests shed (rejected by overload control) within the window.
    pub shed: u64,
    /// Requests shed since the balancer started (queue full or queue timeout).
    pub shed_total: u64,
    /// The span of time the window's counts actually cover, in seconds: the window (minus the
    /// unelapsed part of the current slot), or less while the window is younger than that.
    pub span_seconds: f64,
    /// The configured window width, in seconds.
    pub window_seconds: f64,
}

/// How many backends are in each [`BackendState`] (the `backends` of [`Signals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendCounts {
    /// Receiving requests.
    pub active: u32,
    /// Finishing their in-flight requests before removal.
    pub draining: u32,
    /// Out of rotation for failing.
    pub ejected: u32,
    /// Registered, not yet healthy.
    pub starting: u32,
}

impl BackendCounts {
    /// The counts from the registry's per-state array (indexed by `BackendState as usize`).
    pub fn from_array(counts: [usize; 4]) -> Self {
        let mut out = BackendCounts::default();
        for state in BackendState::ALL {
            let n = counts[state as usize] as u32;
            // Exhaustive on purpose: a new state must be given a field here.
            match state {
                BackendState::Starting => out.starting = n,
                BackendState::Active => out.active = n,
                BackendState::Draining => out.draining = n,
                BackendState::Ejected => out.ejected = n,
            }
        }
        out
    }
}

/// One backend as `GET /api/v1/backends` lists it; also the answer to `POST /api/v1/backends`
/// (201 when new, 200 when renewed) and to `DELETE /api/v1/backends/{id}` (202, now draining).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Stable id, for `DELETE /api/v1/backends/{id}`.
    pub id: u64,
    /// host:port.
    pub address: String,
    /// starting, active, draining or ejected.
    pub state: BackendState,
    /// Requests in flight.
    pub in_flight: u32,
    /// Concurrent requests it serves, when configured.
    pub capacity: Option<u32>,
    /// The concurrency limit learnt from latency, when no capacity is configured.
    pub learnt_limit: Option<u32>,
    /// Weight.
    pub weight: u32,
    /// Price per hour.
    pub cost_per_hour: f64,
    /// static, api or provider.
    pub origin: Origin,
    /// Current peak-EWMA latency estimate.
    pub ewma_latency_ms: f64,
    /// Seconds until the lease runs out, when it has one.
    pub lease_remaining_seconds: Option<f64>,
    /// Responses received from it.
    pub requests: u64,
    /// Requests that got no response from it.
    pub failures: u64,
    /// How the proxy speaks to it: http1, h2c, h2 or https.
    #[serde(default)]
    pub protocol: Protocol,
    /// Slow start: the share of its full weight or slots it gets now, in (0, 1]; 1 when it is
    /// not ramping (`[balancer] slow_start`).
    #[serde(default = "full_ramp")]
    pub ramp: f64,
    /// Seconds from the autoscaler's decision to launch it to its first served request, once
    /// served; absent for backends ebbtide did not launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<f64>,
}

fn full_ramp() -> f64 {
    1.0
}

/// The body of `POST /api/v1/backends`: register a backend, or renew one already registered at
/// the same address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// host:port.
    pub address: String,
    /// Concurrent requests it serves (at least 1); absent: unknown, learnt from latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Share for weighted policies (at least 1); 1 when absent.
    #[serde(default = "one")]
    pub weight: u32,
    /// Seconds until the registration expires unless renewed, in (0, 86400]; absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<f64>,
    /// Price per hour (>= 0); 0 when absent.
    #[serde(default)]
    pub cost_per_hour: f64,
    /// How the proxy speaks to it: "http1" when absent, "h2c", "h2" (TLS, ALPN h2) or "https";
    /// TLS backends are verified with `[upstream] ca` (or the system's bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// TLS: the name its certificate is verified against (default: the host of `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Sent by `ebbtide autoscale` with a backend's first registration: which provider
    /// launched it and how long ago that was decided, so that the balancer measures its cold
    /// start (`ebbtide_cold_start_seconds`) up to the first request it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched: Option<Launched>,
}

/// [`Register::launched`]: the launch decision of a backend an autoscaler started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Launched {
    /// The provider's config name: `local`, `command`, `docker` or `kubernetes`.
    pub provider: String,
    /// Seconds from the launch decision to this registration (>= 0).
    pub seconds_ago: f64,
}

fn one() -> u32 {
    1
}

/// One push of `GET /api/v1/stream` (the `data:` of each `snapshot` event): everything the
/// dashboard draws, so that it never has to poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The signals (for `ebbtide autoscale`: summed over the balancers that answered; `None`
    /// when none did).
    pub signals: Option<Signals>,
    /// Every backend, as `GET /api/v1/backends` lists them (for `ebbtide autoscale`: the union
    /// over its balancers, by address).
    pub backends: Vec<BackendInfo>,
    /// Retries since the balancer started (0 where unknown).
    #[serde(default)]
    pub retries_total: u64,
    /// The autoscaler's decisions new or updated since the previous push of this stream (all
    /// of them in the first push), oldest first, as `GET /api/v1/events` shows them; an entry
    /// for a run of holds comes again, with the same `at`, when the run grows.
    pub events: Vec<serde_json::Value>,
    /// The autoscaler, when there is one.
    pub autoscaler: Option<AutoscalerSummary>,
    /// In the first push of a stream only: the last minutes, one point a second, oldest
    /// first, so that the charts start full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryPoint>,
}

/// One second of the dashboard's charts, in [`Snapshot::history`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Arrivals per second over the signal window.
    pub arrival_rate: f64,
    /// Completions per second over the signal window.
    pub completion_rate: f64,
    /// Median latency over the window, ms (`None` when nothing completed in it).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the window, ms (`None` when nothing completed in it).
    pub p99_ms: Option<f64>,
    /// Requests waiting in the balancer.
    pub queue_depth: u64,
    /// Requests shed since start.
    pub shed_total: u64,
    /// Retries since start.
    pub retries_total: u64,
    /// Backends by state.
    pub backends: BackendCounts,
    /// Backends the autoscaler wanted, when there is one.
    pub desired: Option<u32>,
    /// The decider's p99 target, when it has one.
    pub slo_p99_ms: Option<f64>,
}

/// The autoscaler at a glance, in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerSummary {
    /// The decider's config name (`None` for a fixed fleet).
    pub decider: Option<String>,
    /// `stable` or `panic` (the latest decision's mode).
    pub mode: String,
    /// Backends wanted now.
    pub desired: u32,
    /// Accumulated cost so far (whole billing periods).
    pub cost_total: f64,
    /// What the backends listed cost per hour now.
    pub cost_per_hour: f64,
    /// Backend-seconds run so far.
    pub backend_seconds: f64,
    /// The p99 target the decider aims at, when it has one.
    pub slo_p99_ms: Option<f64>,
    /// The autoscaler's clock now (the time base of the events' `at`), in nanoseconds.
    pub now_ns: u64,
}

impl Signals {
    /// Several balancers' signals as one fleet's: counts, rates and gauges summed, latencies
    /// the worst, the window the widest; `None` for an empty list.
    pub fn merged(list: &[Signals]) -> Option<Signals> {
        let (first, rest) = list.split_first()?;
        let mut out = first.clone();
        for s in rest {
            out.arrival_rate += s.arrival_rate;
            out.arrivals += s.arrivals;
            out.arrivals_total += s.arrivals_total;
            out.backends.active += s.backends.active;
            out.backends.draining += s.backends.draining;
            out.backends.ejected += s.backends.ejected;
            out.backends.starting += s.backends.starting;
            out.completion_rate += s.completion_rate;
            out.completions += s.completions;
            out.completions_total += s.completions_total;
            out.in_flight += s.in_flight;
            out.latency_ms.mean = out.latency_ms.mean.max(s.latency_ms.mean);
            out.backend_ms = out.backend_ms.max(s.backend_ms);
            out.latency_ms.p50 = out.latency_ms.p50.max(s.latency_ms.p50);
            out.latency_ms.p90 = out.latency_ms.p90.max(s.latency_ms.p90);
            out.latency_ms.p99 = out.latency_ms.p99.max(s.latency_ms.p99);
            out.queue_depth += s.queue_depth;
            out.shed += s.shed;
            out.shed_total += s.shed_total;
            out.span_seconds = out.span_seconds.max(s.span_seconds);
            out.window_seconds = out.window_seconds.max(s.window_seconds);
        }
        Some(out)
    }
}

/// The paths of the admin API's JSON endpoints.
pub mod paths {
    /// `GET`: [`super::Signals`].
    pub const SIGNALS: &str = "/api/v1/signals";
    /// `GET`: a list of [`super::BackendInfo`]; `POST` a [`super::Register`]: one.
    pub const BACKENDS: &str = "/api/v1/backends";
    /// `GET`: Server-Sent Events, each a [`super::Snapshot`] (`event: snapshot`).
    pub const STREAM: &str = "/api/v1/stream";
    /// `GET`: the autoscaler's recent decisions, newest first.
    pub const EVENTS: &str = "/api/v1/events";

    /// `DELETE`: drains backend `id`; answers its [`super::BackendInfo`].
    pub fn backend(id: u64) -> String {
        format!("{BACKENDS}/{id}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> Signals {
        Signals {
            arrival_rate: 2.0,
            arrivals: 20,
            arrivals_total: 120,
            backend_ms: 19.5,
            backends: BackendCounts::from_array([1, 4, 0, 0]),
            completion_rate: 2.0,
            completions: 20,
            completions_total: 110,
            in_flight: 7,
            latency_ms: LatencySummary {
                mean: 21.0,
                p50: 18.0,
                p90: 40.0,
                p99: 80.5,
            },
            policy: "least_loaded".into(),
            queue_depth: 3,
            shed: 0,
            shed_total: 2,
            span_seconds: 9.5,
            window_seconds: 10.0,
        }
    }

    /// The wire contract: these names, shapes and (for signals) this order are what clients of
    /// other versions read. Changing this string is changing the admin API.
    #[test]
    fn signals_json_is_the_documented_one() {
        let got = serde_json::to_string(&signals()).unwrap();
        assert_eq!(
            got,
            r#"{"arrival_rate":2.0,"arrivals":20,"arrivals_total":120,"backend_ms":19.5,"backends":{"active":4,"draining":0,"ejected":0,"starting":1},"completion_rate":2.0,"completions":20,"completions_total":110,"in_flight":7,"latency_ms":{"mean":21.0,"p50":18.0,"p90":40.0,"p99":80.5},"policy":"least_loaded","queue_depth":3,"shed":0,"shed_total":2,"span_seconds":9.5,"window_seconds":10.0}"#
        );
        let back: Signals = serde_json::from_str(&got).unwrap();
        assert_eq!(back, signals());
    }

    #[test]
    fn merged_signals_sum_counts_and_take_the_worst_latency() {
        let mut b = signals();
        b.latency_ms.p99 = 200.0;
        b.queue_depth = 1;
        let m = Signals::merged(&[signals(), b]).unwrap();
        assert_eq!(m.arrivals_total, 240);
        assert_eq!(m.queue_depth, 4);
        assert_eq!(m.backends.active, 8);
        assert_eq!(m.latency_ms.p99, 200.0);
        assert_eq!(m.latency_ms.p50, 18.0);
        assert!(Signals::merged(&[]).is_none());
    }

    #[test]
    fn a_missing_signal_is_an_error_naming_it() {
        let mut v = serde_json::to_value(signals()).unwrap();
        v.as_object_mut().unwrap().remove("arrivals_total");
        let e = serde_json::from_value::<Signals>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `arrivals_total`"), "{e}");
    }

    /// A balancer older than `backend_ms` does not send it: read as not measured.
    #[test]
    fn a_balancer_without_backend_ms_is_read_as_not_measured() {
        let mut v = serde_json::to_value(signals()).unwrap();
        v.as_object_mut().unwrap().remove("backend_ms");
        let back = serde_json::from_value::<Signals>(v).unwrap();
        assert_eq!(back.backend_ms, 0.0);
    }

    #[test]
    fn unknown_signals_are_ignored() {
        let mut v = serde_json::to_value(signals()).unwrap();
        v["from_a_newer_balancer"] = 1.into();
        assert_eq!(serde_json::from_value::<Signals>(v).unwrap(), signals());
    }

    #[test]
    fn backend_info_json_is_the_documented_one() {
        let b = BackendInfo {
            id: 3,
            address: "127.0.0.1:8081".into(),
            state: BackendState::Draining,
            in_flight: 2,
            capacity: Some(4),
            learnt_limit: None,
            weight: 1,
            cost_per_hour: 0.5,
            origin: Origin::Api,
            ewma_latency_ms: 12.5,
            lease_remaining_seconds: Some(30.0),
            requests: 100,
            failures: 1,
            ramp: 0.5,
            protocol: Protocol::H2c,
            cold_start_seconds: None,
        };
        let got = serde_json::to_string(&b).unwrap();
        assert_eq!(
            got,
            r#"{"id":3,"address":"127.0.0.1:8081","state":"draining","in_flight":2,"capacity":4,"learnt_limit":null,"weight":1,"cost_per_hour":0.5,"origin":"api","ewma_latency_ms":12.5,"lease_remaining_seconds":30.0,"requests":100,"failures":1,"protocol":"h2c","ramp":0.5}"#
        );
        assert_eq!(serde_json::from_str::<BackendInfo>(&got).unwrap(), b);
        // A backend ebbtide launched says how long its cold start took, once served.
        let launched = BackendInfo {
            cold_start_seconds: Some(2.5),
            ..b
        };
        let got = serde_json::to_string(&launched).unwrap();
        assert!(
            got.ends_with(r#""ramp":0.5,"cold_start_seconds":2.5}"#),
            "{got}"
        );
    }

    #[test]
    fn register_defaults_and_refuses_unknown_fields() {
        let r: Register = serde_json::from_str(r#"{"address": "h:1"}"#).unwrap();
        assert_eq!(
            r,
            Register {
                address: "h:1".into(),
                capacity: None,
                weight: 1,
                lease_seconds: None,
                cost_per_hour: 0.0,
                protocol: None,
                server_name: None,
                launched: None,
            }
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"address":"h:1","weight":1,"cost_per_hour":0.0}"#
        );
        let e = serde_json::from_str::<Register>(r#"{"address": "h:1", "capacty": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `capacty`"), "{e}");
    }
}
