//! A rollout under way across the synthetic fleet, for `cohort bench --rollout`: every org gets a default
//! release of the version most of its devices run, watching `status = "maintenance"` as its failure
//! signal, and every device is stored as targeted by it — its target, its standing and the release's
//! counts written set-based, as the workers would have written them — so that the benchmark measures
//! what keeping progress costs on every event, with no sweep of the fleet first.

use anyhow::Context as _;
use sqlx::PgPool;

use super::fleet::Fleet;
use crate::firmware::progress::FailureSignal;
use crate::store::firmware::{self, Health, Mode, Proposal, ReleaseTarget};

/// The failure signal the releases watch.
pub fn failure() -> FailureSignal {
    FailureSignal {
        attribute: "status".into(),
        value: serde_json::json!("maintenance"),
    }
}

/// Releases to every org of a seeded fleet and stores every device as targeted; the partitions of
/// `topic` start after the releases' control-log entries. Returns the number of devices targeted.
pub async fn seed_rollout(pool: &PgPool, fleet: &Fleet, topic: &str) -> anyhow::Result<u64> {
    let mut targeted = 0;
    for o in 0..fleet.orgs {
        let org = Fleet::org_id(o);
        let version: Option<String> = sqlx::query_scalar(
            "SELECT attributes ->> 'firmwareVersion' FROM devices WHERE org_id = $1 \
             AND attributes ? 'firmwareVersion' GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .bind(&org)
        .fetch_optional(pool)
        .await?;
        let Some(version) = version else {
            continue;
        };
        let proposal = Proposal::Release {
            target: ReleaseTarget::Default,
            version: version.clone(),
            stages: vec![crate::firmware::WHOLE_SHARE],
            health: Health {
                failure: Some(failure()),
                ..Health::default()
            },
        };
        let applied = firmware::apply(pool, &org, &proposal, "bench", 0, Mode::Write)
            .await
            .map_err(|e| anyhow::anyhow!("failed to release to {org}: {e}"))?;
        let release = applied.release.context("a release written")?.id;
        // As the workers stand a device: failed if it reports the signal, running if it reports the
        // version (the fleet spells versions one way only), else previous.
        let done = sqlx::query(
            "UPDATE devices SET target_version = $2, target_reason = 'default', target_release = $3, \
               target_standing = CASE WHEN attributes ->> 'status' = 'maintenance' THEN 'failed' \
                 WHEN attributes ->> 'firmwareVersion' = $2 THEN 'running' ELSE 'previous' END, \
               target_reached = coalesce(attributes ->> 'firmwareVersion' = $2, false) \
             WHERE org_id = $1",
        )
        .bind(&org)
        .bind(&version)
        .bind(release)
        .execute(pool)
        .await
        .context("failed to target the org's devices")?;
        targeted += done.rows_affected();
        sqlx::query(
            "INSERT INTO release_progress (release_id, partition, targeted, running, failed, reverted) \
             SELECT target_release, 0, count(*), count(*) FILTER (WHERE target_standing = 'running'), \
               count(*) FILTER (WHERE target_standing = 'failed'), 0 \
             FROM devices WHERE target_release = $1 GROUP BY target_release",
        )
        .bind(release)
        .execute(pool)
        .await
        .context("failed to count the release's progress")?;
    }
    sqlx::query(
        "UPDATE partition_positions SET control_position = (SELECT max(id) FROM control_log) \
         WHERE topic = $1",
    )
    .bind(topic)
    .execute(pool)
    .await?;
    sqlx::raw_sql("VACUUM (ANALYZE) devices")
        .execute(pool)
        .await?;
    Ok(targeted)
}
