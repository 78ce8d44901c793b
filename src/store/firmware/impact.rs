//! What an admitted release or withdrawal does: whose resolved firmware changes, and which of those devices
//! will download firmware because their new target is not the version they report running.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;

use sqlx::PgConnection;
use uuid::Uuid;

use super::{stage_share, Admitted, Change, ReleaseError, ReleaseTarget};
use crate::firmware::{resolve, DeviceFacts, GroupRelease, ReleaseState, Staging, Target, Version};

mod moves;

pub use moves::{batch_impact, definition_impact, NewDefinition};

/// One device whose target would change.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceImpact {
    pub device_id: String,
    pub from: Target,
    pub to: Target,
    /// The version the device reports running (its `firmwareVersion`), `None` if it reports none.
    pub running: Option<String>,
    /// Whether it would download firmware: its new target is a version it does not report running.
    pub impacted: bool,
}

/// What a proposal would do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    /// Devices examined (the group's members, or the org's devices for the default).
    pub examined: usize,
    /// Devices whose resolved version would change (each would get one rollout-target event).
    pub changed: usize,
    /// Of the changed devices, those that would download firmware: their new target is a version they do
    /// not report running (a device that reports none counts). A device moving to no target is not.
    pub impacted: usize,
    /// Changed devices by (from target, to target), "none" for no target.
    pub transitions: BTreeMap<String, usize>,
    /// Impacted devices by (version reported running, new target), "unreported" for none.
    pub downloads: BTreeMap<String, usize>,
    /// Up to `sample` of the changing devices, by id.
    pub sample: Vec<DeviceImpact>,
}

impl Impact {
    /// Nothing counted yet, of `examined` devices.
    pub fn new(examined: usize) -> Self {
        Self {
            examined,
            changed: 0,
            impacted: 0,
            transitions: BTreeMap::new(),
            downloads: BTreeMap::new(),
            sample: Vec::new(),
        }
    }

    /// Adds what `other` counted (of other devices), keeping the `sample` smallest ids of both.
    pub fn merge(&mut self, other: Impact, sample: usize) {
        self.examined += other.examined;
        self.changed += other.changed;
        self.impacted += other.impacted;
        for (key, n) in other.transitions {
            *self.transitions.entry(key).or_default() += n;
        }
        for (key, n) in other.downloads {
            *self.downloads.entry(key).or_default() += n;
        }
        self.sample.extend(other.sample);
        self.sample.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        self.sample.truncate(sample);
    }

    /// Counts one examined device, reporting `running` (its `firmwareVersion`), whose target would move
    /// from `from` to `to`; listed if it changes and fewer than `sample` are.
    pub fn count(
        &mut self,
        device_id: &str,
        running: Option<&str>,
        from: Target,
        to: Target,
        sample: usize,
    ) {
        if !from.is_rollout_change(&to) {
            return;
        }
        let running = running.map(str::trim).filter(|r| !r.is_empty());
        self.changed += 1;
        let label = |t: &Target| t.version.as_deref().unwrap_or("none").to_string();
        *self
            .transitions
            .entry(format!("{} -> {}", label(&from), label(&to)))
            .or_default() += 1;
        let impacted = to.downloads_on(running);
        if impacted {
            self.impacted += 1;
            *self
                .downloads
                .entry(format!(
                    "{} -> {}",
                    running.unwrap_or("unreported"),
                    label(&to)
                ))
                .or_default() += 1;
        }
        // The `sample` smallest ids, kept in order, whatever order devices are counted in.
        let at = self
            .sample
            .partition_point(|s| s.device_id.as_str() < device_id);
        if at < sample {
            self.sample.insert(
                at,
                DeviceImpact {
                    device_id: device_id.to_string(),
                    from,
                    to,
                    running: running.map(str::to_string),
                    impacted,
                },
            );
            self.sample.truncate(sample);
        }
    }
}

/// An org's releases before and after a change: what each device resolves to on either side.
#[derive(Clone, Debug, Default)]
pub struct Releases {
    before_groups: HashMap<Uuid, GroupRelease>,
    before_default: Option<GroupRelease>,
    after_groups: HashMap<Uuid, GroupRelease>,
    after_default: Option<GroupRelease>,
}

/// [`Releases`] as a worker is sent them to count its devices: each side's group releases and default, as
/// released.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasesWire {
    pub before: ReleaseSide,
    pub after: ReleaseSide,
}

/// One side of [`ReleasesWire`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSide {
    /// Each group's live release.
    pub groups: BTreeMap<Uuid, WireRelease>,
    /// The org's default release.
    #[serde(default)]
    pub default: Option<WireRelease>,
}

