//! deploy/prometheus and deploy/grafana against the real thing: promtool checks the committed
//! config and rules and runs their unit tests; a real Prometheus (Debian's `prometheus`, started
//! here on a free loopback port with its storage in a temporary folder) scrapes a running
//! `ebbtide serve` under load, and then every metric family design.md names is in Prometheus's
//! API and every query of the committed Grafana dashboard returns data. Fails, never skips,
//! when the tools are missing (scripts/test.sh installs them).

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: this test needs Debian's `prometheus` package \
         (bash scripts/test.sh installs it)"
    );
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The metric families design.md promises (histograms by their series).
const FAMILIES: &[&str] = &[
    "ebbtide_requests_total",
    "ebbtide_request_duration_seconds_bucket",
    "ebbtide_request_duration_seconds_count",
    "ebbtide_request_duration_seconds_sum",
    "ebbtide_cold_start_seconds_bucket",
    "ebbtide_cold_start_seconds_count",
    "ebbtide_cold_start_seconds_sum",
    "ebbtide_queue_depth",
    "ebbtide_backend_in_flight",
    "ebbtide_backends",
    "ebbtide_shed_total",
    "ebbtide_retries_total",
    "ebbtide_autoscaler_desired_backends",
    "ebbtide_autoscaler_decisions_total",
];

