//! Generators: instants, device documents and valid filters, with values drawn from small, overlapping pools
//! so that conditions come out true about as often as false; plus arbitrary JSON and filter mutations for
//! the validation properties.

mod filters;
mod mutations;

pub use filters::*;
pub use mutations::*;

use std::sync::OnceLock;

use chrono::{DateTime, FixedOffset, Months, SecondsFormat, TimeDelta, TimeZone, Utc};
use cohort::rules::Catalogue;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use serde_json::{json, Map, Value};

pub use crate::rules::pools::test_catalogue;
use crate::rules::pools::{DAY_COUNTS, DEVICE_STRINGS, INSTANT_DELTAS};
pub use crate::rules::reference::operators;
use crate::rules::reference::{Kind, DAY, FIELDS, OS_TYPE};

/// One catalogue shared by the properties that only use the fields of [`FIELDS`] (so nothing new is ever
/// interned in it).
pub fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(test_catalogue)
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
    prop_oneof![
        3 => select(INSTANT_DELTAS).prop_map(move |d| now + d),
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
