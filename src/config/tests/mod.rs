//! The configuration's behaviour: its sources and their precedence here, its checks in `validation`,
//! the key table against the code and the documentation in `keys`.

mod keys;
mod validation;

use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::rules::catalogue::CatalogueError;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A temporary TOML file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cohort-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_from(None, env(pairs))
}

fn load_file(contents: &str) -> Result<Config, ConfigError> {
    let file = TempFile::new(contents);
    Config::load_from(Some(&file.0), env(&[]))
}

fn invalid_key(result: Result<Config, ConfigError>) -> String {
    match result {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid-configuration error, got {other:?}"),
    }
}

#[test]
fn defaults_apply_when_nothing_is_configured() {
    let config = load_env(&[]).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(
        config.database.url,
        "postgres://postgres@127.0.0.1:5432/cohort"
    );
    assert_eq!(config.database.max_connections, 8);
    assert_eq!(config.database.connect_timeout_ms, 5000);
    assert_eq!(config.kafka.brokers, "");
    assert_eq!(config.kafka.brokers(), None);
    assert_eq!(config.kafka.input_topic, "device-attribute-changes");
    assert_eq!(config.kafka.output_topic, "rollout-targets");
    assert_eq!(
        config.kafka.dead_letter_topic,
        "device-attribute-changes.dead-letter"
    );
    assert_eq!(config.kafka.group_id, "cohort-worker");
    assert!(config.kafka.properties.is_empty());
    assert_eq!(config.worker.batch_max_events, 1000);
    assert_eq!(config.worker.batch_max_wait_ms, 20);
    assert_eq!(config.worker.shutdown_deadline_ms, 10_000);
    assert_eq!(config.worker.retry_initial_backoff_ms, 100);
    assert_eq!(config.worker.retry_max_backoff_ms, 10_000);
    assert_eq!(config.worker.max_event_bytes, 65_536);
    assert!(config.worker.embedded_relay);
    assert_eq!(config.relay.batch_size, 500);
    assert_eq!(config.relay.poll_interval_ms, 100);
    assert_eq!(config.relay.retention_hours, 24);
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.catalogue, CatalogueConfig::default());
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(load_file("").unwrap(), Config::default());
}

#[test]
fn a_file_overrides_defaults_and_leaves_other_keys_alone() {
    let config = load_file(
        r#"
        [database]
        url = "postgresql://cohort@db.internal/cohort"
        [kafka]
        brokers = "k1:9092,k2:9092"
        input_topic = "in"
        [kafka.properties]
        "security.protocol" = "SASL_SSL"
        [worker]
        batch_max_events = 50
        [relay]
        poll_interval_ms = 250
        [http]
        listen = "0.0.0.0:9000"
        [catalogue]
        max_custom_fields = 20
        "#,
    )
    .unwrap();
    assert_eq!(
        config.database.url,
        "postgresql://cohort@db.internal/cohort"
    );
    assert_eq!(config.database.max_connections, 8);
    assert_eq!(config.kafka.brokers(), Some("k1:9092,k2:9092"));
    assert_eq!(config.kafka.input_topic, "in");
    assert_eq!(config.kafka.output_topic, "rollout-targets");
    assert_eq!(
        config.kafka.properties.get("security.protocol").unwrap(),
        "SASL_SSL"
    );
    assert_eq!(config.worker.batch_max_events, 50);
    assert_eq!(config.worker.batch_max_wait_ms, 20);
    assert_eq!(config.relay.poll_interval_ms, 250);
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(config.catalogue.max_custom_fields, 20);
}

#[test]
fn environment_variables_override_the_file() {
    let file = TempFile::new(
        r#"
        [worker]
        batch_max_events = 50
        batch_max_wait_ms = 5
        [kafka]
        brokers = "from-file:9092"
        "#,
    );
    let config = Config::load_from(
        Some(&file.0),
        env(&[
            ("COHORT_WORKER_BATCH_MAX_EVENTS", "500"),
            ("COHORT_KAFKA_BROKERS", "from-env:9092"),
            ("COHORT_DATABASE_URL", "postgres://env@h/db"),
            ("COHORT_HTTP_LISTEN", "[::1]:8081"),
            ("PATH", "/usr/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.worker.batch_max_events, 500);
    assert_eq!(config.worker.batch_max_wait_ms, 5);
    assert_eq!(config.kafka.brokers, "from-env:9092");
    assert_eq!(config.database.url, "postgres://env@h/db");
    assert_eq!(config.http.listen.to_string(), "[::1]:8081");
}

#[test]
fn database_url_is_used_only_when_cohort_database_url_is_absent() {
    let config = load_env(&[("DATABASE_URL", "postgres://conventional@h/db")]).unwrap();
    assert_eq!(config.database.url, "postgres://conventional@h/db");

    let config = load_env(&[
        ("DATABASE_URL", "postgres://conventional@h/db"),
        ("COHORT_DATABASE_URL", "postgres://cohort@h/db"),
    ])
    .unwrap();
    assert_eq!(config.database.url, "postgres://cohort@h/db");
}

#[test]
fn an_unknown_key_in_the_file_is_refused_and_named() {
    let err = load_file("[worker]\nbatch_max_events = 5\nbatch_size = 10\n").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ConfigError::ParseFile { .. }), "{err:?}");
    assert!(message.contains("batch_size"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(message.contains("`worker.batch_size`"), "{message}");

    let err = load_file("[metrics]\nenabled = true\n").unwrap_err();
    assert!(err.to_string().contains("metrics"), "{err}");

    let err = load_file("[catalogue]\nnot_a_key = 1\n").unwrap_err();
    assert!(err.to_string().contains("not_a_key"), "{err}");
}

#[test]
fn a_file_that_cannot_be_read_is_named() {
    let path = Path::new("/nonexistent/cohort.toml");
    let err = Config::load_from(Some(path), env(&[])).unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }));
    assert!(
        err.to_string().contains("/nonexistent/cohort.toml"),
        "{err}"
    );
}

#[test]
fn a_file_parse_error_does_not_quote_the_offending_line() {
    let err = load_file(
        "[database]\nurl = \"postgres://u:hunter2@h/db\"\nmax_connections = \"x\"\n[database]\n",
    )
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn an_unknown_cohort_variable_is_refused_and_named() {
    let err = load_env(&[("COHORT_WORKER_BATCH_MAX_EVENT", "5")]).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownEnvVar { .. }), "{err:?}");
    assert!(
        err.to_string().contains("COHORT_WORKER_BATCH_MAX_EVENT"),
        "{err}"
    );

    let err = load_env(&[("COHORT_KAFKA_PROPERTY__", "x")]).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownEnvVar { .. }), "{err:?}");
}

