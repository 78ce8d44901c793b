//! Generators: instants, device documents and valid filters, with values drawn from small, overlapping pools
//! so that conditions come out true about as often as false; plus arbitrary JSON and filter mutations for
//! the validation properties.

use std::sync::OnceLock;

use chrono::{DateTime, FixedOffset, Months, SecondsFormat, TimeDelta, TimeZone, Utc};
use cohort::rules::catalogue::{CustomFieldConfig, DeclaredType};
use cohort::rules::{Catalogue, CatalogueConfig};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{json, Map, Value};

use crate::pools::{DEVICE_STRINGS, NEEDLES, REGEXES};
pub use crate::reference::operators;
use crate::reference::{Kind, DAY, FIELDS, OS_TYPE, RING};

/// The catalogue of the tests: built-ins plus `custom.cpu` (number), `custom.beta` (boolean),
/// `custom.ring` (enum) and `custom.installedAt` (datetime). `custom.rack` and `custom.owner` stay
/// undeclared (strings).
pub fn new_catalogue() -> Catalogue {
    let declare = |key: &str, ty: DeclaredType, values: &[&str]| CustomFieldConfig {
        key: key.to_string(),
        ty,
        values: values.iter().map(|v| v.to_string()).collect(),
        description: String::new(),
    };
    let config = CatalogueConfig {
        custom_fields: vec![
            declare("cpu", DeclaredType::Number, &[]),
            declare("beta", DeclaredType::Boolean, &[]),
            declare("ring", DeclaredType::Enum, RING),
            declare("installedAt", DeclaredType::Datetime, &[]),
        ],
        ..CatalogueConfig::default()
    };
    Catalogue::from_config(&config).expect("the test catalogue is valid")
}

/// One catalogue shared by the properties that only use the fields of [`FIELDS`] (so nothing new is ever
/// interned in it).
pub fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(new_catalogue)
}

/// Fields a device document can carry (everything but the computed ones).
pub fn stored_fields() -> Vec<(&'static str, Kind)> {
    FIELDS
        .iter()
        .copied()
        .filter(|(_, k)| !matches!(k, Kind::DaysSince(_)))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Pools.

/// Strings devices report most often, so that exact comparisons match often.
const HOT_STRINGS: &[&str] = &["web-01", "WEB-01", "äpfel"];
const EXTRA_EXACT_STRINGS: &[&str] = &["Web-01", "kelvin", "Kelvin"];

const UNDECLARED_DEVICE_STRINGS: &[&str] = &["r1", "R1", "rack-12", "12", "", "Ärger", "true"];
const UNDECLARED_HOT: &[&str] = &["r1", "12"];
const UNDECLARED_EXACT: &[&str] = &[
    "r1", "R1", "12", "12.5", "-0.0", "0", "true", "false", "rack-12", "", "ärger",
];
const UNDECLARED_NEEDLES: &[&str] = &["r", "R1", "12", "-0", ".5", "TRUE", "", "ä", "RACK"];
const UNDECLARED_REGEXES: &[&str] = &["^r", "\\d$", "^-?0", "(?i)true", "^$", "\\."];

const TAGS: &[&str] = &["prod", "PROD", "edge", "Edge", "beta", "ärger", "ÄRGER", ""];
/// Arrays devices report often, and arrays `equals` compares with, so that set equality holds often: the
/// same set in another order, with a repeat, in another case, a subset, and nothing.
fn hot_lists() -> Vec<Value> {
    vec![
        json!(["prod", "edge"]),
        json!(["edge", "prod", "prod"]),
        json!(["Edge", "prod"]),
        json!(["beta"]),
    ]
}
fn list_values() -> Vec<Value> {
    vec![
        json!(["prod", "edge"]),
        json!(["edge", "prod"]),
        json!(["prod", "edge", "edge"]),
        json!(["PROD", "edge"]),
        json!(["beta"]),
        json!(["prod"]),
        json!([]),
    ]
}
const TAG_NEEDLES: &[&str] = &[
    "prod", "Prod", "EDGE", "beta", "ÄRGER", "ärger", "", "none", "pro",
];

/// Filter numbers for stored numbers (`-0.0` included on purpose).
const NUMBERS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 2.5, 3.0, 7.0, 10.0, 100.0];
/// Filter numbers for the computed day counts.
const DAY_COUNTS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 7.0, 30.0, 31.0, 365.0];
/// Day counts devices have most often (see [`instant_near`]), so that day-count equality matches often.
const HOT_DAY_COUNTS: &[i64] = &[0, 1, 7];
/// An instant devices have often (exactly a day before `now`), and datetime `equals` and comparisons name
/// often, so that equality (and the difference between `greaterThan` and `greaterThanOrEquals`) is common.
const HOT_DELTA: i64 = -DAY;

