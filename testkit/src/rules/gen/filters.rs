//! Strategies for valid filters: a leaf per field kind and operator, with values from the pools that
//! make it come out both true and false, grouped into AND/OR trees.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

use crate::rules::pools::{DEVICE_STRINGS, NEEDLES, REGEXES};
use crate::rules::reference::{operators, Kind, FIELDS};

use super::{
    datetime_near, enum_pool, hot_datetime, instant_near, list_values, numbers, rfc3339, strings,
    DAY_COUNTS, EXTRA_EXACT_STRINGS, HOT_DAY_COUNTS, HOT_STRINGS, NUMBERS, TAGS, TAG_NEEDLES,
    UNDECLARED_EXACT, UNDECLARED_HOT, UNDECLARED_NEEDLES, UNDECLARED_REGEXES,
};

// ---------------------------------------------------------------------------------------------------------
// Filters.

/// Operators that take no value.
pub fn is_unary(op: &str) -> bool {
    matches!(op, "isEmpty" | "isNotEmpty" | "isNull" | "isNotNull")
}

fn list_of(pool: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    vec(pool, 0..=max).prop_map(Value::Array).boxed()
}

fn ordered_pair(pool: &'static [f64]) -> BoxedStrategy<Value> {
    (select(pool), select(pool))
        .prop_map(|(a, b)| json!({"from": a.min(b), "to": a.max(b)}))
        .boxed()
}

const UNITS: &[&str] = &["minutes", "hours", "days", "weeks", "months"];

/// A `withinLast` value.
pub(super) fn span() -> BoxedStrategy<Value> {
    (select(vec![1u32, 2, 3, 7, 30]), select(UNITS))
        .prop_map(|(amount, unit)| json!({"amount": amount, "unit": unit}))
        .boxed()
}

/// A relative `before`/`after` value: `"now"` or a span ago or from now (the direction sometimes left to
/// its default).
pub(super) fn relative_time() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(json!("now")),
        4 => (
            select(vec![0u32, 1, 2, 3, 7, 30]),
            select(UNITS),
            select(vec![None, Some("ago"), Some("fromNow")]),
        )
            .prop_map(|(amount, unit, direction)| match direction {
                Some(d) => json!({"amount": amount, "unit": unit, "direction": d}),
                None => json!({"amount": amount, "unit": unit}),
            }),
    ]
    .boxed()
}

/// The value of a leaf `<field of kind> <op> value`; `None` for unary operators.
pub fn value_for(kind: Kind, op: &str, now: i64) -> Option<BoxedStrategy<Value>> {
    if is_unary(op) {
        return None;
    }
    let (positive, _) = crate::rules::reference::positive_of(op);
    Some(match (kind, positive) {
        (Kind::Str, "equals" | "in") => {
            let one = prop_oneof![
                6 => strings(HOT_STRINGS),
                3 => strings(DEVICE_STRINGS),
                1 => strings(EXTRA_EXACT_STRINGS)
            ]
            .boxed();
            if positive == "in" {
                list_of(one, 3)
            } else {
                one
            }
        }
        (Kind::Str, "matches") => strings(REGEXES),
        (Kind::Str, _) => strings(NEEDLES),
        (Kind::Undeclared, "equals" | "in") => {
            let one =
                prop_oneof![1 => strings(UNDECLARED_HOT), 1 => strings(UNDECLARED_EXACT)].boxed();
            if positive == "in" {
                list_of(one, 3)
            } else {
                one
            }
        }
        (Kind::Undeclared, "matches") => strings(UNDECLARED_REGEXES),
        (Kind::Undeclared, _) => strings(UNDECLARED_NEEDLES),
        (Kind::Enum(values), "equals") => strings(enum_pool(values)),
        (Kind::Enum(values), _) => list_of(strings(enum_pool(values)), 3),
        (Kind::Num, "between") => ordered_pair(NUMBERS),
        (Kind::Num, "in") => list_of(numbers(NUMBERS), 3),
        (Kind::Num, _) => numbers(NUMBERS),
        (Kind::DaysSince(_), "between") => ordered_pair(DAY_COUNTS),
        (Kind::DaysSince(_), _) => {
            let one = prop_oneof![
                3 => select(HOT_DAY_COUNTS).prop_map(Value::from),
                2 => numbers(DAY_COUNTS),
            ]
            .boxed();
            if positive == "in" {
                list_of(one, 3)
            } else {
                one
            }
        }
        (Kind::Bool, _) => any::<bool>().prop_map(Value::from).boxed(),
        (Kind::Time, "before" | "after") => prop_oneof![
            1 => datetime_near(now).prop_map(Value::from),
            2 => relative_time(),
        ]
        .boxed(),
        (Kind::Time, "equals") => prop_oneof![3 => hot_datetime(now), 1 => datetime_near(now)]
            .prop_map(Value::from)
            .boxed(),
        (Kind::Time, "greaterThan" | "greaterThanOrEquals" | "lessThan" | "lessThanOrEquals") => {
            prop_oneof![1 => hot_datetime(now), 2 => datetime_near(now)]
                .prop_map(Value::from)
                .boxed()
        }
        (Kind::Time, "between") => (instant_near(now), instant_near(now))
            .prop_flat_map(|(a, b)| (rfc3339(a.min(b)), rfc3339(a.max(b))))
            .prop_map(|(from, to)| json!({"from": from, "to": to}))
            .boxed(),
        (Kind::Time, _) => span(),
        (Kind::List, "contains") => strings(TAG_NEEDLES),
        (Kind::List, "equals") => prop_oneof![
            3 => select(list_values()),
            1 => list_of(strings(TAGS), 2),
        ]
        .boxed(),
        (Kind::List, _) => list_of(
            prop_oneof![4 => strings(TAGS), 1 => Just(json!("none"))].boxed(),
            2,
        ),
    })
}

