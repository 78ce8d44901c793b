//! Group changes that can retarget devices — a deletion, a new filter, site or type — decided in one
//! transaction that holds the org's release lock (taken first, as releases take it, then the group's row):
//! their firmware impact is computed there, the org's retarget cap gates them
//! ([`retarget_cap::gate`]), and then they are written or, a dry run, only answered.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    announce_update, compile_patch, control, plan_update, update_row, ControlEntry,
    GroupDefinition, GroupError, GroupKind, GroupPatch,
};
use crate::rules::{compile, Catalogue};
use crate::store::firmware::{self, HeldDevices, Impact, Mode, NewDefinition};
use crate::store::retarget_cap::{self, Confirmation};

/// What deleting a group does, or would do, to firmware targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// Its members whose resolved firmware changes (they leave the group, and so its release).
    pub impact: Impact,
    /// A dry run's token confirming the deletion with this impact, when it exceeds the org's retarget cap.
    pub confirmation_token: Option<String>,
}

/// Deletes a group as [`super::delete_group`] does, gated by the org's retarget cap: in one transaction, holding
/// the org's release lock, it computes which members' targets change (up to `sample` listed; the devices
/// `held` in memory counted there), refuses as the deletion would (a group with children), passes the
/// gate, then writes — or, [`Mode::DryRun`], only answers the impact (and a token when it is over the cap).
pub async fn delete_group_confirmed(
    pool: &PgPool,
    group_id: Uuid,
    sample: usize,
    held: Option<&dyn HeldDevices>,
    confirmation: &Confirmation,
    mode: Mode,
) -> Result<Deletion, GroupError> {
    let org_id = live_org(pool, group_id).await?;
    let mut tx = pool.begin().await?;
    // The release lock first (as releases take it), then the group's row.
    let impact = firmware::group_removal_impact(&mut tx, &org_id, group_id, sample, held).await?;
    check_deletable(&mut tx, group_id).await?;
    let change = format!("delete group {group_id}");
    let confirmation_token =
        retarget_cap::gate(pool, &mut tx, &org_id, &change, &impact, confirmation, mode).await?;
    match mode {
        Mode::DryRun => tx.rollback().await?,
        Mode::Write => {
            write_deletion(&mut tx, group_id).await?;
            tx.commit().await?;
        }
    }
    Ok(Deletion {
        impact,
        confirmation_token,
    })
}

/// Refuses to delete a group that has live children (409), or that is gone (404).
pub(super) async fn check_deletable(
    tx: &mut sqlx::PgConnection,
    group_id: Uuid,
) -> Result<(), GroupError> {
    let live: Option<i64> = sqlx::query_scalar(
        "SELECT 1::int8 FROM device_groups WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(group_id)
    .fetch_optional(&mut *tx)
    .await?;
    if live.is_none() {
        return Err(GroupError::NotFound);
    }
    let children: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_groups WHERE parent_id = $1 AND deleted_at IS NULL",
    )
    .bind(group_id)
    .fetch_one(&mut *tx)
    .await?;
    if children > 0 {
        return Err(GroupError::Refused(
            "Cannot delete group with child groups".into(),
        ));
    }
    Ok(())
}

/// Marks the group deleted and tells the workers, who remove its memberships.
pub(super) async fn write_deletion(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    group_id: Uuid,
) -> Result<(), GroupError> {
    let org_id: Option<String> = sqlx::query_scalar(
        "UPDATE device_groups SET deleted_at = now(), version = version + 1 WHERE id = $1 AND deleted_at IS NULL \
         RETURNING org_id",
    )
    .bind(group_id)
    .fetch_optional(&mut **tx)
    .await?;
    let org_id = org_id.ok_or(GroupError::NotFound)?;
    control::append(
        tx,
        &org_id,
        &ControlEntry::GroupDeleted {
            group_id,
            org_id: org_id.clone(),
        },
    )
    .await?;
    Ok(())
}

/// What updating a group does, or would do, to firmware targets.
#[derive(Clone, Debug, PartialEq)]
pub struct Updated {
    /// The definition written (for a dry run, the one that would be).
    pub definition: GroupDefinition,
    /// The devices whose resolved firmware changes because they join or leave the group (only a group
    /// that carries a live release can retarget any; a dynamic group turned static keeps every member).
    pub impact: Impact,
    /// A dry run's token confirming the update with this impact, when it exceeds the org's retarget cap.
    pub confirmation_token: Option<String>,
}

