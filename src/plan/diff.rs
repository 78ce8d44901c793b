//! What applying a fleet file changes: the group and release changes, in the order they are applied
//! (a parent created before its children), compared with the org's live state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::file::{FleetFile, ReleaseSpec};
use super::live::{self, Live, LiveRelease};
use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::firmware::ReleaseState;
use crate::store::groups::GroupKind;
use crate::store::StoreError;

/// One change a plan makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Change {
    /// Create a group, with the id the plan gives it.
    #[serde(rename_all = "camelCase")]
    CreateGroup {
        name: String,
        id: Uuid,
        filter: Option<Value>,
        parent: Option<String>,
    },
    /// Change a group's filter (turning it dynamic if it was static), type or parent.
    #[serde(rename_all = "camelCase")]
    UpdateGroup {
        name: String,
        id: Uuid,
        /// The new filter, when it changes (a static group turned dynamic included).
        filter: Option<Value>,
        /// Turn a dynamic group static (its current members stay, as manual members).
        to_static: bool,
        /// The new parent, when it changes (`Some(None)`: no parent).
        parent: Option<Option<String>>,
    },
    /// Add devices to a static group.
    AddMembers { group: String, devices: Vec<String> },
    /// Remove devices from a static group.
    RemoveMembers { group: String, devices: Vec<String> },
    /// Release a version to a group (or, `group: None`, as the org's default), replacing its release.
    #[serde(rename_all = "camelCase")]
    Release {
        group: Option<String>,
        version: String,
        stages: Vec<u16>,
        failure: Option<FailureSignal>,
        halt: Option<Thresholds>,
        soak_seconds: Option<u32>,
    },
}

/// The changes that make the org's live state what `file` says, given the ids to create groups with
/// (`planned`: by name; a name without one gets a new id).
pub async fn changes(
    pool: &PgPool,
    file: &FleetFile,
    live: &Live,
    planned: &BTreeMap<String, Uuid>,
) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    // Creations, parents first: a group whose parent the file also creates waits for it.
    let mut pending: Vec<&String> = file
        .groups
        .keys()
        .filter(|name| !live.groups.contains_key(*name))
        .collect();
    let mut created: Vec<&String> = Vec::new();
    while !pending.is_empty() {
        let (ready, waiting): (Vec<&String>, Vec<&String>) = pending.iter().partition(|name| {
            let parent = file.groups[**name].parent.as_ref();
            parent.is_none_or(|p| !pending.contains(&p))
        });
        if ready.is_empty() {
            // A cycle among new groups: created in name order; the store refuses the cycle's last parent.
            created.extend(waiting);
            break;
        }
        created.extend(ready);
        pending = waiting;
    }
    for name in created {
        let spec = &file.groups[name];
        out.push(Change::CreateGroup {
            name: name.clone(),
            id: planned.get(name).copied().unwrap_or_else(Uuid::new_v4),
            filter: spec.filter.clone(),
            parent: spec.parent.clone(),
        });
        if let Some(members) = &spec.members {
            let mut devices = members.clone();
            devices.sort();
            devices.dedup();
            if !devices.is_empty() {
                out.push(Change::AddMembers {
                    group: name.clone(),
                    devices,
                });
            }
        }
    }
    for (name, spec) in &file.groups {
        let Some(group) = live.groups.get(name) else {
            continue;
        };
        let filter = match (&spec.filter, group.kind) {
            (Some(f), GroupKind::Dynamic) if Some(f) != group.filter.as_ref() => Some(f.clone()),
            (Some(f), GroupKind::Static) => Some(f.clone()),
            _ => None,
        };
        let to_static = spec.members.is_some() && group.kind == GroupKind::Dynamic;
        let parent_now = group.parent.and_then(|p| name_of(live, p));
        let parent = (spec.parent != parent_now).then(|| spec.parent.clone());
        if filter.is_some() || to_static || parent.is_some() {
            out.push(Change::UpdateGroup {
                name: name.clone(),
                id: group.id,
                filter,
                to_static,
                parent,
            });
        }
        if let Some(members) = &spec.members {
            let want: std::collections::BTreeSet<String> = members.iter().cloned().collect();
            let have = live::members(pool, group.id).await?;
            let add: Vec<String> = want.difference(&have).cloned().collect();
            let remove: Vec<String> = have.difference(&want).cloned().collect();
            if !add.is_empty() {
                out.push(Change::AddMembers {
                    group: name.clone(),
                    devices: add,
                });
            }
            if !remove.is_empty() {
                out.push(Change::RemoveMembers {
                    group: name.clone(),
                    devices: remove,
                });
            }
        }
    }
    let releases = file
        .releases
        .iter()
        .map(|(name, r)| (Some(name), r))
        .chain(file.default_release.iter().map(|r| (None, r)));
    for (name, spec) in releases {
        let target = name.and_then(|n| live.id_of(n));
        let current = match name {
            Some(_) if target.is_none() => None,
            _ => live.releases.get(&target),
        };
        let stages = spec.stages().unwrap_or_default();
        if current.is_some_and(|c| same_release(c, spec, &stages)) {
            continue;
        }
        out.push(Change::Release {
            group: name.cloned(),
            version: spec.version.trim().to_string(),
            stages,
            failure: spec.failure.clone(),
            halt: spec.halt.clone(),
            soak_seconds: spec.soak_seconds,
        });
    }
    Ok(out)
}

/// A live group's name by id.
fn name_of(live: &Live, id: Uuid) -> Option<String> {
    live.groups
        .iter()
        .find(|(_, g)| g.id == id)
        .map(|(name, _)| name.clone())
}

/// Whether the live release is the one the file asks for: the same version, stages and watch, active.
/// (A live release at a later stage than its first is still the same release.)
fn same_release(live: &LiveRelease, spec: &ReleaseSpec, stages: &[u16]) -> bool {
    crate::firmware::same_version(&live.version, &spec.version)
        && live.stages == stages
        && live.failure == spec.failure
        && live.halt == spec.halt
        && live.soak_seconds == spec.soak_seconds
        && live.state != ReleaseState::RolledBack
}
