//! `cohort plan` and `cohort apply`: an org's groups and releases kept in a file ([`file`](mod@file)), compared with
//! its live state ([`live`]) into the changes that would make it so ([`diff`]), each with its membership
//! and firmware impact ([`impact`]: which devices join and leave each group, whose resolved version
//! changes); then applied exactly as planned ([`apply`]).
//!
//! A plan is a function of the file and the live state (groups, static members, releases and devices).
//! It carries a digest of what it found; `apply` computes the plan again, with the same ids for the groups
//! it creates, and refuses when the digest differs: the live state moved since the plan was made.

pub mod apply;
pub mod command;
pub mod diff;
pub mod file;
pub mod impact;
pub mod live;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

pub use self::diff::Change;
pub use self::file::FleetFile;
pub use self::impact::{GroupMoves, Retarget};
use crate::rules::Catalogue;

/// What applying a fleet file would change, and its impact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The file planned.
    pub file: FleetFile,
    /// The changes, in the order they are applied.
    pub changes: Vec<Change>,
    /// Devices joining and leaving each group a change touches, by group name.
    pub moves: BTreeMap<String, GroupMoves>,
    /// Devices whose resolved firmware version changes (one rollout-target event each).
    pub retargets: Vec<Retarget>,
    /// SHA-256 of the live definitions and releases it was made against, the changes and their impact:
    /// what `apply` checks the live state against.
    pub digest: String,
}

/// Why a plan cannot be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the file has problems:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    #[error("org {0} does not exist")]
    NoOrg(String),
    #[error("the live state moved since the plan was made (its changes or their impact differ now): make the plan again")]
    Stale,
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Plans `file` against the org's live state. Groups it creates get the ids in `planned` (by name), or
/// new ones.
pub async fn plan(
    pool: &PgPool,
    catalogue: &Catalogue,
    file: &FleetFile,
    planned: &BTreeMap<String, Uuid>,
) -> Result<Plan, PlanError> {
    Ok(plan_against(pool, catalogue, file, planned).await?.0)
}

/// [`plan`], with the live state it was made against.
async fn plan_against(
    pool: &PgPool,
    catalogue: &Catalogue,
    file: &FleetFile,
    planned: &BTreeMap<String, Uuid>,
) -> Result<(Plan, live::Live), PlanError> {
    let problems = file.check(catalogue);
    if !problems.is_empty() {
        return Err(PlanError::Invalid(problems));
    }
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1::int8 FROM orgs WHERE id = $1")
        .bind(&file.org)
        .fetch_optional(pool)
        .await
        .map_err(crate::store::StoreError::from)?;
    if exists.is_none() {
        return Err(PlanError::NoOrg(file.org.clone()));
    }
    let live = live::read(pool, &file.org).await?;
    let mut problems = Vec::new();
    for (name, group) in &file.groups {
        if let Some(parent) = &group.parent {
            if !file.groups.contains_key(parent) && !live.groups.contains_key(parent) {
                problems.push(format!("groups.{name}.parent: no group named {parent:?}"));
            }
        }
    }
    for name in file.releases.keys() {
        if !file.groups.contains_key(name) && !live.groups.contains_key(name) {
            problems.push(format!("releases.{name}: no group named {name:?}"));
        }
    }
    if !problems.is_empty() {
        return Err(PlanError::Invalid(problems));
    }
    let changes = diff::changes(pool, file, &live, planned).await?;
    let (moves, retargets) = impact::impact(pool, &file.org, catalogue, &live, &changes).await?;
    let digest = digest(&live, &changes, &moves, &retargets);
    let plan = Plan {
        file: file.clone(),
        changes,
        moves,
        retargets,
        digest,
    };
    Ok((plan, live))
}

/// The ids a plan gives the groups it creates, by name.
pub fn planned_ids(plan: &Plan) -> BTreeMap<String, Uuid> {
    plan.changes
        .iter()
        .filter_map(|c| match c {
            Change::CreateGroup { name, id, .. } => Some((name.clone(), *id)),
            _ => None,
        })
        .collect()
}

/// SHA-256 of the live definitions and releases the plan was made against, its changes and their impact.
fn digest(
    live: &live::Live,
    changes: &[Change],
    moves: &BTreeMap<String, GroupMoves>,
    retargets: &[Retarget],
) -> String {
    // Serializing plain data cannot fail; the live state's debug form lists its maps in key order.
    let text = serde_json::to_string(&(changes, moves, retargets)).unwrap_or_default();
    let mut hash = Sha256::new();
    hash.update(format!("{live:?}").as_bytes());
    hash.update(text.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Devices listed per group or retarget list in the printed plan (the JSON plan lists them all).
const LISTED: usize = 20;

/// The plan for a person: each change, each group's joins and leaves, the retargets by transition.
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "plan for org {}: {} change(s)\n",
        plan.file.org,
        plan.changes.len()
    );
    if plan.changes.is_empty() {
        out.push_str("nothing to do: the live state is what the file says\n");
        return out;
    }
    for change in &plan.changes {
        let line = match change {
            Change::CreateGroup {
                name,
                filter,
                parent,
                ..
            } => format!(
                "+ create {} group {name}{}",
                if filter.is_some() {
                    "dynamic"
                } else {
                    "static"
                },
                parent
                    .as_ref()
                    .map(|p| format!(" under {p}"))
                    .unwrap_or_default()
            ),
            Change::UpdateGroup {
                name,
                filter,
                to_static,
                parent,
                ..
            } => {
                let mut what = Vec::new();
                if filter.is_some() {
                    what.push("filter".to_string());
                }
                if *to_static {
                    what.push("type static".to_string());
                }
                if let Some(parent) = parent {
                    what.push(format!("parent {}", parent.as_deref().unwrap_or("none")));
                }
                format!("~ update group {name}: {}", what.join(", "))
            }
            Change::AddMembers { group, devices } => {
                format!("+ add {} device(s) to {group}", devices.len())
            }
            Change::RemoveMembers { group, devices } => {
                format!("- remove {} device(s) from {group}", devices.len())
            }
            Change::Release {
                group,
                version,
                stages,
                ..
            } => format!(
                "~ release {version} to {} in {} stage(s)",
                group.as_deref().unwrap_or("the org default"),
                stages.len()
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    for (name, m) in &plan.moves {
        out.push_str(&format!(
            "group {name}: {} join, {} leave\n",
            m.joins.len(),
            m.leaves.len()
        ));
        for (sign, list) in [("+", &m.joins), ("-", &m.leaves)] {
            for device in list.iter().take(LISTED) {
                out.push_str(&format!("  {sign} {device}\n"));
            }
            if list.len() > LISTED {
                out.push_str(&format!("  {sign} … and {} more\n", list.len() - LISTED));
            }
        }
    }
    let mut transitions: BTreeMap<String, usize> = BTreeMap::new();
    for r in &plan.retargets {
        let label = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        *transitions
            .entry(format!("{} -> {}", label(&r.from), label(&r.to)))
            .or_default() += 1;
    }
    out.push_str(&format!(
        "firmware: {} device(s) retargeted (one rollout-target event each)\n",
        plan.retargets.len()
    ));
    for (transition, n) in &transitions {
        out.push_str(&format!("  {transition}: {n}\n"));
    }
    for r in plan.retargets.iter().take(LISTED) {
        out.push_str(&format!("  {} {:?} -> {:?}\n", r.device, r.from, r.to));
    }
    out.push_str(&format!("digest {}\n", plan.digest));
    out
}
