//! The dashboard (`GET /` on the admin listener) in a real browser: headless Chromium driven
//! through chromedriver's WebDriver protocol (plain JSON over HTTP, with the tests' own hyper
//! client), against a running `ebbtide serve` with local backends. Needs Debian's `chromium` and
//! `chromium-driver` (scripts/test.sh installs them); fails, never skips, without them.
//! Writes target/dashboard.png.

mod common;

use common::*;
use ebbtide_balancer::api::Register;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time: the machine is small.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tool(name: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: the dashboard tests need Debian's `{package}` \
         (bash scripts/test.sh installs it)"
    );
}

/// chromedriver and the Chromium it starts, in their own process group (killed together).
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created for chromedriver.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let chromium = tool("chromium", "chromium");
        let chromedriver = tool("chromedriver", "chromium-driver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
        };
        eventually("chromedriver to answer", Duration::from_secs(20), || {
            let url = format!("{}/status", b.base);
            async move {
                let r = client()
                    .request(http::Request::get(url).body(empty()).unwrap())
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1500", "--no-first-run", "--disable-extensions"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let v = b.call("POST", "/session", Some(caps)).await;
        b.session = v["sessionId"].as_str().expect("no session id").to_string();
        b
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = if path.starts_with("/session/") || path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(match body {
                Some(b) => common::body(b.to_string()),
                None if method == "POST" => common::body("{}"),
                None => empty(),
            })
            .unwrap();
        let (status, _, bytes) = send(req).await;
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("chromedriver answered {status} with no JSON: {e}"));
        if !status.is_success() {
            panic!("WebDriver {method} {path}: {status} {}", v["value"]);
        }
        v.get("value").cloned().unwrap_or(v)
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns something truthy; how long that took.
    async fn until(&self, what: &str, limit: Duration, script: &str) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.js(script).await;
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!("timed out after {limit:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .expect("no element id")
            .to_string()
    }

    /// The browser's console and network errors so far.
    async fn severe_log(&self) -> Vec<String> {
        let v = self
            .call("POST", "/se/log", Some(json!({"type": "browser"})))
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn screenshot(&self, file: &str) -> PathBuf {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("no screenshot"));
        assert_eq!(&png[1..4], b"PNG");
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join(file);
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn quit(self) {
        self.call("DELETE", &format!("/session/{}", self.session), None)
            .await;
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !b"=\r\n".contains(c)).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= (val(c) as u32) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

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
    browser
        .until(
            "the backend's row",
            Duration::from_secs(5),
            &rows(&backend.addr.to_string()),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('auth').hidden")
            .await,
        json!(true)
    );

    // Kept for the tab: a reload does not ask again.
    browser.goto(&page).await;
    browser
        .until(
            "the row after a reload",
            Duration::from_secs(5),
            &rows(&backend.addr.to_string()),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('auth').hidden")
            .await,
        json!(true)
    );
    browser.screenshot("dashboard-token.png").await;
    let errors = browser.severe_log().await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.quit().await;
}
