//! The command provider: the user's own scripts start and stop backends, for clouds and
//! schedulers ebbtide has no native provider for. The launch script starts one backend and
//! prints `{"id": "...", "address": "host:port"}` on stdout; the terminate script stops the one
//! whose `{id}` (and `{address}`) it is given. Either failing (non-zero exit, output that is not
//! that JSON, running past its time) is reported with the script's own words from stderr.
//!
//! ebbtide cannot see a scripted backend's process, so it cannot tell a crash from a slow
//! answer: the balancer's health checks and outlier detection keep traffic off a dead one.

use super::{Instance, Probe, Provider, ProviderFuture};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Most bytes of a script's stdout and stderr kept (a script that prints a log is still fine).
const MAX_OUTPUT: usize = 64 * 1024;

/// Runs the launch and terminate scripts.
pub struct CommandProvider {
    launch: Vec<String>,
    terminate: Vec<String>,
    boot_timeout: Duration,
    probe: Probe,
    terminate_timeout: Duration,
    started: Mutex<HashMap<String, Instance>>,
    launches: AtomicU64,
}

impl CommandProvider {
    /// A provider running `[provider] launch` and `terminate`.
    pub fn new(cfg: &ebbtide_config::Provider, probe: Probe) -> Result<Self, String> {
        if cfg.launch.is_empty() {
            return Err(
                "provider.launch is empty: the command provider needs a launch script".into(),
            );
        }
        if cfg.terminate.is_empty() {
            return Err(
                "provider.terminate is empty: the command provider needs a terminate script".into(),
            );
        }
        Ok(CommandProvider {
            launch: cfg.launch.clone(),
            terminate: cfg.terminate.clone(),
            boot_timeout: cfg.boot_timeout.0,
            probe,
            terminate_timeout: cfg.terminate_timeout.0,
            started: Mutex::new(HashMap::new()),
            launches: AtomicU64::new(0),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn launch_one(&self) -> Result<Instance, String> {
        let n = self.launches.fetch_add(1, Ordering::Relaxed) + 1;
        let env = [("EBBTIDE_LAUNCH_SEQ", n.to_string())];
        let out = run(&self.launch, &env, self.boot_timeout, "launch").await?;
        let instance = parse_launch_output(&out)?;
        if self.table().contains_key(&instance.id) {
            return Err(format!(
                "launch script printed id `{}`, which a running backend already has; ids must be unique",
                instance.id
            ));
        }
        tracing::info!(id = %instance.id, address = %instance.address, "launch script started a backend");
        self.table().insert(instance.id.clone(), instance.clone());
        Ok(instance)
    }

    async fn terminate_one(&self, instance: &Instance) -> Result<(), String> {
        let words: Vec<String> = self
            .terminate
            .iter()
            .map(|w| {
                w.replace("{id}", &instance.id)
                    .replace("{address}", &instance.address)
            })
            .collect();
        let env = [
            ("EBBTIDE_INSTANCE_ID", instance.id.clone()),
            ("EBBTIDE_INSTANCE_ADDRESS", instance.address.clone()),
        ];
        run(&words, &env, self.terminate_timeout, "terminate").await?;
        tracing::info!(id = %instance.id, address = %instance.address, "terminate script stopped a backend");
        Ok(())
    }
}

impl Provider for CommandProvider {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>> {
        Box::pin(self.launch_one())
    }

    /// Healthy means the probe passes on the printed address within the boot timeout; otherwise the terminate script is run and the launch counts as failed.
    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.boot_timeout;
            match super::wait_healthy(&self.probe, &instance.address, deadline, || None).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let stopped = match self.terminate(&instance.id).await {
                        Ok(()) => "stopped it".to_string(),
                        Err(t) => format!("and stopping it failed too: {t}"),
                    };
                    Err(format!(
                        "{} ({}): {e} (boot timeout {:?}); {stopped}",
                        instance.id, instance.address, self.boot_timeout
                    ))
                }
            }
        })
    }

    /// Runs the terminate script; the instance leaves the table only when it succeeds, so a
    /// failed stop is tried again at shutdown.
    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(instance) = self.table().get(id).cloned() else {
                return Ok(());
            };
            self.terminate_one(&instance).await?;
            self.table().remove(id);
            Ok(())
        })
    }

    fn list(&self) -> Vec<Instance> {
        self.table().values().cloned().collect()
    }

    /// Runs the terminate script for every instance still started, all at once.
    fn shutdown(&self) -> ProviderFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<Instance> = self.list();
            let stops = all.iter().map(|i| async move {
                if let Err(e) = self.terminate(&i.id).await {
                    tracing::error!(id = %i.id, error = %e, "could not stop a backend at shutdown");
                }
            });
            join_all(stops).await;
        })
    }
}

