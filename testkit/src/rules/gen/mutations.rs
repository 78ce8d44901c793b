//! Arbitrary JSON and mutations of valid filters, for the validation properties.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use crate::rules::reference::Kind;

use super::device_value;
use super::filters::{leaf, relative_time, span};

// ---------------------------------------------------------------------------------------------------------
// Arbitrary JSON and mutations, for validation.

/// Strings a filter validator has to think about: names, operators, units, datetimes, bad regexes.
const INTERESTING_STRINGS: &[&str] = &[
    "hostname",
    "status",
    "uptimeSeconds",
    "lastSeenAt",
    "tags",
    "daysSinceLastSeen",
    "daysSinceEnrolled",
    "custom.cpu",
    "custom.beta",
    "custom.ring",
    "custom.installedAt",
    "custom.rack",
    "custom.",
    "custom.bad key",
    "custom.ünïcode",
    "nope",
    "",
    "AND",
    "OR",
    "and",
    "equals",
    "notEquals",
    "greaterThan",
    "greaterThanOrEquals",
    "lessThan",
    "lessThanOrEquals",
    "contains",
    "notContains",
    "startsWith",
    "endsWith",
    "matches",
    "in",
    "notIn",
    "hasAny",
    "hasAll",
    "isEmpty",
    "isNotEmpty",
    "isNull",
    "isNotNull",
    "before",
    "after",
    "between",
    "withinLast",
    "notWithinLast",
    "like",
    "minutes",
    "hours",
    "days",
    "weeks",
    "months",
    "fortnights",
    "ago",
    "fromNow",
    "now",
    "online",
    "canary",
    "2024-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "0000-01-01T00:00:00+01:00",
    "2024-01-01",
    "(",
    "[z-a]",
    "\\w{1000}\\w{1000}\\w{1000}",
    "a{1000}{1000}",
    "(?i)ß",
];

/// Keys that make an object look like a group, a condition or a value.
const KEYS: &[&str] = &[
    "operator",
    "conditions",
    "field",
    "value",
    "amount",
    "unit",
    "direction",
    "from",
    "to",
    "extra",
];

fn json_scalar() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        2 => (-3i64..=3).prop_map(Value::from),
        1 => select(vec![
            json!(1200),
            json!(1201),
            json!(52_596_001),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e300),
            json!(-1e-300),
        ]),
        1 => any::<f64>().prop_filter_map("finite", |x| serde_json::Number::from_f64(x).map(Value::Number)),
        4 => select(INTERESTING_STRINGS).prop_map(Value::from),
        1 => "\\PC{0,12}".prop_map(Value::from),
        1 => Just(Value::from("x".repeat(1100))),
    ]
    .boxed()
}

fn json_key() -> BoxedStrategy<String> {
    prop_oneof![6 => select(KEYS).prop_map(String::from), 1 => "\\PC{0,6}"].boxed()
}

/// Arbitrary JSON trees of moderate size, biased towards filter-like shapes.
pub fn arbitrary_json() -> BoxedStrategy<Value> {
    json_scalar()
        .prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((json_key(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
        .boxed()
}

/// One edit of a JSON tree; node positions are pre-order indexes, reduced modulo the node count.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Replace the node with another value.
    Replace(prop::sample::Index, Value),
    /// Remove one key of an object node (no-op on other nodes).
    RemoveKey(prop::sample::Index, prop::sample::Index),
    /// Set a key of an object node (no-op on other nodes).
    SetKey(prop::sample::Index, String, Value),
    /// Remove one element of an array node (no-op on other nodes).
    RemoveItem(prop::sample::Index, prop::sample::Index),
}

/// Values a mutation writes: often plausible ones (so some mutants stay valid), sometimes anything.
fn mutation_value(now: i64) -> BoxedStrategy<Value> {
    prop_oneof![
        2 => json_scalar(),
        1 => arbitrary_json(),
        2 => leaf(now),
        1 => device_value(Kind::Time, now),
        1 => relative_time(),
        1 => span(),
    ]
    .boxed()
}

pub fn mutation(now: i64) -> BoxedStrategy<Mutation> {
    let at = any::<prop::sample::Index>;
    prop_oneof![
        (at(), mutation_value(now)).prop_map(|(a, v)| Mutation::Replace(a, v)),
        (at(), at()).prop_map(|(a, k)| Mutation::RemoveKey(a, k)),
        (at(), json_key(), mutation_value(now)).prop_map(|(a, k, v)| Mutation::SetKey(a, k, v)),
        (at(), at()).prop_map(|(a, i)| Mutation::RemoveItem(a, i)),
    ]
    .boxed()
}

/// JSON pointers of every node of `v`, in pre-order.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    out.push(here.clone());
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{here}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{here}/{escaped}"), out);
            }
        }
        _ => {}
    }
}

/// Applies a mutation in place.
pub fn apply(root: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(root, String::new(), &mut all);
    let node = |at: &prop::sample::Index| all[at.index(all.len())].clone();
    match mutation {
        Mutation::Replace(at, v) => *root.pointer_mut(&node(at)).unwrap() = v.clone(),
        Mutation::RemoveKey(at, key) => {
            if let Some(Value::Object(map)) = root.pointer_mut(&node(at)) {
                if !map.is_empty() {
                    let k = map.keys().nth(key.index(map.len())).unwrap().clone();
                    map.remove(&k);
                }
            }
        }
        Mutation::SetKey(at, k, v) => {
            if let Some(Value::Object(map)) = root.pointer_mut(&node(at)) {
                map.insert(k.clone(), v.clone());
            }
        }
        Mutation::RemoveItem(at, i) => {
            if let Some(Value::Array(items)) = root.pointer_mut(&node(at)) {
                if !items.is_empty() {
                    items.remove(i.index(items.len()));
                }
            }
        }
    }
}
