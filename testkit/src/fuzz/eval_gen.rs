//! The `eval_vs_reference` generators: a valid filter, a device document and an instant, built from the
//! input's bytes as a sequence of choices (`arbitrary::Unstructured`), with values from the pools that make
//! conditions come out both true and false.

use arbitrary::Unstructured;
use chrono::{FixedOffset, SecondsFormat, TimeDelta, TimeZone, Utc};
use serde_json::{json, Map, Value};

use crate::rules::pools::{DAY_COUNTS, DEVICE_STRINGS, INSTANT_DELTAS, NEEDLES, REGEXES};
use crate::rules::reference;
use crate::rules::reference::{operators, Kind, DAY, FIELDS};

use super::ms;

// =========================================================================================================
// eval_vs_reference: generators driven by the input's bytes.

pub(super) type Gen<T> = arbitrary::Result<T>;

fn pick<T: Copy>(u: &mut Unstructured<'_>, items: &[T]) -> Gen<T> {
    u.choose(items).copied()
}

/// Chooses an arm by weight.
fn weighted(u: &mut Unstructured<'_>, weights: &[u32]) -> Gen<usize> {
    let total: u32 = weights.iter().sum();
    let mut x = u.int_in_range(0..=total - 1)?;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return Ok(i);
        }
        x -= w;
    }
    Ok(weights.len() - 1)
}

/// Characters whose case mapping is where case-insensitive comparisons go wrong: ASCII, `ß`/`ẞ`, dotted
/// and dotless i, the Kelvin and Ohm signs, final sigma, a combining dot, ligatures, title case.
const ALPHABET: &[char] = &[
    'a', 'b', 'e', 'k', 's', 'w', 'i', 'A', 'B', 'E', 'K', 'S', 'W', 'I', '-', '0', '1', '.', ' ',
    'ß', 'ẞ', 'ä', 'Ä', 'İ', 'ı', '\u{307}', '\u{212A}', '\u{2126}', 'ω', 'Ω', 'σ', 'ς', 'Σ', 'ǅ',
    'ǆ', 'Ǆ', 'ﬀ', 'Ⅻ', 'ⅻ', 'ⓐ', 'Ⓐ', 'Ꭰ', 'ꭰ', '\u{1E9E}', 'ŉ', 'ΐ',
];

/// A pattern from the shared pool or [`EXTRA_REGEXES`].
fn pick_regex<'a>(u: &mut Unstructured<'a>) -> Gen<&'static str> {
    let i = u.choose_index(REGEXES.len() + EXTRA_REGEXES.len())?;
    Ok(REGEXES
        .get(i)
        .copied()
        .unwrap_or_else(|| EXTRA_REGEXES[i - REGEXES.len()]))
}

/// Patterns beyond the shared pool ([`REGEXES`]).
const EXTRA_REGEXES: &[&str] = &["(?i)σ", "\\b01\\b"];
/// Pieces the regex generator strings together (each a valid regex on its own).
const REGEX_ATOMS: &[&str] = &[
    ".", "\\d", "\\w", "\\s", "\\p{Lu}", "\\p{Ll}", "[a-z]", "[ßs]", "[^-]", "\\b", "\\B",
    "(?i:k)", "(?i:ß)", "(?i:σ)", "-", "0", "1",
];
const REGEX_QUANTIFIERS: &[&str] = &["", "", "?", "*", "+", "{0,2}", "{2}", "*?"];
const UNDECLARED_STRINGS: &[&str] = &[
    "r1", "R1", "rack-12", "12", "", "Ärger", "true", "12.5", "-0",
];
const TAGS: &[&str] = &["prod", "PROD", "edge", "Edge", "beta", "ärger", "ÄRGER", ""];
const NUMBERS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 2.5, 3.0, 7.0, 10.0, 100.0, 1e9];
const UNITS: &[&str] = &["minutes", "hours", "days", "weeks", "months"];
/// Offsets in seconds used when writing datetimes.
const OFFSETS: &[i32] = &[
    0, 0, 7_200, -18_000, 19_800, 50_400, -43_200, -34_200, 86_340, -86_340,
];
/// Instants `now` is drawn near: month ends (leap and not), a year end, month starts after short months.
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
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
];
/// `now` stays within these years, so that a span of up to about 100 years never leaves the supported
/// range (where the compiled evaluator saturates and the reference does not).
const NOW_RANGE: (&str, &str) = ("1950-01-01T00:00:00Z", "2090-01-01T00:00:00Z");

