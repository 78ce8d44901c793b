//! Firmware releases (written with their control-log entries) and their impact. One path decides every
//! release and withdrawal ([`apply`]): a dry run is refused exactly as the write would be, and answers the
//! impact the write would return.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::retarget_cap::{self, CapExceeded, Confirmation, GateError};
use super::StoreError;
use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::firmware::{ReleaseState, Version, VersionError, VersionKind, WHOLE_SHARE};

mod impact;
mod live;
pub mod progress;
mod write;

pub use impact::{
    batch_impact, definition_impact, Counting, DeviceImpact, Facts, HeldDevices, Impact,
    NewDefinition, ReleaseSide, Releases, ReleasesWire,
};
pub use live::{
    check_stages, live_releases, org_live_releases, stage_share, stages_from_percents, LiveRelease,
    MAX_STAGES,
};
use live::{live_stages, LiveStages};
use write::write;

/// Why a release or withdrawal was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("group not found")]
    GroupNotFound,
    #[error("release not found")]
    NotFound,
    #[error("version {0:?} cannot become the org default: no device of the org reports running it (release it to a group first)")]
    NoDeviceRunsIt(String),
    /// Stages that are not 1 to 10 increasing shares of 1 to 10,000 basis points.
    #[error("{0}")]
    Stages(String),
    /// A stage advance the release cannot make (it is at its last stage, or the stage named is not ahead).
    #[error("{0}")]
    Stage(String),
    /// A release's health settings that cannot work (thresholds naming nothing, a rate above 1).
    #[error("{0}")]
    Health(String),
    /// A pause or resume the release's state does not allow (pausing a paused release).
    #[error("{0}")]
    State(String),
    /// The change retargets more devices than the org's cap, and no token confirmed it.
    #[error("the change retargets more devices than the org's retarget cap: {}", .0.why)]
    CapExceeded(Box<CapExceeded>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GateError> for ReleaseError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Exceeded(refused) => ReleaseError::CapExceeded(refused),
            GateError::Store(e) => ReleaseError::Store(e),
        }
    }
}

impl From<sqlx::Error> for ReleaseError {
    fn from(e: sqlx::Error) -> Self {
        ReleaseError::Store(e.into())
    }
}

/// What a release targets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReleaseTarget {
    Group(Uuid),
    Default,
}

impl ReleaseTarget {
    fn group(self) -> Option<Uuid> {
        match self {
            ReleaseTarget::Group(g) => Some(g),
            ReleaseTarget::Default => None,
        }
    }
}

/// A live release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub id: Uuid,
    pub org_id: String,
    pub version: String,
    pub target: ReleaseTarget,
    /// Its stages: each the share of the target's devices selected, in basis points, increasing.
    pub stages: Vec<u16>,
    /// The current stage (an index into `stages`).
    pub stage: u16,
}

/// The kind of versions the org's live releases use, if any.
async fn org_kind(tx: &mut PgConnection, org_id: &str) -> Result<Option<VersionKind>, sqlx::Error> {
    let kind: Option<String> = sqlx::query_scalar(
        "SELECT version_kind FROM firmware_releases WHERE org_id = $1 AND withdrawn_at IS NULL LIMIT 1",
    )
    .bind(org_id)
    .fetch_optional(tx)
    .await?;
    Ok(kind.map(|k| {
        if k == "integer" {
            VersionKind::Integer
        } else {
            VersionKind::Semver
        }
    }))
}

