//! Writing an admitted release change: the release's row (created, withdrawn, advanced, paused or
//! resumed) and the `release_changed` control-log entry that tells the workers, in one transaction.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::live::{release_entry, stage_share, LiveStages};
use super::{Admitted, Change, Release, ReleaseError};
use crate::firmware::progress::FailureSignal;
use crate::firmware::ReleaseState;
use crate::store::control::{self, StagingEntry};

/// A release as a change leaves it.
struct Written {
    id: Uuid,
    version: String,
    /// Whether it is still live (not withdrawn).
    live: bool,
    stages: Vec<u16>,
    stage: u16,
    state: ReleaseState,
    failure: Option<FailureSignal>,
}

impl LiveStages {
    /// This release once a change has moved it to `stage` and `state` (`live`: not withdrawn).
    fn written(&self, live: bool, stage: u16, state: ReleaseState) -> Written {
        Written {
            id: self.id,
            version: self.version.clone(),
            live,
            stages: self.stages.clone(),
            stage,
            state,
            failure: self.failure.clone(),
        }
    }
}

/// Writes an admitted change and its control-log entry (the workers re-resolve the devices it can affect).
pub(super) async fn write(
    tx: &mut Transaction<'_, Postgres>,
    admitted: &Admitted,
    actor: &str,
) -> Result<Release, ReleaseError> {
    let (org_id, target) = (admitted.org_id.as_str(), admitted.target);
    let written = match &admitted.change {
        Change::Release {
            version,
            parsed,
            stages,
            health,
        } => {
            sqlx::query(
                "UPDATE firmware_releases SET withdrawn_at = now() WHERE org_id = $1 AND withdrawn_at IS NULL \
                 AND group_id IS NOT DISTINCT FROM $2",
            )
            .bind(org_id)
            .bind(target.group())
            .execute(&mut **tx)
            .await?;
            let id = Uuid::new_v4();
            let stored: Vec<i32> = stages.iter().map(|s| i32::from(*s)).collect();
            sqlx::query(
                "INSERT INTO firmware_releases (id, org_id, version, version_kind, group_id, created_by, stages, \
                   failure, halt, soak_seconds) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id)
            .bind(org_id)
            .bind(version)
            .bind(parsed.kind().as_str())
            .bind(target.group())
            .bind(actor)
            .bind(&stored)
            .bind(health.failure.as_ref().map(sqlx::types::Json))
            .bind(health.halt.as_ref().map(sqlx::types::Json))
            .bind(health.soak_seconds.map(|s| s as i32))
            .execute(&mut **tx)
            .await?;
            Written {
                id,
                version: version.clone(),
                live: true,
                stages: stages.clone(),
                stage: 0,
                state: ReleaseState::Active,
                failure: health.failure.clone(),
            }
        }
        Change::Withdraw { live } => {
            sqlx::query("UPDATE firmware_releases SET withdrawn_at = now() WHERE id = $1")
                .bind(live.id)
                .execute(&mut **tx)
                .await?;
            live.written(false, live.stage, live.state)
        }
        Change::Advance { live, to, .. } => {
            sqlx::query(
                "UPDATE firmware_releases SET stage = $2, stage_started_at = now() WHERE id = $1",
            )
            .bind(live.id)
            .bind(i32::from(*to))
            .execute(&mut **tx)
            .await?;
            live.written(true, *to, live.state)
        }
        Change::Pause { live, .. } | Change::Resume { live, .. } => {
            let pausing = matches!(admitted.change, Change::Pause { .. });
            let state = if pausing {
                ReleaseState::Paused
            } else {
                ReleaseState::Active
            };
            // A pause records who paused it; a resume clears the halt and restarts the stage's soak.
            sqlx::query(
                "UPDATE firmware_releases SET state = $2, \
                   halted = CASE WHEN $3 THEN jsonb_build_object('by', 'operator', 'actor', $4::text, 'at', now()) END, \
                   stage_started_at = CASE WHEN $3 THEN stage_started_at ELSE now() END \
                 WHERE id = $1",
            )
            .bind(live.id)
            .bind(state.as_str())
            .bind(pausing)
            .bind(actor)
            .execute(&mut **tx)
            .await?;
            live.written(true, live.stage, state)
        }
    };
    let Written {
        id,
        version,
        live,
        stages,
        stage,
        state,
        failure,
    } = written;
    let staging = StagingEntry {
        release_id: id,
        stage,
        share: stage_share(&stages, stage),
        state,
        failure,
    };
    let entry = release_entry(
        org_id,
        target.group(),
        live.then(|| version.clone()),
        staging,
    );
    control::append(tx, org_id, &entry).await?;
    Ok(Release {
        id,
        org_id: org_id.to_string(),
        version,
        target,
        stages,
        stage,
    })
}
