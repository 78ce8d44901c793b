//! What the fuzz targets assert, shared by the cargo-fuzz crate (`fuzz/fuzz_targets/*.rs`) and the corpus
//! replay test of the main crate (`tests/fuzz_corpus/main.rs`), so that CI replays every committed corpus
//! file and crash regression through exactly the checks the fuzzer ran.
//!
//! Each `check_*` function takes one raw fuzz input and panics when an invariant does not hold; inputs the
//! target cannot use (bytes that are not JSON, for `filter_parse`) simply return.
//!
//! - [`check_filter_parse`]: bytes → JSON → `validate`/`compile` with the default catalogue (and with the
//!   property tests' catalogue, where the reference evaluator then has to agree).
//! - [`check_eval_vs_reference`]: bytes → a valid filter, a device document and an instant, built from the
//!   bytes as a sequence of choices (`arbitrary::Unstructured`) → the compiled evaluator, its explanation
//!   and its time flips agree with the reference evaluator of `tests/rules_props/reference.rs`.
//! - [`check_event_decode`]: bytes → a Kafka key, a value and a size limit → `cohort::event::decode`, whose
//!   result must satisfy the contract of `src/event/` and `schemas/`.
//!
//! The crate including this file must declare, at its root, `mod reference` (the file
//! `tests/rules_props/reference.rs`), `mod pools` (`tests/rules_props/pools.rs`) and `mod schema` (the file `tests/event_contract/schema.rs`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use arbitrary::Unstructured;
use base64::Engine as _;
use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, TimeZone, Utc};
use cohort::event::{
    dead_letter, decode, encode, DeadLetterReason, DecodeError, DeviceEvent, MAX_DETAIL_BYTES,
    MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
    MAX_REMOVED,
};
use cohort::rules::attrs::{parse_attribute, MAX_ATTRIBUTES};
use cohort::rules::catalogue::{Computed, CustomFieldConfig, DeclaredType};
use cohort::rules::filter::{
    MAX_CONDITIONS, MAX_DEPTH, MAX_LIST_VALUES, MAX_REGEX_BYTES, MAX_VALUE_BYTES,
};
use cohort::rules::time::{MAX_MILLIS, MIN_MILLIS};
use cohort::rules::{
    compile, validate, Attributes, Catalogue, CatalogueConfig, CompiledFilter, ExplainNode,
    FlipTable,
};
use serde_json::{json, Map, Value};

use crate::pools::{DEVICE_STRINGS, NEEDLES, REGEXES};
use crate::reference::{self, operators, reference_eval, Kind, DAY, FIELDS, RING};
use crate::schema::Schema;

// =========================================================================================================
// Shared helpers.

/// The repository root: the including crate is either the main crate or `fuzz/`.
fn repo_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("schemas").is_dir() {
        dir
    } else {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    }
}

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad constant datetime {s}: {e}"))
        .timestamp_millis()
}

