use std::process::ExitCode;

use clap::Parser;
use ingress_xdp::cli::{Cli, Command, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent reports each change it makes; one-shot commands print their
    // results and log only problems.
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INGRESS_XDP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the outermost context, then its causes.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
