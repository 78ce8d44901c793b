//! The typed configuration: one [`Config`], built from defaults, then an optional TOML file, then
//! `COHORT_…` environment variables, then checked as a whole.
//!
//! # Sources, in increasing precedence
//! 1. Built-in defaults (every field has one, so an empty file and an empty environment give a
//!    working single-machine setup).
//! 2. A TOML file with the sections `[database]`, `[kafka]` (and `[kafka.properties]`), `[worker]`,
//!    `[relay]`, `[http]` and `[catalogue]`. Unknown sections and keys are refused.
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

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::rules::catalogue::{Catalogue, CatalogueConfig, CatalogueError};

/// Prefix of the environment variables that configure cohort.
pub const ENV_PREFIX: &str = "COHORT_";
/// Prefix (after [`ENV_PREFIX`]) of the librdkafka pass-through variables.
const ENV_KAFKA_PROPERTY_PREFIX: &str = "KAFKA_PROPERTY__";
/// The conventional variable taken for `database.url` when `COHORT_DATABASE_URL` is absent.
pub const CONVENTIONAL_DATABASE_URL_VAR: &str = "DATABASE_URL";
/// What secrets are replaced with wherever configuration is shown.
const REDACTED: &str = "***";

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
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

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

/// `[database]`: how to reach PostgreSQL.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL (`postgres://user:password@host:port/db?…`); it may hold the password, so it is
    /// only ever shown redacted.
    pub url: String,
    /// Pool size. At least 2: a worker holds one connection for LISTEN on the control log while
    /// batches commit on others.
    pub max_connections: u32,
    /// How long to wait for a connection (at start-up and from the pool) before reporting the
    /// database as unavailable, which is a transient failure the caller retries.
    pub connect_timeout_ms: u64,
    /// The WAL compression cohort asks for on its own sessions (`wal_compression`, a superuser
    /// setting: granted with `GRANT SET ON PARAMETER wal_compression TO …` on PostgreSQL 15+). A
    /// worker's random device and membership writes are mostly full-page images, which lz4 shrinks
    /// about threefold. Where the role may not set it, cohort logs a warning once and uses the server's.
    pub wal_compression: WalCompression,
}

/// `database.wal_compression`: what cohort's sessions set `wal_compression` to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalCompression {
    /// Leave the server's setting alone.
    Server,
    /// No compression.
    Off,
    /// PostgreSQL's built-in compressor (slow; every build has it).
    Pglz,
    /// lz4 (cheap; PostgreSQL 15+ built with lz4, as the Debian and official images are).
    Lz4,
    /// zstd (smaller, more CPU; PostgreSQL 15+ built with zstd).
    Zstd,
}

impl WalCompression {
    /// The value given to `wal_compression`, or `None` for [`WalCompression::Server`].
    pub fn setting(self) -> Option<&'static str> {
        match self {
            WalCompression::Server => None,
            WalCompression::Off => Some("off"),
            WalCompression::Pglz => Some("pglz"),
            WalCompression::Lz4 => Some("lz4"),
            WalCompression::Zstd => Some("zstd"),
        }
    }

    /// The configured name (`server`, `off`, `pglz`, `lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        self.setting().unwrap_or("server")
    }
}

impl std::str::FromStr for WalCompression {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(WalCompression::Server),
            "off" => Ok(WalCompression::Off),
            "pglz" => Ok(WalCompression::Pglz),
            "lz4" => Ok(WalCompression::Lz4),
            "zstd" => Ok(WalCompression::Zstd),
            _ => Err(()),
        }
    }
}

impl fmt::Display for WalCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/cohort".to_owned(),
            max_connections: 8,
            connect_timeout_ms: 5000,
            wal_compression: WalCompression::Lz4,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_database_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("wal_compression", &self.wal_compression)
            .finish()
    }
}

