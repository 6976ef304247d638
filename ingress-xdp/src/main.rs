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
    let mut code = ExitCode::SUCCESS;
    // A reader that closed the pipe had read enough (see cli::output).
    if let Err(err) = run(cli)
        && !output::is_closed_pipe(&err)
    {
        // One line: the outermost context, then its causes.
        eprintln!("error: {err:#}");
        code = ExitCode::FAILURE;
    }
    // Whatever the command did, say so if its report could not be written.
    if let Some(err) = output::take_error() {
        eprintln!("error: writing to standard output: {err}");
        code = ExitCode::FAILURE;
    }
    code
}
