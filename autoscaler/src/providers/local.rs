//! The local provider: backends are child processes on this machine, each on a free loopback
//! port. Children die with ebbtide: they are killed when their handle drops, stopped on shutdown,
//! and on Linux they get SIGTERM if ebbtide itself dies (PR_SET_PDEATHSIG).

use super::{Instance, Probe, Provider, ProviderFuture};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a stopped backend gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts backends from a command template.
pub struct LocalProvider {
    program: PathBuf,
    args: Vec<String>,
    boot_timeout: Duration,
    probe: Probe,
    children: Mutex<HashMap<String, (Instance, Child)>>,
    next: AtomicU64,
}

impl LocalProvider {
    /// A provider running `command` (first word the program, `{port}` replaced by a free port;
    /// the program `ebbtide` means this very executable, so the default works from `cargo run`
    /// and from an installed binary alike), ready once `probe` passes.
    pub fn new(command: &[String], boot_timeout: Duration, probe: Probe) -> Result<Self, String> {
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
            probe,
            children: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// Starts one backend and returns as soon as it has an address (it may still be booting;
    /// see [`Provider::wait_ready`]).
    pub fn start(&self) -> Result<Instance, String> {
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
        let instance = Instance { id, address };
        self.table()
            .insert(instance.id.clone(), (instance.clone(), child));
        Ok(instance)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instance, Child)>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn exited(&self, id: &str) -> Option<std::process::ExitStatus> {
        let mut children = self.table();
        let (_, child) = children.get_mut(id)?;
        child.try_wait().ok().flatten()
    }

    /// The process ids of the running children, for checks that none is left behind.
    pub fn pids(&self) -> Vec<u32> {
        self.table().values().filter_map(|(_, c)| c.id()).collect()
    }

    /// Stops one instance: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    async fn stop_one(&self, id: &str) {
        let child = self.table().remove(id);
        if let Some((_, child)) = child {
            stop(id, child).await;
        }
    }
}

impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>> {
        let started = self.start();
        Box::pin(async move { started })
    }

    /// Healthy means the probe passes; the process exiting first, or the boot timeout
    /// passing (then it is stopped), is a failure.
    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.boot_timeout;
            let gone = || {
                self.exited(&instance.id).map(|status| {
                    format!("{} exited ({status}) before it was healthy", instance.id)
                })
            };
            match super::wait_healthy(&self.probe, &instance.address, deadline, gone).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.stop_one(&instance.id).await;
                    Err(format!(
                        "{} ({}): {e} (boot timeout {:?}); stopped it",
                        instance.id, instance.address, self.boot_timeout
                    ))
                }
            }
        })
    }

    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.stop_one(id).await;
            Ok(())
        })
    }

    fn list(&self) -> Vec<Instance> {
        self.table().values().map(|(i, _)| i.clone()).collect()
    }

    /// Processes that exited (crashed or were killed), with their exit status.
    fn lost(&self) -> Vec<(String, String)> {
        let mut children = self.table();
        let exited: Vec<(String, String)> = children
            .iter_mut()
            .filter_map(|(id, (_, c))| {
                c.try_wait()
                    .ok()
                    .flatten()
                    .map(|s| (id.clone(), format!("process exited ({s})")))
            })
            .collect();
        for (id, _) in &exited {
            children.remove(id);
        }
        exited
    }

    /// Stops every instance, all at once.
    fn shutdown(&self) -> ProviderFuture<'_, ()> {
        let children: Vec<(String, Child)> = self
            .table()
            .drain()
            .map(|(id, (_, child))| (id, child))
            .collect();
        Box::pin(async move {
            let stops = children
                .into_iter()
                .map(|(id, child)| async move { stop(&id, child).await });
            for handle in stops.map(tokio::spawn).collect::<Vec<_>>() {
                let _ = handle.await;
            }
        })
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