fn max_amount(unit: &str) -> u32 {
    match unit {
        "minutes" => 52_596_000,
        "hours" => 876_600,
        "days" => 36_525,
        "weeks" => 5_218,
        _ => 1_200,
    }
}

fn gen_string(u: &mut Unstructured<'_>, max_chars: usize) -> Gen<String> {
    let n = u.int_in_range(0..=max_chars)?;
    (0..n).map(|_| pick(u, ALPHABET)).collect()
}

pub(super) fn gen_now(u: &mut Unstructured<'_>) -> Gen<i64> {
    Ok(match weighted(u, &[6, 2])? {
        0 => {
            let anchor = ms(pick(u, ANCHORS)?);
            let offset = match weighted(u, &[2, 1, 1, 4])? {
                0 => 0,
                1 => 1,
                2 => -1,
                _ => u.int_in_range(-2 * DAY..=2 * DAY)?,
            };
            anchor + offset
        }
        _ => u.int_in_range(ms(NOW_RANGE.0)..=ms(NOW_RANGE.1))?,
    })
}

fn month_shift(t: i64, months: u32, forward: bool) -> i64 {
    reference::shift(t, months, "months", forward)
}

/// An instant near `now`: on and around minute, hour, day and calendar-month boundaries, within about a
/// hundred days, or anywhere in years 2–9998.
fn gen_instant_near(u: &mut Unstructured<'_>, now: i64) -> Gen<i64> {
    Ok(match weighted(u, &[3, 3, 2, 2, 3, 1])? {
        0 => now + pick(u, INSTANT_DELTAS)?,
        1 => now + u.int_in_range(-100 * DAY..=100 * DAY)?,
        2 => {
            let months = u.int_in_range(1..=24)?;
            let forward = u.arbitrary::<bool>()?;
            month_shift(now, months, forward) + u.int_in_range(-1..=1)?
        }
        3 => now - u.int_in_range(-3..=10)? * DAY + u.int_in_range(-1..=1)?,
        4 => now - pick(u, &[0i64, 1, 7])? * DAY - u.int_in_range(0..=DAY - 1)?,
        _ => u.int_in_range(ms("0002-01-01T00:00:00Z")..=ms("9998-12-31T00:00:00Z"))?,
    })
}

/// `t` written as RFC 3339 with some UTC offset, sometimes with sub-millisecond digits (which are
/// truncated when read).
fn gen_rfc3339(u: &mut Unstructured<'_>, t: i64) -> Gen<String> {
    let offset = pick(u, OFFSETS)?;
    let z = u.arbitrary::<bool>()?;
    let micros = if u.arbitrary::<bool>()? {
        u.int_in_range(0..=999)?
    } else {
        0
    };
    let Some(mut dt) = Utc.timestamp_millis_opt(t).single() else {
        return Ok(format!("{t}"));
    };
    dt += TimeDelta::microseconds(micros);
    Ok(if offset == 0 && z {
        dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    } else {
        match FixedOffset::east_opt(offset) {
            Some(tz) => dt
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::AutoSi, false),
            None => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    })
}

fn gen_datetime(u: &mut Unstructured<'_>, now: i64) -> Gen<String> {
    let t = gen_instant_near(u, now)?;
    gen_rfc3339(u, t)
}

