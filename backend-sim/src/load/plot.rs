//! A picture of a load run as hand-written SVG: requests per second (offered, achieved, errors,
//! and the backend count when the admin API was polled) above latency (p50, p99) over time. No
//! plotting crate: a few polylines and axes are all it takes, and the file opens in any browser.

use super::report::Report;
use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const PANEL_H: f64 = 230.0;
const TOP1: f64 = 50.0;
const TOP2: f64 = 350.0;

/// A round axis maximum and tick step at or above `max`.
pub(crate) fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

pub(crate) fn fmt_num(v: f64) -> String {
    if v == v.round() {
        format!("{}", v as i64)
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// `s` with the XML special characters escaped.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Panel {
    top: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * t / self.x_max
    }
    fn y(&self, v: f64, y_max: f64) -> f64 {
        self.top + PANEL_H - PANEL_H * (v / y_max).clamp(0.0, 1.05)
    }
}

fn polyline(out: &mut String, points: &[(f64, f64)], color: &str, extra: &str) {
    if points.is_empty() {
        return;
    }
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" {extra} points="{}"/>"#,
        pts.join(" ")
    );
}

fn axes(out: &mut String, p: &Panel, y_step: f64, label: &str, x_step: f64) {
    let bottom = p.top + PANEL_H;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{}" width="{}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        p.top,
        WIDTH - LEFT - RIGHT
    );
    let mut v = 0.0;
    while v <= p.y_max + 1e-9 {
        let y = p.y(v, p.y_max);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= p.x_max + 1e-9 {
        let x = p.x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"##,
            bottom + 4.0,
            bottom + 17.0,
            fmt_num(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" font-size="12" transform="rotate(-90 18 {:.1})" text-anchor="middle">{}</text>"#,
        p.top + PANEL_H / 2.0,
        p.top + PANEL_H / 2.0,
        escape(label)
    );
}

fn legend(out: &mut String, x: f64, y: f64, items: &[(&str, &str)]) {
    let mut x = x;
    for (name, color) in items {
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="12">{}</text>"#,
            x + 18.0,
            x + 22.0,
            y + 4.0,
            escape(name)
        );
        x += 30.0 + 7.5 * name.len() as f64;
    }
}

/// The SVG document for a report.
pub fn svg(report: &Report) -> String {
    let n = report.series.len().max(1);
    let x_max_raw = (n as f64).max(report.duration_s).max(1.0);
    let (x_max, x_step) = nice_axis(x_max_raw);
    let rate_max = report
        .series
        .iter()
        .map(|p| p.offered.max(p.achieved).max(p.errors) as f64)
        .fold(0.0, f64::max);
    let (rate_axis, rate_step) = nice_axis(rate_max * 1.05);
    let lat_max = report
        .series
        .iter()
        .filter_map(|p| p.p99_ms)
        .fold(0.0, f64::max);
    let (lat_axis, lat_step) = nice_axis(lat_max * 1.05);
    let has_backends = report.series.iter().any(|p| p.backends.is_some());
    let backends_max = report
        .series
        .iter()
        .filter_map(|p| p.backends)
        .max()
        .unwrap_or(0) as f64;
    let (backends_axis, backends_step) = nice_axis((backends_max + 1.0).max(4.0));

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(&format!(
            "ebbtide load: {} {}, {}; p50 {:.2} ms, p99 {:.2} ms, errors {}",
            report.method,
            report.target,
            report.schedule,
            report.latency_ms.p50,
            report.latency_ms.p99,
            report.errors
        ))
    );

    let rate = Panel {
        top: TOP1,
        x_max,
        y_max: rate_axis,
    };
    axes(&mut out, &rate, rate_step, "requests/s", x_step);
    // Each second's value is drawn at the middle of its second.
    let line = |f: &dyn Fn(&super::report::SeriesPoint) -> Option<f64>, p: &Panel, y_max: f64| {
        report
            .series
            .iter()
            .filter_map(|s| f(s).map(|v| (p.x(s.second as f64 + 0.5), p.y(v, y_max))))
            .collect::<Vec<_>>()
    };
    polyline(
        &mut out,
        &line(&|s| Some(s.offered as f64), &rate, rate_axis),
        "#1f77b4",
        "",
    );
    polyline(
        &mut out,
        &line(&|s| Some(s.achieved as f64), &rate, rate_axis),
        "#2ca02c",
        "",
    );
    if report.errors > 0 {
        polyline(
            &mut out,
            &line(&|s| Some(s.errors as f64), &rate, rate_axis),
            "#d62728",
            "",
        );
    }
    let mut items = vec![
        ("offered", "#1f77b4"),
        ("achieved", "#2ca02c"),
        ("errors", "#d62728"),
    ];
    if has_backends {
        // Backends on a right-hand axis, as a step line.
        let mut pts = Vec::new();
        for s in &report.series {
            if let Some(b) = s.backends {
                let y = rate.y(b as f64, backends_axis);
                pts.push((rate.x(s.second as f64), y));
                pts.push((rate.x(s.second as f64 + 1.0), y));
            }
        }
        polyline(&mut out, &pts, "#9467bd", r#"stroke-dasharray="5,3""#);
        let mut v = 0.0;
        while v <= backends_axis + 1e-9 {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#9467bd">{}</text>"##,
                WIDTH - RIGHT + 6.0,
                rate.y(v, backends_axis) + 4.0,
                fmt_num(v)
            );
            v += backends_step;
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" fill="#9467bd" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">active backends</text>"##,
            WIDTH - 20.0,
            TOP1 + PANEL_H / 2.0,
            WIDTH - 20.0,
            TOP1 + PANEL_H / 2.0
        );
        items.push(("backends", "#9467bd"));
    }
    legend(&mut out, LEFT + 10.0, TOP1 + 14.0, &items);

    let lat = Panel {
        top: TOP2,
        x_max,
        y_max: lat_axis,
    };
    axes(&mut out, &lat, lat_step, "latency ms", x_step);
    polyline(
        &mut out,
        &line(&|s| s.p50_ms, &lat, lat_axis),
        "#ff7f0e",
        "",
    );
    polyline(
        &mut out,
        &line(&|s| s.p99_ms, &lat, lat_axis),
        "#8c564b",
        "",
    );
    legend(
        &mut out,
        LEFT + 10.0,
        TOP2 + 14.0,
        &[("p50", "#ff7f0e"), ("p99", "#8c564b")],
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">seconds (latency by scheduled send time)</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 12.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axes_are_round() {
        assert_eq!(nice_axis(97.0), (100.0, 20.0));
        assert_eq!(nice_axis(12.0), (12.5, 2.5));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
    }
}
