//! `backlog`: the smallest fleet that, by Erlang C, serves the arrival rate with headroom for the
//! bursts one boot time can bring, and drains what is already queued within `drain_time`.
//!
//! `queueing_model` sizes the fleet for the arrival rate alone: after a step it reaches the
//! right size for the new rate, but the requests that queued while it reacted drain only through
//! the small spare capacity that square-root staffing leaves, and every request that arrives
//! meanwhile waits behind them (on the 5x step, ~30 s of SLO misses). And it keeps no headroom
//! for a burst that comes faster than a backend boots. This rule adds both:
//!
//! ```text
//! lambda   = panic-window arrival rate, or the newest sample's where it is higher by more than
//!            3 sd of Poisson noise (a step is seen at once, not over the panic window)
//! mu       = measured service rate per backend (stable window; the last one measured while a
//!            backlog hides it)
//! backlog  = requests queued in the balancer now
//!          + what queues while new ones boot: (newest arrival rate - 3 sd of its noise) x
//!            boot_time - what the ready backends, and those already starting once ready,
//!            serve meanwhile ([`Backlog::growth`])
//! burst    = the burst_quantile of the past rises over one reaction (boot_time + interval):
//!            highest sample over the next reaction - mean rate over the last one - 3 sd of
//!            Poisson noise - the rise the trend before it explains (the cost rules' lookahead
//!            covers that), over the last burst_window of arrival rates, leaving above it at
//!            least the windows one event spans (so one step or spike alone sets nothing);
//!            at least 0. Absolute (requests/s), so traffic that switches on from nothing
//!            counts too
//! memory   = burst memory: the largest rise of the burst_window that the rate has since
//!            fallen back from (min(rise, peak - rate now - noise): a step that lasts has no
//!            fall), sized for on top of the rate now, so one burst that passed is enough to
//!            meet the next
//! drain    = backlog / drain_time, or faster where the requests that would wait behind the
//!            backlog past the SLO cost more than the backends that drain it sooner
//!            ([`Backlog::drain_rate`])
//! n        = the smallest fleet with p99(M/M/(n x workers)) <= slo_p99 at the offered rate
//!            max(lambda + burst, rate now + memory) + drain
//! ```
//!
//! Erlang C on both: the backlog is offered to the model as extra arrivals spread over
//! `drain_time`, so the fleet that serves arrivals plus the drain still keeps the queueing
//! headroom of square-root staffing. Once the queue is gone the term vanishes and the cost rules
//! release the extra backends at the end of their paid period.
//!
//! The burst headroom is learnt, not a fixed factor: on smooth load (Poisson or a slow trend) the
//! rises over a few seconds are within noise and the headroom is 0; on traffic whose bursts come
//! back (a trace whose load arrives in bursts of a few seconds, a burst every minute) it is the
//! rise that `burst_quantile` of the recent reaction windows did not exceed. A single step or
//! flash crowd is a few windows in hundreds: it does not inflate the fleet afterwards (and the
//! first two bursts of a repeating pattern are not covered: the second is the first that shows
//! the pattern).
//!
//! Predictive option (`season`, e.g. "24h"): the highest panic-window mean one season ago over
//! the next reaction (boot + interval), times today's level over that season's (panic window against the same
//! window one season ago), is a floor on lambda, so a rise that happened at this time yesterday
//! is met a boot ahead. It falls back to the reactive rule (no floor) without a season of
//! history and when today's level is more than 2x off that season's; it never lowers lambda.
//!
//! A separate decider rather than an option of `queueing_model`, so that rule (and the tables
//! measured with it) stays as it is for comparison, and because this one keeps state (the rate
//! history and the last measured service rate) that `queueing_model` does not need.

use super::queueing_model::SLO_QUANTILE;
use super::{secs, Decider};
use crate::decision::Decision;
use crate::erlang::FleetModel;
use crate::fleet::{BackendState, FleetView};
use crate::windows::Windows;
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// Standard deviations of Poisson noise a rise must exceed to count as a burst.
pub const NOISE_SDS: f64 = 3.0;

/// Reaction windows needed before the burst headroom is trusted.
const MIN_BURST_WINDOWS: usize = 20;

/// The backlog-and-burst sizing rule; see the module notes.
#[derive(Debug, Clone)]
pub struct Backlog {
    workers: u32,
    slo: f64,
    drain_time: f64,
    boot: f64,
    interval: Nanos,
    quantile: f64,
    history_length: Nanos,
    /// Samples the trend of a rise is measured over (the stable window, as the cost rules'
    /// lookahead measures it).
    trend_samples: usize,
    /// (time, arrival rate) of every observation within `burst_window`.
    history: VecDeque<(Nanos, f64)>,
    /// The last measured service rate per backend.
    last_mu: Option<f64>,
    /// The season of the predictive option (0: off).
    season: Nanos,
    /// (time, arrival rate) over the last season and a bit, for the forecast.
    seasonal: VecDeque<(Nanos, f64)>,
    /// Price of one backend for one billing period (at least one interval): what a backend
    /// bought to drain a backlog costs, since it is kept to the end of its period.
    backend_period_price: f64,
    /// Price of one request over the SLO (`[autoscaler.cost] slo_violation_cost`).
    violation_price: f64,
}

/// A forecast from one season ago.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// The arrival rate expected over the next reaction, requests/s.
    pub rate: f64,
    /// Today's level over the same time of the last season (panic window against panic window).
    pub level: f64,
}

/// The forecast is used only while today's level is within this factor of last season's:
/// beyond it the season says little about today, and the rule is reactive.
pub const MAX_LEVEL_CHANGE: f64 = 2.0;

