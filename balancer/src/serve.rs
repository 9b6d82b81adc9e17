//! `ebbtide serve`: wires the listener, the proxy, the registry and the admin API together.

use ebbtide_config::Config;
use std::path::PathBuf;

/// Runs the balancer until SIGTERM or ctrl-c.
pub async fn run(_cfg: Config, _path: Option<PathBuf>) -> Result<(), String> {
    Err("not built yet".into())
}
