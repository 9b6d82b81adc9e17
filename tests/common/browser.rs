//! Headless Chromium driven through chromedriver's WebDriver protocol (plain JSON over HTTP, with
//! the tests' own hyper client), for the tests of the pages ebbtide serves or writes. Needs
//! Debian's `chromium` and `chromium-driver` (scripts/test.sh installs them); fails, never skips,
//! without them. Included by `#[path = "common/browser.rs"] mod browser;` beside `mod common;`.
#![allow(dead_code)]

use crate::common::{self, client, empty, eventually, send};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time: the machine is small.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
pub struct Browser {
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
    pub async fn start() -> Browser {
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
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
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

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns something truthy; how long that took.
    pub async fn until(&self, what: &str, limit: Duration, script: &str) -> Duration {
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

    pub async fn element(&self, css: &str) -> String {
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
    pub async fn severe_log(&self) -> Vec<String> {
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

    pub async fn screenshot(&self, file: &str) -> PathBuf {
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

    pub async fn quit(self) {
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
