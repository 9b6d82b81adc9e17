//! HdrHistogram interval logs (`--hdr-log FILE`) and `ebbtide load merge`.
//!
//! A run writes one interval histogram per second of completions: the latencies (microseconds,
//! from each request's scheduled time, 3 significant digits) of the successful requests that
//! completed in that second, in the format of HdrHistogram's `HistogramLogWriter` (V2 compressed,
//! base64), with `StartTime` and `BaseTime` the run's start in seconds since the epoch (the max
//! column is in microseconds too). Java's
//! `HistogramLogProcessor` and the other HdrHistogram tools read it. At the end the log gets one
//! comment line, `#ebbtide-load-summary: {json}`, with the counters an interval histogram does not
//! hold (scheduled, late, errors by kind, status codes, offered requests per second).
//!
//! Merging adds the intervals of every log: histograms of the same precision add exactly, so the
//! merged percentiles are those of the union of all the runs' requests, as if one generator had
//! sent them all; intervals are aligned by their wall-clock time.

use super::report::{new_histogram, Recorder};
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

/// The comment line that carries a run's counters.
const SUMMARY: &str = "ebbtide-load-summary: ";

/// What a log's summary line holds: the counters of [`Recorder`] that are not latencies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) target: String,
    pub(crate) method: String,
    pub(crate) mode: String,
    pub(crate) duration_s: f64,
    pub(crate) elapsed_s: f64,
    pub(crate) late_after_ms: f64,
    pub(crate) scheduled: u64,
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    pub(crate) ok: u64,
    pub(crate) late: u64,
    pub(crate) bytes: u64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    /// Requests scheduled in each second of the run.
    pub(crate) offered: Vec<u64>,
    /// Errors in each second of the run.
    pub(crate) errors_per_second: Vec<u64>,
}

impl Summary {
    pub(crate) fn of(rec: &Recorder) -> Summary {
        Summary {
            scheduled: rec.scheduled,
            sent: rec.sent,
            completed: rec.completed,
            ok: rec.ok,
            late: rec.late,
            bytes: rec.bytes,
            errors: rec
                .errors
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            statuses: rec.statuses.clone(),
            offered: rec.seconds.iter().map(|s| s.offered).collect(),
            errors_per_second: rec.seconds.iter().map(|s| s.errors).collect(),
            elapsed_s: rec.last_done_s,
            ..Summary::default()
        }
    }
}

/// Writes an interval log: the header at once, then one interval per [`HdrLog::interval`] call.
pub(crate) struct HdrLog<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
    /// Seconds since the base time where the next interval starts.
    next_start: Duration,
    /// The header, written with the first interval.
    builder: Option<IntervalLogWriterBuilder>,
}

impl<W: Write> HdrLog<W> {
    /// A log whose intervals count from `base` (the run's start).
    pub(crate) fn new(out: W, base: SystemTime) -> HdrLog<W> {
        let mut builder = IntervalLogWriterBuilder::new();
        builder
            .add_comment("ebbtide load: latency in microseconds from each request's scheduled send time, successful requests, by completion second")
            .with_start_time(base)
            .with_base_time(base);
        HdrLog {
            out,
            serializer: V2DeflateSerializer::new(),
            next_start: Duration::ZERO,
            builder: Some(builder),
        }
    }

    /// Appends the interval from the end of the last one to `end` (since the base time).
    pub(crate) fn interval(&mut self, h: &Histogram<u64>, end: Duration) -> Result<(), String> {
        let start = self.next_start;
        // The header goes with the first interval; later ones start from an empty builder.
        let builder = self.builder.take().unwrap_or_default();
        let mut w = builder
            .begin_log_with(&mut self.out, &mut self.serializer)
            .map_err(|e| e.to_string())?;
        w.write_histogram(h, start, end.saturating_sub(start), None)
            .map_err(|e| format!("{e}"))?;
        self.next_start = end;
        Ok(())
    }

    /// Writes the summary line and flushes.
    pub(crate) fn finish(mut self, summary: &Summary) -> Result<(), String> {
        let json = serde_json::to_string(summary).map_err(|e| e.to_string())?;
        writeln!(self.out, "#{SUMMARY}{json}").map_err(|e| e.to_string())?;
        self.out.flush().map_err(|e| e.to_string())
    }
}

/// One log read back.
pub(crate) struct ReadLog {
    /// Seconds since the epoch that the intervals count from.
    pub(crate) base_s: f64,
    /// (start since base, histogram) of every interval.
    pub(crate) intervals: Vec<(f64, Histogram<u64>)>,
    pub(crate) summary: Option<Summary>,
}

/// Parses an interval log written by `--hdr-log` (or any HdrHistogram interval log, then without
/// a summary).
pub(crate) fn read(text: &str, name: &str) -> Result<ReadLog, String> {
    let mut base_s = None;
    let mut intervals = Vec::new();
    let mut deserializer = Deserializer::new();
    for entry in IntervalLogIterator::new(text.as_bytes()) {
        match entry.map_err(|e| format!("{name}: not an HdrHistogram interval log ({e:?})"))? {
            LogEntry::BaseTime(t) => base_s = Some(t.as_secs_f64()),
            LogEntry::StartTime(_) => {}
            LogEntry::Interval(i) => {
                let bytes = base64_decode(i.encoded_histogram())
                    .ok_or_else(|| format!("{name}: bad base64 in an interval"))?;
                let h: Histogram<u64> = deserializer
                    .deserialize(&mut &bytes[..])
                    .map_err(|e| format!("{name}: bad histogram: {e:?}"))?;
                intervals.push((i.start_timestamp().as_secs_f64(), h));
            }
        }
    }
    let summary = text
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.strip_prefix(SUMMARY))
        .next_back()
        .map(|j| serde_json::from_str(j).map_err(|e| format!("{name}: bad summary line: {e}")))
        .transpose()?;
    Ok(ReadLog {
        // Without a BaseTime, interval timestamps are absolute.
        base_s: base_s.unwrap_or(0.0),
        intervals,
        summary,
    })
}

