//! The `ebbtide` command: parses arguments, loads config and hands over to the crates. Thin.

use clap::{Parser, Subcommand};
use ebbtide_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

mod autoscale;
mod fleet;
mod in_process;
mod reading;
mod remote;
mod serve;
mod standalone;

/// An elastic, autoscaling HTTP load balancer.
#[derive(Parser)]
#[command(name = "ebbtide", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer (with the autoscaler when the config has one). The default command.
    Serve {
        /// Config file; without it the embedded default runs (local simulated backends).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a simulated backend.
    Backend(ebbtide_sim::backend::BackendArgs),
    /// Offer open-loop load to a URL and report latency.
    Load(ebbtide_sim::load::LoadArgs),
    /// Run the discrete-event simulator: the same policies and deciders in virtual time.
    Simulate(ebbtide_sim::simulate::SimulateArgs),
    /// Run the autoscaler alone, for balancers in other processes: reads their signals and
    /// registers its backends through their admin APIs (`[autoscaler] balancers`).
    Autoscale {
        /// Config file with `[autoscaler]` (and its `balancers`) and `[provider]`.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 with a summary, or 2 with `file:line:col: key: error` lines.
    Check {
        /// The config file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve { config: None });
    match command {
        Command::Check { file } => match Config::from_file(&file) {
            Ok(cfg) => {
                println!("{}: ok: {}", file.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let cfg = match &config {
                Some(path) => match Config::from_file(path) {
                    Ok(cfg) => cfg,
                    Err(errors) => {
                        eprintln!("{errors}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_default(),
            };
            init_logging();
            let rt = runtime(cfg.runtime.worker_threads);
            match rt.block_on(serve::run(cfg, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ebbtide: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Autoscale { config } => {
            let cfg = match Config::from_file(&config) {
                Ok(cfg) => cfg,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = standalone::usable(&cfg, &config) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            init_logging();
            let rt = runtime(cfg.runtime.worker_threads);
            match rt.block_on(standalone::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ebbtide autoscale: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backend(args) => {
            init_logging();
            match runtime(None).block_on(ebbtide_sim::backend::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ebbtide backend: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate(args) => match ebbtide_sim::simulate::run(args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("ebbtide simulate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Load(args) => match runtime(None).block_on(ebbtide_sim::load::run(args)) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("ebbtide load: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// A tokio runtime with `threads` workers (default: the number of cores). One worker means the
/// current-thread runtime: no work-stealing queues or cross-thread wake-ups to pay for when
/// there is no other thread to share with.
fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = match threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// Logs to stderr; the level comes from `EBBTIDE_LOG` (error, warn, info, debug, trace).
fn init_logging() {
    let level = std::env::var("EBBTIDE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
