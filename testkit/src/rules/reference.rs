//! A deliberately simple reference evaluator, written from DESIGN.md "Rule semantics" and the operator table
//! and value shapes in `src/rules/filter.rs`, without looking at how cohort evaluates.
//!
//! It interprets the JSON filter directly against the JSON device document: no compilation, no interning,
//! no fast paths. It allocates freely and re-parses everything on every call, so that each rule reads like
//! the sentence in the design it encodes. It assumes the filter is valid (the generators only make valid
//! ones) and panics on anything else.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Months, TimeZone, Utc};
use serde_json::{Map, Value};

/// Milliseconds in a day.
pub const DAY: i64 = 86_400_000;

/// What the reference needs to know about a field: how to read its value from a device document.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A declared string: device values are JSON strings.
    Str,
    /// An undeclared `custom.<key>`: a string, but a device may report a number or boolean, which counts as
    /// its JSON text (`12` is `"12"`).
    Undeclared,
    /// A closed set of strings.
    Enum(&'static [&'static str]),
    Num,
    Bool,
    /// An RFC 3339 datetime string with any offset.
    Time,
    /// An array of strings.
    List,
    /// Computed: whole days since the named datetime field.
    DaysSince(&'static str),
}

pub const STATUS: &[&str] = &["online", "offline", "maintenance", "decommissioned"];
pub const OS_TYPE: &[&str] = &[
    "windows", "macos", "linux", "android", "ios", "rtos", "other",
];
pub const RING: &[&str] = &["canary", "early", "broad"];

/// Every field the tests use: the built-ins, the computed ones, four declared custom fields (number,
/// boolean, enum, datetime) and two undeclared custom strings.
pub const FIELDS: &[(&str, Kind)] = &[
    ("hostname", Kind::Str),
    ("displayName", Kind::Str),
    ("status", Kind::Enum(STATUS)),
    ("osType", Kind::Enum(OS_TYPE)),
    ("osVersion", Kind::Str),
    ("agentVersion", Kind::Str),
    ("platform", Kind::Str),
    ("firmwareVersion", Kind::Str),
    ("uptimeSeconds", Kind::Num),
    ("enrolledAt", Kind::Time),
    ("lastSeenAt", Kind::Time),
    ("tags", Kind::List),
    ("siteId", Kind::Str),
    ("daysSinceLastSeen", Kind::DaysSince("lastSeenAt")),
    ("daysSinceEnrolled", Kind::DaysSince("enrolledAt")),
    ("custom.cpu", Kind::Num),
    ("custom.beta", Kind::Bool),
    ("custom.ring", Kind::Enum(RING)),
    ("custom.installedAt", Kind::Time),
    ("custom.rack", Kind::Undeclared),
    ("custom.owner", Kind::Undeclared),
];

/// The kind of a field by name; any other `custom.<key>` is an undeclared custom string.
pub fn kind_of(name: &str) -> Kind {
    match FIELDS.iter().find(|(n, _)| *n == name) {
        Some((_, kind)) => *kind,
        None if name.starts_with("custom.") => Kind::Undeclared,
        None => panic!("the reference does not know field {name}"),
    }
}

/// The stored field a field's value comes from (a computed field's source).
pub fn stored_field(name: &str) -> &str {
    match kind_of(name) {
        Kind::DaysSince(source) => source,
        _ => name,
    }
}

/// A device value as the reference sees it.
#[derive(Clone, Debug)]
enum Actual {
    Str(String),
    Num(f64),
    Bool(bool),
    Time(i64),
    List(Vec<String>),
}

/// Whether `filter` matches `device` at `now_ms`.
pub fn reference_eval(filter: &Value, device: &Map<String, Value>, now_ms: i64) -> bool {
    let node = filter.as_object().expect("a filter node is an object");
    if node.contains_key("field") {
        return condition(node, device, now_ms);
    }
    let conditions = node["conditions"].as_array().expect("conditions");
    match node["operator"].as_str() {
        Some("AND") => conditions.iter().all(|c| reference_eval(c, device, now_ms)),
        Some("OR") => conditions.iter().any(|c| reference_eval(c, device, now_ms)),
        other => panic!("bad group operator {other:?}"),
    }
}

/// Every negative operator is the exact complement of its positive.
pub fn positive_of(op: &str) -> (&str, bool) {
    match op {
        "notEquals" => ("equals", true),
        "notContains" => ("contains", true),
        "notIn" => ("in", true),
        "isNotEmpty" => ("isEmpty", true),
        "isNotNull" => ("isNull", true),
        "notWithinLast" => ("withinLast", true),
        other => (other, false),
    }
}

