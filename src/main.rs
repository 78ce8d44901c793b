//! The `cohort` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cohort::cli::Cli::parse();
    let interactive = matches!(cli.command, cohort::cli::Command::Demo(_));
    cohort::telemetry::init_logging(if interactive { "warn" } else { "info" });
    cohort::cli::run(cli)
}
