//! The `cohort` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cohort::telemetry::init_logging();
    cohort::cli::run(cohort::cli::Cli::parse())
}
