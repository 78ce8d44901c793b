//! Definition changes applied in chunks. A group created, edited, retyped or deleted, or a release changed,
//! concerns every device of its org the partition holds: the change *sweeps* them, in a fixed order taken
//! when it starts, and each batch carries at most one chunk of it — until the chunk has written
//! `worker.change_chunk_rows` changes (membership changes and firmware re-resolutions) or visited
//! `VISITS_PER_BATCH` devices — beside the partition's events, so that a change of a million devices
//! neither holds the partition's events back nor makes one transaction of it.
//!
//! Each chunk writes only the diff (a device whose memberships already follow the definition writes
//! nothing), and the entry stays pending until its last chunk commits. So a sweep interrupted by a crash or
//! a rebalance starts again from its first device on the next owner and finishes with the same rows, none
//! twice. Devices the sweep has not reached yet keep their memberships under the old definition until it
//! does, unless an event re-evaluates them first (the registry already holds the new definition).
//!
//! A filter edit (or deletion) of a group whose earlier edit is still being swept supersedes it: the
//! earlier entry is marked applied at once, and the later one sweeps every device against the definition
//! both would have ended with.

use std::ops::Range;
use std::sync::Arc;

use foldhash::HashMap;

use super::causes::{control_cause, Cause};
use super::work::Work;
use crate::store::control::{ControlEntry, Positioned};
use crate::worker::device::{set_member, AddedBy, Device, Member};
use crate::worker::partition::Sweep;

/// Most devices one batch's chunk visits: evaluating a group on a device takes tens of nanoseconds, so a
/// chunk that changes little still takes a few milliseconds of the batch.
pub(crate) const VISITS_PER_BATCH: usize = 100_000;

/// What a batch did with its control entries.
#[derive(Debug, Default)]
pub(crate) struct ControlProgress {
    /// How many of the batch's control entries (from the first) it applied completely.
    pub(crate) applied: usize,
    /// The sweep still under way once the batch commits.
    pub(crate) sweep: Option<Sweep>,
    /// Devices the batch's sweeps visited (ranges of each sweep's order): a changed definition can move
    /// their next time flip.
    pub(crate) visited: Vec<Visited>,
}

/// A run of devices one sweep visited: a range of its order.
pub(crate) type Visited = (Arc<[Box<str>]>, Range<usize>);

/// What a definition change does to each device of its org.
#[derive(Clone, Copy)]
enum Step {
    /// Re-evaluate a dynamic group.
    Evaluate(u32),
    /// Mirror a group's conversion to static (the API rewrote its memberships).
    Convert(u32),
    /// Remove a deleted group's membership.
    Delete(u32),
    /// Re-resolve the firmware of the group's members (`Some`), or of every device (the org default).
    Release(Option<u32>),
}

