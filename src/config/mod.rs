//! The typed configuration: one [`Config`], built from defaults, then an optional TOML file, then
//! `COHORT_…` environment variables, then checked as a whole.
//!
//! # Sources, in increasing precedence
//! 1. Built-in defaults (every field has one, so an empty file and an empty environment give a
//!    working single-machine setup).
//! 2. A TOML file with the sections `[database]`, `[kafka]` (and `[kafka.properties]`), `[worker]`,
//!    `[relay]`, `[http]`, `[api]` and `[catalogue]`. Unknown sections and keys are refused.
//! 3. Environment variables `COHORT_<SECTION>_<KEY>` in upper case, e.g. `COHORT_WORKER_BATCH_MAX_EVENTS=500`.
//!    librdkafka properties pass through as `COHORT_KAFKA_PROPERTY__<NAME>`, where `<NAME>` is the
//!    property in upper case with `_` standing for `.` (librdkafka's property names contain no `_`), so
//!    `COHORT_KAFKA_PROPERTY__SASL_MECHANISM=PLAIN` sets `sasl.mechanism`. Any other `COHORT_` variable
//!    is an error that names it: a typo must not silently leave a default in place. The `[catalogue]`
//!    section is structured (lists of typed fields) and is file-only. When `COHORT_DATABASE_URL` is not
//!    set, the conventional `DATABASE_URL` (as used by sqlx tooling) is taken in its place, so it too
//!    overrides the file. Other variables are ignored.
//!
//! # Secrets
//! The database URL may hold a password and some librdkafka properties hold credentials. The `Debug`
//! implementations of [`DatabaseConfig`] and [`KafkaConfig`], [`Config::redacted_summary`] and every
//! error message show them as `***`.
//!
//! # Layout
//! Each section's struct and defaults live in their own module ([`DatabaseConfig`], [`KafkaConfig`],
//! [`WorkerConfig`] and [`RelayConfig`], [`HttpConfig`] and [`ApiConfig`]); `keys` lists every scalar
//! key once, and the environment variables and the summary derive from that list; `validate` holds
//! the checks run at load. Adding a key means a field, its default, its entry in `keys` (and any
//! check in `validate`), and its row in `docs/configuration.md`, which a test compares with the code.

mod database;
mod error;
mod http;
mod kafka;
mod keys;
#[cfg(test)]
mod tests;
mod validate;
mod worker;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::rules::catalogue::CatalogueConfig;

pub use database::{redact_database_url, DatabaseConfig, WalCompression};
pub use error::ConfigError;
pub use http::{ApiConfig, HttpConfig};
pub use kafka::{is_secret_property, KafkaConfig};
pub use worker::{RelayConfig, WorkerConfig};

use keys::KEYS;

/// Prefix of the environment variables that configure cohort.
pub const ENV_PREFIX: &str = "COHORT_";
/// Prefix (after [`ENV_PREFIX`]) of the librdkafka pass-through variables.
const ENV_KAFKA_PROPERTY_PREFIX: &str = "KAFKA_PROPERTY__";
/// The conventional variable taken for `database.url` when `COHORT_DATABASE_URL` is absent.
pub const CONVENTIONAL_DATABASE_URL_VAR: &str = "DATABASE_URL";
/// What secrets are replaced with wherever configuration is shown.
const REDACTED: &str = "***";

/// The whole configuration of a cohort process (every role reads the same struct).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// PostgreSQL, the system of record.
    pub database: DatabaseConfig,
    /// The Kafka cluster and the three topics cohort uses.
    pub kafka: KafkaConfig,
    /// The worker pipeline: batching, retries, shutdown.
    pub worker: WorkerConfig,
    /// The outbox relay that publishes rollout events.
    pub relay: RelayConfig,
    /// The HTTP listener (API, metrics, health).
    pub http: HttpConfig,
    /// The REST API: rate limits and request limits.
    pub api: ApiConfig,
    /// Custom fields and extra enum values for the filter language.
    pub catalogue: CatalogueConfig,
}

