//! The groups listed under one field, in the structure each of their conditions is found by.

use foldhash::HashMap;

use super::intervals::Thresholds;
use super::keys::{FieldKeys, Listing, Route, Truth, ValueKey};
use super::scan::Scan;
use crate::rules::attrs::AttrValue;
use crate::rules::compiled::norm;
use crate::rules::time::EpochMillis;

/// Groups listed under one field. Every list holds dense slots (with the condition each listing stands
/// for), not group ids.
#[derive(Default, Debug)]
pub(super) struct FieldEntry {
    /// Groups for which any change of the field counts.
    any: Vec<u32>,
    /// Conditions no other structure finds, checked one by one.
    scan: Scan,
    /// Numeric thresholds, by the numbers where their truth changes.
    nums: Thresholds<f64>,
    /// Absolute datetime thresholds, by the instants where their truth changes.
    times: Thresholds<EpochMillis>,
    by_str: HashMap<Box<str>, Vec<Listing>>,
    by_num: HashMap<u64, Vec<Listing>>,
    by_bool: [Vec<Listing>; 2],
    by_enum: HashMap<u16, Vec<Listing>>,
    by_time: HashMap<i64, Vec<Listing>>,
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

fn as_num(value: Option<&AttrValue>) -> Option<f64> {
    match value {
        Some(AttrValue::Num(x)) => Some(norm(*x)),
        _ => None,
    }
}

fn as_time(value: Option<&AttrValue>) -> Option<EpochMillis> {
    match value {
        Some(AttrValue::Time(t)) => Some(*t),
        _ => None,
    }
}

impl FieldEntry {
    /// Lists the group in `slot` under this field.
    pub(super) fn add(&mut self, slot: u32, keys: &FieldKeys) {
        match keys {
            FieldKeys::Any => self.any.push(slot),
            FieldKeys::Values(values) => {
                for value in values {
                    self.bucket_mut(value).push(Listing::group(slot));
                }
            }
            FieldKeys::Leaves(tests) => {
                for leaf in tests {
                    let listing = Listing::leaf(slot, leaf);
                    match &leaf.route {
                        Route::Values(values) => {
                            for value in values {
                                self.bucket_mut(value).push(listing);
                            }
                        }
                        Route::Num(interval) => self.nums.insert(listing, *interval),
                        Route::Time(interval) => self.times.insert(listing, *interval),
                        Route::Scan(test) => self.scan.insert(listing, test),
                    }
                }
            }
        }
    }

    /// Removes the group in `slot`, listed with `keys`, from this field.
    pub(super) fn remove(&mut self, slot: u32, keys: &FieldKeys) {
        match keys {
            FieldKeys::Any => self.any.retain(|s| *s != slot),
            FieldKeys::Values(values) => self.remove_values(slot, values),
            FieldKeys::Leaves(tests) => {
                for leaf in tests {
                    match &leaf.route {
                        Route::Values(values) => self.remove_values(slot, values),
                        Route::Num(_) => self.nums.remove(slot),
                        Route::Time(_) => self.times.remove(slot),
                        Route::Scan(_) => self.scan.remove(slot),
                    }
                }
            }
        }
    }

    fn remove_values(&mut self, slot: u32, values: &[ValueKey]) {
        for value in values {
            let bucket = self.bucket_mut(value);
            bucket.retain(|l| l.slot != slot);
            if bucket.is_empty() {
                match value {
                    ValueKey::Str(s) => {
                        self.by_str.remove(s);
                    }
                    ValueKey::Num(n) => {
                        self.by_num.remove(n);
                    }
                    ValueKey::Enum(e) => {
                        self.by_enum.remove(e);
                    }
                    ValueKey::Time(t) => {
                        self.by_time.remove(t);
                    }
                    ValueKey::Bool(_) => {}
                }
            }
        }
    }

    /// Calls `emit` with every listing whose group's result may change when the field goes from `old` to
    /// `new` at `now` (a slot may repeat), and what is known of the listed condition's positive test for `new`.
    /// Listings under the new value are reported before those under the old one.
    #[inline]
    pub(super) fn changed(
        &self,
        old: Option<&AttrValue>,
        new: Option<&AttrValue>,
        now: EpochMillis,
        mut emit: impl FnMut(Listing, Truth),
    ) {
        self.any
            .iter()
            .for_each(|s| emit(Listing::group(*s), Truth::Unknown));
        if !self.nums.is_empty() {
            self.nums.changed(as_num(old), as_num(new), &mut emit);
        }
        if !self.times.is_empty() {
            self.times.changed(as_time(old), as_time(new), &mut emit);
        }
        if !self.scan.is_empty() {
            self.scan.changed(old, new, now, &mut emit);
        }
        let old = old.map(lookup_key);
        let new = new.map(lookup_key);
        if matches!(old, Some(None)) || matches!(new, Some(None)) {
            // A value of a type that is never value-indexed (a catalogue change): be conservative.
            self.all_value_buckets()
                .for_each(|l| emit(*l, Truth::Unknown));
            return;
        }
        // A value condition is true for the new value exactly when it names it: those listed under the
        // new value are true, those listed only under the old one false.
        if let Some(key) = new.flatten() {
            self.bucket(key)
                .iter()
                .for_each(|l| emit(*l, Truth::Is(true)));
        }
        if let Some(key) = old.flatten() {
            self.bucket(key)
                .iter()
                .for_each(|l| emit(*l, Truth::NamesOld));
        }
    }

    fn bucket_mut(&mut self, key: &ValueKey) -> &mut Vec<Listing> {
        match key {
            ValueKey::Str(s) => self.by_str.entry(s.clone()).or_default(),
            ValueKey::Num(n) => self.by_num.entry(*n).or_default(),
            ValueKey::Bool(b) => &mut self.by_bool[*b as usize],
            ValueKey::Enum(e) => self.by_enum.entry(*e).or_default(),
            ValueKey::Time(t) => self.by_time.entry(*t).or_default(),
        }
    }

    fn bucket(&self, key: KeyRef<'_>) -> &[Listing] {
        let found = match key {
            KeyRef::Str(s) => self.by_str.get(s),
            KeyRef::Num(n) => self.by_num.get(&n),
            KeyRef::Bool(b) => Some(&self.by_bool[b as usize]),
            KeyRef::Enum(e) => self.by_enum.get(&e),
            KeyRef::Time(t) => self.by_time.get(&t),
        };
        found.map_or(&[], Vec::as_slice)
    }

    fn all_value_buckets(&self) -> impl Iterator<Item = &Listing> {
        self.by_str
            .values()
            .chain(self.by_num.values())
            .chain(self.by_bool.iter())
            .chain(self.by_enum.values())
            .chain(self.by_time.values())
            .flatten()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.any.is_empty()
            && self.scan.is_empty()
            && self.nums.is_empty()
            && self.times.is_empty()
            && self.by_str.is_empty()
            && self.by_num.is_empty()
            && self.by_bool.iter().all(Vec::is_empty)
            && self.by_enum.is_empty()
            && self.by_time.is_empty()
    }
}
