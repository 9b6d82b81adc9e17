//! What a load run measured: counters, the HDR latency histogram, the per-second series, and the
//! report written as JSON, CSV and a summary table.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be made (refused, unreachable).
    Connect,
    /// No complete answer within `--timeout` of the request's scheduled time.
    Timeout,
    /// The answer was a 5xx.
    Status5xx,
    /// The answer was a 4xx.
    Status4xx,
    /// Anything else: the connection reset mid-request, a malformed answer.
    Other,
}

/// How one request ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A complete answer with this status, `latency_us` after the scheduled send time.
    Answered {
        /// The HTTP status.
        status: u16,
        /// From the scheduled send time to the last byte of the body.
        latency_us: u64,
        /// Body bytes received.
        bytes: u64,
    },
    /// No usable answer.
    Failed(ErrorKind),
}

/// Counts for one second of the run.
#[derive(Debug, Default)]
pub struct Second {
    /// Requests scheduled in this second.
    pub offered: u64,
    /// Successful answers (status < 400) that completed in this second.
    pub achieved: u64,
    /// Errors that happened in this second.
    pub errors: u64,
    /// Latencies of successful requests scheduled in this second.
    pub latency: Option<Histogram<u64>>,
    /// Active backends seen by the admin poll in this second.
    pub backends: Option<u32>,
}

/// Everything recorded during a run; shared behind a mutex between the request tasks.
#[derive(Debug)]
pub struct Recorder {
    /// Latency in microseconds of every successful request.
    pub latency: Histogram<u64>,
    /// Latency since the last progress line, for its live p99.
    pub recent: Histogram<u64>,
    /// Latency since the last `--hdr-log` interval, at full precision.
    pub interval: Histogram<u64>,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests for which sending began (a connection was had).
    pub sent: u64,
    /// Requests answered completely, any status.
    pub completed: u64,
    /// Requests answered with status < 400.
    pub ok: u64,
    /// Requests sent later than their schedule allowed, or never sent for want of a connection.
    pub late: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// The per-second series.
    pub seconds: Vec<Second>,
    /// Seconds from the start to the last answer or failure.
    pub last_done_s: f64,
}