fn condition(node: &Map<String, Value>, device: &Map<String, Value>, now: i64) -> bool {
    let field = node["field"].as_str().expect("field");
    let (op, negated) = positive_of(node["operator"].as_str().expect("operator"));
    let value = node.get("value").unwrap_or(&Value::Null);
    positive(op, value, actual(field, device, now), now) != negated
}

/// The device's value of `field` at `now`; `None` when missing or null.
fn actual(field: &str, device: &Map<String, Value>, now: i64) -> Option<Actual> {
    let kind = kind_of(field);
    if let Kind::DaysSince(source) = kind {
        let Some(Actual::Time(t)) = actual(source, device, now) else {
            return None;
        };
        // Whole days, floored, so a future instant gives a negative count.
        return Some(Actual::Num((now - t).div_euclid(DAY) as f64));
    }
    let v = device.get(field)?;
    if v.is_null() {
        return None;
    }
    Some(match kind {
        Kind::Str | Kind::Enum(_) => Actual::Str(v.as_str().expect("string").to_string()),
        Kind::Undeclared => match v {
            Value::String(s) => Actual::Str(s.clone()),
            Value::Number(n) => Actual::Str(n.to_string()),
            Value::Bool(b) => Actual::Str(b.to_string()),
            other => panic!("bad undeclared custom value {other}"),
        },
        Kind::Num => Actual::Num(v.as_f64().expect("number")),
        Kind::Bool => Actual::Bool(v.as_bool().expect("boolean")),
        Kind::Time => Actual::Time(datetime(v.as_str().expect("datetime"))),
        Kind::List => Actual::List(
            v.as_array()
                .expect("array")
                .iter()
                .map(|s| s.as_str().expect("string item").to_string())
                .collect(),
        ),
        Kind::DaysSince(_) => unreachable!(),
    })
}

/// UTC milliseconds of an RFC 3339 datetime; finer precision is truncated.
pub fn datetime(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad datetime {s:?}: {e}"))
        .timestamp_millis()
}

fn lower(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number value")
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("list value")
        .iter()
        .map(|s| s.as_str().expect("string in list"))
        .collect()
}

/// The positive operator `op` with filter value `value` on the device value `actual`.
fn positive(op: &str, value: &Value, actual: Option<Actual>, now: i64) -> bool {
    // The two operators that hold on a missing attribute.
    match op {
        "isNull" => return actual.is_none(),
        "isEmpty" => {
            return match &actual {
                None => true,
                Some(Actual::Str(s)) => s.is_empty(),
                Some(Actual::List(items)) => items.is_empty(),
                Some(other) => panic!("isEmpty on {other:?}"),
            }
        }
        _ => {}
    }
    // Every other positive operator is false on a missing attribute.
    let Some(actual) = actual else {
        return false;
    };
    match (op, &actual) {
        // Exact and case-sensitive.
        ("equals", Actual::Str(s)) => value.as_str() == Some(s.as_str()),
        ("equals", Actual::Num(x)) => *x == num(value),
        ("equals", Actual::Bool(b)) => value.as_bool() == Some(*b),
        // The same instant, whatever the offsets; both sides truncated to milliseconds.
        ("equals", Actual::Time(t)) => *t == datetime(value.as_str().unwrap()),
        // The same set of strings: order and repeats ignored, case-sensitive.
        ("equals", Actual::List(items)) => {
            let have: BTreeSet<&str> = items.iter().map(String::as_str).collect();
            have == strings(value).into_iter().collect()
        }
        ("in", Actual::Str(s)) => strings(value).contains(&s.as_str()),
        ("in", Actual::Num(x)) => value.as_array().unwrap().iter().any(|v| num(v) == *x),
        // Case-insensitive.
        ("contains", Actual::Str(s)) => lower(s).contains(&lower(value.as_str().unwrap())),
        ("startsWith", Actual::Str(s)) => lower(s).starts_with(&lower(value.as_str().unwrap())),
        ("endsWith", Actual::Str(s)) => lower(s).ends_with(&lower(value.as_str().unwrap())),
        // On an array, some element equals the value ignoring case.
        ("contains", Actual::List(items)) => {
            let want = lower(value.as_str().unwrap());
            items.iter().any(|item| lower(item) == want)
        }
        // Unanchored.
        ("matches", Actual::Str(s)) => regex(value.as_str().unwrap()).is_match(s),
        ("hasAny", Actual::List(items)) => {
            strings(value).iter().any(|w| items.iter().any(|i| i == w))
        }
        ("hasAll", Actual::List(items)) => {
            strings(value).iter().all(|w| items.iter().any(|i| i == w))
        }
        ("greaterThan", Actual::Num(x)) => *x > num(value),
        ("greaterThanOrEquals", Actual::Num(x)) => *x >= num(value),
        ("lessThan", Actual::Num(x)) => *x < num(value),
        ("lessThanOrEquals", Actual::Num(x)) => *x <= num(value),
        // Absolute instants only.
        ("greaterThan", Actual::Time(t)) => *t > datetime(value.as_str().unwrap()),
        ("greaterThanOrEquals", Actual::Time(t)) => *t >= datetime(value.as_str().unwrap()),
        ("lessThan", Actual::Time(t)) => *t < datetime(value.as_str().unwrap()),
        ("lessThanOrEquals", Actual::Time(t)) => *t <= datetime(value.as_str().unwrap()),
        // Inclusive at both ends.
        ("between", Actual::Num(x)) => num(&value["from"]) <= *x && *x <= num(&value["to"]),
        ("between", Actual::Time(t)) => {
            let from = datetime(value["from"].as_str().unwrap());
            let to = datetime(value["to"].as_str().unwrap());
            from <= *t && *t <= to
        }
        // Strict.
        ("before", Actual::Time(t)) => *t < instant(value, now),
        ("after", Actual::Time(t)) => *t > instant(value, now),
        ("withinLast", Actual::Time(t)) => {
            let amount = value["amount"].as_u64().unwrap() as u32;
            *t >= shift(now, amount, value["unit"].as_str().unwrap(), false)
        }
        (op, actual) => panic!("the reference has no rule for {op} on {actual:?}"),
    }
}

