//! The checks run at load, and the redaction of secrets.

use super::*;

#[test]
fn batch_limits_and_intervals_must_be_positive() {
    for (var, key) in [
        ("COHORT_WORKER_BATCH_MAX_EVENTS", "worker.batch_max_events"),
        ("COHORT_WORKER_MAX_EVENT_BYTES", "worker.max_event_bytes"),
        (
            "COHORT_WORKER_SHUTDOWN_DEADLINE_MS",
            "worker.shutdown_deadline_ms",
        ),
        (
            "COHORT_WORKER_RETRY_INITIAL_BACKOFF_MS",
            "worker.retry_initial_backoff_ms",
        ),
        ("COHORT_RELAY_BATCH_SIZE", "relay.batch_size"),
        ("COHORT_RELAY_POLL_INTERVAL_MS", "relay.poll_interval_ms"),
        ("COHORT_RELAY_RETENTION_HOURS", "relay.retention_hours"),
        (
            "COHORT_DATABASE_CONNECT_TIMEOUT_MS",
            "database.connect_timeout_ms",
        ),
    ] {
        let err = load_env(&[(var, "0")]).unwrap_err();
        assert!(err.to_string().contains(key), "{var}: {err}");
        assert_eq!(invalid_key(Err(err)), key);
    }
    // A zero wait is legitimate: process whatever has arrived without lingering.
    assert!(load_env(&[("COHORT_WORKER_BATCH_MAX_WAIT_MS", "0")]).is_ok());
}

#[test]
fn relay_retention_and_the_embedded_relay_come_from_the_file_and_the_environment() {
    let config =
        load_file("[relay]\nretention_hours = 72\n[worker]\nembedded_relay = false\n").unwrap();
    assert_eq!(config.relay.retention_hours, 72);
    assert!(!config.worker.embedded_relay);

    let config = load_env(&[
        ("COHORT_RELAY_RETENTION_HOURS", "1"),
        ("COHORT_WORKER_EMBEDDED_RELAY", "false"),
    ])
    .unwrap();
    assert_eq!(config.relay.retention_hours, 1);
    assert!(!config.worker.embedded_relay);
    assert!(
        load_env(&[("COHORT_WORKER_EMBEDDED_RELAY", "true")])
            .unwrap()
            .worker
            .embedded_relay
    );

    let summary = config.redacted_summary();
    assert!(summary.contains("retention_hours=1"), "{summary}");
    assert!(summary.contains("embedded_relay=false"), "{summary}");
}

#[test]
fn relay_retention_is_at_least_an_hour_and_the_embedded_relay_is_a_boolean() {
    let result = load_env(&[("COHORT_RELAY_RETENTION_HOURS", "0")]);
    let message = result.as_ref().unwrap_err().to_string();
    assert!(message.contains("at least 1"), "{message}");
    assert_eq!(invalid_key(result), "relay.retention_hours");
    assert_eq!(
        invalid_key(load_file("[relay]\nretention_hours = 0\n")),
        "relay.retention_hours"
    );
    for (var, value) in [
        ("COHORT_RELAY_RETENTION_HOURS", "-1"),
        ("COHORT_RELAY_RETENTION_HOURS", "1.5"),
        ("COHORT_WORKER_EMBEDDED_RELAY", "yes"),
        ("COHORT_WORKER_EMBEDDED_RELAY", "1"),
    ] {
        let err = load_env(&[(var, value)]).unwrap_err();
        assert!(
            matches!(err, ConfigError::InvalidEnvValue { .. }),
            "{var}={value}: {err:?}"
        );
        assert!(err.to_string().contains(var), "{err}");
    }
    let err = load_env(&[("COHORT_WORKER_EMBEDDED_RELAY", "yes")]).unwrap_err();
    assert!(err.to_string().contains("true or false"), "{err}");
}

#[test]
fn the_initial_backoff_must_not_exceed_the_maximum() {
    let result = load_env(&[
        ("COHORT_WORKER_RETRY_INITIAL_BACKOFF_MS", "2000"),
        ("COHORT_WORKER_RETRY_MAX_BACKOFF_MS", "1000"),
    ]);
    let message = result.as_ref().unwrap_err().to_string();
    assert!(message.contains("worker.retry_max_backoff_ms"), "{message}");
    assert_eq!(invalid_key(result), "worker.retry_initial_backoff_ms");
    assert!(load_env(&[
        ("COHORT_WORKER_RETRY_INITIAL_BACKOFF_MS", "1000"),
        ("COHORT_WORKER_RETRY_MAX_BACKOFF_MS", "1000"),
    ])
    .is_ok());
}