/// UTC offsets (seconds) used when writing datetimes.
const OFFSETS: &[i32] = &[0, 0, 7_200, -18_000, 19_800, 50_400, -43_200, -34_200];

/// Instants `now` is drawn near: month ends (leap and not), a year end, month starts (after a short month,
/// so that calendar-month spans clamp a month later), and ordinary days.
const ANCHORS: &[&str] = &[
    "2024-01-31T12:00:00Z",
    "2024-02-29T23:59:59.999Z",
    "2024-03-31T00:00:00Z",
    "2023-03-31T23:00:00Z",
    "2024-12-31T23:59:00Z",
    "2024-05-01T00:00:00Z",
    "2024-06-15T08:30:00.250Z",
    "2024-10-31T22:00:00+02:00",
    "2024-03-01T00:00:00Z",
    "2023-03-01T06:00:00Z",
];

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn month_shift(t: i64, months: u32, forward: bool) -> i64 {
    let dt = Utc.timestamp_millis_opt(t).unwrap();
    let m = Months::new(months);
    let shifted = if forward {
        dt.checked_add_months(m)
    } else {
        dt.checked_sub_months(m)
    };
    shifted.unwrap().timestamp_millis()
}

// ---------------------------------------------------------------------------------------------------------
// Instants.

/// An evaluation instant near one of the anchors.
pub fn now() -> BoxedStrategy<i64> {
    let offset = prop_oneof![
        2 => Just(0i64),
        1 => Just(1i64),
        1 => Just(-1i64),
        4 => -2 * DAY..2 * DAY,
    ];
    (select(ANCHORS), offset)
        .prop_map(|(anchor, offset)| ms(anchor) + offset)
        .boxed()
}

/// An instant near `now`: on and around minute, hour, day and calendar-month boundaries, or anywhere within
/// about a hundred days.
pub fn instant_near(now: i64) -> BoxedStrategy<i64> {
    let deltas: Vec<i64> = vec![
        0,
        1,
        -1,
        59_999,
        -59_999,
        60_000,
        -60_000,
        3_600_000,
        -3_600_000,
        DAY - 1,
        1 - DAY,
        DAY,
        -DAY,
        DAY + 1,
        -DAY - 1,
        7 * DAY,
        -7 * DAY,
        28 * DAY,
        -28 * DAY,
        30 * DAY,
        -30 * DAY,
        31 * DAY,
        -31 * DAY,
        365 * DAY,
        -365 * DAY,
    ];
    prop_oneof![
        3 => select(deltas).prop_map(move |d| now + d),
        3 => (-100 * DAY..100 * DAY).prop_map(move |d| now + d),
        2 => (1u32..=3, any::<bool>(), -1i64..=1)
            .prop_map(move |(m, forward, eps)| month_shift(now, m, forward) + eps),
        2 => (-3i64..=10, -1i64..=1).prop_map(move |(k, eps)| now - k * DAY + eps),
        // Exactly k whole days ago.
        3 => (select(HOT_DAY_COUNTS), 0..DAY).prop_map(move |(k, r)| now - k * DAY - r),
        2 => Just(now + HOT_DELTA),
    ]
    .boxed()
}

/// `t` written as RFC 3339 with a random UTC offset, sometimes with sub-millisecond digits (which are
/// truncated when read).
pub fn rfc3339(t: i64) -> BoxedStrategy<String> {
    (select(OFFSETS), any::<bool>(), 0i64..1000, any::<bool>())
        .prop_map(move |(offset, z, micros, extra_digits)| {
            let mut dt = Utc.timestamp_millis_opt(t).unwrap();
            if extra_digits {
                dt += TimeDelta::microseconds(micros);
            }
            if offset == 0 && z {
                dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            } else {
                dt.with_timezone(&FixedOffset::east_opt(offset).unwrap())
                    .to_rfc3339_opts(SecondsFormat::AutoSi, false)
            }
        })
        .boxed()
}