fn gen_number(u: &mut Unstructured<'_>, pool: &[f64]) -> Gen<Value> {
    Ok(match weighted(u, &[6, 1, 1])? {
        0 => json!(pick(u, pool)?),
        1 => json!(u.int_in_range(-1000i64..=1000)?),
        _ => {
            let x = f64::from_bits(u.arbitrary::<u64>()?);
            if x.is_finite() {
                json!(x)
            } else {
                json!(pick(u, pool)?)
            }
        }
    })
}

fn gen_str_value(u: &mut Unstructured<'_>, pool: &[&str]) -> Gen<String> {
    Ok(match weighted(u, &[5, 3, 1])? {
        0 => pick(u, pool)?.to_string(),
        1 => gen_string(u, 8)?,
        _ => {
            // Without U+0000: the input contract refuses it in attribute strings (PostgreSQL cannot store
            // it), so a device carrying one is not a valid device (`check_event_decode` covers the refusal).
            let s: String = u.arbitrary()?;
            s.chars().filter(|c| *c != '\0').take(12).collect()
        }
    })
}

fn gen_regex(u: &mut Unstructured<'_>) -> Gen<String> {
    if u.ratio(1, 2)? {
        return Ok(pick_regex(u)?.to_string());
    }
    let mut pattern = String::new();
    if u.ratio(1, 4)? {
        pattern.push_str("(?i)");
    }
    if u.ratio(1, 3)? {
        pattern.push('^');
    }
    let pieces = u.int_in_range(1..=5)?;
    for _ in 0..pieces {
        if u.ratio(1, 2)? {
            pattern.push_str(&regex::escape(&gen_string(u, 3)?));
            pattern.push_str(pick(u, &["", "?", "*"])?);
        } else {
            pattern.push_str(pick(u, REGEX_ATOMS)?);
            pattern.push_str(pick(u, REGEX_QUANTIFIERS)?);
        }
        if u.ratio(1, 8)? {
            pattern.push('|');
        }
    }
    if u.ratio(1, 3)? {
        pattern.push('$');
    }
    // `\b*` and the like are not valid: fall back to a pattern from the pool.
    Ok(if regex::Regex::new(&pattern).is_ok() {
        pattern
    } else {
        pick_regex(u)?.to_string()
    })
}

