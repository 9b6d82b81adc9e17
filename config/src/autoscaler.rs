//! `[autoscaler]` and `[autoscaler.cost]`: which decider chooses the fleet size, its signal,
//! target and windows, and the cost rules wrapped around it. The autoscaler crate builds deciders
//! from these structs; this crate only holds the schema, its defaults and the semantic checks.

use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// The deciders, by config name.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeciderKind {
    /// Kubernetes HPA's rule on one signal: ceil(ready x metric / target), with tolerance,
    /// scale-down stabilisation and rate limits.
    TargetTracking,
    /// Knative KPA's rule: window-averaged concurrency over a stable and a panic window.
    Concurrency,
    /// The smallest fleet whose Erlang C (M/M/c) predicted p99 meets `slo_p99`.
    QueueingModel,
    /// Erlang C on the arrival rate plus the balancer's backlog drained within `drain_time`,
    /// with headroom for the rise one boot time can bring, learnt from recent burstiness. The
    /// default: on bench/scenarios the only rule within 1% over the SLO on the step, the Azure
    /// trace and repeated bursts at half HPA's cost or less, and within 2-10% of the
    /// boot-aware oracle on smooth load.
    #[default]
    Backlog,
}

impl DeciderKind {
    /// Every decider, for error messages, comparisons and benchmarks.
    pub const ALL: [DeciderKind; 4] = [
        DeciderKind::TargetTracking,
        DeciderKind::Concurrency,
        DeciderKind::QueueingModel,
        DeciderKind::Backlog,
    ];

    /// The name used in config, events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DeciderKind::TargetTracking => "target_tracking",
            DeciderKind::Concurrency => "concurrency",
            DeciderKind::QueueingModel => "queueing_model",
            DeciderKind::Backlog => "backlog",
        }
    }
}

/// The signal `target_tracking` follows.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScalingSignal {
    /// Requests in flight plus queued, per ready backend; `target` is requests per backend.
    #[default]
    Concurrency,
    /// Requests arriving per second, per ready backend; `target` is requests/s per backend.
    ArrivalRate,
    /// Requests waiting in the balancer, per ready backend; `target` is queued requests per backend.
    QueueDepth,
    /// The fleet's p99 latency; the target is `slo_p99` (the `target` key is not used).
    P99,
}

impl ScalingSignal {
    /// The name used in config and in decision reasons.
    pub fn name(self) -> &'static str {
        match self {
            ScalingSignal::Concurrency => "concurrency",
            ScalingSignal::ArrivalRate => "arrival_rate",
            ScalingSignal::QueueDepth => "queue_depth",
            ScalingSignal::P99 => "p99",
        }
    }
}

/// What the balancer does with requests the fleet cannot serve now (at `max`, at the budget cap,
/// or while new backends boot).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverloadMode {
    /// Let requests wait (bounded by `[overload]`): latency rises, nothing is refused.
    #[default]
    Queue,
    /// Answer 503 to whatever no backend can take right now: latency stays, some are refused.
    Shed,
    /// Queue up to `overload_max_queue` requests, then shed.
    Both,
}

impl OverloadMode {
    /// The name used in config.
    pub fn name(self) -> &'static str {
        match self {
            OverloadMode::Queue => "queue",
            OverloadMode::Shed => "shed",
            OverloadMode::Both => "both",
        }
    }
}

