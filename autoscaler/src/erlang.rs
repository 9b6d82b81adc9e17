//! Erlang C: the M/M/c queue (Poisson arrivals at rate lambda, c identical servers each serving
//! exponentially at rate mu, one FCFS queue in front). The queueing-model decider and the cost
//! rules use it to predict the latency of a fleet before buying it.
//!
//! Everything is computed from the Erlang B recursion B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)),
//! which stays within [0, 1] at every step, so c in the tens of thousands is as exact as c = 1
//! (factorials and powers overflow f64 beyond c = 170).
//!
//! Sojourn time (what a client sees) is wait + service. Under FCFS the wait W and the request's
//! own service S are independent; W is 0 with probability 1 - C and Exp(theta = c mu - lambda)
//! otherwise, S is Exp(mu). Their sum has an exact tail:
//!
//! P(T > t) = e^{-mu t} [1 + C mu t g((theta - mu) t)],  g(x) = (1 - e^{-x}) / x,  g(0) = 1,
//!
//! which is the hypoexponential tail (theta e^{-mu t} - mu e^{-theta t}) / (theta - mu) mixed with
//! the no-wait case, written so that theta = mu is not a special case. Quantiles are found by
//! bisection on it (no approximation beyond the bisection's 1e-12 relative width).

/// Erlang B: the probability that an arrival finds all `servers` busy in M/M/c/c (no queue),
/// with offered load `a` = lambda / mu erlangs. O(servers), stable for any size.
pub fn erlang_b(servers: u32, a: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=servers {
        b = erlang_b_step(b, k, a);
    }
    b
}

/// One step of the recursion: B(k) from B(k-1). Lets a search over growing c reuse its work.
#[inline]
pub fn erlang_b_step(b_prev: f64, k: u32, a: f64) -> f64 {
    let ab = a * b_prev;
    ab / (k as f64 + ab)
}

/// Erlang C from Erlang B: the probability that an arrival waits, C = c B / (c - a (1 - B));
/// 1 when the queue is unstable (a >= c), 0 with no load.
pub fn erlang_c_from_b(servers: u32, a: f64, b: f64) -> f64 {
    let c = servers as f64;
    if a <= 0.0 {
        0.0
    } else if servers == 0 || a >= c {
        1.0
    } else {
        (c * b / (c - a * (1.0 - b))).clamp(0.0, 1.0)
    }
}

/// Erlang C: the probability that an arrival has to wait in M/M/c with offered load `a`.
pub fn erlang_c(servers: u32, a: f64) -> f64 {
    erlang_c_from_b(servers, a, erlang_b(servers, a))
}

/// (1 - e^{-x}) / x, continuous at 0; stable for small |x| through expm1.
fn one_minus_exp_over(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0 - x / 2.0
    } else {
        -(-x).exp_m1() / x
    }
}

/// One M/M/c queue: its parameters and its probability of waiting, computed once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MMc {
    /// lambda: arrivals per second.
    pub arrival_rate: f64,
    /// mu: completions per second of one busy server.
    pub service_rate: f64,
    /// c: servers.
    pub servers: u32,
    /// C(c, a): the probability that an arrival waits.
    pub prob_wait: f64,
}

impl MMc {
    /// The queue with `servers` servers; O(servers) for Erlang B.
    pub fn new(arrival_rate: f64, service_rate: f64, servers: u32) -> MMc {
        let a = offered(arrival_rate, service_rate);
        Self::with_erlang_b(arrival_rate, service_rate, servers, erlang_b(servers, a))
    }

    /// The queue with B(servers, a) already known (from [`MMc::ladder`] or a previous step).
    fn with_erlang_b(arrival_rate: f64, service_rate: f64, servers: u32, b: f64) -> MMc {
        let a = offered(arrival_rate, service_rate);
        MMc {
            arrival_rate,
            service_rate,
            servers,
            prob_wait: erlang_c_from_b(servers, a, b),
        }
    }

    /// The queues with `first`, `first + step`, `first + 2 step`, ... servers, each in O(step)
    /// after the first: what a search for the smallest adequate fleet walks.
    pub fn ladder(
        arrival_rate: f64,
        service_rate: f64,
        first: u32,
        step: u32,
    ) -> impl Iterator<Item = MMc> {
        let a = offered(arrival_rate, service_rate);
        let step = step.max(1);
        let mut c = first;
        let mut b = erlang_b(first, a);
        let mut started = false;
        std::iter::from_fn(move || {
            if started {
                for _ in 0..step {
                    c = c.checked_add(1)?;
                    b = erlang_b_step(b, c, a);
                }
            }
            started = true;
            Some(MMc::with_erlang_b(arrival_rate, service_rate, c, b))
        })
    }

