//! PostgreSQL: connection, migrations, error classification, and the write paths shared by the worker, the
//! API and tests.
//!
//! - [`control`]: the ordered control log (append with an advisory lock, NOTIFY, read in id order).
//! - [`groups`]: orgs and groups — definitions written together with their control-log entries.
//! - [`members`]: what the API changes about devices: static-group membership (rows, log and control
//!   entry in one transaction), device settings (through the control log), lookups by cellular identifier.
//! - [`firmware`]: firmware releases (with their control-log entries) and the impact preview.
//! - [`partition`]: per-partition positions (claim with an epoch, fenced updates) and state loading.
//! - [`batch`]: one worker batch in one transaction.
//! - [`outbox`]: the transactional outbox — the batch's inserts, and the relay's reads, marks, retention
//!   and publishing lease.
//! - [`api_keys`]: the REST API's keys (hashed, compared in constant time).
//! - [`console_sessions`]: the web console's sign-in sessions (only their tokens' digests stored).
//! - [`counts`]: group member counts maintained by triggers — the reads, the fold, the check and repair.
//! - [`api`]: the REST API's queries (group listings, members, the membership log, previews).
//! - [`live_workers`]: the worker processes running now, where their peers reach them (previews).
//! - [`retarget_cap`]: an org's retarget cap and the gate (with its confirmation tokens) capped changes pass.

pub mod api;
pub mod api_keys;
pub mod batch;
pub mod console_sessions;
pub mod control;
pub mod counts;
pub mod firmware;
pub mod groups;
pub mod live_workers;
pub mod members;
pub mod outbox;
pub mod partition;
pub mod retarget_cap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use crate::config::{DatabaseConfig, WalCompression};

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a database operation failed, classified for the caller: transient failures are retried with
/// backoff and never skipped; the others are answered (conflict, not found) or reported.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, restarting, overloaded, or the transaction lost a serialization race.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// A unique constraint refused the write (its name is given).
    #[error("conflict on {constraint}")]
    UniqueViolation { constraint: String },
    /// A referenced row does not exist.
    #[error("reference to a missing row ({constraint})")]
    ForeignKeyViolation { constraint: String },
    /// A partition position update matched no row: another worker owns the partition now.
    #[error("partition {partition} is owned by another worker (epoch {epoch} is stale)")]
    Fenced { partition: i32, epoch: i64 },
    /// Device rows changed under the batch (re-homed by another partition's worker).
    #[error("{} device(s) changed under the batch", devices.len())]
    DeviceConflict { devices: Vec<String> },
    /// Anything else: a bug or a schema mismatch.
    #[error("database error: {0}")]
    Permanent(#[source] sqlx::Error),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_))
    }

    /// The `kind` label of a retried failure in the worker's metrics: `transient` or `permanent`.
    pub fn retry_kind(&self) -> &'static str {
        if self.is_transient() {
            "transient"
        } else {
            "permanent"
        }
    }
}

impl From<sqlx::Error> for StoreError {
    /// The one place SQLSTATE codes are mapped to typed errors.
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Transient(e),
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                let constraint = db.constraint().unwrap_or_default().to_string();
                match code.as_str() {
                    "23505" => StoreError::UniqueViolation { constraint },
                    "23503" => StoreError::ForeignKeyViolation { constraint },
                    // serialization_failure, deadlock_detected, lock_not_available
                    "40001" | "40P01" | "55P03" => StoreError::Transient(e),
                    // connection exceptions, insufficient resources, operator intervention (shutdown,
                    // crash recovery, cannot connect now), system errors
                    c if c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57")
                        || c.starts_with("58") =>
                    {
                        StoreError::Transient(e)
                    }
                    _ => StoreError::Permanent(e),
                }
            }
            _ => StoreError::Permanent(e),
        }
    }
}

/// Opens a pool. Connections are established lazily, so this succeeds while the database is down; the first
/// query reports it (as a transient error).
pub fn connect_lazy(config: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options: PgConnectOptions = config.url.parse().map_err(StoreError::Permanent)?;
    Ok(pool_options(config.wal_compression)
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.connect_timeout_ms))
        .connect_lazy_with(options))
}

/// Pool options whose every new connection asks for `wal_compression` (see
/// [`DatabaseConfig::wal_compression`]). A refusal (the role may not set it, or the server was built
/// without the method) is logged once per process and the connection is used with the server's setting.
pub fn pool_options(wal_compression: WalCompression) -> PgPoolOptions {
    let options = PgPoolOptions::new();
    match wal_compression.setting() {
        None => options,
        Some(value) => options.after_connect(move |connection, _| {
            Box::pin(async move { set_wal_compression(connection, value).await })
        }),
    }
}

/// Whether a refused `wal_compression` has been reported (once per process is enough: every connection
/// of a role is refused alike).
static WAL_COMPRESSION_REFUSED: AtomicBool = AtomicBool::new(false);

async fn set_wal_compression(
    connection: &mut PgConnection,
    value: &'static str,
) -> Result<(), sqlx::Error> {
    let result = sqlx::query("SELECT set_config('wal_compression', $1, false)")
        .bind(value)
        .execute(connection)
        .await;
    match result {
        Ok(_) => Ok(()),
        // e.g. a method the server was built without, or a server older than 15 that knows only on/off
        Err(sqlx::Error::Database(e)) if refuses_setting(e.as_ref()) => {
            if !WAL_COMPRESSION_REFUSED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    wal_compression = value,
                    error = %e,
                    "the database refused cohort's wal_compression; using the server's setting \
                     (grant it with GRANT SET ON PARAMETER wal_compression, or set \
                     database.wal_compression = \"server\")"
                );
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether the server refused a `set_config` of one of cohort's session or transaction settings:
/// insufficient_privilege, invalid_parameter_value, undefined_object (a server that does not know the
/// setting) or cant_change_runtime_param. Such a refusal is the same for every connection of the role, so
/// cohort goes on with the server's setting instead of failing the work that asked for it.
pub(crate) fn refuses_setting(e: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(
        e.code().as_deref(),
        Some("42501" | "22023" | "42704" | "55P02")
    )
}

/// Applies the embedded migrations (idempotent; concurrent callers serialise on sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Creates the database named in `url` if it does not exist (for first runs and the demo).
pub async fn create_database_if_missing(url: &str) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateDatabase;
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}