/// `[autoscaler]`: present in the config means the autoscaler runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Autoscaler {
    /// The rule that turns signals into a desired backend count.
    pub decider: DeciderKind,
    /// Fewest backends kept (ready plus starting), whatever the load.
    pub min: u32,
    /// Most backends run, whatever the load.
    pub max: u32,
    /// Time between two decisions of the control loop. 500 ms by default: a burst is seen
    /// (and its first backends launched) half a second sooner than at 1 s, which on the
    /// bursty scenarios of bench/scenarios takes a third or more of the requests over the SLO
    /// away (`backlog` on the Azure trace x200: 1.15% at 1 s, 0.20% at 500 ms, billed 2.22 and
    /// 2.77), and smooth load costs the same.
    pub interval: HumanDuration,
    /// The long averaging window: `concurrency` scales on it, `queueing_model` scales down on it.
    pub stable_window: HumanDuration,
    /// The short averaging window: `concurrency` panics on it, `queueing_model` scales up on it.
    pub panic_window: HumanDuration,
    /// The decider's target: requests per backend for `concurrency` and for `target_tracking` on
    /// concurrency, arrival_rate (requests/s) or queue_depth. Not used by `queueing_model` and by
    /// `target_tracking` on p99, which aim at `slo_p99`.
    pub target: f64,
    /// The signal `target_tracking` follows.
    pub signal: ScalingSignal,
    /// `target_tracking`: the window its signal is averaged over (HPA reads metrics-server's
    /// 15s samples).
    pub metric_window: HumanDuration,
    /// `target_tracking`: no change while |metric / target - 1| is at most this.
    pub tolerance: f64,
    /// `target_tracking`: scale-up takes the lowest recommendation of this window; "0s" = none.
    pub scale_up_stabilisation: HumanDuration,
    /// `target_tracking`: scale-down takes the highest recommendation of this window, so a
    /// short dip does not remove backends.
    pub scale_down_stabilisation: HumanDuration,
    /// `target_tracking`: the period of the scale-up rate limits.
    pub scale_up_period: HumanDuration,
    /// `target_tracking`: backends that may be added per `scale_up_period`...
    pub scale_up_max_backends: u32,
    /// ...or this percentage of the fleet at the period's start, whichever allows more.
    pub scale_up_max_percent: f64,
    /// `target_tracking`: the period of the scale-down rate limit.
    pub scale_down_period: HumanDuration,
    /// `target_tracking`: the percentage of the fleet that may be removed per period.
    pub scale_down_max_percent: f64,
    /// `concurrency`: the share of `target` aimed at, leaving headroom for bursts.
    pub utilisation: f64,
    /// `concurrency`: panic when panic-window demand / current backends reaches this.
    pub panic_threshold: f64,
    /// `concurrency`: one decision grows the fleet to at most this many times the ready count.
    pub max_scale_up_rate: f64,
    /// `concurrency`: one decision shrinks the fleet to no less than 1/this of it.
    pub max_scale_down_rate: f64,
    /// `concurrency`: count backends already starting toward capacity, so a spike with slow
    /// boots does not panic again and again while the first batch boots.
    pub boot_aware_panic: bool,
    /// The latency objective: `queueing_model` sizes the fleet for it, `target_tracking` on p99
    /// aims at it, the cost rules price requests over it.
    pub slo_p99: HumanDuration,
    /// Servers per backend (concurrent requests each serves), for the queueing model.
    pub workers: u32,
    /// `backlog`: what is queued in the balancer is to be drained within this long (served on
    /// top of the arrival rate by the fleet it sizes); sooner when the requests it would keep
    /// over the SLO cost more (`cost.slo_violation_cost`) than the backends that drain it.
    pub drain_time: HumanDuration,
    /// `backlog`: the share of past boot-time windows whose rise in arrival rate (beyond
    /// Poisson noise) the headroom covers, e.g. 0.99; 0 = no burst headroom.
    pub burst_quantile: f64,
    /// `backlog`: how much arrival-rate history the burst headroom is learnt from.
    pub burst_window: HumanDuration,
    /// `backlog`: the traffic's season (e.g. "24h", "168h"); when set, the arrival rate one season
    /// ago, one reaction ahead, scaled by how today's level compares with that day's, is a
    /// forecast the fleet is sized for ahead of a predictable rise; "0s" = reactive only.
    pub season: HumanDuration,
    /// Expected time from launch to ready of a new backend: scale-out looks this far ahead,
    /// scale-in keeps what would be bought back within it; "0s" = instant.
    pub boot_time: HumanDuration,
    /// What the balancer does with demand the fleet cannot serve yet (at max, or booting).
    pub overload: OverloadMode,
    /// With `overload = "both"`: requests queued before shedding; unset = what the ready fleet
    /// can serve within `slo_p99` at its measured service rate.
    pub overload_max_queue: Option<u32>,
    /// `ebbtide autoscale` only: the admin URLs (`http://host:port`) of the balancers it reads
    /// signals from (summed) and registers its backends with. `ebbtide serve` ignores it: it
    /// scales its own balancer.
    pub balancers: Vec<String>,
    /// `ebbtide autoscale` only, instead of `balancers`: the balancers are the ready endpoints of
    /// a Kubernetes Service (their admin port), followed as replicas come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer_discovery: Option<BalancerDiscovery>,
    /// `ebbtide autoscale`: the bearer token of those admin APIs, when they require one.
    pub balancer_token: Option<String>,
    /// `ebbtide autoscale`: the lease its registrations carry, renewed every interval, so a
    /// balancer drops the backends of an autoscaler that died instead of keeping them forever.
    pub registration_lease: HumanDuration,
    /// Prices, billing and budget.
    pub cost: Cost,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Autoscaler {
            decider: DeciderKind::Backlog,
            min: 2,
            max: 8,
            interval: HumanDuration::from_millis(500),
            stable_window: HumanDuration::from_secs(60),
            panic_window: HumanDuration::from_secs(6),
            target: 4.0,
            signal: ScalingSignal::Concurrency,
            metric_window: HumanDuration::from_secs(15),
            tolerance: 0.1,
            scale_up_stabilisation: HumanDuration::from_secs(0),
            scale_down_stabilisation: HumanDuration::from_secs(300),
            scale_up_period: HumanDuration::from_secs(15),
            scale_up_max_backends: 4,
            scale_up_max_percent: 100.0,
            scale_down_period: HumanDuration::from_secs(15),
            scale_down_max_percent: 100.0,
            utilisation: 0.7,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            boot_aware_panic: true,
            slo_p99: HumanDuration::from_millis(200),
            workers: 4,
            drain_time: HumanDuration::from_secs(2),
            burst_quantile: 0.999,
            burst_window: HumanDuration::from_secs(1800),
            season: HumanDuration::from_secs(0),
            boot_time: HumanDuration::from_secs(1),
            overload: OverloadMode::Queue,
            overload_max_queue: None,
            balancers: Vec::new(),
            balancer_discovery: None,
            balancer_token: None,
            registration_lease: HumanDuration::from_secs(15),
            cost: Cost::default(),
        }
    }
}