/// The learnt burst headroom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstHeadroom {
    /// Requests/s added to the arrival rate (0: no headroom).
    pub rate: f64,
    /// Reaction windows it was learnt from.
    pub windows: usize,
    /// Burst memory: the largest burst of the history that has since passed (its rise, no
    /// more than the rate has fallen back since), which one event sets alone. The fleet is
    /// sized for at least `level` + this: the burst's peak, should it come back now.
    pub recalled: f64,
    /// The rate now: the mean over the last reaction window.
    pub level: f64,
    /// Length of one reaction window, samples.
    pub samples_per_window: usize,
}

impl Backlog {
    /// The rule as `[autoscaler]` configures it.
    pub fn new(cfg: &Autoscaler) -> Backlog {
        Backlog {
            workers: cfg.workers.max(1),
            slo: cfg.slo_p99.0.as_secs_f64(),
            drain_time: cfg.drain_time.0.as_secs_f64().max(1e-3),
            boot: cfg.boot_time.0.as_secs_f64(),
            interval: cfg.interval.as_nanos().max(1),
            quantile: cfg.burst_quantile.clamp(0.0, 1.0),
            history_length: cfg.burst_window.as_nanos(),
            trend_samples: (cfg.stable_window.as_nanos() / cfg.interval.as_nanos().max(1)).max(3)
                as usize,
            history: VecDeque::new(),
            last_mu: None,
            season: cfg.season.as_nanos(),
            seasonal: VecDeque::new(),
            backend_period_price: cfg.cost.backend_per_hour.max(0.0)
                * cfg.cost.billing_period.0.max(cfg.interval.0).as_secs_f64()
                / 3600.0,
            violation_price: cfg.cost.slo_violation_cost.max(0.0),
        }
    }

    /// The rate, above the arrivals `lambda`, the fleet drains `backlog` at (`mu` per
    /// backend): at least backlog / `drain_time`; more when the price of the requests that
    /// would wait behind the backlog beyond the SLO pays for the backends that drain it sooner.
    ///
    /// Drained at x/s over the arrivals, the backlog keeps a request arriving meanwhile over the
    /// SLO until it is down to slo x capacity: for (Q - slo lambda) / x seconds, so
    /// lambda (Q - slo lambda) / x requests miss (less the SLO's own share). One more backend
    /// adds mu to x and saves lambda (Q - slo lambda) mu / x^2 of them; it costs one billing
    /// period. The best x is where the two meet:
    ///
    /// ```text
    /// x* = sqrt(violation_price x lambda x (Q - slo x lambda) x mu / backend_period_price)
    /// ```
    ///
    /// capped at (Q - slo x lambda) / slo (drained within the SLO: nothing more to save).
    pub fn drain_rate(&self, lambda: f64, backlog: f64, mu: f64) -> f64 {
        let floor = backlog / self.drain_time;
        let excess = backlog - self.slo * lambda;
        if excess <= 0.0 || self.violation_price <= 0.0 || self.backend_period_price <= 0.0 {
            return floor;
        }
        let priced = (self.violation_price * lambda * excess * mu / self.backend_period_price)
            .sqrt()
            .min(excess / self.slo);
        floor.max(priced)
    }

    /// The mean rate one season ago over [from, to) (times of today), or with `span` samples the
    /// highest mean of `span` consecutive samples there, from the seasonal history; `None` when
    /// the history does not reach back that far.
    fn seasonal(&self, from: Nanos, to: Nanos, span: Option<usize>) -> Option<f64> {
        let (from, to) = (from.checked_sub(self.season)?, to.checked_sub(self.season)?);
        if self.seasonal.front().is_none_or(|&(at, _)| at > from) {
            return None;
        }
        let rates: Vec<f64> = self
            .seasonal
            .iter()
            .filter(|&&(at, _)| at >= from && at < to.max(from + 1))
            .map(|&(_, r)| r)
            .collect();
        if rates.is_empty() {
            return None;
        }
        let span = span.unwrap_or(rates.len()).clamp(1, rates.len());
        let mean = |w: &[f64]| w.iter().sum::<f64>() / w.len() as f64;
        Some(rates.windows(span).map(mean).fold(f64::MIN, f64::max))
    }

    /// The same-time-last-season forecast: the highest panic-window mean over the next
    /// reaction (boot + interval) one season ago, scaled by
    /// today's level against that season's; `None` when off, without a season of history, or
    /// when today's level is more than [`MAX_LEVEL_CHANGE`] off (the forecast is not trusted).
    pub fn forecast(&self, windows: &Windows, now: Nanos) -> Option<Forecast> {
        if self.season == 0 {
            return None;
        }
        let panic = windows.panic(now);
        let today = panic.arrival_rate?;
        let then = self.seasonal(panic.from, panic.to, None)?;
        let reaction = (self.boot * 1e9) as Nanos + self.interval;
        // The highest panic-window mean ahead, not the highest sample: over a 30 s reaction
        // the highest of 31 one-second samples is ~2 sd of Poisson noise above the rate, which
        // the forecast would otherwise buy every tick (0.04 of 1.81 on the four-day sine).
        let span = (windows.panic_length() / self.interval).max(1) as usize;
        let ahead = self.seasonal(panic.to, panic.to + reaction, Some(span))?;
        let level = if then > 0.0 { today / then } else { 1.0 };
        if !(1.0 / MAX_LEVEL_CHANGE..=MAX_LEVEL_CHANGE).contains(&level) {
            return None;
        }
        Some(Forecast {
            rate: ahead * level,
            level,
        })
    }

