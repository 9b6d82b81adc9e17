//! Service-time distributions, shared by `ebbtide backend` (which sleeps or spins for a sample) and
//! the discrete-event simulator (which adds a sample to virtual time). Sans-IO: a distribution is
//! data plus a seeded [`Rng`], so the same seed gives the same samples everywhere.
//!
//! The text form, used on the command line and in config:
//!
//! | spec                              | distribution                                           |
//! |-----------------------------------|--------------------------------------------------------|
//! | `const:10ms` (or just `10ms`)     | always 10 ms                                           |
//! | `exp:10ms`                        | exponential with mean 10 ms (M/M/1 service)            |
//! | `lognormal:10ms,0.5`              | lognormal with median 10 ms and shape sigma 0.5        |
//! | `uniform:5ms,15ms`                | uniform between 5 ms and 15 ms                         |
//! | `mix:0.95,const:5ms,const:200ms`  | 95% from the first spec, 5% from the second (nestable) |

use crate::rng::Rng;
use crate::time::{parse_duration, HumanDuration, Nanos};
use std::fmt;
use std::time::Duration;

/// How long one request takes to serve, as a distribution to draw from.
#[derive(Clone, Debug, PartialEq)]
pub enum ServiceTime {
    /// Every request takes exactly this long (the D in M/D/1).
    Const(Duration),
    /// Exponential with this mean: memoryless service, the M in M/M/1.
    Exp {
        /// The mean service time.
        mean: Duration,
    },
    /// Lognormal: the long right tail that real services show.
    LogNormal {
        /// The median (e^mu); half of the requests are faster.
        median: Duration,
        /// The shape: the standard deviation of the log of the service time.
        sigma: f64,
    },
    /// Uniform between two bounds.
    Uniform {
        /// The shortest service time.
        low: Duration,
        /// The longest service time.
        high: Duration,
    },
    /// A two-mode mixture, e.g. a cache hit or miss: `first` with probability `p`, else `second`.
    Mix {
        /// The probability of drawing from `first`, in [0, 1].
        p: f64,
        /// The distribution drawn with probability `p`.
        first: Box<ServiceTime>,
        /// The distribution drawn with probability `1 - p`.
        second: Box<ServiceTime>,
    },
}

const KINDS: &str =
    "const:D, exp:MEAN, lognormal:MEDIAN,SIGMA, uniform:LOW,HIGH or mix:P,SPEC,SPEC";