/// `[autoscaler.balancer_discovery]`: the balancers `ebbtide autoscale` scales for, found as the
/// ready endpoints of their admin Service (`deploy/kubernetes/balancer.yaml`'s `ebbtide-admin`),
/// so that every balancer replica gets the backends and is read for signals, not only the one a
/// Service's cluster IP picks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerDiscovery {
    /// Where balancers are found.
    pub kind: crate::DiscoveryKind,
    /// The Service's namespace (default: the kubeconfig context's, or the pod's own).
    pub namespace: Option<String>,
    /// The balancers' Service (required).
    pub service: Option<String>,
    /// Which of the Service's ports is the admin API (name or number); may be left out when it
    /// has one port.
    pub port: Option<crate::PortRef>,
    /// The API server's URL; default: kubeconfig, then in-cluster credentials.
    pub api_server: Option<String>,
}

/// `[autoscaler.cost]`: what backends and slow requests cost, so scaling can weigh them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cost {
    /// Price of one backend per hour; 0 turns the billing and budget rules off.
    pub backend_per_hour: f64,
    /// Backends are billed in whole periods from launch (a minute, an hour); "0s" = by the
    /// second. A backend already paid to the end of its period is kept until near that end.
    pub billing_period: HumanDuration,
    /// A paid backend is removed only within this long of its billing period's end; at least
    /// `interval`, so the control loop cannot step over the moment. Unset: derived from the
    /// billing period and the interval ([`Autoscaler::release_margin`]), so per-second billing
    /// (`billing_period = "1s"`) needs no margin of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_margin: Option<HumanDuration>,
    /// Most spent per hour: the fleet never exceeds budget_per_hour / backend_per_hour.
    pub budget_per_hour: f64,
    /// Price of one request answered slower than `slo_p99`. Chosen per request (not per second
    /// of violation) because it scales with traffic: the same latency hurts more at 1000/s than
    /// at 1/s. The cost rules add backends while one more saves more in expected violations
    /// (the queueing model's predicted share over the SLO x arrival rate x this) than it costs.
    pub slo_violation_cost: f64,
}