/// The property tests' catalogue: built-ins plus `custom.cpu` (number), `custom.beta` (boolean),
/// `custom.ring` (enum) and `custom.installedAt` (datetime); the reference evaluator knows these kinds.
/// A fresh one per input, because resolving an undeclared `custom.<key>` interns it.
pub fn test_catalogue() -> Catalogue {
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

/// Whether `f` agrees with the reference at `now`: at the root through `evaluate`, and at every node
/// through the explanation (whose paths must be the nodes' JSON paths).
fn agrees_with_reference(
    filter: &Value,
    f: &CompiledFilter,
    attrs: &Attributes,
    device: &Map<String, Value>,
    now: i64,
    c: &Catalogue,
) {
    let got = f.evaluate(attrs, now);
    let want = reference_eval(filter, device, now);
    assert_eq!(
        got, want,
        "evaluate disagrees with the reference at {now}: filter {filter}, device {device:?}"
    );
    let explanation = f.explain(attrs, now, c);
    assert_eq!(explanation.matches, got, "explain disagrees with evaluate");
    node_agrees(filter, &explanation.root, "$".to_string(), device, now);
}

fn node_agrees(
    filter: &Value,
    node: &ExplainNode,
    path: String,
    device: &Map<String, Value>,
    now: i64,
) {
    let expected = reference_eval(filter, device, now);
    match node {
        ExplainNode::Condition {
            path: at, result, ..
        } => {
            assert_eq!(at, &path);
            assert_eq!(
                *result, expected,
                "condition {path} = {filter} at {now}, device {device:?}"
            );
        }
        ExplainNode::Group {
            path: at,
            result,
            conditions,
            ..
        } => {
            assert_eq!(at, &path);
            assert_eq!(*result, expected, "group {path} at {now}");
            let children = filter["conditions"].as_array().expect("a group");
            assert_eq!(children.len(), conditions.len());
            for (i, (child, node)) in children.iter().zip(conditions).enumerate() {
                node_agrees(child, node, format!("{path}.conditions[{i}]"), device, now);
            }
        }
    }
}

/// The explanation's tree has the filter's shape and paths, and each group's result follows from its
/// children's (AND: all, OR: any).
fn explanation_is_consistent(filter: &Value, node: &ExplainNode, path: String) {
    match node {
        ExplainNode::Condition { path: at, .. } => {
            assert_eq!(at, &path);
            assert!(filter.get("field").is_some(), "{path} is not a condition");
        }
        ExplainNode::Group {
            path: at,
            operator,
            result,
            conditions,
        } => {
            assert_eq!(at, &path);
            let children = filter["conditions"].as_array().expect("a group");
            assert_eq!(children.len(), conditions.len(), "{path}");
            assert_eq!(Some(*operator), filter["operator"].as_str(), "{path}");
            let expected = if *operator == "AND" {
                conditions.iter().all(ExplainNode::result)
            } else {
                conditions.iter().any(ExplainNode::result)
            };
            assert_eq!(
                *result, expected,
                "group {path} does not follow its children"
            );
            for (i, (child, node)) in children.iter().zip(conditions).enumerate() {
                explanation_is_consistent(child, node, format!("{path}.conditions[{i}]"));
            }
        }
    }
}

/// Whether some leaf's truth can change with time alone: `withinLast`, `notWithinLast`, a relative
/// `before`/`after`, or a comparison (not a null test) of a `daysSince…` field.
fn json_is_time_dependent(filter: &Value, c: &Catalogue) -> bool {
    let Some(node) = filter.as_object() else {
        return false;
    };
    if let Some(field) = node.get("field").and_then(Value::as_str) {
        let op = node["operator"].as_str().unwrap_or_default();
        return match op {
            "withinLast" | "notWithinLast" => true,
            "before" | "after" => !matches!(&node["value"], Value::String(s) if s != "now"),
            "isNull" | "isNotNull" => false,
            _ => c
                .resolve(field)
                .is_ok_and(|id| matches!(c.computed(id), Some(Computed::DaysSince(_)))),
        };
    }
    node.get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|child| json_is_time_dependent(child, c)))
}

/// The stored fields a filter's leaves mention (a computed field counts as its source).
fn mentioned_fields(filter: &Value, c: &Catalogue, out: &mut BTreeSet<String>) {
    let Some(node) = filter.as_object() else {
        return;
    };
    if let Some(field) = node.get("field").and_then(Value::as_str) {
        let id = c
            .resolve(field)
            .expect("a compiled filter's fields resolve");
        let stored = match c.computed(id) {
            Some(Computed::DaysSince(source)) => source,
            None => id,
        };
        out.insert(c.name(stored).into_string());
    } else if let Some(Value::Array(conditions)) = node.get("conditions") {
        for child in conditions {
            mentioned_fields(child, c, out);
        }
    }
}