/// The recorder that several logs add up to, and the summaries' description of the runs.
pub(crate) fn merge(logs: &[ReadLog]) -> (Recorder, Summary) {
    let mut rec = Recorder::new();
    let mut all = Summary::default();
    let origin = logs.iter().map(|l| l.base_s).fold(f64::INFINITY, f64::min);
    let origin = if origin.is_finite() { origin } else { 0.0 };
    let mut targets: Vec<String> = Vec::new();
    let mut methods: Vec<String> = Vec::new();
    let mut modes: Vec<String> = Vec::new();
    for log in logs {
        let shift = log.base_s - origin;
        for (start, h) in &log.intervals {
            let _ = rec.latency.add(h);
            let s = (shift + start).max(0.0) as usize;
            let second = rec.second(s);
            second.achieved += h.len();
            let _ = second
                .latency
                .get_or_insert_with(|| new_histogram(2))
                .add(h);
        }
        let Some(sum) = &log.summary else {
            // A foreign log: its intervals are all there is.
            let n: u64 = log.intervals.iter().map(|(_, h)| h.len()).sum();
            rec.scheduled += n;
            rec.sent += n;
            rec.completed += n;
            rec.ok += n;
            continue;
        };
        rec.scheduled += sum.scheduled;
        rec.sent += sum.sent;
        rec.completed += sum.completed;
        rec.ok += sum.ok;
        rec.late += sum.late;
        rec.bytes += sum.bytes;
        for (k, v) in &sum.errors {
            if let Some(key) = rec.errors.keys().find(|x| **x == k.as_str()).copied() {
                *rec.errors.entry(key).or_default() += v;
            }
        }
        for (k, v) in &sum.statuses {
            *rec.statuses.entry(*k).or_default() += v;
        }
        let off = shift.max(0.0).round() as usize;
        for (i, n) in sum.offered.iter().enumerate() {
            rec.second(off + i).offered += n;
        }
        for (i, n) in sum.errors_per_second.iter().enumerate() {
            rec.second(off + i).errors += n;
        }
        rec.last_done_s = rec.last_done_s.max(shift + sum.elapsed_s);
        all.duration_s = all.duration_s.max(shift + sum.duration_s);
        all.late_after_ms = all.late_after_ms.max(sum.late_after_ms);
        for (list, v) in [
            (&mut targets, &sum.target),
            (&mut methods, &sum.method),
            (&mut modes, &sum.mode),
        ] {
            if !list.contains(v) {
                list.push(v.clone());
            }
        }
    }
    if all.duration_s == 0.0 {
        all.duration_s = rec.seconds.len() as f64;
    }
    all.target = targets.join(", ");
    all.method = methods.join(", ");
    all.mode = modes.join(", ");
    (rec, all)
}

/// Standard base64 (with or without padding) to bytes; None on a character outside it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebbtide_config::rng::Rng;

    fn random_histogram(rng: &mut Rng, n: usize, scale: f64) -> Histogram<u64> {
        let mut h = new_histogram(3);
        for _ in 0..n {
            let _ = h.record((rng.exp(1.0) * scale) as u64 + 1);
        }
        h
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert!(base64_decode("Zm9v*").is_none());
    }

    /// Two generators' logs, each of several intervals, merge into exactly the union of their
    /// histograms: every percentile, the count, min, max and mean.
    #[test]
    fn merged_logs_are_the_exact_union() {
        let mut rng = Rng::new(7);
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut union = new_histogram(3);
        let mut logs = Vec::new();
        for g in 0..2u64 {
            let mut out = Vec::new();
            let mut log = HdrLog::new(&mut out, base + Duration::from_millis(300 * g));
            let mut rec = Recorder::new();
            for s in 1..=5u64 {
                let h = random_histogram(&mut rng, 2000, 10_000.0 * (g + 1) as f64);
                union.add(&h).unwrap();
                rec.latency.add(&h).unwrap();
                log.interval(&h, Duration::from_secs(s)).unwrap();
            }
            rec.scheduled = 10_000;
            rec.ok = 10_000;
            log.finish(&Summary::of(&rec)).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("#[BaseTime: "), "{text}");
            assert_eq!(text.matches("#[BaseTime").count(), 1, "{text}");
            logs.push(read(&text, "test").unwrap());
        }
        assert_eq!(logs[0].intervals.len(), 5);
        let (merged, _) = merge(&logs);
        assert_eq!(merged.latency.len(), union.len());
        assert_eq!(merged.scheduled, 20_000);
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.latency.value_at_quantile(q),
                union.value_at_quantile(q),
                "quantile {q}"
            );
        }
        assert_eq!(merged.latency.mean(), union.mean());
        // Aligned by wall clock: the second generator started 0.3 s later.
        let achieved: u64 = merged.seconds.iter().map(|s| s.achieved).sum();
        assert_eq!(achieved, 20_000);
    }
}
