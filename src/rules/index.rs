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
use super::eval::LeafTruths;
use super::time::EpochMillis;
use entry::FieldEntry;
pub use keys::{FieldKeys, LeafTest, ValueKey};
use keys::{Listing, Truth};

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
    /// Per slot: the query that last returned it, so that no group is returned twice.
    stamps: Vec<u32>,
    /// Per slot: its place in the answer of the query in `stamps` (for [`FieldIndex::candidates_with_truths`]).
    positions: Vec<u32>,
    epoch: u32,
}

impl Scratch {
    /// Starts a query over `slots` slots: the epoch that marks the slots it returns.
    fn start(&mut self, slots: usize) -> u32 {
        if self.stamps.len() < slots {
            self.stamps.resize(slots, 0);
            self.positions.resize(slots, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamps.iter_mut().for_each(|s| *s = 0);
            self.epoch = 1;
        }
        self.epoch
    }
}

/// A group whose result may have changed, and the truth of those of its conditions the index checked.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Candidate<G> {
    pub group: G,
    /// The truth of the group's conditions that changed truth (and of some that did not), for the values
    /// the changes left: what [`CompiledFilter::evaluate_with`] needs not read again.
    pub truths: LeafTruths,
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

    /// Adds a group, or replaces its registration if it is already indexed (a filter edit). The group is
    /// listed condition by condition ([`CompiledFilter::leaf_keys`]).
    pub fn upsert(&mut self, group: G, filter: &CompiledFilter) {
        self.upsert_keys(group, filter.leaf_keys());
    }

    /// Adds or replaces a group with explicit keys (what [`CompiledFilter::index_keys`] or
    /// [`CompiledFilter::leaf_keys`] returns, with any of the caller's own).
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
        let epoch = scratch.start(self.slots.len());
        self.visit(changes, now, |listing, _| {
            let stamp = &mut scratch.stamps[listing.slot as usize];
            if *stamp != epoch {
                *stamp = epoch;
                if let Some(group) = self.slots[listing.slot as usize] {
                    out.push(group);
                }
            }
        });
    }

    /// Appends to `out` (without duplicates) every group whose result may change under `changes` at `now`,
    /// as [`FieldIndex::candidates`] does, each with the truth of the conditions the index checked for the
    /// new values (for a group listed by [`CompiledFilter::leaf_keys`]). Evaluating each candidate with
    /// [`CompiledFilter::evaluate_with`] on the attributes the changes left gives its result while reading
    /// only the conditions those truths leave undecided.
    ///
    /// Each change's `new` must be the field's value in the attributes the candidates are then evaluated
    /// on (a field changed twice is listed with its latest value both times).
    pub fn candidates_with_truths(
        &self,
        changes: &[FieldChange<'_>],
        now: EpochMillis,
        scratch: &mut Scratch,
        out: &mut Vec<Candidate<G>>,
    ) {
        let epoch = scratch.start(self.slots.len());
        self.visit(changes, now, |listing, truth| {
            let slot = listing.slot as usize;
            let position = if scratch.stamps[slot] == epoch {
                scratch.positions[slot] as usize
            } else {
                scratch.stamps[slot] = epoch;
                let Some(group) = self.slots[slot] else {
                    return;
                };
                scratch.positions[slot] = out.len() as u32;
                out.push(Candidate {
                    group,
                    truths: LeafTruths::NONE,
                });
                out.len() - 1
            };
            let Some(candidate) = out.get_mut(position) else {
                return;
            };
            if listing.leaf == Listing::NO_LEAF {
                return;
            }
            let leaf = usize::from(listing.leaf);
            let positive = match truth {
                Truth::Unknown => return,
                Truth::Is(is) => is,
                // Listed under the new value too (reported first): true, and already recorded.
                Truth::NamesOld if candidate.truths.get(leaf).is_some() => return,
                Truth::NamesOld => false,
            };
            candidate.truths.set(leaf, positive != listing.negate);
        });
    }

    /// Calls `emit` with every listing a change reaches, and what the index learnt of its condition.
    #[inline]
    fn visit(
        &self,
        changes: &[FieldChange<'_>],
        now: EpochMillis,
        mut emit: impl FnMut(Listing, Truth),
    ) {
        for change in changes {
            if let Some(entry) = self.fields.get(&change.field) {
                entry.changed(change.old, change.new, now, &mut emit);
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
