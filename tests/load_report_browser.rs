//! The `ebbtide load --html` report in a real browser: headless Chromium through chromedriver
//! (tests/common/browser.rs) opens the page a short run against `ebbtide backend` wrote, and the
//! test checks that it logs no console error and that its two plots (latency spectrum and timeline)
//! are drawn: SVGs with a rendered size and polylines with points on them. Needs Debian's
//! `chromium` and `chromium-driver` (scripts/test.sh installs them); fails, never skips, without
//! them. Writes target/load-report.png.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::{Browser, ONE_AT_A_TIME};
use common::process::{backend, temp_path, Child};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn the_html_report_opens_in_chromium_with_its_plots_and_no_console_error() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Some 5xx so that the errors tables have rows too.
    let (_backend, addr) = backend(&["--service-time", "exp:5ms", "--error-rate", "0.05"]);
    let page = temp_path("load-report.html");
    let mut load = Child(
        Command::new(common::ebbtide_bin())
            .args(["load", "--target", &format!("http://{addr}/")])
            .args(["--profile", "steps:100@2s,300@2s", "--max-p99", "1s"])
            .args(["--quiet", "--html", page.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ebbtide load"),
    );
    let code = tokio::task::spawn_blocking(move || load.wait_exit(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(code, Some(Some(0)), "ebbtide load's exit");

    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "file://{}",
            page.canonicalize().unwrap().display()
        ))
        .await;
    browser
        .until(
            "the report's heading",
            Duration::from_secs(10),
            "return document.readyState === 'complete' && document.querySelector('h1') !== null",
        )
        .await;
    let headings = browser
        .js("return [...document.querySelectorAll('h2')].map(h => h.textContent)")
        .await;
    for h in [
        "Summary",
        "Latency distribution",
        "Over time",
        "Errors by class",
        "Status codes",
    ] {
        assert!(
            headings.as_array().unwrap().contains(&json!(h)),
            "{h}: {headings}"
        );
    }
    // Each plot as the browser laid it out: its box, and per polyline the number of points and
    // the size of what it drew.
    let plots = browser
        .js("return [...document.querySelectorAll('svg')].map(s => { \
               const r = s.getBoundingClientRect(); \
               return {w: r.width, h: r.height, lines: [...s.querySelectorAll('polyline')].map(p => { \
                 const b = p.getBBox(); return {n: p.points.numberOfItems, w: b.width, h: b.height}; })}; })")
        .await;
    let plots = plots.as_array().expect("an array of plots");
    assert_eq!(plots.len(), 2, "the spectrum and the timeline: {plots:?}");
    for plot in plots {
        assert!(
            plot["w"].as_f64().unwrap() > 100.0 && plot["h"].as_f64().unwrap() > 100.0,
            "a plot laid out with a size: {plot}"
        );
        let lines = plot["lines"].as_array().unwrap();
        assert!(!lines.is_empty(), "a plot without a line: {plot}");
        // The spectrum's one line and the timeline's rate line span the plot: many points, drawn
        // over a width.
        let drawn = lines
            .iter()
            .filter(|l| l["n"].as_u64().unwrap() >= 4 && l["w"].as_f64().unwrap() > 50.0)
            .count();
        assert!(drawn >= 1, "no line with data drawn: {plot}");
    }
    let statuses = browser
        .js("return [...document.querySelectorAll('table')].pop().querySelectorAll('tr').length")
        .await;
    assert!(
        statuses.as_u64().unwrap() >= 3,
        "status codes 200 and 500: {statuses}"
    );
    let shot = browser.screenshot("load-report.png").await;
    eprintln!("screenshot: {}", shot.display());
    let errors = browser.severe_log().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.quit().await;
}
