//! When each request is due: rate profiles, traces, and the arrival times they give. Sans-IO: the
//! schedule is a list of offsets from the start of the run, computed from a seed, so a run can be
//! repeated exactly and the schedule tested without a clock.
//!
//! A rate profile r(t) and an arrival process make arrival times by time change: the process makes
//! unit-rate arrivals u1 < u2 < ... (Poisson: exponential gaps of mean 1; uniform: 0, 1, 2, ...) and
//! each is placed where the integrated rate reaches it, Lambda(t_k) = u_k. That is exact for any
//! profile shape, including rates that change between two arrivals.

use ebbtide_config::rng::Rng;
use ebbtide_config::time::parse_duration;
use std::fmt;

/// The profile syntax, shown by `ebbtide load --help`.
pub const PROFILE_HELP: &str = "\
PROFILES (--profile; rates in requests per second, durations like 30s or 2m):
  const:R                    R requests/s throughout (the default, with R from --rate)
  steps:R@D,R@D,...          a schedule: R1 for D1, then R2 for D2, ...; e.g. steps:10@30s,50@30s
  ramp:A..B@D                linear from A to B over D; segments mix: steps:10@10s,10..100@1m,100@10s
  sine:MEAN,AMP,PERIOD       MEAN - AMP*cos(2 pi t / PERIOD): a compressed day starting at its
                             trough, e.g. sine:100,80,5m
  spike:BASE,PEAK,AT,LEN     BASE, and PEAK from AT for LEN; e.g. spike:20,200,30s,10s
A profile's own length (steps and ramps: their sum; sine: one period; spike: AT+LEN+AT) is the
default --duration; past its end the last rate holds. --rate-multiplier scales every rate.

TRACES (--trace FILE.csv):
  seconds,rate               a rate series: each row's rate holds until the next row's time
  request timestamps         one row per request; the column named TIMESTAMP (or time, ts, or the
                             first) holds seconds or dates like 2023-11-16 18:17:03.9799600
A file whose header has a `rate` column is a rate series, otherwise timestamps (without a header:
two numeric columns are seconds,rate, one is timestamps). --speedup S plays the trace S times
faster and keeps every request, so rates rise S-fold; --rate-multiplier M scales the rate (a
timestamp trace sends each request floor(M) times plus once more with probability frac(M), the
copies spread over the gap to the next request). The default --duration is the trace's length.";

/// How arrivals are spaced at a given rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArrivalProcess {
    /// Exponential gaps: independent arrivals, what many independent clients make.
    Poisson,
    /// Equal gaps: a metronome.
    Uniform,
}

/// One piece of a steps or ramp profile: the rate goes linearly from `from` to `to` over `secs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Rate at the start of the segment, requests per second.
    pub from: f64,
    /// Rate at the end of the segment.
    pub to: f64,
    /// Length in seconds.
    pub secs: f64,
}

/// The offered rate over time.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// The same rate throughout.
    Constant(f64),
    /// Steps and ramps, one after another.
    Segments(Vec<Segment>),
    /// A sinusoidal day: `mean - amp * cos(2 pi t / period)`.
    Sine {
        /// Mean rate.
        mean: f64,
        /// Amplitude: the rate swings between mean - amp and mean + amp.
        amp: f64,
        /// Period in seconds.
        period: f64,
    },
    /// A burst on a steady base.
    Spike {
        /// Rate outside the spike.
        base: f64,
        /// Rate during the spike.
        peak: f64,
        /// Seconds from the start to the spike.
        at: f64,
        /// Length of the spike in seconds.
        len: f64,
    },
    /// A rate series read from a trace: each (seconds, rate) holds until the next.
    Series(Vec<(f64, f64)>),
}

fn rate_num(text: &str, spec: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("profile `{spec}`: `{text}` is not a rate (requests per second)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!(
            "profile `{spec}`: rate `{text}` must be zero or more"
        ));
    }
    Ok(v)
}

fn secs(text: &str, spec: &str) -> Result<f64, String> {
    parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("profile `{spec}`: {e}"))
}