/// A release in [`ReleaseSide`]: its version, its stage's share of the target (basis points), its id
/// (nil for one not yet written) and its state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRelease {
    pub version: String,
    pub share: u16,
    #[serde(default)]
    pub release: Uuid,
    #[serde(default)]
    pub state: ReleaseState,
}

/// A release as resolution reads it; `None` for a version that does not parse (as from the database).
fn as_release(group: Uuid, version: &str, staging: Staging) -> Option<GroupRelease> {
    Version::parse(version).ok().map(|v| GroupRelease {
        group,
        version: v,
        label: version.into(),
        staging,
    })
}

impl WireRelease {
    fn of(release: &GroupRelease) -> Self {
        Self {
            version: release.label.to_string(),
            share: release.staging.share,
            release: release.staging.release,
            state: release.staging.state,
        }
    }

    fn release(&self, group: Uuid) -> Option<GroupRelease> {
        let staging = Staging {
            release: self.release,
            share: self.share,
            state: self.state,
            ..Staging::WHOLE
        };
        as_release(group, &self.version, staging)
    }
}

impl ReleaseSide {
    fn of(groups: &HashMap<Uuid, GroupRelease>, default: &Option<GroupRelease>) -> Self {
        Self {
            groups: groups
                .iter()
                .map(|(g, r)| (*g, WireRelease::of(r)))
                .collect(),
            default: default.as_ref().map(WireRelease::of),
        }
    }

    fn releases(&self) -> (HashMap<Uuid, GroupRelease>, Option<GroupRelease>) {
        let groups = self
            .groups
            .iter()
            .filter_map(|(g, r)| Some((*g, r.release(*g)?)))
            .collect();
        let default = self.default.as_ref().and_then(|r| r.release(Uuid::nil()));
        (groups, default)
    }
}

impl Releases {
    /// As sent to a worker.
    pub fn to_wire(&self) -> ReleasesWire {
        ReleasesWire {
            before: ReleaseSide::of(&self.before_groups, &self.before_default),
            after: ReleaseSide::of(&self.after_groups, &self.after_default),
        }
    }

    /// As a worker received them.
    pub fn from_wire(wire: &ReleasesWire) -> Self {
        let (before_groups, before_default) = wire.before.releases();
        let (after_groups, after_default) = wire.after.releases();
        Self {
            before_groups,
            before_default,
            after_groups,
            after_default,
        }
    }

    /// Counts one device: its development flag, lock, reported version and groups.
    pub fn count(&self, impact: &mut Impact, device: Facts<'_>, member_of: &[Uuid], sample: usize) {
        self.count_moved(impact, device, member_of, member_of, sample);
    }

    /// Counts one device whose groups change too: `before` the change and `after` it.
    fn count_moved(
        &self,
        impact: &mut Impact,
        device: Facts<'_>,
        before: &[Uuid],
        after: &[Uuid],
        sample: usize,
    ) {
        let facts = DeviceFacts {
            id: device.id,
            development: device.development,
            lock: device.lock,
            current: device.current,
        };
        let from = resolve(
            &facts,
            before.iter().filter_map(|g| self.before_groups.get(g)),
            self.before_default.as_ref(),
        );
        let to = resolve(
            &facts,
            after.iter().filter_map(|g| self.after_groups.get(g)),
            self.after_default.as_ref(),
        );
        impact.examined += 1;
        impact.count(device.id, device.running, from, to, sample);
    }
}

/// What the impact reads of a device besides its groups.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub id: &'a str,
    pub development: bool,
    pub lock: Option<&'a str>,
    /// Its reported `firmwareVersion`.
    pub running: Option<&'a str>,
    /// The release that targets it now (a paused release keeps only the devices it targets).
    pub current: Option<Uuid>,
}

/// What [`HeldDevices::count`] returns: the partitions still to be read from PostgreSQL, or `None`.
pub type Counting<'a> = Pin<Box<dyn Future<Output = Option<Vec<i32>>> + Send + 'a>>;

/// Devices held in memory (by the worker in the same process, and by its peers), counted there instead of
/// read from PostgreSQL.
pub trait HeldDevices: Sync {
    /// Counts the devices held that the change can affect — of `target`'s group, or of the whole org for
    /// the default — into `impact`. Returns the partitions still to be read from PostgreSQL (those no
    /// worker counted), or `None` if it counted nothing (read every partition).
    fn count<'a>(
        &'a self,
        org_id: &'a str,
        target: ReleaseTarget,
        releases: &'a Releases,
        impact: &'a mut Impact,
        sample: usize,
    ) -> Counting<'a>;
}