/// `[kafka]`: the cluster, the topics and the consumer group.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,…`). Empty means "not configured": the demo then embeds a broker.
    pub brokers: String,
    /// Where device attribute changes arrive (key = device id).
    pub input_topic: String,
    /// Where rollout-target events are published for the OTA dispatcher.
    pub output_topic: String,
    /// Where inputs that can never be processed go, with the reason, so their offsets can advance.
    pub dead_letter_topic: String,
    /// The consumer group of the workers; its members share the input partitions.
    pub group_id: String,
    /// librdkafka properties passed through unchanged (security, tuning), e.g. `sasl.mechanism`.
    /// Properties that cohort sets itself (`bootstrap.servers`, `group.id`, `enable.auto.commit`)
    /// are refused here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            input_topic: "device-attribute-changes".to_owned(),
            output_topic: "rollout-targets".to_owned(),
            dead_letter_topic: "device-attribute-changes.dead-letter".to_owned(),
            group_id: "cohort-worker".to_owned(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The configured bootstrap servers, or `None` when none are configured (the demo embeds a broker).
    pub fn brokers(&self) -> Option<&str> {
        let brokers = self.brokers.trim();
        (!brokers.is_empty()).then_some(brokers)
    }
}

/// The pass-through properties, with secret values shown as `***`.
struct RedactedProperties<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedProperties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, value)| (name, redact_property(name, value))),
            )
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("input_topic", &self.input_topic)
            .field("output_topic", &self.output_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("group_id", &self.group_id)
            .field("properties", &RedactedProperties(&self.properties))
            .finish()
    }
}

/// `[worker]`: the consume → evaluate → commit pipeline.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Most input events in one batch (one PostgreSQL transaction); bounds transaction size and memory.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more events before it is processed; trades latency for throughput.
    pub batch_max_wait_ms: u64,
    /// How long shutdown may take to finish or fence in-flight batches and commit before exiting anyway.
    pub shutdown_deadline_ms: u64,
    /// First wait before retrying a transient failure (database or broker down).
    pub retry_initial_backoff_ms: u64,
    /// Longest wait between retries; the backoff doubles up to this.
    pub retry_max_backoff_ms: u64,
    /// Largest input payload accepted; larger ones are dead-lettered as oversize, protecting memory.
    pub max_event_bytes: usize,
    /// Whether the worker process also runs the outbox relay ([`crate::relay`]), so a single process is a
    /// complete deployment. Turn it off when relays run as separate `cohort relay` processes; leaving it on
    /// in every worker is also safe (one relay at a time holds the publishing lease).
    pub embedded_relay: bool,
    /// Whether the worker process also serves the REST API ([`crate::api`]) on `http.listen`. Turn it off
    /// when the API runs as separate `cohort api` processes.
    pub embedded_api: bool,
    /// PostgreSQL's `backend_flush_after` (in kB, at most 2048; 0 turns it off) for the batches of a
    /// partition that is caught up: a batch closed by `batch_max_wait_ms` with nothing of its partition in
    /// flight, and at most a quarter of `batch_max_events`. Such a transaction writes the pages it evicts
    /// from shared buffers back to disk as it goes, instead of leaving them in the kernel's cache for the
    /// next checkpoint's file syncs, which otherwise stall every commit for as long as they take. A partition that is behind or nearly (full or large
    /// batches, pipelined) leaves the server's setting alone: write-back as it goes costs about a quarter
    /// of the sustained rate.
    pub caught_up_flush_after_kb: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 1000,
            batch_max_wait_ms: 20,
            shutdown_deadline_ms: 10_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 10_000,
            max_event_bytes: 65_536,
            embedded_relay: true,
            embedded_api: true,
            caught_up_flush_after_kb: 256,
        }
    }
}

/// `[relay]`: publishing committed outbox rows to Kafka.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most outbox rows read and published per round.
    pub batch_size: usize,
    /// How often the outbox is polled when no notification arrives (a safety net, not the main path).
    pub poll_interval_ms: u64,
    /// How long published rows are kept before the relay deletes them, in hours: long enough to
    /// investigate what was sent, short enough that the table does not grow forever.
    pub retention_hours: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval_ms: 100,
            retention_hours: 24,
        }
    }
}