/// What every accepted filter looks like: the documented shape within the documented limits.
fn accepted_shape(v: &Value, depth: usize, leaves: &mut usize) {
    let node = v
        .as_object()
        .expect("every node of an accepted filter is an object");
    if node.contains_key("field") {
        *leaves += 1;
        for key in node.keys() {
            assert!(
                matches!(key.as_str(), "field" | "operator" | "value"),
                "accepted a condition with key {key:?}"
            );
        }
        let op = node["operator"].as_str().expect("operator is a string");
        let limit = if op == "matches" {
            MAX_REGEX_BYTES
        } else {
            MAX_VALUE_BYTES
        };
        let strings_within = |s: &Value| s.as_str().is_none_or(|s| s.len() <= limit);
        match node.get("value") {
            Some(Value::Array(items)) => {
                assert!(
                    items.len() <= MAX_LIST_VALUES,
                    "accepted a list of {}",
                    items.len()
                );
                assert!(
                    items.iter().all(strings_within),
                    "accepted a long list item"
                );
            }
            Some(value) => assert!(strings_within(value), "accepted a long value"),
            None => {}
        }
        return;
    }
    assert!(depth <= MAX_DEPTH, "accepted a group at depth {depth}");
    for key in node.keys() {
        assert!(
            matches!(key.as_str(), "operator" | "conditions"),
            "accepted a group with key {key:?}"
        );
    }
    assert!(matches!(node["operator"].as_str(), Some("AND" | "OR")));
    let children = node["conditions"]
        .as_array()
        .expect("conditions is an array");
    assert!(!children.is_empty(), "accepted an empty group");
    for child in children {
        accepted_shape(child, depth + 1, leaves);
    }
}

/// Compiles `filter` and checks what validation promises: `validate` is empty exactly when `compile`
/// succeeds, errors carry a `$…` path and a message, compiling again gives the same answer, and an
/// accepted filter has the documented shape and limits and knows the fields it uses.
fn checked_compile(filter: &Value, c: &Catalogue) -> Option<CompiledFilter> {
    let errors = validate(filter, c);
    match compile(filter, c) {
        Ok(f) => {
            assert!(
                errors.is_empty(),
                "validate: {errors:?}, but compile succeeded"
            );
            assert!(compile(filter, c).is_ok(), "compile is not deterministic");
            assert_eq!(f.source(), filter);
            let mut leaves = 0;
            accepted_shape(filter, 1, &mut leaves);
            assert!(leaves <= MAX_CONDITIONS, "accepted {leaves} conditions");
            let mut mentioned = BTreeSet::new();
            mentioned_fields(filter, c, &mut mentioned);
            let names: Vec<String> = mentioned.into_iter().collect();
            assert_eq!(f.field_names(), names.as_slice(), "field_names of {filter}");
            assert_eq!(
                f.stored_field_names(c),
                names,
                "stored_field_names of {filter}"
            );
            let ids: Vec<_> = names
                .iter()
                .map(|n| c.resolve(n).expect("resolves"))
                .collect();
            let mut sorted = ids.clone();
            sorted.sort();
            assert_eq!(
                f.fields_used(),
                sorted.as_slice(),
                "fields_used of {filter}"
            );
            assert_eq!(
                f.is_time_dependent(),
                json_is_time_dependent(filter, c),
                "is_time_dependent of {filter}"
            );
            Some(f)
        }
        Err(e) => {
            assert!(!e.is_empty(), "compile failed with no error");
            assert_eq!(e, errors, "validate and compile disagree");
            for error in &e {
                assert!(error.path.starts_with('$'), "error path {:?}", error.path);
                assert!(!error.message.is_empty(), "empty message at {}", error.path);
            }
            assert_eq!(
                compile(filter, c).err(),
                Some(e),
                "errors are not deterministic"
            );
            None
        }
    }
}

/// Evaluation of a compiled filter on one device at one instant: no panic, the explanation agrees, and
/// the time flip keeps its promise (the result is constant on `[now, flip)`; a filter that does not depend
/// on time has no flip and the same result at any instant).
fn evaluation_is_consistent(
    filter: &Value,
    f: &CompiledFilter,
    attrs: &Attributes,
    now: i64,
    c: &Catalogue,
) {
    let result = f.evaluate(attrs, now);
    let explanation = f.explain(attrs, now, c);
    assert_eq!(
        explanation.matches, result,
        "explain disagrees with evaluate"
    );
    explanation_is_consistent(filter, &explanation.root, "$".to_string());
    match f.next_flip(attrs, now) {
        Some(flip) => {
            assert!(
                f.is_time_dependent(),
                "a flip for a filter that ignores time"
            );
            assert!(flip > now, "flip {flip} is not after now {now}");
            assert!(
                flip <= MAX_MILLIS,
                "flip {flip} is beyond the supported range"
            );
            assert_eq!(
                f.evaluate(attrs, flip - 1),
                result,
                "changed before the flip"
            );
            let middle = now + (flip - 1 - now) / 2;
            assert_eq!(f.evaluate(attrs, middle), result, "changed at {middle}");
        }
        None if !f.is_time_dependent() => {
            for later in [now + 1, now + 400 * DAY, now - 400 * DAY] {
                assert_eq!(
                    f.evaluate(attrs, later),
                    result,
                    "a filter that ignores time changed"
                );
            }
        }
        None => {}
    }
}

