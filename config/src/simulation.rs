//! `[simulation]`: what `ebbtide simulate` runs on top of the rest of the file: the virtual run's
//! length and seed, the arrivals (the same rate, profiles and traces as `ebbtide load`) and the
//! simulated backends (the same service-time specs, workers and boot delays as `ebbtide backend`).
//! The balancer, overload, signals and autoscaler sections are read as `ebbtide serve` reads them,
//! so a live run and its simulation are configured by one file. This crate holds the schema, its
//! defaults and the checks; the simulator lives in `ebbtide-sim`.

use crate::service_time::ServiceTime;
use crate::time::{parse_duration, HumanDuration};
use serde::{Deserialize, Serialize};

/// How arrivals are spaced at a given rate (`ebbtide load --arrivals`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SimArrivals {
    /// Exponential gaps: independent arrivals, what many independent clients make.
    #[default]
    Poisson,
    /// Equal gaps: a metronome.
    Uniform,
}

/// The concurrency the balancer's policies are told each simulated backend takes (the
/// `capacity` a live backend is registered with). Written as an integer or a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimCapacity {
    /// `"workers"`: the backend's `workers`. Requests beyond wait in the balancer's FIFO, so
    /// `central_queue` over backends of one worker is exactly M/M/c.
    #[default]
    Workers,
    /// `"unbounded"`: unknown capacity, never full. Every request goes straight to a backend and
    /// waits in that backend's own FIFO, so `random` gives one M/M/workers queue per backend.
    Unbounded,
    /// `"adaptive"`: unknown capacity with the proxy's adaptive concurrency limit learning one
    /// from latency, as `ebbtide serve` does for provider backends without a `capacity`.
    Adaptive,
    /// An integer: this many concurrent requests per backend.
    Slots(u32),
}

impl SimCapacity {
    /// The text form: `workers`, `unbounded`, `adaptive` or the number.
    pub fn name(self) -> String {
        match self {
            SimCapacity::Workers => "workers".into(),
            SimCapacity::Unbounded => "unbounded".into(),
            SimCapacity::Adaptive => "adaptive".into(),
            SimCapacity::Slots(n) => n.to_string(),
        }
    }

    /// Parses the text form (also used by the command line's `--capacity`).
    pub fn parse(text: &str) -> Result<SimCapacity, String> {
        match text.trim() {
            "workers" => Ok(SimCapacity::Workers),
            "unbounded" => Ok(SimCapacity::Unbounded),
            "adaptive" => Ok(SimCapacity::Adaptive),
            other => other.parse::<u32>().map(SimCapacity::Slots).map_err(|_| {
                format!(
                    "`{other}` is not a capacity; use \"workers\", \"unbounded\", \"adaptive\" \
                     or a number of requests"
                )
            }),
        }
    }
}

impl Serialize for SimCapacity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SimCapacity::Slots(n) => s.serialize_u32(*n),
            other => s.serialize_str(&other.name()),
        }
    }
}

