//! What a plan's changes do to the org's devices: which join and leave each group, and whose resolved
//! firmware version changes — computed with the workers' own evaluator and resolution over every device of
//! the org as stored, the whole plan at once (a release to a group the plan creates counts the devices
//! the group will hold).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::diff::Change;
use super::live::{self, Live, LiveDevice};
use crate::firmware::{resolve, DeviceFacts, GroupRelease, Staging, Version};
use crate::rules::{compile, AttrValue, Attributes, Catalogue, CompiledFilter};
use crate::store::firmware::stage_share;
use crate::store::StoreError;

/// Devices that join and leave one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMoves {
    pub joins: Vec<String>,
    pub leaves: Vec<String>,
}

/// A device whose resolved firmware version changes (one rollout-target event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retarget {
    pub device: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A group whose members a plan re-evaluates: its filter and site.
struct Evaluated {
    filter: CompiledFilter,
    site: Option<String>,
}

/// The moves of every group a change touches (by name) and every retarget, in device order.
pub async fn impact(
    pool: &PgPool,
    org: &str,
    catalogue: &Catalogue,
    live: &Live,
    changes: &[Change],
) -> Result<(BTreeMap<String, GroupMoves>, Vec<Retarget>), StoreError> {
    let mut ids: HashMap<&str, Uuid> = live
        .groups
        .iter()
        .map(|(n, g)| (n.as_str(), g.id))
        .collect();
    let mut evaluated: Vec<(Uuid, Evaluated)> = Vec::new();
    let mut adds: HashMap<Uuid, BTreeSet<&str>> = HashMap::new();
    let mut removes: HashMap<Uuid, BTreeSet<&str>> = HashMap::new();
    let (before_groups, before_default) = releases(live);
    let (mut after_groups, mut after_default) = (before_groups.clone(), before_default.clone());
    let mut moves: BTreeMap<String, GroupMoves> = BTreeMap::new();
    let mut names: HashMap<Uuid, &str> = HashMap::new();
    for change in changes {
        match change {
            Change::CreateGroup {
                name, id, filter, ..
            } => {
                ids.insert(name, *id);
                names.insert(*id, name);
                if let Some(filter) = filter.as_ref().and_then(|f| compile(f, catalogue).ok()) {
                    evaluated.push((*id, Evaluated { filter, site: None }));
                }
                moves.entry(name.clone()).or_default();
            }
            Change::UpdateGroup {
                name, id, filter, ..
            } => {
                names.insert(*id, name);
                if let Some(filter) = filter.as_ref().and_then(|f| compile(f, catalogue).ok()) {
                    let site = live.groups.get(name).and_then(|g| g.site.clone());
                    evaluated.push((*id, Evaluated { filter, site }));
                }
                moves.entry(name.clone()).or_default();
            }
            Change::AddMembers { group, devices } | Change::RemoveMembers { group, devices } => {
                let Some(id) = ids.get(group.as_str()).copied() else {
                    continue;
                };
                names.insert(id, group);
                let set = match change {
                    Change::AddMembers { .. } => adds.entry(id).or_default(),
                    _ => removes.entry(id).or_default(),
                };
                set.extend(devices.iter().map(String::as_str));
                moves.entry(group.clone()).or_default();
            }
            Change::Release {
                group,
                version,
                stages,
                ..
            } => {
                let Ok(parsed) = Version::parse(version) else {
                    continue;
                };
                let target = match group {
                    Some(name) => match ids.get(name.as_str()) {
                        Some(id) => Some(*id),
                        None => continue,
                    },
                    None => None,
                };
                let release = GroupRelease::proposed(
                    target.unwrap_or(Uuid::nil()),
                    parsed,
                    version.as_str().into(),
                    stage_share(stages, 0),
                );
                match target {
                    Some(id) => {
                        after_groups.insert(id, release);
                    }
                    None => after_default = Some(release),
                }
            }
        }
    }
    let site_field = catalogue.lookup("siteId");
    let now = chrono::Utc::now().timestamp_millis();
    let mut retargets = Vec::new();
    live::for_each_device(pool, org, |device: LiveDevice| {
        let doc = device.attributes.as_object().cloned().unwrap_or_default();
        let attrs = Attributes::from_stored_json(&doc, catalogue, |_, _| {});
        let site = site_field.and_then(|f| match attrs.get(f) {
            Some(AttrValue::Str(s)) => Some(s.to_string()),
            _ => None,
        });
        let mut after = device.groups.clone();
        for (id, group) in &evaluated {
            let in_site = group.site.is_none() || group.site == site;
            let matches = in_site && group.filter.evaluate(&attrs, now);
            let pinned = device.groups.get(id).copied().unwrap_or(false);
            if matches || pinned && device.groups.contains_key(id) {
                after.entry(*id).or_insert(false);
            } else {
                after.remove(id);
            }
        }
        for (id, set) in &adds {
            if set.contains(device.id.as_str()) {
                after.entry(*id).or_insert(false);
            }
        }
        for (id, set) in &removes {
            if set.contains(device.id.as_str()) {
                after.remove(id);
            }
        }
        for id in device.groups.keys().chain(after.keys()) {
            let (was, is) = (device.groups.contains_key(id), after.contains_key(id));
            if was == is {
                continue;
            }
            let Some(name) = names.get(id) else {
                continue;
            };
            let entry = moves.entry(name.to_string()).or_default();
            if is {
                entry.joins.push(device.id.clone());
            } else {
                entry.leaves.push(device.id.clone());
            }
        }
        let facts = DeviceFacts {
            id: &device.id,
            development: device.development,
            lock: device.lock.as_deref(),
            current: device.current,
        };
        let from = resolve(
            &facts,
            device.groups.keys().filter_map(|g| before_groups.get(g)),
            before_default.as_ref(),
        );
        let to = resolve(
            &facts,
            after.keys().filter_map(|g| after_groups.get(g)),
            after_default.as_ref(),
        );
        if from.is_rollout_change(&to) {
            retargets.push(Retarget {
                device: device.id.clone(),
                from: from.version.map(|v| v.to_string()),
                to: to.version.map(|v| v.to_string()),
            });
        }
    })
    .await?;
    for m in moves.values_mut() {
        m.joins.sort();
        m.leaves.sort();
    }
    Ok((moves, retargets))
}

/// The org's live releases as resolution reads them: by group, and the default.
fn releases(live: &Live) -> (HashMap<Uuid, GroupRelease>, Option<GroupRelease>) {
    let mut groups = HashMap::new();
    let mut default = None;
    for (target, r) in &live.releases {
        let Ok(version) = Version::parse(&r.version) else {
            continue;
        };
        let release = GroupRelease {
            group: target.unwrap_or(Uuid::nil()),
            version,
            label: r.version.as_str().into(),
            staging: Staging {
                release: r.id,
                stage: r.stage,
                share: stage_share(&r.stages, r.stage),
                state: r.state,
            },
        };
        match target {
            Some(g) => {
                groups.insert(*g, release);
            }
            None => default = Some(release),
        }
    }
    (groups, default)
}
