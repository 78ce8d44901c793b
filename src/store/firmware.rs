//! Firmware releases (written with their control-log entries) and the impact preview.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgPool;
use uuid::Uuid;

use super::control::{self, ControlEntry};
use super::StoreError;
use crate::firmware::{
    resolve, DeviceFacts, GroupRelease, Target, Version, VersionError, VersionKind,
};

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
    #[error(transparent)]
    Store(#[from] StoreError),
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
}

/// The kind of versions the org's live releases use, if any.
async fn org_kind(
    tx: &mut sqlx::PgConnection,
    org_id: &str,
) -> Result<Option<VersionKind>, sqlx::Error> {
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

/// Releases `version` to a group or as the org's default, replacing the target's current release.
pub async fn release(
    pool: &PgPool,
    org_id: &str,
    target: ReleaseTarget,
    version: &str,
    actor: &str,
) -> Result<Release, ReleaseError> {
    let version = version.trim();
    let parsed = Version::parse(version)?;
    let mut tx = pool.begin().await?;
    // Serialise releases of the org (kind checks and replacement must not race).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('cohort-release:' || $1))")
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    if let Some(kind) = org_kind(&mut tx, org_id).await? {
        Version::parse_as(version, kind)?;
    }
    match target {
        ReleaseTarget::Group(group) => {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT 1::int8 FROM device_groups WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
            )
            .bind(group)
            .bind(org_id)
            .fetch_optional(&mut *tx)
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
            .fetch_optional(&mut *tx)
            .await?;
            if runs.is_none() {
                return Err(ReleaseError::NoDeviceRunsIt(version.to_string()));
            }
        }
    }
    sqlx::query(
        "UPDATE firmware_releases SET withdrawn_at = now() WHERE org_id = $1 AND withdrawn_at IS NULL \
         AND group_id IS NOT DISTINCT FROM $2",
    )
    .bind(org_id)
    .bind(target.group())
    .execute(&mut *tx)
    .await?;
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO firmware_releases (id, org_id, version, version_kind, group_id, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(org_id)
    .bind(version)
    .bind(parsed.kind().as_str())
    .bind(target.group())
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    let entry = ControlEntry::ReleaseChanged {
        org_id: org_id.to_string(),
        group_id: target.group(),
        version: Some(version.to_string()),
    };
    control::append(&mut tx, org_id, &entry).await?;
    tx.commit().await?;
    Ok(Release {
        id,
        org_id: org_id.to_string(),
        version: version.to_string(),
        target,
    })
}

/// Withdraws a live release; its target then has no release.
pub async fn withdraw(pool: &PgPool, release_id: Uuid) -> Result<Release, ReleaseError> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, String, Option<Uuid>)> = sqlx::query_as(
        "UPDATE firmware_releases SET withdrawn_at = now() WHERE id = $1 AND withdrawn_at IS NULL \
         RETURNING org_id, version, group_id",
    )
    .bind(release_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (org_id, version, group) = row.ok_or(ReleaseError::NotFound)?;
    let entry = ControlEntry::ReleaseChanged {
        org_id: org_id.clone(),
        group_id: group,
        version: None,
    };
    control::append(&mut tx, &org_id, &entry).await?;
    tx.commit().await?;
    Ok(Release {
        id: release_id,
        org_id,
        version,
        target: group.map_or(ReleaseTarget::Default, ReleaseTarget::Group),
    })
}

/// Every live release: (org, group or `None` for the default, version).
pub async fn live_releases(
    pool: &PgPool,
) -> Result<Vec<(String, Option<Uuid>, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT r.org_id, r.group_id, r.version FROM firmware_releases r \
         LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)",
    )
    .fetch_all(pool)
    .await?)
}

/// A proposed change for [`preview`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposal {
    /// Release `version` to the target.
    Release {
        target: ReleaseTarget,
        version: String,
    },
    /// Withdraw the target's current release.
    Withdraw { target: ReleaseTarget },
}

/// One device whose target would change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceImpact {
    pub device_id: String,
    pub from: Target,
    pub to: Target,
}

/// What a proposal would do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    /// Devices examined (the group's members, or the org's devices for the default).
    pub examined: usize,
    /// Devices whose resolved version would change (each would get one rollout-target event).
    pub changed: usize,
    /// Counts by (from version, to version), "none" for no target.
    pub transitions: BTreeMap<String, usize>,
    /// Up to `sample` of the changing devices, by id.
    pub sample: Vec<DeviceImpact>,
}

