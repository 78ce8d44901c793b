//! Group definitions of every org, kept current from the control log, with one field index per org.
//!
//! Groups get dense process-wide slots (`u32`), which is what per-device membership lists hold. A deleted
//! group keeps its slot as a tombstone (no filter), so a partition that still has to apply the deletion —
//! or that loads memberships of a group deleted since — can find and remove them.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::firmware::progress::FailureSignal;
use crate::firmware::{resolve, DeviceFacts, GroupRelease, Reason, Staging, Target, Version};
use crate::rules::{
    compile, AttrValue, Attributes, Catalogue, CompiledFilter, EpochMillis, FieldId, FieldIndex,
    FieldKeys, FlipTable, LeafTruths, ValueKey,
};
use crate::store::control::GroupDefinition;

/// A group as the worker knows it.
#[derive(Debug)]
pub struct Group {
    pub id: Uuid,
    pub org: Arc<str>,
    /// A site-scoped group only ever contains devices whose `siteId` equals this.
    pub site: Option<Box<str>>,
    pub version: i64,
    /// `None` for static groups and tombstones: the worker never evaluates those.
    pub filter: Option<CompiledFilter>,
    /// Whether the group is deleted (its slot stays so pending removals can find it).
    pub deleted: bool,
    /// The group's current firmware release.
    pub release: Option<GroupRelease>,
}

impl Group {
    /// Whether the group's result can change with time alone.
    pub fn is_time_dependent(&self) -> bool {
        self.filter
            .as_ref()
            .is_some_and(CompiledFilter::is_time_dependent)
    }
}

/// One org's dynamic groups and their field index.
#[derive(Debug, Default)]
pub struct Org {
    pub index: FieldIndex<u32>,
    /// Every live dynamic group (evaluated in full for new and re-homed devices).
    pub dynamic: Vec<u32>,
    /// Live dynamic groups whose result can change with time alone.
    pub time_groups: Vec<u32>,
    /// When their conditions can change truth: a device's next wake-up (see [`Org::next_wakeup`]).
    pub flips: FlipTable,
    /// The org's default firmware release.
    pub default_release: Option<GroupRelease>,
}

/// Every org and group, by slot.
#[derive(Debug)]
pub struct Registry {
    catalogue: Arc<Catalogue>,
    groups: Vec<Group>,
    by_id: HashMap<Uuid, u32>,
    orgs: HashMap<Arc<str>, Org>,
    /// The last control-log id whose definition changes are reflected here.
    pub position: i64,
    /// Firmware versions, shared by the devices that hold them (see [`Registry::intern`]).
    labels: HashSet<Arc<str>>,
    /// `labels.len()` after its last pruning.
    labels_pruned_at: usize,
    site_field: FieldId,
    /// Each live release's failure signal, by release id, as the field and value a failed device reports.
    failures: HashMap<Uuid, (FieldId, AttrValue)>,
}

impl Org {
    /// When a device of this org with `attrs` must next be re-evaluated with no event: the first instant
    /// after `now` at which a condition of one of the org's time-dependent groups can change truth. The
    /// groups' results are constant until then; at that instant they may (not must) change.
    pub fn next_wakeup(&self, attrs: &Attributes, now: EpochMillis) -> Option<EpochMillis> {
        self.flips.next(attrs, now)
    }
}

impl Registry {
    /// An empty registry at control position 0.
    pub fn new(catalogue: Arc<Catalogue>) -> Self {
        let site_field = catalogue
            .builtin("siteId")
            .expect("siteId is a built-in field");
        Self {
            catalogue,
            groups: Vec::new(),
            by_id: HashMap::new(),
            orgs: HashMap::new(),
            position: 0,
            labels: HashSet::new(),
            labels_pruned_at: 0,
            site_field,
            failures: HashMap::new(),
        }
    }

