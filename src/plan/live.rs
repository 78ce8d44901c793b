//! The org's live state as a plan compares a fleet file with it: its groups by name, the static members of
//! the static groups the file names, its live releases, and its devices with their memberships.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt as _;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::store::groups::GroupKind;
use crate::store::StoreError;

/// A live group.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveGroup {
    pub id: Uuid,
    pub kind: GroupKind,
    pub filter: Option<Value>,
    pub site: Option<String>,
    pub parent: Option<Uuid>,
}

/// A live release, as a plan compares it with the file's.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveRelease {
    pub id: Uuid,
    pub version: String,
    pub stages: Vec<u16>,
    pub stage: u16,
    pub state: crate::firmware::ReleaseState,
    pub failure: Option<FailureSignal>,
    pub halt: Option<Thresholds>,
    pub soak_seconds: Option<u32>,
}

/// A device as resolution and membership need it.
#[derive(Clone, Debug)]
pub struct LiveDevice {
    pub id: String,
    pub attributes: Value,
    pub development: bool,
    pub lock: Option<String>,
    /// The release that targets it now.
    pub current: Option<Uuid>,
    /// Its groups: (group, pinned).
    pub groups: BTreeMap<Uuid, bool>,
}

/// The org's live state.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Live groups by name.
    pub groups: BTreeMap<String, LiveGroup>,
    /// Live releases by target (`None`: the default).
    pub releases: BTreeMap<Option<Uuid>, LiveRelease>,
}

impl Live {
    /// The group named `name`'s id.
    pub fn id_of(&self, name: &str) -> Option<Uuid> {
        self.groups.get(name).map(|g| g.id)
    }
}

/// Reads the org's live groups and releases.
pub async fn read(pool: &PgPool, org: &str) -> Result<Live, StoreError> {
    type GroupRow = (
        Uuid,
        String,
        String,
        Option<Value>,
        Option<String>,
        Option<Uuid>,
    );
    let rows: Vec<GroupRow> = sqlx::query_as(
        "SELECT id, name, type, filter_conditions, site_id, parent_id FROM device_groups \
         WHERE org_id = $1 AND deleted_at IS NULL",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    let mut live = Live::default();
    for (id, name, kind, filter, site, parent) in rows {
        let kind = GroupKind::parse(&kind).unwrap_or(GroupKind::Static);
        let group = LiveGroup {
            id,
            kind,
            filter,
            site,
            parent,
        };
        live.groups.insert(name, group);
    }
    type ReleaseRow = (
        Uuid,
        Option<Uuid>,
        String,
        Vec<i32>,
        i32,
        String,
        Option<sqlx::types::Json<FailureSignal>>,
        Option<sqlx::types::Json<Thresholds>>,
        Option<i32>,
    );
    let releases: Vec<ReleaseRow> = sqlx::query_as(
        "SELECT r.id, r.group_id, r.version, r.stages, r.stage, r.state, r.failure, r.halt, r.soak_seconds \
         FROM firmware_releases r LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.org_id = $1 AND r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    for (id, group, version, stages, stage, state, failure, halt, soak) in releases {
        let release = LiveRelease {
            id,
            version,
            stages: stages
                .iter()
                .map(|s| (*s).clamp(0, 10_000) as u16)
                .collect(),
            stage: stage.clamp(0, i32::from(u16::MAX)) as u16,
            state: crate::firmware::ReleaseState::parse(&state).unwrap_or_default(),
            failure: failure.map(|f| f.0),
            halt: halt.map(|h| h.0),
            soak_seconds: soak.and_then(|s| u32::try_from(s).ok()),
        };
        live.releases.insert(group, release);
    }
    Ok(live)
}

/// The members of static group `group`.
pub async fn members(pool: &PgPool, group: Uuid) -> Result<BTreeSet<String>, StoreError> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT device_id FROM device_group_memberships WHERE group_id = $1")
            .bind(group)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Calls `each` with every device of the org and its memberships, streamed (an org's devices are never
/// all held at once).
pub async fn for_each_device(
    pool: &PgPool,
    org: &str,
    mut each: impl FnMut(LiveDevice),
) -> Result<(), StoreError> {
    type Row = (
        String,
        Value,
        bool,
        Option<String>,
        Option<Uuid>,
        Vec<Uuid>,
        Vec<bool>,
    );
    let mut rows = sqlx::query_as::<_, Row>(
        "SELECT d.id, d.attributes, d.is_development, d.firmware_lock, d.target_release, \
           ARRAY(SELECT m.group_id FROM device_group_memberships m WHERE m.device_id = d.id ORDER BY m.group_id), \
           ARRAY(SELECT m.is_pinned FROM device_group_memberships m WHERE m.device_id = d.id ORDER BY m.group_id) \
         FROM devices d WHERE d.org_id = $1 ORDER BY d.id",
    )
    .bind(org)
    .fetch(pool);
    while let Some((id, attributes, development, lock, current, groups, pinned)) =
        rows.try_next().await?
    {
        each(LiveDevice {
            id,
            attributes,
            development,
            lock,
            current,
            groups: groups.into_iter().zip(pinned).collect(),
        });
    }
    Ok(())
}
