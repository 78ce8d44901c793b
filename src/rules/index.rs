//! The field index: which dynamic groups a change of a device's attributes can affect.
//!
//! One index serves one org. For each field it keeps the groups whose filter references that field, in one
//! of two ways:
//!
//! - **by value**, when every condition of the group on that field is an equality or membership test
//!   (`equals`, `notEquals`, `in`, `notIn` on a string, enum, number or boolean; `equals`, `notEquals` on a
//!   datetime, keyed by its UTC millisecond): such a condition can only change truth when the old or the
//!   new value is one it names, so a change `old → new` reaches only the groups listed under `old` and
//!   `new`, found by hash lookup whatever the number of groups;
//! - **by leaf**, otherwise (ranges and comparisons, text search, regexes, relative time, null tests, and
//!   array equality, whose arrays are sets in any order): the group's conditions on that
//!   field are kept in a contiguous array per field, and a change makes the group a candidate only if one of
//!   those conditions has a different truth for the old and the new value. Checking a copied condition is a
//!   sequential scan, far cheaper than evaluating the whole filter from cold memory.
//!
//! Soundness: a filter's result is a function of its leaves' truth values, and a leaf on field `f` can only
//! change truth when `f` changes (or time passes, which the worker handles with [`super::CompiledFilter::next_flip`]).
//! If no leaf on any changed field changes truth, the result cannot change; so the groups returned are a
//! superset of those whose result changes, and a group that references none of the changed fields is never
//! returned. (Both old and new truth are taken at the same `now`: the membership being compared was computed
//! at the last evaluation, and time-driven changes since then are the flip scheduler's job.)

use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;

use super::attrs::AttrValue;
use super::catalogue::FieldId;
use super::compiled::{norm, CompiledFilter, Node, NumPred, Test};
use super::eval::test;
use super::time::EpochMillis;

/// How a group is listed under one field.
#[derive(Clone, Debug)]
pub enum FieldKeys {
    /// Any change of the field may change the group's result (no pre-check).
    Any,
    /// Only a change from or to one of these values may (from equality/`in` conditions).
    Values(Vec<ValueKey>),
    /// Only a change that alters the truth of one of these conditions may.
    Leaves(Vec<LeafTest>),
}

impl PartialEq for FieldKeys {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (FieldKeys::Any, FieldKeys::Any) => true,
            (FieldKeys::Values(a), FieldKeys::Values(b)) => a == b,
            (FieldKeys::Leaves(a), FieldKeys::Leaves(b)) => a.len() == b.len(),
            _ => false,
        }
    }
}

/// A copy of one condition's positive test, checked against a field's old and new value.
#[derive(Clone, Debug)]
pub struct LeafTest {
    test: Test,
}

impl LeafTest {
    /// Whether the condition's truth differs between `old` and `new` at `now`.
    #[inline]
    fn changes(&self, old: Option<&AttrValue>, new: Option<&AttrValue>, now: EpochMillis) -> bool {
        test(&self.test, old, now) != test(&self.test, new, now)
    }
}

/// A value under which a group is indexed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ValueKey {
    Str(Box<str>),
    /// The bits of a normalised (`-0.0` → `0.0`) finite number.
    Num(u64),
    Bool(bool),
    Enum(u16),
    /// A datetime's UTC milliseconds.
    Time(i64),
}

impl CompiledFilter {
    /// For each field the filter references, how the field index should list the filter.
    pub fn index_keys(&self) -> Vec<(FieldId, FieldKeys)> {
        let mut per_field: HashMap<FieldId, FieldKeys> = HashMap::new();
        collect_keys(&self.root, &mut per_field);
        // A field listed by leaf lists every condition on it: gather them in a second pass, so that
        // conditions seen before the field stopped being value-indexable are included.
        for tests in per_field.values_mut() {
            if let FieldKeys::Leaves(tests) = tests {
                tests.clear();
            }
        }
        collect_leaves(&self.root, &mut per_field);
        let mut keys: Vec<(FieldId, FieldKeys)> = per_field.into_iter().collect();
        keys.sort_by_key(|(f, _)| *f);
        keys
    }
}

