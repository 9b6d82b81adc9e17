//! `--html FILE`: the report as one self-contained HTML page (no script, no stylesheet or font
//! from elsewhere): the summary, the thresholds, a percentile table beside the latency spectrum,
//! the rate / latency / backends plot over time ([`super::plot`]), and errors by class and status
//! codes. It opens in any browser, offline, and can be attached to a CI run as it is.

use super::plot::{escape, fmt_num, nice_axis, svg};
use super::report::Report;
use std::fmt::Write as _;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 10px;text-align:right}\
th{background:#f4f4f4}td.l,th.l{text-align:left}.bad{color:#b00;font-weight:bold}.good{color:#070}\
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}";

/// The HTML page of a report.
pub(crate) fn html(report: &Report) -> String {
    let mut out = String::new();
    let title = format!("ebbtide load: {} {}", report.method, report.target);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    let _ = writeln!(
        out,
        "<p>{} ({} arrivals), {:.1} s; mode {}{}</p>",
        escape(&report.schedule),
        escape(&report.arrivals),
        report.duration_s,
        escape(&report.mode),
        if report.connections > 0 {
            format!(
                ", {} connections on {} threads",
                report.connections, report.threads
            )
        } else {
            String::new()
        }
    );

    let l = &report.latency_ms;
    out.push_str("<h2>Summary</h2><table>");
    let rows: [(&str, String); 12] = [
        ("scheduled", report.scheduled.to_string()),
        ("sent", report.sent.to_string()),
        ("completed", report.completed.to_string()),
        ("ok", report.ok.to_string()),
        (
            "late",
            format!(
                "{} (after {} ms)",
                report.late,
                fmt_num(report.late_after_ms)
            ),
        ),
        (
            "errors",
            format!("{} ({:.3}%)", report.errors, report.error_ratio * 100.0),
        ),
        ("offered rate", format!("{:.1}/s", report.offered_rate)),
        ("achieved rate", format!("{:.1}/s", report.achieved_rate)),
        ("elapsed", format!("{:.2} s", report.elapsed_s)),
        ("latency mean", format!("{:.3} ms", l.mean)),
        (
            "latency p50 / p99",
            format!("{:.3} / {:.3} ms", l.p50, l.p99),
        ),
        ("bytes received", report.bytes_received.to_string()),
    ];
    for (k, v) in rows {
        let _ = write!(
            out,
            "<tr><th class=\"l\">{k}</th><td>{}</td></tr>",
            escape(&v)
        );
    }
    out.push_str("</table>\n");

    if !report.thresholds.is_empty() {
        out.push_str("<h2>Thresholds</h2><table><tr><th class=\"l\">threshold</th><th>limit</th><th>measured</th><th>result</th></tr>");
        for t in &report.thresholds {
            let unit = if t.name.starts_with("max-p") {
                " ms"
            } else {
                ""
            };
            let _ = write!(
                out,
                "<tr><td class=\"l\">--{}</td><td>{}{unit}</td><td>{:.4}{unit}</td><td class=\"{}\">{}</td></tr>",
                escape(&t.name),
                t.limit,
                t.value,
                if t.ok { "good" } else { "bad" },
                if t.ok { "passed" } else { "BREACHED" }
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h2>Latency distribution</h2><p>From each request's scheduled send time (no coordinated omission), successful requests.</p><div class=\"row\"><table><tr><th>percentile</th><th>ms</th></tr>");
    for p in &report.percentiles {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{:.3}</td></tr>",
            match p.percentile {
                0.0 => "min".to_string(),
                100.0 => "max".to_string(),
                x => format!("{x}"),
            },
            p.ms
        );
    }
    out.push_str("</table>");
    out.push_str(&spectrum(report));
    out.push_str("</div>\n");

    out.push_str("<h2>Over time</h2>");
    out.push_str(&svg(report));

    out.push_str("<h2>Errors by class</h2><table><tr><th class=\"l\">class</th><th>count</th><th>share of scheduled</th></tr>");
    for (k, v) in &report.errors_by_kind {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{v}</td><td>{:.3}%</td></tr>",
            escape(k),
            *v as f64 * 100.0 / report.scheduled.max(1) as f64
        );
    }
    out.push_str(
        "</table>\n<h2>Status codes</h2><table><tr><th class=\"l\">status</th><th>count</th></tr>",
    );
    for (k, v) in &report.status_codes {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{v}</td></tr>",
            escape(k)
        );
    }
    out.push_str("</table>\n<p>Written by ebbtide load.</p></body></html>\n");
    out
}

/// The latency spectrum as SVG: milliseconds against the percentile on a log scale of
/// 1 / (1 - q), as HdrHistogram's plots draw it, so that the tail gets the room.
fn spectrum(report: &Report) -> String {
    const W: f64 = 560.0;
    const H: f64 = 320.0;
    const L: f64 = 60.0;
    const R: f64 = 20.0;
    const T: f64 = 20.0;
    const B: f64 = 40.0;
    let points: Vec<(f64, f64)> = report
        .percentiles
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| ((1.0 / (1.0 - p.percentile / 100.0)).log10(), p.ms))
        .collect();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        out,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - L - R,
        H - T - B
    );
    let x_max = 5.0; // up to the 99.999th percentile
    let y_top = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let (y_max, y_step) = nice_axis(y_top * 1.05);
    let x = |v: f64| L + (W - L - R) * v / x_max;
    let y = |v: f64| T + (H - T - B) * (1.0 - (v / y_max).clamp(0.0, 1.0));
    for (i, label) in ["0", "90", "99", "99.9", "99.99", "99.999"]
        .iter()
        .enumerate()
    {
        let xv = x(i as f64);
        let _ = write!(
            out,
            r##"<line x1="{xv:.1}" y1="{T}" x2="{xv:.1}" y2="{:.1}" stroke="#eee"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 15.0
        );
    }
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let yv = y(v);
        let _ = write!(
            out,
            r##"<line x1="{L}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 5.0,
            yv + 4.0,
            fmt_num(v)
        );
        v += y_step;
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency ms</text>"#,
        L + (W - L - R) / 2.0,
        H - 6.0,
        T + (H - T - B) / 2.0,
        T + (H - T - B) / 2.0
    );
    let pts: Vec<String> = points
        .iter()
        .filter(|p| p.0 <= x_max + 1e-9)
        .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
        .collect();
    let _ = write!(
        out,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/></svg>"##,
        pts.join(" ")
    );
    out
}
