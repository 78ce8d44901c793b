//! Operator actions, through the store functions the REST API calls (`cohort::store::{groups, members,
//! firmware}`), each recorded in the [`Model`] only once the call has committed.

use anyhow::Context as _;
use cohort::firmware::progress::{FailureSignal, Thresholds};
use cohort::rules::Catalogue;
use cohort::store::control::LockChange;
use cohort::store::firmware::{self, Health, Mode, Proposal, ReleaseError, ReleaseTarget};
use cohort::store::groups::{self, NewGroup};
use cohort::store::members::{self, MemberError};
use cohort_testkit::Rng;
use sqlx::PgPool;

use super::model::{random_filter, Model, SettingsBy, ORG, VERSIONS};

/// Most live dynamic groups; creations beyond this are skipped.
const MAX_DYNAMIC_GROUPS: usize = 30;
/// Fewest live dynamic groups; deletions below this are skipped.
const MIN_DYNAMIC_GROUPS: usize = 10;
/// Static groups made at the start.
pub const STATIC_GROUPS: usize = 2;

/// Creates the starting groups: `dynamic` dynamic ones and the static ones.
pub async fn setup(
    pool: &PgPool,
    catalogue: &Catalogue,
    model: &mut Model,
    rng: &mut Rng,
    dynamic: usize,
) -> anyhow::Result<()> {
    for _ in 0..dynamic {
        create_dynamic(pool, catalogue, model, rng).await?;
    }
    for _ in 0..STATIC_GROUPS {
        let group = NewGroup {
            org_id: ORG.into(),
            name: model.group_name("static"),
            ..Default::default()
        };
        let created = groups::create_group(pool, catalogue, &group).await?;
        model.statics.insert(created.group_id, Default::default());
    }
    Ok(())
}

async fn create_dynamic(
    pool: &PgPool,
    catalogue: &Catalogue,
    model: &mut Model,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let group = NewGroup {
        org_id: ORG.into(),
        name: model.group_name("dynamic"),
        filter: Some(random_filter(rng)),
        ..Default::default()
    };
    let created = groups::create_group(pool, catalogue, &group)
        .await
        .context("failed to create a dynamic group")?;
    model.dynamic.insert(created.group_id);
    model.counts.groups_created += 1;
    Ok(())
}

fn pick_set<T: Clone>(rng: &mut Rng, items: impl IntoIterator<Item = T>) -> Option<T> {
    let items: Vec<T> = items.into_iter().collect();
    (!items.is_empty()).then(|| rng.pick(&items).clone())
}

/// A device the worker has stored (pins and settings only apply to devices a worker holds).
async fn stored_device(
    pool: &PgPool,
    rng: &mut Rng,
    model: &Model,
) -> anyhow::Result<Option<String>> {
    let id = Model::device_id(rng.below(model.devices.len() as u64) as usize);
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM devices WHERE id = $1")
        .bind(&id)
        .fetch_optional(pool)
        .await?;
    Ok(exists.map(|_| id))
}

