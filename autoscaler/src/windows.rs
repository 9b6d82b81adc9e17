//! Signal windows: time-weighted averages of the balancer's signals over a long (stable) and a
//! short (panic) window, so deciders react to sustained load on one and to spikes on the other.
//!
//! Observations are samples: each holds from its time until the next one (sample-and-hold), and
//! the newest holds for as long as the gap before it (one more sampling period), or until `now`
//! if that is later (stale data keeps its last value). A window therefore ends where the newest
//! sample's hold ends: a decision taken at the instant of the newest sample already counts it,
//! and with samples every second a 6s window averages the last six. Parts older than the window
//! fall out; observations wholly older than the stable window are dropped on arrival of newer
//! ones, so memory is bounded by the stable window / sampling interval.

use ebbtide_config::time::Nanos;
use serde::Serialize;
use std::collections::VecDeque;

/// One sample of the balancer's signals, whole fleet. `None` marks a metric that is missing (no
/// completed request to take a percentile of, no backend reporting its service rate).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Observation {
    /// When it was taken.
    pub at: Nanos,
    /// Requests in flight at backends plus queued in the balancer.
    pub concurrency: f64,
    /// Requests arriving per second.
    pub arrival_rate: f64,
    /// Requests completed per second.
    pub completion_rate: f64,
    /// Requests waiting in the balancer for a free backend.
    pub queue_depth: f64,
    /// p99 latency as clients see it, milliseconds.
    pub p99_ms: Option<f64>,
    /// Completions per second one backend manages with all its workers busy (measured, e.g.
    /// workers / mean service time).
    pub service_rate_per_backend: Option<f64>,
    /// Active backends whose numbers are in this sample.
    pub ready: u32,
    /// Backends launched and not yet ready.
    pub starting: u32,
}

/// Time-weighted averages over one window; `None` when the window holds no value of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct WindowAverages {
    /// Start of the part of the window that observations cover.
    pub from: Nanos,
    /// End of the window (the newest sample's hold, or now).
    pub to: Nanos,
    /// Requests in flight plus queued.
    pub concurrency: Option<f64>,
    /// Requests arriving per second.
    pub arrival_rate: Option<f64>,
    /// Requests completed per second.
    pub completion_rate: Option<f64>,
    /// Requests waiting in the balancer.
    pub queue_depth: Option<f64>,
    /// p99 latency, milliseconds, over the time it was reported.
    pub p99_ms: Option<f64>,
    /// Completions per second of one fully busy backend, over the time it was reported.
    pub service_rate_per_backend: Option<f64>,
    /// Active backends.
    pub ready: Option<f64>,
    /// Backends booting.
    pub starting: Option<f64>,
}

impl WindowAverages {
    /// The covered time, nanoseconds: shorter than the window until enough samples arrived.
    pub fn covered(&self) -> Nanos {
        self.to - self.from
    }

    /// The middle of the covered time: where a linear trend equals the window's average.
    pub fn centre(&self) -> f64 {
        (self.from as f64 + self.to as f64) / 2.0
    }
}

/// The recent observations and the two window lengths deciders read them over.
#[derive(Debug, Clone)]
pub struct Windows {
    stable: Nanos,
    panic: Nanos,
    /// How much history is kept: the stable window, or a longer window a decider reads
    /// (`target_tracking`'s `metric_window`).
    keep: Nanos,
    samples: VecDeque<Observation>,
}

impl Windows {
    /// Windows of the given lengths; the panic window should be the shorter one.
    pub fn new(stable: Nanos, panic: Nanos) -> Windows {
        Windows {
            stable: stable.max(1),
            panic: panic.max(1),
            keep: stable.max(1),
            samples: VecDeque::new(),
        }
    }

    /// The windows `[autoscaler]` configures, keeping history for the longest of them, so that
    /// a `metric_window` longer than the stable window is read whole.
    pub fn from_config(cfg: &ebbtide_config::autoscaler::Autoscaler) -> Windows {
        let mut w = Windows::new(cfg.stable_window.as_nanos(), cfg.panic_window.as_nanos());
        w.keep = w.stable.max(cfg.metric_window.as_nanos());
        w
    }

