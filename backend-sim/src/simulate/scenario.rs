//! A config file made ready to simulate: the arrivals resolved from `[simulation]` exactly as
//! `ebbtide load` resolves its options (same profile parser, trace reader and arrival times for a
//! seed), the service-time distribution and boot delay parsed as `ebbtide backend` parses them.

use crate::load::schedule::{self, ArrivalProcess, Profile, Source, Trace};
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::service_time::ServiceTime;
use ebbtide_config::simulation::{SimArrivals, SimCapacity, Simulation};
use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use ebbtide_config::Config;
use std::path::{Path, PathBuf};

/// The run length when the arrivals have no length of their own (a constant rate).
pub const DEFAULT_DURATION_SECS: f64 = 60.0;

/// Everything one simulation run needs, checked and parsed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The whole config: `[balancer]`, `[overload]`, `[signals]` and `[autoscaler]` are used as
    /// `ebbtide serve` uses them.
    pub config: Config,
    /// `[simulation]` (its defaults when the section is absent).
    pub sim: Simulation,
    /// Where arrivals come from.
    pub source: Source,
    /// Length of the arrival period, seconds.
    pub duration_s: f64,
    /// The profile or trace, described for the report.
    pub schedule: String,
    /// `poisson`, `uniform` or `trace`, for the report.
    pub arrivals_name: String,
    /// Each backend's service time.
    pub service_time: ServiceTime,
    /// Launch-to-ready of an added backend.
    pub boot: Nanos,
}

impl Scenario {
    /// Reads and validates a config file and resolves its `[simulation]`.
    pub fn from_file(path: &Path) -> Result<Scenario, String> {
        let cfg = Config::from_file(path).map_err(|e| e.to_string())?;
        Scenario::from_config(cfg, path.parent())
    }

    /// Resolves a validated config; relative trace paths are looked up in `base_dir` first, then
    /// in the working directory.
    pub fn from_config(config: Config, base_dir: Option<&Path>) -> Result<Scenario, String> {
        let sim = config.simulation.clone().unwrap_or_default();
        let problems = sim.validate();
        if let Some((key, message)) = problems.first() {
            return Err(format!("{key}: {message}"));
        }
        let service_time = sim
            .service_time()
            .map_err(|e| format!("simulation.service_time: {e}"))?;
        let boot = sim
            .boot_delay()
            .map_err(|e| format!("simulation.boot: {e}"))?
            .as_nanos()
            .min(u64::MAX as u128) as Nanos;
        let (source, natural, schedule, arrivals_name) = arrivals(&sim, base_dir)?;
        let duration_s = if sim.duration.0.is_zero() {
            natural.unwrap_or(DEFAULT_DURATION_SECS)
        } else {
            sim.duration.0.as_secs_f64()
        };
        if !(duration_s > 0.0 && duration_s.is_finite()) {
            return Err("simulation.duration: the run has no length; set duration".into());
        }
        Ok(Scenario {
            config,
            sim,
            source,
            duration_s,
            schedule,
            arrivals_name,
            service_time,
            boot,
        })
    }

    /// The arrival period in core time.
    pub fn duration_ns(&self) -> Nanos {
        (self.duration_s * NANOS_PER_SEC as f64).round() as Nanos
    }

    /// The capacity the policies see per backend (`None`: unknown), and whether an unknown one
    /// is learnt by the adaptive limit.
    pub fn capacity(&self) -> (Option<u32>, bool) {
        match self.capacity_setting() {
            SimCapacity::Workers => (Some(self.sim.workers), false),
            SimCapacity::Slots(n) => (Some(n), false),
            SimCapacity::Unbounded => (None, false),
            SimCapacity::Adaptive => (None, true),
        }
    }

    /// `[simulation] capacity`, or, unset, what `ebbtide serve` gives a backend of this file:
    /// `[provider] capacity` (else the one capacity every static backend declares), else the
    /// adaptive limit with `[overload] adaptive_limit` (the default), else none. A simulation
    /// of `p2c` thus runs on the adaptive limit as `serve` would, not on slots = workers.
    pub fn capacity_setting(&self) -> SimCapacity {
        if let Some(c) = self.sim.capacity {
            return c;
        }
        let cfg = &self.config;
        let statics = cfg.backends.first().and_then(|first| {
            cfg.backends
                .iter()
                .all(|b| b.capacity == first.capacity)
                .then_some(first.capacity)
                .flatten()
        });
        match cfg.provider.as_ref().and_then(|p| p.capacity).or(statics) {
            Some(n) => SimCapacity::Slots(n),
            None if cfg.overload.adaptive_limit => SimCapacity::Adaptive,
            None => SimCapacity::Unbounded,
        }
    }