/// The org's live releases (of live groups, and its default), as resolution reads them.
async fn current_releases(
    conn: &mut PgConnection,
    org_id: &str,
) -> Result<(HashMap<Uuid, GroupRelease>, Option<GroupRelease>), sqlx::Error> {
    let rows = super::org_live_releases(&mut *conn, org_id).await?;
    let mut groups: HashMap<Uuid, GroupRelease> = HashMap::new();
    let mut default: Option<GroupRelease> = None;
    for row in &rows {
        match (row.group_id, row.resolution()) {
            (Some(g), Some(r)) => {
                groups.insert(g, r);
            }
            (Some(_), None) => {}
            (None, r) => default = r,
        }
    }
    Ok((groups, default))
}

/// A device as the impact reads it: id, development flag, lock, reported `firmwareVersion`, groups, and
/// the release that targets it.
pub(super) type DeviceRow = (
    String,
    bool,
    Option<String>,
    Option<String>,
    Vec<Uuid>,
    Option<Uuid>,
);

/// The columns of a [`DeviceRow`], of `devices d` (its memberships read as `m2`, so a query may join
/// `device_group_memberships m`).
pub(super) const DEVICE_COLUMNS: &str =
    "d.id, d.is_development, d.firmware_lock, d.attributes ->> 'firmwareVersion', \
     ARRAY(SELECT m2.group_id FROM device_group_memberships m2 WHERE m2.device_id = d.id), d.target_release";

/// What the impact reads of a [`DeviceRow`] besides its groups.
pub(super) fn facts(row: &DeviceRow) -> Facts<'_> {
    let (id, development, lock, running, _, current) = row;
    Facts {
        id,
        development: *development,
        lock: lock.as_deref(),
        running: running.as_deref(),
        current: *current,
    }
}

