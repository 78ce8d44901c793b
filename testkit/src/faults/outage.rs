//! PostgreSQL outages: a real restart of a private cluster the test creates, else the test database cut
//! off (connections refused, sessions terminated).

use crate::app::Harness;
use crate::cluster::{PrivateCluster, Unavailable};
use crate::{cluster, db, TestDatabase};

// ------------------------------------------------------------------------------------------------
// PostgreSQL outages
// ------------------------------------------------------------------------------------------------

/// How a scenario takes PostgreSQL away from the worker. Never by stopping a server the test did not
/// start: the machine's server and a `DATABASE_URL` server are shared with other tests and other users.
pub enum Outage {
    /// A private cluster created for the scenario ([`PrivateCluster`]): its test database lives there,
    /// and the server is stopped, started and restarted for real. Stopped and removed when dropped.
    Private(PrivateCluster),
    /// No private cluster (`DATABASE_URL` names the server to use, or no PostgreSQL server binaries
    /// here): the test database on the shared server is cut off instead — new connections refused and
    /// its sessions terminated.
    CutOff { why: String },
}

impl Outage {
    /// A private cluster when one can be made and `DATABASE_URL` is not set; see [`Outage`].
    pub async fn prepare() -> anyhow::Result<Self> {
        if std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
            return Ok(Outage::CutOff {
                why: "DATABASE_URL names the server to use".into(),
            });
        }
        Ok(match PrivateCluster::create().await? {
            Ok(cluster) => Outage::Private(cluster),
            Err(Unavailable(why)) => Outage::CutOff { why },
        })
    }

    /// A fresh test database: on the private cluster, or on the shared server.
    pub async fn database(&self) -> anyhow::Result<TestDatabase> {
        match self {
            Outage::Private(cluster) => TestDatabase::new_on(&cluster.admin_url()).await,
            Outage::CutOff { .. } => TestDatabase::new().await,
        }
    }
}

/// The start time of the server the binary's other tests use (`pg_postmaster_start_time()`): the same
/// before and after a scenario when the scenario restarted no server but its own.
pub async fn shared_server_start_time() -> anyhow::Result<String> {
    cluster::server_start_time(&db::server().await.admin_url).await
}

/// Cuts this test's database off: no new connections, and every session of it terminated.
pub async fn cut_off(h: &Harness) -> anyhow::Result<()> {
    let mut admin = db::connect(h.db.admin_url()).await?;
    let name = h.db.name();
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Lets connections to this test's database in again.
pub async fn reconnect(h: &Harness) -> anyhow::Result<()> {
    let mut admin = db::connect(h.db.admin_url()).await?;
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        h.db.name()
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}
