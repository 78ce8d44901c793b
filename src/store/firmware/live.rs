//! Live releases as resolution and changes read them: each with its stages (the shares of its target a
//! staged release selects, stage by stage) and its current stage.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{ReleaseError, ReleaseTarget};
use crate::firmware::progress::FailureSignal;
use crate::firmware::{GroupRelease, ReleaseState, Staging, Version, WHOLE_SHARE};
use crate::store::control::{ControlEntry, StagingEntry};
use crate::store::StoreError;

/// The most stages a release has.
pub const MAX_STAGES: usize = 10;

/// Checks a release's stages: 1 to [`MAX_STAGES`] shares, each 1 to 10,000 basis points, increasing.
pub fn check_stages(stages: &[u16]) -> Result<(), ReleaseError> {
    let refuse = |why: &str| Err(ReleaseError::Stages(format!("stages: {why}")));
    if stages.is_empty() || stages.len() > MAX_STAGES {
        return refuse("1 to 10 stages are allowed");
    }
    if stages.iter().any(|s| *s == 0 || *s > WHOLE_SHARE) {
        return refuse("each stage is a share above 0% and at most 100%");
    }
    if stages.windows(2).any(|w| w[0] >= w[1]) {
        return refuse("each stage must select more devices than the one before");
    }
    Ok(())
}

/// Stages given as percentages of the target's devices (1 to [`MAX_STAGES`], each above 0 and at most 100,
/// to a hundredth), as basis points; refused with what is wrong.
pub fn stages_from_percents(percents: &[f64]) -> Result<Vec<u16>, String> {
    if percents.is_empty() || percents.len() > MAX_STAGES {
        return Err(format!("stages: 1 to {MAX_STAGES} percentages are allowed"));
    }
    percents
        .iter()
        .map(|percent| {
            let points = percent * 100.0;
            let rounded = points.round();
            if !(*percent > 0.0 && *percent <= 100.0) || (points - rounded).abs() > 1e-6 {
                return Err(format!(
                    "stages: {percent} is not a percentage above 0 and at most 100, to a hundredth"
                ));
            }
            Ok(rounded as u16)
        })
        .collect()
}

/// The share of its target a release's stage `stage` selects, in basis points (every device past the last
/// stage, which `check_stages` and the table's constraint never let a release reach).
pub fn stage_share(stages: &[u16], stage: u16) -> u16 {
    stages
        .get(usize::from(stage))
        .copied()
        .unwrap_or(WHOLE_SHARE)
}

/// The control-log entry that tells the workers a target's release changed: `version` released (`None`:
/// withdrawn, and `staging` is then left out) at `staging`'s stage and state.
pub(super) fn release_entry(
    org_id: &str,
    group_id: Option<Uuid>,
    version: Option<String>,
    staging: StagingEntry,
) -> ControlEntry {
    ControlEntry::ReleaseChanged {
        org_id: org_id.to_string(),
        group_id,
        staging: version.is_some().then_some(staging),
        version,
    }
}

/// A live release's id, version and stages, as a withdrawal or an advance reads it.
pub(super) struct LiveStages {
    pub(super) id: Uuid,
    pub(super) version: String,
    pub(super) stages: Vec<u16>,
    pub(super) stage: u16,
    pub(super) state: ReleaseState,
    pub(super) failure: Option<FailureSignal>,
}

/// Reads a live release of the org for a change, locking its row.
pub(super) async fn live_stages(
    conn: &mut PgConnection,
    org_id: &str,
    release: Uuid,
) -> Result<(LiveStages, ReleaseTarget), ReleaseError> {
    type Row = (
        String,
        Option<Uuid>,
        Vec<i32>,
        i32,
        String,
        Option<sqlx::types::Json<FailureSignal>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT version, group_id, stages, stage, state, failure FROM firmware_releases \
         WHERE id = $1 AND org_id = $2 AND withdrawn_at IS NULL FOR UPDATE",
    )
    .bind(release)
    .bind(org_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (version, group, stages, stage, state, failure) = row.ok_or(ReleaseError::NotFound)?;
    let live = LiveStages {
        id: release,
        version,
        stages: stages
            .iter()
            .map(|s| (*s).clamp(0, i32::from(WHOLE_SHARE)) as u16)
            .collect(),
        stage: stage.clamp(0, i32::from(u16::MAX)) as u16,
        state: ReleaseState::parse(&state).unwrap_or_default(),
        failure: failure.map(|f| f.0),
    };
    Ok((
        live,
        group.map_or(ReleaseTarget::Default, ReleaseTarget::Group),
    ))
}

/// A live release as resolution reads it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveRelease {
    pub id: Uuid,
    pub org_id: String,
    /// `None` for the org's default.
    pub group_id: Option<Uuid>,
    pub version: String,
    pub stage: i32,
    /// The share of the target its current stage selects, in basis points.
    pub share: i32,
    /// `active`, `paused` or `rolled_back`.
    pub state: String,
    /// What its devices report when an update failed.
    pub failure: Option<sqlx::types::Json<FailureSignal>>,
}

impl LiveRelease {
    /// Its current stage, as resolution reads it.
    pub fn staging(&self) -> Staging {
        Staging {
            release: self.id,
            stage: self.stage.clamp(0, i32::from(u16::MAX)) as u16,
            share: self.share.clamp(0, i32::from(WHOLE_SHARE)) as u16,
            state: ReleaseState::parse(&self.state).unwrap_or_default(),
        }
    }

    /// As resolution reads it; `None` for a version that does not parse.
    pub fn resolution(&self) -> Option<GroupRelease> {
        let version = Version::parse(&self.version).ok()?;
        Some(GroupRelease {
            group: self.group_id.unwrap_or(Uuid::nil()),
            version,
            label: self.version.as_str().into(),
            staging: self.staging(),
        })
    }
}

/// The columns of [`LiveRelease`], of `firmware_releases r`.
const LIVE_RELEASE_COLUMNS: &str =
    "r.id, r.org_id, r.group_id, r.version, r.stage, r.stages[r.stage + 1] AS share, r.state, r.failure";

/// An org's live releases (to groups not deleted, and its default), read through `executor` (a pool, or
/// a change's own transaction).
pub async fn org_live_releases<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    org_id: &str,
) -> Result<Vec<LiveRelease>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LIVE_RELEASE_COLUMNS} FROM firmware_releases r LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.org_id = $1 AND r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)"
    ))
    .bind(org_id)
    .fetch_all(executor)
    .await
}

/// Every live release (of a group not deleted, or an org's default).
pub async fn live_releases(pool: &PgPool) -> Result<Vec<LiveRelease>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {LIVE_RELEASE_COLUMNS} FROM firmware_releases r \
         LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)"
    ))
    .fetch_all(pool)
    .await?)
}