fn collect_keys(node: &Node, out: &mut HashMap<FieldId, FieldKeys>) {
    match node {
        Node::All(children) | Node::Any(children) => {
            children.iter().for_each(|c| collect_keys(c, out))
        }
        Node::Leaf(leaf) => {
            let values: Option<Vec<ValueKey>> = match &leaf.test {
                Test::StrEq(s) => Some(vec![ValueKey::Str(s.clone())]),
                Test::StrIn(set) => Some(set.iter().map(|s| ValueKey::Str(s.clone())).collect()),
                Test::EnumEq(e) => Some(vec![ValueKey::Enum(*e)]),
                Test::EnumIn(set) => Some(set.iter().map(|e| ValueKey::Enum(*e)).collect()),
                Test::BoolEq(b) => Some(vec![ValueKey::Bool(*b)]),
                Test::TimeEq(t) => Some(vec![ValueKey::Time(*t)]),
                Test::Num(NumPred::Eq(x)) => Some(vec![ValueKey::Num(x.to_bits())]),
                Test::Num(NumPred::In(set)) => {
                    Some(set.iter().map(|x| ValueKey::Num(x.to_bits())).collect())
                }
                _ => None,
            };
            let entry = out
                .entry(leaf.field)
                .or_insert(FieldKeys::Values(Vec::new()));
            match (&mut *entry, values) {
                (FieldKeys::Values(existing), Some(mut values)) => {
                    existing.append(&mut values);
                    existing.dedup();
                }
                // Filled by `collect_leaves` in a second pass, so that every condition on the field is
                // included, also those seen while it still looked value-indexable.
                (FieldKeys::Values(_), None) => *entry = FieldKeys::Leaves(Vec::new()),
                (FieldKeys::Leaves(_) | FieldKeys::Any, _) => {}
            }
        }
    }
}

fn collect_leaves(node: &Node, out: &mut HashMap<FieldId, FieldKeys>) {
    match node {
        Node::All(children) | Node::Any(children) => {
            children.iter().for_each(|c| collect_leaves(c, out))
        }
        Node::Leaf(leaf) => {
            if let Some(FieldKeys::Leaves(tests)) = out.get_mut(&leaf.field) {
                tests.push(LeafTest {
                    test: leaf.test.clone(),
                });
            }
        }
    }
}

/// The key a stored value is looked up under; `None` for values that are never value-indexed.
fn lookup_key(value: &AttrValue) -> Option<KeyRef<'_>> {
    match value {
        AttrValue::Str(s) => Some(KeyRef::Str(s)),
        AttrValue::Num(x) => Some(KeyRef::Num(norm(*x).to_bits())),
        AttrValue::Bool(b) => Some(KeyRef::Bool(*b)),
        AttrValue::Enum(e) => Some(KeyRef::Enum(*e)),
        AttrValue::Time(t) => Some(KeyRef::Time(*t)),
        AttrValue::StrList(_) => None,
    }
}

enum KeyRef<'a> {
    Str(&'a str),
    Num(u64),
    Bool(bool),
    Enum(u16),
    Time(i64),
}

/// Groups listed under one field. Buckets hold dense slots, not group ids.
#[derive(Default, Debug)]
struct FieldEntry {
    any: Vec<u32>,
    /// (slot, condition) pairs; a group with several conditions on the field has several entries.
    leaves: Vec<(u32, LeafTest)>,
    by_str: HashMap<Box<str>, Vec<u32>>,
    by_num: HashMap<u64, Vec<u32>>,
    by_bool: [Vec<u32>; 2],
    by_enum: HashMap<u16, Vec<u32>>,
    by_time: HashMap<i64, Vec<u32>>,
}

