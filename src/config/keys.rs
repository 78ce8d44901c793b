//! The table of configuration keys: the one place a scalar key is listed. Its environment variable,
//! how the variable's value is parsed and how the value is shown in the start-up summary all derive from
//! its entry, and a test checks the table against the sections' fields and `docs/configuration.md`.
//!
//! A key's environment variable is [`ENV_PREFIX`] followed by its dotted name in upper case with `_`
//! for `.`: `worker.batch_max_events` is `COHORT_WORKER_BATCH_MAX_EVENTS`. Two parts of the
//! configuration are not scalar keys and have their own rules: `kafka.properties` (passed through as
//! `COHORT_KAFKA_PROPERTY__<NAME>`) and the file-only `[catalogue]` section.

use std::net::SocketAddr;

use super::{
    redact_database_url, Config, ConfigError, WalCompression, ENV_KAFKA_PROPERTY_PREFIX, ENV_PREFIX,
};

/// One scalar configuration key: a field of one of the sections.
pub(super) struct Key {
    /// The dotted name, `section.field`, as the file spells it.
    pub(super) name: &'static str,
    /// Sets the field from the value of the key's environment variable (the variable is named in errors).
    set: fn(&mut Config, &str, &str) -> Result<(), ConfigError>,
    /// The field's value as the summary shows it, with secrets redacted.
    show: fn(&Config) -> String,
}

impl Key {
    /// The section, e.g. `worker`.
    pub(super) fn section(&self) -> &'static str {
        self.split().0
    }

    /// The field within the section, e.g. `batch_max_events`.
    pub(super) fn field(&self) -> &'static str {
        self.split().1
    }

    fn split(&self) -> (&'static str, &'static str) {
        // Every name is built by `key!` as `section.field`.
        self.name.split_once('.').unwrap_or(("", self.name))
    }

    /// The environment variable that sets the key, e.g. `COHORT_WORKER_BATCH_MAX_EVENTS`.
    pub(super) fn env_var(&self) -> String {
        format!(
            "{ENV_PREFIX}{}",
            self.name.to_ascii_uppercase().replace('.', "_")
        )
    }

    /// The key's value in `config`, as the summary shows it.
    pub(super) fn show(&self, config: &Config) -> String {
        (self.show)(config)
    }
}

/// An entry of [`KEYS`] for the field `$section.$field` of [`Config`], shown with `Display` unless a
/// function says otherwise.
macro_rules! key {
    ($section:ident . $field:ident) => {
        key!($section.$field, |config| config.$section.$field.to_string())
    };
    ($section:ident . $field:ident, $show:expr) => {
        Key {
            name: concat!(stringify!($section), ".", stringify!($field)),
            set: |config, var, value| {
                config.$section.$field = parse(var, value)?;
                Ok(())
            },
            show: $show,
        }
    };
}

/// Every scalar key, section by section in the order of [`Config`]'s fields and, within a section, in
/// the order of the section's fields (the summary lists them so).
pub(super) const KEYS: &[Key] = &[
    key!(database.url, show_database_url),
    key!(database.max_connections),
    key!(database.connect_timeout_ms),
    key!(database.wal_compression),
    key!(kafka.brokers, show_brokers),
    key!(kafka.input_topic),
    key!(kafka.output_topic),
    key!(kafka.dead_letter_topic),
    key!(kafka.group_id),
    key!(worker.batch_max_events),
    key!(worker.batch_max_wait_ms),
    key!(worker.shutdown_deadline_ms),
    key!(worker.retry_initial_backoff_ms),
    key!(worker.retry_max_backoff_ms),
    key!(worker.max_event_bytes),
    key!(worker.embedded_relay),
    key!(worker.embedded_api),
    key!(worker.caught_up_flush_after_kb),
    key!(worker.change_chunk_rows),
    key!(relay.batch_size),
    key!(relay.poll_interval_ms),
    key!(relay.retention_hours),
    key!(http.listen),
    key!(http.advertise, show_advertise),
    key!(http.header_read_timeout_ms),
    key!(http.first_request_timeout_ms),
    key!(http.request_timeout_ms),
    key!(http.max_connections),
    key!(http.max_connections_per_client),
    key!(http.max_body_buffer_bytes),
    key!(api.rate_limit_per_second),
    key!(api.rate_limit_burst),
    key!(api.max_body_bytes),
    key!(api.peer_timeout_ms),
];

