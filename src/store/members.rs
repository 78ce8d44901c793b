//! What the API changes about devices directly: static-group membership, device settings (development flag,
//! firmware lock), and the lookup of devices by their cellular identifiers.
//!
//! **Static membership** is written here, by the API, in one transaction: the membership rows, one log row
//! per change (reason `manual`, cause `{"type": "api", "actor": …}`) and a `static_members` control-log
//! entry. Workers never write static memberships; they mirror the entry in memory (firmware resolution uses
//! every membership) and re-resolve the devices' firmware. Every statement is set-based (`unnest`), so a
//! call with 10,000 device ids costs a handful of round trips, not 10,000.
//!
//! Answers never reveal other orgs: a device id that exists only in another org is reported as not found,
//! exactly like an id that exists nowhere.
//!
//! The API's static changes are gated by the org's retarget cap ([`change_static_confirmed`]): the same
//! writes, in a transaction that also computes which devices' firmware they retarget.
//!
//! A site-scoped static group only ever receives devices of its site (`siteId` as stored when the call
//! runs); the others are reported in [`StaticChange::wrong_site`]. As static membership is by hand, a member
//! that later moves to another site stays until it is removed by hand.
//!
//! **Device settings** are not written here: they go through the control log (`device_settings`), so the
//! owning worker applies them in the same order as the device's input events and writes the device itself
//! (the worker is the only writer of device rows).

use std::collections::HashSet;

use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::control::{self, ControlEntry, LockChange};
use super::firmware::ReleaseError;
use super::retarget_cap::{CapExceeded, GateError};
use super::StoreError;
use crate::firmware::Version;

mod gated;
mod identifiers;

pub use gated::{change_static_confirmed, StaticConfirmed};
pub use identifiers::{resolve_identifiers, IdentifierKind};

/// What a static add or remove did, each list in the order of the (de-duplicated) input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticChange {
    /// Added (for an add) or removed (for a remove).
    pub changed: Vec<String>,
    /// Already members (add) or not members (remove): nothing to do.
    pub skipped: Vec<String>,
    /// No such device in this org.
    pub not_found: Vec<String>,
    /// Add only: the group is scoped to a site and these devices are not of that site, so they were not
    /// added. Always empty for a remove, and for a group without a site.
    pub wrong_site: Vec<String>,
    /// The group's member count once the change is made.
    pub total: i64,
}

impl StaticChange {
    /// Whether some device named could not be added or removed: unknown in the org, or of another site.
    pub fn has_refusals(&self) -> bool {
        !self.not_found.is_empty() || !self.wrong_site.is_empty()
    }
}

/// What a static add or remove does when some device named is unknown in the org or of another site.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Partial {
    /// Change the others and report the refused ones.
    Allowed,
    /// Change nothing: the call fails with [`MemberError::Refused`], which lists them.
    Refused,
}

/// Why a membership or settings change was refused.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("group not found")]
    GroupNotFound,
    #[error("device not found")]
    DeviceNotFound,
    #[error("Cannot manually add devices to a dynamic group")]
    DynamicGroup,
    #[error("Cannot manually remove devices from a dynamic group")]
    DynamicGroupRemove,
    /// The firmware lock is not a version (the message says why).
    #[error("invalid firmware lock: {0}")]
    InvalidVersion(String),
    /// Some devices named are unknown in the group's org or of another site, and the call changes all or
    /// nothing ([`Partial::Refused`]): nothing was written.
    #[error("Devices not found in the group's organization (or not of its site)")]
    Refused(StaticChange),
    /// The change retargets more devices than the org's cap, and no token confirmed it.
    #[error("the change retargets more devices than the org's retarget cap: {}", .0.why)]
    CapExceeded(Box<CapExceeded>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<GateError> for MemberError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::Exceeded(refused) => MemberError::CapExceeded(refused),
            GateError::Store(e) => MemberError::Store(e),
        }
    }
}

impl From<ReleaseError> for MemberError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::CapExceeded(refused) => MemberError::CapExceeded(refused),
            ReleaseError::Store(e) => MemberError::Store(e),
            ReleaseError::GroupNotFound | ReleaseError::NotFound => MemberError::GroupNotFound,
            other => MemberError::Store(StoreError::Permanent(sqlx::Error::Protocol(
                other.to_string(),
            ))),
        }
    }
}

impl From<sqlx::Error> for MemberError {
    fn from(e: sqlx::Error) -> Self {
        MemberError::Store(e.into())
    }
}

/// Adds devices to a static group, changing those it can and reporting the others. See the module
/// documentation.
pub async fn add_static(
    pool: &PgPool,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
) -> Result<StaticChange, MemberError> {
    add_static_with(pool, org_id, group_id, device_ids, actor, Partial::Allowed).await
}

/// Removes devices from a static group, changing those it can and reporting the others. See the module
/// documentation.
pub async fn remove_static(
    pool: &PgPool,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
) -> Result<StaticChange, MemberError> {
    remove_static_with(pool, org_id, group_id, device_ids, actor, Partial::Allowed).await
}