impl ServiceTime {
    /// Parses the text form (see the module docs); errors name the spec and say what is expected.
    pub fn parse(text: &str) -> Result<ServiceTime, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(format!("empty service time; use {KINDS}"));
        }
        let Some((kind, rest)) = t.split_once(':') else {
            // A bare duration is a constant.
            return parse_duration(t)
                .map(ServiceTime::Const)
                .map_err(|e| format!("service time `{t}`: {e}; or use a distribution: {KINDS}"));
        };
        let dur = |what: &str, s: &str| {
            parse_duration(s).map_err(|e| format!("service time `{t}`: {what}: {e}"))
        };
        let args: Vec<&str> = rest.split(',').map(str::trim).collect();
        let want = |n: usize, form: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!(
                    "service time `{t}`: expected `{form}`, got {} argument(s)",
                    args.len()
                ))
            }
        };
        match kind.trim() {
            "const" | "constant" => {
                want(1, "const:DURATION")?;
                Ok(ServiceTime::Const(dur("duration", args[0])?))
            }
            "exp" | "exponential" => {
                want(1, "exp:MEAN")?;
                Ok(ServiceTime::Exp {
                    mean: dur("mean", args[0])?,
                })
            }
            "lognormal" => {
                want(2, "lognormal:MEDIAN,SIGMA")?;
                let median = dur("median", args[0])?;
                let sigma: f64 = args[1].parse().map_err(|_| {
                    format!("service time `{t}`: sigma `{}` is not a number", args[1])
                })?;
                if !(0.0..=10.0).contains(&sigma) {
                    return Err(format!(
                        "service time `{t}`: sigma must be between 0 and 10, got {sigma}"
                    ));
                }
                Ok(ServiceTime::LogNormal { median, sigma })
            }
            "uniform" => {
                want(2, "uniform:LOW,HIGH")?;
                let low = dur("low", args[0])?;
                let high = dur("high", args[1])?;
                if high < low {
                    return Err(format!(
                        "service time `{t}`: high ({}) is below low ({})",
                        args[1], args[0]
                    ));
                }
                Ok(ServiceTime::Uniform { low, high })
            }
            "mix" => {
                let Some((p_text, specs)) = rest.split_once(',') else {
                    return Err(format!(
                        "service time `{t}`: expected `mix:P,SPEC,SPEC`, e.g. mix:0.95,const:5ms,const:200ms"
                    ));
                };
                let p: f64 = p_text.trim().parse().map_err(|_| {
                    format!(
                        "service time `{t}`: mix probability `{}` is not a number",
                        p_text.trim()
                    )
                })?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!(
                        "service time `{t}`: mix probability must be in [0, 1], got {p}"
                    ));
                }
                // The two specs may hold commas themselves (lognormal, uniform, a nested mix): take
                // the first split at which both halves parse.
                let mut last_err = None;
                for (i, _) in specs.match_indices(',') {
                    let (a, b) = (&specs[..i], &specs[i + 1..]);
                    match (ServiceTime::parse(a), ServiceTime::parse(b)) {
                        (Ok(first), Ok(second)) => {
                            return Ok(ServiceTime::Mix {
                                p,
                                first: Box::new(first),
                                second: Box::new(second),
                            })
                        }
                        (Err(e), _) | (_, Err(e)) => last_err = Some(e),
                    }
                }
                Err(match last_err {
                    Some(e) => format!("service time `{t}`: cannot split into two specs: {e}"),
                    None => format!(
                        "service time `{t}`: expected `mix:P,SPEC,SPEC`, e.g. mix:0.95,const:5ms,const:200ms"
                    ),
                })
            }
            other => Err(format!(
                "service time `{t}`: unknown distribution `{other}`; use {KINDS}"
            )),
        }
    }

    /// Draws one service time.
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        Duration::from_nanos(self.sample_nanos(rng))
    }

    /// Draws one service time in core time units, for the simulator.
    pub fn sample_nanos(&self, rng: &mut Rng) -> Nanos {
        let ns = match self {
            ServiceTime::Const(d) => return nanos(*d),
            ServiceTime::Exp { mean } => rng.exp(nanos(*mean) as f64),
            ServiceTime::LogNormal { median, sigma } => {
                nanos(*median) as f64 * (sigma * rng.normal()).exp()
            }
            ServiceTime::Uniform { low, high } => {
                let (lo, hi) = (nanos(*low) as f64, nanos(*high) as f64);
                lo + (hi - lo) * rng.next_f64()
            }
            ServiceTime::Mix { p, first, second } => {
                return if rng.next_f64() < *p {
                    first.sample_nanos(rng)
                } else {
                    second.sample_nanos(rng)
                };
            }
        };
        // Rounded rather than truncated, so the mean is not biased down by half a nanosecond.
        ns.round().clamp(0.0, u64::MAX as f64) as Nanos
    }

    /// The distribution's mean, e.g. for the service rate mu = 1 / mean in queueing formulas.
    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.mean_secs())
    }

    /// The mean in seconds, unrounded.
    pub fn mean_secs(&self) -> f64 {
        match self {
            ServiceTime::Const(d) => d.as_secs_f64(),
            ServiceTime::Exp { mean } => mean.as_secs_f64(),
            ServiceTime::LogNormal { median, sigma } => {
                median.as_secs_f64() * (sigma * sigma / 2.0).exp()
            }
            ServiceTime::Uniform { low, high } => (low.as_secs_f64() + high.as_secs_f64()) / 2.0,
            ServiceTime::Mix { p, first, second } => {
                p * first.mean_secs() + (1.0 - p) * second.mean_secs()
            }
        }
    }
}

fn nanos(d: Duration) -> Nanos {
    d.as_nanos().min(u64::MAX as u128) as Nanos
}

impl fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = HumanDuration;
        match self {
            ServiceTime::Const(d) => write!(f, "const:{}", h(*d)),
            ServiceTime::Exp { mean } => write!(f, "exp:{}", h(*mean)),
            ServiceTime::LogNormal { median, sigma } => {
                write!(f, "lognormal:{},{sigma}", h(*median))
            }
            ServiceTime::Uniform { low, high } => write!(f, "uniform:{},{}", h(*low), h(*high)),
            ServiceTime::Mix { p, first, second } => write!(f, "mix:{p},{first},{second}"),
        }
    }
}

