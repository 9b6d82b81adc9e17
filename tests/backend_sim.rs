//! End-to-end tests of `ebbtide backend` and `ebbtide load`: real processes on 127.0.0.1, every
//! child killed when its guard drops, every load bounded in time.

mod common;

use common::process::{backend, temp_path, Child};
use ebbtide_balancer::api::{BackendInfo, BackendState, Origin};
use ebbtide_config::rng::Rng;
use ebbtide_config::service_time::ServiceTime;
use ebbtide_sim::load::schedule::{ArrivalProcess, Arrivals, Profile, Source};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ebbtide");

/// Starts `ebbtide load --quiet --json FILE ARGS` without waiting.
fn start_load(args: &[String], json: &PathBuf) -> Child {
    let child = Command::new(BIN)
        .arg("load")
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(json)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ebbtide load");
    Child(child)
}

/// Waits for a load run (at most `limit`) and returns its exit code and JSON report.
fn finish_load(mut child: Child, json: &PathBuf, limit: Duration) -> (i32, Value) {
    let code = child
        .wait_exit(limit)
        .expect("load finished in time")
        .expect("exit code");
    let text = std::fs::read_to_string(json).expect("json report written");
    (
        code,
        serde_json::from_str(&text).expect("json report parses"),
    )
}

fn run_load(args: &[&str], limit: Duration) -> (i32, Value) {
    let json = temp_path(&format!("load-{}.json", Rng::new(now_nanos()).next_u64()));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let child = start_load(&args, &json);
    finish_load(child, &json, limit)
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A minimal blocking HTTP/1.1 exchange: status, lower-cased headers, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-Test: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    for chunk in body.chunks(64 * 1024) {
        s.write_all(chunk)?;
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    http(addr, "GET", path, b"", Duration::from_secs(5))
}

/// Polls until `f` is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number"))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
}

