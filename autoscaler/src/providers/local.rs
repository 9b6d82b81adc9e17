//! The local provider: backends are child processes on this machine, each on a free loopback
//! port. Children die with ebbtide: they are killed when their handle drops, stopped on shutdown,
//! and on Linux they get SIGTERM if ebbtide itself dies (PR_SET_PDEATHSIG).

use super::Instance;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a stopped backend gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts backends from a command template.
pub struct LocalProvider {
    program: PathBuf,
    args: Vec<String>,
    boot_timeout: Duration,
    children: Mutex<HashMap<String, Child>>,
    next: AtomicU64,
}

impl LocalProvider {
    /// A provider running `command` (first word the program, `{port}` replaced by a free port;
    /// the program `ebbtide` means this very executable, so the default works from `cargo run`
    /// and from an installed binary alike).
    pub fn new(command: &[String], boot_timeout: Duration) -> Result<Self, String> {
        let (first, rest) = command.split_first().ok_or("provider.command is empty")?;
        let program = if first == "ebbtide" {
            std::env::current_exe()
                .map_err(|e| format!("cannot find the ebbtide executable: {e}"))?
        } else {
            PathBuf::from(first)
        };
        Ok(LocalProvider {
            program,
            args: rest.to_vec(),
            boot_timeout,
            children: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// Starts one backend and returns as soon as it has an address (it may still be booting;
    /// see [`LocalProvider::wait_ready`]).
    pub fn launch(&self) -> Result<Instance, String> {
        let port = free_port()?;
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut cmd = Command::new(&self.program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        unsafe {
            // SAFETY: prctl is async-signal-safe; this runs in the child between fork and exec.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        let id = format!("local-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let address = format!("127.0.0.1:{port}");
        tracing::info!(%id, %address, pid = child.id(), "backend process started");
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), child);
        Ok(Instance { id, address })
    }

    /// Waits until the instance answers `GET /healthz` with 200, failing if it exits first or the
    /// boot timeout passes (then it is stopped).
    pub async fn wait_ready(&self, instance: &Instance) -> Result<(), String> {
        let addr: SocketAddr = instance
            .address
            .parse()
            .map_err(|e| format!("bad address {}: {e}", instance.address))?;
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            if let Some(status) = self.exited(&instance.id) {
                return Err(format!(
                    "{} exited ({status}) before it was healthy",
                    instance.id
                ));
            }
            if health_status(addr).await == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.terminate(&instance.id).await;
                return Err(format!(
                    "{} was not healthy within {:?}; stopped it",
                    instance.id, self.boot_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn exited(&self, id: &str) -> Option<std::process::ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let child = children.get_mut(id)?;
        child.try_wait().ok().flatten()
    }

    /// The ids of the processes still running.
    pub fn running(&self) -> Vec<String> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children
            .iter_mut()
            .filter_map(|(id, c)| matches!(c.try_wait(), Ok(None)).then(|| id.clone()))
            .collect()
    }

    /// Takes the instances whose process has exited (crashed or killed) out of the table and
    /// returns them with their exit status.
    pub fn reap(&self) -> Vec<(String, std::process::ExitStatus)> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let exited: Vec<(String, std::process::ExitStatus)> = children
            .iter_mut()
            .filter_map(|(id, c)| c.try_wait().ok().flatten().map(|s| (id.clone(), s)))
            .collect();
        for (id, _) in &exited {
            children.remove(id);
        }
        exited
    }

    /// The process ids of the running children, for checks that none is left behind.
    pub fn pids(&self) -> Vec<u32> {
        let children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.values().filter_map(|c| c.id()).collect()
    }

    /// Stops one instance: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub async fn terminate(&self, id: &str) {
        let child = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(child) = child {
            stop(id, child).await;
        }
    }

    /// Stops every instance, all at once.
    pub async fn shutdown(&self) {
        let children: Vec<(String, Child)> = self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let stops = children
            .into_iter()
            .map(|(id, child)| async move { stop(&id, child).await });
        for handle in stops.map(tokio::spawn).collect::<Vec<_>>() {
            let _ = handle.await;
        }
    }
}

async fn stop(id: &str, mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on a pid we own and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => tracing::info!(%id, pid, "backend process stopped"),
            Err(_) => {
                tracing::warn!(%id, pid, "backend did not stop after SIGTERM; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// A port the OS says is free on 127.0.0.1. Another process could take it before the backend
/// binds it; the backend then fails to start and the caller sees the error.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// The status code of `GET /healthz`, or None when it cannot be had within half a second.
pub async fn health_status(addr: SocketAddr) -> Option<u16> {
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ebbtide\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let k = s.read(&mut buf[n..]).await.ok()?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
}
