//! Group member counts maintained as memberships change, so that reading a group's count costs the same
//! whatever the group's size.
//!
//! The table `group_member_counts` holds, per group, a few rows whose sum is the group's member count:
//! shard 0, the folded total, and one row per PostgreSQL backend (its pid) that added or removed members
//! since the last fold. Triggers on `device_group_memberships` write the shard rows in the transaction of
//! the change (see the migration `…000007_group_member_counts.sql` for why a trigger and why per backend),
//! so every snapshot sees a sum equal to `count(*)`.
//!
//! - [`GROUP_MEMBERS`] and [`member_count`]: the reads (the API's group views and static changes).
//! - [`fold`]: moves the shard rows into shard 0, run once a minute by the relay leader.
//! - [`drift`] and [`reset`]: the check and the repair of `cohort reconcile`.

use serde::Serialize;
use sqlx::{Connection as _, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::StoreError;

/// The transaction-level advisory lock ("cohortmc" in ASCII) that the fold and the repair hold, so that only
/// one of them writes shard 0 at a time.
pub const FOLD_LOCK: i64 = 0x636f_686f_7274_6d63;

/// The member count of the group `g` of the surrounding query, as an `int8` expression.
pub const GROUP_MEMBERS: &str =
    "(SELECT coalesce(sum(c.members), 0)::int8 FROM group_member_counts c WHERE c.group_id = g.id)";

/// The group's member count, as the executor's transaction (or a fresh snapshot) sees it.
pub async fn member_count(
    executor: impl PgExecutor<'_>,
    group_id: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(members), 0)::int8 FROM group_member_counts WHERE group_id = $1",
    )
    .bind(group_id)
    .fetch_one(executor)
    .await?)
}

/// Folds the shard rows into each group's shard 0 and deletes shard-0 rows that hold 0; returns how many
/// shard rows were folded, or `None` when another fold or a repair holds [`FOLD_LOCK`] (nothing to do:
/// it folds).
///
/// Exact at any time, in one transaction: the rows deleted are those this statement locked, read at their
/// latest committed version, and their sum is added to shard 0 in the same transaction. A shard row that
/// a running transaction has locked (it is adding or removing members now) is skipped (`SKIP LOCKED`) and
/// left for the next fold: the fold never waits for a writer, so it cannot deadlock with a transaction
/// whose statements touch several groups in another order, and it never delays one. Writers never wait
/// for the fold either, except the one that adds to a shard row the fold has just deleted, until the fold
/// commits.
pub async fn fold(conn: &mut PgConnection) -> Result<Option<u64>, StoreError> {
    let mut tx = conn.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let folded: i64 = sqlx::query_scalar(
        "WITH locked AS MATERIALIZED ( \
           SELECT group_id, shard FROM group_member_counts WHERE shard <> 0 \
           ORDER BY group_id, shard FOR UPDATE SKIP LOCKED), \
         gone AS ( \
           DELETE FROM group_member_counts c USING locked l \
           WHERE c.group_id = l.group_id AND c.shard = l.shard \
           RETURNING c.group_id, c.members), \
         folded AS ( \
           INSERT INTO group_member_counts (group_id, shard, members) \
           SELECT group_id, 0, sum(members) FROM gone GROUP BY group_id ORDER BY group_id \
           ON CONFLICT (group_id, shard) \
           DO UPDATE SET members = group_member_counts.members + excluded.members) \
         SELECT count(*) FROM gone",
    )
    .fetch_one(&mut *tx)
    .await?;
    // A zero total adds nothing to any sum (a deleted group's, or an emptied one's); shard 0 is written
    // only under the lock held here.
    sqlx::query("DELETE FROM group_member_counts WHERE shard = 0 AND members = 0")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(folded as u64))
}

/// A group whose maintained member count differs from its memberships.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountDrift {
    pub org_id: String,
    pub group_id: Uuid,
    /// The sum of the group's rows in `group_member_counts`.
    pub maintained: i64,
    /// `count(*)` of its memberships.
    pub actual: i64,
}

/// Every group (of `org`, or of every org; deleted groups included) whose maintained count differs from
/// `count(*)` of its memberships, by org and group id. One statement, so one snapshot: the counts and the
/// memberships are compared as of the same commit, and a writer running meanwhile is no false alarm.
pub async fn drift(pool: &PgPool, org: Option<&str>) -> Result<Vec<CountDrift>, StoreError> {
    let rows: Vec<(String, Uuid, i64, i64)> = sqlx::query_as(
        "SELECT g.org_id, g.id, c.members, m.members \
         FROM device_groups g \
         CROSS JOIN LATERAL (SELECT coalesce(sum(members), 0)::int8 AS members \
           FROM group_member_counts WHERE group_id = g.id) c \
         CROSS JOIN LATERAL (SELECT count(*) AS members \
           FROM device_group_memberships WHERE group_id = g.id) m \
         WHERE ($1::text IS NULL OR g.org_id = $1) AND c.members <> m.members \
         ORDER BY g.org_id, g.id",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org_id, group_id, maintained, actual)| CountDrift {
            org_id,
            group_id,
            maintained,
            actual,
        })
        .collect())
}

/// A transaction in which counts can be rewritten exactly: membership writers are held off
/// (`LOCK TABLE … IN SHARE MODE` waits for the running ones and blocks new ones) and [`FOLD_LOCK`] keeps
/// the fold out until it ends.
async fn begin_recount(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE device_group_memberships IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Recounts every group from its memberships, as shard 0, for a bulk load that skipped the triggers
/// (`COPY` under `session_replication_role = replica`, as the synthetic fleet's seeding does). Locks as
/// [`reset`] does, so the counts it writes are exact when it commits.
pub async fn recount_all(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = begin_recount(pool).await?;
    sqlx::query("DELETE FROM group_member_counts")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO group_member_counts (group_id, shard, members) \
         SELECT group_id, 0, count(*) FROM device_group_memberships GROUP BY group_id ORDER BY group_id",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Replaces the count rows of `groups` with their true count, as shard 0, in one transaction. Writers of
/// memberships are held off for the transaction (`LOCK TABLE … IN SHARE MODE` waits for the running ones
/// and blocks new ones), and [`FOLD_LOCK`] keeps the fold out: the count written is exact when it
/// commits. For an operator's repair, not for a hot path.
pub async fn reset(pool: &PgPool, groups: &[Uuid]) -> Result<(), StoreError> {
    if groups.is_empty() {
        return Ok(());
    }
    let mut tx = begin_recount(pool).await?;
    sqlx::query("DELETE FROM group_member_counts WHERE group_id = ANY($1)")
        .bind(groups)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO group_member_counts (group_id, shard, members) \
         SELECT g, 0, (SELECT count(*) FROM device_group_memberships WHERE group_id = g) \
         FROM (SELECT DISTINCT g FROM unnest($1::uuid[]) AS u(g)) AS d ORDER BY g",
    )
    .bind(groups)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