impl Default for Cost {
    fn default() -> Self {
        Cost {
            backend_per_hour: 0.05,
            billing_period: HumanDuration::from_secs(60),
            release_margin: None,
            budget_per_hour: 10.0,
            slo_violation_cost: 0.0001,
        }
    }
}

impl Cost {
    /// Most backends the budget pays for; `None` when backends are free (no cap).
    pub fn budget_cap(&self) -> Option<u32> {
        if self.backend_per_hour > 0.0 {
            let n = (self.budget_per_hour / self.backend_per_hour + 1e-9).floor();
            Some(n.clamp(0.0, u32::MAX as f64) as u32)
        } else {
            None
        }
    }
}

/// The `host:port` of a balancer's admin URL (`http://host:port`, an optional trailing `/`):
/// only plain HTTP to the admin listener, nothing after the authority.
pub fn parse_admin_url(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or(
        "must start with http:// (the balancer's admin listener, e.g. \"http://127.0.0.1:9901\")",
    )?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("must be http://host:port with nothing after the port".into());
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or("has no port; write http://host:port, e.g. \"http://127.0.0.1:9901\"")?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err("must be http://host:port with a port from 1 to 65535".into());
    }
    Ok(authority.to_string())
}

/// Largest `max` accepted: the queueing model's Erlang C work grows with max x workers.
pub const MAX_BACKENDS: u32 = 100_000;

impl Autoscaler {
    /// The release margin in force: `[autoscaler.cost] release_margin` when set, else the
    /// billing period capped at max(interval, 5 s). With billing by the minute that is 5 s (the
    /// margin ebbtide always had); with per-second billing (`billing_period = "1s"`, as the big
    /// clouds sell it) it is the whole period, so a backend may go at any decision, which is
    /// all per-second billing asks; a margin never needs to exceed the period.
    pub fn release_margin(&self) -> HumanDuration {
        self.cost.release_margin.unwrap_or_else(|| {
            let floor = self.interval.0.max(std::time::Duration::from_secs(5));
            HumanDuration(self.cost.billing_period.0.min(floor))
        })
    }

