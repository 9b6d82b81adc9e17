//! `ebbtide backend`: a simulated HTTP service (filled in by the backend-sim issue).

/// Options of `ebbtide backend`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Socket address to listen on, e.g. 127.0.0.1:9001.
    #[arg(long)]
    pub listen: String,
}

/// Runs the backend until SIGTERM or ctrl-c.
pub async fn run(args: BackendArgs) -> Result<(), String> {
    Err(format!("backend on {} is not built yet", args.listen))
}
