//! ebbtide's configuration: the TOML schema with serde, defaults, human durations, and validation
//! whose every error names the file, line, column and key path. Also the few primitives the other
//! crates share (core time, a seeded RNG), since this crate is the one they all depend on.

#![warn(missing_docs, unreachable_pub)]

pub mod autoscaler;
mod backend_state;
pub mod container;
pub mod kinds;
pub mod lifecycle;
pub mod rng;
mod schema;
pub mod service_time;
pub mod simulation;
pub mod time;
mod validate;

pub use backend_state::BackendState;
pub use lifecycle::{Health, Idempotency, Lifecycle, Outlier, Retries};
pub use schema::*;
pub use validate::{system_ca_bundle, ConfigError, ConfigErrors, SYSTEM_CA_BUNDLES};

/// The embedded default: what `ebbtide serve` runs with no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../examples/default.toml");

impl Config {
    /// Parses and validates TOML text; `file` is only used in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let mut cfg = validate::load(text, file)?;
        cfg.fill_owner();
        Ok(cfg)
    }

    /// A docker provider without `owner` labels its containers with the admin address: two
    /// ebbtide processes on one machine cannot share it, and a restart keeps it, so the next
    /// run finds (and removes) what a killed run left.
    fn fill_owner(&mut self) {
        let admin = self.admin.address.clone();
        if let Some(p) = self.provider.as_mut() {
            if p.kind == ProviderKind::Docker && p.owner.is_none() {
                p.owner = Some(format!("admin-{admin}"));
            }
        }
    }

    /// Reads, parses and validates a file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                line: 0,
                col: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        let mut cfg = Config::from_toml(&text, &file)?;
        if let Some(dir) = path.parent() {
            cfg.listener.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// A one-line human summary of what this config runs, for `ebbtide check` and start-up logs,
    /// e.g. `listener 127.0.0.1:8080, admin 127.0.0.1:9901, policy p2c, 3 static backends,
    /// local provider x2`.
    pub fn summary(&self) -> String {
        let l = &self.listener;
        let mut parts = vec![match l.tls.len() {
            0 => format!("listener {}", l.address),
            1 => format!("listener {} (TLS)", l.address),
            n => format!("listener {} (TLS, {n} certificates)", l.address),
        }];
        parts.push(match self.admin.token {
            Some(_) => format!("admin {} (token)", self.admin.address),
            None => format!("admin {}", self.admin.address),
        });
        parts.push(match self.balancer.policy {
            PolicyKind::ConsistentHash => {
                format!("policy consistent_hash on {}", self.balancer.hash_key)
            }
            PolicyKind::P2c | PolicyKind::PeakEwma if self.balancer.choices != 2 => format!(
                "policy {} (choices {})",
                self.balancer.policy.name(),
                self.balancer.choices
            ),
            p => format!("policy {}", p.name()),
        });
        parts.push(match self.backends.len() {
            0 => "no static backends".to_string(),
            1 => "1 static backend".to_string(),
            n => format!("{n} static backends"),
        });
        parts.push(match &self.provider {
            Some(p) if !p.kinds.is_empty() => {
                let names: Vec<&str> = p.kinds.iter().map(|k| k.name.as_str()).collect();
                format!("{} provider, kinds {}", p.kind.name(), names.join(", "))
            }
            Some(p) => format!("{} provider x{}", p.kind.name(), p.count),
            None => "no provider".to_string(),
        });
        parts.join(", ")
    }

    /// The embedded default config.
    pub fn embedded_default() -> Config {
        Config::from_toml(EMBEDDED_DEFAULT, "<embedded default>")
            .expect("the embedded default config is valid (checked by a test)")
    }
}
