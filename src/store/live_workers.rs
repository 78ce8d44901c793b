//! The worker processes running now (`live_workers`): each registers the address of its HTTP listener and
//! the token that authorises calls to its internal route, so that any API process can evaluate a preview
//! in the memory of the workers holding the partitions.

use std::time::Duration;

use sqlx::PgPool;

use super::StoreError;

/// A worker as its peers reach it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveWorker {
    /// The name it writes in `partition_positions.owner`.
    pub owner: String,
    /// `host:port` of its HTTP listener.
    pub address: String,
    /// What its internal route accepts as `Authorization: Bearer`.
    pub token: String,
}

/// Rows not refreshed for this many multiples of the freshness bound are deleted when a worker registers:
/// rows left by killed workers do not pile up.
const STALE_ROWS_KEPT_FOR: u32 = 20;

/// Registers `worker`, or refreshes its row (it is written again whole: a row deleted meanwhile comes
/// back), and deletes rows not refreshed for a long time (`fresh_within` × 20).
pub async fn register(
    pool: &PgPool,
    worker: &LiveWorker,
    fresh_within: Duration,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO live_workers (owner, address, token, refreshed_at) VALUES ($1, $2, $3, now()) \
         ON CONFLICT (owner) DO UPDATE SET address = EXCLUDED.address, token = EXCLUDED.token, \
           refreshed_at = now()",
    )
    .bind(&worker.owner)
    .bind(&worker.address)
    .bind(&worker.token)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM live_workers WHERE refreshed_at < now() - make_interval(secs => $1)")
        .bind((fresh_within * STALE_ROWS_KEPT_FOR).as_secs_f64())
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes `worker`'s row (a clean stop).
pub async fn deregister(pool: &PgPool, worker: &LiveWorker) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM live_workers WHERE owner = $1 AND token = $2")
        .bind(&worker.owner)
        .bind(&worker.token)
        .execute(pool)
        .await?;
    Ok(())
}

/// The partitions of a topic as the workers hold them: read in one statement, so both lists describe the
/// same moment.
#[derive(Debug, Default)]
pub struct PartitionOwners {
    /// Every partition the workers have claimed, in order, with its owner when that owner's row was
    /// refreshed recently enough.
    pub owners: Vec<(i32, Option<LiveWorker>)>,
    /// The partitions whose owners have not yet applied every control-log entry committed now (their
    /// `control_position` is below the log's last id): their workers' memory may not hold a change the
    /// API has just committed, such as a static member added.
    pub behind: Vec<i32>,
}

/// Every partition of `topic` the workers have claimed, with its owner when that owner's row was
/// refreshed within `fresh_within`, and which of them are behind the control log.
pub async fn partition_owners(
    pool: &PgPool,
    topic: &str,
    fresh_within: Duration,
) -> Result<PartitionOwners, StoreError> {
    // (partition, behind, owner, address, token), the last three null unless the owner is live.
    type Row = (i32, bool, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.partition, \
           p.control_position < (SELECT coalesce(max(id), 0) FROM control_log), \
           w.owner, w.address, w.token \
         FROM partition_positions p \
         LEFT JOIN live_workers w ON w.owner = p.owner \
           AND w.refreshed_at > now() - make_interval(secs => $2) \
         WHERE p.topic = $1 ORDER BY p.partition",
    )
    .bind(topic)
    .bind(fresh_within.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut answer = PartitionOwners::default();
    for (partition, behind, owner, address, token) in rows {
        let worker = match (owner, address, token) {
            (Some(owner), Some(address), Some(token)) => Some(LiveWorker {
                owner,
                address,
                token,
            }),
            _ => None,
        };
        answer.owners.push((partition, worker));
        if behind {
            answer.behind.push(partition);
        }
    }
    Ok(answer)
}
