//! Applying a plan: the plan is made again from its file against the live state, with the same ids for
//! the groups it creates; when its digest differs the live state moved, and nothing is applied. Otherwise
//! each change is made, in order, through the same store functions the API uses (the membership log's
//! cause names the actor; releases go through the one release decision). The plan is the confirmation an
//! org's retarget cap asks for: its review showed the retargets, and its digest binds them.

use std::collections::BTreeMap;

use sqlx::PgPool;
use uuid::Uuid;

use super::{plan_against, planned_ids, Change, Plan, PlanError};
use crate::rules::Catalogue;
use crate::store::firmware::{self, Health, Mode, Proposal, ReleaseTarget};
use crate::store::groups::{self, GroupKind, GroupPatch, NewGroup};
use crate::store::members;
use crate::store::retarget_cap::Confirmation;

/// Applies `saved` if the live state is still the one it was made against. Returns the changes made.
pub async fn apply(
    pool: &PgPool,
    catalogue: &Catalogue,
    saved: &Plan,
    actor: &str,
) -> Result<usize, PlanError> {
    let (again, live) = plan_against(pool, catalogue, &saved.file, &planned_ids(saved)).await?;
    if again.digest != saved.digest {
        return Err(PlanError::Stale);
    }
    let org = saved.file.org.as_str();
    let mut ids: BTreeMap<String, Uuid> = live
        .groups
        .into_iter()
        .map(|(name, g)| (name, g.id))
        .collect();
    let id_of = |ids: &BTreeMap<String, Uuid>, name: &str| -> Result<Uuid, PlanError> {
        ids.get(name)
            .copied()
            .ok_or_else(|| PlanError::Refused(format!("no group named {name:?}")))
    };
    for change in &saved.changes {
        match change {
            Change::CreateGroup {
                name,
                id,
                filter,
                parent,
            } => {
                let parent_id = parent.as_deref().map(|p| id_of(&ids, p)).transpose()?;
                let group = NewGroup {
                    org_id: org.to_string(),
                    name: name.clone(),
                    filter: filter.clone(),
                    parent_id,
                    id: Some(*id),
                    ..NewGroup::default()
                };
                groups::create_group(pool, catalogue, &group)
                    .await
                    .map_err(|e| PlanError::Refused(format!("create group {name}: {e:?}")))?;
                ids.insert(name.clone(), *id);
            }
            Change::UpdateGroup {
                name,
                id,
                filter,
                to_static,
                parent,
            } => {
                let parent_id = match parent {
                    Some(Some(p)) => Some(Some(id_of(&ids, p)?)),
                    Some(None) => Some(None),
                    None => None,
                };
                let kind = match (filter.is_some(), to_static) {
                    (_, true) => Some(GroupKind::Static),
                    (true, false) => Some(GroupKind::Dynamic),
                    _ => None,
                };
                let patch = GroupPatch {
                    filter: filter.clone(),
                    kind,
                    parent_id,
                    actor: Some(actor.to_string()),
                    ..GroupPatch::default()
                };
                groups::update_group(pool, catalogue, *id, &patch)
                    .await
                    .map_err(|e| PlanError::Refused(format!("update group {name}: {e:?}")))?;
            }
            Change::AddMembers { group, devices } | Change::RemoveMembers { group, devices } => {
                let id = id_of(&ids, group)?;
                let adding = matches!(change, Change::AddMembers { .. });
                let done = if adding {
                    members::add_static(pool, org, id, devices, actor).await
                } else {
                    members::remove_static(pool, org, id, devices, actor).await
                };
                done.map_err(|e| PlanError::Refused(format!("static members of {group}: {e:?}")))?;
            }
            Change::Release {
                group,
                version,
                stages,
                failure,
                halt,
                soak_seconds,
            } => {
                let target = match group {
                    Some(name) => ReleaseTarget::Group(id_of(&ids, name)?),
                    None => ReleaseTarget::Default,
                };
                let proposal = Proposal::Release {
                    target,
                    version: version.clone(),
                    stages: stages.clone(),
                    health: Health {
                        failure: failure.clone(),
                        halt: halt.clone(),
                        soak_seconds: *soak_seconds,
                    },
                };
                let refused = |e: firmware::ReleaseError| {
                    PlanError::Refused(format!("release {version}: {e}"))
                };
                // The plan is the confirmation the org's retarget cap asks for: its review showed these
                // retargets, and its digest, checked above, binds them. The dry run's token carries that
                // into the release's own decision, which still refuses anything else.
                let dry = firmware::apply(pool, org, &proposal, actor, 0, Mode::DryRun)
                    .await
                    .map_err(refused)?;
                let confirmation = Confirmation::with(dry.confirmation_token);
                firmware::apply_counting(
                    pool,
                    org,
                    &proposal,
                    actor,
                    0,
                    Mode::Write,
                    None,
                    &confirmation,
                )
                .await
                .map_err(refused)?;
            }
        }
    }
    Ok(saved.changes.len())
}
