//! `ebbtide simulate`: the discrete-event simulator (built by the simulator issue).

/// Options of `ebbtide simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The config file: the same file `ebbtide serve` reads, plus a `[simulation]` section.
    #[arg(long)]
    pub config: std::path::PathBuf,
}

/// Runs the simulation and prints its report; returns the exit code.
pub fn run(args: SimulateArgs) -> Result<i32, String> {
    Err(format!("the simulator is not built yet ({})", args.config.display()))
}