#[test]
fn promtool_checks_the_config_and_rules_and_their_unit_tests_pass() {
    let promtool = tool("promtool");
    for args in [
        vec!["check", "config", "deploy/prometheus/prometheus.yml"],
        vec!["check", "rules", "deploy/prometheus/rules.yml"],
        vec!["test", "rules", "deploy/prometheus/rules_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(repo(""))
            .output()
            .expect("run promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
        eprintln!(
            "promtool {}: {}",
            args.join(" "),
            text.trim().replace('\n', " | ")
        );
    }
}

/// A Prometheus server in its own process group, stopped when dropped.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created for Prometheus.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("ebbtide-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: ebbtide\n    static_configs:\n      - targets: [\"{target}\"]\n",
        rules = repo("deploy/prometheus/rules.yml").display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn api(prom: &Prometheus, path: &str) -> Value {
    let (status, _, body) = get(&format!("{}{path}", prom.base)).await;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("Prometheus answered {status} to {path} with no JSON: {e}"));
    assert_eq!(v["status"], "success", "{path}: {v}");
    v["data"].clone()
}

async fn query(prom: &Prometheus, q: &str) -> Vec<Value> {
    let data = api(prom, &format!("/api/v1/query?query={}", encode(q))).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_every_family_and_answers_every_grafana_panel() {
    let lb = start_ebbtide(&base_config(
        r#"[health]
path = "/healthz"
interval = "1s"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{port}", "--service-time", "exp:20ms", "--workers", "4"]
count = 2
capacity = 4
[autoscaler]
min = 2
max = 8
"#,
    ));
    eventually("two backends", Duration::from_secs(30), || async {
        (admin_backends(lb.admin).await.len() >= 2).then_some(())
    })
    .await;
    let prom = start_prometheus(&lb.admin.to_string());
    eventually(
        "Prometheus to be ready",
        Duration::from_secs(60),
        || async {
            let (s, _, _) = get_maybe(&format!("{}/-/ready", prom.base)).await?;
            s.is_success().then_some(())
        },
    )
    .await;

    // Bounded load, while Prometheus scrapes every second.
    let mut load = Command::new(ebbtide_bin())
        .args(["load", "--target", &format!("http://{}/", lb.addr)])
        .args(["--rate", "50", "--duration", "25s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ebbtide load");
    eventually("the target to be up", Duration::from_secs(30), || async {
        let t = api(&prom, "/api/v1/targets").await;
        (t["activeTargets"][0]["health"] == "up").then_some(())
    })
    .await;
    // Enough scrapes under load for rates over the Grafana panels' windows.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let names = api(&prom, "/api/v1/label/__name__/values").await;
    let names: Vec<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for f in FAMILIES {
        assert!(
            names.contains(f),
            "{f} is not in Prometheus; it has {names:?}"
        );
        let n = query(&prom, &format!("count({f})")).await;
        eprintln!("family {f}: {} series", n[0]["value"][1].as_str().unwrap());
    }

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/dashboards/ebbtide.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            // Grafana's rate interval for a 1 s scrape interval: 4 scrapes at least.
            let q = expr.replace("$__rate_interval", "10s");
            let result = query(&prom, &q).await;
            assert!(
                !result.is_empty(),
                "panel {:?}: {q} returned no data",
                panel["title"]
            );
            let values: Vec<&str> = result
                .iter()
                .map(|r| r["value"][1].as_str().unwrap_or("?"))
                .collect();
            eprintln!(
                "panel {:?}: {q} -> {} series, values {values:?}",
                panel["title"].as_str().unwrap(),
                result.len()
            );
            if q.contains("histogram_quantile") {
                let v: f64 = values[0].parse().unwrap();
                assert!(v.is_finite() && v > 0.0, "{q} = {v} under load");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} queries in the dashboard");

    // The recording rules run on the real series too.
    for rule in [
        "ebbtide:requests:rate1m",
        "ebbtide:request_duration_seconds:p99_1m",
    ] {
        let r = query(&prom, rule).await;
        assert!(!r.is_empty(), "recording rule {rule} has no data");
        eprintln!("rule {rule} = {}", r[0]["value"][1]);
    }
    let _ = load.wait();
}

/// GET that is None when nothing answers (yet).
async fn get_maybe(url: &str) -> Option<(http::StatusCode, http::HeaderMap, bytes::Bytes)> {
    let resp = client()
        .request(http::Request::get(url).body(empty()).unwrap())
        .await
        .ok()?;
    let status = resp.status();
    let headers = resp.headers().clone();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, body))
}

/// Every family `/metrics` had before it was written by `prometheus-client`, with its type, in
/// order; the access log adds one when it is on.
const FAMILIES_BEFORE_CLIENT: &[(&str, &str)] = &[
    ("ebbtide_requests_total", "counter"),
    ("ebbtide_request_duration_seconds", "histogram"),
    ("ebbtide_queue_depth", "gauge"),
    ("ebbtide_backend_in_flight", "gauge"),
    ("ebbtide_backends", "gauge"),
    ("ebbtide_shed_total", "counter"),
    ("ebbtide_retries_total", "counter"),
    ("ebbtide_retries_refused_total", "counter"),
    ("ebbtide_idempotent_replays_total", "counter"),
    ("ebbtide_backend_concurrency_limit", "gauge"),
    ("ebbtide_config_reloads_total", "counter"),
    ("ebbtide_autoscaler_desired_backends", "gauge"),
    ("ebbtide_autoscaler_decisions_total", "counter"),
    ("ebbtide_autoscaler_backend_seconds_total", "counter"),
    ("ebbtide_autoscaler_cost_total", "counter"),
    ("ebbtide_admin_streams", "gauge"),
];

#[tokio::test]
async fn promtool_passes_a_real_scrape_and_the_families_are_those_ebbtide_always_had() {
    let log = std::env::temp_dir().join(format!("ebbtide-promtool-{}.log", std::process::id()));
    let lb = start_ebbtide(&base_config(&format!(
        r#"[log]
access = "json"
access_path = "{}"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{{port}}", "--service-time", "const:1ms"]
count = 2
[autoscaler]
min = 2
max = 2
"#,
        log.display()
    )));
    eventually("two backends", Duration::from_secs(30), || async {
        (admin_backends(lb.admin).await.len() >= 2).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&format!("http://{}/", lb.addr)).await.0, 200);
    }
    let (status, headers, body) = get(&format!("http://{}/metrics", lb.admin)).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();

    let families: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    let mut expected = FAMILIES_BEFORE_CLIENT.to_vec();
    // Added since: the WebSocket tunnel families and the access log's dropped lines.
    expected.insert(4, ("ebbtide_tunnels_open", "gauge"));
    expected.insert(5, ("ebbtide_tunnels_closed_total", "counter"));
    expected.insert(13, ("ebbtide_access_log_dropped_total", "counter"));
    // And the cold start of launched backends (issue 13).
    expected.insert(2, ("ebbtide_cold_start_seconds", "histogram"));
    // And the client connections each accepting listener took (issue 18, `per_worker`).
    let reloads = expected
        .iter()
        .position(|f| f.0 == "ebbtide_config_reloads_total")
        .unwrap();
    expected.insert(
        reloads + 1,
        ("ebbtide_client_connections_accepted_total", "counter"),
    );
    assert_eq!(families, expected, "{text}");
    // The series too: each backend's requests by code, histogram buckets as before.
    for series in [
        "ebbtide_requests_total{backend=\"none\",code=\"502\"} 0",
        "ebbtide_request_duration_seconds_bucket{le=\"0.0005\"}",
        "ebbtide_request_duration_seconds_bucket{le=\"1\"}",
        "ebbtide_request_duration_seconds_bucket{le=\"+Inf\"} 20",
        "ebbtide_request_duration_seconds_count 20",
        "ebbtide_backends{state=\"active\"} 2",
        "ebbtide_shed_total{reason=\"queue_full\"} 0",
        "ebbtide_config_reloads_total{result=\"ok\"} 0",
        "ebbtide_autoscaler_decisions_total{direction=\"hold\"}",
        "ebbtide_access_log_dropped_total 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    let served: u64 = text
        .lines()
        .filter(|l| l.starts_with("ebbtide_requests_total{backend=\"127.0.0.1:"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(served, 20);
    // The local provider launched both backends: each one that served has had its cold start.
    let serving: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("ebbtide_requests_total{backend=\"127.0.0.1:"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    let cold = format!(
        "ebbtide_cold_start_seconds_count{{provider=\"local\"}} {}",
        serving.len()
    );
    assert!(text.contains(&cold), "{cold} missing:\n{text}");

    let mut check = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&log);
}