    /// Length of the stable window.
    pub fn stable_length(&self) -> Nanos {
        self.stable
    }

    /// Length of the panic window.
    pub fn panic_length(&self) -> Nanos {
        self.panic
    }

    /// Adds a sample. One older than the newest is ignored (the clock does not go back); one at
    /// the same time as the newest replaces it.
    pub fn observe(&mut self, obs: Observation) {
        match self.samples.back() {
            Some(last) if obs.at < last.at => return,
            Some(last) if obs.at == last.at => {
                self.samples.pop_back();
            }
            _ => {}
        }
        self.samples.push_back(obs);
        let horizon = obs.at.saturating_sub(self.keep);
        while self.samples.len() >= 2 && self.samples[1].at <= horizon {
            self.samples.pop_front();
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Observation> {
        self.samples.back()
    }

    /// Samples kept (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing has been observed yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Averages over the stable window ending now.
    pub fn stable(&self, now: Nanos) -> WindowAverages {
        self.over(self.stable, now)
    }

    /// Averages over the panic window ending now.
    pub fn panic(&self, now: Nanos) -> WindowAverages {
        self.over(self.panic, now)
    }

    /// Where the window ending at `now` ends: the newest sample's hold, or now.
    fn end(&self, now: Nanos) -> Nanos {
        let n = self.samples.len();
        match n {
            0 => now,
            1 => now.max(self.samples[0].at),
            _ => {
                let last = self.samples[n - 1].at;
                let gap = last - self.samples[n - 2].at;
                now.max(last.saturating_add(gap))
            }
        }
    }

    /// Averages over a window of `length` (at most the stable window's worth is kept, or the
    /// metric window's when longer).
    pub fn over(&self, length: Nanos, now: Nanos) -> WindowAverages {
        let to = self.end(now);
        let start = to.saturating_sub(length);
        let from = self
            .samples
            .front()
            .map_or(to, |first| first.at.clamp(start, to));
        WindowAverages {
            from,
            to,
            concurrency: self.average_by(length, now, |o| Some(o.concurrency)),
            arrival_rate: self.average_by(length, now, |o| Some(o.arrival_rate)),
            completion_rate: self.average_by(length, now, |o| Some(o.completion_rate)),
            queue_depth: self.average_by(length, now, |o| Some(o.queue_depth)),
            p99_ms: self.average_by(length, now, |o| o.p99_ms),
            service_rate_per_backend: self.average_by(length, now, |o| o.service_rate_per_backend),
            ready: self.average_by(length, now, |o| Some(o.ready as f64)),
            starting: self.average_by(length, now, |o| Some(o.starting as f64)),
        }
    }

    /// The time-weighted average of any quantity derived from samples (e.g. concurrency per
    /// ready backend) over a window of `length` ending now, counting only the time where it is
    /// present and finite. A window of zero length (a single sample, taken now) gives that
    /// sample's value.
    pub fn average_by(
        &self,
        length: Nanos,
        now: Nanos,
        value: impl Fn(&Observation) -> Option<f64>,
    ) -> Option<f64> {
        let to = self.end(now);
        let start = to.saturating_sub(length);
        let mut weighted = 0.0;
        let mut weight = 0.0;
        for (seg_start, seg_end, v) in self.segments(start, to, &value) {
            let w = (seg_end - seg_start) as f64;
            weighted += v * w;
            weight += w;
        }
        if weight > 0.0 {
            Some(weighted / weight)
        } else {
            self.samples
                .back()
                .filter(|last| last.at >= start)
                .and_then(&value)
                .filter(|v| v.is_finite())
        }
    }

    /// The least-squares slope (units per second) of a quantity over a window of `length`
    /// ending now, fitted to the piecewise-constant signal itself (each sample weighted by the
    /// time it holds): how fast it has been changing, for looking ahead. `None` with less than
    /// two samples of it in the window.
    pub fn trend_by(
        &self,
        length: Nanos,
        now: Nanos,
        value: impl Fn(&Observation) -> Option<f64>,
    ) -> Option<f64> {
        let to = self.end(now);
        let start = to.saturating_sub(length);
        // Moments of the signal over its segments, time in seconds before `to`.
        let (mut s1, mut st, mut stt, mut sy, mut sty) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut segments = 0;
        for (seg_start, seg_end, y) in self.segments(start, to, &value) {
            let a = -((to - seg_start) as f64 / 1e9);
            let b = -((to - seg_end) as f64 / 1e9);
            let w = b - a;
            let m = (a + b) / 2.0;
            s1 += w;
            st += w * m;
            stt += w * (m * m + w * w / 12.0);
            sy += w * y;
            sty += w * y * m;
            segments += 1;
        }
        if segments < 2 {
            return None;
        }
        let var = stt - st * st / s1;
        if var <= 0.0 {
            return None;
        }
        Some((sty - st * sy / s1) / var)
    }

    /// The part of `start..to` that each sample holds (until the next sample, the newest until
    /// `to`), with the sample's `value`, oldest first: `(from, until, value)` for the samples
    /// whose part is not empty and whose value is present and finite.
    fn segments<'a, F>(
        &'a self,
        start: Nanos,
        to: Nanos,
        value: &'a F,
    ) -> impl Iterator<Item = (Nanos, Nanos, f64)> + 'a
    where
        F: Fn(&Observation) -> Option<f64>,
    {
        self.samples
            .iter()
            .enumerate()
            .filter_map(move |(i, sample)| {
                let seg_end = self.samples.get(i + 1).map_or(to, |next| next.at).min(to);
                let seg_start = sample.at.max(start);
                if seg_end <= seg_start {
                    return None;
                }
                let v = value(sample).filter(|v| v.is_finite())?;
                Some((seg_start, seg_end, v))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn obs(at_s: u64, concurrency: f64) -> Observation {
        Observation {
            at: at_s * S,
            concurrency,
            arrival_rate: concurrency * 10.0,
            ready: 2,
            ..Default::default()
        }
    }

    #[test]
    fn single_sample_counts_at_once() {
        let mut w = Windows::new(60 * S, 6 * S);
        assert_eq!(w.stable(0).concurrency, None);
        w.observe(obs(0, 5.0));
        assert_eq!(w.stable(0).concurrency, Some(5.0));
        assert_eq!(w.panic(0).arrival_rate, Some(50.0));
        assert_eq!(w.panic(0).p99_ms, None);
    }

    #[test]
    fn each_sample_holds_until_the_next_and_the_newest_for_one_more_gap() {
        let mut w = Windows::new(60 * S, 6 * S);
        // 1 for 3s, then 10 for 1s (the newest holds one more second).
        for t in 0..3 {
            w.observe(obs(t, 1.0));
        }
        w.observe(obs(3, 10.0));
        let avg = w.stable(3 * S);
        assert_eq!(avg.covered(), 4 * S);
        assert!((avg.concurrency.unwrap() - (3.0 + 10.0) / 4.0).abs() < 1e-12);
        // Uneven spacing weighs by time, not by count: 1 for 9s then 10 for 1s.
        let mut w = Windows::new(60 * S, 6 * S);
        w.observe(obs(0, 1.0));
        w.observe(obs(9, 10.0)); // holds 9s more: gap before it
        let avg = w.over(18 * S, 9 * S);
        assert!((avg.concurrency.unwrap() - (9.0 + 90.0) / 18.0).abs() < 1e-12);
    }

    #[test]
    fn old_parts_fall_out_of_the_window() {
        let mut w = Windows::new(60 * S, 6 * S);
        for t in 0..100 {
            w.observe(obs(t, if t < 94 { 1.0 } else { 7.0 }));
        }
        // Panic window: the last six samples, all 7.
        assert_eq!(w.panic(99 * S).concurrency, Some(7.0));
        // Stable window: 54 of 1 and 6 of 7.
        let s = w.stable(99 * S).concurrency.unwrap();
        assert!((s - (54.0 + 42.0) / 60.0).abs() < 1e-12, "{s}");
        // Memory stays bounded by the stable window.
        assert!(w.len() <= 62, "{}", w.len());
    }

    #[test]
    fn a_metric_window_longer_than_the_stable_window_is_kept_whole() {
        let cfg = ebbtide_config::autoscaler::Autoscaler {
            stable_window: ebbtide_config::time::HumanDuration::from_secs(4),
            panic_window: ebbtide_config::time::HumanDuration::from_secs(2),
            metric_window: ebbtide_config::time::HumanDuration::from_secs(15),
            ..Default::default()
        };
        let mut w = Windows::from_config(&cfg);
        for t in 0..30 {
            w.observe(obs(t, if t < 20 { 1.0 } else { 4.0 }));
        }
        // 15 s ending at 30 s: 5 of 1 and 10 of 4.
        let m = w
            .average_by(15 * S, 29 * S, |o| Some(o.concurrency))
            .unwrap();
        assert!((m - (5.0 + 40.0) / 15.0).abs() < 1e-12, "{m}");
        assert_eq!(w.stable(29 * S).concurrency, Some(4.0));
        assert!(w.len() <= 17, "{}", w.len());
    }

    #[test]
    fn a_stale_sample_holds_until_now() {
        let mut w = Windows::new(60 * S, 6 * S);
        w.observe(obs(0, 1.0));
        w.observe(obs(1, 3.0));
        // Nothing new for 20s: the last value fills the panic window.
        assert_eq!(w.panic(21 * S).concurrency, Some(3.0));
        let s = w.stable(21 * S);
        assert_eq!(s.covered(), 21 * S);
        assert!((s.concurrency.unwrap() - (1.0 + 60.0) / 21.0).abs() < 1e-12);
    }

    #[test]
    fn missing_metrics_average_over_the_time_they_were_present() {
        let mut w = Windows::new(60 * S, 6 * S);
        for t in 0..6 {
            let mut o = obs(t, 1.0);
            o.p99_ms = if t % 2 == 0 {
                Some(100.0 * (t + 1) as f64)
            } else {
                None
            };
            w.observe(o);
        }
        // Present at t = 0, 2, 4 for 1s each: (100 + 300 + 500) / 3.
        assert_eq!(w.panic(5 * S).p99_ms, Some(300.0));
        assert_eq!(w.panic(5 * S).service_rate_per_backend, None);
    }

    #[test]
    fn out_of_order_samples_are_ignored_and_same_time_replaces() {
        let mut w = Windows::new(60 * S, 6 * S);
        w.observe(obs(5, 1.0));
        w.observe(obs(3, 100.0));
        assert_eq!(w.len(), 1);
        w.observe(obs(5, 2.0));
        assert_eq!(w.len(), 1);
        assert_eq!(w.latest().unwrap().concurrency, 2.0);
    }

    #[test]
    fn trend_fits_a_ramp_and_is_zero_for_a_flat_signal() {
        let mut w = Windows::new(60 * S, 6 * S);
        for t in 0..100 {
            let mut o = obs(t, 1.0);
            o.arrival_rate = 10.0 + 2.0 * t as f64;
            w.observe(o);
        }
        // The samples make a staircase under the line; its slope is 2 (1 - 1/N^2) for N steps.
        let slope = w
            .trend_by(60 * S, 99 * S, |o| Some(o.arrival_rate))
            .unwrap();
        assert!((slope - 2.0 * (1.0 - 1.0 / 3600.0)).abs() < 1e-9, "{slope}");
        let flat = w.trend_by(60 * S, 99 * S, |o| Some(o.concurrency)).unwrap();
        assert!(flat.abs() < 1e-12);
        assert_eq!(w.trend_by(60 * S, 99 * S, |o| o.p99_ms), None);
        let mut one = Windows::new(60 * S, 6 * S);
        one.observe(obs(0, 1.0));
        assert_eq!(one.trend_by(60 * S, 0, |o| Some(o.concurrency)), None);
    }

    #[test]
    fn derived_quantities_average_per_sample() {
        let mut w = Windows::new(60 * S, 6 * S);
        let mut a = obs(0, 8.0);
        a.ready = 2; // 4 per backend
        let mut b = obs(1, 8.0);
        b.ready = 4; // 2 per backend
        w.observe(a);
        w.observe(b);
        let per = w.average_by(6 * S, S, |o| Some(o.concurrency / o.ready as f64));
        assert_eq!(per, Some(3.0));
    }
}