/// The tests that compare measured latency with the backend's service time take turns: run
/// beside each other (the M/M/1 one loads both cores for a minute), a debug-build generator and
/// backend share the CPU and the latency measured includes waiting for it (a p50 of 11.06 ms
/// against const 10 ms was seen in CI that way).
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn measuring() -> std::sync::MutexGuard<'static, ()> {
    MEASURING.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn constant_service_time_shows_as_the_median_through_load() {
    let _turn = measuring();
    let (_b, addr) = backend(&["--service-time", "const:10ms", "--workers", "4"]);
    let url = format!("http://{addr}/");
    let (code, r) = run_load(
        &[
            "--target",
            &url,
            "--rate",
            "20",
            "--duration",
            "5s",
            "--seed",
            "3",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0);
    let p50 = f(&r, &["latency_ms", "p50"]);
    // Debug builds of generator and backend on one VM: measured 11.0-11.8 ms on 2026-11-30
    // with the generator of before and after that day's engine change alike (quiet machine), so
    // the bound is the service time plus 25%; the exactness of a release build is measured by
    // bench/loadgen-engine.sh.
    assert!((9.0..=12.5).contains(&p50), "p50 {p50} ms, report {r}");
    assert_eq!(r["errors"], 0);
    assert_eq!(r["sent"], r["scheduled"]);
    assert_eq!(r["completed"], r["scheduled"]);
}

/// Mean M/M/1 sojourn of the exact arrivals and services that a load seed and a backend seed
/// produce (Lindley's recursion): what a perfect implementation would measure on this sample path.
fn sample_path_mean(rate: f64, secs: f64, load_seed: u64, backend_seed: u64) -> f64 {
    let arrivals: Vec<f64> = Arrivals::new(
        Source::Rate(Profile::Constant(rate), ArrivalProcess::Poisson),
        secs,
        load_seed,
    )
    .collect();
    let service = ServiceTime::parse("exp:10ms").unwrap();
    // The backend draws services from the first fork of its seed, in service order.
    let mut rng = Rng::new(backend_seed).fork();
    let (mut free_at, mut sum) = (0.0f64, 0.0);
    for &a in &arrivals {
        let start = a.max(free_at);
        free_at = start + service.sample(&mut rng).as_secs_f64();
        sum += free_at - a;
    }
    sum / arrivals.len() as f64
}

/// M/M/1 against theory: one worker, exponential service of mean 10 ms, at 50/s and 80/s, so
/// mean sojourn 1/(mu - lambda) = 20 ms and 50 ms.
///
/// At 80% load one run's mean has a relative standard deviation of about 10% even over 60 s
/// (the queue's long correlations), so independent queues run side by side (8 at 80%, 4 at 50%)
/// and are pooled: about 3.5% and 2%. Seeds are fixed, so the run is reproducible, and the measured
/// means are also checked tightly against the same seeds' exact sample path, which isolates the
/// implementation's own error from sampling luck.
#[test]
fn mm1_sojourn_matches_queueing_theory() {
    let _turn = measuring();
    const SECS: f64 = 60.0;
    struct Queue {
        rate: f64,
        seed: u64,
        backend: Child,
        addr: SocketAddr,
        json: PathBuf,
        load: Option<Child>,
    }
    let mut queues = Vec::new();
    for (rate, count) in [(50.0, 4u64), (80.0, 8u64)] {
        for i in 0..count {
            let seed = 100 + i;
            let (backend, addr) = backend(&[
                "--service-time",
                "exp:10ms",
                "--workers",
                "1",
                "--seed",
                &seed.to_string(),
            ]);
            let json = temp_path(&format!("mm1-{rate}-{seed}.json"));
            queues.push(Queue {
                rate,
                seed,
                backend,
                addr,
                json,
                load: None,
            });
        }
    }
    for q in &mut queues {
        let args: Vec<String> = [
            "--target",
            &format!("http://{}/", q.addr),
            "--rate",
            &q.rate.to_string(),
            "--duration",
            &format!("{SECS}s"),
            "--seed",
            &q.seed.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        q.load = Some(start_load(&args, &q.json));
    }
    let mut table = String::from(
        "load  rate  theory_ms  sample_path_ms  backend_sojourn_ms  loadgen_mean_ms  loadgen_p99_ms  requests\n",
    );
    for (rate, rho) in [(50.0, 0.5), (80.0, 0.8)] {
        let theory_ms = 1000.0 / (100.0 - rate);
        let (mut n, mut backend_sum, mut load_sum, mut path_sum) = (0.0, 0.0, 0.0, 0.0);
        let mut p99s = Vec::new();
        for q in queues.iter_mut().filter(|q| q.rate == rate) {
            let (code, r) = finish_load(
                q.load.take().unwrap(),
                &q.json,
                Duration::from_secs(SECS as u64 + 60),
            );
            assert_eq!(code, 0);
            assert_eq!(r["errors"], 0, "{r}");
            let completed = f(&r, &["completed"]);
            let metrics = String::from_utf8(get(q.addr, "/metrics").unwrap().body).unwrap();
            let count = metric(&metrics, "ebbtide_backend_sojourn_seconds_count");
            let sum = metric(&metrics, "ebbtide_backend_sojourn_seconds_sum");
            assert_eq!(count, completed);
            backend_sum += sum * 1000.0;
            load_sum += f(&r, &["latency_ms", "mean"]) * completed;
            path_sum += sample_path_mean(rate, SECS, q.seed, q.seed) * 1000.0 * completed;
            p99s.push(f(&r, &["latency_ms", "p99"]));
            n += completed;
            let _ = &q.backend;
        }
        let (backend_ms, load_ms, path_ms) = (backend_sum / n, load_sum / n, path_sum / n);
        p99s.sort_by(f64::total_cmp);
        let p99 = p99s[p99s.len() / 2];
        table.push_str(&format!(
            "{rho:.1}   {rate:>4}  {theory_ms:>9.2}  {path_ms:>14.2}  {backend_ms:>18.2}  {load_ms:>15.2}  {p99:>14.2}  {n}\n"
        ));
        let off = |m: f64, reference: f64| (m - reference).abs() / reference;
        assert!(
            off(backend_ms, theory_ms) < 0.10,
            "backend sojourn {backend_ms:.2} ms vs theory {theory_ms:.2} ms\n{table}"
        );
        assert!(
            off(load_ms, theory_ms) < 0.10,
            "load generator mean {load_ms:.2} ms vs theory {theory_ms:.2} ms\n{table}"
        );
        // The backend replays this seed's exact queue in real time; what separates it from the
        // sample path is timer wake-up lateness, under 1% on a quiet machine, a few % on a
        // loaded 2-core one (seen: 4.3% at load average 6). 8% still catches a broken queue.
        assert!(
            off(backend_ms, path_ms) < 0.08,
            "backend sojourn {backend_ms:.2} ms vs this seed's sample path {path_ms:.2} ms\n{table}"
        );
    }
    eprintln!("M/M/1, exp:10ms service, one worker, {SECS}s per queue, pooled:\n{table}");
}

#[test]
fn boot_delay_refuses_connections_then_serves() {
    let started = Instant::now();
    let (_b, addr) = backend(&["--boot", "2s"]);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "connections are refused while booting"
    );
    assert!(eventually(Duration::from_secs(15), || get(
        addr, "/healthz"
    )
    .map(|r| r.status == 200)
    .unwrap_or(false)));
    assert!(started.elapsed() >= Duration::from_millis(1900));

    let (_u, addr) = backend(&["--boot", "2s", "--boot-style", "unhealthy"]);
    let r = get(addr, "/healthz").unwrap();
    assert_eq!(r.status, 503, "healthz answers 503 while booting");
    assert_eq!(get(addr, "/").unwrap().status, 503);
    assert!(eventually(Duration::from_secs(15), || get(
        addr, "/healthz"
    )
    .map(|r| r.status == 200)
    .unwrap_or(false)));
    assert_eq!(get(addr, "/").unwrap().status, 200);
}

#[test]
fn crash_after_n_requests_exits() {
    let (mut b, addr) = backend(&["--crash-after", "5"]);
    for _ in 0..5 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
    }
    assert!(get(addr, "/").is_err(), "request 6 gets no answer");
    assert_eq!(
        b.wait_exit(Duration::from_secs(10)),
        Some(Some(3)),
        "exits with the crash code"
    );
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[test]
fn crash_after_time_exits() {
    let (mut b, addr) = backend(&["--crash-after-time", "1s"]);
    assert_eq!(get(addr, "/healthz").unwrap().status, 200);
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(Some(3)));
}