impl FieldEntry {
    fn bucket_mut(&mut self, key: &ValueKey) -> &mut Vec<u32> {
        match key {
            ValueKey::Str(s) => self.by_str.entry(s.clone()).or_default(),
            ValueKey::Num(n) => self.by_num.entry(*n).or_default(),
            ValueKey::Bool(b) => &mut self.by_bool[*b as usize],
            ValueKey::Enum(e) => self.by_enum.entry(*e).or_default(),
            ValueKey::Time(t) => self.by_time.entry(*t).or_default(),
        }
    }

    fn bucket(&self, key: KeyRef<'_>) -> &[u32] {
        let found = match key {
            KeyRef::Str(s) => self.by_str.get(s),
            KeyRef::Num(n) => self.by_num.get(&n),
            KeyRef::Bool(b) => Some(&self.by_bool[b as usize]),
            KeyRef::Enum(e) => self.by_enum.get(&e),
            KeyRef::Time(t) => self.by_time.get(&t),
        };
        found.map_or(&[], Vec::as_slice)
    }

    fn all_value_buckets(&self) -> impl Iterator<Item = &u32> {
        self.by_str
            .values()
            .chain(self.by_num.values())
            .chain(self.by_bool.iter())
            .chain(self.by_enum.values())
            .chain(self.by_time.values())
            .flatten()
    }

    fn is_empty(&self) -> bool {
        self.any.is_empty()
            && self.leaves.is_empty()
            && self.by_str.is_empty()
            && self.by_num.is_empty()
            && self.by_bool.iter().all(Vec::is_empty)
            && self.by_enum.is_empty()
            && self.by_time.is_empty()
    }
}

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
            let entry = self.fields.entry(*field).or_default();
            match field_keys {
                FieldKeys::Any => entry.any.push(slot),
                FieldKeys::Values(values) => {
                    for value in values {
                        entry.bucket_mut(value).push(slot);
                    }
                }
                FieldKeys::Leaves(tests) => {
                    entry.leaves.extend(tests.iter().map(|t| (slot, t.clone())));
                }
            }
        }
        self.groups.insert(group, (slot, keys));
    }

    /// Removes a group; a no-op for a group not indexed.
    pub fn remove(&mut self, group: G) {
        let Some((slot, keys)) = self.groups.remove(&group) else {
            return;
        };
        for (field, field_keys) in keys {
            let Some(entry) = self.fields.get_mut(&field) else {
                continue;
            };
            match field_keys {
                FieldKeys::Any => entry.any.retain(|s| *s != slot),
                FieldKeys::Leaves(_) => entry.leaves.retain(|(s, _)| *s != slot),
                FieldKeys::Values(values) => {
                    for value in &values {
                        let bucket = entry.bucket_mut(value);
                        bucket.retain(|s| *s != slot);
                        if bucket.is_empty() {
                            match value {
                                ValueKey::Str(s) => {
                                    entry.by_str.remove(s);
                                }
                                ValueKey::Num(n) => {
                                    entry.by_num.remove(n);
                                }
                                ValueKey::Enum(e) => {
                                    entry.by_enum.remove(e);
                                }
                                ValueKey::Time(t) => {
                                    entry.by_time.remove(t);
                                }
                                ValueKey::Bool(_) => {}
                            }
                        }
                    }
                }
            }
            if entry.is_empty() {
                self.fields.remove(&field);
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
            let Some(entry) = self.fields.get(&change.field) else {
                continue;
            };
            for slot in &entry.any {
                emit(*slot, out);
            }
            for (slot, leaf) in &entry.leaves {
                if leaf.changes(change.old, change.new, now) {
                    emit(*slot, out);
                }
            }
            let old = change.old.map(lookup_key);
            let new = change.new.map(lookup_key);
            if matches!(old, Some(None)) || matches!(new, Some(None)) {
                // A value of a type that is never value-indexed (a catalogue change): be conservative.
                for slot in entry.all_value_buckets() {
                    emit(*slot, out);
                }
                continue;
            }
            for key in [old.flatten(), new.flatten()].into_iter().flatten() {
                for slot in entry.bucket(key) {
                    emit(*slot, out);
                }
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