    fn record(&mut self, windows: &Windows) {
        let Some(obs) = windows.latest() else {
            return;
        };
        match self.history.back() {
            Some(&(at, _)) if at >= obs.at => return,
            _ => {}
        }
        self.history.push_back((obs.at, obs.arrival_rate.max(0.0)));
        let horizon = obs.at.saturating_sub(self.history_length);
        while self.history.front().is_some_and(|&(at, _)| at < horizon) {
            self.history.pop_front();
        }
        if self.season > 0 {
            self.seasonal.push_back((obs.at, obs.arrival_rate.max(0.0)));
            // A season back, less the panic window, plus one reaction ahead: keep a season and
            // a stable window's worth.
            let keep = self.season + windows.stable_length();
            let horizon = obs.at.saturating_sub(keep);
            while self.seasonal.front().is_some_and(|&(at, _)| at < horizon) {
                self.seasonal.pop_front();
            }
        }
    }

    /// The part of a rise over window `i` (the mean of samples [i - k, i) against the highest of
    /// [i, i + k)) that the trend before it explains: the least-squares slope of the
    /// `trend_samples` before `i` (rising only), over the 1.5 k samples from the middle of the
    /// mean to the end of the next window. The cost rules' lookahead extrapolates that trend
    /// a boot ahead already, so counting it as burst headroom too would size a smooth rise
    /// twice (with 30 s boots, the steepest rises of a diurnal sine pass the noise test).
    fn trend_rise(&self, prefix: &[f64], moment: &[f64], i: usize, k: usize) -> f64 {
        let lo = i.saturating_sub(self.trend_samples);
        let n = (i - lo) as f64;
        if n < 3.0 {
            return 0.0;
        }
        let sum = prefix[i] - prefix[lo];
        let centre = (lo + i - 1) as f64 / 2.0;
        let covariance = moment[i] - moment[lo] - centre * sum;
        let slope = covariance / (n * (n * n - 1.0) / 12.0);
        slope.max(0.0) * 1.5 * k as f64
    }

    /// What will queue while the backends ordered now boot: the newest arrival rate, less
    /// [`NOISE_SDS`] of its Poisson noise, over the boot time, less what the ready backends
    /// serve meanwhile and what the backends already starting serve once ready (each from its
    /// own launch plus one boot; half the boot time each when the members are not known).
    ///
    /// The noise and the starting backends matter with slow boots: over 30 s, one sample 60/s
    /// above the ready fleet's capacity is 1,800 requests, which the priced drain answers with
    /// dozens of backends for a billing period (on the four-day sine, 80 at once at a peak
    /// where 2 more were already booting).
    pub fn growth(&self, newest: f64, mu: f64, fleet: &FleetView, now: Nanos) -> f64 {
        let dt = secs(self.interval).max(1e-3);
        let newest = newest.max(0.0);
        let noise = NOISE_SDS * (newest / dt).sqrt();
        let boot_ns = (self.boot * 1e9) as Nanos;
        let starting: Vec<Nanos> = fleet
            .members
            .iter()
            .filter(|m| m.state == BackendState::Starting)
            .map(|m| now.saturating_sub(m.launched_at).min(boot_ns))
            .collect();
        let starting_s = if starting.len() == fleet.starting as usize && !fleet.members.is_empty() {
            starting.iter().map(|&s| secs(s)).sum()
        } else {
            fleet.starting as f64 * self.boot / 2.0
        };
        let served = mu * (fleet.ready as f64 * self.boot + starting_s);
        ((newest - noise) * self.boot - served).max(0.0)
    }

    /// The burst headroom learnt from the rate history so far.
    pub fn burst_headroom(&self) -> BurstHeadroom {
        let interval_s = self.interval as f64 / 1e9;
        let k = ((self.boot + interval_s) / interval_s - 1e-9)
            .ceil()
            .max(1.0) as usize;
        let none = BurstHeadroom {
            rate: 0.0,
            windows: 0,
            recalled: 0.0,
            level: 0.0,
            samples_per_window: k,
        };
        if self.quantile <= 0.0 || self.history.len() < 2 * k {
            return none;
        }
        let rates: Vec<f64> = self.history.iter().map(|&(_, r)| r).collect();
        let (prefix, moment) = prefix_sums(&rates);
        let span = k as f64 * interval_s;
        let n = rates.len();
        // The level now: the mean over the last reaction.
        let now_level = (prefix[n] - prefix[n - k]) / k as f64;
        let mut rises: Vec<f64> = Vec::new();
        let mut recalled = 0.0f64;
        for i in k..=n - k {
            // The mean over the last reaction against the highest sample of the next: what the
            // fleet sized on the past had to meet before a backend ordered then was ready.
            let before = (prefix[i] - prefix[i - k]) / k as f64;
            let after = rates[i..i + k].iter().copied().fold(0.0, f64::max);
            // A Poisson count over one interval has variance rate x interval, the mean before
            // over the reaction rate x span: rises within NOISE_SDS of their sum are noise.
            let noise = (after / interval_s + before / span).sqrt();
            let trend = self.trend_rise(&prefix, &moment, i, k);
            let rise = after - before - NOISE_SDS * noise - trend;
            rises.push(rise);
            // Burst memory: a rise the rate has since fallen back from (a whole reaction later)
            // was a burst, not a lasting step: it may come back.
            if i + 2 * k <= n {
                let noise_now = (after / interval_s + now_level / span).sqrt();
                let fall = after - now_level - NOISE_SDS * noise_now;
                recalled = recalled.max(rise.min(fall));
            }
        }
        if rises.len() < MIN_BURST_WINDOWS {
            return BurstHeadroom {
                windows: rises.len(),
                level: now_level,
                ..none
            };
        }
        rises.sort_by(f64::total_cmp);
        // One event (a step, a single spike) makes k + 1 overlapping windows rise: at least that
        // many stay above the quantile, so one event alone never sets the headroom.
        let rank = ((self.quantile * rises.len() as f64).ceil() as usize)
            .min(rises.len().saturating_sub(k + 1))
            .max(1);
        BurstHeadroom {
            rate: rises[rank - 1].max(0.0),
            windows: rises.len(),
            recalled: recalled.max(0.0),
            level: now_level,
            samples_per_window: k,
        }
    }
}