/// Serialises the org's releases and withdrawals: the kind check, the replacement of a target's release and
/// the impact computed for them must not race another change of the org's releases.
pub(crate) async fn lock_org(conn: &mut PgConnection, org_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cohort-release:' || $1))")
        .bind(org_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// How a release watches its devices: what they report when an update failed, the thresholds that halt
/// it, and how long each stage runs before the next starts by itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub failure: Option<FailureSignal>,
    pub halt: Option<Thresholds>,
    /// Seconds each stage runs, its health holding, before the release advances by itself (`None`: only
    /// by hand).
    pub soak_seconds: Option<u32>,
}

/// Longest soak time: a year.
pub const MAX_SOAK_SECONDS: u32 = 31_536_000;

impl Health {
    /// Refuses settings that cannot work.
    fn check(&self) -> Result<(), ReleaseError> {
        if let Some(halt) = &self.halt {
            halt.check().map_err(ReleaseError::Health)?;
            let counts_failures = halt.failures.is_some() || halt.failure_rate.is_some();
            if counts_failures && self.failure.is_none() {
                return Err(ReleaseError::Health(
                    "halt counts failures, but the release names no failure signal (failure)"
                        .into(),
                ));
            }
        }
        if self
            .soak_seconds
            .is_some_and(|s| s == 0 || s > MAX_SOAK_SECONDS)
        {
            return Err(ReleaseError::Health(format!(
                "soakSeconds must be 1 to {MAX_SOAK_SECONDS}"
            )));
        }
        Ok(())
    }

    /// In canonical words, as a confirmation token names the release (nothing for the default).
    fn describe(&self) -> String {
        if *self == Health::default() {
            return String::new();
        }
        format!(
            " failure {} halt {} soak {:?}",
            self.failure
                .as_ref()
                .map_or("none".to_string(), |f| format!(
                    "{} = {}",
                    f.attribute, f.value
                )),
            self.halt.as_ref().map_or("none".to_string(), |h| {
                serde_json::to_string(h).unwrap_or_default()
            }),
            self.soak_seconds
        )
    }
}

/// A proposed change of an org's releases: what [`apply`] decides, and writes or only answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Proposal {
    /// Release `version` to the target, replacing its current release, in `stages` (basis points of the
    /// target's devices; `[10000]`: all at once), watched as `health` says. The release starts at its
    /// first stage.
    Release {
        target: ReleaseTarget,
        version: String,
        stages: Vec<u16>,
        health: Health,
    },
    /// Pause this live release: it selects no further device; those it targets keep it.
    Pause { release: Uuid },
    /// Resume this paused (or rolled-back) release at its current stage.
    Resume { release: Uuid },
    /// Withdraw this live release; its target then has no release.
    Withdraw { release: Uuid },
    /// Move this live release to stage `stage` (`None`: the next one), selecting more devices.
    Advance { release: Uuid, stage: Option<u16> },
}

/// Whether [`apply`] writes the change or only answers what writing it would do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Write the change with its control-log entry.
    Write,
    /// Decide and compute exactly as [`Mode::Write`] does — the same refusals, the same impact — then roll
    /// back: nothing is written.
    DryRun,
}

/// What [`apply`] did, or would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The release created or withdrawn; `None` for a dry-run release (nothing was created). A dry-run
    /// withdrawal names the release it would withdraw.
    pub release: Option<Release>,
    /// Computed in the transaction that writes the change, just before writing it.
    pub impact: Impact,
    /// A dry run's token confirming this change with this impact, when the impact exceeds the org's
    /// retarget cap (the write then needs it); `None` otherwise, and for a write.
    pub confirmation_token: Option<String>,
}

/// A proposal [`admit`] accepted, with what writing it needs.
struct Admitted {
    org_id: String,
    target: ReleaseTarget,
    change: Change,
}

enum Change {
    Release {
        version: String,
        parsed: Version,
        stages: Vec<u16>,
        health: Health,
    },
    Pause {
        live: LiveStages,
        parsed: Version,
    },
    Resume {
        live: LiveStages,
        parsed: Version,
    },
    Withdraw {
        live: LiveStages,
    },
    Advance {
        live: LiveStages,
        parsed: Version,
        to: u16,
    },
}

impl Admitted {
    /// The change in canonical words, as a confirmation token names it: the same change always reads
    /// the same, whoever asks and however the request spelled it.
    fn describe(&self) -> String {
        let target = match self.target {
            ReleaseTarget::Group(g) => format!("group {g}"),
            ReleaseTarget::Default => "default".to_string(),
        };
        match &self.change {
            Change::Release {
                version,
                stages,
                health,
                ..
            } => format!(
                "release {target} {version} stages {stages:?}{}",
                health.describe()
            ),
            Change::Pause { live, .. } => format!("pause {}", live.id),
            Change::Resume { live, .. } => format!("resume {}", live.id),
            Change::Withdraw { live } => format!("withdraw {}", live.id),
            Change::Advance { live, to, .. } => format!("advance {} to stage {to}", live.id),
        }
    }

    /// The release named by a dry run (a new release has no id until written), as it would be after.
    fn existing(&self) -> Option<Release> {
        let (live, stage) = match &self.change {
            Change::Release { .. } => return None,
            Change::Withdraw { live }
            | Change::Pause { live, .. }
            | Change::Resume { live, .. } => (live, live.stage),
            Change::Advance { live, to, .. } => (live, *to),
        };
        Some(Release {
            id: live.id,
            org_id: self.org_id.clone(),
            version: live.version.clone(),
            target: self.target,
            stages: live.stages.clone(),
            stage,
        })
    }
}