// =========================================================================================================
// filter_parse

/// Instants `filter_parse` evaluates at.
const PARSE_NOWS: &[&str] = &["2024-02-29T23:59:59.999Z", "2024-06-15T08:30:00.250Z"];

/// A device with every field of the property tests' catalogue set, valid for both catalogues and for the
/// reference evaluator.
fn full_device() -> Map<String, Value> {
    json!({
        "hostname": "web-01",
        "displayName": "Straße-7",
        "status": "online",
        "osType": "linux",
        "osVersion": "6.1",
        "agentVersion": "2.4.1",
        "platform": "rpi-4",
        "firmwareVersion": "2.4.1",
        "uptimeSeconds": 86400,
        "enrolledAt": "2023-01-10T09:30:00Z",
        "lastSeenAt": "2024-06-13T11:00:00+02:00",
        "tags": ["prod", "Edge", "ÄRGER"],
        "siteId": "",
        "custom.cpu": 2.5,
        "custom.beta": true,
        "custom.ring": "canary",
        "custom.installedAt": "2024-02-29T12:00:00Z",
        "custom.rack": "r1",
        "custom.owner": 12
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// A device made of the filter's own values (where they are valid attribute values), so that equality and
/// membership conditions of an arbitrary filter can come out true.
fn device_from_filter(filter: &Value, c: &Catalogue, out: &mut Map<String, Value>) {
    let Some(node) = filter.as_object() else {
        return;
    };
    if let Some(Value::Array(children)) = node.get("conditions") {
        for child in children {
            device_from_filter(child, c, out);
        }
    }
    let (Some(Value::String(field)), Some(value)) = (node.get("field"), node.get("value")) else {
        return;
    };
    let mut candidates = vec![value.clone()];
    match value {
        Value::Array(items) => candidates.extend(items.iter().take(4).cloned()),
        Value::Object(range) => candidates.extend(range.get("from").cloned()),
        _ => {}
    }
    for candidate in candidates {
        if out.len() < 64
            && !out.contains_key(field)
            && matches!(parse_attribute(c, field, &candidate), Ok((_, Some(_))))
        {
            out.insert(field.clone(), candidate);
        }
    }
}

fn parse_device(device: &Map<String, Value>, c: &Catalogue) -> Attributes {
    Attributes::from_json(device, c)
        .unwrap_or_else(|e| panic!("harness: device {device:?} does not parse: {e:?}"))
}

/// Whether the reference evaluator knows every field the filter mentions.
fn reference_knows(filter: &Value) -> bool {
    let Some(node) = filter.as_object() else {
        return false;
    };
    match node.get("field") {
        Some(Value::String(field)) => {
            field.starts_with("custom.") || FIELDS.iter().any(|(name, _)| name == field)
        }
        Some(_) => false,
        None => node
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(reference_knows)),
    }
}

/// Fuzz target `filter_parse`: arbitrary bytes, parsed as JSON, as a filter.
pub fn check_filter_parse(data: &[u8]) {
    let Ok(filter) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let nows: Vec<i64> = PARSE_NOWS.iter().map(|s| ms(s)).collect();

    // The default catalogue, as the API validates with.
    let c = Catalogue::default();
    if let Some(f) = checked_compile(&filter, &c) {
        let mut own = Map::new();
        device_from_filter(&filter, &c, &mut own);
        let devices = [Map::new(), full_device_for(&c), own];
        for device in &devices {
            let attrs = parse_device(device, &c);
            for &now in &nows {
                evaluation_is_consistent(&filter, &f, &attrs, now, &c);
            }
        }
    }

    // The property tests' catalogue, where the reference evaluator says what a valid filter means.
    let c = test_catalogue();
    if let Some(f) = checked_compile(&filter, &c) {
        if !reference_knows(&filter) {
            return;
        }
        let mut own = Map::new();
        device_from_filter(&filter, &c, &mut own);
        let devices = [Map::new(), full_device(), own];
        in_fresh_thread(|| {
            for device in &devices {
                let attrs = parse_device(device, &c);
                for &now in &nows {
                    agrees_with_reference(&filter, &f, &attrs, device, now, &c);
                    evaluation_is_consistent(&filter, &f, &attrs, now, &c);
                }
            }
        });
    }
}

/// [`full_device`] without the attributes the catalogue `c` does not accept (the default catalogue has
/// no declared custom fields, so `custom.cpu` is an undeclared string there and `2.5` is its text).
fn full_device_for(c: &Catalogue) -> Map<String, Value> {
    full_device()
        .into_iter()
        .filter(|(k, v)| parse_attribute(c, k, v).is_ok())
        .collect()
}

// =========================================================================================================
// eval_vs_reference: generators driven by the input's bytes.

type Gen<T> = arbitrary::Result<T>;

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
const DAY_COUNTS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 7.0, 30.0, 31.0, 365.0];
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

fn gen_now(u: &mut Unstructured<'_>) -> Gen<i64> {
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
    const DELTAS: &[i64] = &[
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
    Ok(match weighted(u, &[3, 3, 2, 2, 3, 1])? {
        0 => now + pick(u, DELTAS)?,
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

fn gen_device(u: &mut Unstructured<'_>, now: i64) -> Gen<Map<String, Value>> {
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

fn gen_group(
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

/// One `eval_vs_reference` case.
#[derive(Debug)]
pub struct EvalCase {
    pub now: i64,
    pub filter: Value,
    pub device: Map<String, Value>,
    /// Fractions (of `u16::MAX`) of the way to the next flip at which the result is checked.
    pub probes: Vec<u16>,
}

impl EvalCase {
    pub fn generate(u: &mut Unstructured<'_>) -> Gen<Self> {
        let now = gen_now(u)?;
        let time_bias = u.ratio(1, 2)?;
        // Smaller filters when time matters: in a big tree some condition that never changes usually
        // decides the result.
        let mut budget = if time_bias { 6 } else { 24 };
        let filter = gen_group(u, now, 1, &mut budget, time_bias)?;
        let device = gen_device(u, now)?;
        let probes = (0..4).map(|_| u.arbitrary()).collect::<Gen<_>>()?;
        Ok(Self {
            now,
            filter,
            device,
            probes,
        })
    }
}

/// Fuzz target `eval_vs_reference`: the input's bytes choose a valid filter, a device and an instant.
pub fn check_eval_vs_reference(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = EvalCase::generate(&mut u) else {
        return;
    };
    in_fresh_thread(|| check_eval_case(&case));
}

/// Runs `f` on a thread of its own. The reference evaluator caches every regex it compiles in a
/// thread-local map that is never emptied: over millions of fuzz inputs on one thread that would grow
/// until the fuzzer's memory limit, a harness artefact rather than a finding. A panic in `f` still
/// reaches the fuzzer (its panic hook aborts) and the replay test (the scope re-raises it).
fn in_fresh_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(f);
    });
}

pub fn check_eval_case(case: &EvalCase) {
    let c = test_catalogue();
    let EvalCase {
        now,
        filter,
        device,
        probes,
    } = case;
    let f = compile(filter, &c)
        .unwrap_or_else(|e| panic!("harness: generated filter {filter} does not compile: {e:?}"));
    let attrs = Attributes::from_json(device, &c)
        .unwrap_or_else(|e| panic!("harness: generated device {device:?} does not parse: {e:?}"));
    agrees_with_reference(filter, &f, &attrs, device, *now, &c);
    assert_eq!(
        f.is_time_dependent(),
        json_is_time_dependent(filter, &c),
        "is_time_dependent of {filter}"
    );

    // Time: the result is constant until the next flip, the reference agrees at and around each flip,
    // and asking again at the flip makes progress.
    let mut t = *now;
    for step in 0..6 {
        let held = f.evaluate(&attrs, t);
        let Some(flip) = f.next_flip(&attrs, t) else {
            if !f.is_time_dependent() {
                for later in [t + 1, t + 40 * DAY] {
                    assert_eq!(
                        f.evaluate(&attrs, later),
                        held,
                        "a filter that ignores time changed"
                    );
                }
            }
            break;
        };
        assert!(
            f.is_time_dependent(),
            "a flip for a filter that ignores time"
        );
        assert!(flip > t, "step {step}: next flip {flip} is not after {t}");
        assert!(flip <= MAX_MILLIS, "step {step}: flip {flip} out of range");
        assert_eq!(
            reference_eval(filter, device, flip - 1),
            held,
            "step {step}: the reference changed before the flip {flip} (from {t}): {filter}, device {device:?}"
        );
        for p in probes {
            let inside =
                t + ((flip - 1 - t) as i128 * i128::from(*p) / i128::from(u16::MAX)) as i64;
            assert_eq!(
                reference_eval(filter, device, inside),
                held,
                "step {step}: the reference changed at {inside}, before the flip {flip} (from {t}): {filter}, device {device:?}"
            );
        }
        if flip > MAX_MILLIS - 200 * 365 * DAY {
            // Far beyond `now`: the reference shifts without saturating there.
            break;
        }
        agrees_with_reference(filter, &f, &attrs, device, flip, &c);
        t = flip;
    }

    // The worker's wake-ups: never after a flip, and the reference holds between two of them.
    let table = FlipTable::new([&f]);
    let mut t = *now;
    for step in 0..6 {
        let held = reference_eval(filter, device, t);
        let wake = table.next(&attrs, t);
        if let (Some(flip), wake) = (f.next_flip(&attrs, t), wake) {
            assert!(
                wake.is_some_and(|w| w <= flip),
                "step {step}: wake-up {wake:?} is not at or before the flip {flip} (from {t}): {filter}, device {device:?}"
            );
        }
        let Some(w) = wake else {
            break;
        };
        assert!(
            w > t && w <= MAX_MILLIS,
            "step {step}: wake-up {w} (from {t})"
        );
        if w > MAX_MILLIS - 200 * 365 * DAY {
            break;
        }
        for p in probes
            .iter()
            .map(|p| i128::from(*p))
            .chain([i128::from(u16::MAX)])
        {
            let inside = t + ((w - 1 - t) as i128 * p / i128::from(u16::MAX)) as i64;
            assert_eq!(
                reference_eval(filter, device, inside),
                held,
                "step {step}: the reference changed at {inside}, before the wake-up {w} (from {t}): {filter}, device {device:?}"
            );
        }
        t = w;
    }
}

// =========================================================================================================
// event_decode

/// The size limits `event_decode` decodes with, chosen by the input's second byte: the configuration's
/// default `worker.max_event_bytes`, the examples' limit, a tiny one, and a large one.
const MAX_BYTES_CHOICES: [usize; 4] = [65_536, 4_096, 64, 1 << 20];

/// How an `event_decode` input is laid out:
/// - byte 0 (mod 4) says what the Kafka key is: `0` none, `1` the `deviceId` of the payload (when it has
///   one; so that accepted events are common), `2` the bytes up to the first `\n` of the rest (which is
///   then the payload), `3` none, and the message is a tombstone (no value);
/// - byte 1 (mod 4) chooses the size limit from [`MAX_BYTES_CHOICES`];
/// - the rest is the message value.
///
/// ASCII digits make readable seeds: `10{"eventId": …}` is an event keyed by its device, limit 65,536.
pub struct EventInput<'a> {
    pub key: Option<Vec<u8>>,
    pub payload: Option<&'a [u8]>,
    pub max_bytes: usize,
}

impl<'a> EventInput<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&mode, rest) = data.split_first()?;
        let (&limit, rest) = rest.split_first()?;
        let max_bytes = MAX_BYTES_CHOICES[usize::from(limit % 4)];
        Some(match mode % 4 {
            0 => Self {
                key: None,
                payload: Some(rest),
                max_bytes,
            },
            1 => {
                let key = serde_json::from_slice::<Value>(rest)
                    .ok()
                    .and_then(|v| v.get("deviceId")?.as_str().map(|s| s.as_bytes().to_vec()));
                Self {
                    key,
                    payload: Some(rest),
                    max_bytes,
                }
            }
            2 => {
                let (key, payload) = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
                    None => (Vec::new(), rest),
                };
                Self {
                    key: Some(key),
                    payload: Some(payload),
                    max_bytes,
                }
            }
            _ => Self {
                key: None,
                payload: None,
                max_bytes,
            },
        })
    }
}

