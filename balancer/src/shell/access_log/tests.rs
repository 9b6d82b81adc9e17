use super::*;
use crate::registry::{BackendSpec, BackendState, Origin, Registry, RegistryConfig};

fn backend(address: &str) -> Arc<Backend> {
    let r = Registry::new(RegistryConfig::defaults(), Clock::new());
    r.add_or_renew(
        BackendSpec::plain(address, Origin::Static),
        BackendState::Active,
    )
    .unwrap()
    .0
}

fn record() -> AccessRecord {
    AccessRecord {
        start: 0,
        client: "192.0.2.7:5555".parse().unwrap(),
        method: Method::GET,
        uri: "/a/b?x=%221%22".parse().unwrap(),
        version: Version::HTTP_11,
        request_id: Some(HeaderValue::from_static("abc-123")),
        user_agent: Some(HeaderValue::from_static("curl/8.0 \"quoted\"")),
        referer: None,
        status: 200,
        bytes: 1234,
        duration_ns: 12_345_678,
        backend: Some(backend("127.0.0.1:9001")),
        tries: Tries {
            attempts: 2,
            queue_ns: 1_500_000,
            upstream_ns: Some(10_000_000),
        },
    }
}

/// 2000-10-10 13:55:36.789 UTC, Apache's own example date.
fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(971_186_136_789)
}

#[test]
fn combined_is_apache_combined_then_ebbtides_fields() {
    let mut out = String::new();
    format_line(AccessLogFormat::Combined, &record(), at(), &mut out);
    assert_eq!(
        out,
        "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /a/b?x=%221%22 HTTP/1.1\" 200 1234 \
         \"-\" \"curl/8.0 \\x22quoted\\x22\" request_id=abc-123 backend=127.0.0.1:9001 \
         attempts=2 queue_ms=1.500 upstream_ms=10.000 duration_ms=12.346\n"
    );
}

#[test]
fn json_has_every_field_named() {
    let mut out = String::new();
    let mut r = record();
    r.tries.upstream_ns = None;
    r.backend = None;
    format_line(AccessLogFormat::Json, &r, at(), &mut out);
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["time"], "2000-10-10T13:55:36.789Z");
    assert_eq!(v["client"], "192.0.2.7:5555");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b?x=%221%22");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 1234);
    assert_eq!(v["duration_ms"], 12.346);
    assert_eq!(v["request_id"], "abc-123");
    assert_eq!(v["backend"], serde_json::Value::Null);
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["queue_ms"], 1.5);
    assert_eq!(v["upstream_ms"], serde_json::Value::Null);
    assert_eq!(v["user_agent"], "curl/8.0 \"quoted\"");
    assert_eq!(v["referer"], serde_json::Value::Null);
}

#[test]
fn a_client_cannot_break_a_combined_line() {
    let mut r = record();
    r.user_agent = Some(HeaderValue::from_bytes(b"a\" \\ \xff\tb").unwrap());
    let mut out = String::new();
    format_line(AccessLogFormat::Combined, &r, at(), &mut out);
    assert!(out.contains("\"a\\x22 \\x5C \\xFF\\x09b\""), "{out}");
    assert_eq!(out.matches('\n').count(), 1);
}

#[test]
fn civil_time_matches_known_dates() {
    let c = |s: u64| Civil::of(UNIX_EPOCH + Duration::from_secs(s));
    let ymd = |c: Civil| (c.year, c.month, c.day, c.hour, c.minute, c.second);
    assert_eq!(ymd(c(0)), (1970, 1, 1, 0, 0, 0));
    assert_eq!(ymd(c(951_782_400)), (2000, 2, 29, 0, 0, 0));
    assert_eq!(ymd(c(1_709_251_199)), (2024, 2, 29, 23, 59, 59));
    assert_eq!(ymd(c(4_102_444_800)), (2100, 1, 1, 0, 0, 0));
}

#[test]
fn a_full_channel_drops_and_counts_without_blocking() {
    // A writer that can never keep up: its thread is the real one, but stuck behind a
    // channel of one; the test fills the channel faster than any write can drain it and
    // only checks the sum, which holds however the thread is scheduled.
    let dir = std::env::temp_dir().join(format!("ebbtide-access-{}", std::process::id()));
    let path = dir.with_extension("log");
    let log = AccessLog::start(AccessLogFormat::Json, Some(path.clone()), 1, Clock::new()).unwrap();
    let n = 2_000;
    for _ in 0..n {
        log.submit(Box::new(record()));
    }
    // Every line is either written or counted as dropped: wait (bounded) for the writer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let written = loop {
        let written = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count() as u64;
        if written + log.dropped() == n || std::time::Instant::now() > deadline {
            break written;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(written + log.dropped(), n);
    assert!(log.dropped() > 0, "a channel of one dropped nothing of {n}");
    assert!(written > 0);
    let _ = std::fs::remove_file(&path);
}
