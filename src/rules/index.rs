//! The field index: which dynamic groups a change of a device's attributes can affect.
//!
//! One index serves one org. For each field it keeps the groups whose filter references that field, each
//! condition in the structure that finds it fastest when its truth can change:
//!
//! - **value index**: equality and membership conditions (`equals`, `notEquals`, `in`, `notIn` on a
//!   string, enum, number or boolean; `equals`, `notEquals` on a datetime, keyed by its UTC millisecond)
//!   can only change truth when the old or the new value is one they name, so a change `old → new` reaches
//!   only the groups listed under `old` and `new`, found by hash lookup whatever the number of groups;
//! - **interval index**: numeric thresholds (`greaterThan`, `lessThanOrEquals`, `between`,
//!   …) and absolute datetime ones (`before`/`after` an instant, `between` two instants, comparisons with
//!   an instant) hold on one interval of values and change truth only where a value passes one of its
//!   ends; the ends are kept sorted per field, so a change finds the ends between `old` and `new` by
//!   binary search, and only those conditions are checked;
//! - **leaf scan**, for the rest (text search, regexes, relative time, null and emptiness tests, array
//!   tests, whose arrays are sets in any order): each distinct condition on the field is kept once, with
//!   the groups that have it, and checked against the old and the new value; its groups are candidates
//!   only if its truth differs. A field's distinct regexes are matched together, in one pass per value.
//!
//! A group whose every condition on a field is an equality or membership test is listed by value
//! ([`FieldKeys::Values`]); otherwise each of its conditions on the field is routed as above
//! ([`FieldKeys::Leaves`]).
//!
//! Soundness: a filter's result is a function of its leaves' truth values, and a leaf on field `f` can only
//! change truth when `f` changes (or time passes, which the worker handles with [`super::CompiledFilter::next_flip`]).
//! Each structure returns every condition whose truth differs between the old and the new value (a value
//! condition names `old` or `new`; a threshold's truth differs only if an end of its interval lies between
//! them, and is checked on the interval itself; a scanned condition is checked directly). If no leaf on
//! any changed field changes truth, the result cannot change; so the groups returned are a superset of
//! those whose result changes, and a group that references none of the changed fields is never returned.
//! (Both old and new truth are taken at the same `now`: the membership being compared was computed at the
//! last evaluation, and time-driven changes since then are the flip scheduler's job.)

mod entry;
mod intervals;
mod keys;
mod scan;

use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;

use super::attrs::AttrValue;
use super::catalogue::FieldId;
use super::compiled::CompiledFilter;
use super::time::EpochMillis;
use entry::FieldEntry;
pub use keys::{FieldKeys, LeafTest, ValueKey};

/// One changed attribute: the field and its values before and after (`None` = missing).
#[derive(Copy, Clone, Debug)]
pub struct FieldChange<'a> {
    pub field: FieldId,
    pub old: Option<&'a AttrValue>,
    pub new: Option<&'a AttrValue>,
}

/// Reusable scratch space for [`FieldIndex::candidates`], so a query does not allocate.
#[derive(Default, Debug)]
pub struct Scratch {
    stamps: Vec<u32>,
    epoch: u32,
}

/// field → dynamic groups of one org. `G` is the caller's group id.
#[derive(Debug)]
pub struct FieldIndex<G> {
    fields: HashMap<FieldId, FieldEntry>,
    /// slot → group, `None` for free slots.
    slots: Vec<Option<G>>,
    free: Vec<u32>,
    /// group → (slot, how it is registered), so it can be removed or replaced.
    groups: HashMap<G, (u32, Vec<(FieldId, FieldKeys)>)>,
}

impl<G> Default for FieldIndex<G> {
    fn default() -> Self {
        Self {
            fields: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            groups: HashMap::new(),
        }
    }
}

impl<G: Copy + Eq + Hash> FieldIndex<G> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of groups indexed.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group is indexed.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Adds a group, or replaces its registration if it is already indexed (a filter edit).
    pub fn upsert(&mut self, group: G, filter: &CompiledFilter) {
        self.upsert_keys(group, filter.index_keys());
    }

    /// Adds or replaces a group with explicit keys (what [`CompiledFilter::index_keys`] returns).
    pub fn upsert_keys(&mut self, group: G, keys: Vec<(FieldId, FieldKeys)>) {
        self.remove(group);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(group);
                slot
            }
            None => {
                self.slots.push(Some(group));
                (self.slots.len() - 1) as u32
            }
        };
        for (field, field_keys) in &keys {
            self.fields.entry(*field).or_default().add(slot, field_keys);
        }
        self.groups.insert(group, (slot, keys));
    }

    /// Removes a group; a no-op for a group not indexed.
    pub fn remove(&mut self, group: G) {
        let Some((slot, keys)) = self.groups.remove(&group) else {
            return;
        };
        for (field, field_keys) in &keys {
            let Some(entry) = self.fields.get_mut(field) else {
                continue;
            };
            entry.remove(slot, field_keys);
            if entry.is_empty() {
                self.fields.remove(field);
            }
        }
        self.slots[slot as usize] = None;
        self.free.push(slot);
    }

    /// Whether any indexed group references `field`.
    pub fn references(&self, field: FieldId) -> bool {
        self.fields.contains_key(&field)
    }

    /// Appends to `out` (without duplicates) every group whose result may change under `changes` at `now`.
    pub fn candidates(
        &self,
        changes: &[FieldChange<'_>],
        now: EpochMillis,
        scratch: &mut Scratch,
        out: &mut Vec<G>,
    ) {
        if scratch.stamps.len() < self.slots.len() {
            scratch.stamps.resize(self.slots.len(), 0);
        }
        scratch.epoch = scratch.epoch.wrapping_add(1);
        if scratch.epoch == 0 {
            scratch.stamps.iter_mut().for_each(|s| *s = 0);
            scratch.epoch = 1;
        }
        let epoch = scratch.epoch;
        let mut emit = |slot: u32, out: &mut Vec<G>| {
            let stamp = &mut scratch.stamps[slot as usize];
            if *stamp != epoch {
                *stamp = epoch;
                if let Some(group) = self.slots[slot as usize] {
                    out.push(group);
                }
            }
        };
        for change in changes {
            if let Some(entry) = self.fields.get(&change.field) {
                entry.changed(change.old, change.new, now, |slot| emit(slot, out));
            }
        }
    }

    /// Every indexed group, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = G> + '_ {
        self.groups.keys().copied()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod leaf_check;