/// `[http]`: the one HTTP listener.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address serving /metrics, /healthz, /readyz and the REST API. Loopback by default: exposing the
    /// API is a deliberate choice.
    pub listen: SocketAddr,
    /// A connection must send a request's head (request line and headers) within this; it also closes a
    /// keep-alive connection left idle that long.
    pub header_read_timeout_ms: u64,
    /// A new connection must send its first request's head within this (or within
    /// `header_read_timeout_ms`, if that is shorter), else it is closed: an idle socket does not hold a
    /// connection slot for the whole header timeout.
    pub first_request_timeout_ms: u64,
    /// A request must be read and answered within this: 408 when its body had not all arrived, 503 when
    /// the answer was not ready. A streamed answer's body is not bounded.
    pub request_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections served at once for one client (one IPv4 address, or one IPv6 /64): a further one is
    /// answered 503 and closed at once.
    pub max_connections_per_client: usize,
    /// Request-body bytes all requests may hold at once while their bodies are read and answered. A body
    /// reserves its `Content-Length` (a chunked one `api.max_body_bytes`) when it is first read, and
    /// waits while the budget is spent (503 when the request's time runs out first). At least
    /// `api.max_body_bytes`.
    pub max_body_buffer_bytes: usize,
}

/// `[api]`: limits of the REST API.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Requests per second each API key may make on average (a token bucket per key and process).
    pub rate_limit_per_second: u32,
    /// Requests a key may make in a burst above the average rate.
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes; larger ones are refused with 413 before being read.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            max_body_bytes: 1 << 20,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout_ms: 10_000,
            first_request_timeout_ms: 3_000,
            request_timeout_ms: 60_000,
            max_connections: 1024,
            max_connections_per_client: 64,
            max_body_buffer_bytes: 64 << 20,
        }
    }
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
                config.apply_env(name, key, value)?;
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

    /// Applies one `COHORT_` variable; `key` is the name without the prefix.
    fn apply_env(&mut self, var: &str, key: &str, value: &str) -> Result<(), ConfigError> {
        if let Some(property) = key.strip_prefix(ENV_KAFKA_PROPERTY_PREFIX) {
            if property.is_empty() {
                return Err(ConfigError::UnknownEnvVar {
                    var: var.to_owned(),
                });
            }
            let name = property.to_ascii_lowercase().replace('_', ".");
            self.kafka.properties.insert(name, value.to_owned());
            return Ok(());
        }
        if key == "CATALOGUE" || key.starts_with("CATALOGUE_") {
            return Err(ConfigError::CatalogueFromEnv {
                var: var.to_owned(),
            });
        }
        let string = |target: &mut String| *target = value.to_owned();
        match key {
            // The path of this file itself, read by the command line before loading.
            "CONFIG" => {}
            "DATABASE_URL" => string(&mut self.database.url),
            "DATABASE_MAX_CONNECTIONS" => self.database.max_connections = parse(var, value)?,
            "DATABASE_CONNECT_TIMEOUT_MS" => self.database.connect_timeout_ms = parse(var, value)?,
            "DATABASE_WAL_COMPRESSION" => self.database.wal_compression = parse(var, value)?,
            "KAFKA_BROKERS" => string(&mut self.kafka.brokers),
            "KAFKA_INPUT_TOPIC" => string(&mut self.kafka.input_topic),
            "KAFKA_OUTPUT_TOPIC" => string(&mut self.kafka.output_topic),
            "KAFKA_DEAD_LETTER_TOPIC" => string(&mut self.kafka.dead_letter_topic),
            "KAFKA_GROUP_ID" => string(&mut self.kafka.group_id),
            "WORKER_BATCH_MAX_EVENTS" => self.worker.batch_max_events = parse(var, value)?,
            "WORKER_BATCH_MAX_WAIT_MS" => self.worker.batch_max_wait_ms = parse(var, value)?,
            "WORKER_SHUTDOWN_DEADLINE_MS" => self.worker.shutdown_deadline_ms = parse(var, value)?,
            "WORKER_RETRY_INITIAL_BACKOFF_MS" => {
                self.worker.retry_initial_backoff_ms = parse(var, value)?
            }
            "WORKER_RETRY_MAX_BACKOFF_MS" => self.worker.retry_max_backoff_ms = parse(var, value)?,
            "WORKER_MAX_EVENT_BYTES" => self.worker.max_event_bytes = parse(var, value)?,
            "WORKER_EMBEDDED_RELAY" => self.worker.embedded_relay = parse(var, value)?,
            "WORKER_EMBEDDED_API" => self.worker.embedded_api = parse(var, value)?,
            "WORKER_CAUGHT_UP_FLUSH_AFTER_KB" => {
                self.worker.caught_up_flush_after_kb = parse(var, value)?
            }
            "API_RATE_LIMIT_PER_SECOND" => self.api.rate_limit_per_second = parse(var, value)?,
            "API_RATE_LIMIT_BURST" => self.api.rate_limit_burst = parse(var, value)?,
            "API_MAX_BODY_BYTES" => self.api.max_body_bytes = parse(var, value)?,
            "RELAY_BATCH_SIZE" => self.relay.batch_size = parse(var, value)?,
            "RELAY_POLL_INTERVAL_MS" => self.relay.poll_interval_ms = parse(var, value)?,
            "RELAY_RETENTION_HOURS" => self.relay.retention_hours = parse(var, value)?,
            "HTTP_LISTEN" => self.http.listen = parse(var, value)?,
            "HTTP_HEADER_READ_TIMEOUT_MS" => self.http.header_read_timeout_ms = parse(var, value)?,
            "HTTP_REQUEST_TIMEOUT_MS" => self.http.request_timeout_ms = parse(var, value)?,
            "HTTP_MAX_CONNECTIONS" => self.http.max_connections = parse(var, value)?,
            "HTTP_FIRST_REQUEST_TIMEOUT_MS" => {
                self.http.first_request_timeout_ms = parse(var, value)?
            }
            "HTTP_MAX_CONNECTIONS_PER_CLIENT" => {
                self.http.max_connections_per_client = parse(var, value)?
            }
            "HTTP_MAX_BODY_BUFFER_BYTES" => self.http.max_body_buffer_bytes = parse(var, value)?,
            _ => {
                return Err(ConfigError::UnknownEnvVar {
                    var: var.to_owned(),
                })
            }
        }
        Ok(())
    }

    /// The cross-field checks run at load.
    fn validate(&self) -> Result<(), ConfigError> {
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

    /// A multi-line, human summary for start-up logs, with secrets shown as `***`.
    pub fn redacted_summary(&self) -> String {
        let Config {
            database,
            kafka,
            worker,
            relay,
            http,
            api,
            catalogue,
        } = self;
        let properties = if kafka.properties.is_empty() {
            "none".to_owned()
        } else {
            kafka
                .properties
                .iter()
                .map(|(name, value)| format!("{name}={}", redact_property(name, value)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut extra_enums: Vec<&String> = catalogue.extra_enum_values.keys().collect();
        extra_enums.sort();
        [
            format!(
                "database: url={} max_connections={} connect_timeout_ms={} wal_compression={}",
                redact_database_url(&database.url),
                database.max_connections,
                database.connect_timeout_ms,
                database.wal_compression
            ),
            format!(
                "kafka: brokers={} input_topic={} output_topic={} dead_letter_topic={} group_id={}",
                kafka.brokers().unwrap_or("(not configured)"),
                kafka.input_topic,
                kafka.output_topic,
                kafka.dead_letter_topic,
                kafka.group_id
            ),
            format!("kafka.properties: {properties}"),
            format!(
                "worker: batch_max_events={} batch_max_wait_ms={} shutdown_deadline_ms={} \
                 retry_initial_backoff_ms={} retry_max_backoff_ms={} max_event_bytes={} embedded_relay={} embedded_api={} caught_up_flush_after_kb={}",
                worker.batch_max_events,
                worker.batch_max_wait_ms,
                worker.shutdown_deadline_ms,
                worker.retry_initial_backoff_ms,
                worker.retry_max_backoff_ms,
                worker.max_event_bytes,
                worker.embedded_relay,
                worker.embedded_api,
                worker.caught_up_flush_after_kb
            ),
            format!(
                "relay: batch_size={} poll_interval_ms={} retention_hours={}",
                relay.batch_size, relay.poll_interval_ms, relay.retention_hours
            ),
            format!(
                "http: listen={} header_read_timeout_ms={} first_request_timeout_ms={} request_timeout_ms={} \
                 max_connections={} max_connections_per_client={} max_body_buffer_bytes={}",
                http.listen,
                http.header_read_timeout_ms,
                http.first_request_timeout_ms,
                http.request_timeout_ms,
                http.max_connections,
                http.max_connections_per_client,
                http.max_body_buffer_bytes
            ),
            format!(
                "api: rate_limit_per_second={} rate_limit_burst={} max_body_bytes={}",
                api.rate_limit_per_second, api.rate_limit_burst, api.max_body_bytes
            ),
            format!(
                "catalogue: custom_fields={} extra_enum_values_for=[{}] max_custom_fields={}",
                catalogue.custom_fields.len(),
                extra_enums
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                catalogue.max_custom_fields
            ),
        ]
        .join("\n")
    }
}

/// Whether a variable is read at all: ours, or the conventional database URL.
fn is_relevant_env_var(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) || name == CONVENTIONAL_DATABASE_URL_VAR
}

/// The types an environment value can parse to, with the phrase used in error messages.
trait EnvValue: std::str::FromStr {
    const EXPECTED: &'static str;
}

impl EnvValue for u32 {
    const EXPECTED: &'static str = "an unsigned integer";
}
impl EnvValue for u64 {
    const EXPECTED: &'static str = "an unsigned integer";
}
impl EnvValue for usize {
    const EXPECTED: &'static str = "an unsigned integer";
}
impl EnvValue for bool {
    const EXPECTED: &'static str = "true or false";
}
impl EnvValue for WalCompression {
    const EXPECTED: &'static str = "one of server, off, pglz, lz4, zstd";
}
impl EnvValue for SocketAddr {
    const EXPECTED: &'static str = "a socket address such as 127.0.0.1:8080";
}

fn parse<T: EnvValue>(var: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::InvalidEnvValue {
            var: var.to_owned(),
            value: value.to_owned(),
            expected: T::EXPECTED,
        })
}

/// The largest `backend_flush_after` PostgreSQL accepts, in kB.
const MAX_FLUSH_AFTER_KB: u32 = 2048;

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(())
}

