//! The `cohort` binary: parses the command line and hands it to the library.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than the system allocator: the worker's batches allocate and free device copies and
/// JSON rows at a high rate, where glibc's malloc spent about 40% of the worker's time (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cohort::cli::Cli::parse();
    let interactive = matches!(cli.command, cohort::cli::Command::Demo(_));
    cohort::telemetry::init_logging(if interactive { "warn" } else { "info" });
    cohort::cli::run(cli)
}