#[test]
fn other_variables_are_ignored() {
    let config = load_env(&[("HOME", "/root"), ("KAFKA_BROKERS", "x:1")]).unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn the_catalogue_cannot_be_set_from_the_environment() {
    let err = load_env(&[("COHORT_CATALOGUE_MAX_CUSTOM_FIELDS", "5")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::CatalogueFromEnv { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("COHORT_CATALOGUE_MAX_CUSTOM_FIELDS"),
        "{message}"
    );
    assert!(message.contains("configuration file"), "{message}");
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_variable() {
    for (var, value) in [
        ("COHORT_WORKER_BATCH_MAX_EVENTS", "lots"),
        ("COHORT_DATABASE_MAX_CONNECTIONS", "-1"),
        ("COHORT_RELAY_POLL_INTERVAL_MS", "1.5"),
        ("COHORT_HTTP_LISTEN", "localhost"),
    ] {
        let err = load_env(&[(var, value)]).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidEnvValue { .. }),
            "{var}: {err:?}"
        );
        assert!(err.to_string().contains(var), "{err}");
    }
}

#[test]
fn wal_compression_comes_from_the_file_or_the_environment_and_is_one_of_five_names() {
    assert_eq!(
        load_env(&[]).unwrap().database.wal_compression,
        WalCompression::Lz4
    );
    let config = load_file("[database]\nwal_compression = \"server\"\n").unwrap();
    assert_eq!(config.database.wal_compression, WalCompression::Server);
    assert_eq!(config.database.wal_compression.setting(), None);
    let config = load_env(&[("COHORT_DATABASE_WAL_COMPRESSION", "zstd")]).unwrap();
    assert_eq!(config.database.wal_compression.setting(), Some("zstd"));
    let err = load_env(&[("COHORT_DATABASE_WAL_COMPRESSION", "gzip")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidEnvValue { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("lz4"), "{err}");
    let err = load_file("[database]\nwal_compression = \"gzip\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::ParseFile { .. }), "{err:?}");
    assert!(err.to_string().contains("lz4"), "{err}");
}

#[test]
fn kafka_property_variables_pass_through_with_underscores_as_dots() {
    let config = load_env(&[
        ("COHORT_KAFKA_PROPERTY__SASL_MECHANISM", "PLAIN"),
        ("COHORT_KAFKA_PROPERTY__SECURITY_PROTOCOL", "SASL_SSL"),
        ("COHORT_KAFKA_PROPERTY__STATISTICS_INTERVAL_MS", "0"),
    ])
    .unwrap();
    let properties: Vec<(&str, &str)> = config
        .kafka
        .properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        properties,
        [
            ("sasl.mechanism", "PLAIN"),
            ("security.protocol", "SASL_SSL"),
            ("statistics.interval.ms", "0"),
        ]
    );
}

#[test]
fn kafka_property_variables_add_to_and_override_file_properties() {
    let file = TempFile::new(
        "[kafka.properties]\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"client.id\" = \"c\"\n",
    );
    let config = Config::load_from(
        Some(&file.0),
        env(&[("COHORT_KAFKA_PROPERTY__SASL_MECHANISM", "PLAIN")]),
    )
    .unwrap();
    assert_eq!(config.kafka.properties["sasl.mechanism"], "PLAIN");
    assert_eq!(config.kafka.properties["client.id"], "c");
}

#[test]
fn properties_that_cohort_sets_itself_are_refused() {
    for name in ["bootstrap.servers", "group.id", "enable.auto.commit"] {
        let file = format!("[kafka.properties]\n\"{name}\" = \"x\"\n");
        assert_eq!(
            invalid_key(load_file(&file)),
            format!("kafka.properties.{name}")
        );
    }
    assert_eq!(
        invalid_key(load_env(&[("COHORT_KAFKA_PROPERTY__GROUP_ID", "g")])),
        "kafka.properties.group.id"
    );
}
