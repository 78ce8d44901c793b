//! The checks run on a loaded configuration, key by key and across keys.

use super::kafka::{check_topic_name, owned_property};
use super::{redact_database_url, Config, ConfigError};
use crate::rules::catalogue::Catalogue;

impl Config {
    /// The cross-field checks run at load.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if !(db.url.starts_with("postgres://") || db.url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "database.url",
                format!(
                    "must start with postgres:// or postgresql:// (got {:?})",
                    redact_database_url(&db.url)
                ),
            ));
        }
        if db.max_connections < 2 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                format!(
                    "must be at least 2 (one connection listens for control-log notifications), got {}",
                    db.max_connections
                ),
            ));
        }
        positive("database.connect_timeout_ms", db.connect_timeout_ms)?;

        let kafka = &self.kafka;
        let topics = [
            ("kafka.input_topic", &kafka.input_topic),
            ("kafka.output_topic", &kafka.output_topic),
            ("kafka.dead_letter_topic", &kafka.dead_letter_topic),
        ];
        for (key, topic) in topics {
            if let Err(problem) = check_topic_name(topic) {
                return Err(ConfigError::invalid(
                    key,
                    format!("{topic:?} is not a valid kafka topic name: {problem}"),
                ));
            }
        }
        for (i, (key_a, a)) in topics.iter().enumerate() {
            for (key_b, b) in &topics[i + 1..] {
                if a == b {
                    return Err(ConfigError::invalid(
                        *key_b,
                        format!("must differ from {key_a} (both are {a:?})"),
                    ));
                }
            }
        }
        if kafka.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
        }
        for name in kafka.properties.keys() {
            let key = format!("kafka.properties.{name}");
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
            {
                return Err(ConfigError::invalid(
                    key,
                    "is not a librdkafka property name (lower-case letters, digits and dots)",
                ));
            }
            if let Some(instead) = owned_property(name) {
                return Err(ConfigError::invalid(
                    key,
                    format!("cannot be passed through: {instead}"),
                ));
            }
        }

        let worker = &self.worker;
        positive("worker.batch_max_events", worker.batch_max_events as u64)?;
        positive("worker.change_chunk_rows", worker.change_chunk_rows as u64)?;
        positive("worker.max_event_bytes", worker.max_event_bytes as u64)?;
        positive("worker.shutdown_deadline_ms", worker.shutdown_deadline_ms)?;
        positive(
            "worker.retry_initial_backoff_ms",
            worker.retry_initial_backoff_ms,
        )?;
        if worker.caught_up_flush_after_kb > MAX_FLUSH_AFTER_KB {
            return Err(ConfigError::invalid(
                "worker.caught_up_flush_after_kb",
                format!(
                    "({}) must be at most {MAX_FLUSH_AFTER_KB} (PostgreSQL's limit), or 0 to turn it off",
                    worker.caught_up_flush_after_kb
                ),
            ));
        }
        if worker.retry_initial_backoff_ms > worker.retry_max_backoff_ms {
            return Err(ConfigError::invalid(
                "worker.retry_initial_backoff_ms",
                format!(
                    "({}) must not exceed worker.retry_max_backoff_ms ({})",
                    worker.retry_initial_backoff_ms, worker.retry_max_backoff_ms
                ),
            ));
        }

        positive(
            "http.header_read_timeout_ms",
            self.http.header_read_timeout_ms,
        )?;
        positive("http.request_timeout_ms", self.http.request_timeout_ms)?;
        positive("http.max_connections", self.http.max_connections as u64)?;
        positive(
            "http.first_request_timeout_ms",
            self.http.first_request_timeout_ms,
        )?;
        positive(
            "http.max_connections_per_client",
            self.http.max_connections_per_client as u64,
        )?;
        if let Some(address) = &self.http.advertise {
            if let Err(problem) = super::http::check_advertise(address) {
                return Err(ConfigError::invalid(
                    "http.advertise",
                    format!("({address:?}) {problem}"),
                ));
            }
        }
        positive("api.peer_timeout_ms", self.api.peer_timeout_ms)?;
        positive("relay.batch_size", self.relay.batch_size as u64)?;
        positive("relay.poll_interval_ms", self.relay.poll_interval_ms)?;
        positive("relay.retention_hours", self.relay.retention_hours)?;
        positive(
            "api.rate_limit_per_second",
            u64::from(self.api.rate_limit_per_second),
        )?;
        positive("api.rate_limit_burst", u64::from(self.api.rate_limit_burst))?;
        if self.api.max_body_bytes < 1024 {
            return Err(ConfigError::invalid(
                "api.max_body_bytes",
                format!("must be at least 1024, got {}", self.api.max_body_bytes),
            ));
        }
        if self.http.max_body_buffer_bytes < self.api.max_body_bytes {
            return Err(ConfigError::invalid(
                "http.max_body_buffer_bytes",
                format!(
                    "({}) must be at least api.max_body_bytes ({}), or a body at the limit could never be read",
                    self.http.max_body_buffer_bytes, self.api.max_body_bytes
                ),
            ));
        }

        Catalogue::from_config(&self.catalogue).map_err(ConfigError::Catalogue)?;
        Ok(())
    }
}

/// The largest `backend_flush_after` PostgreSQL accepts, in kB.
const MAX_FLUSH_AFTER_KB: u32 = 2048;

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(())
}