impl std::str::FromStr for ServiceTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServiceTime::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_mean_secs(spec: &str, n: usize) -> (f64, f64) {
        let st = ServiceTime::parse(spec).unwrap();
        let mut rng = Rng::new(42);
        let sum: f64 = (0..n).map(|_| st.sample(&mut rng).as_secs_f64()).sum();
        (sum / n as f64, st.mean_secs())
    }

    #[test]
    fn sample_means_match_the_stated_means() {
        for spec in [
            "const:10ms",
            "exp:10ms",
            "lognormal:10ms,0.5",
            "uniform:5ms,15ms",
            "mix:0.95,const:5ms,const:200ms",
            "mix:0.5,exp:2ms,lognormal:20ms,1",
        ] {
            let (measured, expected) = sample_mean_secs(spec, 400_000);
            let rel = (measured - expected).abs() / expected;
            assert!(
                rel < 0.015,
                "{spec}: sample mean {measured} vs {expected} ({rel})"
            );
        }
    }

    #[test]
    fn means_are_the_textbook_ones() {
        let m = |s: &str| ServiceTime::parse(s).unwrap().mean_secs();
        assert!((m("const:10ms") - 0.010).abs() < 1e-12);
        assert!((m("exp:10ms") - 0.010).abs() < 1e-12);
        assert!((m("uniform:5ms,15ms") - 0.010).abs() < 1e-12);
        assert!((m("lognormal:10ms,0.5") - 0.010 * (0.125f64).exp()).abs() < 1e-12);
        assert!((m("mix:0.95,const:5ms,const:200ms") - 0.01475).abs() < 1e-12);
    }

    #[test]
    fn same_seed_same_samples() {
        let st = ServiceTime::parse("lognormal:10ms,0.5").unwrap();
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..100 {
            assert_eq!(st.sample(&mut a), st.sample(&mut b));
        }
    }

    #[test]
    fn uniform_stays_in_bounds_and_const_is_exact() {
        let st = ServiceTime::parse("uniform:5ms,15ms").unwrap();
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let d = st.sample(&mut rng);
            assert!(d >= Duration::from_millis(5) && d <= Duration::from_millis(15));
        }
        let c = ServiceTime::parse("const:10ms").unwrap();
        assert_eq!(c.sample(&mut rng), Duration::from_millis(10));
        assert_eq!(
            ServiceTime::parse("0ms").unwrap(),
            ServiceTime::Const(Duration::ZERO)
        );
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "const:10ms",
            "exp:10ms",
            "lognormal:10ms,0.5",
            "uniform:5ms,15ms",
            "mix:0.95,const:5ms,const:200ms",
            "mix:0.5,uniform:1ms,2ms,mix:0.1,exp:1s,lognormal:1500us,1.25",
            "const:0s",
        ] {
            let st = ServiceTime::parse(spec).unwrap();
            assert_eq!(st.to_string(), spec);
            assert_eq!(ServiceTime::parse(&st.to_string()).unwrap(), st);
        }
        // Forms that normalise still round-trip through the value.
        let st = ServiceTime::parse("exponential:1.5ms").unwrap();
        assert_eq!(st.to_string(), "exp:1500us");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let e = |s: &str| ServiceTime::parse(s).unwrap_err();
        assert!(e("gamma:10ms").contains("unknown distribution `gamma`"));
        assert!(e("exp:10").contains("no unit"));
        assert!(e("lognormal:10ms").contains("lognormal:MEDIAN,SIGMA"));
        assert!(e("lognormal:10ms,x").contains("sigma `x` is not a number"));
        assert!(e("uniform:15ms,5ms").contains("below low"));
        assert!(e("mix:1.5,const:1ms,const:2ms").contains("in [0, 1]"));
        assert!(e("mix:0.5,const:1ms").contains("mix:P,SPEC,SPEC"));
        assert!(e("mix:0.5,const:1ms,bogus:2ms").contains("unknown distribution"));
        assert!(e("").contains("empty"));
        assert!(e("fast").contains("use a distribution"));
    }
}