    /// This section as TOML, `[autoscaler]` and `[autoscaler.cost]` with every key, ready to
    /// paste into a config (what `ebbtide tune --out` writes).
    pub fn to_toml_section(&self) -> String {
        #[derive(Serialize)]
        struct Section<'a> {
            autoscaler: &'a Autoscaler,
        }
        toml::to_string(&Section { autoscaler: self }).expect("the autoscaler section serializes")
    }

    /// Semantic checks serde cannot express, as (key path, message) pairs, all of them at once:
    /// the config loader turns each into `file:line:col: key: message`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |key: &str, msg: String| out.push((format!("autoscaler.{key}"), msg));

        if self.max < 1 {
            add("max", "is 0; must be at least 1".into());
        } else if self.max > MAX_BACKENDS {
            add(
                "max",
                format!("is {}; must be at most {MAX_BACKENDS}", self.max),
            );
        }
        if self.min > self.max {
            add(
                "min",
                format!(
                    "is {}, above autoscaler.max = {}; must be at most max",
                    self.min, self.max
                ),
            );
        }
        let positive: [(&str, HumanDuration); 10] = [
            ("interval", self.interval),
            ("drain_time", self.drain_time),
            ("burst_window", self.burst_window),
            ("stable_window", self.stable_window),
            ("panic_window", self.panic_window),
            ("metric_window", self.metric_window),
            ("scale_down_stabilisation", self.scale_down_stabilisation),
            ("scale_up_period", self.scale_up_period),
            ("scale_down_period", self.scale_down_period),
            ("slo_p99", self.slo_p99),
        ];
        for (key, d) in positive {
            if d.0.is_zero() {
                add(key, "is 0; must be greater than zero, e.g. \"1s\"".into());
            }
        }
        if !self.panic_window.0.is_zero() && self.panic_window >= self.stable_window {
            add(
                "panic_window",
                format!(
                    "is {}, not shorter than autoscaler.stable_window = {}; the panic window \
                     must be the shorter one",
                    self.panic_window, self.stable_window
                ),
            );
        }
        if !(self.target.is_finite() && self.target > 0.0) {
            add(
                "target",
                format!("is {}; must be a number greater than 0", self.target),
            );
        }
        if !(self.tolerance.is_finite() && (0.0..1.0).contains(&self.tolerance)) {
            add(
                "tolerance",
                format!(
                    "is {}; must be at least 0 and below 1 (e.g. 0.1 for 10%)",
                    self.tolerance
                ),
            );
        }
        for (key, p) in [
            ("scale_up_max_percent", self.scale_up_max_percent),
            ("scale_down_max_percent", self.scale_down_max_percent),
        ] {
            if !(p.is_finite() && p >= 0.0) {
                add(key, format!("is {p}; must be a percentage >= 0"));
            }
        }
        if self.scale_down_max_percent > 100.0 {
            add(
                "scale_down_max_percent",
                format!(
                    "is {}; must be at most 100 (the whole fleet)",
                    self.scale_down_max_percent
                ),
            );
        }
        if !(self.utilisation > 0.0 && self.utilisation <= 1.0) {
            add(
                "utilisation",
                format!(
                    "is {}; must be greater than 0 and at most 1 (e.g. 0.7)",
                    self.utilisation
                ),
            );
        }
        for (key, r) in [
            ("panic_threshold", self.panic_threshold),
            ("max_scale_up_rate", self.max_scale_up_rate),
            ("max_scale_down_rate", self.max_scale_down_rate),
        ] {
            if !(r.is_finite() && r > 1.0) {
                add(key, format!("is {r}; must be a finite number above 1"));
            }
        }
        if !(self.burst_quantile.is_finite() && (0.0..1.0).contains(&self.burst_quantile)) {
            add(
                "burst_quantile",
                format!(
                    "is {}; must be at least 0 and below 1 (e.g. 0.99)",
                    self.burst_quantile
                ),
            );
        }
        if self.workers < 1 {
            add(
                "workers",
                "is 0; must be at least 1 (concurrent requests per backend)".into(),
            );
        }
        if self.overload_max_queue == Some(0) {
            add(
                "overload_max_queue",
                "is 0; must be at least 1 (use overload = \"shed\" to queue nothing)".into(),
            );
        }

        for (i, url) in self.balancers.iter().enumerate() {
            if let Err(e) = parse_admin_url(url) {
                add(&format!("balancers[{i}]"), format!("is `{url}`: {e}"));
            }
        }
        if self.registration_lease <= self.interval {
            add(
                "registration_lease",
                format!(
                    "is {}, not longer than autoscaler.interval = {}; the lease is renewed every \
                     interval, so it must outlast one (e.g. \"15s\")",
                    self.registration_lease, self.interval
                ),
            );
        }

        let c = &self.cost;
        for (key, p) in [
            ("cost.backend_per_hour", c.backend_per_hour),
            ("cost.budget_per_hour", c.budget_per_hour),
            ("cost.slo_violation_cost", c.slo_violation_cost),
        ] {
            if !(p.is_finite() && p >= 0.0) {
                add(key, format!("is {p}; must be a finite number >= 0"));
            }
        }
        if let Some(cap) = c.budget_cap() {
            if c.budget_per_hour.is_finite() && cap < self.min {
                add(
                    "cost.budget_per_hour",
                    format!(
                        "is {}, which pays for {cap} backends at {} per hour, fewer than \
                         autoscaler.min = {}",
                        c.budget_per_hour, c.backend_per_hour, self.min
                    ),
                );
            }
        }
        let billed = !c.billing_period.0.is_zero() && c.backend_per_hour > 0.0;
        // A derived margin is right by construction; only one the user set can be wrong.
        let Some(release_margin) = c.release_margin else {
            return out;
        };
        if billed && release_margin > c.billing_period {
            add(
                "cost.release_margin",
                format!(
                    "is {}, longer than autoscaler.cost.billing_period = {}",
                    release_margin, c.billing_period
                ),
            );
        } else if billed && release_margin < self.interval {
            add(
                "cost.release_margin",
                format!(
                    "is {}, shorter than autoscaler.interval = {}; the control loop could step \
                     over the end of a billing period and pay for another",
                    release_margin, self.interval
                ),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Autoscaler, String> {
        toml::from_str::<Autoscaler>(text).map_err(|e| e.to_string())
    }

    fn keys(a: &Autoscaler) -> Vec<String> {
        a.validate().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn autoscaler_defaults_are_valid_and_match_the_documented_values() {
        let a = Autoscaler::default();
        assert_eq!(a.validate(), vec![]);
        assert_eq!(a.decider, DeciderKind::Backlog);
        assert_eq!((a.min, a.max), (2, 8));
        assert_eq!(a.stable_window, HumanDuration::from_secs(60));
        assert_eq!(a.panic_window, HumanDuration::from_secs(6));
        assert_eq!(a.scale_down_stabilisation, HumanDuration::from_secs(300));
        assert_eq!(a.tolerance, 0.1);
        assert_eq!(a.cost.budget_cap(), Some(200));
        // An empty section is the defaults.
        assert_eq!(parse("").unwrap(), a);
    }

    #[test]
    fn autoscaler_parses_every_documented_key() {
        let a = parse(
            r#"
            decider = "queueing_model"
            min = 1
            max = 20
            interval = "2s"
            stable_window = "30s"
            panic_window = "3s"
            target = 8
            signal = "p99"
            slo_p99 = "150ms"
            overload = "both"
            overload_max_queue = 64
            boot_time = "30s"
            workers = 8
            tolerance = 0.2
            scale_down_stabilisation = "2m"
            utilisation = 0.6
            panic_threshold = 3.0
            boot_aware_panic = false
            [cost]
            backend_per_hour = 0.1
            billing_period = "1h"
            release_margin = "2m"
            budget_per_hour = 1.0
            slo_violation_cost = 0.001
            "#,
        )
        .unwrap();
        assert_eq!(a.decider, DeciderKind::QueueingModel);
        assert_eq!(a.signal, ScalingSignal::P99);
        assert_eq!(a.overload, OverloadMode::Both);
        assert_eq!(a.overload_max_queue, Some(64));
        assert_eq!(a.slo_p99, HumanDuration::from_millis(150));
        assert_eq!(a.cost.billing_period, HumanDuration::from_secs(3600));
        assert_eq!(a.cost.budget_cap(), Some(10));
        assert!(!a.boot_aware_panic);
        assert_eq!(a.validate(), vec![]);
    }

    #[test]
    fn autoscaler_rejects_unknown_keys_and_names() {
        assert!(parse("maxx = 3").unwrap_err().contains("unknown field"));
        assert!(parse("decider = \"magic\"").is_err());
        assert!(parse("[cost]\nprice = 1.0").is_err());
        assert!(parse("overload = \"drop\"").is_err());
    }

    #[test]
    fn autoscaler_validate_names_each_bad_key() {
        let a = Autoscaler {
            min: 9,
            max: 8,
            ..Default::default()
        };
        assert_eq!(keys(&a), vec!["autoscaler.min"]);

        let a = Autoscaler {
            min: 0,
            max: 0,
            ..Default::default()
        };
        assert_eq!(keys(&a), vec!["autoscaler.max"]);

        let a = Autoscaler {
            panic_window: HumanDuration::from_secs(60),
            ..Default::default()
        };
        assert_eq!(keys(&a), vec!["autoscaler.panic_window"]);

        let a = Autoscaler {
            interval: HumanDuration::from_secs(0),
            slo_p99: HumanDuration::from_secs(0),
            ..Default::default()
        };
        assert_eq!(keys(&a), vec!["autoscaler.interval", "autoscaler.slo_p99"]);

        let a = Autoscaler {
            target: 0.0,
            tolerance: 1.0,
            utilisation: 1.5,
            panic_threshold: 1.0,
            workers: 0,
            ..Default::default()
        };
        assert_eq!(
            keys(&a),
            vec![
                "autoscaler.target",
                "autoscaler.tolerance",
                "autoscaler.utilisation",
                "autoscaler.panic_threshold",
                "autoscaler.workers"
            ]
        );
    }

    #[test]
    fn autoscaler_validate_checks_cost_keys() {
        let mut a = Autoscaler::default();
        a.cost.budget_per_hour = 0.05; // one backend, below min = 2
        let v = a.validate();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, "autoscaler.cost.budget_per_hour");
        assert!(v[0].1.contains("pays for 1 backends"), "{}", v[0].1);

        let mut a = Autoscaler::default();
        a.cost.backend_per_hour = -1.0;
        a.cost.slo_violation_cost = f64::NAN;
        assert_eq!(
            keys(&a),
            vec![
                "autoscaler.cost.backend_per_hour",
                "autoscaler.cost.slo_violation_cost"
            ]
        );

        let mut a = Autoscaler::default();
        a.cost.release_margin = Some(HumanDuration::from_millis(100));
        assert_eq!(keys(&a), vec!["autoscaler.cost.release_margin"]);
        a.cost.release_margin = Some(HumanDuration::from_secs(120));
        assert_eq!(keys(&a), vec!["autoscaler.cost.release_margin"]);
        // Billing by the second: the margin does not matter.
        a.cost.billing_period = HumanDuration::from_secs(0);
        assert_eq!(a.validate(), vec![]);
    }

    /// Issue 14, "Defaults that fight the user": per-second billing alone was refused until
    /// release_margin was also set to exactly one interval.
    #[test]
    fn per_second_billing_needs_no_release_margin() {
        let toml = "[provider]\n[autoscaler.cost]\nbilling_period = \"1s\"\n";
        let cfg = crate::Config::from_toml(toml, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let a = cfg.autoscaler.unwrap();
        assert_eq!(a.release_margin(), HumanDuration::from_secs(1));
        // By the minute: the 5 s margin as before; a slow control loop: at least one interval.
        assert_eq!(
            Autoscaler::default().release_margin(),
            HumanDuration::from_secs(5)
        );
        let slow = Autoscaler {
            interval: HumanDuration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(slow.release_margin(), HumanDuration::from_secs(10));
        assert_eq!(slow.validate(), vec![]);
        // Billed by the second with a 2 s loop: the whole period, and valid.
        let mut a = slow;
        a.interval = HumanDuration::from_secs(2);
        a.cost.billing_period = HumanDuration::from_secs(1);
        assert_eq!(a.release_margin(), HumanDuration::from_secs(1));
        assert_eq!(a.validate(), vec![]);
        // A margin the user sets is still checked.
        a.cost.release_margin = Some(HumanDuration::from_secs(5));
        assert_eq!(keys(&a), vec!["autoscaler.cost.release_margin"]);
    }

    #[test]
    fn autoscaler_budget_cap_is_off_for_free_backends() {
        let c = Cost {
            backend_per_hour: 0.0,
            ..Default::default()
        };
        assert_eq!(c.budget_cap(), None);
        let c = Cost {
            backend_per_hour: 0.3,
            budget_per_hour: 0.9,
            ..Default::default()
        };
        // 0.9 / 0.3 is 2.9999999999999996 in floating point; still three backends.
        assert_eq!(c.budget_cap(), Some(3));
    }
}