/// The compiled regex for a pattern, cached per thread: compiling Unicode classes is slow in debug builds.
fn regex(pattern: &str) -> regex::Regex {
    thread_local! {
        static CACHE: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).expect("valid regex"))
            .clone()
    })
}

/// The instant a `before`/`after` value names at `now`: an RFC 3339 datetime, `"now"`, or
/// `{"amount", "unit", "direction": "ago"|"fromNow"}` (direction defaults to ago).
fn instant(value: &Value, now: i64) -> i64 {
    match value {
        Value::String(s) if s == "now" => now,
        Value::String(s) => datetime(s),
        Value::Object(span) => {
            let amount = span["amount"].as_u64().unwrap() as u32;
            let unit = span["unit"].as_str().unwrap();
            let forward = match span.get("direction").and_then(Value::as_str) {
                None | Some("ago") => false,
                Some("fromNow") => true,
                Some(other) => panic!("bad direction {other}"),
            };
            shift(now, amount, unit, forward)
        }
        other => panic!("bad relative time {other}"),
    }
}

/// `t` plus or minus `amount` units; months are calendar months, clamped to the end of the month.
pub fn shift(t: i64, amount: u32, unit: &str, forward: bool) -> i64 {
    let fixed = |unit_ms: i64| {
        let d = unit_ms * i64::from(amount);
        if forward {
            t + d
        } else {
            t - d
        }
    };
    match unit {
        "minutes" => fixed(60_000),
        "hours" => fixed(3_600_000),
        "days" => fixed(DAY),
        "weeks" => fixed(7 * DAY),
        "months" => {
            let dt = Utc.timestamp_millis_opt(t).single().expect("in range");
            let shifted = if forward {
                dt.checked_add_months(Months::new(amount))
            } else {
                dt.checked_sub_months(Months::new(amount))
            };
            shifted.expect("in range").timestamp_millis()
        }
        other => panic!("bad unit {other}"),
    }
}

/// Every operator valid for a field of this kind (the table in `src/rules/filter.rs`). Shared by the
/// property tests' generators and the fuzz checks, which both build filters the reference can judge.
pub fn operators(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Str | Kind::Undeclared => &[
            "equals",
            "notEquals",
            "contains",
            "notContains",
            "startsWith",
            "endsWith",
            "matches",
            "in",
            "notIn",
            "isEmpty",
            "isNotEmpty",
            "isNull",
            "isNotNull",
        ],
        Kind::Enum(_) => &["equals", "notEquals", "in", "notIn", "isNull", "isNotNull"],
        Kind::Num | Kind::DaysSince(_) => &[
            "equals",
            "notEquals",
            "greaterThan",
            "greaterThanOrEquals",
            "lessThan",
            "lessThanOrEquals",
            "between",
            "in",
            "notIn",
            "isNull",
            "isNotNull",
        ],
        Kind::Bool => &["equals", "notEquals", "isNull", "isNotNull"],
        Kind::Time => &[
            "equals",
            "notEquals",
            "greaterThan",
            "greaterThanOrEquals",
            "lessThan",
            "lessThanOrEquals",
            "before",
            "after",
            "between",
            "withinLast",
            "notWithinLast",
            "isNull",
            "isNotNull",
        ],
        Kind::List => &[
            "equals",
            "notEquals",
            "contains",
            "notContains",
            "hasAny",
            "hasAll",
            "isEmpty",
            "isNotEmpty",
            "isNull",
            "isNotNull",
        ],
    }
}