/// Checks Kafka's rule for topic names: 1–249 characters of `[A-Za-z0-9._-]`, and not `.` or `..`.
fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 249 {
        return Err("it is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

/// Properties cohort sets itself, with what to do instead.
fn owned_property(name: &str) -> Option<&'static str> {
    match name {
        "bootstrap.servers" | "metadata.broker.list" => Some("use kafka.brokers"),
        "group.id" => Some("use kafka.group_id"),
        "enable.auto.commit" | "enable.auto.offset.store" => {
            Some("cohort stores positions in postgresql and controls commits itself")
        }
        _ => None,
    }
}

/// Whether a librdkafka property holds a credential and must never be shown.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "sasl.jaas"]
        .iter()
        .any(|marker| name.contains(marker))
}

fn redact_property<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) {
        REDACTED
    } else {
        value
    }
}

/// The database URL with its password (in the user info, or a `password`-like query parameter)
/// replaced by `***`, for logs and messages.
pub fn redact_database_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL; it could be a bare key=value connection string, so show nothing of it.
        return if url.is_empty() {
            String::new()
        } else {
            REDACTED.to_owned()
        };
    };
    let rest_start = scheme_end + 3;
    let authority_end = url[rest_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_start + i);
    let authority = &url[rest_start..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &url[authority_end..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let (query, fragment) = match tail[q + 1..].find('#') {
                Some(h) => (&tail[q + 1..q + 1 + h], &tail[q + 1 + h..]),
                None => (&tail[q + 1..], ""),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                        format!("{name}={REDACTED}")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        let err = load_file("[database]\nurl = \"postgres://u:hunter2@h/db\"\nmax_connections = \"x\"\n[database]\n")
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
}