#[test]
fn hang_after_n_accepts_and_never_answers() {
    let (mut b, addr) = backend(&["--hang-after", "3"]);
    for _ in 0..3 {
        assert_eq!(get(addr, "/").unwrap().status, 200);
    }
    let quick = Duration::from_millis(800);
    let e = http(addr, "GET", "/", b"", quick).err().expect("no answer");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    assert!(
        TcpStream::connect_timeout(&addr, quick).is_ok(),
        "still accepts"
    );
    assert!(
        http(addr, "GET", "/healthz", b"", quick).is_err(),
        "health check hangs too"
    );
    assert_eq!(
        b.wait_exit(Duration::from_millis(200)),
        None,
        "still running"
    );
}

#[test]
fn error_rate_is_seen_by_the_load_generator() {
    let (_b, addr) = backend(&["--error-rate", "0.2", "--seed", "7"]);
    let url = format!("http://{addr}/");
    let (code, r) = run_load(
        &[
            "--target",
            &url,
            "--rate",
            "200",
            "--duration",
            "2s",
            "--max-error-ratio",
            "0.05",
        ],
        Duration::from_secs(60),
    );
    let ratio = f(&r, &["errors_by_kind", "status_5xx"]) / f(&r, &["scheduled"]);
    assert!((0.12..0.28).contains(&ratio), "5xx ratio {ratio}: {r}");
    assert_eq!(r["errors"], r["errors_by_kind"]["status_5xx"]);
    assert_eq!(code, 1, "errors above --max-error-ratio fail the run");
}

#[test]
fn load_counts_connect_errors_against_a_closed_port() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let (code, r) = run_load(
        &["--target", &url, "--rate", "50", "--duration", "1s"],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "the default --max-error-ratio never fails");
    assert_eq!(r["errors_by_kind"]["connect"], r["scheduled"]);
}

