//! Why a configuration could not be loaded.

use std::path::PathBuf;

use crate::rules::catalogue::CatalogueError;

/// Why a configuration could not be loaded. Each message is complete on its own (it names the file,
/// key or variable at fault and says what is expected), so none of the variants chains a source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("failed to read configuration file {}: {reason}", path.display())]
    ReadFile {
        /// The file named on the command line.
        path: PathBuf,
        /// The IO error.
        reason: std::io::Error,
    },
    /// The configuration file is not valid TOML or does not fit the schema (unknown key, wrong type).
    #[error("invalid configuration file {}{location}: {message}", path.display())]
    ParseFile {
        /// The file at fault.
        path: PathBuf,
        /// ` at line L, column C` when known, else empty.
        location: String,
        /// The parser's message, e.g. "unknown field `foo`, expected one of …".
        message: String,
    },
    /// A `COHORT_` variable that maps to no configuration key.
    #[error(
        "unknown environment variable {var}: it maps to no configuration key \
         (expected COHORT_<SECTION>_<KEY> in upper case, or COHORT_KAFKA_PROPERTY__<NAME>)"
    )]
    UnknownEnvVar {
        /// The variable's name.
        var: String,
    },
    /// A variable tried to set the file-only `[catalogue]` section.
    #[error(
        "environment variable {var} cannot be used: the [catalogue] section can only be set in the configuration file"
    )]
    CatalogueFromEnv {
        /// The variable's name.
        var: String,
    },
    /// A variable's value does not parse to its key's type.
    #[error("environment variable {var} has the invalid value {value:?}: expected {expected}")]
    InvalidEnvValue {
        /// The variable's name.
        var: String,
        /// The value given (only numeric and address keys can fail to parse, so it is not a secret).
        value: String,
        /// What the key accepts.
        expected: &'static str,
    },
    /// A relevant variable's value is not valid Unicode.
    #[error("environment variable {var} is not valid unicode")]
    NotUnicode {
        /// The variable's name.
        var: String,
    },
    /// A value, or a combination of values, that cohort cannot run with.
    #[error("invalid configuration: {key} {problem}")]
    Invalid {
        /// The dotted key at fault, e.g. `worker.batch_max_events`.
        key: String,
        /// What is wrong, phrased to follow the key.
        problem: String,
    },
    /// The `[catalogue]` section does not build a field catalogue.
    #[error("invalid configuration: [catalogue] {0}")]
    Catalogue(CatalogueError),
}

impl ConfigError {
    pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}
