//! The dashboard (`GET /` on the admin listener) in a real browser: headless Chromium driven
//! through chromedriver's WebDriver protocol (tests/common/browser.rs), against a running
//! `ebbtide serve` with local backends. Needs Debian's `chromium` and `chromium-driver`
//! (scripts/test.sh installs them); fails, never skips, without them.
//! Writes target/dashboard.png.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::{Browser, ONE_AT_A_TIME};
use common::*;
use ebbtide_balancer::api::Register;
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rows(addr_contains: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#fleet tbody th')].some(t => t.textContent.includes('{addr_contains}'))"
    )
}

const ROW_COUNT: &str = "return document.querySelectorAll('#fleet tbody tr').length";

/// `ebbtide serve` with the local provider (simulated backends) and the autoscaler, as the
/// embedded default but on free ports.
fn serve_local() -> Ebbtide {
    start_ebbtide(&base_config(
        r#"[health]
path = "/healthz"
interval = "1s"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{port}", "--service-time", "exp:20ms", "--workers", "4"]
count = 2
capacity = 4
cost_per_hour = 0.05
[autoscaler]
decider = "concurrency"
min = 2
max = 8
target = 4
workers = 4
"#,
    ))
}

async fn active(admin: SocketAddr, n: usize) {
    eventually(
        "the backends to be active",
        Duration::from_secs(30),
        || async {
            let list = admin_backends(admin).await;
            (list
                .iter()
                .filter(|b| b.state == ebbtide_balancer::api::BackendState::Active)
                .count()
                >= n)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_page_shows_the_fleet_and_charts_live_in_chromium() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let lb = serve_local();
    active(lb.admin, 2).await;
    let browser = Browser::start().await;
    browser.goto(&format!("http://{}/", lb.admin)).await;
    browser
        .until(
            "the two backends' rows",
            Duration::from_secs(10),
            &format!("{ROW_COUNT} === 2"),
        )
        .await;

    // Structure for keyboard and screen-reader users.
    let outline = browser
        .js("return [document.querySelector('h1').textContent, document.querySelectorAll('h2').length, \
             document.querySelectorAll('#fleet thead th[scope=col]').length, \
             document.querySelectorAll('#fleet tbody th[scope=row]').length, \
             document.querySelectorAll('svg[role=img][aria-labelledby]').length, \
             document.getElementById('conn').textContent]")
        .await;
    assert_eq!(outline, json!(["ebbtide", 4, 9, 2, 4, "live"]), "{outline}");

    // Load: the rate chart gains points as the stream pushes.
    let mut load = Command::new(ebbtide_bin())
        .args(["load", "--target", &format!("http://{}/", lb.addr)])
        // 0.2 of the two backends' capacity, then a burst over it: a scale-up to draw.
        .args(["--profile", "steps:40@5s,400@5s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ebbtide load");
    let points = "return Number(document.getElementById('svg-rate').dataset.points)";
    browser
        .until(
            "a chart with points",
            Duration::from_secs(5),
            &format!("{points} > 0"),
        )
        .await;
    let before = browser.js(points).await.as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = browser.js(points).await.as_u64().unwrap();
    assert!(
        after > before,
        "the rate chart had {before} points, then {after}"
    );
    browser
        .until(
            "the arrival rate line",
            Duration::from_secs(5),
            "return document.querySelector('#svg-rate polyline[data-series=arr]') !== null",
        )
        .await;

    // A backend registered through the admin API is on the page within 2 s.
    let extra = sim_backend(&["--service-time", "exp:20ms", "--workers", "4"]).await;
    admin_client()
        .register(
            &lb.admin.to_string(),
            &Register {
                address: extra.addr.to_string(),
                capacity: Some(4),
                weight: 1,
                lease_seconds: Some(60.0),
                cost_per_hour: 0.1,
                protocol: None,
                server_name: None,
                launched: None,
            },
        )
        .await
        .expect("register");
    let took = browser
        .until(
            "the registered backend's row",
            Duration::from_secs(2),
            &rows(&extra.addr.to_string()),
        )
        .await;
    eprintln!("the registered backend appeared after {took:?}");

    let _ = load.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let markers = browser
        .js("return document.querySelectorAll('#svg-fleetc line[stroke-width=\"1.5\"]').length")
        .await;
    eprintln!("decision markers on the backends chart: {markers}");
    let shot = browser.screenshot("dashboard.png").await;
    eprintln!("screenshot: {}", shot.display());
    // The dark scheme, as a browser set to prefer it shows the page.
    browser
        .call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": "dark"}]}})),
        )
        .await;
    let bg = browser
        .js("return getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(bg, json!("rgb(17, 20, 24)"), "the dark background");
    browser.screenshot("dashboard-dark.png").await;
    // A page opened now starts with the last minutes already drawn (the server's history).
    browser
        .call(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": []}})),
        )
        .await;
    browser.goto(&format!("http://{}/", lb.admin)).await;
    browser
        .until(
            "a chart full of history on a fresh page",
            Duration::from_secs(3),
            &format!("{points} >= 10"),
        )
        .await;
    let errors = browser.severe_log().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.quit().await;
}

/// Waits (5 s at most) for the row of the backend at `addr`, then checks that the token prompt
/// is hidden: the page got in.
async fn shows_the_row_not_the_prompt(browser: &Browser, what: &str, addr: SocketAddr) {
    browser
        .until(what, Duration::from_secs(5), &rows(&addr.to_string()))
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('auth').hidden")
            .await,
        json!(true),
        "{what}: the token prompt is hidden"
    );
}

#[tokio::test]
async fn with_a_token_the_page_asks_for_it_once_per_tab() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let backend = sim_backend(&["--service-time", "const:1ms"]).await;
    let lb = start_ebbtide(&base_config(&format!(
        "token = \"tide-s3cret\"\n{}",
        backends_toml(&[backend.addr], Some(4))
    )));
    let browser = Browser::start().await;
    let page = format!("http://{}/", lb.admin);
    browser.goto(&page).await;
    browser
        .until(
            "the token form",
            Duration::from_secs(5),
            "return !document.getElementById('auth').hidden",
        )
        .await;
    assert_eq!(
        browser.js(ROW_COUNT).await,
        json!(0),
        "data without the token"
    );

    let input = browser.element("#tok").await;
    browser
        .call(
            "POST",
            &format!("/element/{input}/value"),
            Some(json!({"text": "tide-s3cret"})),
        )
        .await;
    let button = browser.element("#auth button").await;
    browser
        .call("POST", &format!("/element/{button}/click"), None)
        .await;
    shows_the_row_not_the_prompt(&browser, "the backend's row", backend.addr).await;

    // Kept for the tab: a reload does not ask again.
    browser.goto(&page).await;
    shows_the_row_not_the_prompt(&browser, "the row after a reload", backend.addr).await;
    browser.screenshot("dashboard-token.png").await;
    let errors = browser.severe_log().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.quit().await;
}