    /// a = lambda / mu: the mean number of busy servers, in erlangs.
    pub fn offered_load(&self) -> f64 {
        offered(self.arrival_rate, self.service_rate)
    }

    /// rho = a / c: the share of time a server is busy.
    pub fn utilisation(&self) -> f64 {
        self.offered_load() / self.servers.max(1) as f64
    }

    /// Whether the queue stays finite (a < c); if not, every wait grows without bound.
    pub fn is_stable(&self) -> bool {
        self.servers > 0 && self.offered_load() < self.servers as f64
    }

    /// theta = c mu - lambda: the rate at which the queue drains when every server is busy.
    fn drain_rate(&self) -> f64 {
        self.servers as f64 * self.service_rate - self.arrival_rate
    }

    /// Mean wait in the queue, Wq = C / (c mu - lambda); infinite when unstable.
    pub fn mean_wait(&self) -> f64 {
        if self.arrival_rate <= 0.0 {
            0.0
        } else if !self.is_stable() {
            f64::INFINITY
        } else {
            self.prob_wait / self.drain_rate()
        }
    }

    /// Mean sojourn (wait + service), W = Wq + 1 / mu.
    pub fn mean_sojourn(&self) -> f64 {
        self.mean_wait() + 1.0 / self.service_rate
    }

    /// P(W > t) = C e^{-(c mu - lambda) t}: the share of requests waiting longer than `t` seconds.
    pub fn wait_tail(&self, t: f64) -> f64 {
        if !self.is_stable() && self.arrival_rate > 0.0 {
            return 1.0;
        }
        if t < 0.0 {
            return 1.0;
        }
        self.prob_wait * (-self.drain_rate() * t).exp()
    }

    /// The q-quantile of the wait (e.g. q = 0.99), closed form: 0 when at least q of requests
    /// do not wait, else ln(C / (1 - q)) / (c mu - lambda).
    pub fn wait_quantile(&self, q: f64) -> f64 {
        if !self.is_stable() && self.arrival_rate > 0.0 {
            return f64::INFINITY;
        }
        let over = 1.0 - q;
        if self.prob_wait <= over {
            0.0
        } else {
            (self.prob_wait / over).ln() / self.drain_rate()
        }
    }

    /// P(T > t) for the sojourn T = wait + service, exact (see the module notes).
    pub fn sojourn_tail(&self, t: f64) -> f64 {
        if !self.is_stable() && self.arrival_rate > 0.0 {
            return 1.0;
        }
        if t <= 0.0 {
            return 1.0;
        }
        let mu = self.service_rate;
        let x = (self.drain_rate() - mu) * t;
        let tail = (-mu * t).exp() * (1.0 + self.prob_wait * mu * t * one_minus_exp_over(x));
        tail.clamp(0.0, 1.0)
    }

    /// The q-quantile of the sojourn (q = 0.99 for p99), in seconds, by bisection on the exact
    /// tail; infinite when unstable.
    pub fn sojourn_quantile(&self, q: f64) -> f64 {
        if !self.is_stable() && self.arrival_rate > 0.0 {
            return f64::INFINITY;
        }
        if !(self.service_rate.is_finite() && self.service_rate > 0.0) {
            return f64::INFINITY;
        }
        let over = 1.0 - q;
        // The service alone reaches `over` at ln(1/over)/mu; the wait adds at most its own
        // quantile, so this bracket always holds the answer.
        let mut lo = 0.0;
        let mut hi = (1.0 / over).ln() / self.service_rate + self.wait_quantile(q) + 1e-12;
        for _ in 0..1100 {
            if self.sojourn_tail(hi) <= over {
                break;
            }
            hi *= 2.0;
        }
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if self.sojourn_tail(mid) > over {
                lo = mid;
            } else {
                hi = mid;
            }
            if hi - lo <= 1e-12 * hi {
                break;
            }
        }
        hi
    }
}

fn offered(arrival_rate: f64, service_rate: f64) -> f64 {
    if arrival_rate <= 0.0 {
        0.0
    } else {
        arrival_rate / service_rate
    }
}

/// How a fleet of `backends` x `workers` servers fares at one arrival rate: what the
/// queueing model and the cost rules compare between candidate sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetPrediction {
    /// Backends in the fleet.
    pub backends: u32,
    /// The q-quantile of sojourn time in seconds (infinite when the fleet cannot keep up).
    pub sojourn_quantile: f64,
    /// The share of requests slower than the SLO.
    pub slo_violation: f64,
    /// The share of requests that wait at all.
    pub prob_wait: f64,
}

