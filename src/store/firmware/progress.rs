//! Rollout progress as stored: each release's counts, in additive parts per partition, moved by the
//! owning workers in their batch transactions; and the halt a batch's increments can trigger, decided in
//! the same transaction, so a halt is exactly once whatever crashes.

use serde_json::json;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::live::{release_entry, stage_share};
use crate::firmware::progress::{Counts, FailureSignal, Standing, Thresholds};
use crate::firmware::ReleaseState;
use crate::store::batch::ReleaseProgress;
use crate::store::{control, StoreError};

/// Adds a batch's moves to the releases' counts (partition `partition`'s part of each), then halts each
/// release whose counts a new failure or revert brought to one of its thresholds.
pub(crate) async fn write(
    tx: &mut PgConnection,
    partition: i32,
    progress: &[ReleaseProgress],
) -> Result<(), StoreError> {
    // In release order: two batches moving the same releases lock their rows in the same order.
    let mut sorted: Vec<&ReleaseProgress> = progress.iter().collect();
    sorted.sort_by_key(|p| p.release);
    let column = |f: fn(&Counts) -> i64| sorted.iter().map(|p| f(&p.delta)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO release_progress AS p (release_id, partition, targeted, running, failed, reverted) \
         SELECT u.r, $2, u.t, u.n, u.f, u.v FROM unnest($1::uuid[], $3::int8[], $4::int8[], $5::int8[], \
           $6::int8[]) AS u(r, t, n, f, v) \
         ON CONFLICT (release_id, partition) DO UPDATE SET targeted = p.targeted + EXCLUDED.targeted, \
           running = p.running + EXCLUDED.running, failed = p.failed + EXCLUDED.failed, \
           reverted = p.reverted + EXCLUDED.reverted",
    )
    .bind(sorted.iter().map(|p| p.release).collect::<Vec<_>>())
    .bind(partition)
    .bind(column(|c| c.targeted))
    .bind(column(|c| c.running))
    .bind(column(|c| c.failed))
    .bind(column(|c| c.reverted))
    .execute(&mut *tx)
    .await?;
    for moved in sorted.iter().filter(|p| !p.increments.is_empty()) {
        halt_if_crossed(tx, moved).await?;
    }
    Ok(())
}

/// A release's counts: the sum of its parts.
pub async fn counts<'c>(
    executor: impl PgExecutor<'c>,
    release: Uuid,
) -> Result<Counts, sqlx::Error> {
    let (targeted, running, failed, reverted): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(targeted), 0)::int8, coalesce(sum(running), 0)::int8, \
           coalesce(sum(failed), 0)::int8, coalesce(sum(reverted), 0)::int8 \
         FROM release_progress WHERE release_id = $1",
    )
    .bind(release)
    .fetch_one(executor)
    .await?;
    Ok(Counts {
        targeted,
        running,
        failed,
        reverted,
    })
}

/// A live, active release as a halt reads it, its row locked.
#[derive(sqlx::FromRow)]
struct Halting {
    org_id: String,
    group_id: Option<Uuid>,
    version: String,
    stages: Vec<i32>,
    stage: i32,
    halt: Option<sqlx::types::Json<Thresholds>>,
    failure: Option<sqlx::types::Json<FailureSignal>>,
}

/// Release `release` if it is live and active, its row locked for the rest of the transaction.
async fn lock_active(tx: &mut PgConnection, release: Uuid) -> Result<Option<Halting>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, group_id, version, stages, stage, halt, failure FROM firmware_releases \
         WHERE id = $1 AND withdrawn_at IS NULL AND state = 'active' FOR UPDATE",
    )
    .bind(release)
    .fetch_optional(tx)
    .await
}

/// Pauses (or rolls back) a release locked by [`lock_active`], recording why (`halted`, to which the
/// instant is added), and tells the workers through a control-log entry.
async fn record_halt(
    tx: &mut PgConnection,
    id: Uuid,
    release: Halting,
    state: ReleaseState,
    halted: &serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE firmware_releases SET state = $2, halted = $3::jsonb || jsonb_build_object('at', now()) \
         WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(sqlx::types::Json(halted))
    .execute(&mut *tx)
    .await?;
    let stages: Vec<u16> = release
        .stages
        .iter()
        .map(|s| (*s).clamp(0, i32::from(u16::MAX)) as u16)
        .collect();
    let stage = release.stage.clamp(0, i32::from(u16::MAX)) as u16;
    let staging = crate::store::control::StagingEntry {
        release_id: id,
        stage,
        share: stage_share(&stages, stage),
        state,
        failure: release.failure.map(|f| f.0),
    };
    let entry = release_entry(
        &release.org_id,
        release.group_id,
        Some(release.version),
        staging,
    );
    control::append(tx, &release.org_id, &entry).await?;
    Ok(())
}