impl Work<'_> {
    /// Applies the batch's control entries in order, sweeping at most one chunk of definition changes.
    pub(super) fn control_entries(
        &mut self,
        control: &[Positioned],
        reread: &mut HashMap<Box<str>, Device>,
        chunk_rows: usize,
    ) -> ControlProgress {
        let mut progress = ControlProgress::default();
        let mut visits = 0;
        for (i, entry) in control.iter().enumerate() {
            if let ControlEntry::Reevaluate { device_ids, .. } = &entry.entry {
                self.reevaluate(entry, device_ids, reread);
                progress.applied += 1;
                continue;
            }
            let Some((step, org)) = self.step(&entry.entry) else {
                // An entry for single devices, or a definition change to a group this worker does not know
                // (which `control` counts and leaves).
                self.control(entry);
                progress.applied += 1;
                continue;
            };
            if superseded(entry, &control[i + 1..]) {
                self.stats.control_entries += 1;
                progress.applied += 1;
                continue;
            }
            let sweep = match &self.partition.sweep {
                Some(sweep) if sweep.entry == entry.id => sweep.clone(),
                _ => Sweep {
                    entry: entry.id,
                    ids: self.org_devices(org).into(),
                    next: 0,
                },
            };
            let cause = control_cause(entry);
            let from = sweep.next;
            let mut next = from;
            while next < sweep.ids.len()
                && visits < VISITS_PER_BATCH
                && self.log.len() + self.resolve.len() < chunk_rows
            {
                self.sweep_device(step, &sweep.ids[next], &cause);
                next += 1;
                visits += 1;
            }
            if !matches!(step, Step::Release(_)) {
                progress.visited.push((sweep.ids.clone(), from..next));
            }
            if next < sweep.ids.len() {
                progress.sweep = Some(Sweep { next, ..sweep });
                break;
            }
            self.stats.control_entries += 1;
            progress.applied += 1;
        }
        progress
    }

    /// The step a definition change takes on each device, and its org; `None` for an entry that is not a
    /// definition change, or concerns a group this worker does not know (a change to nothing).
    fn step<'e>(&self, entry: &'e ControlEntry) -> Option<(Step, &'e str)> {
        let registry = self.registry;
        match entry {
            ControlEntry::GroupUpserted(def) => {
                let slot = registry.slot(&def.group_id)?;
                // A static group's members are the API's; a dynamic group turned static had its members
                // made manual and unpinned by the API, in the same transaction as this entry.
                let step = if def.filter.is_none() {
                    Step::Convert(slot)
                } else {
                    Step::Evaluate(slot)
                };
                Some((step, &def.org_id))
            }
            ControlEntry::GroupDeleted { group_id, org_id } => {
                Some((Step::Delete(registry.slot(group_id)?), org_id))
            }
            ControlEntry::ReleaseChanged {
                org_id, group_id, ..
            } => {
                // The registry already holds the new release.
                let slot = match group_id {
                    Some(g) => Some(registry.slot(g)?),
                    None => None,
                };
                Some((Step::Release(slot), org_id))
            }
            _ => None,
        }
    }

    /// Applies one definition change to one device.
    fn sweep_device(&mut self, step: Step, id: &str, cause: &Cause) {
        match step {
            Step::Evaluate(slot) => self.reconcile_slots(id, &[slot], cause),
            Step::Convert(slot) => {
                let converts = self
                    .current(id)
                    .and_then(|d| d.member(slot))
                    .is_some_and(|m| m.pinned || m.added_by != AddedBy::Manual);
                if converts {
                    self.mirror(id, cause, |members| {
                        set_member(members, Member::manual(slot))
                    });
                }
            }
            Step::Delete(slot) => {
                if self.current(id).is_some_and(|d| d.member(slot).is_some()) {
                    let version = self.registry.group(slot).version;
                    if let Some(device) = self.held(id) {
                        device.remove_member(slot);
                    }
                    self.push_log(slot, version, id, "removed", "manual", cause);
                }
            }
            Step::Release(slot) => {
                let affected = match slot {
                    Some(slot) => self.current(id).is_some_and(|d| d.member(slot).is_some()),
                    None => self.current(id).is_some(),
                };
                if affected {
                    self.resolve.push((id.into(), cause.clone()));
                }
            }
        }
    }
}

/// Whether a dynamic group's upsert is made redundant by a later entry of the batch that sweeps the same
/// group against its newest definition: another dynamic upsert, or its deletion. (An upsert that makes the
/// group static is never skipped, nor superseded by one: it mirrors rows the API rewrote.)
fn superseded(entry: &Positioned, later: &[Positioned]) -> bool {
    let ControlEntry::GroupUpserted(def) = &entry.entry else {
        return false;
    };
    if def.filter.is_none() {
        return false;
    }
    later.iter().any(|e| match &e.entry {
        ControlEntry::GroupUpserted(next) => next.group_id == def.group_id && next.filter.is_some(),
        ControlEntry::GroupDeleted { group_id, .. } => *group_id == def.group_id,
        _ => false,
    })
}
