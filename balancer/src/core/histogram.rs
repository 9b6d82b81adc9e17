//! A cumulative latency histogram for Prometheus (`ebbtide_request_duration_seconds`).
//!
//! Unlike [`crate::signals::SignalWindow`], which forgets everything older than its window, this
//! one only grows: Prometheus computes rates and quantiles itself from cumulative `le` buckets.
//! Recording is two `Relaxed` atomic adds (one bucket, the sum), lock-free and allocation-free.
//! The `_count` and the `+Inf` bucket are derived from the bucket counters at render time, so they
//! always agree; `_sum` is read separately and may be a few observations ahead or behind under
//! concurrent recording, which Prometheus tolerates.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The finite bucket upper bounds (`le`, inclusive), as nanoseconds and as the label text:
/// 0.5 ms to 30 s, roughly 1-2.5-5 per decade, which suits a web service from cache hits to
/// timeouts. Kept as text so labels are stable and never depend on float formatting.
const BOUNDS: [(u64, &str); 15] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
    (30_000_000_000, "30"),
];

/// A cumulative Prometheus histogram of latencies, safe to share between every connection task.
/// `_sum` is kept in whole microseconds (each observation rounded to the nearest one), so that a
/// `u64` lasts decades even at 10^4 seconds of latency per second.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per-bucket (non-cumulative) counts; the last one is `+Inf` only.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram; allocate once and share (`Arc` or a `static`).
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)] // only used to build the array
        const ZERO: AtomicU64 = AtomicU64::new(0);
        LatencyHistogram {
            buckets: [ZERO; BOUNDS.len() + 1],
            sum_us: ZERO,
        }
    }

    /// Records one request's latency. A latency equal to a bound counts in that bound's bucket
    /// (`le` is inclusive).
    #[inline]
    pub fn observe(&self, latency_ns: u64) {
        let index = BOUNDS.partition_point(|&(bound, _)| bound < latency_ns);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency_ns.saturating_add(500) / 1_000, Ordering::Relaxed);
    }

    /// Appends the histogram to `out` in the Prometheus text exposition format: `# HELP`,
    /// `# TYPE name histogram`, cumulative `name_bucket{le="..."}` lines ending with `+Inf`,
    /// `name_sum` in seconds and `name_count`. `help` is escaped as the format requires.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('\n');
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BOUNDS.get(i).map_or("+Inf", |&(_, label)| label);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum_seconds = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum_seconds}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// What a scraper reads back from [`LatencyHistogram::render`].
    #[derive(Debug)]
    struct Parsed {
        help: String,
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    }

    /// A strict little parser for one histogram family: fails the test on any line that is not
    /// exactly what the exposition format allows, in the order it requires.
    fn parse(name: &str, text: &str) -> Parsed {
        let mut lines = text.lines();
        let help = lines
            .next()
            .and_then(|l| l.strip_prefix(&format!("# HELP {name} ")))
            .expect("HELP line first")
            .to_string();
        assert_eq!(
            lines.next(),
            Some(format!("# TYPE {name} histogram").as_str())
        );
        let mut buckets = Vec::new();
        let mut sum = None;
        let mut count = None;
        for line in lines {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            if let Some(labels) = series.strip_prefix(&format!("{name}_bucket")) {
                assert!(
                    sum.is_none() && count.is_none(),
                    "buckets come first: {line}"
                );
                let le = labels
                    .strip_prefix("{le=\"")
                    .and_then(|l| l.strip_suffix("\"}"))
                    .expect("only an le label");
                let le: f64 = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a float")
                };
                buckets.push((le, value.parse().expect("bucket count is an integer")));
            } else if series == format!("{name}_sum") {
                sum = Some(value.parse().expect("sum is a float"));
            } else if series == format!("{name}_count") {
                count = Some(value.parse().expect("count is an integer"));
            } else {
                panic!("unexpected line {line:?}");
            }
        }
        Parsed {
            help,
            buckets,
            sum: sum.expect("a _sum line"),
            count: count.expect("a _count line"),
        }
    }

    fn count_at(parsed: &Parsed, le: f64) -> u64 {
        parsed.buckets.iter().find(|(b, _)| *b == le).unwrap().1
    }

    #[test]
    fn renders_a_well_formed_cumulative_histogram() {
        let h = LatencyHistogram::new();
        // 1..=2000 ms, one each: sum = 2001 s, count = 2000.
        for ms in 1..=2_000u64 {
            h.observe(ms * MS);
        }
        h.observe(45_000 * MS); // beyond the last finite bound
        let mut out = String::new();
        h.render(
            "ebbtide_request_duration_seconds",
            "End to end latency.",
            &mut out,
        );
        let p = parse("ebbtide_request_duration_seconds", &out);

        assert_eq!(p.help, "End to end latency.");
        assert_eq!(p.buckets.len(), 16);
        for pair in p.buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "le strictly increasing: {pair:?}");
            assert!(pair[0].1 <= pair[1].1, "counts cumulative: {pair:?}");
        }
        let (last_le, last_count) = *p.buckets.last().unwrap();
        assert_eq!(last_le, f64::INFINITY);
        assert_eq!(last_count, p.count);
        assert_eq!(p.count, 2_001);
        assert!((p.sum - (2_001.0 + 45.0)).abs() < 1e-9, "sum {}", p.sum);

        // Bounds are inclusive: 1 ms is in le="0.001", 2 ms is not.
        assert_eq!(count_at(&p, 0.0005), 0);
        assert_eq!(count_at(&p, 0.001), 1);
        assert_eq!(count_at(&p, 0.0025), 2);
        assert_eq!(count_at(&p, 0.1), 100);
        assert_eq!(count_at(&p, 1.0), 1_000);
        assert_eq!(count_at(&p, 2.5), 2_000);
        assert_eq!(count_at(&p, 30.0), 2_000);
    }

    #[test]
    fn empty_histogram_renders_zeros() {
        let mut out = String::new();
        LatencyHistogram::default().render("x_seconds", "h", &mut out);
        let p = parse("x_seconds", &out);
        assert!(p.buckets.iter().all(|&(_, n)| n == 0));
        assert_eq!((p.count, p.sum), (0, 0.0));
    }

    #[test]
    fn sub_millisecond_values_and_sum_rounding() {
        let h = LatencyHistogram::new();
        h.observe(0);
        h.observe(499_999); // 0.5 ms - 1 ns: rounds to 500 µs in the sum
        h.observe(500_000);
        h.observe(500_001);
        let mut out = String::new();
        h.render("y_seconds", "h", &mut out);
        let p = parse("y_seconds", &out);
        assert_eq!(count_at(&p, 0.0005), 3);
        assert_eq!(count_at(&p, 0.001), 4);
        assert!((p.sum - 0.0015).abs() < 1e-12, "sum {}", p.sum);
    }

    #[test]
    fn help_is_escaped_and_appends_to_existing_output() {
        let h = LatencyHistogram::new();
        let mut out = String::from("# existing\n");
        h.render("z_seconds", "a\\b\nc", &mut out);
        assert!(out.starts_with("# existing\n# HELP z_seconds a\\\\b\\nc\n"));
        parse("z_seconds", out.strip_prefix("# existing\n").unwrap());
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = LatencyHistogram::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = &h;
                s.spawn(move || {
                    for i in 0..25_000u64 {
                        h.observe((t * 25_000 + i) * 1_000); // 0 .. 100 ms in 1 µs steps
                    }
                });
            }
        });
        let mut out = String::new();
        h.render("c_seconds", "h", &mut out);
        let p = parse("c_seconds", &out);
        assert_eq!(p.count, 100_000);
        assert_eq!(count_at(&p, 0.1), 100_000);
        assert_eq!(count_at(&p, 0.05), 50_001);
        // Sum of 0..100_000 µs.
        assert!((p.sum - 99_999.0 * 100_000.0 / 2.0 / 1e6).abs() < 1e-6);
    }
}