/// Prefix sums of r\[j\] and of j x r\[j\]: the mean and the least-squares trend of any span
/// in O(1) ([`Backlog::trend_rise`]).
fn prefix_sums(rates: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut prefix = Vec::with_capacity(rates.len() + 1);
    let mut moment = Vec::with_capacity(rates.len() + 1);
    prefix.push(0.0);
    moment.push(0.0);
    for (j, r) in rates.iter().enumerate() {
        prefix.push(prefix[j] + r);
        moment.push(moment[j] + j as f64 * r);
    }
    (prefix, moment)
}

impl Decider for Backlog {
    fn name(&self) -> &'static str {
        "backlog"
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        self.record(windows);
        let current = fleet.current();
        let stable = windows.stable(now);
        let panic = windows.panic(now);
        if let Some(mu) = stable
            .service_rate_per_backend
            .or(panic.service_rate_per_backend)
            .filter(|m| m.is_finite() && *m > 0.0)
        {
            self.last_mu = Some(mu);
        }
        let (Some(lambda), Some(mu), Some(latest)) =
            (panic.arrival_rate, self.last_mu, windows.latest())
        else {
            if self.last_mu.is_none() && panic.arrival_rate == Some(0.0) {
                // Nothing has been served yet and nothing arrives: no service rate to size by,
                // and none needed. The minimum, as any rule gives an idle fleet, rather than
                // whatever the fleet is (e.g. stand-ins launched while a large kind boots).
                let desired = fleet.clamp(0);
                return Decision::new(
                    desired,
                    0,
                    format!("no arrivals and no service rate measured yet: the minimum, {desired}"),
                );
            }
            let desired = fleet.clamp(current);
            return Decision::new(
                desired,
                current,
                format!(
                    "no arrival rate or service rate per backend measured: no change from \
                     {current}; desired {desired}"
                ),
            );
        };
        // The newest sample when it is above the panic window's average by more than Poisson
        // noise: a step shows at once, not over the panic window.
        let dt = secs(self.interval).max(1e-3);
        let lambda = lambda.max(0.0);
        let noise = NOISE_SDS * (lambda / dt).sqrt();
        let lambda = if latest.arrival_rate > lambda + noise {
            latest.arrival_rate
        } else {
            lambda
        };
        // Predictive: the rate one season ago over the next reaction, at today's level, when
        // it is higher (a predictable rise is launched for a boot ahead); never lower.
        let forecast = self.forecast(windows, now);
        let lambda = forecast.map_or(lambda, |f| lambda.max(f.rate));
        let queued = latest.queue_depth.max(0.0);
        let growth = self.growth(latest.arrival_rate, mu, fleet, now);
        let backlog = queued + growth;
        let burst = self.burst_headroom();
        let drain = self.drain_rate(lambda, backlog, mu);
        // The recalled burst on top of the rate now (not on the panic window's, which still
        // holds the burst itself just after it).
        let headroom = burst.rate.max(burst.level + burst.recalled - lambda);
        let offered = lambda + headroom + drain;
        let model = FleetModel {
            arrival_rate: offered,
            service_rate_per_backend: mu,
            workers: self.workers,
            slo: self.slo,
            quantile: SLO_QUANTILE,
        };
        let wanted = model
            .smallest_meeting_slo()
            .map_or(fleet.max, |p| p.backends);
        let desired = fleet.clamp(wanted);
        let at_desired = model.predict(desired);
        let reason = format!(
            "arrival {lambda:.1}/s (panic window {}s) + burst headroom {headroom:.1}/s (the {:.0}% \
             quantile of rises over {} reaction windows of {}s, {:.1}/s; or the largest burst that \
             passed, {:.1}/s over the rate now, {:.1}/s) + backlog {backlog:.0} ({queued:.0} queued, \
             {growth:.0} more while booting) drained at {drain:.1}/s (at least in {}s; sooner where \
             the requests it delays cost more than the backends): {offered:.1}/s offered at \
             {mu:.1}/s per backend of {} workers; {wanted} backends give predicted p99 \
             {:.1}ms <= SLO {:.0}ms; desired {desired}",
            secs(panic.covered()),
            self.quantile * 100.0,
            burst.windows,
            burst.samples_per_window as f64 * self.interval as f64 / 1e9,
            burst.rate,
            burst.recalled,
            burst.level,
            self.drain_time,
            self.workers,
            model.predict(wanted).sojourn_quantile * 1000.0,
            self.slo * 1000.0,
        );
        let mut reason = reason;
        if let Some(f) = forecast {
            reason.push_str(&format!(
                "; forecast {:.1}/s (one season ago, one reaction ahead, x{:.2} today's level)",
                f.rate, f.level
            ));
        }
        let decision = match forecast {
            Some(f) => Decision::new(desired, wanted, reason).input("forecast_rate", f.rate),
            None => Decision::new(desired, wanted, reason),
        };
        decision
            .input("arrival_rate", lambda)
            .input("burst_headroom", headroom)
            .input("backlog", backlog)
            .input("drain_rate", drain)
            .input("burst_recalled", burst.recalled)
            .input("queue_depth", queued)
            .input("offered_rate", offered)
            .input("service_rate_per_backend", mu)
            .input("workers", self.workers as f64)
            .input("slo_p99_ms", self.slo * 1000.0)
            .input("predicted_p99_ms", at_desired.sojourn_quantile * 1000.0)
            .input("ready", fleet.ready as f64)
            .input("starting", fleet.starting as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deciders::QueueingModel;
    use crate::fleet::Member;
    use crate::testkit::{run, FluidFleet, S};
    use crate::windows::Observation;
    use ebbtide_config::autoscaler::DeciderKind;
    use ebbtide_config::time::HumanDuration;

    /// The tests feed one observation a second: a 1 s interval.
    fn cfg() -> Autoscaler {
        Autoscaler {
            decider: DeciderKind::Backlog,
            interval: HumanDuration::from_secs(1),
            workers: 4,
            slo_p99: HumanDuration::from_millis(200),
            boot_time: HumanDuration::from_secs(1),
            min: 1,
            max: 1000,
            ..Default::default()
        }
    }

    fn model(rate: f64) -> FleetModel {
        FleetModel {
            arrival_rate: rate,
            service_rate_per_backend: 200.0,
            workers: 4,
            slo: 0.2,
            quantile: 0.99,
        }
    }

    /// Feeds `seconds` one-second observations of `rate(t)`.
    fn feed(d: &mut Backlog, w: &mut Windows, seconds: u64, mut rate: impl FnMut(u64) -> f64) {
        for t in 0..seconds {
            w.observe(Observation {
                at: t * S,
                arrival_rate: rate(t),
                service_rate_per_backend: Some(200.0),
                ready: 10,
                ..Default::default()
            });
            d.record(w);
        }
    }

    #[test]
    fn without_backlog_or_bursts_it_is_the_erlang_c_fleet_for_the_rate() {
        let c = cfg();
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut d, &mut w, 120, |_| 1000.0);
        let dec = d.decide(&w, &FleetView::counts(8, 0, 1, 1000), 119 * S);
        assert_eq!(dec.inputs["burst_headroom"], 0.0, "{}", dec.reason);
        assert_eq!(
            dec.desired,
            model(1000.0).smallest_meeting_slo().unwrap().backends,
            "{}",
            dec.reason
        );
    }