/// Awaits every future, concurrently, on this task (no spawn: they borrow the provider).
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Runs a script to completion within `limit` (killed after), returning its stdout; a non-zero
/// exit is an error quoting the end of its stderr.
async fn run(
    words: &[String],
    env: &[(&str, String)],
    limit: Duration,
    what: &str,
) -> Result<String, String> {
    let (program, args) = words
        .split_first()
        .ok_or_else(|| format!("the {what} command is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run the {what} script `{program}`: {e}"))?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("the {what} script `{program}` failed: {e}")),
        Err(_) => {
            return Err(format!(
                "the {what} script `{program}` ran longer than {limit:?}; killed it"
            ))
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_OUTPUT)]);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .trim_end()
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(format!(
            "the {what} script `{program}` {}{}",
            out.status,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        ));
    }
    Ok(stdout.into_owned())
}

/// The instance a launch script announced: the last non-empty stdout line, a JSON object with
/// string `id` and `address` (`host:port`).
pub fn parse_launch_output(stdout: &str) -> Result<Instance, String> {
    let expected = "expected one line of JSON such as {\"id\": \"vm-1\", \"address\": \"10.0.0.5:8080\"} as the last line of stdout";
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| format!("the launch script printed nothing; {expected}"))?;
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        format!("the launch script printed `{line}`, which is not JSON ({e}); {expected}")
    })?;
    let field = |name: &str| -> Result<String, String> {
        match value.get(name) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Some(serde_json::Value::Number(n)) if name == "id" => Ok(n.to_string()),
            Some(other) => Err(format!(
                "the launch script's `{name}` is {other}, not a non-empty string; {expected}"
            )),
            None => Err(format!(
                "the launch script printed `{line}`, which has no `{name}`; {expected}"
            )),
        }
    };
    let id = field("id")?;
    let address = field("address")?;
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(format!(
            "the launch script's address `{address}` is not host:port with a port from 1 to 65535"
        ));
    }
    Ok(Instance { id, address })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_output_is_the_last_json_line() {
        let i = parse_launch_output(
            "booting...\n{\"id\": \"vm-7\", \"address\": \"127.0.0.1:9000\"}\n\n",
        )
        .unwrap();
        assert_eq!(
            i,
            Instance {
                id: "vm-7".into(),
                address: "127.0.0.1:9000".into()
            }
        );
        let i = parse_launch_output("{\"id\": 42, \"address\": \"[::1]:80\"}").unwrap();
        assert_eq!(i.id, "42");
    }

    #[test]
    fn bad_launch_output_says_what_was_expected() {
        for (out, needle) in [
            ("", "printed nothing"),
            ("started vm-7 on 10.0.0.5", "not JSON"),
            ("{\"address\": \"127.0.0.1:9000\"}", "has no `id`"),
            ("{\"id\": \"a\", \"address\": 9000}", "`address` is 9000"),
            (
                "{\"id\": \"a\", \"address\": \"127.0.0.1\"}",
                "not host:port",
            ),
            (
                "{\"id\": \"a\", \"address\": \"127.0.0.1:0\"}",
                "not host:port",
            ),
        ] {
            let e = parse_launch_output(out).unwrap_err();
            assert!(e.contains(needle), "{out:?}: {e}");
            assert!(e.contains("expected") || needle == "not host:port", "{e}");
        }
    }
}
