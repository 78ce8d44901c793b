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
//! A site-scoped static group only ever receives devices of its site (`siteId` as stored when the call
//! runs); the others are reported in [`StaticChange::wrong_site`]. As static membership is by hand, a member
//! that later moves to another site stays until it is removed by hand.
//!
//! **Device settings** are not written here: they go through the control log (`device_settings`), so the
//! owning worker applies them in the same order as the device's input events and writes the device itself
//! (the worker is the only writer of device rows).

use std::collections::{HashMap, HashSet};

use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::control::{self, ControlEntry, LockChange};
use super::StoreError;
use crate::firmware::Version;

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
    #[error(transparent)]
    Store(#[from] StoreError),
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
    let ids = unique(device_ids);
    let mut tx = pool.begin().await?;
    let group = lock_static_group(&mut tx, org_id, group_id, MemberError::DynamicGroup).await?;
    if ids.is_empty() {
        return Ok(StaticChange {
            total: member_count(&mut tx, group_id).await?,
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
    .fetch_all(&mut *tx)
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
    change.total = member_count(&mut tx, group_id).await?;
    if partial == Partial::Refused && change.has_refusals() {
        // Dropping the transaction rolls the additions back.
        return Err(MemberError::Refused(change));
    }
    if !change.changed.is_empty() {
        let entry = ControlEntry::StaticMembers {
            group_id,
            org_id: org_id.to_string(),
            added: change.changed.clone(),
            removed: Vec::new(),
        };
        control::append(&mut tx, org_id, &entry).await?;
    }
    tx.commit().await?;
    Ok(change)
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
    let ids = unique(device_ids);
    let mut tx = pool.begin().await?;
    let group =
        lock_static_group(&mut tx, org_id, group_id, MemberError::DynamicGroupRemove).await?;
    if ids.is_empty() {
        return Ok(StaticChange {
            total: member_count(&mut tx, group_id).await?,
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
    .fetch_all(&mut *tx)
    .await?;
    let mut change = StaticChange::default();
    for (id, found, removed) in rows {
        match (found, removed) {
            (false, _) => change.not_found.push(id),
            (true, true) => change.changed.push(id),
            (true, false) => change.skipped.push(id),
        }
    }
    change.total = member_count(&mut tx, group_id).await?;
    if partial == Partial::Refused && change.has_refusals() {
        return Err(MemberError::Refused(change));
    }
    if !change.changed.is_empty() {
        let entry = ControlEntry::StaticMembers {
            group_id,
            org_id: org_id.to_string(),
            added: Vec::new(),
            removed: change.changed.clone(),
        };
        control::append(&mut tx, org_id, &entry).await?;
    }
    tx.commit().await?;
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

/// The cellular identifiers devices report, each a built-in string field of the same (lower-case) name.
/// Read in any case (`IMEI`, `imei`, `Imei`), as cellular platforms write them; written in lower case.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentifierKind {
    Imei,
    Iccid,
    Esn,
    Mdn,
    Meid,
    Msisdn,
}

impl<'de> serde::Deserialize<'de> for IdentifierKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        IdentifierKind::ALL
            .into_iter()
            .find(|kind| kind.field().eq_ignore_ascii_case(&name))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown identifier kind {:?}: expected one of esn, iccid, imei, mdn, meid, msisdn (any case)",
                    name.chars().take(32).collect::<String>()
                ))
            })
    }
}

impl IdentifierKind {
    /// Every kind, in the order of the catalogue.
    pub const ALL: [IdentifierKind; 6] = [
        IdentifierKind::Imei,
        IdentifierKind::Iccid,
        IdentifierKind::Esn,
        IdentifierKind::Mdn,
        IdentifierKind::Meid,
        IdentifierKind::Msisdn,
    ];

    /// The catalogue field (and attribute) holding it.
    pub fn field(self) -> &'static str {
        match self {
            IdentifierKind::Imei => "imei",
            IdentifierKind::Iccid => "iccid",
            IdentifierKind::Esn => "esn",
            IdentifierKind::Mdn => "mdn",
            IdentifierKind::Meid => "meid",
            IdentifierKind::Msisdn => "msisdn",
        }
    }

    /// The name people use for it, for messages.
    pub fn label(self) -> &'static str {
        match self {
            IdentifierKind::Imei => "IMEI",
            IdentifierKind::Iccid => "ICCID",
            IdentifierKind::Esn => "ESN",
            IdentifierKind::Mdn => "MDN",
            IdentifierKind::Meid => "MEID",
            IdentifierKind::Msisdn => "MSISDN",
        }
    }

    /// Checks the identifier's format; the error is a message for the API's caller.
    pub fn validate(self, identifier: &str) -> Result<(), String> {
        let digits = |min: usize, max: usize| {
            (min..=max).contains(&identifier.len())
                && identifier.bytes().all(|b| b.is_ascii_digit())
        };
        let (ok, rule) = match self {
            IdentifierKind::Imei => (digits(1, 15), "up to 15 decimal digits"),
            IdentifierKind::Iccid => (digits(1, 20), "up to 20 decimal digits"),
            IdentifierKind::Esn => (digits(11, 11), "exactly 11 decimal digits"),
            IdentifierKind::Mdn => (digits(10, 10), "exactly 10 decimal digits"),
            IdentifierKind::Msisdn => (digits(11, 11), "exactly 11 decimal digits"),
            IdentifierKind::Meid => (
                identifier.len() == 14 && identifier.bytes().all(|b| b.is_ascii_hexdigit()),
                "exactly 14 hexadecimal characters",
            ),
        };
        if ok {
            return Ok(());
        }
        let mut quoted: String = identifier.chars().take(32).collect();
        if quoted.len() < identifier.len() {
            quoted.push('…');
        }
        Err(format!("{} must be {rule}, got {quoted:?}", self.label()))
    }

    /// The form identifiers are compared in: MEIDs (hexadecimal) in upper case, the others as given.
    pub fn normalize(self, identifier: &str) -> String {
        match self {
            IdentifierKind::Meid => identifier.to_ascii_uppercase(),
            _ => identifier.to_string(),
        }
    }

    /// The key `cohort_device_identifiers(attributes)` (migration `…000004_identifiers`) stores for it.
    fn key(self, identifier: &str) -> String {
        format!("{}:{}", self.field(), self.normalize(identifier))
    }
}