/// Decides whether the org may make the change — the only place that does, for writes and dry runs alike —
/// holding the org's release lock for the rest of `conn`'s transaction.
async fn admit(
    conn: &mut PgConnection,
    org_id: &str,
    proposal: &Proposal,
) -> Result<Admitted, ReleaseError> {
    match proposal {
        Proposal::Release {
            target,
            version,
            stages,
            health,
        } => {
            let version = version.trim();
            let parsed = Version::parse(version)?;
            check_stages(stages)?;
            health.check()?;
            lock_org(conn, org_id).await?;
            if let Some(kind) = org_kind(conn, org_id).await? {
                Version::parse_as(version, kind)?;
            }
            match target {
                ReleaseTarget::Group(group) => {
                    let found: Option<i64> = sqlx::query_scalar(
                        "SELECT 1::int8 FROM device_groups WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
                    )
                    .bind(group)
                    .bind(org_id)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if found.is_none() {
                        return Err(ReleaseError::GroupNotFound);
                    }
                }
                ReleaseTarget::Default => {
                    let runs: Option<i64> = sqlx::query_scalar(
                        "SELECT 1::int8 FROM device_firmware_versions WHERE org_id = $1 AND version = $2 LIMIT 1",
                    )
                    .bind(org_id)
                    .bind(version)
                    .fetch_optional(&mut *conn)
                    .await?;
                    if runs.is_none() {
                        return Err(ReleaseError::NoDeviceRunsIt(version.to_string()));
                    }
                }
            }
            Ok(Admitted {
                org_id: org_id.to_string(),
                target: *target,
                change: Change::Release {
                    version: version.to_string(),
                    parsed,
                    stages: stages.clone(),
                    health: health.clone(),
                },
            })
        }
        Proposal::Pause { release } | Proposal::Resume { release } => {
            lock_org(conn, org_id).await?;
            let (live, target) = live_stages(conn, org_id, *release).await?;
            let pausing = matches!(proposal, Proposal::Pause { .. });
            match (pausing, live.state) {
                (true, ReleaseState::Active)
                | (false, ReleaseState::Paused | ReleaseState::RolledBack) => {}
                (true, state) => {
                    return Err(ReleaseError::State(format!(
                        "the release is already {}",
                        state.as_str().replace('_', " ")
                    )))
                }
                (false, _) => return Err(ReleaseError::State("the release is not paused".into())),
            }
            let parsed = Version::parse(&live.version)?;
            let change = if pausing {
                Change::Pause { live, parsed }
            } else {
                Change::Resume { live, parsed }
            };
            Ok(Admitted {
                org_id: org_id.to_string(),
                target,
                change,
            })
        }
        Proposal::Withdraw { release } => {
            lock_org(conn, org_id).await?;
            let (live, target) = live_stages(conn, org_id, *release).await?;
            Ok(Admitted {
                org_id: org_id.to_string(),
                target,
                change: Change::Withdraw { live },
            })
        }
        Proposal::Advance { release, stage } => {
            lock_org(conn, org_id).await?;
            let (live, target) = live_stages(conn, org_id, *release).await?;
            if live.state != ReleaseState::Active {
                return Err(ReleaseError::State(format!(
                    "the release is {}: resume it before advancing it",
                    live.state.as_str().replace('_', " ")
                )));
            }
            let last = live.stages.len().saturating_sub(1) as u16;
            let to = stage.unwrap_or(live.stage.saturating_add(1));
            if live.stage >= last {
                return Err(ReleaseError::Stage(format!(
                    "the release is at its last stage ({} of {})",
                    live.stage + 1,
                    live.stages.len()
                )));
            }
            if to <= live.stage || to > last {
                return Err(ReleaseError::Stage(format!(
                    "stage {to} is not ahead of the release's stage {} (stages 0 to {last})",
                    live.stage
                )));
            }
            let parsed = Version::parse(&live.version)?;
            Ok(Admitted {
                org_id: org_id.to_string(),
                target,
                change: Change::Advance { live, parsed, to },
            })
        }
    }
}

/// Decides `proposal` for the org, computes its impact (up to `sample` devices listed) in the same
/// transaction, and writes it unless `mode` is [`Mode::DryRun`]. One path for both modes: a dry run is
/// refused exactly when, and as, the write would be, and answers the impact the write would return.
pub async fn apply(
    pool: &PgPool,
    org_id: &str,
    proposal: &Proposal,
    actor: &str,
    sample: usize,
    mode: Mode,
) -> Result<Applied, ReleaseError> {
    let confirmation = Confirmation::none();
    apply_counting(
        pool,
        org_id,
        proposal,
        actor,
        sample,
        mode,
        None,
        &confirmation,
    )
    .await
}