/// Coordinated omission: with one connection, a 1.5 s stall of the backend holds back every
/// request due meanwhile. Measured from their scheduled times they are slow, and they are late.
#[test]
fn a_stalled_target_raises_measured_latency() {
    let (_b, addr) = backend(&["--service-time", "const:1ms", "--workers", "1"]);
    let url = format!("http://{addr}/");
    let staller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        http(
            addr,
            "GET",
            "/?service=1500ms",
            b"",
            Duration::from_secs(10),
        )
        .map(|r| r.status)
    });
    let (code, r) = run_load(
        &[
            "--target",
            &url,
            "--rate",
            "50",
            "--duration",
            "4s",
            "--connections",
            "1",
            "--seed",
            "5",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(staller.join().unwrap().unwrap(), 200);
    assert_eq!(code, 0);
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["sent"], r["scheduled"], "nothing skipped");
    assert!(f(&r, &["late"]) >= 20.0, "requests held back are late: {r}");
    assert!(f(&r, &["latency_ms", "max"]) >= 1000.0, "{r}");
    assert!(f(&r, &["latency_ms", "p90"]) >= 100.0, "{r}");
}

/// A tiny admin API stand-in: answers every request with this body.
fn fake_admin(body: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn json_csv_and_plot_are_written_and_parse() {
    let (_b, addr) = backend(&["--service-time", "exp:2ms", "--workers", "8"]);
    // The real wire format (api::BackendInfo), so that the stand-in cannot drift from it.
    let listed: Vec<BackendInfo> = [
        BackendState::Active,
        BackendState::Starting,
        BackendState::Active,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, state)| BackendInfo {
        id: i as u64,
        address: format!("127.0.0.1:{}", 9000 + i),
        state,
        in_flight: 0,
        capacity: None,
        learnt_limit: None,
        weight: 1,
        cost_per_hour: 0.0,
        origin: Origin::Api,
        ewma_latency_ms: 0.0,
        lease_remaining_seconds: None,
        requests: 0,
        failures: 0,
        ramp: 1.0,
        protocol: Default::default(),
        cold_start_seconds: None,
    })
    .collect();
    let admin = fake_admin(serde_json::to_string(&listed).unwrap());
    let (json, csv, svg) = (
        temp_path("report.json"),
        temp_path("report.csv"),
        temp_path("report.svg"),
    );
    let url = format!("http://{addr}/");
    let admin_url = format!("http://{admin}");
    let args: Vec<String> = [
        "--target",
        &url,
        "--profile",
        "steps:20@2s,60@2s",
        "--arrivals",
        "uniform",
        "--admin",
        &admin_url,
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, r) = finish_load(start_load(&args, &json), &json, Duration::from_secs(60));
    assert_eq!(code, 0);
    for key in [
        "sent",
        "completed",
        "errors",
        "late",
        "achieved_rate",
        "errors_by_kind",
        "series",
    ] {
        assert!(!r[key].is_null(), "report has {key}: {r}");
    }
    for key in ["mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_ms"][key].is_number(), "latency_ms.{key}");
    }
    for kind in ["connect", "timeout", "status_5xx", "status_4xx", "other"] {
        assert_eq!(r["errors_by_kind"][kind], 0);
    }
    assert_eq!(
        r["scheduled"], 160,
        "uniform steps: 2 s at 20/s + 2 s at 60/s"
    );
    let series = r["series"].as_array().unwrap();
    assert_eq!(series[0]["offered"], 20);
    assert_eq!(series[3]["offered"], 60);
    assert!(
        series.iter().any(|p| p["backends"] == 2),
        "admin poll counted active backends: {series:?}"
    );

    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "second,offered,achieved,errors,p50_ms,p99_ms,backends"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.len() >= 4);
    for row in &rows {
        assert_eq!(row.len(), 7);
        row[1].parse::<u64>().unwrap();
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"));
    assert_eq!(svg.matches("<svg").count(), 1);
}