/// The device of each identifier in `org_id` (`None` when no device of the org reports it), in input
/// order. Identifiers are not validated here (see [`IdentifierKind::validate`]); an MEID matches in any
/// case. Should several devices of the org report the same identifier, the smallest device id answers.
/// One query for the whole batch, served by the primary key of `device_identifiers` (kept in step with
/// `devices` by triggers; see the migration `…000004_identifiers.sql` for why).
pub async fn resolve_identifiers(
    pool: &PgPool,
    org_id: &str,
    ids: &[(IdentifierKind, String)],
) -> Result<Vec<Option<String>>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|(kind, id)| kind.key(id)).collect();
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT identifier, min(device_id) FROM device_identifiers \
         WHERE org_id = $1 AND identifier = ANY($2::text[]) GROUP BY identifier",
    )
    .bind(org_id)
    .bind(&wanted)
    .fetch_all(pool)
    .await?;
    let found: HashMap<String, String> = rows.into_iter().collect();
    Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_formats_follow_their_standards() {
        use IdentifierKind::*;
        let ok = [
            (Imei, "356938035643809"),
            (Imei, "1"),
            (Iccid, "89014103211118510720"),
            (Iccid, "8901"),
            (Esn, "12345678901"),
            (Mdn, "5551234567"),
            (Meid, "A0000000002329"),
            (Meid, "a0000000002329"),
            (Msisdn, "15551234567"),
        ];
        for (kind, id) in ok {
            assert_eq!(kind.validate(id), Ok(()), "{kind:?} {id}");
        }
        let bad = [
            (
                Imei,
                "3569380356438091",
                "IMEI must be up to 15 decimal digits",
            ),
            (Imei, "", "IMEI must be up to 15 decimal digits"),
            (
                Imei,
                "35693803564380x",
                "IMEI must be up to 15 decimal digits",
            ),
            (
                Iccid,
                "890141032111185107201",
                "ICCID must be up to 20 decimal digits",
            ),
            (Esn, "1234567890", "ESN must be exactly 11 decimal digits"),
            (Esn, "123456789012", "ESN must be exactly 11 decimal digits"),
            (Mdn, "555123456", "MDN must be exactly 10 decimal digits"),
            (Mdn, "555-123-4567", "MDN must be exactly 10 decimal digits"),
            (
                Meid,
                "A000000000232",
                "MEID must be exactly 14 hexadecimal characters",
            ),
            (
                Meid,
                "G0000000002329",
                "MEID must be exactly 14 hexadecimal characters",
            ),
            (
                Msisdn,
                "+15551234567",
                "MSISDN must be exactly 11 decimal digits",
            ),
            (
                Msisdn,
                "1555123456",
                "MSISDN must be exactly 11 decimal digits",
            ),
            // Non-ASCII digits are not decimal digits here.
            (
                Mdn,
                "５５５１２３４５６７",
                "MDN must be exactly 10 decimal digits",
            ),
        ];
        for (kind, id, message) in bad {
            let err = kind.validate(id).unwrap_err();
            assert!(err.starts_with(message), "{kind:?} {id}: {err}");
            assert!(err.contains(&format!("{id:?}")), "quotes the value: {err}");
        }
        let long = "9".repeat(1000);
        let err = Imei.validate(&long).unwrap_err();
        assert!(err.len() < 100, "only a prefix is quoted: {err}");
    }

    #[test]
    fn kinds_name_their_fields_and_serialise_in_lower_case() {
        for kind in IdentifierKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.field());
            assert_eq!(
                serde_json::from_value::<IdentifierKind>(json).unwrap(),
                kind
            );
            assert_eq!(kind.label().to_lowercase(), kind.field());
        }
        assert_eq!(
            IdentifierKind::Meid.normalize("a0000000002329"),
            "A0000000002329"
        );
        assert_eq!(IdentifierKind::Imei.key("0123"), "imei:0123");
    }

    #[test]
    fn repeated_ids_are_answered_once_in_first_order() {
        let ids: Vec<String> = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(unique(&ids), ["b", "a", "c"]);
    }
}