    /// The catalogue definitions are compiled against.
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.catalogue
    }

    /// One shared copy of a firmware version string: a million devices on the same release hold one
    /// allocation, not a million. Copies no one else holds any more are dropped whenever the set has
    /// doubled since it was last pruned, so it stays within twice the versions in use.
    pub fn intern(&mut self, label: &str) -> Arc<str> {
        if let Some(shared) = self.labels.get(label) {
            return shared.clone();
        }
        if self.labels.len() >= 2 * self.labels_pruned_at.max(64) {
            self.labels.retain(|l| Arc::strong_count(l) > 1);
            self.labels_pruned_at = self.labels.len();
        }
        let shared: Arc<str> = label.into();
        self.labels.insert(shared.clone());
        shared
    }

    /// Registers an org (idempotent).
    pub fn add_org(&mut self, org: &str) {
        if !self.orgs.contains_key(org) {
            self.orgs.insert(org.into(), Org::default());
        }
    }

    /// The org's interned name, if the org is known.
    pub fn org(&self, org: &str) -> Option<(&Arc<str>, &Org)> {
        self.orgs.get_key_value(org)
    }

    /// The group in `slot`.
    pub fn group(&self, slot: u32) -> &Group {
        &self.groups[slot as usize]
    }

    /// The slot of a group id, creating a tombstone for an unknown id (memberships of a group deleted
    /// before this process loaded the definitions).
    pub fn slot_or_tombstone(&mut self, id: Uuid, org: &Arc<str>) -> u32 {
        if let Some(slot) = self.by_id.get(&id) {
            return *slot;
        }
        self.push(Group {
            id,
            org: org.clone(),
            site: None,
            version: 0,
            filter: None,
            deleted: true,
            release: None,
        })
    }

    /// The slot of a group id, if known.
    pub fn slot(&self, id: &Uuid) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    fn push(&mut self, group: Group) -> u32 {
        let slot = self.groups.len() as u32;
        self.by_id.insert(group.id, slot);
        self.groups.push(group);
        slot
    }

    /// Adds or replaces a group definition. A filter that no longer compiles (the catalogue changed since it
    /// was saved) makes the group match nothing, with a warning, rather than stopping the worker.
    pub fn upsert(&mut self, def: &GroupDefinition) -> u32 {
        let org: Arc<str> = match self.orgs.get_key_value(def.org_id.as_str()) {
            Some((name, _)) => name.clone(),
            None => {
                self.add_org(&def.org_id);
                self.orgs
                    .get_key_value(def.org_id.as_str())
                    .map(|(k, _)| k.clone())
                    .expect("just added")
            }
        };
        let filter = def
            .filter
            .as_ref()
            .and_then(|f| self.compile(def.group_id, f));
        let slot = match self.by_id.get(&def.group_id) {
            Some(slot) => *slot,
            None => self.push(Group {
                id: def.group_id,
                org: org.clone(),
                site: None,
                version: 0,
                filter: None,
                deleted: false,
                release: None,
            }),
        };
        let group = &mut self.groups[slot as usize];
        group.site = def.site_id.as_deref().map(Into::into);
        group.version = def.version;
        group.filter = filter;
        group.deleted = false;
        self.reindex(slot);
        slot
    }

    /// Marks a group deleted (keeping its slot).
    pub fn delete(&mut self, id: Uuid) -> Option<u32> {
        let slot = *self.by_id.get(&id)?;
        let group = &mut self.groups[slot as usize];
        group.deleted = true;
        group.filter = None;
        group.release = None;
        group.version += 1;
        self.reindex(slot);
        Some(slot)
    }

    fn compile(&self, id: Uuid, filter: &Value) -> Option<CompiledFilter> {
        match compile(filter, &self.catalogue) {
            Ok(f) => Some(f),
            Err(errors) => {
                tracing::warn!(group_id = %id, ?errors, "stored filter does not compile; the group matches nothing");
                None
            }
        }
    }

    /// Brings the org's index and lists in line with the group in `slot`.
    fn reindex(&mut self, slot: u32) {
        let group = &self.groups[slot as usize];
        let org = self.orgs.entry(group.org.clone()).or_default();
        org.index.remove(slot);
        org.dynamic.retain(|s| *s != slot);
        let was_time_dependent = org.time_groups.contains(&slot);
        org.time_groups.retain(|s| *s != slot);
        if was_time_dependent || group.is_time_dependent() {
            let groups = &self.groups;
            org.flips = FlipTable::new(
                org.time_groups
                    .iter()
                    .chain(group.is_time_dependent().then_some(&slot))
                    .filter_map(|s| groups[*s as usize].filter.as_ref()),
            );
        }
        let Some(filter) = &group.filter else {
            return;
        };
        let mut keys = filter.index_keys();
        if let Some(site) = &group.site {
            // A site-scoped group's result also depends on the device's site.
            keys.push((
                self.site_field,
                FieldKeys::Values(vec![ValueKey::Str(site.clone())]),
            ));
        }
        org.index.upsert_keys(slot, keys);
        org.dynamic.push(slot);
        if filter.is_time_dependent() {
            org.time_groups.push(slot);
        }
    }

    /// Whether a device with `attrs` belongs in the dynamic group in `slot` at `now` (false for static
    /// groups and tombstones).
    #[inline]
    pub fn matches(&self, slot: u32, attrs: &Attributes, now: EpochMillis) -> bool {
        self.matches_with(slot, attrs, now, LeafTruths::NONE)
    }

    /// [`Registry::matches`], with the truths of conditions already known (from the field index's
    /// candidates, for these attributes at `now`): only what they leave undecided is evaluated.
    pub fn matches_with(
        &self,
        slot: u32,
        attrs: &Attributes,
        now: EpochMillis,
        known: LeafTruths,
    ) -> bool {
        let group = &self.groups[slot as usize];
        let Some(filter) = &group.filter else {
            return false;
        };
        if let Some(site) = &group.site {
            match attrs.get(self.site_field) {
                Some(AttrValue::Str(s)) if **s == **site => {}
                _ => return false,
            }
        }
        filter.evaluate_with(attrs, now, known)
    }

    /// Starts reading the filter of the group in `slot` into the cache, so that evaluating several
    /// candidates overlaps their misses.
    pub fn prefetch(&self, slot: u32) {
        if let Some(filter) = self
            .groups
            .get(slot as usize)
            .and_then(|g| g.filter.as_ref())
        {
            filter.prefetch();
        }
    }

    /// Records a release change: the group's (or, with no group, the org's default) current version,
    /// stage and state, and the failure signal its devices report. Returns the group's slot when it is a
    /// group release.
    pub fn set_release(
        &mut self,
        org: &str,
        group: Option<Uuid>,
        version: Option<&str>,
        staging: Staging,
        failure: Option<&FailureSignal>,
    ) -> Option<u32> {
        let label = version.map(|v| self.intern(v));
        let release = |group: Uuid| {
            let label = label.clone()?;
            Version::parse(&label).ok().map(|parsed| GroupRelease {
                group,
                version: parsed,
                label,
                staging,
            })
        };
        let slot = match group {
            Some(id) => Some(self.slot(&id)?),
            None => None,
        };
        let replaced = match slot {
            Some(slot) => std::mem::replace(
                &mut self.groups[slot as usize].release,
                release(group.unwrap_or_default()),
            ),
            None => {
                self.add_org(org);
                let o = self.orgs.get_mut(org)?;
                std::mem::replace(&mut o.default_release, release(Uuid::nil()))
            }
        };
        if let Some(id) = replaced.and_then(|r| r.id()) {
            self.failures.remove(&id);
        }
        let signal = failure.and_then(|f| {
            match crate::rules::attrs::parse_attribute(&self.catalogue, &f.attribute, &f.value) {
                Ok((field, Some(value))) => Some((field, value)),
                _ => None,
            }
        });
        if let (Some(id), Some(signal)) = (
            (!staging.release.is_nil()).then_some(staging.release),
            signal,
        ) {
            if version.is_some() {
                self.failures.insert(id, signal);
            }
        }
        slot
    }

    /// Records every live release as read from the database (at start-up; the control log then keeps
    /// them current).
    pub fn load_releases(&mut self, releases: &[crate::store::firmware::LiveRelease]) {
        for release in releases {
            self.set_release(
                &release.org_id,
                release.group_id,
                Some(&release.version),
                release.staging(),
                release.failure.as_ref().map(|f| &f.0),
            );
        }
    }

    /// The failure signal of live release `release`: the field and the value its failed devices report.
    pub fn failure_signal(&self, release: Uuid) -> Option<&(FieldId, AttrValue)> {
        self.failures.get(&release)
    }

    /// Resolves device `id`'s firmware target from its facts and memberships.
    pub fn resolve(
        &self,
        org: &str,
        id: &str,
        (development, lock): (bool, Option<&str>),
        current: Option<Uuid>,
        member_of: impl Iterator<Item = u32>,
    ) -> Target {
        let facts = DeviceFacts {
            id,
            development,
            lock,
            current,
        };
        let releases = member_of.filter_map(|slot| {
            self.groups
                .get(slot as usize)
                .and_then(|g| g.release.as_ref())
        });
        let default = self.orgs.get(org).and_then(|o| o.default_release.as_ref());
        resolve(&facts, releases, default)
    }

    /// The release that decided `target` for a device of `org`: its group's, or the org's default.
    pub fn deciding_release(&self, org: &str, target: &Target) -> Option<&GroupRelease> {
        match target.reason {
            Reason::Group => {
                let slot = self.slot(&target.group?)?;
                self.groups.get(slot as usize)?.release.as_ref()
            }
            Reason::Default => self.orgs.get(org)?.default_release.as_ref(),
            _ => None,
        }
    }

    /// Number of group slots (live, deleted and tombstones).
    pub fn slots(&self) -> usize {
        self.groups.len()
    }

    /// Every slot's group id, by slot.
    pub fn group_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.groups.iter().map(|g| g.id)
    }

    /// Number of live dynamic groups across all orgs.
    pub fn dynamic_groups(&self) -> usize {
        self.orgs.values().map(|o| o.dynamic.len()).sum()
    }
}
