//! The `ebbtide` command: parses arguments, loads config and hands over to the library. Thin.

use clap::{Parser, Subcommand};
use ebbtide_config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

use ebbtide::{init_logging, runtime};

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
    Load(Box<ebbtide_sim::load::LoadArgs>),
    /// Run the discrete-event simulator: the same policies and deciders in virtual time.
    Simulate(ebbtide_sim::simulate::SimulateArgs),
    /// Search the decider and its parameters in the simulator for the cheapest `[autoscaler]`
    /// within a share of requests over the SLO; writes the winning section.
    Tune(ebbtide_sim::simulate::tune::TuneArgs),
    /// Run the autoscaler alone, for balancers in other processes: reads their signals and
    /// registers its backends through their admin APIs (`[autoscaler] balancers`, or the
    /// endpoints of their Service: `[autoscaler.balancer_discovery]`).
    Autoscale {
        /// Config file with `[autoscaler]` (and its `balancers` or `balancer_discovery`) and
        /// `[provider]`.
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
        Command::Check { file } => match Config::from_file(&file)
            .and_then(|cfg| ebbtide::tls_usable(&cfg, &file).map(|()| cfg))
        {
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
                Some(path) => match Config::from_file(path)
                    .and_then(|cfg| ebbtide::tls_usable(&cfg, path).map(|()| cfg))
                {
                    Ok(cfg) => cfg,
                    Err(errors) => {
                        eprintln!("{errors}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_default(),
            };
            init_logging();
            let rt = ebbtide::serve_runtime(&cfg.runtime);
            match rt.block_on(ebbtide::serve(cfg, config)) {
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
            if let Err(e) = ebbtide::autoscale_usable(&cfg, &config) {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            init_logging();
            let rt = runtime(cfg.runtime.worker_threads);
            match rt.block_on(ebbtide::autoscale(cfg)) {
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
        Command::Tune(args) => match ebbtide_sim::simulate::tune::run(args) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("ebbtide tune: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Load(args) => match runtime(None).block_on(ebbtide_sim::load::run(*args)) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("ebbtide load: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
