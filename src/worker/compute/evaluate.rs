//! Evaluation: each candidate group's compiled filter runs on a device, and a membership follows the
//! result — added on a match (`filter_match`), removed on a non-match (`filter_unmatch`) unless pinned.

use super::causes::Cause;
use super::work::Work;
use crate::rules::{Candidate, LeafTruths};
use crate::worker::device::{AddedBy, Device, Member};

impl Work<'_> {
    /// Re-evaluates `slots` for one held device (see [`Work::reconcile_groups`]).
    pub(super) fn reconcile_slots(&mut self, id: &str, slots: &[u32], cause: &Cause) {
        let groups = slots.iter().map(|&slot| (slot, LeafTruths::NONE));
        self.reconcile_groups(id, groups, cause);
    }

    /// Re-evaluates the field index's candidates for one held device, each only as far as the truths the
    /// index found leave it undecided; their filters are read into the cache together first.
    pub(super) fn reconcile_candidates(
        &mut self,
        id: &str,
        found: &[Candidate<u32>],
        cause: &Cause,
    ) {
        for candidate in found {
            self.registry.prefetch(candidate.group);
        }
        let groups = found.iter().map(|c| (c.group, c.truths));
        self.reconcile_groups(id, groups, cause);
    }

    /// Re-evaluates `groups` (slots, with the truths of conditions already known) for one held device:
    /// the device is looked up once and every group evaluated against the same attributes (one group's
    /// result never depends on another's membership), then the changes are applied — the device taken
    /// into the batch only if there are any — and logged in the order given.
    fn reconcile_groups(
        &mut self,
        id: &str,
        groups: impl ExactSizeIterator<Item = (u32, LeafTruths)>,
        cause: &Cause,
    ) {
        self.stats.groups_evaluated += groups.len() as u64;
        let mut changes = std::mem::take(&mut self.changes);
        changes.clear();
        let Some(device) = self.current(id) else {
            self.changes = changes;
            return;
        };
        for (slot, known) in groups {
            let should = self
                .registry
                .matches_with(slot, &device.attrs, self.ctx.now, known);
            if let Some((action, reason)) = membership_change(device.member(slot), should) {
                changes.push((slot, action, reason));
            }
        }
        if !changes.is_empty() {
            if let Some(device) = self.held(id) {
                for &(slot, action, _) in &changes {
                    apply_change(device, slot, action);
                }
            }
            for &(slot, action, reason) in &changes {
                let version = self.registry.group(slot).version;
                self.push_log(slot, version, id, action, reason, cause);
            }
        }
        self.changes = changes;
    }
}

/// The change a group's evaluation calls for: `(action, reason)`.
fn membership_change(
    member: Option<&Member>,
    should: bool,
) -> Option<(&'static str, &'static str)> {
    match (member, should) {
        (None, true) => Some(("added", "filter_match")),
        (Some(m), false) if !m.pinned => Some(("removed", "filter_unmatch")),
        _ => None,
    }
}

/// Applies a change [`membership_change`] called for.
fn apply_change(device: &mut Device, slot: u32, action: &str) {
    if action == "added" {
        device.set_member(Member {
            slot,
            pinned: false,
            added_by: AddedBy::DynamicRule,
        });
    } else {
        device.remove_member(slot);
    }
}
