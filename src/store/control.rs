//! The control log: every change that workers must act on, durable and totally ordered.
//!
//! An entry is appended in the same transaction as the change it announces (a group definition, a pin…).
//! Appends first take a transaction-scoped advisory lock, so entries commit in id order: a reader that has
//! seen id N has seen every id below it, and reading `WHERE id > last_seen ORDER BY id` is lossless. The
//! transaction also sends `NOTIFY cohort_control` so workers wake at once; the notification carries no data
//! (the log is the data), so a missed notification only delays, never loses.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// The NOTIFY channel.
pub const CHANNEL: &str = "cohort_control";

/// Advisory lock key serialising control-log appends ("cohort" in ASCII, as an i64).
const APPEND_LOCK: i64 = 0x636f_686f_7274;

/// A dynamic or static group's definition as the workers need it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupDefinition {
    pub group_id: Uuid,
    pub org_id: String,
    pub site_id: Option<String>,
    pub version: i64,
    /// `None` for a static group.
    pub filter: Option<Value>,
}

/// A release's stage in a [`ControlEntry::ReleaseChanged`] entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagingEntry {
    pub release_id: Uuid,
    pub stage: u16,
    /// Basis points of the target's devices selected.
    pub share: u16,
    /// Whether it selects devices (absent: active).
    #[serde(default, skip_serializing_if = "is_active")]
    pub state: crate::firmware::ReleaseState,
    /// What its devices report when an update failed (absent: nothing counts as failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::firmware::progress::FailureSignal>,
}

fn is_active(state: &crate::firmware::ReleaseState) -> bool {
    *state == crate::firmware::ReleaseState::Active
}

impl StagingEntry {
    /// As resolution reads it; `None` (an entry without stages) selects the whole target.
    pub fn of(entry: Option<&StagingEntry>) -> crate::firmware::Staging {
        entry.map_or(crate::firmware::Staging::WHOLE, |s| {
            crate::firmware::Staging {
                release: s.release_id,
                stage: s.stage,
                share: s.share,
                state: s.state,
            }
        })
    }
}

/// One control-log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlEntry {
    /// A new org: events for it are accepted from now on.
    OrgCreated { org_id: String },
    /// A group was created or its definition changed: re-evaluate it for every owned device of the org.
    GroupUpserted(GroupDefinition),
    /// A group was deleted: remove its memberships.
    GroupDeleted { group_id: Uuid, org_id: String },
    /// Keep `device_id` in the dynamic group even when it stops matching (adding it if absent).
    Pinned {
        group_id: Uuid,
        device_id: String,
        actor: String,
    },
    /// Stop keeping it; it leaves at once if it no longer matches.
    Unpinned {
        group_id: Uuid,
        device_id: String,
        actor: String,
    },
    /// The current release of a group (or, with no group, the org's default) is now `version` (`None`:
    /// withdrawn). Workers re-resolve the devices it can affect: the group's members, or every device of
    /// the org for the default.
    ReleaseChanged {
        org_id: String,
        group_id: Option<Uuid>,
        version: Option<String>,
        /// The release, its current stage and the share of the target the stage selects (absent: the
        /// whole target, as for an entry written before releases had stages).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        staging: Option<StagingEntry>,
    },
    /// The API added devices to (or removed them from) a static group, and has already written the
    /// membership and log rows in the entry's transaction. The owning workers only mirror the change in
    /// memory (firmware resolution uses every membership) and re-resolve those devices' firmware; applying
    /// it again (after a restart) changes nothing.
    StaticMembers {
        group_id: Uuid,
        org_id: String,
        /// Devices that became members, in the API call's order.
        added: Vec<String>,
        /// Devices that stopped being members.
        removed: Vec<String>,
    },
    /// `cohort reconcile --repair`: the owning worker re-reads these devices from PostgreSQL, evaluates every
    /// dynamic group of the org for them, drops memberships of deleted groups, re-resolves their firmware,
    /// and writes the difference through its normal batch (log rows and rollout events included).
    Reevaluate {
        org_id: String,
        device_ids: Vec<String>,
        actor: String,
    },
    /// The API changed a device's development flag and/or firmware lock. The owning worker applies it in
    /// its ordered pipeline (so it and the `development`/`firmwareLock` of input events are applied in one
    /// order, the last one winning), writes the device and re-resolves its firmware.
    DeviceSettings {
        org_id: String,
        device_id: String,
        /// `None` leaves the flag unchanged.
        development: Option<bool>,
        firmware_lock: LockChange,
        /// Who asked (for the audit trail; the rollout event's cause names the entry).
        actor: String,
    },
}

