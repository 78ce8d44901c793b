//! A fresh PostgreSQL database per test, dropped afterwards.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection as _;
use tokio::sync::OnceCell;

use crate::{containers, docker, random_suffix, within, OPERATION_TIMEOUT};

/// The server used when neither `DATABASE_URL` nor Docker is available.
pub const LOCAL_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Every test database's name starts with this, so stray ones (from a killed run) are easy to find.
pub const TEST_DATABASE_PREFIX: &str = "cohort_test_";
/// Bound on dropping a database from `Drop`.
const DROP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the test databases live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSource {
    /// `DATABASE_URL`.
    Environment,
    /// The shared testcontainers PostgreSQL.
    Container,
    /// The local server at [`LOCAL_ADMIN_URL`].
    Local,
}

/// The PostgreSQL server chosen for this test binary.
#[derive(Clone, Debug)]
pub struct DatabaseServer {
    /// A URL with rights to create and drop databases (the test databases are created beside its database).
    pub admin_url: String,
    /// Why this server was chosen.
    pub source: ServerSource,
}

/// The server for this binary, chosen on first use (see the crate docs).
pub async fn server() -> &'static DatabaseServer {
    static SERVER: OnceCell<DatabaseServer> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                if !url.is_empty() {
                    return DatabaseServer {
                        admin_url: url,
                        source: ServerSource::Environment,
                    };
                }
            }
            if docker::docker_available() {
                match containers::postgres_url().await {
                    Ok(url) => {
                        return DatabaseServer {
                            admin_url: url,
                            source: ServerSource::Container,
                        }
                    }
                    Err(err) => {
                        eprintln!("test support: falling back to the local postgresql: {err:#}")
                    }
                }
            }
            DatabaseServer {
                admin_url: LOCAL_ADMIN_URL.to_owned(),
                source: ServerSource::Local,
            }
        })
        .await
}

/// A database of its own for one test: created empty by [`TestDatabase::new`], dropped (with any
/// connections still open to it) by [`TestDatabase::cleanup`] or, failing that, on drop.
pub struct TestDatabase {
    /// The database's name, `cohort_test_<random>`.
    name: String,
    /// URL of this database, for the code under test.
    url: String,
    /// URL of the server's admin database, used to create and drop this one.
    admin_url: String,
    /// A pool on this database, for the test's own queries.
    pool: PgPool,
    /// Set once the database has been dropped, so `Drop` does nothing more.
    dropped: bool,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the chosen server and a small pool on it.
    pub async fn new() -> anyhow::Result<Self> {
        Self::new_on(&server().await.admin_url).await
    }

    /// Creates a fresh, empty database on the server at `admin_url` (such as a private cluster) and a
    /// small pool on it.
    pub async fn new_on(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("{TEST_DATABASE_PREFIX}{}", random_suffix());
        let url = with_database(admin_url, &name)?;
        within(OPERATION_TIMEOUT, "create the test database", async {
            let mut admin = connect(admin_url).await?;
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut admin)
                .await
                .with_context(|| format!("failed to create database {name}"))?;
            admin.close().await.ok();
            Ok(())
        })
        .await?;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .with_context(|| format!("failed to connect to the test database {name}"));
        let pool = match pool {
            Ok(pool) => pool,
            Err(err) => {
                drop_database_in_thread(admin_url, &name);
                return Err(err);
            }
        };
        Ok(Self {
            name,
            url,
            admin_url: admin_url.to_owned(),
            pool,
            dropped: false,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of this database (give it to the code under test).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on this database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The URL of the server's admin database (to check from outside that this one exists).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// Drops the database, reporting any failure (prefer it to relying on `Drop`, which can only
    /// print). Connections still open to it, in the pool or elsewhere, are ended by the server.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        // Not `pool.close()` first: it waits for checked-out connections to come back, which a test
        // may still hold. FORCE ends them server-side; the pool is dropped with `self`.
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !self.dropped {
            self.dropped = true;
            // The pool cannot be closed here (it needs the test's runtime, which is blocked in this
            // drop); FORCE terminates its connections server-side instead.
            drop_database_in_thread(&self.admin_url, &self.name);
        }
    }
}

/// Drops a database from synchronous code: on a new OS thread with its own small runtime, joined, so
/// it works inside or outside a runtime. Failures are reported on stderr, never as a panic.
fn drop_database_in_thread(admin_url: &str, name: &str) {
    let admin_url = admin_url.to_owned();
    let name = name.to_owned();
    let thread = std::thread::Builder::new()
        .name("drop-test-database".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("failed to build a runtime")?;
            runtime.block_on(async {
                tokio::time::timeout(DROP_TIMEOUT, drop_database(&admin_url, &name))
                    .await
                    .with_context(|| format!("timed out dropping database {name}"))?
            })
        });
    let outcome = match thread {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the drop thread panicked"))),
        Err(err) => Err(anyhow::Error::new(err).context("failed to spawn the drop thread")),
    };
    if let Err(err) = outcome {
        eprintln!("test support: failed to drop a test database: {err:#}");
    }
}

/// `DROP DATABASE … WITH (FORCE)`, ending any sessions still connected to it.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    within(OPERATION_TIMEOUT, "drop the test database", async {
        let mut admin = connect(admin_url).await?;
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("failed to drop database {name}"))?;
        admin.close().await.ok();
        Ok(())
    })
    .await
}

/// Whether a database of this name exists on the server.
pub async fn database_exists(admin_url: &str, name: &str) -> anyhow::Result<bool> {
    within(OPERATION_TIMEOUT, "look up a database", async {
        let mut admin = connect(admin_url).await?;
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
        )
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .context("failed to query pg_database")?;
        admin.close().await.ok();
        Ok(exists)
    })
    .await
}

/// One connection, bounded in time.
pub async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    within(Duration::from_secs(10), "connect to postgresql", async {
        PgConnection::connect(url)
            .await
            .with_context(|| format!("failed to connect to {}", redact(url)))
    })
    .await
}

/// `url` with its database replaced by `name` (user, password, host and parameters kept).
pub fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .map(|i| i + 3)
        .context("the database url has no scheme")?;
    let authority_end = url[scheme_end..]
        .find(['/', '?'])
        .map_or(url.len(), |i| scheme_end + i);
    let path_end = url[authority_end..]
        .find('?')
        .map_or(url.len(), |i| authority_end + i);
    Ok(format!(
        "{}/{name}{}",
        &url[..authority_end],
        &url[path_end..]
    ))
}

/// Hides a password in a URL for messages.
fn redact(url: &str) -> String {
    cohort::config::redact_database_url(url)
}