/// Whose resolved firmware an admitted change would change, and which of those devices would download
/// firmware — with the same resolution code the workers use, from the devices and memberships stored in
/// PostgreSQL, read in the change's own transaction.
pub(super) async fn compute(
    conn: &mut PgConnection,
    admitted: &Admitted,
    sample: usize,
    held: Option<&dyn HeldDevices>,
) -> Result<Impact, ReleaseError> {
    let org_id = admitted.org_id.as_str();
    // Current releases of the org, then the change applied to them.
    let (groups, default) = current_releases(conn, org_id).await?;
    let (mut after_groups, mut after_default) = (groups.clone(), default.clone());
    let group = admitted.target.group().unwrap_or(Uuid::nil());
    let released = match &admitted.change {
        Change::Release {
            version,
            parsed,
            stages,
            ..
        } => Some(GroupRelease::proposed(
            group,
            parsed.clone(),
            version.as_str().into(),
            stage_share(stages, 0),
        )),
        Change::Withdraw { .. } => None,
        Change::Advance { live, parsed, to } => Some(GroupRelease {
            group,
            version: parsed.clone(),
            label: live.version.as_str().into(),
            staging: Staging {
                release: live.id,
                stage: *to,
                share: stage_share(&live.stages, *to),
                state: live.state,
            },
        }),
        Change::Pause { live, parsed } | Change::Resume { live, parsed } => Some(GroupRelease {
            group,
            version: parsed.clone(),
            label: live.version.as_str().into(),
            staging: Staging {
                release: live.id,
                stage: live.stage,
                share: stage_share(&live.stages, live.stage),
                state: match admitted.change {
                    Change::Pause { .. } => ReleaseState::Paused,
                    _ => ReleaseState::Active,
                },
            },
        }),
    };
    match (admitted.target, released) {
        (ReleaseTarget::Group(g), Some(r)) => {
            after_groups.insert(g, r);
        }
        (ReleaseTarget::Group(g), None) => {
            after_groups.remove(&g);
        }
        (ReleaseTarget::Default, r) => after_default = r,
    }
    let releases = Releases {
        before_groups: groups,
        before_default: default,
        after_groups,
        after_default,
    };
    let mut impact = Impact::new(0);
    // The devices held in memory first; then those of every other partition from the database.
    let rest = match held {
        Some(held) => {
            held.count(org_id, admitted.target, &releases, &mut impact, sample)
                .await
        }
        None => None,
    };
    if rest.as_ref().is_some_and(Vec::is_empty) {
        return Ok(impact);
    }
    // The devices the change can affect, with their facts, reported version and group memberships.
    let devices: Vec<DeviceRow> =
        match admitted.target {
            ReleaseTarget::Group(g) => {
                sqlx::query_as(&format!(
                    "SELECT {DEVICE_COLUMNS} \
                     FROM devices d JOIN device_group_memberships m ON m.device_id = d.id AND m.group_id = $2 \
                     WHERE d.org_id = $1 AND ($3::int4[] IS NULL OR d.partition = ANY($3)) ORDER BY d.id"
                ))
                .bind(org_id)
                .bind(g)
                .bind(rest.as_deref())
                .fetch_all(&mut *conn)
                .await?
            }
            ReleaseTarget::Default => {
                sqlx::query_as(&format!(
                    "SELECT {DEVICE_COLUMNS} \
                     FROM devices d WHERE d.org_id = $1 AND ($2::int4[] IS NULL OR d.partition = ANY($2)) \
                     ORDER BY d.id"
                ))
                .bind(org_id)
                .bind(rest.as_deref())
                .fetch_all(&mut *conn)
                .await?
            }
        };
    for row in &devices {
        releases.count(&mut impact, facts(row), &row.4, sample);
    }
    Ok(impact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::Reason;

    fn target(version: Option<&str>, reason: Reason) -> Target {
        Target {
            release: None,
            version: version.map(Into::into),
            reason,
            group: None,
        }
    }

    fn default(version: &str) -> Target {
        target(Some(version), Reason::Default)
    }

    #[test]
    fn releases_sent_to_a_worker_resolve_as_they_did_here() {
        let group = Uuid::from_u128(7);
        let half = Staging {
            share: 5_000,
            ..Staging::WHOLE
        };
        let releases = Releases {
            before_groups: HashMap::from([(group, as_release(group, "1.0.0", half).unwrap())]),
            before_default: as_release(Uuid::nil(), "0.9.0", Staging::WHOLE),
            after_groups: HashMap::new(),
            after_default: as_release(Uuid::nil(), "2.0.0", Staging::WHOLE),
        };
        let wire = releases.to_wire();
        assert_eq!(wire.before.groups[&group].version, "1.0.0");
        assert_eq!(wire.before.groups[&group].share, 5_000);
        let json = serde_json::to_value(&wire).unwrap();
        let back = Releases::from_wire(&serde_json::from_value(json).unwrap());
        let counted = |releases: &Releases| {
            let mut impact = Impact::new(0);
            for (id, groups) in [("a", vec![group]), ("b", vec![])] {
                let facts = Facts {
                    id,
                    development: false,
                    lock: None,
                    running: Some("1.0.0"),
                    current: None,
                };
                releases.count(&mut impact, facts, &groups, 10);
            }
            impact
        };
        assert_eq!(counted(&back), counted(&releases));
        assert_eq!(counted(&back).changed, 2);
    }

    #[test]
    fn a_target_change_to_the_version_a_device_runs_is_changed_but_not_impacted() {
        let mut impact = Impact::new(3);
        for device in ["a", "b", "c"] {
            impact.count(device, Some("1"), Target::none(), default("1"), 10);
        }
        assert_eq!(
            (impact.examined, impact.changed, impact.impacted),
            (3, 3, 0)
        );
        assert_eq!(
            impact.transitions,
            BTreeMap::from([("none -> 1".to_string(), 3)])
        );
        assert!(impact.downloads.is_empty());
        assert!(impact.sample.iter().all(|d| !d.impacted));
    }

    #[test]
    fn impacted_devices_are_the_changed_ones_that_would_download() {
        let mut impact = Impact::new(6);
        impact.count("runs-1", Some("1"), default("1"), default("2"), 10);
        impact.count("runs-2", Some(" 2 "), default("1"), default("2"), 10);
        impact.count("silent", None, default("1"), default("2"), 10);
        impact.count("blank", Some(""), default("1"), default("2"), 10);
        // Moving to no target downloads nothing; an unchanged version is not counted at all.
        impact.count("dropped", Some("1"), default("1"), Target::none(), 10);
        impact.count(
            "relabelled",
            Some("0"),
            default("1"),
            target(Some("1"), Reason::Locked),
            10,
        );
        assert_eq!((impact.changed, impact.impacted), (5, 3));
        assert_eq!(
            impact.transitions,
            BTreeMap::from([("1 -> 2".to_string(), 4), ("1 -> none".to_string(), 1)])
        );
        assert_eq!(
            impact.downloads,
            BTreeMap::from([
                ("1 -> 2".to_string(), 1),
                ("unreported -> 2".to_string(), 2)
            ])
        );
        let listed: Vec<(&str, Option<&str>, bool)> = impact
            .sample
            .iter()
            .map(|d| (d.device_id.as_str(), d.running.as_deref(), d.impacted))
            .collect();
        assert_eq!(
            listed,
            // By id, whatever order they were counted in.
            vec![
                ("blank", None, true),
                ("dropped", Some("1"), false),
                ("runs-1", Some("1"), true),
                ("runs-2", Some("2"), false),
                ("silent", None, true),
            ]
        );
    }

    #[test]
    fn the_sample_is_capped_but_the_counts_are_not() {
        let mut impact = Impact::new(5);
        for i in 0..5 {
            impact.count(&format!("d{i}"), Some("1"), default("1"), default("2"), 2);
        }
        assert_eq!(
            (impact.changed, impact.impacted, impact.sample.len()),
            (5, 5, 2)
        );
    }
}