thread_local! {
    // `Schema` caches its patterns in a `RefCell`, so each thread loads its own.
    static EVENT_SCHEMA: Schema =
        Schema::load(repo_root().join("schemas/device-attribute-changes.schema.json"));
    static DEAD_LETTER_SCHEMA: Schema =
        Schema::load(repo_root().join("schemas/dead-letter.schema.json"));
}

fn event_schema_errors(value: &Value) -> Vec<String> {
    EVENT_SCHEMA.with(|schema| schema.errors(value))
}

fn dead_letter_schema_errors(value: &Value) -> Vec<String> {
    DEAD_LETTER_SCHEMA.with(|schema| schema.errors(value))
}

fn valid_id(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// Fuzz target `event_decode`: see [`EventInput`] for the layout.
pub fn check_event_decode(data: &[u8]) {
    let Some(input) = EventInput::parse(data) else {
        return;
    };
    let catalogue = Catalogue::default();
    let key = input.key.as_deref();
    let result = decode(key, input.payload, &catalogue, input.max_bytes);
    // Decoding is deterministic, also once the event's custom fields are interned.
    assert_eq!(
        decode(key, input.payload, &catalogue, input.max_bytes),
        result,
        "decode is not deterministic"
    );
    match result {
        Ok(event) => accepted_event(&event, key, input.payload, input.max_bytes, &catalogue),
        Err(error) => refused_event(&error, key, input.payload, input.max_bytes, &catalogue),
    }
}

fn accepted_event(
    event: &DeviceEvent,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    max_bytes: usize,
    c: &Catalogue,
) {
    let payload = payload.expect("a tombstone is never accepted");
    assert!(!payload.is_empty() && payload.len() <= max_bytes);
    assert!(
        valid_id(&event.event_id, MAX_EVENT_ID_CHARS),
        "eventId {:?}",
        event.event_id
    );
    assert!(
        valid_id(&event.org_id, MAX_ORG_ID_CHARS),
        "orgId {:?}",
        event.org_id
    );
    assert!(
        valid_id(&event.device_id, MAX_DEVICE_ID_CHARS),
        "deviceId {:?}",
        event.device_id
    );
    assert!(event.sequence >= 0, "sequence {}", event.sequence);
    if let Some(key) = key {
        assert_eq!(key, event.device_id.as_bytes(), "accepted with another key");
    }
    if let Some(Some(lock)) = &event.firmware_lock {
        assert!(
            valid_id(lock, MAX_FIRMWARE_LOCK_CHARS),
            "firmwareLock {lock:?}"
        );
    }
    if let Some(t) = event.occurred_at {
        assert!((MIN_MILLIS..=MAX_MILLIS).contains(&t), "occurredAt {t}");
    }
    // Canonical form: `set` strictly sorted by field, `removed` strictly sorted, no field in both, no
    // computed field in either.
    assert!(
        event.set.windows(2).all(|w| w[0].0 < w[1].0),
        "set is not sorted and unique"
    );
    assert!(
        event.removed.windows(2).all(|w| w[0] < w[1]),
        "removed is not sorted and unique"
    );
    for (field, _) in &event.set {
        assert!(
            event.removed.binary_search(field).is_err(),
            "a field both set and removed"
        );
    }
    for field in event.changed_fields() {
        assert!(c.computed(field).is_none(), "a computed field changes");
    }
    assert!(event.set.len() <= MAX_ATTRIBUTES);
    assert!(event.removed.len() <= MAX_REMOVED + MAX_ATTRIBUTES);
    if event.register {
        assert!(
            event.set.is_empty()
                && event.removed.is_empty()
                && event.development.is_none()
                && event.firmware_lock.is_none(),
            "a registration carries changes"
        );
    }
    // Whatever the decoder accepts, the published schema accepts.
    let value: Value = serde_json::from_slice(payload).expect("an accepted event is JSON");
    let errors = event_schema_errors(&value);
    assert!(errors.is_empty(), "accepted but schema-invalid: {errors:?}");
    // Re-encoding gives an event the schema accepts and that decodes to the same event.
    let again = encode(&event.to_json(c));
    let errors = event_schema_errors(&serde_json::from_slice(&again).expect("encode gives JSON"));
    assert!(
        errors.is_empty(),
        "re-encoded but schema-invalid: {errors:?}"
    );
    let decoded = decode(
        Some(event.device_id.as_bytes()),
        Some(&again),
        c,
        usize::MAX,
    );
    assert_eq!(
        decoded.as_ref(),
        Ok(event),
        "the re-encoded event decodes differently"
    );
}

fn refused_event(
    error: &DecodeError,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    max_bytes: usize,
    c: &Catalogue,
) {
    use DeadLetterReason::*;
    assert!(
        matches!(
            error.reason,
            EmptyPayload
                | Oversize
                | MalformedJson
                | InvalidEvent
                | InvalidAttributes
                | KeyMismatch
        ),
        "decode decided {:?}, a worker reason",
        error.reason
    );
    assert!(!error.detail.is_empty(), "no detail for {:?}", error.reason);
    assert!(
        error.detail.len() <= MAX_DETAIL_BYTES + '…'.len_utf8(),
        "detail of {} bytes",
        error.detail.len()
    );
    assert!(
        !error.detail.chars().any(char::is_control),
        "control character in {:?}",
        error.detail
    );

    // The reason follows the documented order of checks.
    let expected_early = match payload {
        None | Some([]) => Some(EmptyPayload),
        Some(p) if p.len() > max_bytes => Some(Oversize),
        Some(p) if serde_json::from_slice::<Value>(p).is_err() => Some(MalformedJson),
        Some(_) => None,
    };
    match expected_early {
        Some(reason) => assert_eq!(error.reason, reason, "{}", error.detail),
        None => assert!(
            matches!(error.reason, InvalidEvent | InvalidAttributes | KeyMismatch),
            "{:?} for well-formed JSON within the limit: {}",
            error.reason,
            error.detail
        ),
    }
    // The key is checked last: without a key, a key mismatch decodes, and any other failure stays.
    let keyless = decode(None, payload, c, max_bytes);
    if error.reason == KeyMismatch {
        let event = keyless.expect("a key mismatch decodes without the key");
        assert!(key.is_some_and(|k| k != event.device_id.as_bytes()));
    } else {
        assert_eq!(
            keyless.as_ref().err(),
            Some(error),
            "the key changed a non-key failure"
        );
    }

    // Every failure makes a dead letter the schema accepts, that keeps (a bounded prefix of) the value.
    let message = dead_letter("dlq", "in", 1, 2, key, payload, error, max_bytes);
    assert_eq!(message.key.as_deref(), key);
    assert_eq!(
        message.header_value("cohort-dead-letter-reason"),
        Some(error.reason.as_str())
    );
    assert!(
        message.payload.len() <= max_bytes.saturating_add(8192),
        "a dead letter of {} bytes for a limit of {max_bytes}",
        message.payload.len()
    );
    let body: Value = serde_json::from_slice(&message.payload).expect("a dead letter is JSON");
    let errors = dead_letter_schema_errors(&body);
    assert!(
        errors.is_empty(),
        "dead letter is schema-invalid: {errors:?}"
    );
    let original = payload.unwrap_or_default();
    assert_eq!(body["payloadBytes"].as_u64(), Some(original.len() as u64));
    let kept: Vec<u8> = match (&body["payload"], body.get("payloadBase64")) {
        (Value::String(s), None) => s.as_bytes().to_vec(),
        (Value::Null, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("payloadBase64 is base64"),
        (Value::Null, None) => {
            assert!(
                payload.is_none(),
                "a value went missing from its dead letter"
            );
            Vec::new()
        }
        other => panic!("dead letter payload fields {other:?}"),
    };
    assert!(
        original.starts_with(&kept),
        "the dead letter's payload is not a prefix of the value"
    );
    assert_eq!(
        body["truncated"].as_bool(),
        Some(kept.len() < original.len())
    );
}