    /// Price per backend-hour: the autoscaler's, else the provider's, else the default price.
    pub fn price_per_hour(&self) -> f64 {
        match (&self.config.autoscaler, &self.config.provider) {
            (Some(a), _) => a.cost.backend_per_hour,
            (None, Some(p)) => p.cost_per_hour,
            (None, None) => ebbtide_config::autoscaler::Cost::default().backend_per_hour,
        }
    }

    /// The latency objective the report measures against: the autoscaler's `slo_p99`, else its
    /// default.
    pub fn slo(&self) -> Nanos {
        self.config
            .autoscaler
            .as_ref()
            .map_or_else(|| Autoscaler::default().slo_p99, |a| a.slo_p99)
            .as_nanos()
    }

    /// Completions per second of one backend with every worker busy, averaged over the speeds
    /// the fleet cycles through: what a perfectly informed sizer would use.
    pub fn service_rate_per_backend(&self) -> f64 {
        let mean_speed = self.sim.speeds.iter().sum::<f64>() / self.sim.speeds.len() as f64;
        self.sim.workers as f64 * mean_speed / self.service_time.mean_secs()
    }

    /// Completions per second of the starting fleet at full load (each backend with its own speed).
    pub fn fleet_capacity_rps(&self) -> f64 {
        let speeds = &self.sim.speeds;
        let total_speed: f64 = (0..self.sim.backends as usize)
            .map(|i| speeds[i % speeds.len()])
            .sum();
        total_speed * self.sim.workers as f64 / self.service_time.mean_secs()
    }

    /// The arrival rate averaged over each `interval` of the arrival period: what an oracle that
    /// knows the future sees. Rate profiles are integrated; request traces are counted.
    pub fn rates_per_interval(&self, interval: Nanos) -> Vec<f64> {
        let interval_s = interval.max(1) as f64 / NANOS_PER_SEC as f64;
        let n = (self.duration_s / interval_s).ceil().max(1.0) as usize;
        match &self.source {
            Source::Rate(profile, _) => (0..n)
                .map(|k| {
                    let from = k as f64 * interval_s;
                    let to = ((k + 1) as f64 * interval_s).min(self.duration_s);
                    average_rate(profile, from, to)
                })
                .collect(),
            Source::Times(times) => {
                let mut counts = vec![0u64; n];
                for &t in times {
                    if t < self.duration_s {
                        counts[((t / interval_s) as usize).min(n - 1)] += 1;
                    }
                }
                counts
                    .into_iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let len = (self.duration_s - k as f64 * interval_s).min(interval_s);
                        c as f64 / len.max(1e-9)
                    })
                    .collect()
            }
        }
    }
}

/// The mean of a profile's rate over [from, to), integrated in 1 ms steps as the arrivals are.
fn average_rate(profile: &Profile, from: f64, to: f64) -> f64 {
    const STEP: f64 = 0.001;
    if to <= from {
        return 0.0;
    }
    let mut t = from;
    let mut area = 0.0;
    while t < to {
        let dt = STEP.min(to - t);
        area += profile.rate_at(t + dt / 2.0) * dt;
        t += dt;
    }
    area / (to - from)
}

/// Resolves a trace path: relative to the config's directory, else to the working directory.
fn trace_path(trace: &str, base_dir: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(trace);
    if p.is_absolute() {
        return p;
    }
    if let Some(dir) = base_dir {
        let candidate = dir.join(&p);
        if candidate.exists() {
            return candidate;
        }
    }
    p
}