/// The fleet as one M/M/(backends x workers) queue: the balancer holds requests in its own queue
/// while every backend is full and hands each to the first free worker (central_queue does
/// exactly that; least_outstanding and p2c come close), so the fleet pools its servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetModel {
    /// lambda: arrivals per second for the whole fleet.
    pub arrival_rate: f64,
    /// Completions per second of one backend with all its workers busy.
    pub service_rate_per_backend: f64,
    /// Servers per backend.
    pub workers: u32,
    /// The latency objective, seconds.
    pub slo: f64,
    /// The quantile the SLO is about (0.99 for p99).
    pub quantile: f64,
}

/// Searching past this many servers means the inputs are nonsense; the search stops there.
pub const MAX_SERVERS: u32 = 10_000_000;

impl FleetModel {
    /// mu: the service rate of one worker.
    pub fn service_rate_per_server(&self) -> f64 {
        self.service_rate_per_backend / self.workers.max(1) as f64
    }

    /// The prediction for a fleet of `backends`.
    pub fn predict(&self, backends: u32) -> FleetPrediction {
        let q = MMc::new(
            self.arrival_rate,
            self.service_rate_per_server(),
            backends.saturating_mul(self.workers),
        );
        self.prediction(backends, &q)
    }

    fn prediction(&self, backends: u32, q: &MMc) -> FleetPrediction {
        FleetPrediction {
            backends,
            sojourn_quantile: q.sojourn_quantile(self.quantile),
            slo_violation: q.sojourn_tail(self.slo),
            prob_wait: q.prob_wait,
        }
    }

    /// Whether any fleet can meet the SLO: the service time alone must be within it.
    pub fn slo_reachable(&self) -> bool {
        (-self.service_rate_per_server() * self.slo).exp() <= 1.0 - self.quantile
    }

    /// The fewest backends that keep up with the load (a < c).
    pub fn fewest_stable(&self) -> u32 {
        let a = offered(self.arrival_rate, self.service_rate_per_server());
        let per = self.workers.max(1);
        let most = (MAX_SERVERS / per).max(1) as f64;
        ((a / per as f64).floor() + 1.0).clamp(1.0, most) as u32
    }