impl Profile {
    /// Parses a profile SPEC (see [`PROFILE_HELP`]); `rate` is `--rate`, used by a bare `const`.
    pub fn parse(spec: &str, rate: Option<f64>) -> Result<Profile, String> {
        let spec = spec.trim();
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let args: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',').map(str::trim).collect()
        };
        let need = |n: usize, form: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("profile `{spec}`: expected `{form}`"))
            }
        };
        match kind {
            "const" | "constant" => match (args.first(), rate) {
                (Some(r), _) => Ok(Profile::Constant(rate_num(r, spec)?)),
                (None, Some(r)) => Ok(Profile::Constant(r)),
                (None, None) => Err(format!("profile `{spec}`: give const:RATE or --rate")),
            },
            "steps" | "ramp" => {
                if args.is_empty() {
                    return Err(format!(
                        "profile `{spec}`: expected `{kind}:R@D,...` (R a rate or A..B for a ramp)"
                    ));
                }
                let mut segs = Vec::new();
                for a in &args {
                    let (r, d) = a.split_once('@').ok_or_else(|| {
                        format!(
                            "profile `{spec}`: segment `{a}` is not RATE@DURATION or A..B@DURATION"
                        )
                    })?;
                    let (from, to) = match r.split_once("..") {
                        Some((x, y)) => (rate_num(x, spec)?, rate_num(y, spec)?),
                        None => {
                            let v = rate_num(r, spec)?;
                            (v, v)
                        }
                    };
                    let s = secs(d, spec)?;
                    if s <= 0.0 {
                        return Err(format!("profile `{spec}`: segment `{a}` has no length"));
                    }
                    segs.push(Segment { from, to, secs: s });
                }
                Ok(Profile::Segments(segs))
            }
            "sine" => {
                need(3, "sine:MEAN,AMP,PERIOD")?;
                let (mean, amp, period) = (
                    rate_num(args[0], spec)?,
                    rate_num(args[1], spec)?,
                    secs(args[2], spec)?,
                );
                if period <= 0.0 {
                    return Err(format!("profile `{spec}`: the period must be positive"));
                }
                Ok(Profile::Sine { mean, amp, period })
            }
            "spike" => {
                need(4, "spike:BASE,PEAK,AT,LEN")?;
                Ok(Profile::Spike {
                    base: rate_num(args[0], spec)?,
                    peak: rate_num(args[1], spec)?,
                    at: secs(args[2], spec)?,
                    len: secs(args[3], spec)?,
                })
            }
            other => Err(format!(
                "profile `{spec}`: unknown profile `{other}`; use const, steps, ramp, sine or spike"
            )),
        }
    }

    /// The offered rate at `t` seconds from the start (never negative).
    pub fn rate_at(&self, t: f64) -> f64 {
        let r = match self {
            Profile::Constant(r) => *r,
            Profile::Segments(segs) => {
                let mut start = 0.0;
                let mut last = 0.0;
                for s in segs {
                    if t < start + s.secs {
                        return (s.from + (s.to - s.from) * (t - start) / s.secs).max(0.0);
                    }
                    start += s.secs;
                    last = s.to;
                }
                last
            }
            Profile::Sine { mean, amp, period } => {
                mean - amp * (std::f64::consts::TAU * t / period).cos()
            }
            Profile::Spike {
                base,
                peak,
                at,
                len,
            } => {
                if t >= *at && t < at + len {
                    *peak
                } else {
                    *base
                }
            }
            Profile::Series(points) => {
                let i = points.partition_point(|(s, _)| *s <= t);
                if i == 0 {
                    0.0
                } else {
                    points[i - 1].1
                }
            }
        };
        r.max(0.0)
    }

    /// The profile's own length in seconds, the default run length; None for a constant rate.
    pub fn natural_secs(&self) -> Option<f64> {
        match self {
            Profile::Constant(_) => None,
            Profile::Segments(segs) => Some(segs.iter().map(|s| s.secs).sum()),
            Profile::Sine { period, .. } => Some(*period),
            Profile::Spike { at, len, .. } => Some(at + len + at),
            Profile::Series(points) => {
                let n = points.len();
                let gap = if n >= 2 {
                    points[n - 1].0 - points[n - 2].0
                } else {
                    1.0
                };
                points.last().map(|(s, _)| s + gap)
            }
        }
    }

    /// The same profile with every rate multiplied by `m`.
    pub fn scaled(self, m: f64) -> Profile {
        match self {
            Profile::Constant(r) => Profile::Constant(r * m),
            Profile::Segments(segs) => Profile::Segments(
                segs.into_iter()
                    .map(|s| Segment {
                        from: s.from * m,
                        to: s.to * m,
                        secs: s.secs,
                    })
                    .collect(),
            ),
            Profile::Sine { mean, amp, period } => Profile::Sine {
                mean: mean * m,
                amp: amp * m,
                period,
            },
            Profile::Spike {
                base,
                peak,
                at,
                len,
            } => Profile::Spike {
                base: base * m,
                peak: peak * m,
                at,
                len,
            },
            Profile::Series(points) => {
                Profile::Series(points.into_iter().map(|(s, r)| (s, r * m)).collect())
            }
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Constant(r) => write!(f, "const:{r}"),
            Profile::Segments(segs) => {
                write!(f, "steps:")?;
                for (i, s) in segs.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    if s.from == s.to {
                        write!(f, "{sep}{}@{}s", s.from, s.secs)?;
                    } else {
                        write!(f, "{sep}{}..{}@{}s", s.from, s.to, s.secs)?;
                    }
                }
                Ok(())
            }
            Profile::Sine { mean, amp, period } => write!(f, "sine:{mean},{amp},{period}s"),
            Profile::Spike {
                base,
                peak,
                at,
                len,
            } => write!(f, "spike:{base},{peak},{at}s,{len}s"),
            Profile::Series(points) => write!(f, "rate-series({} points)", points.len()),
        }
    }
}