/// The leaf `field op value`. A unary operator sometimes carries an explicit `"value": null`.
pub fn leaf_with(
    field: &'static str,
    kind: Kind,
    op: &'static str,
    now: i64,
) -> BoxedStrategy<Value> {
    match value_for(kind, op, now) {
        Some(value) => value
            .prop_map(move |v| json!({"field": field, "operator": op, "value": v}))
            .boxed(),
        None => any::<bool>()
            .prop_map(move |explicit_null| {
                if explicit_null {
                    json!({"field": field, "operator": op, "value": null})
                } else {
                    json!({"field": field, "operator": op})
                }
            })
            .boxed(),
    }
}

/// A leaf on any field with any operator valid for it.
pub fn leaf(now: i64) -> BoxedStrategy<Value> {
    leaf_among(FIELDS.to_vec(), now)
}

/// A leaf on one of `fields` with any operator valid for it.
pub fn leaf_among(fields: Vec<(&'static str, Kind)>, now: i64) -> BoxedStrategy<Value> {
    select(fields)
        .prop_flat_map(move |(field, kind)| {
            select(operators(kind)).prop_flat_map(move |op| leaf_with(field, kind, op, now))
        })
        .boxed()
}

/// A leaf whose truth can change with time alone: a relative `before`/`after`, `withinLast`,
/// `notWithinLast`, or a comparison of a `daysSince…` field.
pub fn time_leaf(now: i64) -> BoxedStrategy<Value> {
    let dated = select(vec!["enrolledAt", "lastSeenAt", "custom.installedAt"]);
    prop_oneof![
        (dated.clone(), select(vec!["withinLast", "notWithinLast"]))
            .prop_flat_map(move |(field, op)| leaf_with(field, Kind::Time, op, now)),
        (dated, select(vec!["before", "after"]), relative_time())
            .prop_map(|(field, op, v)| { json!({"field": field, "operator": op, "value": v}) }),
        (
            select(vec!["daysSinceLastSeen", "daysSinceEnrolled"]),
            select(&operators(Kind::DaysSince("lastSeenAt"))[..9]),
        )
            .prop_flat_map(move |(field, op)| leaf_with(
                field,
                Kind::DaysSince("lastSeenAt"),
                op,
                now
            )),
    ]
    .boxed()
}

pub(super) fn group(children: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (select(vec!["AND", "OR"]), vec(children, 1..=4))
        .prop_map(|(op, conditions)| json!({"operator": op, "conditions": conditions}))
        .boxed()
}

/// A filter whose leaves come from `leaf`: a root group with nested groups, at most four levels deep.
pub fn filter_of(leaf: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let tree = leaf.prop_recursive(3, 24, 4, group).boxed();
    group(tree)
}

/// A smaller filter, at most three levels deep: in a big random tree, some condition that never changes
/// usually decides the result, and time would rarely matter.
fn small_filter_of(leaf: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    let tree = leaf.prop_recursive(2, 8, 3, group).boxed();
    group(tree)
}

/// A random valid filter over every field and operator.
pub fn filter(now: i64) -> BoxedStrategy<Value> {
    filter_of(leaf(now))
}

/// A random valid filter that depends on time: mostly time leaves, and at least one in the root group;
/// a third are just one or two time conditions, whose flips are the easiest to get wrong at boundaries.
pub fn time_filter(now: i64) -> BoxedStrategy<Value> {
    let mixed = prop_oneof![5 => time_leaf(now), 1 => leaf(now)].boxed();
    let nested = (
        small_filter_of(mixed),
        time_leaf(now),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut filter, extra, at)| {
            let conditions = filter["conditions"].as_array_mut().unwrap();
            let i = at.index(conditions.len() + 1);
            conditions.insert(i, extra);
            filter
        });
    prop_oneof![
        1 => (select(vec!["AND", "OR"]), vec(time_leaf(now), 1..=2))
            .prop_map(|(op, conditions)| json!({"operator": op, "conditions": conditions})),
        2 => nested,
    ]
    .boxed()
}
