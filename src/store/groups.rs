//! Orgs and groups: each change is written together with the control-log entry that tells workers about it,
//! in one transaction. The REST API and tests go through these functions; nothing else writes definitions.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::control::{self, ControlEntry, GroupDefinition};
use super::firmware::ReleaseError;
use super::retarget_cap::{CapExceeded, GateError};
use super::StoreError;

mod gated;

use crate::rules::{compile, Catalogue, CompiledFilter, ValidationError};
pub use gated::{delete_group_confirmed, update_group_confirmed, Deletion, Updated};

/// Why a group change was refused.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("invalid filter")]
    Invalid(Vec<ValidationError>),
    #[error("a group with this name already exists")]
    NameTaken,
    #[error("group not found")]
    NotFound,
    /// The change conflicts with the current state (409): e.g. deleting a group with children.
    #[error("{0}")]
    Refused(String),
    /// The request itself is wrong (400): a parent in another org, a cycle, a filter on a static group…
    #[error("{0}")]
    BadRequest(String),
    /// The change retargets more devices than the org's cap, and no token confirmed it (409).
    #[error("the change retargets more devices than the org's retarget cap: {}", .0.why)]
    CapExceeded(Box<CapExceeded>),
    #[error(transparent)]
    Store(StoreError),
}

impl From<GateError> for GroupError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Exceeded(refused) => GroupError::CapExceeded(refused),
            GateError::Store(e) => GroupError::Store(e),
        }
    }
}

impl From<ReleaseError> for GroupError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::CapExceeded(refused) => GroupError::CapExceeded(refused),
            ReleaseError::Store(e) => GroupError::Store(e),
            ReleaseError::GroupNotFound | ReleaseError::NotFound => GroupError::NotFound,
            other => GroupError::BadRequest(other.to_string()),
        }
    }
}

impl From<StoreError> for GroupError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UniqueViolation { constraint }
                if constraint == "device_groups_org_name_idx" =>
            {
                GroupError::NameTaken
            }
            other => GroupError::Store(other),
        }
    }
}

impl From<sqlx::Error> for GroupError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

/// A group to create.
#[derive(Clone, Debug, Default)]
pub struct NewGroup {
    pub org_id: String,
    pub name: String,
    pub site_id: Option<String>,
    pub description: String,
    pub tags: Vec<String>,
    /// `Some` makes a dynamic group.
    pub filter: Option<Value>,
    pub parent_id: Option<Uuid>,
    /// The id to give it (a plan names the groups it creates in advance); `None`: a new random one.
    pub id: Option<Uuid>,
}

/// Creates an org (idempotent) and announces it.
pub async fn create_org(pool: &PgPool, org_id: &str, name: &str) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let created =
        sqlx::query("INSERT INTO orgs (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(org_id)
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    if created {
        let entry = ControlEntry::OrgCreated {
            org_id: org_id.to_string(),
        };
        control::append(&mut tx, org_id, &entry).await?;
    }
    tx.commit().await?;
    Ok(created)
}

