//! How a filter is listed in the field index: per field, by value, or condition by condition, each
//! condition routed to the structure that finds it fastest when its truth can change.

use foldhash::{HashMap, HashMapExt};

use super::intervals::{Cut, Interval};
use crate::rules::catalogue::FieldId;
use crate::rules::compiled::{norm, CompiledFilter, NumPred, Test, TimeRef};
use crate::rules::time::EpochMillis;

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

/// One condition on a field, in the form the index finds it by: what can change its truth.
#[derive(Clone, Debug)]
pub struct LeafTest {
    pub(super) route: Route,
    /// Its number in the filter (conditions in written order, from 0), so that the index can report its
    /// truth ([`crate::rules::LeafTruths`]).
    pub(super) leaf: u16,
    /// Whether the condition is the negation of the route's positive test.
    pub(super) negate: bool,
}

/// One listing of a group under a field: the group's slot, and the condition it stands for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Listing {
    pub(super) slot: u32,
    /// The condition's number in the filter, or [`Listing::NO_LEAF`] for a listing that stands for no
    /// single condition ([`FieldKeys::Any`], [`FieldKeys::Values`]).
    pub(super) leaf: u16,
    /// Whether the condition negates the positive test the index checks.
    pub(super) negate: bool,
}

impl Listing {
    pub(super) const NO_LEAF: u16 = u16::MAX;

    /// A listing of the group in `slot` that stands for no single condition.
    pub(super) fn group(slot: u32) -> Self {
        Self {
            slot,
            leaf: Self::NO_LEAF,
            negate: false,
        }
    }

    /// The listing of condition `test` of the group in `slot`.
    pub(super) fn leaf(slot: u32, test: &LeafTest) -> Self {
        Self {
            slot,
            leaf: test.leaf,
            negate: test.negate,
        }
    }
}

/// What the index learnt about a listed condition's positive test for a change's new value.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Truth {
    /// Nothing: the condition is evaluated.
    Unknown,
    /// The positive test's truth for the new value.
    Is(bool),
    /// The condition names the old value: its positive test is false for the new value unless it also
    /// names the new one, which is reported first.
    NamesOld,
}

/// Where the index keeps a condition.
#[derive(Clone, Debug)]
pub(super) enum Route {
    /// Equality or membership: its truth changes only when the old or the new value is one it names.
    Values(Vec<ValueKey>),
    /// A numeric threshold: true on an interval of numbers.
    Num(Interval<f64>),
    /// An absolute datetime threshold: true on an interval of instants.
    Time(Interval<EpochMillis>),
    /// Anything else (text search, regexes, relative time, null and emptiness tests, array tests): checked
    /// on its own against the old and the new value.
    Scan(Test),
}

impl LeafTest {
    fn new(test: &Test, leaf: u16, negate: bool) -> Self {
        let route = match (value_keys(test), threshold(test)) {
            (Some(values), _) => Route::Values(values),
            (None, Some(route)) => route,
            (None, None) => Route::Scan(test.clone()),
        };
        Self {
            route,
            leaf,
            negate,
        }
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

/// The values an equality or membership test names; `None` for any other test.
fn value_keys(test: &Test) -> Option<Vec<ValueKey>> {
    Some(match test {
        Test::StrEq(s) => vec![ValueKey::Str(s.as_str().into())],
        Test::StrIn(set) => set.iter().map(|s| ValueKey::Str(s.clone())).collect(),
        Test::EnumEq(e) => vec![ValueKey::Enum(*e)],
        Test::EnumIn(set) => set.iter().map(|e| ValueKey::Enum(*e)).collect(),
        Test::BoolEq(b) => vec![ValueKey::Bool(*b)],
        Test::TimeEq(t) => vec![ValueKey::Time(*t)],
        Test::Num(NumPred::Eq(x)) => vec![ValueKey::Num(norm(*x).to_bits())],
        Test::Num(NumPred::In(set)) => set
            .iter()
            .map(|x| ValueKey::Num(norm(*x).to_bits()))
            .collect(),
        _ => return None,
    })
}

/// The interval a threshold test holds on; `None` for any other test (relative instants among them: their
/// interval moves with `now`).
fn threshold(test: &Test) -> Option<Route> {
    Some(match test {
        Test::Num(pred) => Route::Num(match *pred {
            NumPred::Gt(c) => Interval::from(Cut::above(norm(c))),
            NumPred::Ge(c) => Interval::from(Cut::below(norm(c))),
            NumPred::Lt(c) => Interval::to(Cut::below(norm(c))),
            NumPred::Le(c) => Interval::to(Cut::above(norm(c))),
            NumPred::Between(a, b) => Interval::closed(norm(a), norm(b)),
            NumPred::Eq(_) | NumPred::In(_) => return None,
        }),
        Test::After(TimeRef::At(t)) => Route::Time(Interval::from(Cut::above(*t))),
        Test::Before(TimeRef::At(t)) => Route::Time(Interval::to(Cut::below(*t))),
        Test::TimeBetween(a, b) => Route::Time(Interval::closed(*a, *b)),
        _ => return None,
    })
}

impl CompiledFilter {
    /// For each field the filter references, how the field index should list the filter: by value when
    /// every condition on the field is an equality or membership test, else condition by condition.
    pub fn index_keys(&self) -> Vec<(FieldId, FieldKeys)> {
        self.keys(false)
    }

    /// For each field the filter references, every condition on it ([`FieldKeys::Leaves`]), each naming
    /// its place in the filter: listed so, a group is found by the same lookups as with
    /// [`CompiledFilter::index_keys`], and the index can also say which of its conditions changed truth
    /// and how ([`crate::rules::FieldIndex::candidates_with_truths`]). What
    /// [`crate::rules::FieldIndex::upsert`] lists.
    pub fn leaf_keys(&self) -> Vec<(FieldId, FieldKeys)> {
        self.keys(true)
    }

    fn keys(&self, by_leaf: bool) -> Vec<(FieldId, FieldKeys)> {
        let mut per_field: HashMap<FieldId, FieldKeys> = HashMap::new();
        for leaf in self.leaves() {
            let entry = per_field
                .entry(leaf.field)
                .or_insert(FieldKeys::Values(Vec::new()));
            match (&mut *entry, value_keys(&leaf.test)) {
                (FieldKeys::Values(existing), Some(mut values)) => {
                    existing.append(&mut values);
                    existing.dedup();
                }
                // Filled in the second pass below, so that every condition on the field is included,
                // also those seen while it still looked value-indexable.
                (FieldKeys::Values(_), None) => *entry = FieldKeys::Leaves(Vec::new()),
                (FieldKeys::Leaves(_) | FieldKeys::Any, _) => {}
            }
        }
        // A field listed by leaf lists every condition on it: gather them in a second pass, so that
        // conditions seen before the field stopped being value-indexable are included.
        for keys in per_field.values_mut() {
            match keys {
                FieldKeys::Leaves(tests) => tests.clear(),
                _ if by_leaf => *keys = FieldKeys::Leaves(Vec::new()),
                _ => {}
            }
        }
        for leaf in self.leaves() {
            if let Some(FieldKeys::Leaves(tests)) = per_field.get_mut(&leaf.field) {
                tests.push(LeafTest::new(&leaf.test, leaf.number, leaf.negate));
            }
        }
        let mut keys: Vec<(FieldId, FieldKeys)> = per_field.into_iter().collect();
        keys.sort_by_key(|(f, _)| *f);
        keys
    }
}