#[test]
fn replays_a_timestamp_trace() {
    // Azure-trace format: 60 requests over 6 s, played 3x faster -> 2 s.
    let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for i in 0..60 {
        text.push_str(&format!(
            "2023-11-16 18:17:{:02}.{:07},100,10\n",
            i / 10,
            (i % 10) * 1_000_000
        ));
    }
    let trace = temp_path("trace.csv");
    std::fs::write(&trace, text).unwrap();
    let (_b, addr) = backend(&[]);
    let url = format!("http://{addr}/");
    let (code, r) = run_load(
        &[
            "--target",
            &url,
            "--trace",
            trace.to_str().unwrap(),
            "--speedup",
            "3",
            "--rate-multiplier",
            "2",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, 0);
    assert_eq!(r["scheduled"], 120, "each request twice: {r}");
    assert!(f(&r, &["duration_s"]) < 2.1);
    assert_eq!(r["arrivals"], "trace");

    // The shared Azure trace, when the checkout has it, compressed 720x and thinned to 10%.
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces/AzureLLMInferenceTrace_code.csv");
    if shared.exists() {
        let (code, r) = run_load(
            &[
                "--target",
                &url,
                "--trace",
                shared.to_str().unwrap(),
                "--speedup",
                "720",
                "--rate-multiplier",
                "0.1",
            ],
            Duration::from_secs(60),
        );
        assert_eq!(code, 0);
        let n = f(&r, &["scheduled"]);
        assert!((700.0..1100.0).contains(&n), "about 882 requests: {n}");
        assert!((4.0..6.0).contains(&f(&r, &["duration_s"])), "{r}");
        assert_eq!(r["errors"], 0);
    }
}

#[test]
fn echo_large_bodies_and_headers() {
    let (_b, addr) = backend(&["--id", "sim-7", "--service-time", "const:2ms"]);
    let body = vec![7u8; 3_000_000];
    let r = http(addr, "POST", "/echo?a=b", &body, Duration::from_secs(20)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-backend-id"), Some("sim-7"));
    let service: f64 = r.header("x-service-ms").unwrap().parse().unwrap();
    assert!(service >= 2.0, "{service}");
    assert!(r.header("x-queue-ms").unwrap().parse::<f64>().is_ok());
    let echo: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo");
    assert_eq!(echo["body_len"], 3_000_000);
    assert_eq!(echo["headers"]["x-test"], "yes");

    let big = get(addr, "/file?size=5000000").unwrap();
    assert_eq!(big.body.len(), 5_000_000);

    let (_d, dripping) = backend(&[
        "--drip",
        "20ms",
        "--drip-bytes",
        "100",
        "--response-size",
        "500",
    ]);
    let t = Instant::now();
    let r = get(dripping, "/").unwrap();
    assert_eq!(r.body.len(), 500);
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "4 pauses of 20 ms"
    );

    let (_q, queued) = backend(&[
        "--workers",
        "1",
        "--queue-limit",
        "0",
        "--service-time",
        "300ms",
    ]);
    let first = std::thread::spawn(move || get(queued, "/").map(|r| r.status));
    std::thread::sleep(Duration::from_millis(100));
    let second = get(queued, "/").unwrap();
    assert_eq!(second.status, 503, "queue full");
    assert_eq!(second.header("x-rejected"), Some("queue-full"));
    assert_eq!(first.join().unwrap().unwrap(), 200);
    let metrics = String::from_utf8(get(queued, "/metrics").unwrap().body).unwrap();
    assert_eq!(metric(&metrics, "ebbtide_backend_rejected_total"), 1.0);
    assert!(metrics.contains("ebbtide_backend_queue_depth{"));
    assert!(metrics.contains("ebbtide_backend_in_flight{"));
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let (mut b, addr) = backend(&["--service-time", "500ms"]);
    let pending = std::thread::spawn(move || get(addr, "/").map(|r| r.status));
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: sending a signal to our own child.
    unsafe {
        libc::kill(b.pid(), libc::SIGTERM);
    }
    assert_eq!(
        pending.join().unwrap().unwrap(),
        200,
        "in-flight request finished"
    );
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(Some(0)));
}

#[test]
fn a_client_that_leaves_takes_its_request_off_the_gauges() {
    // One worker, 5 s per request: three requests hold the worker and two queue places.
    let (_b, addr) = backend(&["--workers", "1", "--service-time", "const:5s"]);
    let gauges = || {
        let m = String::from_utf8(get(addr, "/metrics").unwrap().body).unwrap();
        (
            metric(&m, "ebbtide_backend_in_flight"),
            metric(&m, "ebbtide_backend_queue_depth"),
        )
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        clients.push(s);
    }
    assert!(
        eventually(Duration::from_secs(2), || gauges() == (1.0, 2.0)),
        "{:?}",
        gauges()
    );
    drop(clients);
    // Well before the first request's 5 s end: the gauges follow the requests, not the
    // schedule the backend keeps booked for them.
    assert!(
        eventually(Duration::from_secs(2), || gauges() == (0.0, 0.0)),
        "{:?}",
        gauges()
    );
}
