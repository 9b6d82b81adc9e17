//! The access log, `X-Request-Id` and `traceparent` through a real `ebbtide serve`: lines in both
//! formats for requests to real `ebbtide backend` processes (a retried one among them), ids made
//! unique or kept and returned, trace context passed untouched, the file opened again on
//! SIGHUP, and a writer blocked on a FIFO that nobody reads dropping and counting lines while
//! requests go on.

mod common;

use common::*;
use http::Request;
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A loopback port with nothing listening (bound, then closed).
fn dead_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A fresh path in the temp folder (removed when dropped).
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("ebbtide-access-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until `path` has `n` complete lines.
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    eventually(
        &format!("{n} lines in the access log"),
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            (text.ends_with('\n') && text.lines().count() >= n)
                .then(|| text.lines().map(str::to_string).collect::<Vec<_>>())
        },
    )
    .await
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap) {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (s, h, _) = send(b.body(empty()).unwrap()).await;
    (s, h)
}

#[tokio::test]
async fn json_lines_name_the_backend_attempts_and_status_of_a_retried_request() {
    let live = sim_backend(&["--service-time", "const:1ms", "--workers", "4"]).await;
    let dead = dead_port();
    let log = TempFile::new("json.log");
    let lb = start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n[log]\naccess = \"json\"\naccess_path = \"{}\"\n{}",
        log.0.display(),
        backends_toml(&[dead, live.addr], None)
    )));
    let n = 6;
    let mut ids = Vec::new();
    for i in 0..n {
        let (s, h) = get_with(
            &format!("http://{}/item/{i}?q=1", lb.addr),
            &[
                ("user-agent", "access-test/1"),
                ("referer", "http://r.example/"),
            ],
        )
        .await;
        assert_eq!(s, 200, "request {i}");
        ids.push(h["x-request-id"].to_str().unwrap().to_string());
    }
    let lines = wait_lines(&log.0, n).await;
    assert_eq!(lines.len(), n, "{lines:#?}");
    let mut retried = 0;
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["status"], 200, "{line}");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], format!("/item/{i}?q=1"));
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["backend"], live.addr.to_string(), "{line}");
        assert_eq!(v["request_id"], ids[i], "the id returned is the one logged");
        assert_eq!(v["user_agent"], "access-test/1");
        assert_eq!(v["referer"], "http://r.example/");
        assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(v["bytes"], 3, "`ok\\n` from ebbtide backend: {line}");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        let attempts = v["attempts"].as_u64().unwrap();
        assert!((1..=2).contains(&attempts), "{line}");
        retried += usize::from(attempts == 2);
        let upstream = v["upstream_ms"]
            .as_f64()
            .expect("a sent request has upstream time");
        let duration = v["duration_ms"].as_f64().unwrap();
        assert!(upstream >= 1.0, "the backend serves for 1 ms: {line}");
        assert!(duration >= upstream, "{line}");
        assert!(v["queue_ms"].as_f64().unwrap() >= 0.0);
    }
    // Round robin over [dead, live]: the dead one is asked for some requests (until outlier
    // detection ejects it), and each of those is retried on the live one.
    assert!(retried >= 1, "no request was retried: {lines:#?}");

    // On SIGTERM the last lines are written before the process exits.
    let mut lb = lb;
    assert_eq!(get(&format!("http://{}/last", lb.addr)).await.0, 200);
    sigterm(lb.child.id());
    let status = lb.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let lines = lines_of(&log.0);
    assert_eq!(lines.len(), n + 1);
    assert!(lines[n].contains("\"path\":\"/last\""), "{}", lines[n]);
}

