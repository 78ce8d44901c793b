//! Logging set-up: `tracing` to standard error, filtered by `RUST_LOG` (default `info`; interactive commands
//! such as `cohort demo` default to `warn` so their own output stays readable).

use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber with `default` as the filter unless `RUST_LOG` is set; a second
/// call is a no-op.
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