/// Adds devices to a static group; `partial` says what happens when some cannot be added.
pub async fn add_static_with(
    pool: &PgPool,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
    partial: Partial,
) -> Result<StaticChange, MemberError> {
    change_static(pool, (org_id, group_id), device_ids, actor, partial, false).await
}

/// Adds (`removal: false`) or removes devices to or from a static group of the org, with the control-log
/// entry the owning workers mirror, in one transaction.
async fn change_static(
    pool: &PgPool,
    (org_id, group_id): (&str, Uuid),
    device_ids: &[String],
    actor: &str,
    partial: Partial,
    removal: bool,
) -> Result<StaticChange, MemberError> {
    let mut tx = pool.begin().await?;
    let change = static_in(
        &mut tx,
        (org_id, group_id),
        device_ids,
        actor,
        partial,
        removal,
    )
    .await?;
    announce(&mut tx, org_id, group_id, &change, removal).await?;
    tx.commit().await?;
    Ok(change)
}

/// [`add_in`] or (`removal`) [`remove_in`].
async fn static_in(
    tx: &mut Transaction<'_, Postgres>,
    (org_id, group_id): (&str, Uuid),
    device_ids: &[String],
    actor: &str,
    partial: Partial,
    removal: bool,
) -> Result<StaticChange, MemberError> {
    if removal {
        remove_in(tx, org_id, group_id, device_ids, actor, partial).await
    } else {
        add_in(tx, org_id, group_id, device_ids, actor, partial).await
    }
}

/// [`add_static_with`]'s writes, in `tx`, without the control-log entry ([`announce`]).
async fn add_in(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
    partial: Partial,
) -> Result<StaticChange, MemberError> {
    let ids = unique(device_ids);
    let group = lock_static_group(tx, org_id, group_id, MemberError::DynamicGroup).await?;
    if ids.is_empty() {
        return Ok(StaticChange {
            total: member_count(tx, group_id).await?,
            ..StaticChange::default()
        });
    }
    // (device, exists in the org, of the group's site, added now), in input order. The data-modifying CTEs
    // run to completion whether or not the final SELECT reads them.
    let rows: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "WITH input AS (SELECT id, ord FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord)), \
         found AS ( \
           SELECT i.id, i.ord, ($5::text IS NULL OR d.attributes ->> 'siteId' IS NOT DISTINCT FROM $5) AS in_site \
           FROM input i JOIN devices d ON d.id = i.id AND d.org_id = $2), \
         added AS ( \
           INSERT INTO device_group_memberships (group_id, device_id, is_pinned, added_by) \
           SELECT $3, id, false, 'manual' FROM found WHERE in_site ORDER BY ord \
           ON CONFLICT (group_id, device_id) DO NOTHING RETURNING device_id), \
         logged AS ( \
           INSERT INTO group_membership_log (group_id, device_id, action, reason, cause, group_version) \
           SELECT $3, f.id, 'added', 'manual', $4, $6 FROM found f JOIN added a ON a.device_id = f.id \
           ORDER BY f.ord) \
         SELECT i.id, f.id IS NOT NULL, COALESCE(f.in_site, false), a.device_id IS NOT NULL \
         FROM input i LEFT JOIN found f ON f.id = i.id LEFT JOIN added a ON a.device_id = i.id \
         ORDER BY i.ord",
    )
    .bind(&ids)
    .bind(org_id)
    .bind(group_id)
    .bind(json!({"type": "api", "actor": actor}))
    .bind(&group.site_id)
    .bind(group.version)
    .fetch_all(&mut **tx)
    .await?;
    let mut change = StaticChange::default();
    for (id, found, in_site, added) in rows {
        match (found, in_site, added) {
            (false, _, _) => change.not_found.push(id),
            (true, false, _) => change.wrong_site.push(id),
            (true, true, true) => change.changed.push(id),
            (true, true, false) => change.skipped.push(id),
        }
    }
    change.total = member_count(tx, group_id).await?;
    if partial == Partial::Refused && change.has_refusals() {
        // Dropping the transaction rolls the additions back.
        return Err(MemberError::Refused(change));
    }
    Ok(change)
}

/// Tells the owning workers about a static change written in `tx` (nothing when nothing changed).
async fn announce(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    group_id: Uuid,
    change: &StaticChange,
    removal: bool,
) -> Result<(), MemberError> {
    if change.changed.is_empty() {
        return Ok(());
    }
    let (added, removed) = if removal {
        (Vec::new(), change.changed.clone())
    } else {
        (change.changed.clone(), Vec::new())
    };
    let entry = ControlEntry::StaticMembers {
        group_id,
        org_id: org_id.to_string(),
        added,
        removed,
    };
    control::append(tx, org_id, &entry).await?;
    Ok(())
}

/// Removes devices from a static group; `partial` says what happens when some are unknown in the org.
pub async fn remove_static_with(
    pool: &PgPool,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
    partial: Partial,
) -> Result<StaticChange, MemberError> {
    change_static(pool, (org_id, group_id), device_ids, actor, partial, true).await
}