    /// No price on requests over the SLO: the backlog is drained in `drain_time`.
    fn unpriced() -> Autoscaler {
        let mut c = cfg();
        c.cost.slo_violation_cost = 0.0;
        c
    }

    #[test]
    fn a_backlog_is_sized_to_drain_within_the_drain_time() {
        let c = unpriced();
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut d, &mut w, 30, |_| 1000.0);
        // 2,000 queued, the ready fleet (10 x 200/s) keeps up with arrivals: no growth term.
        w.observe(Observation {
            at: 30 * S,
            arrival_rate: 1000.0,
            queue_depth: 2000.0,
            service_rate_per_backend: None,
            ready: 10,
            ..Default::default()
        });
        let dec = d.decide(&w, &FleetView::counts(10, 0, 1, 1000), 30 * S);
        assert_eq!(dec.inputs["backlog"], 2000.0);
        // 1,000/s arriving + 2,000 in 2 s.
        let expected = model(2000.0).smallest_meeting_slo().unwrap().backends;
        assert_eq!(dec.desired, expected, "{}", dec.reason);
        assert!(expected > model(1000.0).smallest_meeting_slo().unwrap().backends + 4);
        // The service rate measured before the backlog is still used while it hides it.
        assert_eq!(dec.inputs["service_rate_per_backend"], 200.0);
    }

    #[test]
    fn an_idle_fleet_that_never_served_goes_to_the_minimum_and_a_busy_one_waits_for_a_rate() {
        let c = Autoscaler { min: 2, ..cfg() };
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        let idle = |w: &mut Windows, t: u64, rate: f64| {
            w.observe(Observation {
                at: t * S,
                arrival_rate: rate,
                service_rate_per_backend: None,
                ready: 6,
                ..Default::default()
            })
        };
        for t in 0..5 {
            idle(&mut w, t, 0.0);
        }
        let fleet = FleetView::counts(6, 0, 2, 1000);
        let dec = d.decide(&w, &fleet, 5 * S);
        assert_eq!(dec.desired, 2, "{}", dec.reason);
        // Requests arrive but none has completed: no service rate to size by, no change.
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        for t in 0..5 {
            idle(&mut w, t, 50.0);
        }
        let dec = d.decide(&w, &fleet, 5 * S);
        assert_eq!(dec.desired, 6, "{}", dec.reason);
    }

    #[test]
    fn what_queues_while_new_backends_boot_counts_as_backlog() {
        let c = Autoscaler {
            boot_time: HumanDuration::from_secs(30),
            ..unpriced()
        };
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut d, &mut w, 10, |_| 1000.0);
        w.observe(Observation {
            at: 10 * S,
            arrival_rate: 5000.0,
            service_rate_per_backend: Some(200.0),
            ready: 7,
            ..Default::default()
        });
        let dec = d.decide(&w, &FleetView::counts(7, 0, 1, 1000), 10 * S);
        // (5000 less 3 sd of its noise - 7 x 200)/s for 30 s, to drain in 2 s on top of the
        // arrivals.
        let growth = (5000.0 - 3.0 * 5000f64.sqrt() - 1400.0) * 30.0;
        assert!(
            (dec.inputs["backlog"] - growth).abs() < 1e-6,
            "{}",
            dec.reason
        );
        let offered = dec.inputs["arrival_rate"] + growth / 2.0;
        assert_eq!(
            dec.desired,
            model(offered).smallest_meeting_slo().unwrap().backends,
            "{}",
            dec.reason
        );
    }

    #[test]
    fn burst_headroom_is_learnt_from_the_traffic_not_fixed() {
        let c = cfg();
        // Smooth (including a slow ramp): within noise, no headroom.
        let mut smooth = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut smooth, &mut w, 300, |t| 1000.0 + t as f64);
        assert_eq!(smooth.burst_headroom().rate, 0.0);
        // Bursts of 3x for 3 s every 20 s: headroom near 3x.
        let mut bursty = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut bursty, &mut w, 300, |t| {
            if t % 20 < 3 {
                3000.0
            } else {
                1000.0
            }
        });
        let f3 = bursty.burst_headroom();
        assert!(f3.rate > 1500.0 && f3.rate <= 2000.0, "{f3:?}");
        // Bursts of 1.5x: less headroom.
        let mut mild = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut mild, &mut w, 300, |t| {
            if t % 20 < 3 {
                1500.0
            } else {
                1000.0
            }
        });
        let f15 = mild.burst_headroom();
        assert!(f15.rate > 350.0 && f15.rate <= 500.0, "{f15:?}");
        // Traffic that switches on from nothing for 3 s every 20 s: the on rate.
        let mut on_off = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut on_off, &mut w, 300, |t| {
            if t % 20 < 3 {
                2000.0
            } else {
                0.0
            }
        });
        let f = on_off.burst_headroom();
        assert!(f.rate > 1500.0 && f.rate <= 2000.0, "{f:?}");
        // One step in 600 s is a few windows in hundreds: no lasting headroom.
        let mut step = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut step, &mut w, 600, |t| {
            if t < 300 {
                1000.0
            } else {
                5000.0
            }
        });
        assert_eq!(step.burst_headroom().rate, 0.0);
        // The headroom sizes the fleet: bursty traffic at the same base rate gets more.
        let dec = bursty.decide(&w, &FleetView::counts(8, 0, 1, 1000), 299 * S);
        assert!(dec.inputs["burst_headroom"] > 1500.0);
        assert!(dec.desired >= model(3000.0).smallest_meeting_slo().unwrap().backends);
        // And zero quantile turns it off.
        let off = Backlog::new(&Autoscaler {
            burst_quantile: 0.0,
            ..c
        });
        assert_eq!(off.burst_headroom().rate, 0.0);
    }

    #[test]
    fn after_a_step_it_drains_the_backlog_sooner_than_queueing_model() {
        let c = cfg();
        let clear_at = |d: &mut dyn Decider| -> (Option<u64>, u32) {
            let mut w = Windows::from_config(&c);
            let mut fleet = FluidFleet::new(7, S, 0.02, 4);
            fleet.max = 1000;
            let mut last_queued = None;
            for t in 1..=200u64 {
                let obs = fleet.step(S, if t <= 100 { 1000.0 } else { 5000.0 });
                w.observe(obs);
                let dec = d.decide(&w, &fleet.view(), fleet.now);
                fleet.apply(&dec);
                if obs.queue_depth > 0.0 {
                    last_queued = Some(t);
                }
            }
            (last_queued, fleet.ready())
        };
        let (backlog_last, backlog_fleet) = clear_at(&mut Backlog::new(&c));
        let (qm_last, qm_fleet) = clear_at(&mut QueueingModel::new(&c));
        let backlog_last = backlog_last.expect("the step queues");
        let qm_last = qm_last.expect("the step queues");
        assert!(
            backlog_last < qm_last,
            "backlog queued until {backlog_last}, queueing_model until {qm_last}"
        );
        // Within a few seconds of the step (1 s boots, 2 s drain time).
        assert!(backlog_last <= 106, "queued until {backlog_last}");
        // And back to the fleet the rate needs once drained (within one backend).
        let need = model(5000.0).smallest_meeting_slo().unwrap().backends;
        assert!(
            backlog_fleet.abs_diff(need) <= 1,
            "{backlog_fleet} vs {need}"
        );
        assert!(qm_fleet.abs_diff(need) <= 1);
    }

    #[test]
    fn a_backlog_that_delays_arrivals_past_the_slo_is_drained_as_fast_as_its_price_pays_for() {
        // Defaults: 0.05/h per backend billed by the minute, 0.0001 per request over the SLO.
        let c = cfg();
        let d = Backlog::new(&c);
        let period_price = 0.05 * 60.0 / 3600.0;
        // 5,200 queued behind 4,000/s arriving (a 4x burst seen one second late, one boot):
        // draining in 2 s keeps arrivals waiting past 200 ms for ~2 s; the price of those
        // requests pays for draining in about a quarter of a second.
        let (lambda, queued, mu): (f64, f64, f64) = (4000.0, 5200.0, 200.0);
        let excess = queued - 0.2 * lambda;
        let priced = (1e-4 * lambda * excess * mu / period_price).sqrt();
        let x = d.drain_rate(lambda, queued, mu);
        assert!((x - priced).abs() < 1e-6, "{x} vs {priced}");
        assert!(
            x > 5.0 * queued / 2.0,
            "{x}: far sooner than the 2 s drain time"
        );
        assert!(x <= excess / 0.2, "never faster than within the SLO");
        // A backlog small enough to wait within the SLO behind the arrivals: the drain time.
        assert_eq!(d.drain_rate(lambda, 600.0, mu), 600.0 / 2.0);
        // Dearer backends, or cheaper misses, drain slower (down to the drain time).
        let dear = Backlog::new(&Autoscaler {
            cost: ebbtide_config::autoscaler::Cost {
                backend_per_hour: 5.0,
                ..c.cost.clone()
            },
            ..cfg()
        });
        let slow = dear.drain_rate(lambda, queued, mu);
        assert!(slow < x && slow >= queued / 2.0, "{slow} vs {x}");
        // Without a price on misses it is the drain time alone.
        let free = Backlog::new(&unpriced());
        assert_eq!(free.drain_rate(lambda, queued, mu), queued / 2.0);
        // Capped where the backlog drains within the SLO: a huge price buys no more.
        let precious = Backlog::new(&Autoscaler {
            cost: ebbtide_config::autoscaler::Cost {
                slo_violation_cost: 1e3,
                ..c.cost.clone()
            },
            ..cfg()
        });
        assert_eq!(precious.drain_rate(lambda, queued, mu), excess / 0.2);
    }

    #[test]
    fn a_burst_that_passed_is_recalled_at_once_but_a_step_is_not() {
        let c = cfg();
        // 1,000/s, 4x for 10 s, back for 40 s: the one burst sets the headroom.
        let mut once = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut once, &mut w, 150, |t| {
            if (100..110).contains(&t) {
                4000.0
            } else {
                1000.0
            }
        });
        let h = once.burst_headroom();
        assert!(h.recalled > 2500.0 && h.recalled <= 3000.0, "{h:?}");
        assert_eq!(h.rate, 0.0, "one event sets no quantile: {h:?}");
        assert_eq!(h.level, 1000.0);
        // The fleet is sized for the burst's peak over the rate now.
        let dec = once.decide(&w, &FleetView::counts(8, 0, 1, 1000), 149 * S);
        assert_eq!(dec.inputs["burst_headroom"], h.recalled, "{}", dec.reason);
        let peak = model(1000.0 + h.recalled).smallest_meeting_slo().unwrap();
        assert_eq!(dec.desired, peak.backends, "{}", dec.reason);
        // While the burst lasts its rate is the arrival rate itself, not headroom on top.
        let mut during = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut during, &mut w, 108, |t| {
            if t >= 100 {
                4000.0
            } else {
                1000.0
            }
        });
        assert_eq!(during.burst_headroom().recalled, 0.0);
        // A step that lasts is no burst: nothing recalled, neither at once nor later.
        for end in [102, 103, 160, 400] {
            let mut step = Backlog::new(&c);
            let mut w = Windows::from_config(&c);
            feed(&mut step, &mut w, end, |t| {
                if t >= 100 {
                    5000.0
                } else {
                    1000.0
                }
            });
            let h = step.burst_headroom();
            assert_eq!((h.rate, h.recalled), (0.0, 0.0), "{end} s");
        }
        // Forgotten once the burst is older than the burst window.
        let short = Autoscaler {
            burst_window: HumanDuration::from_secs(60),
            ..cfg()
        };
        let mut old = Backlog::new(&short);
        let mut w = Windows::from_config(&short);
        feed(&mut old, &mut w, 200, |t| {
            if (100..110).contains(&t) {
                4000.0
            } else {
                1000.0
            }
        });
        assert_eq!(old.burst_headroom().recalled, 0.0);
    }

    #[test]
    fn the_second_burst_of_a_pattern_is_met_by_headroom_the_first_left() {
        let c = cfg();
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        let mut fleet = FluidFleet::new(7, S, 0.02, 4);
        // 1,000/s with 4x for 10 s every minute from t = 60.
        let load = |t: u64| {
            if t >= 60 && t % 60 < 10 {
                4000.0
            } else {
                1000.0
            }
        };
        let decisions = run(&mut d, &mut w, &mut fleet, 180, load);
        let queued = |from: u64, to: u64| {
            decisions
                .iter()
                .filter(|(t, _)| (from..to).contains(t))
                .map(|(_, d)| d.inputs["queue_depth"])
                .fold(0.0, f64::max)
        };
        let (first, second) = (queued(60, 70), queued(120, 130));
        assert!(first > 1000.0, "the first burst queues: {first}");
        assert_eq!(
            second, 0.0,
            "the second is met by headroom (first queued {first})"
        );
    }

    #[test]
    fn a_season_of_history_launches_ahead_of_a_predictable_rise_and_falls_back_when_wrong() {
        let c = Autoscaler {
            season: HumanDuration::from_secs(300),
            boot_time: HumanDuration::from_secs(30),
            ..cfg()
        };
        let sine = |t: u64, level: f64| {
            level * (1000.0 - 800.0 * (std::f64::consts::TAU * t as f64 / 300.0).cos())
        };
        // Two seasons alike: at the steepest rise of the second, the forecast is the rate
        // half a minute ahead (boot + interval), above what the windows show now.
        let mut d = Backlog::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut d, &mut w, 376, |t| sine(t, 1.0));
        let f = d.forecast(&w, 375 * S).expect("a season of history");
        assert!((f.level - 1.0).abs() < 0.1, "{f:?}");
        assert!(f.rate > 1300.0 && f.rate < 1700.0, "{f:?}");
        let dec = d.decide(&w, &FleetView::counts(8, 0, 1, 1000), 375 * S);
        assert_eq!(dec.inputs["arrival_rate"], f.rate, "{}", dec.reason);
        assert!(dec.reason.contains("forecast"), "{}", dec.reason);
        // Without the option (or before a season of history): reactive.
        let mut reactive = Backlog::new(&cfg());
        let mut w2 = Windows::from_config(&c);
        feed(&mut reactive, &mut w2, 376, |t| sine(t, 1.0));
        assert_eq!(reactive.forecast(&w2, 375 * S), None);
        let r = reactive.decide(&w2, &FleetView::counts(8, 0, 1, 1000), 375 * S);
        assert!(r.inputs["arrival_rate"] < f.rate);
        assert!(r.desired < dec.desired, "{} vs {}", r.desired, dec.desired);
        let mut early = Backlog::new(&c);
        let mut w3 = Windows::from_config(&c);
        feed(&mut early, &mut w3, 200, |t| sine(t, 1.0));
        assert_eq!(early.forecast(&w3, 199 * S), None);
        // Today at 3x yesterday's level: the season says little, no forecast.
        let mut changed = Backlog::new(&c);
        let mut w4 = Windows::from_config(&c);
        feed(&mut changed, &mut w4, 376, |t| {
            sine(t, if t < 300 { 1.0 } else { 3.0 })
        });
        assert_eq!(changed.forecast(&w4, 375 * S), None);
    }

    /// A fresh rule and its windows fed `seconds` of `rate(t)` (see [`feed`]).
    fn fed(c: &Autoscaler, seconds: u64, rate: impl FnMut(u64) -> f64) -> (Backlog, Windows) {
        let mut d = Backlog::new(c);
        let mut w = Windows::from_config(c);
        feed(&mut d, &mut w, seconds, rate);
        (d, w)
    }

    /// A fleet of `ready` backends and of backends starting, launched at the given times.
    fn booting(ready: u32, launched: &[Nanos]) -> FleetView {
        let mut members: Vec<Member> = (0..ready)
            .map(|i| Member {
                id: format!("r{i}"),
                launched_at: 0,
                state: BackendState::Active,
            })
            .collect();
        members.extend(launched.iter().enumerate().map(|(i, &at)| Member {
            id: format!("s{i}"),
            launched_at: at,
            state: BackendState::Starting,
        }));
        FleetView {
            members,
            ..FleetView::counts(ready, launched.len() as u32, 1, 1000)
        }
    }

    #[test]
    fn noise_and_backends_already_booting_queue_nothing_while_new_ones_boot() {
        let c = Autoscaler {
            boot_time: HumanDuration::from_secs(30),
            ..cfg()
        };
        let d = Backlog::new(&c);
        let now = 100 * S;
        // 28 ready serve 5,600/s: a sample 2 sd above that (Poisson noise) queues nothing.
        let noisy = 5600.0 + 2.0 * 5600f64.sqrt();
        assert_eq!(d.growth(noisy, 200.0, &booting(28, &[]), now), 0.0);
        // A real excess of 1,400/s over 30 s does, less its noise.
        let over = d.growth(7000.0, 200.0, &booting(28, &[]), now);
        let expected = (7000.0 - 3.0 * 7000f64.sqrt() - 5600.0) * 30.0;
        assert!((over - expected).abs() < 1e-6, "{over} vs {expected}");
        // Two backends launched 20 s ago serve the last 20 s of the 30: 8,000 of it.
        let two = d.growth(7000.0, 200.0, &booting(28, &[80 * S, 80 * S]), now);
        assert!(
            (two - (expected - 2.0 * 200.0 * 20.0)).abs() < 1e-6,
            "{two}"
        );
        // One launched just now serves none of it.
        let fresh = d.growth(7000.0, 200.0, &booting(28, &[now]), now);
        assert!((fresh - expected).abs() < 1e-6, "{fresh}");
        // Known only by counts: each starting backend is taken to serve half the boot time.
        let counted = d.growth(7000.0, 200.0, &FleetView::counts(28, 1, 1, 1000), now);
        assert!(
            (counted - (expected - 200.0 * 15.0)).abs() < 1e-6,
            "{counted}"
        );
        // Never below nothing.
        assert_eq!(d.growth(7000.0, 200.0, &booting(28, &[0; 10]), now), 0.0);
    }

    #[test]
    fn a_smooth_rise_is_left_to_the_lookahead_but_bursts_on_it_still_count() {
        // With 30 s boots a reaction is 31 s, over which a rise of 10/s per second (460/s
        // from the mean of the last reaction to the end of the next) passes the noise test.
        let c = Autoscaler {
            boot_time: HumanDuration::from_secs(30),
            ..cfg()
        };
        let (ramp, _) = fed(&c, 600, |t| 1000.0 + 10.0 * t as f64);
        let h = ramp.burst_headroom();
        assert!(h.windows >= MIN_BURST_WINDOWS, "{h:?}");
        assert_eq!(h.rate, 0.0, "the trend is no burst: {h:?}");
        // The same ramp with a 2,000/s burst for 5 s every minute: the bursts still count.
        let (bursty, _) = fed(&c, 600, |t| {
            1000.0 + 10.0 * t as f64 + if t % 60 < 5 { 2000.0 } else { 0.0 }
        });
        let b = bursty.burst_headroom();
        assert!(b.rate > 1000.0 && b.rate < 2500.0, "{b:?}");
        // The discount is the trend before the window, rising only: flat history, none.
        let (flat, _) = fed(&c, 200, |t| if t % 2 == 0 { 900.0 } else { 1100.0 });
        let rates: Vec<f64> = flat.history.iter().map(|&(_, r)| r).collect();
        let (prefix, moment) = prefix_sums(&rates);
        assert!(flat.trend_rise(&prefix, &moment, 100, 31).abs() < 20.0);
        let (falling, _) = fed(&c, 200, |t| 5000.0 - 10.0 * t as f64);
        let rates: Vec<f64> = falling.history.iter().map(|&(_, r)| r).collect();
        let (prefix, moment) = prefix_sums(&rates);
        assert_eq!(falling.trend_rise(&prefix, &moment, 100, 31), 0.0);
    }

    #[test]
    fn the_forecast_is_the_highest_panic_window_mean_ahead_not_the_noisiest_sample() {
        let c = Autoscaler {
            season: HumanDuration::from_secs(300),
            boot_time: HumanDuration::from_secs(30),
            ..cfg()
        };
        // 1,000/s with every fifth second at 1,400/s (noise-like spikes): the highest sample
        // ahead is 1,400, the highest 6 s mean 1,067 or 1,133 (one spike or two in the window).
        let (d, w) = fed(&c, 400, |t| if t % 5 == 0 { 1400.0 } else { 1000.0 });
        let f = d.forecast(&w, 399 * S).expect("a season of history");
        assert!(f.rate < 1150.0 && f.rate > 1000.0, "{f:?}");
    }
}