    /// Predictions for fleet sizes from [`FleetModel::fewest_stable`] upward, one backend at a
    /// time, in O(workers) each.
    pub fn predictions(&self) -> impl Iterator<Item = FleetPrediction> + '_ {
        self.predictions_from(self.fewest_stable())
    }

    /// Predictions for fleet sizes from `first` backends upward, one backend at a time.
    pub fn predictions_from(&self, first: u32) -> impl Iterator<Item = FleetPrediction> + '_ {
        let workers = self.workers.max(1);
        let first = first.min(MAX_SERVERS / workers);
        MMc::ladder(
            self.arrival_rate,
            self.service_rate_per_server(),
            first * workers,
            workers,
        )
        .take_while(|q| q.servers <= MAX_SERVERS)
        .map(move |q| self.prediction(q.servers / workers, &q))
    }

    /// The smallest fleet whose predicted quantile meets the SLO. When no fleet can (the
    /// service time alone is over it), the smallest fleet where almost nobody waits (at most
    /// 1 - quantile of requests), since more backends would not help. `None` only when the
    /// search hits [`MAX_SERVERS`] or the service rate is not a positive number.
    pub fn smallest_meeting_slo(&self) -> Option<FleetPrediction> {
        let mu = self.service_rate_per_server();
        if !(mu.is_finite() && mu > 0.0) || self.arrival_rate.is_nan() {
            return None;
        }
        if self.arrival_rate <= 0.0 {
            return Some(FleetPrediction {
                backends: 0,
                sojourn_quantile: 0.0,
                slo_violation: 0.0,
                prob_wait: 0.0,
            });
        }
        let reachable = self.slo_reachable();
        let over = 1.0 - self.quantile;
        self.predictions().find(|p| {
            if reachable {
                p.sojourn_quantile <= self.slo * (1.0 + 1e-9)
            } else {
                p.prob_wait <= over
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebbtide_config::rng::Rng;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    // Reference values: the textbook formula with factorials, in exact rational arithmetic
    // (Python fractions) for c <= 100 and in log space for c = 10,000. M/M/2 at rho = 0.8
    // has the closed form C = 2 rho^2 / (1 + rho) = 32/45; M/M/4 at rho = 0.8 is 0.5964
    // (e.g. Gross & Harris' tables).
    const PUBLISHED: [(u32, f64, f64, f64); 9] = [
        // (c, rho, C(c, a), Wq with mu = 1)
        (1, 0.8, 0.8, 4.0),
        (2, 0.8, 32.0 / 45.0, 1.777_777_777_8),
        (2, 0.95, 0.925_641_025_6, 9.256_410_256_4),
        (4, 0.5, 0.173_913_043_5, 0.086_956_521_7),
        (4, 0.8, 0.596_432_471_8, 0.745_540_589_7),
        (4, 0.95, 0.891_418_995_2, 4.457_094_975_9),
        (16, 0.5, 0.009_018_809_7, 0.001_127_351_2),
        (16, 0.8, 0.304_883_912_9, 0.095_276_222_8),
        (16, 0.95, 0.780_192_462_2, 0.975_240_577_8),
    ];

    #[test]
    fn erlang_c_matches_published_values() {
        for (c, rho, pw, wq) in PUBLISHED {
            let a = c as f64 * rho;
            let q = MMc::new(a, 1.0, c);
            // The references are rounded to 10 decimals.
            let (got_c, got_wq) = (q.prob_wait, q.mean_wait());
            assert!((got_c - pw).abs() < 1e-10, "C({c}, {a}) = {got_c}");
            assert!((got_wq - wq).abs() < 1e-10, "Wq({c}, {a}) = {got_wq}");
            assert!(close(q.utilisation(), rho, 1e-12));
        }
    }

    #[test]
    fn erlang_c_is_stable_for_large_fleets() {
        assert!(close(erlang_c(100, 90.0), 0.216_940_480_906_366, 1e-9));
        assert!(close(
            erlang_c(10_000, 9_800.0),
            0.026_167_799_590_375,
            1e-8
        ));
        assert!(close(erlang_c(10_000, 9_900.0), 0.222_776_928_867_18, 1e-8));
        // Far from saturation nobody waits; at saturation everybody does.
        assert!(erlang_c(10_000, 5_000.0) < 1e-300);
        assert_eq!(erlang_c(10_000, 10_000.0), 1.0);
        assert_eq!(erlang_c(4, 0.0), 0.0);
        for c in [1u32, 10, 1000, 10_000] {
            let b = erlang_b(c, c as f64 * 0.9);
            assert!(b.is_finite() && (0.0..=1.0).contains(&b));
        }
    }

    #[test]
    fn mm1_is_the_special_case() {
        // M/M/1: C = rho, Wq = rho / (mu - lambda), sojourn ~ Exp(mu - lambda) exactly.
        let (lambda, mu) = (30.0, 50.0);
        let q = MMc::new(lambda, mu, 1);
        assert!(close(q.prob_wait, 0.6, 1e-12));
        assert!(close(q.mean_wait(), 0.6 / 20.0, 1e-12));
        // The seed note's formula: mean latency = load / ((1 - load) x service rate) is the
        // mean wait; plus the service itself for the sojourn.
        let load = lambda / mu;
        assert!(close(q.mean_wait(), load / ((1.0 - load) * mu), 1e-12));
        assert!(close(q.mean_sojourn(), 1.0 / (mu - lambda), 1e-12));
        for t in [0.01, 0.05, 0.2] {
            assert!(close(q.sojourn_tail(t), (-(mu - lambda) * t).exp(), 1e-9));
        }
        assert!(close(q.sojourn_quantile(0.99), 100f64.ln() / 20.0, 1e-9));
        // When theta = c mu - lambda equals mu (lambda = 0 here is excluded; use c = 2).
        let q = MMc::new(50.0, 50.0, 2); // theta = 100 - 50 = 50 = mu
        let t: f64 = 0.03;
        let expected = (-50.0 * t).exp() * (1.0 + q.prob_wait * 50.0 * t);
        assert!(close(q.sojourn_tail(t), expected, 1e-12));
    }

    #[test]
    fn wait_tail_and_quantile_agree() {
        let q = MMc::new(14.0, 1.0, 16);
        let t99 = q.wait_quantile(0.99);
        assert!(close(q.wait_tail(t99), 0.01, 1e-9));
        assert!(close(q.wait_tail(0.0), q.prob_wait, 1e-12));
        let s99 = q.sojourn_quantile(0.99);
        assert!(close(q.sojourn_tail(s99), 0.01, 1e-9));
        // Sojourn p99 is above both the service p99 and the wait p99, below their sum.
        assert!(s99 > 100f64.ln() && s99 > t99 && s99 < 100f64.ln() + t99);
        // Little's law sanity: at low load almost nobody waits.
        assert_eq!(MMc::new(1.0, 1.0, 16).wait_quantile(0.99), 0.0);
    }

    #[test]
    fn degenerate_inputs_do_not_hang_or_panic() {
        assert_eq!(MMc::new(0.0, 0.0, 4).sojourn_quantile(0.99), f64::INFINITY);
        assert_eq!(MMc::new(1.0, 0.0, 4).sojourn_quantile(0.99), f64::INFINITY);
        let _ = MMc::new(f64::NAN, 1.0, 4).sojourn_quantile(0.99);
        let m = FleetModel {
            arrival_rate: 10.0,
            service_rate_per_backend: 0.0,
            workers: 4,
            slo: 0.2,
            quantile: 0.99,
        };
        assert_eq!(m.smallest_meeting_slo(), None);
        // No load: the service time alone, ln(100) / mu.
        let idle = MMc::new(0.0, 1.0, 4).sojourn_quantile(0.99);
        assert!(close(idle, 100f64.ln(), 1e-9), "{idle}");
    }

    #[test]
    fn unstable_queues_predict_infinite_latency() {
        let q = MMc::new(100.0, 10.0, 8);
        assert!(!q.is_stable());
        assert_eq!(q.mean_wait(), f64::INFINITY);
        assert_eq!(q.sojourn_quantile(0.99), f64::INFINITY);
        assert_eq!(q.sojourn_tail(1e6), 1.0);
    }

    #[test]
    fn ladder_equals_fresh_computation() {
        let rungs: Vec<MMc> = MMc::ladder(37.0, 2.0, 20, 4).take(6).collect();
        for (i, r) in rungs.iter().enumerate() {
            assert_eq!(r.servers, 20 + 4 * i as u32);
            let fresh = MMc::new(37.0, 2.0, r.servers);
            assert!(close(r.prob_wait, fresh.prob_wait, 1e-12));
        }
    }

    #[test]
    fn sojourn_p99_matches_a_seeded_simulation() {
        // FCFS M/M/c simulated customer by customer: each arrival takes the server that frees
        // first. 300,000 customers; the empirical p99 is within 3% of the exact formula.
        let (lambda, mu, c) = (28.0, 1.0 / 0.1, 4u32); // rho = 0.7, 100ms mean service
        let mut rng = Rng::new(7);
        let mut free_at = vec![0.0f64; c as usize];
        let mut now = 0.0;
        let mut sojourns = Vec::with_capacity(300_000);
        for _ in 0..300_000 {
            now += rng.exp(1.0 / lambda);
            let (i, &f) = free_at
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            let start = f.max(now);
            let done = start + rng.exp(1.0 / mu);
            free_at[i] = done;
            sojourns.push(done - now);
        }
        sojourns.sort_by(f64::total_cmp);
        let empirical = sojourns[(sojourns.len() as f64 * 0.99) as usize];
        let model = MMc::new(lambda, mu, c).sojourn_quantile(0.99);
        assert!(
            close(empirical, model, 0.03),
            "empirical {empirical}, model {model}"
        );
    }

    #[test]
    fn fleet_search_finds_the_smallest_fleet_meeting_the_slo() {
        let m = FleetModel {
            arrival_rate: 400.0,
            service_rate_per_backend: 40.0, // 4 workers at 100ms each
            workers: 4,
            slo: 0.5,
            quantile: 0.99,
        };
        let p = m.smallest_meeting_slo().unwrap();
        assert!(p.sojourn_quantile <= 0.5);
        assert!(m.predict(p.backends - 1).sojourn_quantile > 0.5);
        assert!(
            p.backends > 10,
            "must keep up: 400/s needs more than 10 backends"
        );
    }

    #[test]
    fn fleet_search_when_the_slo_is_out_of_reach() {
        // 100ms mean exponential service: its own p99 is 460ms > SLO 200ms.
        let m = FleetModel {
            arrival_rate: 100.0,
            service_rate_per_backend: 40.0,
            workers: 4,
            slo: 0.2,
            quantile: 0.99,
        };
        assert!(!m.slo_reachable());
        let p = m.smallest_meeting_slo().unwrap();
        assert!(p.prob_wait <= 0.01);
        assert!(m.predict(p.backends - 1).prob_wait > 0.01);
    }
}