/// `database.url` with its password redacted.
fn show_database_url(config: &Config) -> String {
    redact_database_url(&config.database.url)
}

/// `http.advertise`, or where its default comes from.
fn show_advertise(config: &Config) -> String {
    config
        .http
        .advertise
        .clone()
        .unwrap_or_else(|| "(from http.listen)".to_owned())
}

/// `kafka.brokers`, or `(not configured)` when there are none (the demo then embeds a broker).
fn show_brokers(config: &Config) -> String {
    config
        .kafka
        .brokers()
        .unwrap_or("(not configured)")
        .to_owned()
}

/// The variable naming the configuration file, read by the command line before loading.
const CONFIG_FILE_KEY: &str = "CONFIG";

/// Applies one `COHORT_` variable to `config`; `key` is the variable's name without the prefix.
pub(super) fn apply_env(
    config: &mut Config,
    var: &str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    if let Some(property) = key.strip_prefix(ENV_KAFKA_PROPERTY_PREFIX) {
        if property.is_empty() {
            return Err(ConfigError::UnknownEnvVar {
                var: var.to_owned(),
            });
        }
        let name = property.to_ascii_lowercase().replace('_', ".");
        config.kafka.properties.insert(name, value.to_owned());
        return Ok(());
    }
    if key == "CATALOGUE" || key.starts_with("CATALOGUE_") {
        return Err(ConfigError::CatalogueFromEnv {
            var: var.to_owned(),
        });
    }
    if key == CONFIG_FILE_KEY {
        return Ok(());
    }
    match KEYS.iter().find(|entry| entry.env_var() == var) {
        Some(entry) => (entry.set)(config, var, value),
        None => Err(ConfigError::UnknownEnvVar {
            var: var.to_owned(),
        }),
    }
}

/// The types an environment value can parse to, with the phrase used in error messages.
trait EnvValue: Sized {
    const EXPECTED: &'static str;

    fn from_env(value: &str) -> Option<Self>;
}

/// A value parsed with `FromStr`, surrounding whitespace ignored.
macro_rules! env_value_from_str {
    ($($type:ty => $expected:literal),* $(,)?) => {$(
        impl EnvValue for $type {
            const EXPECTED: &'static str = $expected;

            fn from_env(value: &str) -> Option<Self> {
                value.trim().parse().ok()
            }
        }
    )*};
}

env_value_from_str! {
    u32 => "an unsigned integer",
    u64 => "an unsigned integer",
    usize => "an unsigned integer",
    bool => "true or false",
    WalCompression => "one of server, off, pglz, lz4, zstd",
    SocketAddr => "a socket address such as 127.0.0.1:8080",
}

/// Strings (URLs, broker lists, topic names) are taken exactly as given.
impl EnvValue for String {
    const EXPECTED: &'static str = "a string";

    fn from_env(value: &str) -> Option<Self> {
        Some(value.to_owned())
    }
}

/// An optional string: set by any value but an empty one.
impl EnvValue for Option<String> {
    const EXPECTED: &'static str = "a string";

    fn from_env(value: &str) -> Option<Self> {
        let value = value.trim();
        Some((!value.is_empty()).then(|| value.to_owned()))
    }
}

fn parse<T: EnvValue>(var: &str, value: &str) -> Result<T, ConfigError> {
    T::from_env(value).ok_or_else(|| ConfigError::InvalidEnvValue {
        var: var.to_owned(),
        value: value.to_owned(),
        expected: T::EXPECTED,
    })
}
