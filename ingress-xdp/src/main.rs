use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use ingress_xdp::cli::{Cli, Command, output, run};

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
        // Colours only on a terminal: journald and log files get plain text
        // (tracing-subscriber colours whatever stderr is, NO_COLOR aside).
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_target(false)
        .init();
    let result = run(cli);
    // The work is done either way; say so if its report could not be
    // written (a closed pipe excepted: that reader had read enough).
    if let Some(err) = output::take_error() {
        eprintln!("error: writing to standard output: {err}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the outermost context, then its causes.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