impl<'de> Deserialize<'de> for SimCapacity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SimCapacity;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"workers\", \"unbounded\", \"adaptive\" or a number of requests")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SimCapacity, E> {
                u32::try_from(v)
                    .map(SimCapacity::Slots)
                    .map_err(|_| E::custom(format!("capacity {v} is out of range 0 to 4294967295")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SimCapacity, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SimCapacity, E> {
                SimCapacity::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Boot delay of the `vm` preset, the same as `ebbtide backend --boot vm`.
pub const VM_BOOT_SECS: u64 = 30;
/// Boot delay of the `container` preset, the same as `ebbtide backend --boot container`.
pub const CONTAINER_BOOT_SECS: u64 = 1;

/// Parses a boot delay as `ebbtide backend --boot` does: `vm` (30s), `container` (1s), `none`
/// or a duration.
pub fn parse_boot(text: &str) -> Result<std::time::Duration, String> {
    match text.trim() {
        "vm" => Ok(std::time::Duration::from_secs(VM_BOOT_SECS)),
        "container" => Ok(std::time::Duration::from_secs(CONTAINER_BOOT_SECS)),
        "none" => Ok(std::time::Duration::ZERO),
        other => parse_duration(other)
            .map_err(|e| format!("{e}; or use a preset: vm (30s), container (1s), none")),
    }
}

/// Most simulated backends accepted, the autoscaler's own ceiling.
pub const MAX_SIM_BACKENDS: u32 = crate::autoscaler::MAX_BACKENDS;

/// `[simulation]`: the virtual run `ebbtide simulate` makes of the rest of the file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Simulation {
    /// Virtual time over which requests arrive; "0s" = the profile's or trace's own length, or
    /// 60s for a constant rate. The run goes on until the last request is answered.
    pub duration: HumanDuration,
    /// Seed of the arrivals, service times and request keys: one seed, one byte-identical report.
    pub seed: u64,
    /// Requests per second when neither `profile` nor `trace` is set (and for a bare `const`);
    /// the default keeps the default backend (exp:10ms, one worker) half busy.
    pub rate: f64,
    /// A rate profile in `ebbtide load --profile` syntax (steps, ramp, sine, spike); "" = none.
    pub profile: String,
    /// A trace CSV to replay, as `ebbtide load --trace`; relative paths are taken from the config
    /// file's directory, then from the working directory; "" = none.
    pub trace: String,
    /// Play the trace this many times faster (every request kept), as `ebbtide load --speedup`.
    pub speedup: f64,
    /// Multiply every rate of the rate, profile or trace by this (`--rate-multiplier`).
    pub rate_multiplier: f64,
    /// How arrivals are spaced at a given rate.
    pub arrivals: SimArrivals,
    /// The starting fleet, ready at time 0; the autoscaler, when configured, changes it.
    pub backends: u32,
    /// Each backend's service time, the same SPEC as `ebbtide backend --service-time`.
    pub service_time: String,
    /// Requests each backend serves at once; the rest wait in its own FIFO (`--workers`).
    pub workers: u32,
    /// Launch-to-ready delay of a backend the autoscaler adds, as `ebbtide backend --boot`.
    pub boot: String,
    /// Relative speeds, given to backends in turn (1, 1, 2, 4 makes a heterogeneous fleet); a
    /// backend of speed s serves in service time / s.
    pub speeds: Vec<f64>,
    /// The capacity the policies see per backend; see [`SimCapacity`]. Unset: what
    /// `ebbtide serve` gives a backend of this file (the simulator's `Scenario::capacity`),
    /// so `serve` and `simulate` read one file the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<SimCapacity>,
    /// Distinct request keys for `consistent_hash`, drawn uniformly per request; 0 = no key.
    pub keys: u64,
    /// Requests that arrive before this are served but left out of the report.
    pub warmup: HumanDuration,
    /// The client's limit, as `ebbtide load --timeout`: an answer later than this after the
    /// request's arrival counts as a timeout error.
    pub timeout: HumanDuration,
}

impl Default for Simulation {
    fn default() -> Self {
        Simulation {
            duration: HumanDuration::from_secs(0),
            seed: 1,
            rate: 50.0,
            profile: String::new(),
            trace: String::new(),
            speedup: 1.0,
            rate_multiplier: 1.0,
            arrivals: SimArrivals::Poisson,
            backends: 1,
            service_time: "exp:10ms".into(),
            workers: 1,
            boot: "none".into(),
            speeds: vec![1.0],
            capacity: None,
            keys: 0,
            warmup: HumanDuration::from_secs(0),
            timeout: HumanDuration::from_secs(30),
        }
    }
}

impl Simulation {
    /// Semantic checks serde cannot express, as (key path, message) pairs, all of them at once:
    /// the config loader turns each into `file:line:col: key: message`. The profile's syntax is
    /// checked by the simulator (the parser lives with the load generator).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |key: &str, msg: String| out.push((format!("simulation.{key}"), msg));

        if !(self.rate.is_finite() && self.rate >= 0.0) {
            add(
                "rate",
                format!("is {}; must be a finite number >= 0", self.rate),
            );
        }
        if !self.profile.trim().is_empty() && !self.trace.trim().is_empty() {
            add(
                "trace",
                "is set together with simulation.profile; set one of them".into(),
            );
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0) {
            add(
                "speedup",
                format!("is {}; must be a finite number above 0", self.speedup),
            );
        }
        if !(self.rate_multiplier.is_finite() && self.rate_multiplier >= 0.0) {
            add(
                "rate_multiplier",
                format!("is {}; must be a finite number >= 0", self.rate_multiplier),
            );
        }
        if self.backends > MAX_SIM_BACKENDS {
            add(
                "backends",
                format!("is {}; must be at most {MAX_SIM_BACKENDS}", self.backends),
            );
        }
        if let Err(e) = ServiceTime::parse(&self.service_time) {
            add("service_time", e);
        }
        if self.workers < 1 {
            add(
                "workers",
                "is 0; must be at least 1 (requests a backend serves at once)".into(),
            );
        }
        if let Err(e) = parse_boot(&self.boot) {
            add("boot", e);
        }
        if self.speeds.is_empty() {
            add(
                "speeds",
                "is empty; give at least one speed, e.g. [1.0]".into(),
            );
        }
        for (i, s) in self.speeds.iter().enumerate() {
            if !(s.is_finite() && *s > 0.0) {
                add(
                    &format!("speeds[{i}]"),
                    format!("is {s}; must be a finite number above 0"),
                );
            }
        }
        if self.capacity == Some(SimCapacity::Slots(0)) {
            add(
                "capacity",
                "is 0; must be at least 1, or \"workers\", \"unbounded\" or \"adaptive\"".into(),
            );
        }
        if !self.duration.0.is_zero() && self.warmup >= self.duration {
            add(
                "warmup",
                format!(
                    "is {}, not shorter than simulation.duration = {}; nothing would be reported",
                    self.warmup, self.duration
                ),
            );
        }
        if self.timeout.0.is_zero() {
            add(
                "timeout",
                "is 0; must be greater than zero, e.g. \"30s\"".into(),
            );
        }
        out
    }

    /// The service-time distribution (valid once [`Simulation::validate`] passed).
    pub fn service_time(&self) -> Result<ServiceTime, String> {
        ServiceTime::parse(&self.service_time)
    }

    /// The boot delay of an added backend.
    pub fn boot_delay(&self) -> Result<std::time::Duration, String> {
        parse_boot(&self.boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Simulation::default().validate().is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let s = Simulation {
            rate: -1.0,
            profile: "const:5".into(),
            trace: "t.csv".into(),
            speedup: 0.0,
            rate_multiplier: f64::NAN,
            backends: MAX_SIM_BACKENDS + 1,
            service_time: "gamma:1ms".into(),
            workers: 0,
            boot: "forever".into(),
            speeds: vec![1.0, 0.0],
            capacity: Some(SimCapacity::Slots(0)),
            duration: HumanDuration::from_secs(10),
            warmup: HumanDuration::from_secs(10),
            timeout: HumanDuration::from_secs(0),
            ..Simulation::default()
        };
        let keys: Vec<String> = s.validate().into_iter().map(|(k, _)| k).collect();
        for key in [
            "rate",
            "trace",
            "speedup",
            "rate_multiplier",
            "backends",
            "service_time",
            "workers",
            "boot",
            "speeds[1]",
            "capacity",
            "warmup",
            "timeout",
        ] {
            assert!(
                keys.contains(&format!("simulation.{key}")),
                "{key} missing from {keys:?}"
            );
        }
    }

    #[test]
    fn capacity_reads_names_and_numbers() {
        #[derive(Deserialize)]
        struct T {
            capacity: SimCapacity,
        }
        let read = |s: &str| toml::from_str::<T>(s).map(|t| t.capacity);
        assert_eq!(read("capacity = 8").unwrap(), SimCapacity::Slots(8));
        assert_eq!(
            read("capacity = \"unbounded\"").unwrap(),
            SimCapacity::Unbounded
        );
        assert_eq!(
            read("capacity = \"workers\"").unwrap(),
            SimCapacity::Workers
        );
        assert_eq!(
            read("capacity = \"adaptive\"").unwrap(),
            SimCapacity::Adaptive
        );
        let e = read("capacity = \"lots\"").unwrap_err().to_string();
        assert!(e.contains("not a capacity"), "{e}");
        assert!(read("capacity = -1").is_err());
    }

    #[test]
    fn boot_presets_match_the_backend() {
        assert_eq!(parse_boot("vm").unwrap().as_secs(), 30);
        assert_eq!(parse_boot("container").unwrap().as_secs(), 1);
        assert_eq!(parse_boot("none").unwrap().as_secs(), 0);
        assert_eq!(parse_boot("2.5s").unwrap().as_millis(), 2500);
        assert!(parse_boot("soon").unwrap_err().contains("preset"));
    }
}