#[tokio::test]
async fn combined_lines_go_to_standard_output_and_the_file_reopens_on_sighup() {
    let live = sim_backend(&["--service-time", "const:1ms"]).await;
    // To standard output: started here to keep reading its stdout after the first line.
    let config = tempfile_path::TempPath::with_contents(
        "toml",
        &base_config(&format!(
            "[log]\naccess = \"combined\"\n{}",
            backends_toml(&[live.addr], None)
        )),
    );
    let mut child = Command::new(ebbtide_bin())
        .args(["serve", "--config"])
        .arg(config.path())
        .env("EBBTIDE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (addr, _) = parse_listening(&first).unwrap();
    let (s, h) = get_with(
        &format!("http://{addr}/a?b=c"),
        &[("user-agent", "ua \"quoted\""), ("x-request-id", "given-1")],
    )
    .await;
    assert_eq!(
        (s.as_u16(), h["x-request-id"].to_str().unwrap()),
        (200, "given-1")
    );
    let line = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    // 127.0.0.1 - - [29/Nov/2026:21:36:19 +0000] "GET /a?b=c HTTP/1.1" 200 3 "-" "ua \x22quoted\x22" ...
    let (head, rest) = line.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    let expected = format!(
        "\"GET /a?b=c HTTP/1.1\" 200 3 \"-\" \"ua \\x22quoted\\x22\" request_id=given-1 \
         backend={} attempts=1 queue_ms=",
        live.addr
    );
    assert!(rest.starts_with(&expected), "{rest:?}\nnot {expected:?}");
    assert!(rest.contains(" upstream_ms=") && rest.contains(" duration_ms="));

    // To a file, moved away by "logrotate": SIGHUP opens a new one at the configured path.
    let log = TempFile::new("rotate.log");
    let rotated = TempFile::new("rotate.log.1");
    let lb = start_ebbtide(&base_config(&format!(
        "[log]\naccess = \"combined\"\naccess_path = \"{}\"\n{}",
        log.0.display(),
        backends_toml(&[live.addr], None)
    )));
    assert_eq!(get(&format!("http://{}/before", lb.addr)).await.0, 200);
    wait_lines(&log.0, 1).await;
    std::fs::rename(&log.0, &rotated.0).unwrap();
    sighup(lb.child.id());
    // The writer reopens before its next line; requests until the new file has one.
    eventually(
        "a new log file after SIGHUP",
        Duration::from_secs(10),
        || async {
            assert_eq!(get(&format!("http://{}/after", lb.addr)).await.0, 200);
            (!lines_of(&log.0).is_empty()).then_some(())
        },
    )
    .await;
    let old = lines_of(&rotated.0);
    assert!(old[0].contains("GET /before "), "{old:?}");
    assert!(lines_of(&log.0)[0].contains("GET /after "));
}

#[tokio::test]
async fn request_ids_are_made_unique_or_kept_and_trace_context_passes_untouched() {
    let echo = test_backend("echo").await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[echo.addr], None)));
    let url = format!("http://{}/echo", lb.addr);
    let seen = |body: &[u8]| -> Value { serde_json::from_slice::<Value>(body).unwrap() };

    // Made: 32 hex digits, unique, the same one at the backend and in the response.
    let mut made = HashSet::new();
    for _ in 0..50 {
        let (s, h, body) = send(Request::get(&url).body(empty()).unwrap()).await;
        assert_eq!(s, 200);
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(seen(&body)["headers"]["x-request-id"], id.as_str());
        assert!(made.insert(id), "an id was made twice");
    }

    // Kept when valid; replaced when not (too long, or with a space).
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let (s, h, body) = send(
        Request::get(&url)
            .header("x-request-id", "client-abc-123")
            .header("traceparent", traceparent)
            .header("tracestate", tracestate)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-request-id"], "client-abc-123");
    let at_backend = &seen(&body)["headers"];
    assert_eq!(at_backend["x-request-id"], "client-abc-123");
    assert_eq!(
        at_backend["traceparent"], traceparent,
        "traceparent untouched"
    );
    assert_eq!(at_backend["tracestate"], tracestate, "tracestate untouched");

    for bad in ["x".repeat(129), "two words".to_string()] {
        let (_, h, body) = send(
            Request::get(&url)
                .header("x-request-id", bad.as_str())
                .body(empty())
                .unwrap(),
        )
        .await;
        let id = h["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "{bad:?} replaced");
        assert_eq!(seen(&body)["headers"]["x-request-id"], id);
    }

    // An answer of ebbtide's own carries one too.
    let (s, h, _) = send(
        Request::get(format!("http://{}/{}", lb.addr, "a".repeat(9000)))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, 414);
    assert_eq!(h["x-request-id"].len(), 32);

    // [log] request_id = false: nothing added.
    let off = start_ebbtide(&base_config(&format!(
        "[log]\nrequest_id = false\n{}",
        backends_toml(&[echo.addr], None)
    )));
    let (_, h, body) = send(
        Request::get(format!("http://{}/echo", off.addr))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert!(h.get("x-request-id").is_none());
    assert!(seen(&body)["headers"].get("x-request-id").is_none());
}

/// `ebbtide_access_log_dropped_total` in a scrape.
async fn dropped_total(admin: SocketAddr) -> u64 {
    let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("ebbtide_access_log_dropped_total "))
        .expect("the dropped counter is in /metrics when the log is on")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_writer_blocked_on_a_fifo_drops_and_counts_lines_and_never_holds_a_request() {
    let live = sim_backend(&["--service-time", "const:0ms", "--workers", "8"]).await;
    let fifo = TempFile::new("fifo");
    let c = std::ffi::CString::new(fifo.0.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A reader that holds the FIFO open and reads nothing (yet): ebbtide's open succeeds, and
    // its writes block once the pipe's buffer (64 KiB on Linux) is full.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo.0)
        .unwrap();
    let lb = start_ebbtide(&base_config(&format!(
        "[log]\naccess = \"json\"\naccess_path = \"{}\"\naccess_buffer = 8\n{}",
        fifo.0.display(),
        backends_toml(&[live.addr], None)
    )));
    // Far more than the pipe and the channel hold (a line is about 400 bytes), 8 at a time.
    let n = 1_200u64;
    let url = format!("http://{}/x", lb.addr);
    let started = std::time::Instant::now();
    for _ in 0..n / 8 {
        let batch: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { get(&url).await })
            })
            .collect();
        for r in batch {
            assert_eq!(r.await.unwrap().0, 200);
        }
    }
    let took = started.elapsed();
    let dropped = dropped_total(lb.admin).await;
    assert!(dropped > 0, "nothing dropped with the writer blocked");
    assert!(dropped < n);
    eprintln!("{n} requests in {took:?} with the log writer blocked; {dropped} lines dropped");

    // Read the FIFO now: the writer gets going again, and every line is either read here or
    // counted as dropped.
    let mut text = Vec::new();
    let mut buf = [0u8; 65536];
    let all = eventually(
        "every line read or dropped",
        Duration::from_secs(20),
        || {
            let got = match reader.read(&mut buf) {
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                Err(e) => panic!("{e}"),
            };
            text.extend_from_slice(&buf[..got]);
            let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
            let admin = lb.admin;
            async move {
                let dropped = dropped_total(admin).await;
                (lines + dropped == n).then_some((lines, dropped))
            }
        },
    )
    .await;
    assert_eq!(all.0 + all.1, n);
    for line in String::from_utf8(text).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["status"], 200);
    }
}