/// Creates a group; a dynamic group's filter is validated and its `filter_fields_used` derived here.
pub async fn create_group(
    pool: &PgPool,
    catalogue: &Catalogue,
    group: &NewGroup,
) -> Result<GroupDefinition, GroupError> {
    let fields_used = match &group.filter {
        Some(filter) => compile(filter, catalogue)
            .map_err(GroupError::Invalid)?
            .field_names()
            .to_vec(),
        None => Vec::new(),
    };
    let id = group.id.unwrap_or_else(Uuid::new_v4);
    let mut tx = pool.begin().await?;
    if let Some(parent) = group.parent_id {
        check_parent(&mut tx, &group.org_id, id, parent).await?;
    }
    sqlx::query(
        "INSERT INTO device_groups (id, org_id, site_id, name, description, tags, type, filter_conditions, \
         filter_fields_used, parent_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(id)
    .bind(&group.org_id)
    .bind(&group.site_id)
    .bind(&group.name)
    .bind(&group.description)
    .bind(&group.tags)
    .bind(if group.filter.is_some() { "dynamic" } else { "static" })
    .bind(&group.filter)
    .bind(&fields_used)
    .bind(group.parent_id)
    .execute(&mut *tx)
    .await?;
    let def = GroupDefinition {
        group_id: id,
        org_id: group.org_id.clone(),
        site_id: group.site_id.clone(),
        version: 1,
        filter: group.filter.clone(),
    };
    control::append(
        &mut tx,
        &group.org_id,
        &ControlEntry::GroupUpserted(def.clone()),
    )
    .await?;
    tx.commit().await?;
    Ok(def)
}

/// Checks that `parent` can be the parent of `group`: a live group of the same org, not the group itself,
/// and not one of its descendants (that would make a cycle).
async fn check_parent(
    tx: &mut sqlx::PgConnection,
    org_id: &str,
    group: Uuid,
    parent: Uuid,
) -> Result<(), GroupError> {
    if parent == group {
        return Err(GroupError::BadRequest(
            "A group cannot be its own parent".into(),
        ));
    }
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1::int8 FROM device_groups WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
    )
    .bind(parent)
    .bind(org_id)
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Err(GroupError::BadRequest(format!(
            "Parent group {parent} not found"
        )));
    }
    // Walk up from the proposed parent; meeting the group means the parent is its descendant. The depth
    // bound only guards against a cycle already in the data.
    let cycle: bool = sqlx::query_scalar(
        "WITH RECURSIVE up(id, depth) AS ( \
           SELECT parent_id, 1 FROM device_groups WHERE id = $1 \
           UNION ALL \
           SELECT g.parent_id, up.depth + 1 FROM device_groups g JOIN up ON g.id = up.id \
           WHERE up.depth < 1000 \
         ) SELECT EXISTS (SELECT 1 FROM up WHERE id = $2)",
    )
    .bind(parent)
    .bind(group)
    .fetch_one(&mut *tx)
    .await?;
    if cycle {
        return Err(GroupError::BadRequest(
            "The parent would make a cycle: it is a descendant of this group".into(),
        ));
    }
    Ok(())
}

/// A group's type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Static,
    Dynamic,
}

impl GroupKind {
    /// `static` or `dynamic`, as stored and served.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Static => "static",
            GroupKind::Dynamic => "dynamic",
        }
    }

    /// The type named `name` (`static` or `dynamic`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "static" => Some(GroupKind::Static),
            "dynamic" => Some(GroupKind::Dynamic),
            _ => None,
        }
    }
}

/// A change to a group: `None` leaves a field as it is; `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    pub site_id: Option<Option<String>>,
    pub parent_id: Option<Option<Uuid>>,
    /// Only for dynamic groups (or with `kind: Dynamic`, which turns a static group dynamic).
    pub filter: Option<Value>,
    /// A new type: a dynamic group turned static keeps its current members as manual, unpinned ones (each
    /// logged); a static group turned dynamic (which needs `filter`) is evaluated like a new filter, so
    /// only the membership diff is written.
    pub kind: Option<GroupKind>,
    /// Who makes the change (the membership log's cause of a conversion to static).
    pub actor: Option<String>,
}

/// Updates a group. A new filter or site (the definition workers evaluate) bumps the group's version and is
/// announced in the control log, so workers write only the membership diff; other fields are descriptive.
pub async fn update_group(
    pool: &PgPool,
    catalogue: &Catalogue,
    group_id: Uuid,
    patch: &GroupPatch,
) -> Result<GroupDefinition, GroupError> {
    let compiled = compile_patch(patch, catalogue)?;
    let mut tx = pool.begin().await?;
    let planned = plan_update(&mut tx, group_id, patch, compiled.as_ref()).await?;
    update_row(&mut tx, group_id, patch, &planned).await?;
    let def = announce_update(&mut tx, group_id, patch, &planned).await?;
    tx.commit().await?;
    Ok(def)
}

/// The patch's new filter, validated and compiled (`None` without one).
fn compile_patch(
    patch: &GroupPatch,
    catalogue: &Catalogue,
) -> Result<Option<CompiledFilter>, GroupError> {
    match &patch.filter {
        Some(filter) => Ok(Some(
            compile(filter, catalogue).map_err(GroupError::Invalid)?,
        )),
        None => Ok(None),
    }
}