/// Pauses release `release` if it is live, active and still at `stage`, recording `halted` as why.
/// Returns whether it paused it.
pub async fn pause_at(
    tx: &mut PgConnection,
    release: Uuid,
    stage: i32,
    halted: serde_json::Value,
) -> Result<bool, StoreError> {
    match lock_active(tx, release).await? {
        Some(live) if live.stage == stage => {
            record_halt(tx, release, live, ReleaseState::Paused, &halted).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Halts the release if its counts, with this batch's moves, reach one of its thresholds: it is paused (or
/// rolled back, if its thresholds say so) through a control-log entry, with the threshold, the counts and
/// the cause recorded. The cause is the batch's increment that reached the threshold, counting from where
/// the other moves left the counts.
async fn halt_if_crossed(tx: &mut PgConnection, moved: &ReleaseProgress) -> Result<(), StoreError> {
    let Some(release) = lock_active(tx, moved.release).await? else {
        return Ok(());
    };
    let Some(thresholds) = release.halt.as_ref().map(|h| h.0.clone()) else {
        return Ok(());
    };
    let total = counts(&mut *tx, moved.release).await?;
    let Some(crossed) = thresholds.crossed(&total) else {
        return Ok(());
    };
    // Replay the increments from the counts without them, to find the one that reached the threshold.
    let mut replay = total;
    for increment in &moved.increments {
        count_increment(&mut replay, increment.standing, -1);
    }
    let mut cause = moved.increments.last();
    for increment in &moved.increments {
        count_increment(&mut replay, increment.standing, 1);
        if thresholds.crossed(&replay).is_some() {
            cause = Some(increment);
            break;
        }
    }
    let state = if thresholds.rollback {
        ReleaseState::RolledBack
    } else {
        ReleaseState::Paused
    };
    let halted = json!({
        "by": "threshold",
        "threshold": crossed,
        "counts": total,
        "deviceId": cause.map(|c| c.device_id.as_str()),
        "cause": cause.map(|c| &c.cause),
    });
    record_halt(tx, moved.release, release, state, &halted).await?;
    metrics::counter!(crate::metrics::RELEASE_HALTS, "state" => state.as_str()).increment(1);
    tracing::warn!(release = %moved.release, state = state.as_str(), %halted, "release halted");
    Ok(())
}

/// Moves a failure or revert count by `sign`.
fn count_increment(counts: &mut Counts, standing: Standing, sign: i64) {
    match standing {
        Standing::Failed => counts.failed += sign,
        Standing::Reverted => counts.reverted += sign,
        Standing::Previous | Standing::Running => {}
    }
}

/// A release whose stored counts differ from a count of its devices' standings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressDrift {
    pub org_id: String,
    pub release_id: Uuid,
    /// The counts the workers keep.
    pub stored: Counts,
    /// The counts of the devices whose stored target names the release, by stored standing.
    pub counted: Counts,
}

/// Every release (of `org`, or of every org) whose stored counts differ from a count of the devices its
/// target names, by standing: one statement, so one snapshot (a batch committing meanwhile is no false
/// alarm). That each device's standing is what it reports is checked device by device
/// ([`crate::reconcile`]).
pub async fn drift(
    pool: &sqlx::PgPool,
    org: Option<&str>,
) -> Result<Vec<ProgressDrift>, StoreError> {
    type Row = (String, Uuid, i64, i64, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH stored AS (SELECT release_id, sum(targeted)::int8 AS t, sum(running)::int8 AS r, \
             sum(failed)::int8 AS f, sum(reverted)::int8 AS v FROM release_progress GROUP BY release_id), \
           counted AS (SELECT target_release AS release_id, count(*) AS t, \
             count(*) FILTER (WHERE target_standing = 'running') AS r, \
             count(*) FILTER (WHERE target_standing = 'failed') AS f, \
             count(*) FILTER (WHERE target_standing = 'reverted') AS v \
             FROM devices WHERE target_release IS NOT NULL GROUP BY target_release) \
         SELECT rel.org_id, rel.id, coalesce(s.t, 0), coalesce(s.r, 0), coalesce(s.f, 0), \
           coalesce(s.v, 0), coalesce(c.t, 0), coalesce(c.r, 0), coalesce(c.f, 0), coalesce(c.v, 0) \
         FROM stored s FULL JOIN counted c USING (release_id) \
         JOIN firmware_releases rel ON rel.id = coalesce(s.release_id, c.release_id) \
         WHERE ($1::text IS NULL OR rel.org_id = $1) \
           AND (coalesce(s.t, 0), coalesce(s.r, 0), coalesce(s.f, 0), coalesce(s.v, 0)) \
             <> (coalesce(c.t, 0), coalesce(c.r, 0), coalesce(c.f, 0), coalesce(c.v, 0)) \
         ORDER BY rel.org_id, rel.id",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(org_id, release_id, st, sr, sf, sv, ct, cr, cf, cv)| {
            let counts = |targeted, running, failed, reverted| Counts {
                targeted,
                running,
                failed,
                reverted,
            };
            ProgressDrift {
                org_id,
                release_id,
                stored: counts(st, sr, sf, sv),
                counted: counts(ct, cr, cf, cv),
            }
        })
        .collect())
}

/// Resets the counts of `releases` to a recount of their devices' stored standings. Workers' batches are
/// held off meanwhile (`LOCK TABLE … IN EXCLUSIVE MODE` waits for those that have moved counts and not yet
/// committed, and makes later ones wait), so the recount sees every committed device, and a batch still
/// to move counts adds its change after the reset: the reset loses none.
pub async fn reset(pool: &sqlx::PgPool, releases: &[Uuid]) -> Result<(), StoreError> {
    if releases.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE release_progress IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM release_progress WHERE release_id = ANY($1)")
        .bind(releases)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO release_progress (release_id, partition, targeted, running, failed, reverted) \
         SELECT target_release, 0, count(*), count(*) FILTER (WHERE target_standing = 'running'), \
           count(*) FILTER (WHERE target_standing = 'failed'), \
           count(*) FILTER (WHERE target_standing = 'reverted') \
         FROM devices WHERE target_release = ANY($1) GROUP BY target_release",
    )
    .bind(releases)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
