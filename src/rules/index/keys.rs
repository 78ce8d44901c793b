//! How a filter is listed in the field index: per field, by value, or condition by condition, each
//! condition routed to the structure that finds it fastest when its truth can change.

use foldhash::{HashMap, HashMapExt};

use super::intervals::{Cut, Interval};
use crate::rules::catalogue::FieldId;
use crate::rules::compiled::{norm, CompiledFilter, Node, NumPred, Test, TimeRef};
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
    fn new(test: &Test) -> Self {
        let route = match (value_keys(test), threshold(test)) {
            (Some(values), _) => Route::Values(values),
            (None, Some(route)) => route,
            (None, None) => Route::Scan(test.clone()),
        };
        Self { route }
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
        Test::StrEq(s) => vec![ValueKey::Str(s.clone())],
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
            let entry = out
                .entry(leaf.field)
                .or_insert(FieldKeys::Values(Vec::new()));
            match (&mut *entry, value_keys(&leaf.test)) {
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
                tests.push(LeafTest::new(&leaf.test));
            }
        }
    }
}