/// One random operator action.
pub async fn random_action(
    pool: &PgPool,
    catalogue: &Catalogue,
    model: &mut Model,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let actor = format!("crash-op-{}", rng.next_u64());
    match rng.below(14) {
        0 if model.dynamic.len() < MAX_DYNAMIC_GROUPS => {
            create_dynamic(pool, catalogue, model, rng).await?;
        }
        1 | 2 => {
            if let Some(group) = pick_set(rng, model.dynamic.iter().copied()) {
                groups::update_filter(pool, catalogue, group, &random_filter(rng))
                    .await
                    .context("failed to change a filter")?;
                model.counts.filters_changed += 1;
            }
        }
        3 if model.dynamic.len() > MIN_DYNAMIC_GROUPS => {
            if let Some(group) = pick_set(rng, model.dynamic.iter().copied()) {
                groups::delete_group(pool, group)
                    .await
                    .context("failed to delete a group")?;
                model.dynamic.remove(&group);
                model.pins.retain(|(g, _)| *g != group);
                model.releases.remove(&Some(group));
                model.counts.groups_deleted += 1;
            }
        }
        4..=6 => {
            let group = pick_set(rng, model.dynamic.iter().copied());
            if let (Some(group), Some(device)) = (group, stored_device(pool, rng, model).await?) {
                groups::set_pin(pool, group, &device, true, &actor)
                    .await
                    .context("failed to pin")?;
                model.pins.insert((group, device));
                model.counts.pins += 1;
            }
        }
        7 => {
            if let Some((group, device)) = pick_set(rng, model.pins.iter().cloned()) {
                groups::set_pin(pool, group, &device, false, &actor)
                    .await
                    .context("failed to unpin")?;
                model.pins.remove(&(group, device));
                model.counts.unpins += 1;
            }
        }
        8 => {
            let Some(group) = pick_set(rng, model.statics.keys().copied()) else {
                return Ok(());
            };
            if rng.chance(60) {
                let ids: Vec<String> = (0..1 + rng.below(20))
                    .map(|_| Model::device_id(rng.below(model.devices.len() as u64) as usize))
                    .collect();
                let change = members::add_static(pool, ORG, group, &ids, &actor)
                    .await
                    .context("failed to add static members")?;
                model
                    .statics
                    .entry(group)
                    .or_default()
                    .extend(change.changed);
                model.counts.static_adds += 1;
            } else {
                let current: Vec<String> = model.statics[&group].iter().cloned().collect();
                let ids: Vec<String> = current.into_iter().filter(|_| rng.chance(30)).collect();
                let change = members::remove_static(pool, ORG, group, &ids, &actor)
                    .await
                    .context("failed to remove static members")?;
                let members = model.statics.entry(group).or_default();
                for id in &change.changed {
                    members.remove(id);
                }
                model.counts.static_removes += 1;
            }
        }
        9 => {
            let groups = model.dynamic.iter().chain(model.statics.keys()).copied();
            if let Some(group) = pick_set(rng, groups) {
                let version = *rng.pick(VERSIONS);
                // Half the group releases are staged: a quarter of the group, then all of it. Half
                // count devices reporting maintenance as failed and halt after a few (a third of those
                // rolling back).
                let staged = rng.chance(50);
                let watched = rng.chance(50);
                let health = if watched {
                    Health {
                        failure: Some(FailureSignal {
                            attribute: "status".into(),
                            value: serde_json::json!("maintenance"),
                        }),
                        halt: Some(Thresholds {
                            failures: Some(2 + rng.below(10)),
                            rollback: rng.chance(33),
                            ..Thresholds::default()
                        }),
                        soak_seconds: None,
                    }
                } else {
                    Health::default()
                };
                let release = Proposal::Release {
                    health,
                    target: ReleaseTarget::Group(group),
                    version: version.to_string(),
                    stages: if staged {
                        vec![2_500, 10_000]
                    } else {
                        vec![10_000]
                    },
                };
                let applied = firmware::apply(pool, ORG, &release, &actor, 0, Mode::Write)
                    .await
                    .context("failed to release to a group")?;
                let id = applied.release.context("a release written")?.id;
                model.releases.insert(Some(group), id);
                model.counts.releases += 1;
                model.counts.staged_releases += u64::from(staged);
                model.counts.watched_releases += u64::from(watched);
            }
        }
        10 => {
            let version = *rng.pick(VERSIONS);
            match firmware::release(pool, ORG, ReleaseTarget::Default, version, &actor).await {
                Ok(release) => {
                    model.releases.insert(None, release.id);
                    model.counts.default_releases += 1;
                }
                // Refused while no device reports running the version: nothing changed.
                Err(ReleaseError::NoDeviceRunsIt(_)) => {}
                Err(e) => return Err(e).context("failed to release a default"),
            }
        }
        11 => {
            if let Some((target, id)) = pick_set(rng, model.releases.clone()) {
                // A staged release short of its last stage advances; any other is withdrawn.
                let advance = Proposal::Advance {
                    release: id,
                    stage: None,
                };
                match firmware::apply(pool, ORG, &advance, &actor, 0, Mode::Write).await {
                    Ok(_) => model.counts.advances += 1,
                    // Halted (paused or rolled back): half are resumed.
                    Err(ReleaseError::State(_)) if rng.chance(50) => {
                        let resume = Proposal::Resume { release: id };
                        firmware::apply(pool, ORG, &resume, &actor, 0, Mode::Write)
                            .await
                            .context("failed to resume a release")?;
                        model.counts.resumes += 1;
                    }
                    Err(ReleaseError::Stage(_) | ReleaseError::State(_)) => {
                        firmware::withdraw(pool, id)
                            .await
                            .context("failed to withdraw a release")?;
                        model.releases.remove(&target);
                        model.counts.withdrawals += 1;
                    }
                    Err(e) => return Err(e).context("failed to advance a release"),
                }
            }
        }
        _ => {
            // A device whose settings only the API changes (see `Model::settings_by`).
            let index = 5 * rng.below(model.devices.len().div_ceil(5) as u64) as usize + 1;
            if index >= model.devices.len() || Model::settings_by(index) != SettingsBy::Api {
                return Ok(());
            }
            let development = rng.chance(50).then(|| rng.chance(30));
            let lock = match rng.below(3) {
                0 => LockChange::Unchanged,
                1 => LockChange::Clear,
                _ => LockChange::Set(rng.pick(VERSIONS).to_string()),
            };
            let id = Model::device_id(index);
            match members::set_device_settings(pool, ORG, &id, development, lock.clone(), &actor)
                .await
            {
                Ok(_) => {
                    let device = &mut model.devices[index];
                    if let Some(development) = development {
                        device.development = development;
                    }
                    match lock {
                        LockChange::Unchanged => {}
                        LockChange::Clear => device.lock = None,
                        LockChange::Set(version) => device.lock = Some(version),
                    }
                    model.counts.settings += 1;
                }
                // Not stored yet (no event of it applied): refused, nothing changed.
                Err(MemberError::DeviceNotFound) => {}
                Err(e) => return Err(e).context("failed to change device settings"),
            }
        }
    }
    Ok(())
}

/// Unpins every pinned membership (before the from-scratch oracle, which compares unpinned memberships).
pub async fn unpin_all(pool: &PgPool, model: &mut Model) -> anyhow::Result<()> {
    for (group, device) in std::mem::take(&mut model.pins) {
        groups::set_pin(pool, group, &device, false, "crash-suite-final-unpin")
            .await
            .context("failed to unpin")?;
    }
    Ok(())
}