/// [`apply`], with the impact over the devices `held` in memory counted there, and only the rest read
/// from PostgreSQL; a change over the org's retarget cap passes only with a dry run's token in
/// `confirmation` (see [`retarget_cap::gate`]).
#[allow(clippy::too_many_arguments)]
pub async fn apply_counting(
    pool: &PgPool,
    org_id: &str,
    proposal: &Proposal,
    actor: &str,
    sample: usize,
    mode: Mode,
    held: Option<&dyn HeldDevices>,
    confirmation: &Confirmation,
) -> Result<Applied, ReleaseError> {
    let mut tx = pool.begin().await?;
    let admitted = admit(&mut tx, org_id, proposal).await?;
    let impact = impact::compute(&mut tx, &admitted, sample, held).await?;
    let change = admitted.describe();
    let confirmation_token =
        retarget_cap::gate(pool, &mut tx, org_id, &change, &impact, confirmation, mode).await?;
    let release = finish(tx, &admitted, actor, mode).await?;
    Ok(Applied {
        release,
        impact,
        confirmation_token,
    })
}

/// What removing every member of `group` does to firmware targets, computed in `conn`'s transaction
/// holding the org's release lock (kept until it ends, so no release of the group races the change): a
/// group's members resolve through it only by its live release, so this is the impact of withdrawing
/// that release — none when it has none.
pub async fn group_removal_impact(
    conn: &mut PgConnection,
    org_id: &str,
    group: Uuid,
    sample: usize,
    held: Option<&dyn HeldDevices>,
) -> Result<Impact, ReleaseError> {
    lock_org(conn, org_id).await?;
    let release: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM firmware_releases WHERE org_id = $1 AND group_id = $2 AND withdrawn_at IS NULL",
    )
    .bind(org_id)
    .bind(group)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = release else {
        return Ok(Impact::new(0));
    };
    let (live, target) = live_stages(conn, org_id, id).await?;
    let admitted = Admitted {
        org_id: org_id.to_string(),
        target,
        change: Change::Withdraw { live },
    };
    impact::compute(conn, &admitted, sample, held).await
}

/// Ends the transaction of an admitted change: writes and commits it, or (a dry run) rolls it back.
async fn finish(
    mut tx: Transaction<'_, Postgres>,
    admitted: &Admitted,
    actor: &str,
    mode: Mode,
) -> Result<Option<Release>, ReleaseError> {
    match mode {
        Mode::DryRun => {
            tx.rollback().await?;
            Ok(admitted.existing())
        }
        Mode::Write => {
            let release = write(&mut tx, admitted, actor).await?;
            tx.commit().await?;
            Ok(Some(release))
        }
    }
}

/// Writes `proposal` as [`apply`] does, without computing its impact.
async fn write_only(
    pool: &PgPool,
    org_id: &str,
    proposal: &Proposal,
    actor: &str,
) -> Result<Release, ReleaseError> {
    let mut tx = pool.begin().await?;
    let admitted = admit(&mut tx, org_id, proposal).await?;
    let release = write(&mut tx, &admitted, actor).await?;
    tx.commit().await?;
    Ok(release)
}

/// Releases `version` to a group or as the org's default, replacing the target's current release (no
/// impact computed; [`apply`] computes it).
pub async fn release(
    pool: &PgPool,
    org_id: &str,
    target: ReleaseTarget,
    version: &str,
    actor: &str,
) -> Result<Release, ReleaseError> {
    let proposal = Proposal::Release {
        target,
        version: version.to_string(),
        stages: vec![WHOLE_SHARE],
        health: Health::default(),
    };
    write_only(pool, org_id, &proposal, actor).await
}

/// Withdraws a live release; its target then has no release.
pub async fn withdraw(pool: &PgPool, release_id: Uuid) -> Result<Release, ReleaseError> {
    let org_id: Option<String> =
        sqlx::query_scalar("SELECT org_id FROM firmware_releases WHERE id = $1")
            .bind(release_id)
            .fetch_optional(pool)
            .await?;
    let org_id = org_id.ok_or(ReleaseError::NotFound)?;
    let proposal = Proposal::Withdraw {
        release: release_id,
    };
    write_only(pool, &org_id, &proposal, "").await
}

/// Answers, without writing anything, what a release or withdrawal would do: a dry run of [`apply`], so it
/// is refused exactly as the change itself would be.
pub async fn preview(
    pool: &PgPool,
    org_id: &str,
    proposal: &Proposal,
    sample: usize,
) -> Result<Impact, ReleaseError> {
    Ok(apply(pool, org_id, proposal, "", sample, Mode::DryRun)
        .await?
        .impact)
}