/// [`remove_static_with`]'s writes, in `tx`, without the control-log entry ([`announce`]).
async fn remove_in(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
    partial: Partial,
) -> Result<StaticChange, MemberError> {
    let ids = unique(device_ids);
    let group = lock_static_group(tx, org_id, group_id, MemberError::DynamicGroupRemove).await?;
    if ids.is_empty() {
        return Ok(StaticChange {
            total: member_count(tx, group_id).await?,
            ..StaticChange::default()
        });
    }
    // (device, exists in the org, removed now), in input order.
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "WITH input AS (SELECT id, ord FROM unnest($1::text[]) WITH ORDINALITY AS u(id, ord)), \
         found AS (SELECT i.id, i.ord FROM input i JOIN devices d ON d.id = i.id AND d.org_id = $2), \
         removed AS ( \
           DELETE FROM device_group_memberships m USING found f \
           WHERE m.group_id = $3 AND m.device_id = f.id RETURNING m.device_id), \
         logged AS ( \
           INSERT INTO group_membership_log (group_id, device_id, action, reason, cause, group_version) \
           SELECT $3, f.id, 'removed', 'manual', $4, $5 FROM found f JOIN removed r ON r.device_id = f.id \
           ORDER BY f.ord) \
         SELECT i.id, f.id IS NOT NULL, r.device_id IS NOT NULL \
         FROM input i LEFT JOIN found f ON f.id = i.id LEFT JOIN removed r ON r.device_id = i.id \
         ORDER BY i.ord",
    )
    .bind(&ids)
    .bind(org_id)
    .bind(group_id)
    .bind(json!({"type": "api", "actor": actor}))
    .bind(group.version)
    .fetch_all(&mut **tx)
    .await?;
    let mut change = StaticChange::default();
    for (id, found, removed) in rows {
        match (found, removed) {
            (false, _) => change.not_found.push(id),
            (true, true) => change.changed.push(id),
            (true, false) => change.skipped.push(id),
        }
    }
    change.total = member_count(tx, group_id).await?;
    if partial == Partial::Refused && change.has_refusals() {
        return Err(MemberError::Refused(change));
    }
    Ok(change)
}

/// The static group's row, locked.
struct StaticGroup {
    version: i64,
    site_id: Option<String>,
}

/// Locks a live group of `org_id` for the rest of the transaction and requires it to be static (`dynamic`
/// is the error for a dynamic one). `FOR NO KEY UPDATE` serialises concurrent membership edits and
/// deletions of the same group, while other transactions' foreign-key checks against the row (which take
/// `KEY SHARE`) are not blocked.
async fn lock_static_group(
    tx: &mut Transaction<'_, Postgres>,
    org_id: &str,
    group_id: Uuid,
    dynamic: MemberError,
) -> Result<StaticGroup, MemberError> {
    let row: Option<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT type, version, site_id FROM device_groups \
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL FOR NO KEY UPDATE",
    )
    .bind(group_id)
    .bind(org_id)
    .fetch_optional(&mut **tx)
    .await?;
    match row {
        None => Err(MemberError::GroupNotFound),
        Some((kind, _, _)) if kind != "static" => Err(dynamic),
        Some((_, version, site_id)) => Ok(StaticGroup { version, site_id }),
    }
}

/// The group's member count, as this transaction sees it (its own changes included: the count triggers
/// run in it).
async fn member_count(
    tx: &mut Transaction<'_, Postgres>,
    group_id: Uuid,
) -> Result<i64, MemberError> {
    Ok(super::counts::member_count(&mut **tx, group_id).await?)
}

/// `ids` without repeats, first occurrences in order.
fn unique(ids: &[String]) -> Vec<&str> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Changes a device's development flag and/or firmware lock through the control log; the owning worker
/// applies it in order with the device's input events, writes the device and re-resolves its firmware (a
/// rollout-target event if the version changes, caused by this entry). Returns the entry's id.
pub async fn set_device_settings(
    pool: &PgPool,
    org_id: &str,
    device_id: &str,
    development: Option<bool>,
    lock: LockChange,
    actor: &str,
) -> Result<i64, MemberError> {
    let lock = match lock {
        LockChange::Set(version) => {
            let version = version.trim();
            Version::parse(version).map_err(|e| MemberError::InvalidVersion(e.to_string()))?;
            LockChange::Set(version.to_string())
        }
        other => other,
    };
    let mut tx = pool.begin().await?;
    let found: Option<i64> =
        sqlx::query_scalar("SELECT 1::int8 FROM devices WHERE id = $1 AND org_id = $2")
            .bind(device_id)
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(MemberError::DeviceNotFound);
    }
    let entry = ControlEntry::DeviceSettings {
        org_id: org_id.to_string(),
        device_id: device_id.to_string(),
        development,
        firmware_lock: lock,
        actor: actor.to_string(),
    };
    let id = control::append(&mut tx, org_id, &entry).await?;
    tx.commit().await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_answered_once_in_first_order() {
        let ids: Vec<String> = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(unique(&ids), ["b", "a", "c"]);
    }
}
