//! The release watch every worker process runs: once a second it advances the releases whose stage has
//! run its soak time with their health holding, and publishes every live release's progress as the
//! `cohort_release_devices` gauge.
//!
//! An automatic advance is decided like an operator's ([`crate::store::firmware::apply`]), naming the
//! stage it moves to, so two processes seeing the same release due advance it once (the second is refused:
//! the stage is no longer ahead). Health holds while the release is active: a threshold reached pauses it
//! first. An advance over the org's retarget cap is not made by itself: the release is paused, with
//! `halted` saying so, for an operator to advance it with a dry run's token (or resume it).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::firmware::{self, Mode, Proposal, ReleaseError};
use crate::store::StoreError;

/// How often the watch looks.
pub const EVERY: Duration = Duration::from_secs(1);

/// Who the releases' log names for an automatic advance.
pub const ACTOR: &str = "cohort:soak";

/// Runs the watch until `stop` resolves. Failures are logged and the next look tries again.
pub async fn run(pool: PgPool, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = BTreeSet::new();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {
                if let Err(e) = advance_due(&pool).await {
                    tracing::warn!(error = %e, "cannot advance releases whose soak time ran out; will retry");
                }
                if let Err(e) = publish(&pool, &mut published).await {
                    tracing::debug!(error = %e, "cannot read release progress for the metrics; will retry");
                }
            }
        }
    }
}

/// Advances every active release whose current stage has run its soak time. Returns how many it advanced.
pub async fn advance_due(pool: &PgPool) -> Result<usize, StoreError> {
    let due: Vec<(Uuid, String, i32)> = sqlx::query_as(
        "SELECT id, org_id, stage FROM firmware_releases \
         WHERE withdrawn_at IS NULL AND state = 'active' AND soak_seconds IS NOT NULL \
           AND stage + 1 < cardinality(stages) \
           AND stage_started_at + soak_seconds * interval '1 second' <= now() \
         ORDER BY stage_started_at LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    let mut advanced = 0;
    for (release, org, stage) in due {
        let next = u16::try_from(stage + 1).unwrap_or(u16::MAX);
        let proposal = Proposal::Advance {
            release,
            stage: Some(next),
        };
        match firmware::apply(pool, &org, &proposal, ACTOR, 0, Mode::Write).await {
            Ok(_) => {
                advanced += 1;
                metrics::counter!(crate::metrics::RELEASE_AUTO_ADVANCES).increment(1);
                tracing::info!(%release, stage = next, "release advanced after its soak time");
            }
            // Another process advanced it (or it was paused or withdrawn) meanwhile.
            Err(ReleaseError::Stage(_) | ReleaseError::State(_) | ReleaseError::NotFound) => {}
            Err(ReleaseError::CapExceeded(refused)) => {
                hold_for_confirmation(pool, release, stage, &refused.impact).await?;
            }
            Err(ReleaseError::Store(e)) => return Err(e),
            Err(e) => tracing::warn!(%release, error = %e, "release cannot advance by itself"),
        }
    }
    Ok(advanced)
}

/// Pauses a release whose automatic advance would retarget more devices than its org's cap, saying so.
async fn hold_for_confirmation(
    pool: &PgPool,
    release: Uuid,
    stage: i32,
    impact: &firmware::Impact,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let halted = json!({
        "by": "retarget_cap",
        "message": "advancing by itself would retarget more devices than the org's retarget cap: advance it \
                    with a dry run's confirmation token",
        "changed": impact.changed,
        "impacted": impact.impacted,
    });
    let paused = firmware::progress::pause_at(&mut tx, release, stage, halted).await?;
    tx.commit().await?;
    if paused {
        tracing::warn!(%release, "release paused: its automatic advance is over the retarget cap");
    }
    Ok(())
}

/// Sets `cohort_release_devices{release, standing}` for every live release; a release no longer live is
/// set to zero once.
async fn publish(pool: &PgPool, published: &mut BTreeSet<Uuid>) -> Result<(), StoreError> {
    let rows: Vec<(Uuid, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT r.id, coalesce(sum(p.targeted), 0)::int8, coalesce(sum(p.running), 0)::int8, \
           coalesce(sum(p.failed), 0)::int8, coalesce(sum(p.reverted), 0)::int8 \
         FROM firmware_releases r LEFT JOIN release_progress p ON p.release_id = r.id \
         WHERE r.withdrawn_at IS NULL GROUP BY r.id LIMIT 10000",
    )
    .fetch_all(pool)
    .await?;
    let mut live = BTreeSet::new();
    for (release, targeted, running, failed, reverted) in rows {
        let previous = targeted - running - failed - reverted;
        set(release, [targeted, running, previous, failed, reverted]);
        live.insert(release);
    }
    for gone in published.difference(&live) {
        set(*gone, [0; 5]);
    }
    *published = live;
    Ok(())
}

fn set(release: Uuid, counts: [i64; 5]) {
    let names = ["targeted", "running", "previous", "failed", "reverted"];
    for (standing, n) in names.into_iter().zip(counts) {
        metrics::gauge!(crate::metrics::RELEASE_DEVICES, "release" => release.to_string(), "standing" => standing)
            .set(n as f64);
    }
}