/// A trace file, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Trace {
    /// A rate series: (seconds from the first row, rate).
    Rates(Vec<(f64, f64)>),
    /// Request times in seconds from the first request, sorted.
    Times(Vec<f64>),
}

/// Reads a trace CSV (see [`PROFILE_HELP`]); errors name the line.
pub fn parse_trace(text: &str, name: &str) -> Result<Trace, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let Some(&(_, first)) = lines.peek() else {
        return Err(format!("{name}: the trace is empty"));
    };
    let first_cells: Vec<&str> = first.split(',').map(str::trim).collect();
    let has_header = first_cells
        .iter()
        .any(|c| !c.is_empty() && c.parse::<f64>().is_err() && parse_datetime(c).is_none());
    let (rate_col, time_col, is_rates) = if has_header {
        lines.next();
        let lower: Vec<String> = first_cells.iter().map(|c| c.to_ascii_lowercase()).collect();
        let find = |names: &[&str]| lower.iter().position(|c| names.contains(&c.as_str()));
        match find(&["rate", "rps", "requests_per_second"]) {
            Some(r) => {
                let t = find(&["seconds", "second", "time", "t", "secs", "s"]).unwrap_or(0);
                (r, t, true)
            }
            None => (
                0,
                find(&["timestamp", "time", "ts", "seconds", "t"]).unwrap_or(0),
                false,
            ),
        }
    } else {
        let two = first_cells.len() >= 2 && first_cells[1].parse::<f64>().is_ok();
        (1, 0, two)
    };
    let cell = |line: usize, row: &str, col: usize| -> Result<String, String> {
        row.split(',')
            .nth(col)
            .map(|c| c.trim().to_string())
            .ok_or_else(|| format!("{name}:{line}: missing column {}", col + 1))
    };
    let time_of = |line: usize, c: &str| -> Result<f64, String> {
        c.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .or_else(|| parse_datetime(c))
            .ok_or_else(|| {
                format!("{name}:{line}: `{c}` is neither seconds nor a date like 2023-11-16 18:17:03.98")
            })
    };
    if is_rates {
        let mut points = Vec::new();
        for (line, row) in lines {
            let t = time_of(line, &cell(line, row, time_col)?)?;
            let r_text = cell(line, row, rate_col)?;
            let r: f64 = r_text
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{name}:{line}: rate `{r_text}` is not a number >= 0"))?;
            points.push((t, r));
        }
        if points.is_empty() {
            return Err(format!("{name}: the trace has no rows"));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = points[0].0;
        Ok(Trace::Rates(
            points.into_iter().map(|(t, r)| (t - t0, r)).collect(),
        ))
    } else {
        let mut times = Vec::new();
        for (line, row) in lines {
            times.push(time_of(line, &cell(line, row, time_col)?)?);
        }
        if times.is_empty() {
            return Err(format!("{name}: the trace has no rows"));
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let t0 = times[0];
        Ok(Trace::Times(times.into_iter().map(|t| t - t0).collect()))
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS[.frac]` (or with `T`, optional `Z`) to seconds since 1970, in UTC.
pub fn parse_datetime(text: &str) -> Option<f64> {
    let t = text.trim().trim_end_matches('Z');
    let (date, time) = t.split_once([' ', 'T'])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut hms = time.split(':');
    let (h, min): (i64, i64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
    let s: f64 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || !(0..24).contains(&h) || !(0..60).contains(&min) || s >= 61.0 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + (h * 3600 + min * 60) as f64 + s)
}

/// Where the arrivals come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A rate profile and an arrival process.
    Rate(Profile, ArrivalProcess),
    /// Given request times in seconds from the start, sorted.
    Times(Vec<f64>),
}

/// Step of the numeric integration of the rate, in seconds: exact for steps and ramps (the rate is
/// taken at each step's middle), and far below a second for sines.
const STEP_SECS: f64 = 0.001;

/// The arrival times of a run, as offsets in seconds from the start, in order.
pub struct Arrivals {
    source: Source,
    duration: f64,
    rng: Rng,
    /// Unit-rate arrival being placed.
    u: f64,
    first: bool,
    /// Start of the current integration step, and the integrated rate there.
    t: f64,
    lambda: f64,
    index: usize,
}

impl Arrivals {
    /// The arrivals of `source` in [0, duration), with the randomness fixed by `seed`.
    pub fn new(source: Source, duration: f64, seed: u64) -> Arrivals {
        Arrivals {
            source,
            duration,
            rng: Rng::new(seed),
            u: 0.0,
            first: true,
            t: 0.0,
            lambda: 0.0,
            index: 0,
        }
    }
}

impl Iterator for Arrivals {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        let (profile, process) = match &self.source {
            Source::Times(times) => {
                let t = *times.get(self.index)?;
                self.index += 1;
                return (t < self.duration).then_some(t);
            }
            Source::Rate(p, a) => (p, *a),
        };
        self.u += match (process, self.first) {
            (ArrivalProcess::Poisson, _) => self.rng.exp(1.0),
            (ArrivalProcess::Uniform, true) => 0.0,
            (ArrivalProcess::Uniform, false) => 1.0,
        };
        self.first = false;
        loop {
            if self.t >= self.duration {
                return None;
            }
            let dt = STEP_SECS.min(self.duration - self.t);
            let r = profile.rate_at(self.t + dt / 2.0);
            let area = r * dt;
            if r > 0.0 && self.lambda + area >= self.u {
                let at = self.t + (self.u - self.lambda) / r;
                // Within rounding of the end counts as the end: [0, duration) is half-open.
                return (at < self.duration - 1e-9).then_some(at);
            }
            self.t += dt;
            self.lambda += area;
        }
    }
}

/// Request times from a timestamp trace, played `speedup` times faster with the rate scaled by
/// `multiplier` (see [`PROFILE_HELP`]).
pub fn trace_times(times: &[f64], speedup: f64, multiplier: f64, seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let whole = multiplier.floor() as u64;
    let frac = multiplier - multiplier.floor();
    let mut out = Vec::with_capacity((times.len() as f64 * multiplier.max(0.0)) as usize + 1);
    for (i, &t) in times.iter().enumerate() {
        let t = t / speedup;
        let next = times.get(i + 1).map(|n| n / speedup).unwrap_or(t);
        let copies = whole + u64::from(frac > 0.0 && rng.next_f64() < frac);
        for c in 0..copies {
            out.push(if c == 0 {
                t
            } else {
                t + (next - t) * rng.next_f64()
            });
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_between(times: &[f64], a: f64, b: f64) -> usize {
        times.iter().filter(|&&t| t >= a && t < b).count()
    }

    #[test]
    fn poisson_constant_rate_has_the_right_count_and_is_seeded() {
        let a: Vec<f64> = Arrivals::new(
            Source::Rate(Profile::Constant(1000.0), ArrivalProcess::Poisson),
            10.0,
            7,
        )
        .collect();
        assert!((a.len() as f64 - 10_000.0).abs() < 400.0, "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let b: Vec<f64> = Arrivals::new(
            Source::Rate(Profile::Constant(1000.0), ArrivalProcess::Poisson),
            10.0,
            7,
        )
        .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn uniform_is_evenly_spaced() {
        let a: Vec<f64> = Arrivals::new(
            Source::Rate(Profile::Constant(100.0), ArrivalProcess::Uniform),
            1.0,
            1,
        )
        .collect();
        assert_eq!(a.len(), 100);
        for (i, t) in a.iter().enumerate() {
            assert!((t - i as f64 / 100.0).abs() < 1e-9, "{i}: {t}");
        }
    }

    #[test]
    fn steps_and_ramps_follow_the_schedule() {
        let p = Profile::parse("steps:100@1s,300@1s,0..200@2s", None).unwrap();
        assert_eq!(p.natural_secs(), Some(4.0));
        let a: Vec<f64> = Arrivals::new(Source::Rate(p, ArrivalProcess::Uniform), 4.0, 1).collect();
        // Arrivals that fall on a boundary may land either side of it by rounding.
        assert!((count_between(&a, 0.0, 1.0) as i64 - 100).abs() <= 1);
        assert!((count_between(&a, 1.0, 2.0) as i64 - 300).abs() <= 1);
        assert!((a.len() as i64 - 600).abs() <= 1, "{}", a.len());
        // The ramp's integral over 2 s is 200 requests, a quarter of them in the first half.
        assert!((count_between(&a, 2.0, 3.0) as i64 - 50).abs() <= 1);
        assert!((count_between(&a, 3.0, 4.0) as i64 - 150).abs() <= 1);
    }

    #[test]
    fn sine_and_spike_shapes() {
        let s = Profile::parse("sine:100,80,10s", None).unwrap();
        assert!((s.rate_at(0.0) - 20.0).abs() < 1e-9);
        assert!((s.rate_at(5.0) - 180.0).abs() < 1e-9);
        let sp = Profile::parse("spike:10,100,5s,2s", None).unwrap();
        assert_eq!(sp.rate_at(4.9), 10.0);
        assert_eq!(sp.rate_at(5.5), 100.0);
        assert_eq!(sp.rate_at(7.0), 10.0);
        assert_eq!(sp.natural_secs(), Some(12.0));
    }

    #[test]
    fn profile_errors_are_clear() {
        let e = |s: &str| Profile::parse(s, None).unwrap_err();
        assert!(e("wave:1").contains("unknown profile"));
        assert!(e("steps:10").contains("RATE@DURATION"));
        assert!(e("steps:x@1s").contains("not a rate"));
        assert!(e("sine:1,2").contains("sine:MEAN,AMP,PERIOD"));
        assert!(e("const").contains("--rate"));
        assert_eq!(
            Profile::parse("const", Some(5.0)).unwrap(),
            Profile::Constant(5.0)
        );
    }

    #[test]
    fn reads_azure_style_timestamps() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:03.9799600,4808,10\n\
                    2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-16 18:18:04.0319600,3180,8\n";
        let Trace::Times(t) = parse_trace(text, "t.csv").unwrap() else {
            panic!("not times")
        };
        assert_eq!(t.len(), 3);
        assert!((t[1] - 0.052).abs() < 1e-6, "{t:?}");
        assert!((t[2] - 60.052).abs() < 1e-6, "{t:?}");
        assert_eq!(parse_datetime("1970-01-02 00:00:01"), Some(86_401.0));
        assert_eq!(parse_datetime("2000-03-01T00:00:00Z"), Some(951_868_800.0));
    }

    #[test]
    fn reads_rate_series_with_and_without_header() {
        let a = parse_trace("seconds,rate\n0,10\n5,20\n", "r.csv").unwrap();
        assert_eq!(a, Trace::Rates(vec![(0.0, 10.0), (5.0, 20.0)]));
        let b = parse_trace("0,10\n5,20\n", "r.csv").unwrap();
        assert_eq!(a, b);
        let c = parse_trace("0.5\n1.5\n", "t.csv").unwrap();
        assert_eq!(c, Trace::Times(vec![0.0, 1.0]));
        let e = parse_trace("seconds,rate\n0,ten\n", "r.csv").unwrap_err();
        assert!(e.contains("r.csv:2"), "{e}");
    }

    #[test]
    fn trace_times_speedup_and_multiplier() {
        let times = vec![0.0, 1.0, 2.0, 3.0];
        assert_eq!(trace_times(&times, 2.0, 1.0, 1), vec![0.0, 0.5, 1.0, 1.5]);
        assert_eq!(trace_times(&times, 1.0, 3.0, 1).len(), 12);
        let many: Vec<f64> = (0..10_000).map(|i| i as f64).collect();
        let half = trace_times(&many, 1.0, 0.5, 1).len();
        assert!((4_800..5_200).contains(&half), "{half}");
    }
}