/// Computes, without writing anything, whose resolved firmware a release or withdrawal would change, with
/// the same resolution code the workers use, from the devices and memberships stored in PostgreSQL.
pub async fn preview(
    pool: &PgPool,
    org_id: &str,
    proposal: &Proposal,
    sample: usize,
) -> Result<Impact, ReleaseError> {
    let target = match proposal {
        Proposal::Release { target, version } => {
            Version::parse(version)?;
            let mut conn = pool.acquire().await?;
            if let Some(kind) = org_kind(&mut conn, org_id).await? {
                Version::parse_as(version, kind)?;
            }
            *target
        }
        Proposal::Withdraw { target } => *target,
    };
    // Current releases of the org, then the proposal applied to them.
    let rows: Vec<(Option<Uuid>, String)> = sqlx::query_as(
        "SELECT r.group_id, r.version FROM firmware_releases r LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.org_id = $1 AND r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await?;
    let mut groups: HashMap<Uuid, GroupRelease> = HashMap::new();
    let mut default: Option<GroupRelease> = None;
    let as_release = |group: Uuid, version: &str| -> Option<GroupRelease> {
        Version::parse(version).ok().map(|v| GroupRelease {
            group,
            version: v,
            label: version.into(),
        })
    };
    for (group, version) in &rows {
        match group {
            Some(g) => {
                if let Some(r) = as_release(*g, version) {
                    groups.insert(*g, r);
                }
            }
            None => default = as_release(Uuid::nil(), version),
        }
    }
    let (mut after_groups, mut after_default) = (groups.clone(), default.clone());
    match (proposal, target) {
        (Proposal::Release { version, .. }, ReleaseTarget::Group(g)) => {
            after_groups.insert(
                g,
                as_release(g, version)
                    .ok_or_else(|| VersionError::Unrecognised(version.clone()))?,
            );
        }
        (Proposal::Release { version, .. }, ReleaseTarget::Default) => {
            after_default = as_release(Uuid::nil(), version);
        }
        (Proposal::Withdraw { .. }, ReleaseTarget::Group(g)) => {
            after_groups.remove(&g);
        }
        (Proposal::Withdraw { .. }, ReleaseTarget::Default) => after_default = None,
    }
    // The devices the change can affect, with their facts and group memberships.
    let devices: Vec<(String, bool, Option<String>, Vec<Uuid>)> = match target {
        ReleaseTarget::Group(g) => {
            sqlx::query_as(
                "SELECT d.id, d.is_development, d.firmware_lock, \
                   ARRAY(SELECT m2.group_id FROM device_group_memberships m2 WHERE m2.device_id = d.id) \
                 FROM devices d JOIN device_group_memberships m ON m.device_id = d.id AND m.group_id = $2 \
                 WHERE d.org_id = $1 ORDER BY d.id",
            )
            .bind(org_id)
            .bind(g)
            .fetch_all(pool)
            .await?
        }
        ReleaseTarget::Default => {
            sqlx::query_as(
                "SELECT d.id, d.is_development, d.firmware_lock, \
                   ARRAY(SELECT m2.group_id FROM device_group_memberships m2 WHERE m2.device_id = d.id) \
                 FROM devices d WHERE d.org_id = $1 ORDER BY d.id",
            )
            .bind(org_id)
            .fetch_all(pool)
            .await?
        }
    };
    let mut impact = Impact {
        examined: devices.len(),
        changed: 0,
        transitions: BTreeMap::new(),
        sample: Vec::new(),
    };
    for (id, development, lock, member_of) in devices {
        let facts = DeviceFacts {
            development,
            lock: lock.as_deref(),
        };
        let from = resolve(
            &facts,
            member_of.iter().filter_map(|g| groups.get(g)),
            default.as_ref(),
        );
        let to = resolve(
            &facts,
            member_of.iter().filter_map(|g| after_groups.get(g)),
            after_default.as_ref(),
        );
        if from.is_rollout_change(&to) {
            impact.changed += 1;
            let key = format!(
                "{} -> {}",
                from.version.as_deref().unwrap_or("none"),
                to.version.as_deref().unwrap_or("none")
            );
            *impact.transitions.entry(key).or_default() += 1;
            if impact.sample.len() < sample {
                impact.sample.push(DeviceImpact {
                    device_id: id,
                    from,
                    to,
                });
            }
        }
    }
    Ok(impact)
}
