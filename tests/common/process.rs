//! Child processes of the `ebbtide` binary for the tests that drive it without tokio: a guard
//! that kills on drop, `ebbtide backend` on a free port, and per-run temp paths.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed when the guard drops.
pub struct Child(pub std::process::Child);

impl Child {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits up to `limit` for the process to exit; its exit code, or None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ebbtide backend --listen 127.0.0.1:0 ARGS` and returns it with the address it printed.
pub fn backend(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(super::ebbtide_bin())
        .args(["backend", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("EBBTIDE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ebbtide backend");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        // Keep draining so that later lines never block the child.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("backend printed its address");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (guard, addr)
}

/// `name` in a directory of this test process's own (`ebbtide-tests-PID` in the temp dir).
pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ebbtide-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}
