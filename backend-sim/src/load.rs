//! `ebbtide load`: an open-loop load generator (filled in by the backend-sim issue).

/// Options of `ebbtide load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// URL to send requests to.
    #[arg(long)]
    pub target: String,
}

/// Runs the load and prints the report; the exit code says whether errors stayed under the limit.
pub async fn run(args: LoadArgs) -> Result<i32, String> {
    Err(format!("load against {} is not built yet", args.target))
}