/// An auto-resizing histogram of microseconds with `sigfig` significant digits.
pub(crate) fn new_histogram(sigfig: u8) -> Histogram<u64> {
    let mut h = Histogram::new(sigfig).expect("valid sigfig");
    h.auto(true);
    h
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        let mut errors = BTreeMap::new();
        for k in ["connect", "timeout", "status_5xx", "status_4xx", "other"] {
            errors.insert(k, 0);
        }
        Recorder {
            latency: new_histogram(3),
            recent: new_histogram(2),
            interval: new_histogram(3),
            scheduled: 0,
            sent: 0,
            completed: 0,
            ok: 0,
            late: 0,
            bytes: 0,
            errors,
            statuses: BTreeMap::new(),
            seconds: Vec::new(),
            last_done_s: 0.0,
        }
    }

    /// The counts of second `s`, created on first use.
    pub fn second(&mut self, s: usize) -> &mut Second {
        if self.seconds.len() <= s {
            self.seconds.resize_with(s + 1, Second::default);
        }
        &mut self.seconds[s]
    }

    /// A request was scheduled in second `s`.
    pub fn on_scheduled(&mut self, s: usize) {
        self.scheduled += 1;
        self.second(s).offered += 1;
    }

    /// A request scheduled in second `scheduled_s` ended in second `now_s`.
    pub fn on_outcome(&mut self, scheduled_s: usize, now_s: usize, outcome: Outcome) {
        let kind = match outcome {
            Outcome::Answered {
                status,
                latency_us,
                bytes,
            } => {
                self.completed += 1;
                self.bytes += bytes;
                *self.statuses.entry(status).or_default() += 1;
                if status < 400 {
                    self.ok += 1;
                    let v = latency_us.max(1);
                    let _ = self.latency.record(v);
                    let _ = self.recent.record(v);
                    let _ = self.interval.record(v);
                    self.second(now_s).achieved += 1;
                    let _ = self
                        .second(scheduled_s)
                        .latency
                        .get_or_insert_with(|| new_histogram(2))
                        .record(v);
                    return;
                }
                if status >= 500 {
                    ErrorKind::Status5xx
                } else {
                    ErrorKind::Status4xx
                }
            }
            Outcome::Failed(kind) => kind,
        };
        *self.errors.entry(kind_name(kind)).or_default() += 1;
        self.second(now_s).errors += 1;
    }

    /// Adds everything `other` recorded to this recorder (the workers' recorders at the end of a
    /// run, or the runs of several generators).
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        let _ = self.recent.add(&other.recent);
        let _ = self.interval.add(&other.interval);
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.completed += other.completed;
        self.ok += other.ok;
        self.late += other.late;
        self.bytes += other.bytes;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        for (i, o) in other.seconds.iter().enumerate() {
            let s = self.second(i);
            s.offered += o.offered;
            s.achieved += o.achieved;
            s.errors += o.errors;
            if let Some(h) = &o.latency {
                let _ = s.latency.get_or_insert_with(|| new_histogram(2)).add(h);
            }
            if o.backends.is_some() {
                s.backends = s.backends.max(o.backends);
            }
        }
        self.last_done_s = self.last_done_s.max(other.last_done_s);
    }

    /// All errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The JSON name of an error kind.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Connect => "connect",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Status5xx => "status_5xx",
        ErrorKind::Status4xx => "status_4xx",
        ErrorKind::Other => "other",
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LatencyMs {
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Fastest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl LatencyMs {
    /// The summary of a histogram in microseconds; zeros when empty.
    pub fn of(h: &Histogram<u64>) -> LatencyMs {
        if h.is_empty() {
            return LatencyMs::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencyMs {
            mean: h.mean() / 1000.0,
            stdev: h.stdev() / 1000.0,
            min: ms(h.min()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The latency at one percentile.
#[derive(Debug, Clone, Serialize)]
pub struct PercentilePoint {
    /// The percentile, 0 to 100.
    pub percentile: f64,
    /// Latency in milliseconds.
    pub ms: f64,
}

/// The percentiles of the report's table and spectrum.
const PERCENTILES: [f64; 13] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// One second of the series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// Seconds from the start.
    pub second: usize,
    /// Requests scheduled in this second.
    pub offered: u64,
    /// Successful answers completed in this second.
    pub achieved: u64,
    /// Errors in this second.
    pub errors: u64,
    /// Median latency of the successful requests scheduled in this second (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile of the same (ms).
    pub p99_ms: Option<f64>,
    /// Active backends per the admin API, when polled.
    pub backends: Option<u32>,
}

/// The report of a run, as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The URL the load went to.
    pub target: String,
    /// Method used.
    pub method: String,
    /// `open` (requests at scheduled times) or `closed` (back to back on each connection).
    pub mode: String,
    /// Connections of the engine (open loop: the most it could open); 0 when not a live run.
    pub connections: usize,
    /// Worker threads of the engine; 0 when not a live run.
    pub threads: usize,
    /// `http/1.1` or `h2c`; empty when not a live run.
    pub protocol: String,
    /// Concurrent requests per connection (HTTP/2 streams; 1 for HTTP/1.1).
    pub streams: usize,
    /// How the arrivals were made: the profile or the trace.
    pub schedule: String,
    /// Poisson or uniform (rate profiles only).
    pub arrivals: String,
    /// Length of the schedule in seconds.
    pub duration_s: f64,
    /// From the start to the last answer, in seconds.
    pub elapsed_s: f64,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests for which sending began.
    pub sent: u64,
    /// Requests answered completely (any status).
    pub completed: u64,
    /// Requests answered with status < 400.
    pub ok: u64,
    /// Requests that failed, of any kind.
    pub errors: u64,
    /// Errors over scheduled requests.
    pub error_ratio: f64,
    /// Requests sent later than `late_after_ms` after their scheduled time, or never sent.
    pub late: u64,
    /// The lateness that counts as late.
    pub late_after_ms: f64,
    /// Scheduled requests per second of the schedule.
    pub offered_rate: f64,
    /// Successful answers per second, over max(duration, elapsed).
    pub achieved_rate: f64,
    /// Body bytes received.
    pub bytes_received: u64,
    /// Latency of successful requests, from the scheduled send time.
    pub latency_ms: LatencyMs,
    /// The latency distribution: milliseconds at each percentile from 0 (min) to 100 (max).
    pub percentiles: Vec<PercentilePoint>,
    /// Errors by kind: connect, timeout, status_5xx, status_4xx, other.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Answers by status code.
    pub status_codes: BTreeMap<String, u64>,
    /// Per second.
    pub series: Vec<SeriesPoint>,
    /// The thresholds given (`--max-p99`, `--max-error-ratio`, ...) and whether each held.
    pub thresholds: Vec<Threshold>,
}

/// One pass/fail limit of a run, as k6's thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct Threshold {
    /// The option's name, e.g. `max-p99`.
    pub name: String,
    /// The limit (milliseconds for latencies, a ratio otherwise).
    pub limit: f64,
    /// What the run measured, in the same unit.
    pub value: f64,
    /// Whether the value stayed at or under the limit.
    pub ok: bool,
}

impl Threshold {
    /// A limit checked against a value.
    pub fn check(name: &str, limit: f64, value: f64) -> Threshold {
        Threshold {
            name: name.to_string(),
            limit,
            value,
            ok: value <= limit,
        }
    }
}

/// What the report needs besides the recorder.
pub struct RunInfo {
    /// Target URL.
    pub target: String,
    /// Method.
    pub method: String,
    /// Profile or trace description.
    pub schedule: String,
    /// Arrival process name.
    pub arrivals: String,
    /// Schedule length in seconds.
    pub duration_s: f64,
    /// Start to last answer in seconds.
    pub elapsed_s: f64,
    /// The late threshold in ms.
    pub late_after_ms: f64,
}

impl Report {
    /// Builds the report from what was recorded.
    pub fn build(rec: &Recorder, info: RunInfo) -> Report {
        let series = rec
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| SeriesPoint {
                second: i,
                offered: s.offered,
                achieved: s.achieved,
                errors: s.errors,
                p50_ms: s
                    .latency
                    .as_ref()
                    .map(|h| h.value_at_quantile(0.5) as f64 / 1000.0),
                p99_ms: s
                    .latency
                    .as_ref()
                    .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0),
                backends: s.backends,
            })
            .collect();
        let errors = rec.error_count();
        Report {
            target: info.target,
            method: info.method,
            mode: "open".into(),
            connections: 0,
            threads: 0,
            protocol: String::new(),
            streams: 0,
            schedule: info.schedule,
            arrivals: info.arrivals,
            duration_s: info.duration_s,
            elapsed_s: info.elapsed_s,
            scheduled: rec.scheduled,
            sent: rec.sent,
            completed: rec.completed,
            ok: rec.ok,
            errors,
            error_ratio: if rec.scheduled == 0 {
                0.0
            } else {
                errors as f64 / rec.scheduled as f64
            },
            late: rec.late,
            late_after_ms: info.late_after_ms,
            offered_rate: if info.duration_s > 0.0 {
                rec.scheduled as f64 / info.duration_s
            } else {
                0.0
            },
            achieved_rate: rec.ok as f64 / info.duration_s.max(info.elapsed_s).max(1e-9),
            bytes_received: rec.bytes,
            latency_ms: LatencyMs::of(&rec.latency),
            percentiles: if rec.latency.is_empty() {
                Vec::new()
            } else {
                PERCENTILES
                    .iter()
                    .map(|p| PercentilePoint {
                        percentile: *p,
                        ms: rec.latency.value_at_quantile(p / 100.0) as f64 / 1000.0,
                    })
                    .collect()
            },
            errors_by_kind: rec
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            status_codes: rec
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            series,
            thresholds: Vec::new(),
        }
    }

    /// The per-second series as CSV, with a header row.
    pub fn series_csv(&self) -> String {
        let mut out = String::from("second,offered,achieved,errors,p50_ms,p99_ms,backends\n");
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
        for p in &self.series {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{}",
                p.second,
                p.offered,
                p.achieved,
                p.errors,
                opt(p.p50_ms),
                opt(p.p99_ms),
                p.backends.map(|b| b.to_string()).unwrap_or_default()
            );
        }
        out
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut out = String::new();
        let _ = writeln!(out, "target        {} {}", self.method, self.target);
        let _ = writeln!(
            out,
            "schedule      {} ({} arrivals), {:.1}s",
            self.schedule, self.arrivals, self.duration_s
        );
        if self.connections > 0 {
            let _ = writeln!(
                out,
                "engine        {} loop, {}, {} connections{} on {} threads",
                self.mode,
                self.protocol,
                self.connections,
                if self.streams > 1 {
                    format!(" x {} streams", self.streams)
                } else {
                    String::new()
                },
                self.threads
            );
        }
        let _ = writeln!(
            out,
            "requests      scheduled {}  sent {}  completed {}  ok {}  late {}",
            self.scheduled, self.sent, self.completed, self.ok, self.late
        );
        let _ = writeln!(
            out,
            "rate          offered {:.1}/s  achieved {:.1}/s  (elapsed {:.1}s)",
            self.offered_rate, self.achieved_rate, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "latency ms    mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        let kinds: Vec<String> = self
            .errors_by_kind
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "errors        {} ({:.2}%){}{}",
            self.errors,
            self.error_ratio * 100.0,
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", ")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_land_in_the_right_counters() {
        let mut r = Recorder::new();
        r.on_scheduled(0);
        r.on_scheduled(0);
        r.on_scheduled(1);
        r.sent = 3;
        r.on_outcome(
            0,
            0,
            Outcome::Answered {
                status: 200,
                latency_us: 10_000,
                bytes: 3,
            },
        );
        r.on_outcome(
            0,
            1,
            Outcome::Answered {
                status: 503,
                latency_us: 1,
                bytes: 0,
            },
        );
        r.on_outcome(1, 1, Outcome::Failed(ErrorKind::Timeout));
        let rep = Report::build(
            &r,
            RunInfo {
                target: "http://x/".into(),
                method: "GET".into(),
                schedule: "const:3".into(),
                arrivals: "poisson".into(),
                duration_s: 2.0,
                elapsed_s: 1.5,
                late_after_ms: 5.0,
            },
        );
        assert_eq!((rep.completed, rep.ok, rep.errors), (2, 1, 2), "{rep:?}");
        assert_eq!(rep.errors_by_kind["status_5xx"], 1);
        assert_eq!(rep.errors_by_kind["timeout"], 1);
        assert!((rep.latency_ms.p50 - 10.0).abs() < 0.01);
        assert_eq!(rep.series.len(), 2);
        assert_eq!(rep.series[1].errors, 2);
        assert!((rep.achieved_rate - 0.5).abs() < 1e-9);
        let csv = rep.series_csv();
        assert_eq!(csv.lines().count(), 3);
        assert!(rep.table().contains("p99"));
    }
}