fn gen_list(
    u: &mut Unstructured<'_>,
    max: usize,
    mut item: impl FnMut(&mut Unstructured<'_>) -> Gen<Value>,
) -> Gen<Value> {
    let n = u.int_in_range(0..=max)?;
    Ok(Value::Array((0..n).map(|_| item(u)).collect::<Gen<_>>()?))
}

/// A valid device value for a stored field of this kind.
fn gen_device_value(u: &mut Unstructured<'_>, kind: Kind, now: i64) -> Gen<Value> {
    Ok(match kind {
        Kind::Str => json!(gen_str_value(u, DEVICE_STRINGS)?),
        Kind::Undeclared => match weighted(u, &[5, 2, 1])? {
            0 => json!(gen_str_value(u, UNDECLARED_STRINGS)?),
            1 => gen_number(u, &[12.0, 12.5, -0.0, 0.0, -3.0])?,
            _ => json!(u.arbitrary::<bool>()?),
        },
        Kind::Enum(values) => json!(pick(u, values)?),
        Kind::Num => gen_number(u, NUMBERS)?,
        Kind::Bool => json!(u.arbitrary::<bool>()?),
        Kind::Time => json!(gen_datetime(u, now)?),
        Kind::List => gen_list(u, 4, |u| Ok(json!(gen_str_value(u, TAGS)?)))?,
        Kind::DaysSince(_) => Value::Null,
    })
}

pub(super) fn gen_device(u: &mut Unstructured<'_>, now: i64) -> Gen<Map<String, Value>> {
    let mut device = Map::new();
    for (name, kind) in FIELDS {
        if matches!(kind, Kind::DaysSince(_)) {
            continue;
        }
        match weighted(u, &[1, 1, 8])? {
            0 => {}
            1 => {
                device.insert(name.to_string(), Value::Null);
            }
            _ => {
                device.insert(name.to_string(), gen_device_value(u, *kind, now)?);
            }
        }
    }
    Ok(device)
}

fn gen_amount(u: &mut Unstructured<'_>, unit: &str, min: u32) -> Gen<u32> {
    Ok(match weighted(u, &[4, 1, 1])? {
        0 => pick(u, &[1u32, 2, 3, 7, 30])?.max(min),
        1 => u.int_in_range(min..=max_amount(unit))?,
        _ => max_amount(unit),
    })
}

fn gen_span(u: &mut Unstructured<'_>) -> Gen<Value> {
    let unit = pick(u, UNITS)?;
    Ok(json!({"amount": gen_amount(u, unit, 1)?, "unit": unit}))
}

fn gen_relative_time(u: &mut Unstructured<'_>) -> Gen<Value> {
    if u.ratio(1, 5)? {
        return Ok(json!("now"));
    }
    let unit = pick(u, UNITS)?;
    let amount = if u.ratio(1, 6)? {
        0
    } else {
        gen_amount(u, unit, 0)?
    };
    Ok(match pick(u, &[None, Some("ago"), Some("fromNow")])? {
        Some(direction) => json!({"amount": amount, "unit": unit, "direction": direction}),
        None => json!({"amount": amount, "unit": unit}),
    })
}

fn ordered(a: Value, b: Value) -> Value {
    let (x, y) = (
        a.as_f64().unwrap_or_default(),
        b.as_f64().unwrap_or_default(),
    );
    if x <= y {
        json!({"from": a, "to": b})
    } else {
        json!({"from": b, "to": a})
    }
}

/// The value of a leaf `<field of kind> <op> value`; `None` for operators that take none.
fn gen_value(u: &mut Unstructured<'_>, kind: Kind, op: &str, now: i64) -> Gen<Option<Value>> {
    if matches!(op, "isEmpty" | "isNotEmpty" | "isNull" | "isNotNull") {
        return Ok(None);
    }
    let (positive, _) = reference::positive_of(op);
    let value = match (kind, positive) {
        (Kind::Str, "equals") => json!(gen_str_value(u, DEVICE_STRINGS)?),
        (Kind::Str, "in") => gen_list(u, 4, |u| Ok(json!(gen_str_value(u, DEVICE_STRINGS)?)))?,
        (Kind::Undeclared, "equals") => json!(gen_str_value(u, UNDECLARED_STRINGS)?),
        (Kind::Undeclared, "in") => {
            gen_list(u, 4, |u| Ok(json!(gen_str_value(u, UNDECLARED_STRINGS)?)))?
        }
        (Kind::Str | Kind::Undeclared, "matches") => json!(gen_regex(u)?),
        (Kind::Str | Kind::Undeclared, _) => json!(gen_str_value(u, NEEDLES)?),
        (Kind::Enum(values), "equals") => json!(pick(u, values)?),
        (Kind::Enum(values), _) => gen_list(u, 4, |u| Ok(json!(pick(u, values)?)))?,
        (Kind::Num, "between") => ordered(gen_number(u, NUMBERS)?, gen_number(u, NUMBERS)?),
        (Kind::Num, "in") => gen_list(u, 4, |u| gen_number(u, NUMBERS))?,
        (Kind::Num, _) => gen_number(u, NUMBERS)?,
        (Kind::DaysSince(_), "between") => {
            ordered(gen_number(u, DAY_COUNTS)?, gen_number(u, DAY_COUNTS)?)
        }
        (Kind::DaysSince(_), "in") => gen_list(u, 4, |u| gen_number(u, DAY_COUNTS))?,
        (Kind::DaysSince(_), _) => gen_number(u, DAY_COUNTS)?,
        (Kind::Bool, _) => json!(u.arbitrary::<bool>()?),
        (Kind::Time, "before" | "after") => {
            if u.ratio(1, 3)? {
                json!(gen_datetime(u, now)?)
            } else {
                gen_relative_time(u)?
            }
        }
        // Absolute instants only.
        (
            Kind::Time,
            "equals" | "greaterThan" | "greaterThanOrEquals" | "lessThan" | "lessThanOrEquals",
        ) => json!(gen_datetime(u, now)?),
        (Kind::Time, "between") => {
            let (a, b) = (gen_instant_near(u, now)?, gen_instant_near(u, now)?);
            json!({"from": gen_rfc3339(u, a.min(b))?, "to": gen_rfc3339(u, a.max(b))?})
        }
        (Kind::Time, _) => gen_span(u)?,
        (Kind::List, "contains") => json!(gen_str_value(u, TAGS)?),
        (Kind::List, _) => gen_list(u, 3, |u| Ok(json!(gen_str_value(u, TAGS)?)))?,
    };
    Ok(Some(value))
}

/// Fields whose conditions can change with time alone.
const TIME_FIELDS: &[(&str, Kind)] = &[
    ("enrolledAt", Kind::Time),
    ("lastSeenAt", Kind::Time),
    ("custom.installedAt", Kind::Time),
    ("daysSinceLastSeen", Kind::DaysSince("lastSeenAt")),
    ("daysSinceEnrolled", Kind::DaysSince("enrolledAt")),
];

/// The datetime operators whose conditions can change truth with time alone, and the null tests.
const TIME_OPERATORS: &[&str] = &[
    "before",
    "after",
    "between",
    "withinLast",
    "notWithinLast",
    "isNull",
    "isNotNull",
];

/// The datetime operators that take an absolute instant only.
const ABSOLUTE_TIME_OPERATORS: &[&str] = &[
    "equals",
    "notEquals",
    "greaterThan",
    "greaterThanOrEquals",
    "lessThan",
    "lessThanOrEquals",
];

/// A leaf on any field with any operator valid for it; with `time_bias`, mostly on the fields of
/// [`TIME_FIELDS`], so that time flips are common.
fn gen_leaf(u: &mut Unstructured<'_>, now: i64, time_bias: bool) -> Gen<Value> {
    let fields = if time_bias && u.ratio(3, 4)? {
        TIME_FIELDS
    } else {
        FIELDS
    };
    let (field, kind) = pick(u, fields)?;
    // On a datetime, the operators that can be relative to now (and the null tests) two times in three,
    // always when time-biased: equality and the comparisons take absolute instants, which never flip.
    let ops = match kind {
        Kind::Time if time_bias || !u.ratio(1, 3)? => TIME_OPERATORS,
        Kind::Time => ABSOLUTE_TIME_OPERATORS,
        _ => operators(kind),
    };
    let op = pick(u, ops)?;
    Ok(match gen_value(u, kind, op, now)? {
        Some(value) => json!({"field": field, "operator": op, "value": value}),
        None if u.ratio(1, 4)? => json!({"field": field, "operator": op, "value": null}),
        None => json!({"field": field, "operator": op}),
    })
}

pub(super) fn gen_group(
    u: &mut Unstructured<'_>,
    now: i64,
    depth: usize,
    budget: &mut usize,
    time_bias: bool,
) -> Gen<Value> {
    let op = pick(u, &["AND", "OR"])?;
    let n = u.int_in_range(1..=4)?;
    let mut conditions = Vec::with_capacity(n);
    for i in 0..n {
        if i > 0 && *budget == 0 {
            break;
        }
        *budget = budget.saturating_sub(1);
        let child = if depth < 4 && u.ratio(1, 4)? {
            gen_group(u, now, depth + 1, budget, time_bias)?
        } else {
            gen_leaf(u, now, time_bias)?
        };
        conditions.push(child);
    }
    Ok(json!({"operator": op, "conditions": conditions}))
}