/// A change of a device's firmware lock. Serialised adjacently tagged:
/// `{"op": "unchanged"}`, `{"op": "set", "version": "2.4.1"}`, `{"op": "clear"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "version", rename_all = "snake_case")]
pub enum LockChange {
    /// Leave the lock as it is.
    #[default]
    Unchanged,
    /// Lock the device to this version.
    Set(String),
    /// Remove the lock.
    Clear,
}

impl LockChange {
    /// The same change in the input event's form: `None` unchanged, `Some(None)` clear, `Some(Some(v))` set.
    pub fn as_event(&self) -> Option<Option<&str>> {
        match self {
            LockChange::Unchanged => None,
            LockChange::Set(v) => Some(Some(v)),
            LockChange::Clear => Some(None),
        }
    }
}

impl ControlEntry {
    /// The `kind` column value.
    pub fn kind(&self) -> &'static str {
        match self {
            ControlEntry::OrgCreated { .. } => "org_created",
            ControlEntry::GroupUpserted(_) => "group_upserted",
            ControlEntry::GroupDeleted { .. } => "group_deleted",
            ControlEntry::Pinned { .. } => "pinned",
            ControlEntry::Unpinned { .. } => "unpinned",
            ControlEntry::ReleaseChanged { .. } => "release_changed",
            ControlEntry::StaticMembers { .. } => "static_members",
            ControlEntry::DeviceSettings { .. } => "device_settings",
            ControlEntry::Reevaluate { .. } => "reevaluate",
        }
    }

    /// The org the entry belongs to.
    pub fn org_id(&self) -> &str {
        match self {
            ControlEntry::OrgCreated { org_id }
            | ControlEntry::GroupDeleted { org_id, .. }
            | ControlEntry::ReleaseChanged { org_id, .. }
            | ControlEntry::StaticMembers { org_id, .. }
            | ControlEntry::DeviceSettings { org_id, .. }
            | ControlEntry::Reevaluate { org_id, .. } => org_id,
            ControlEntry::GroupUpserted(def) => &def.org_id,
            ControlEntry::Pinned { .. } | ControlEntry::Unpinned { .. } => "",
        }
    }
}

/// An entry as read back, with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Positioned {
    pub id: i64,
    pub entry: ControlEntry,
}

/// Appends an entry inside `tx` and announces it; returns its id.
pub async fn append(
    tx: &mut sqlx::PgConnection,
    org_id: &str,
    entry: &ControlEntry,
) -> Result<i64, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *tx)
        .await?;
    let payload = serde_json::to_value(entry)
        .map_err(|e| StoreError::Permanent(sqlx::Error::Decode(Box::new(e))))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO control_log (org_id, kind, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(org_id)
    .bind(entry.kind())
    .bind(payload)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}

/// Entries with `id > after`, in order, at most `limit`.
pub async fn read_after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<Positioned>, StoreError> {
    let rows: Vec<(i64, Value)> =
        sqlx::query_as("SELECT id, payload FROM control_log WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.into_iter()
        .map(|(id, payload)| {
            serde_json::from_value(payload)
                .map(|entry| Positioned { id, entry })
                .map_err(|e| StoreError::Permanent(sqlx::Error::Decode(Box::new(e))))
        })
        .collect()
}

/// The id of the newest entry (0 for an empty log).
pub async fn head(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM control_log")
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_entries_serialise_with_their_kind_and_a_tagged_lock() {
        let group_id = Uuid::nil();
        let entry = ControlEntry::StaticMembers {
            group_id,
            org_id: "acme".into(),
            added: vec!["a".into(), "b".into()],
            removed: vec![],
        };
        assert_eq!(entry.kind(), "static_members");
        assert_eq!(entry.org_id(), "acme");
        assert_eq!(
            serde_json::to_value(&entry).unwrap(),
            json!({"kind": "static_members", "group_id": group_id, "org_id": "acme",
                   "added": ["a", "b"], "removed": []})
        );
        for (lock, wire, event) in [
            (LockChange::Unchanged, json!({"op": "unchanged"}), None),
            (
                LockChange::Set("2.4.1".into()),
                json!({"op": "set", "version": "2.4.1"}),
                Some(Some("2.4.1")),
            ),
            (LockChange::Clear, json!({"op": "clear"}), Some(None)),
        ] {
            let entry = ControlEntry::DeviceSettings {
                org_id: "acme".into(),
                device_id: "gw-17".into(),
                development: Some(true),
                firmware_lock: lock.clone(),
                actor: "ops".into(),
            };
            assert_eq!(entry.kind(), "device_settings");
            let value = serde_json::to_value(&entry).unwrap();
            assert_eq!(value["firmware_lock"], wire);
            assert_eq!(value["kind"], "device_settings");
            assert_eq!(
                serde_json::from_value::<ControlEntry>(value).unwrap(),
                entry
            );
            assert_eq!(lock.as_event(), event);
        }
    }
}
