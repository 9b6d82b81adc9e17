//! The command provider with real scripts (`sh`) and a real health endpoint on 127.0.0.1: what
//! the scripts are given, what ebbtide makes of what they print, and how failures read. The
//! readiness check is the balancer's own probe, as `ebbtide serve` wires it.

use ebbtide_autoscaler::providers::{CommandProvider, Provider};
use ebbtide_config::time::HumanDuration;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ebbtide-command-provider-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A listener on 127.0.0.1 that answers every request with `status`.
async fn health_server(status: u16) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn provider(launch: &str, terminate: &str, boot: Duration) -> CommandProvider {
    let cfg = ebbtide_config::Provider {
        kind: ebbtide_config::ProviderKind::Command,
        launch: vec!["sh".into(), "-c".into(), launch.into()],
        terminate: vec![
            "sh".into(),
            "-c".into(),
            terminate.into(),
            "sh".into(),
            "{id}".into(),
            "{address}".into(),
        ],
        boot_timeout: HumanDuration(boot),
        terminate_timeout: HumanDuration(Duration::from_secs(5)),
        ..Default::default()
    };
    CommandProvider::new(&cfg, ebbtide::health_probe(&Default::default())).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn launch_wait_terminate_with_real_scripts() {
    let dir = Scratch::new("cycle");
    let port = health_server(200).await;
    let log = dir.path("terminated");
    let p = provider(
        &format!("echo 'booting' ; echo \"{{\\\"id\\\": \\\"vm-$EBBTIDE_LAUNCH_SEQ\\\", \\\"address\\\": \\\"127.0.0.1:{port}\\\"}}\""),
        &format!("echo \"$1 $2 $EBBTIDE_INSTANCE_ID\" >> {}", log.display()),
        Duration::from_secs(5),
    );
    let a = p.launch().await.unwrap();
    let b = p.launch().await.unwrap();
    assert_eq!((a.id.as_str(), b.id.as_str()), ("vm-1", "vm-2"));
    assert_eq!(a.address, format!("127.0.0.1:{port}"));
    p.wait_ready(&a).await.unwrap();
    assert_eq!(p.list().len(), 2);

    p.terminate("vm-1").await.unwrap();
    assert_eq!(lines(&log), vec![format!("vm-1 127.0.0.1:{port} vm-1")]);
    assert_eq!(p.list(), vec![b.clone()]);

    p.shutdown().await;
    assert_eq!(lines(&log).len(), 2, "shutdown stops the rest");
    assert!(lines(&log)[1].starts_with("vm-2 "));
    assert!(p.list().is_empty());
}

#[tokio::test]
async fn a_failing_launch_script_is_quoted() {
    let p = provider(
        "echo 'quota exceeded in zone a' >&2; exit 3",
        "true",
        Duration::from_secs(5),
    );
    let e = p.launch().await.unwrap_err();
    assert!(e.contains("launch script") && e.contains("3"), "{e}");
    assert!(e.contains("quota exceeded in zone a"), "{e}");
    assert!(p.list().is_empty());

    let p = provider("echo started vm-7", "true", Duration::from_secs(5));
    let e = p.launch().await.unwrap_err();
    assert!(
        e.contains("`started vm-7`") && e.contains("not JSON"),
        "{e}"
    );
}

#[tokio::test]
async fn a_launch_script_past_the_boot_timeout_is_killed() {
    let p = provider("sleep 30", "true", Duration::from_millis(300));
    let started = std::time::Instant::now();
    let e = p.launch().await.unwrap_err();
    assert!(e.contains("ran longer than"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_unhealthy_backend_is_terminated_and_reported() {
    let dir = Scratch::new("unhealthy");
    let port = health_server(503).await;
    let log = dir.path("terminated");
    let p = provider(
        &format!("echo '{{\"id\": \"vm-x\", \"address\": \"127.0.0.1:{port}\"}}'"),
        &format!("echo \"$1\" >> {}", log.display()),
        Duration::from_millis(400),
    );
    let i = p.launch().await.unwrap();
    let e = p.wait_ready(&i).await.unwrap_err();
    assert!(e.contains("vm-x") && e.contains("not healthy"), "{e}");
    assert_eq!(lines(&log), vec!["vm-x".to_string()]);
    assert!(p.list().is_empty());
}

#[tokio::test]
async fn a_failed_terminate_keeps_the_instance_for_another_try() {
    let dir = Scratch::new("retry");
    let port = health_server(200).await;
    let flag = dir.path("allow");
    let p = provider(
        &format!("echo '{{\"id\": \"vm-1\", \"address\": \"127.0.0.1:{port}\"}}'"),
        &format!(
            "test -e {} || {{ echo 'api busy' >&2; exit 1; }}",
            flag.display()
        ),
        Duration::from_secs(5),
    );
    p.launch().await.unwrap();
    let e = p.terminate("vm-1").await.unwrap_err();
    assert!(e.contains("api busy"), "{e}");
    assert_eq!(p.list().len(), 1, "still known, so shutdown tries again");
    std::fs::write(&flag, "").unwrap();
    p.shutdown().await;
    assert!(p.list().is_empty());
}