#[test]
fn the_caught_up_flush_size_is_at_most_postgresqls_limit_and_zero_turns_it_off() {
    assert_eq!(load_env(&[]).unwrap().worker.caught_up_flush_after_kb, 256);
    for (value, expected) in [("0", 0), ("2048", 2048), ("64", 64)] {
        let config = load_env(&[("COHORT_WORKER_CAUGHT_UP_FLUSH_AFTER_KB", value)]).unwrap();
        assert_eq!(config.worker.caught_up_flush_after_kb, expected);
    }
    let result = load_env(&[("COHORT_WORKER_CAUGHT_UP_FLUSH_AFTER_KB", "2049")]);
    let message = result.as_ref().unwrap_err().to_string();
    assert!(message.contains("at most 2048"), "{message}");
    assert_eq!(invalid_key(result), "worker.caught_up_flush_after_kb");
    assert_eq!(
        invalid_key(load_file("[worker]\ncaught_up_flush_after_kb = 4096\n")),
        "worker.caught_up_flush_after_kb"
    );
    let err = load_env(&[("COHORT_WORKER_CAUGHT_UP_FLUSH_AFTER_KB", "-1")]).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidEnvValue { .. }),
        "{err:?}"
    );
}

#[test]
fn topic_names_must_be_valid_kafka_names() {
    let long = "t".repeat(250);
    for bad in ["", ".", "..", "has space", "slash/topic", "ünïcode", &long] {
        assert_eq!(
            invalid_key(load_env(&[("COHORT_KAFKA_OUTPUT_TOPIC", bad)])),
            "kafka.output_topic",
            "{bad:?}"
        );
    }
    let longest = "t".repeat(249);
    for good in ["a", "a.b_c-D9", "...", &longest] {
        assert!(
            load_env(&[("COHORT_KAFKA_OUTPUT_TOPIC", good)]).is_ok(),
            "{good:?}"
        );
    }
}

#[test]
fn the_three_topics_must_be_distinct() {
    let result = load_env(&[("COHORT_KAFKA_DEAD_LETTER_TOPIC", "device-attribute-changes")]);
    let message = result.as_ref().unwrap_err().to_string();
    assert!(message.contains("kafka.input_topic"), "{message}");
    assert_eq!(invalid_key(result), "kafka.dead_letter_topic");

    let result = load_env(&[("COHORT_KAFKA_OUTPUT_TOPIC", "device-attribute-changes")]);
    assert_eq!(invalid_key(result), "kafka.output_topic");
}

#[test]
fn listen_must_be_a_socket_address() {
    let err = load_file("[http]\nlisten = \"not-an-address\"\n").unwrap_err();
    assert!(matches!(err, ConfigError::ParseFile { .. }), "{err:?}");
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("`http.listen`"), "{err}");
    let err = load_env(&[("COHORT_HTTP_LISTEN", "8080")]).unwrap_err();
    assert!(err.to_string().contains("COHORT_HTTP_LISTEN"), "{err}");
}

#[test]
fn http_limits_are_read_from_file_and_environment_and_must_be_positive() {
    let config = load_file(
        "[http]\nheader_read_timeout_ms = 2000\nrequest_timeout_ms = 90000\nmax_connections = 64\n",
    )
    .unwrap();
    assert_eq!(config.http.header_read_timeout_ms, 2000);
    assert_eq!(config.http.request_timeout_ms, 90_000);
    assert_eq!(config.http.max_connections, 64);
    let config = load_env(&[
        ("COHORT_HTTP_HEADER_READ_TIMEOUT_MS", "500"),
        ("COHORT_HTTP_REQUEST_TIMEOUT_MS", "1500"),
        ("COHORT_HTTP_MAX_CONNECTIONS", "8"),
    ])
    .unwrap();
    assert_eq!(config.http.header_read_timeout_ms, 500);
    assert_eq!(config.http.request_timeout_ms, 1500);
    assert_eq!(config.http.max_connections, 8);
    for (var, key) in [
        (
            "COHORT_HTTP_HEADER_READ_TIMEOUT_MS",
            "http.header_read_timeout_ms",
        ),
        ("COHORT_HTTP_REQUEST_TIMEOUT_MS", "http.request_timeout_ms"),
        ("COHORT_HTTP_MAX_CONNECTIONS", "http.max_connections"),
    ] {
        assert_eq!(invalid_key(load_env(&[(var, "0")])), key);
    }
    let err = load_env(&[("COHORT_HTTP_REQUEST_TIMEOUT_MS", "soon")]).unwrap_err();
    assert!(
        err.to_string().contains("COHORT_HTTP_REQUEST_TIMEOUT_MS"),
        "{err}"
    );
}