/// An update decided: what the group's definition becomes.
struct Planned {
    org_id: String,
    current: GroupKind,
    target: GroupKind,
    /// The site and filter after the update.
    site: Option<String>,
    filter: Option<Value>,
    /// Whether the site, filter or type changes (workers then re-evaluate the group).
    definition_changed: bool,
    /// The version after the update.
    version: i64,
    fields_used: Option<Vec<String>>,
}

/// Locks the group's row for the rest of the transaction and decides the update (refusing what it must).
async fn plan_update(
    tx: &mut sqlx::PgConnection,
    group_id: Uuid,
    patch: &GroupPatch,
    compiled: Option<&CompiledFilter>,
) -> Result<Planned, GroupError> {
    /// (org, site, version, type, filter).
    type Current = (String, Option<String>, i64, String, Option<Value>);
    let row: Option<Current> = sqlx::query_as(
        "SELECT org_id, site_id, version, type, filter_conditions FROM device_groups \
         WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(group_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (org_id, site_id, version, kind, filter) = row.ok_or(GroupError::NotFound)?;
    let current = GroupKind::parse(&kind).unwrap_or(GroupKind::Static);
    let target = patch.kind.unwrap_or(current);
    match (current, target, &patch.filter) {
        (_, GroupKind::Static, Some(_)) if current == target => {
            return Err(GroupError::BadRequest(
                "A static group has no filter (switch its type with \"type\": \"dynamic\")".into(),
            ))
        }
        (_, GroupKind::Static, Some(_)) => {
            return Err(GroupError::BadRequest(
                "A group turned static has no filterConditions".into(),
            ))
        }
        (GroupKind::Static, GroupKind::Dynamic, None) => {
            return Err(GroupError::BadRequest(
                "A group turned dynamic needs filterConditions".into(),
            ))
        }
        _ => {}
    }
    if let Some(Some(parent)) = patch.parent_id {
        check_parent(tx, &org_id, group_id, parent).await?;
    }
    let new_site = patch.site_id.clone().unwrap_or_else(|| site_id.clone());
    let new_filter = match target {
        GroupKind::Static => None,
        GroupKind::Dynamic => patch.filter.clone().or_else(|| filter.clone()),
    };
    let definition_changed = new_site != site_id || new_filter != filter || target != current;
    Ok(Planned {
        org_id,
        current,
        target,
        site: new_site,
        filter: new_filter,
        definition_changed,
        version: if definition_changed {
            version + 1
        } else {
            version
        },
        fields_used: match target {
            GroupKind::Static => Some(Vec::new()),
            GroupKind::Dynamic => compiled.map(|c| c.field_names().to_vec()),
        },
    })
}

/// Writes the planned update to the group's row (refused there if the new name is taken).
async fn update_row(
    tx: &mut sqlx::PgConnection,
    group_id: Uuid,
    patch: &GroupPatch,
    planned: &Planned,
) -> Result<(), GroupError> {
    sqlx::query(
        "UPDATE device_groups SET \
           name = COALESCE($2, name), description = COALESCE($3, description), tags = COALESCE($4, tags), \
           site_id = $5, parent_id = CASE WHEN $6 THEN $7 ELSE parent_id END, \
           filter_conditions = $8, filter_fields_used = COALESCE($9, filter_fields_used), version = $10, \
           type = $11, updated_at = now() \
         WHERE id = $1",
    )
    .bind(group_id)
    .bind(&patch.name)
    .bind(&patch.description)
    .bind(&patch.tags)
    .bind(&planned.site)
    .bind(patch.parent_id.is_some())
    .bind(patch.parent_id.flatten())
    .bind(&planned.filter)
    .bind(&planned.fields_used)
    .bind(planned.version)
    .bind(planned.target.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes what follows the row: a dynamic group turned static keeps its members as manual ones, and a new
/// definition is announced to the workers in the control log.
async fn announce_update(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    group_id: Uuid,
    patch: &GroupPatch,
    planned: &Planned,
) -> Result<GroupDefinition, GroupError> {
    if (planned.current, planned.target) == (GroupKind::Dynamic, GroupKind::Static) {
        convert_members_to_static(tx, group_id, planned.version, patch.actor.as_deref()).await?;
    }
    let def = GroupDefinition {
        group_id,
        org_id: planned.org_id.clone(),
        site_id: planned.site.clone(),
        version: planned.version,
        filter: planned.filter.clone(),
    };
    if planned.definition_changed {
        let entry = ControlEntry::GroupUpserted(def.clone());
        control::append(tx, &planned.org_id, &entry).await?;
    }
    Ok(def)
}

/// A dynamic group turned static: its members become manual, unpinned ones, each logged (action `added`,
/// reason `manual`, the cause naming the conversion), in the transaction that changes the type. The owning
/// workers mirror it when they apply the definition (nothing more is written for these devices).
async fn convert_members_to_static(
    tx: &mut sqlx::PgConnection,
    group_id: Uuid,
    version: i64,
    actor: Option<&str>,
) -> Result<(), GroupError> {
    let cause = serde_json::json!({
        "type": "api",
        "actor": actor.unwrap_or("api"),
        "change": "type_static",
    });
    sqlx::query(
        "WITH converted AS ( \
           UPDATE device_group_memberships SET added_by = 'manual', is_pinned = false \
           WHERE group_id = $1 RETURNING device_id) \
         INSERT INTO group_membership_log (group_id, device_id, action, reason, cause, group_version) \
         SELECT $1, device_id, 'added', 'manual', $2, $3 FROM converted ORDER BY device_id",
    )
    .bind(group_id)
    .bind(cause)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Replaces a dynamic group's filter, bumping its version; workers then write only the membership diff.
pub async fn update_filter(
    pool: &PgPool,
    catalogue: &Catalogue,
    group_id: Uuid,
    filter: &Value,
) -> Result<GroupDefinition, GroupError> {
    let patch = GroupPatch {
        filter: Some(filter.clone()),
        ..GroupPatch::default()
    };
    update_group(pool, catalogue, group_id, &patch).await
}

/// Deletes a group (soft delete); workers remove its memberships, the log keeps its history. Not gated by
/// the org's retarget cap: [`delete_group_confirmed`] is the API's way, which is.
pub async fn delete_group(pool: &PgPool, group_id: Uuid) -> Result<(), GroupError> {
    let mut tx = pool.begin().await?;
    gated::check_deletable(&mut tx, group_id).await?;
    gated::write_deletion(&mut tx, group_id).await?;
    tx.commit().await?;
    Ok(())
}

/// Pins (`pin = true`) or unpins a device in a dynamic group. The owning worker applies it.
pub async fn set_pin(
    pool: &PgPool,
    group_id: Uuid,
    device_id: &str,
    pin: bool,
    actor: &str,
) -> Result<i64, GroupError> {
    let mut tx = pool.begin().await?;
    let org_id: Option<String> = sqlx::query_scalar(
        "SELECT org_id FROM device_groups WHERE id = $1 AND type = 'dynamic' AND deleted_at IS NULL",
    )
    .bind(group_id)
    .fetch_optional(&mut *tx)
    .await?;
    let org_id = org_id.ok_or(GroupError::NotFound)?;
    let (group_id, device_id, actor) = (group_id, device_id.to_string(), actor.to_string());
    let entry = if pin {
        ControlEntry::Pinned {
            group_id,
            device_id,
            actor,
        }
    } else {
        ControlEntry::Unpinned {
            group_id,
            device_id,
            actor,
        }
    };
    let id = control::append(&mut tx, &org_id, &entry).await?;
    tx.commit().await?;
    Ok(id)
}

/// (id, org_id, site_id, version, filter_conditions) as selected by [`load_definitions`].
type DefinitionRow = (Uuid, String, Option<String>, i64, Option<Value>);

/// Every live group definition and every org, read in one snapshot together with the control-log head, so
/// a worker can start from the definitions and follow the log from that position.
pub async fn load_definitions(
    pool: &PgPool,
) -> Result<(Vec<GroupDefinition>, Vec<String>, i64), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM control_log")
        .fetch_one(&mut *tx)
        .await?;
    let orgs: Vec<String> = sqlx::query_scalar("SELECT id FROM orgs ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let rows: Vec<DefinitionRow> = sqlx::query_as(
        "SELECT id, org_id, site_id, version, filter_conditions FROM device_groups WHERE deleted_at IS NULL",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let groups = rows
        .into_iter()
        .map(
            |(group_id, org_id, site_id, version, filter)| GroupDefinition {
                group_id,
                org_id,
                site_id,
                version,
                filter,
            },
        )
        .collect();
    Ok((groups, orgs, head))
}
