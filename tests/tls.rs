//! TLS termination end to end: the real `ebbtide serve` with certificates made at test time,
//! a real TLS client (curl, OpenSSL) and `ebbtide load` over https.

mod common;

use common::pki::Pki;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a curl run printed.
#[derive(Debug)]
struct Curl {
    exit: Option<i32>,
    /// The body.
    body: String,
    /// `%{http_code} %{http_version}` of the last answer ("000 0" when there was none).
    status: String,
    /// The verbose trace: the handshake, the certificate's subject.
    trace: String,
}

/// Runs curl with `args` (and a bounded time), off the async workers.
async fn curl(args: Vec<String>) -> Curl {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-v",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(&args)
            .output()
            .expect("curl runs (scripts/test.sh installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        Curl {
            exit: out.status.code(),
            body: body.to_string(),
            status: status.trim().to_string(),
            trace: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

/// curl options for `https://{name}:{port}/` resolved to 127.0.0.1, trusting the test CA.
fn to(pki: &Pki, name: &str, addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let port = addr.port();
    let mut v: Vec<String> = vec![
        "--cacert".into(),
        pki.ca().display().to_string(),
        "--resolve".into(),
        format!("{name}:{port}:127.0.0.1"),
        format!("https://{name}:{port}/"),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn tls_entry(cert: &Path, key: &Path) -> String {
    format!(
        "[[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// `ebbtide load ARGS --quiet --json F`, bounded in time: its exit code and report.
fn load_json(args: &[String], limit: Duration) -> (Option<i32>, Value) {
    let json = std::env::temp_dir().join(format!(
        "ebbtide-tls-load-{}-{}.json",
        std::process::id(),
        args.len()
    ));
    let mut child = Command::new(ebbtide_bin())
        .arg("load")
        .args(args)
        .args(["--quiet", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ebbtide load ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}; stderr: {err}"));
    let _ = std::fs::remove_file(&json);
    (code, serde_json::from_str(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let pki = Pki::new("sni");
    let (a_cert, a_key) = pki.issue("a", "site-a", &["a.test", "127.0.0.1"]);
    let (b_cert, b_key) = pki.issue("b", "site-b", &["b.test", "*.b.test"]);
    let backend = test_backend("one").await;
    let lb = start_ebbtide(&base_config(&format!(
        "{}{}{}",
        tls_entry(&a_cert, &a_key),
        tls_entry(&b_cert, &b_key),
        backends_toml(&[backend.addr], None)
    )));
    assert!(lb.line.contains("https://"), "{}", lb.line);

    for (name, subject) in [
        ("a.test", "site-a"),
        ("b.test", "site-b"),
        ("x.b.test", "site-b"),
    ] {
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let c = curl(to(&pki, name, lb.addr, &["--tlsv1.3", flag])).await;
            assert_eq!(c.status, format!("200 {version}"), "{name} {flag}: {c:?}");
            assert!(c.trace.contains(&format!("subject: CN={subject}")), "{c:?}");
            let expected_alpn = if version == "2" { "h2" } else { "http/1.1" };
            assert!(
                c.trace
                    .contains(&format!("ALPN: server accepted {expected_alpn}")),
                "{c:?}"
            );
            let echo: Value = serde_json::from_str(&c.body).unwrap();
            assert_eq!(echo["headers"]["x-forwarded-proto"], "https", "{echo}");
        }
    }
    // A name no certificate has gets the default (first) one, which curl then rightly refuses.
    let c = curl(to(&pki, "c.test", lb.addr, &[])).await;
    assert_ne!(c.exit, Some(0), "{c:?}");
    assert!(c.trace.contains("subject: CN=site-a"), "{c:?}");
    // No ALPN at all: HTTP/1.1.
    let c = curl(to(&pki, "a.test", lb.addr, &["--no-alpn"])).await;
    assert_eq!(c.status, "200 1.1", "{c:?}");

    // TLS 1.2 is served; TLS 1.1 is refused by the server (the client allows it at SECLEVEL=0).
    let c = curl(to(
        &pki,
        "a.test",
        lb.addr,
        &["--tlsv1.2", "--tls-max", "1.2"],
    ))
    .await;
    assert_eq!(c.status, "200 2", "{c:?}");
    assert!(c.trace.contains("TLSv1.2"), "{c:?}");
    let c = curl(to(
        &pki,
        "a.test",
        lb.addr,
        &[
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
        ],
    ))
    .await;
    assert_eq!(c.exit, Some(35), "a handshake failure: {c:?}");
    assert!(c.status.starts_with("000"), "{c:?}");

    // ebbtide load over https, HTTP/1.1 and h2 (ALPN), trusting the CA or trusting nothing.
    let url = format!("https://127.0.0.1:{}/", lb.addr.port());
    let ca = pki.ca().display().to_string();
    for (extra, protocol) in [
        (vec!["--cacert", &ca], "http/1.1 (TLS)"),
        (vec!["--cacert", &ca, "--h2"], "h2"),
        (vec!["--insecure", "--no-keepalive"], "http/1.1 (TLS)"),
    ] {
        let mut args: Vec<String> = ["--target", &url, "--rate", "50", "--duration", "1s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (code, r) = load_json(&args, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{r}");
        assert_eq!(r["protocol"], protocol, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["ok"], r["scheduled"], "{r}");
    }
    // Without the CA, the certificate is refused: every request fails to connect.
    let args: Vec<String> = [
        "--target",
        &url,
        "--rate",
        "20",
        "--duration",
        "500ms",
        "--cacert",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([a_cert.display().to_string()])
    .collect();
    let (_, r) = load_json(&args, Duration::from_secs(30));
    assert_eq!(r["ok"], 0, "{r}");
    assert_eq!(r["errors"], r["scheduled"], "{r}");
}

/// Polls curl until `https://127.0.0.1:PORT/` is served with the certificate of `subject`.
async fn served_soon(pki: &Pki, addr: SocketAddr, subject: &str, limit: Duration) {
    let needle = format!("subject: CN={subject}");
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let ca = pki.ca().display().to_string();
    eventually(&format!("{subject} to be served"), limit, || {
        let (url, ca, needle) = (url.clone(), ca.clone(), needle.clone());
        async move {
            let c = curl(vec!["--cacert".into(), ca, url]).await;
            (c.status.starts_with("200") && c.trace.contains(&needle)).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_after_sighup_and_after_a_file_change_under_load() {
    let pki = Pki::new("rotate");
    let (cert, key) = pki.issue("gen1", "gen-1", &["127.0.0.1"]);
    let backend = test_backend("one").await;
    let config = |cert: &Path, key: &Path| {
        base_config(&format!(
            "{}{}",
            tls_entry(cert, key),
            backends_toml(&[backend.addr], None)
        ))
    };
    let lb = start_ebbtide(&config(&cert, &key));
    served_soon(&pki, lb.addr, "gen-1", Duration::from_secs(5)).await;

    // Load through both rotations, a new connection (so a new handshake) per request.
    let url = format!("https://127.0.0.1:{}/", lb.addr.port());
    let args: Vec<String> = [
        "--target",
        &url,
        "--rate",
        "100",
        "--duration",
        "12s",
        "--no-keepalive",
        "--cacert",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([pki.ca().display().to_string()])
    .collect();
    let load = std::thread::spawn(move || load_json(&args, Duration::from_secs(60)));
    let started = Instant::now();

    // SIGHUP with a config that names new files: only the reload can find these.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cert2, key2) = pki.issue("gen2", "gen-2", &["127.0.0.1"]);
    std::fs::write(lb.config.path(), config(&cert2, &key2)).unwrap();
    sighup(lb.child.id());
    served_soon(&pki, lb.addr, "gen-2", Duration::from_secs(5)).await;

    // The same files rewritten, no signal: the watcher finds them.
    pki.issue("gen2", "gen-3", &["127.0.0.1"]);
    served_soon(&pki, lb.addr, "gen-3", Duration::from_secs(8)).await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "both rotations must happen while the load runs"
    );

    let (code, r) = tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["errors"], 0, "no failed request across the reloads: {r}");
    assert_eq!(r["ok"], r["scheduled"], "{r}");
    assert!(r["ok"].as_u64().unwrap() >= 1000, "{r}");

    // A broken rotation (a key that does not match) keeps the running certificate.
    let (_, other_key) = pki.issue("other", "other", &["127.0.0.1"]);
    std::fs::copy(&other_key, &key2).unwrap();
    // The watcher looks every 2s: after 3s it has seen (and refused) the new key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    served_soon(&pki, lb.addr, "gen-3", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_or_optional() {
    let pki = Pki::new("mtls");
    let (cert, key) = pki.issue("site", "site", &["site.test"]);
    let (client_cert, client_key) = pki.issue("client", "client-1", &["client.test"]);
    let backend = test_backend("one").await;
    let with_cert: Vec<String> = [
        "--cert".to_string(),
        client_cert.display().to_string(),
        "--key".to_string(),
        client_key.display().to_string(),
    ]
    .into();
    for auth in ["required", "optional"] {
        let lb = start_ebbtide(&format!(
            "[listener]\naddress = \"127.0.0.1:0\"\nclient_ca = \"{}\"\nclient_auth = \"{auth}\"\n\
             [admin]\naddress = \"127.0.0.1:0\"\n{}{}",
            pki.ca().display(),
            tls_entry(&cert, &key),
            backends_toml(&[backend.addr], None)
        ));
        let without = curl(to(&pki, "site.test", lb.addr, &[])).await;
        let mut args = to(&pki, "site.test", lb.addr, &[]);
        args.extend(with_cert.iter().cloned());
        let with = curl(args).await;
        assert!(
            with.status.starts_with("200"),
            "{auth}, with a certificate: {with:?}"
        );
        if auth == "required" {
            assert_ne!(without.exit, Some(0), "{without:?}");
            assert!(without.status.starts_with("000"), "{without:?}");
        } else {
            assert!(without.status.starts_with("200"), "{without:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_listener_and_handshake_deadline() {
    let pki = Pki::new("redirect");
    let (cert, key) = pki.issue("site", "site", &["site.test"]);
    let backend = test_backend("one").await;
    let lb = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nredirect_address = \"127.0.0.1:0\"\n\
         header_read_timeout = \"1s\"\n[admin]\naddress = \"127.0.0.1:0\"\n{}{}",
        tls_entry(&cert, &key),
        backends_toml(&[backend.addr], None)
    ));
    let redirect: SocketAddr = lb
        .line
        .split("(redirect http://")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no redirect address in {:?}", lb.line));
    let c = curl(vec![
        "-H".into(),
        "Host: site.test:80".into(),
        format!("http://{redirect}/a/b?c=1"),
    ])
    .await;
    assert!(c.status.starts_with("308"), "{c:?}");
    let location = format!("location: https://site.test:{}/a/b?c=1\r\n", lb.addr.port());
    assert!(c.trace.contains(&location), "{c:?}");
    // Followed, it reaches the backend over TLS.
    let c = curl(vec![
        "-L".into(),
        "--cacert".into(),
        pki.ca().display().to_string(),
        "--resolve".into(),
        format!("site.test:{}:127.0.0.1", lb.addr.port()),
        "--resolve".into(),
        format!("site.test:{}:127.0.0.1", redirect.port()),
        format!("http://site.test:{}/x", redirect.port()),
    ])
    .await;
    assert!(c.status.starts_with("200"), "{c:?}");

    // A client that connects and never finishes its handshake is closed at header_read_timeout
    // (1s) from accept: silent, and one that stops half way through its ClientHello.
    for sent in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut s = std::net::TcpStream::connect(lb.addr).unwrap();
        s.write_all(sent).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let began = Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf);
        assert!(
            matches!(n, Ok(0))
                || n.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "closed, not timed out: {n:?}"
        );
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "{:?}",
            began.elapsed()
        );
    }
}

#[test]
fn check_and_serve_name_a_key_that_does_not_match_its_certificate() {
    let pki = Pki::new("check");
    let (cert, _) = pki.issue("site", "site", &["site.test"]);
    let (_, other_key) = pki.issue("other", "other", &["other.test"]);
    let config = pki.path("bad.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
             [[listener.tls]]\ncert = \"site.pem\"\nkey = \"{}\"\n\
             [[listener.tls]]\ncert = \"missing.pem\"\nkey = \"other.key\"\n",
            other_key.display()
        ),
    )
    .unwrap();
    for command in [&["check"][..], &["serve", "--config"][..]] {
        let out = Command::new(ebbtide_bin())
            .args(command)
            .arg(&config)
            .env("EBBTIDE_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        let name = config.display();
        // Relative paths are read from the config's directory: site.pem is found.
        assert!(
            stderr.contains(&format!("{name}:8:7: listener.tls[0].key: ")),
            "{stderr}"
        );
        assert!(
            stderr.contains("does not match the certificate"),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("{name}:10:8: listener.tls[1].cert: cannot read")),
            "{stderr}"
        );
    }
    let _ = cert;
}