/// Updates a group as [`super::update_group`] does, gated by the org's retarget cap: in one transaction,
/// holding the org's release lock and the group's row, it decides the update (refusing what it must, a
/// taken name included), computes which devices' targets change as the new definition moves them in or
/// out of the group (up to `sample` listed), passes the gate, then writes it — or, [`Mode::DryRun`], only
/// answers the impact (and a token when it is over the cap).
pub async fn update_group_confirmed(
    pool: &PgPool,
    catalogue: &Catalogue,
    group_id: Uuid,
    patch: &GroupPatch,
    sample: usize,
    confirmation: &Confirmation,
    mode: Mode,
) -> Result<Updated, GroupError> {
    let compiled = compile_patch(patch, catalogue)?;
    let org_id = live_org(pool, group_id).await?;
    let mut tx = pool.begin().await?;
    firmware::lock_org(&mut tx, &org_id).await?;
    let planned = plan_update(&mut tx, group_id, patch, compiled.as_ref()).await?;
    update_row(&mut tx, group_id, patch, &planned).await?;
    // Only a new filter or site of a group that is dynamic afterwards moves devices in or out of it.
    let impact = match (&planned.filter, planned.target, planned.definition_changed) {
        (Some(filter), GroupKind::Dynamic, true) => {
            let filter = match compiled {
                Some(compiled) => compiled,
                None => compile(filter, catalogue).map_err(GroupError::Invalid)?,
            };
            let definition = NewDefinition {
                group: group_id,
                site: planned.site.as_deref(),
                filter: &filter,
                now: chrono::Utc::now().timestamp_millis(),
            };
            firmware::definition_impact(&mut tx, &org_id, &definition, catalogue, sample).await?
        }
        _ => Impact::new(0),
    };
    let change = format!(
        "update group {group_id} {}",
        definition_digest(
            planned.target,
            planned.site.as_deref(),
            planned.filter.as_ref()
        )
    );
    let confirmation_token =
        retarget_cap::gate(pool, &mut tx, &org_id, &change, &impact, confirmation, mode).await?;
    let definition = match mode {
        Mode::DryRun => {
            tx.rollback().await?;
            GroupDefinition {
                group_id,
                org_id,
                site_id: planned.site,
                version: planned.version,
                filter: planned.filter,
            }
        }
        Mode::Write => {
            let definition = announce_update(&mut tx, group_id, patch, &planned).await?;
            tx.commit().await?;
            definition
        }
    };
    Ok(Updated {
        definition,
        impact,
        confirmation_token,
    })
}

/// The org of a live group (404 for any other).
async fn live_org(pool: &PgPool, group_id: Uuid) -> Result<String, GroupError> {
    let org_id: Option<String> =
        sqlx::query_scalar("SELECT org_id FROM device_groups WHERE id = $1 AND deleted_at IS NULL")
            .bind(group_id)
            .fetch_optional(pool)
            .await?;
    org_id.ok_or(GroupError::NotFound)
}

/// A digest of a group's definition after a change — its type, site and filter — the same for the same
/// definition however the request ordered its keys.
fn definition_digest(kind: GroupKind, site: Option<&str>, filter: Option<&Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_string(&site).unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update(canonical(filter.unwrap_or(&Value::Null)).as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `value` as JSON with every object's keys in order.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_digest_ignores_the_order_of_keys_only() {
        let a: Value = serde_json::from_str(
            r#"{"operator": "AND", "conditions": [{"field": "tags", "operator": "contains", "value": "x"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"conditions": [{"value": "x", "operator": "contains", "field": "tags"}], "operator": "AND"}"#,
        )
        .unwrap();
        let c: Value = serde_json::from_str(
            r#"{"operator": "AND", "conditions": [{"field": "tags", "operator": "contains", "value": "y"}]}"#,
        )
        .unwrap();
        let digest = |site, filter| definition_digest(GroupKind::Dynamic, site, Some(filter));
        assert_eq!(digest(None, &a), digest(None, &b));
        assert_ne!(digest(None, &a), digest(None, &c));
        assert_ne!(digest(None, &a), digest(Some("eu"), &a));
        assert_ne!(
            definition_digest(GroupKind::Static, None, None),
            definition_digest(GroupKind::Dynamic, None, None)
        );
    }
}