fn datetime_near(now: i64) -> BoxedStrategy<String> {
    instant_near(now).prop_flat_map(rfc3339).boxed()
}

/// The instant devices have most often, written with a random offset and precision.
fn hot_datetime(now: i64) -> BoxedStrategy<String> {
    rfc3339(now + HOT_DELTA)
}

// ---------------------------------------------------------------------------------------------------------
// Devices.

fn strings(pool: &'static [&'static str]) -> BoxedStrategy<Value> {
    select(pool).prop_map(Value::from).boxed()
}

fn numbers(pool: &'static [f64]) -> BoxedStrategy<Value> {
    select(pool).prop_map(Value::from).boxed()
}

fn enum_pool(values: &'static [&'static str]) -> &'static [&'static str] {
    // Keep to a few values so that equality is common.
    if values == OS_TYPE {
        &OS_TYPE[..4]
    } else {
        values
    }
}

/// A valid device value for a stored field of this kind.
pub fn device_value(kind: Kind, now: i64) -> BoxedStrategy<Value> {
    match kind {
        Kind::Str => prop_oneof![3 => strings(HOT_STRINGS), 2 => strings(DEVICE_STRINGS)].boxed(),
        Kind::Undeclared => prop_oneof![
            2 => strings(UNDECLARED_HOT),
            3 => strings(UNDECLARED_DEVICE_STRINGS),
            2 => select(vec![json!(12), json!(12.5), json!(-0.0), json!(0), json!(-3)]),
            1 => any::<bool>().prop_map(Value::from),
        ]
        .boxed(),
        Kind::Enum(values) => strings(enum_pool(values)),
        Kind::Num => select(vec![
            json!(0),
            json!(-0.0),
            json!(0.0),
            json!(1),
            json!(2.5),
            json!(3),
            json!(3.0),
            json!(7),
            json!(-1),
            json!(100),
            json!(1e9),
        ])
        .boxed(),
        Kind::Bool => any::<bool>().prop_map(Value::from).boxed(),
        Kind::Time => datetime_near(now).prop_map(Value::from).boxed(),
        Kind::List => prop_oneof![
            3 => vec(select(TAGS), 0..=3).prop_map(|items| json!(items)),
            1 => select(hot_lists()),
        ]
        .boxed(),
        Kind::DaysSince(_) => unreachable!("computed fields are not stored"),
    }
}

/// What a device document says about one field: absent (`None`), `null`, or a value.
pub fn presence(kind: Kind, now: i64) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => device_value(kind, now).prop_map(Some),
    ]
    .boxed()
}

/// A device document: every stored field absent, null or set.
pub fn device(now: i64) -> BoxedStrategy<Map<String, Value>> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = stored_fields()
        .into_iter()
        .map(|(name, kind)| {
            presence(kind, now)
                .prop_map(move |v| v.map(|v| (name.to_string(), v)))
                .boxed()
        })
        .collect();
    fields
        .prop_map(|entries| entries.into_iter().flatten().collect())
        .boxed()
}

/// New values for 1–3 distinct stored fields: `None` removes the field; `Some(null)` also empties it.
pub fn changes(now: i64) -> BoxedStrategy<Vec<(String, Option<Value>)>> {
    changes_among(stored_fields(), now)
}

/// New values for 1–3 distinct fields among `fields` (stored ones).
pub fn changes_among(
    fields: Vec<(&'static str, Kind)>,
    now: i64,
) -> BoxedStrategy<Vec<(String, Option<Value>)>> {
    let most = fields.len().min(3);
    subsequence(fields, 1..=most)
        .prop_flat_map(move |fields| {
            fields
                .into_iter()
                .map(|(name, kind)| {
                    presence(kind, now)
                        .prop_map(move |v| (name.to_string(), v))
                        .boxed()
                })
                .collect::<Vec<_>>()
        })
        .boxed()
}

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
fn span() -> BoxedStrategy<Value> {
    (select(vec![1u32, 2, 3, 7, 30]), select(UNITS))
        .prop_map(|(amount, unit)| json!({"amount": amount, "unit": unit}))
        .boxed()
}

/// A relative `before`/`after` value: `"now"` or a span ago or from now (the direction sometimes left to
/// its default).
fn relative_time() -> BoxedStrategy<Value> {
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
    let (positive, _) = crate::reference::positive_of(op);
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

fn group(children: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
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
