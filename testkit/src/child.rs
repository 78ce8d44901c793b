//! The environment a test gives a `cohort` child process: only what it needs. The binary refuses any
//! `COHORT_*` variable it does not know, and reads `DATABASE_URL`, so a child that inherited the test's
//! environment would depend on whatever the developer or the CI machine has set. A test clears the
//! child's environment, passes [`inherited`], then sets the variables it means to pass:
//!
//! ```ignore
//! Command::new(env!("CARGO_BIN_EXE_cohort"))
//!     .env_clear()
//!     .envs(child::inherited())
//!     .env("COHORT_DATABASE_URL", url)
//! ```
//!
//! Standard library only, so it is there whatever features the harness is built with.

use std::ffi::OsString;

/// Variables passed through when set: the search path and home folder, the temporary folder, where an
/// instrumented build writes its coverage profile, and whether a panic prints a backtrace. Never a
/// `COHORT_*` variable, `DATABASE_URL` or `RUST_LOG`.
pub const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LLVM_PROFILE_FILE",
    "RUST_BACKTRACE",
];

/// The variables of [`PASSED_THROUGH`] that this process has, with their values.
pub fn inherited() -> Vec<(OsString, OsString)> {
    PASSED_THROUGH
        .iter()
        .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
        .collect()
}