/// The arrivals of `[simulation]` as `ebbtide load` makes them from its options: the source,
/// its own length, a description and the arrival process's name.
fn arrivals(
    sim: &Simulation,
    base_dir: Option<&Path>,
) -> Result<(Source, Option<f64>, String, String), String> {
    let process = match sim.arrivals {
        SimArrivals::Poisson => ArrivalProcess::Poisson,
        SimArrivals::Uniform => ArrivalProcess::Uniform,
    };
    let process_name = match process {
        ArrivalProcess::Poisson => "poisson",
        ArrivalProcess::Uniform => "uniform",
    };
    if !sim.trace.trim().is_empty() {
        let path = trace_path(sim.trace.trim(), base_dir);
        let name = path.display().to_string();
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("simulation.trace: cannot read {name}: {e}"))?;
        return Ok(match schedule::parse_trace(&text, &name)? {
            Trace::Rates(points) => {
                let scale = sim.speedup * sim.rate_multiplier;
                let profile = Profile::Series(
                    points
                        .into_iter()
                        .map(|(t, r)| (t / sim.speedup, r * scale))
                        .collect(),
                );
                let natural = profile.natural_secs();
                (
                    Source::Rate(profile, process),
                    natural,
                    format!("trace {} (rates)", sim.trace.trim()),
                    process_name.into(),
                )
            }
            Trace::Times(times) => {
                let times =
                    schedule::trace_times(&times, sim.speedup, sim.rate_multiplier, sim.seed);
                let natural = times.last().map(|t| t + 0.001);
                (
                    Source::Times(times),
                    natural,
                    format!(
                        "trace {} (requests) x{} speedup {}",
                        sim.trace.trim(),
                        sim.rate_multiplier,
                        sim.speedup
                    ),
                    "trace".into(),
                )
            }
        });
    }
    let profile = if sim.profile.trim().is_empty() {
        Profile::Constant(sim.rate)
    } else {
        Profile::parse(&sim.profile, Some(sim.rate))
            .map_err(|e| format!("simulation.profile: {e}"))?
    }
    .scaled(sim.rate_multiplier);
    let natural = profile.natural_secs();
    let what = profile.to_string();
    Ok((
        Source::Rate(profile, process),
        natural,
        what,
        process_name.into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(toml: &str) -> Result<Scenario, String> {
        let cfg = Config::from_toml(toml, "t.toml").map_err(|e| e.to_string())?;
        Scenario::from_config(cfg, None)
    }

    #[test]
    fn a_profile_gives_its_own_length_and_scaled_rates() {
        let s =
            scenario("[simulation]\nprofile = \"steps:10@30s,50@30s\"\nrate_multiplier = 2.0\n")
                .unwrap();
        assert_eq!(s.duration_s, 60.0);
        let rates = s.rates_per_interval(30 * NANOS_PER_SEC);
        assert_eq!(rates.len(), 2);
        assert!((rates[0] - 20.0).abs() < 1e-9 && (rates[1] - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_constant_rate_defaults_to_a_minute_and_errors_name_the_key() {
        let s = scenario("[simulation]\nrate = 5.0\n").unwrap();
        assert_eq!(s.duration_s, DEFAULT_DURATION_SECS);
        let e = scenario("[simulation]\nprofile = \"wave:1\"\n").unwrap_err();
        assert!(e.starts_with("simulation.profile:"), "{e}");
        let e = scenario("[simulation]\ntrace = \"/nonexistent.csv\"\n").unwrap_err();
        assert!(e.starts_with("simulation.trace:"), "{e}");
    }

    #[test]
    fn capacity_and_service_rates_follow_the_fleet() {
        let s = scenario(
            "[simulation]\nbackends = 4\nspeeds = [1.0, 1.0, 2.0, 4.0]\nservice_time = \"exp:10ms\"\n",
        )
        .unwrap();
        assert!((s.fleet_capacity_rps() - 800.0).abs() < 1e-9);
        assert!((s.service_rate_per_backend() - 200.0).abs() < 1e-9);
        // No capacity anywhere: the adaptive limit, as `ebbtide serve` runs it.
        assert_eq!(s.capacity(), (None, true));
    }

    /// Issue 14, "Defaults that fight the user": a simulation of `p2c` ran with slots =
    /// workers (a central queue in all but name) where `ebbtide serve` on the same file runs on
    /// the adaptive limit. Unset, `[simulation] capacity` is what `serve` gives a backend.
    #[test]
    fn serve_and_simulate_read_the_capacity_of_one_file_the_same_way() {
        let sim = "[simulation]\nworkers = 8\n";
        let p2c = format!("[balancer]\npolicy = \"p2c\"\n{sim}");
        let s = scenario(&p2c).unwrap();
        assert_eq!(s.capacity_setting(), SimCapacity::Adaptive);
        assert_eq!(s.capacity(), (None, true));
        // The provider's capacity, as its backends are registered with.
        let s = scenario(&format!("{p2c}[provider]\ncapacity = 3\n")).unwrap();
        assert_eq!(s.capacity(), (Some(3), false));
        // Static backends that all declare one.
        let statics = "[[backends]]\naddress = \"127.0.0.1:1\"\ncapacity = 5\n\
                       [[backends]]\naddress = \"127.0.0.1:2\"\ncapacity = 5\n";
        let s = scenario(&format!("{p2c}{statics}")).unwrap();
        assert_eq!(s.capacity(), (Some(5), false));
        // No limit learnt and none declared: unknown, never full.
        let s = scenario(&format!("{p2c}[overload]\nadaptive_limit = false\n")).unwrap();
        assert_eq!(s.capacity(), (None, false));
        // Said outright, it wins.
        let s = scenario(&format!("{p2c}capacity = \"workers\"\n")).unwrap();
        assert_eq!(s.capacity(), (Some(8), false));
    }
}