impl Config {
    /// Loads the configuration from defaults, the optional file and the process environment, and checks it.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            // Only our variables matter; anything else (including non-unicode names) is ignored.
            let Some(name) = name.to_str() else { continue };
            if !is_relevant_env_var(name) {
                continue;
            }
            let value = value.into_string().map_err(|_| ConfigError::NotUnicode {
                var: name.to_owned(),
            })?;
            env.push((name.to_owned(), value));
        }
        Self::load_from(file, env)
    }

    /// Like [`Config::load`], with the environment given explicitly (tests never touch the process environment).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        // Sorted and de-duplicated (the last value wins), so errors are deterministic.
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(name, _)| is_relevant_env_var(name))
            .collect();
        for (name, value) in &env {
            if let Some(key) = name.strip_prefix(ENV_PREFIX) {
                keys::apply_env(&mut config, name, key, value)?;
            }
        }
        let cohort_url_var = format!("{ENV_PREFIX}DATABASE_URL");
        if !env.contains_key(&cohort_url_var) {
            if let Some(url) = env.get(CONVENTIONAL_DATABASE_URL_VAR) {
                config.database.url = url.clone();
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::ReadFile {
            path: path.to_owned(),
            reason,
        })?;
        toml::from_str(&text).map_err(|err| {
            // Built from the message and span rather than the error's Display, which quotes the
            // offending line: that line could hold a password.
            let location = err
                .span()
                .map(|span| describe_location(&text, span.start))
                .unwrap_or_default();
            ConfigError::ParseFile {
                path: path.to_owned(),
                location,
                message: err.message().trim_end().to_owned(),
            }
        })
    }

    /// A multi-line, human summary for start-up logs, with secrets shown as `***`.
    pub fn redacted_summary(&self) -> String {
        let (kafka, catalogue) = (&self.kafka, &self.catalogue);
        let properties = if kafka.properties.is_empty() {
            "none".to_owned()
        } else {
            kafka
                .properties
                .iter()
                .map(|(name, value)| format!("{name}={}", kafka::redact_property(name, value)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut extra_enums: Vec<&String> = catalogue.extra_enum_values.keys().collect();
        extra_enums.sort();
        // One line per section: its scalar keys as the key table shows them, then, after their
        // sections, the structured parts (the pass-through properties and the catalogue).
        let mut lines = Vec::new();
        let mut keys = KEYS.iter().peekable();
        while let Some(first) = keys.next() {
            let section = first.section();
            let mut line = format!("{section}: {}={}", first.field(), first.show(self));
            while let Some(key) = keys.next_if(|key| key.section() == section) {
                line.push_str(&format!(" {}={}", key.field(), key.show(self)));
            }
            lines.push(line);
            if section == "kafka" {
                lines.push(format!("kafka.properties: {properties}"));
            }
        }
        lines.push(format!(
            "catalogue: custom_fields={} extra_enum_values_for=[{}] max_custom_fields={}",
            catalogue.custom_fields.len(),
            extra_enums
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            catalogue.max_custom_fields
        ));
        lines.join("\n")
    }
}

/// Whether a variable is read at all: ours, or the conventional database URL.
fn is_relevant_env_var(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) || name == CONVENTIONAL_DATABASE_URL_VAR
}

/// Where a byte offset of a TOML file is, for error messages: ` at line L, column C`, followed by
/// ` (key `section.key`)` when the line is a plain `key = value` line. The key is found by a simple
/// scan (the nearest `[section]` header above), which is right for the flat files cohort uses.
fn describe_location(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line_number = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let mut location = format!(" at line {line_number}, column {column}");
    let line = text[line_start..].lines().next().unwrap_or("");
    if !line.trim_start().starts_with('[') {
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim().trim_matches('"');
            let section = text[..line_start].lines().rev().find_map(|l| {
                let l = l.trim();
                l.starts_with('[')
                    .then(|| l.trim_matches(|c| c == '[' || c == ']').trim())
            });
            match section {
                Some(section) => location.push_str(&format!(" (key `{section}.{key}`)")),
                None => location.push_str(&format!(" (key `{key}`)")),
            }
        }
    }
    location
}