#[test]
fn http_client_and_body_limits_are_read_checked_and_summarised() {
    let defaults = HttpConfig::default();
    assert_eq!(defaults.first_request_timeout_ms, 3_000);
    assert_eq!(defaults.max_connections_per_client, 64);
    assert_eq!(defaults.max_body_buffer_bytes, 64 << 20);
    let config = load_file(
        "[http]\nfirst_request_timeout_ms = 1500\nmax_connections_per_client = 8\nmax_body_buffer_bytes = 4194304\n",
    )
    .unwrap();
    assert_eq!(config.http.first_request_timeout_ms, 1500);
    assert_eq!(config.http.max_connections_per_client, 8);
    assert_eq!(config.http.max_body_buffer_bytes, 4 << 20);
    let summary = config.redacted_summary();
    assert!(
        summary.contains(
            "first_request_timeout_ms=1500 request_timeout_ms=60000 max_connections=1024 \
             max_connections_per_client=8 max_body_buffer_bytes=4194304"
        ),
        "{summary}"
    );
    let config = load_env(&[
        ("COHORT_HTTP_FIRST_REQUEST_TIMEOUT_MS", "700"),
        ("COHORT_HTTP_MAX_CONNECTIONS_PER_CLIENT", "2"),
        ("COHORT_HTTP_MAX_BODY_BUFFER_BYTES", "2097152"),
    ])
    .unwrap();
    assert_eq!(config.http.first_request_timeout_ms, 700);
    assert_eq!(config.http.max_connections_per_client, 2);
    assert_eq!(config.http.max_body_buffer_bytes, 2 << 20);
    for (var, key) in [
        (
            "COHORT_HTTP_FIRST_REQUEST_TIMEOUT_MS",
            "http.first_request_timeout_ms",
        ),
        (
            "COHORT_HTTP_MAX_CONNECTIONS_PER_CLIENT",
            "http.max_connections_per_client",
        ),
    ] {
        assert_eq!(invalid_key(load_env(&[(var, "0")])), key);
    }
    // The budget must hold at least one body at the limit.
    assert_eq!(
        invalid_key(load_env(&[(
            "COHORT_HTTP_MAX_BODY_BUFFER_BYTES",
            "1048575"
        )])),
        "http.max_body_buffer_bytes"
    );
    let config = load_env(&[
        ("COHORT_HTTP_MAX_BODY_BUFFER_BYTES", "4096"),
        ("COHORT_API_MAX_BODY_BYTES", "4096"),
    ])
    .unwrap();
    assert_eq!(config.http.max_body_buffer_bytes, 4096);
}

#[test]
fn the_database_url_must_be_a_postgres_url() {
    let result = load_env(&[("COHORT_DATABASE_URL", "mysql://root:pw@h/db")]);
    let message = result.as_ref().unwrap_err().to_string();
    assert!(!message.contains("pw@"), "{message}");
    assert_eq!(invalid_key(result), "database.url");
    assert!(load_env(&[("COHORT_DATABASE_URL", "postgresql://h/db")]).is_ok());
}

#[test]
fn the_pool_needs_at_least_two_connections() {
    assert_eq!(
        invalid_key(load_env(&[("COHORT_DATABASE_MAX_CONNECTIONS", "1")])),
        "database.max_connections"
    );
    assert!(load_env(&[("COHORT_DATABASE_MAX_CONNECTIONS", "2")]).is_ok());
}

#[test]
fn the_catalogue_must_build() {
    let err = load_file(
        "[catalogue]\nmax_custom_fields = 0\n[[catalogue.custom_fields]]\nkey = \"ring\"\ntype = \"string\"\n",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Catalogue(CatalogueError::CapTooSmall { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("[catalogue]"), "{err}");
}

#[test]
fn secrets_appear_in_neither_debug_output_nor_the_summary() {
    let config = load_env(&[
        (
            "COHORT_DATABASE_URL",
            "postgres://cohort:hunter2@db:5432/cohort?sslmode=require&password=hunter3",
        ),
        ("COHORT_KAFKA_PROPERTY__SASL_PASSWORD", "kafka-pass"),
        (
            "COHORT_KAFKA_PROPERTY__SASL_OAUTHBEARER_CLIENT_SECRET",
            "s3cret",
        ),
        ("COHORT_KAFKA_PROPERTY__SASL_JAAS_CONFIG", "jaas-cred"),
        ("COHORT_KAFKA_PROPERTY__SSL_KEY_PASSWORD", "keypass"),
        (
            "COHORT_KAFKA_PROPERTY__SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
            "https://idp/tok",
        ),
        ("COHORT_KAFKA_PROPERTY__SASL_USERNAME", "alice"),
    ])
    .unwrap();
    let debug = format!("{config:?}");
    let pretty = format!("{config:#?}");
    let summary = config.redacted_summary();
    for shown in [&debug, &pretty, &summary] {
        for secret in [
            "hunter2",
            "hunter3",
            "kafka-pass",
            "s3cret",
            "jaas-cred",
            "keypass",
            "https://idp/tok",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(
            shown.contains("postgres://cohort:***@db:5432/cohort"),
            "{shown}"
        );
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert!(shown.contains("alice"), "non-secrets stay visible: {shown}");
    }
    assert!(summary.lines().count() > 5, "{summary}");
}

#[test]
fn database_urls_are_redacted_in_every_form() {
    for (url, shown) in [
        ("postgres://u:p@h/db", "postgres://u:***@h/db"),
        ("postgres://u@h/db", "postgres://u@h/db"),
        ("postgres://h:5432/db", "postgres://h:5432/db"),
        ("postgres://u:p%40x@h", "postgres://u:***@h"),
        (
            "postgres://u:p@h/db?password=x#f",
            "postgres://u:***@h/db?password=***#f",
        ),
        ("host=h password=x", "***"),
        ("", ""),
    ] {
        assert_eq!(redact_database_url(url), shown, "{url}");
    }
}
