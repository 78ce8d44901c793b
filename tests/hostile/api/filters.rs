//! Filter cases: every limit of `cohort::rules::filter` at and one past it (depth, conditions, list
//! values, value and regex sizes), and catastrophic-looking regexes, which the linear-time engine runs.

use cohort::rules::filter::{
    MAX_CONDITIONS, MAX_DEPTH, MAX_LIST_VALUES, MAX_REGEX_BYTES, MAX_REGEX_COMPILED_BYTES,
    MAX_VALUE_BYTES,
};
use serde_json::{json, Value};

use super::bodies::short;
use super::{bad, case, ok, post, with_json, Case, Key, Known, LIMITS_ORG};

pub(super) fn leaf() -> Value {
    json!({"field": "hostname", "operator": "isNull"})
}

pub(super) fn one(condition: Value) -> Value {
    json!({"operator": "OR", "conditions": [condition]})
}

/// A filter `depth` groups deep.
pub(super) fn deep(depth: usize) -> Value {
    let mut filter = leaf();
    for _ in 0..depth {
        filter = json!({"operator": "AND", "conditions": [filter]});
    }
    filter
}

pub(super) fn conditions(n: usize) -> Value {
    json!({"operator": "OR", "conditions": vec![leaf(); n]})
}

pub(super) fn list(n: usize) -> Value {
    let values: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    one(json!({"field": "hostname", "operator": "in", "value": values}))
}

pub(super) fn equals(value: &str) -> Value {
    one(json!({"field": "hostname", "operator": "equals", "value": value}))
}

pub(super) fn matches(pattern: &str) -> Value {
    one(json!({"field": "hostname", "operator": "matches", "value": pattern}))
}

/// The largest `n` for which `\w{n}` compiles within the filter's compiled-size limit, with the builder
/// settings `cohort::rules::filter` documents.
fn largest_compiling_repetition() -> usize {
    let compiles = |n: usize| {
        regex::RegexBuilder::new(&format!("\\w{{{n}}}"))
            .size_limit(MAX_REGEX_COMPILED_BYTES)
            .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
            .build()
            .is_ok()
    };
    // Bracket by doubling, then bisect: few compilations of programs near the limit.
    let (mut lo, mut hi) = (1, 2);
    assert!(compiles(lo));
    while compiles(hi) {
        (lo, hi) = (hi, hi * 2);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if compiles(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Every filter limit, at the limit (accepted: created in `limits` and previewed) and one past it (a 400
/// naming the limit at its path, on create, preview and update).
pub(super) fn filter_limits(k: &Known) -> Vec<Case> {
    let n = largest_compiling_repetition();
    let nested = format!("${}", ".conditions[0]".repeat(MAX_DEPTH));
    let limits: Vec<(&str, Value, Value, String)> = vec![
        (
            "MAX_DEPTH",
            deep(MAX_DEPTH),
            deep(MAX_DEPTH + 1),
            format!("{nested}: Filter is nested too deeply (maximum depth {MAX_DEPTH})"),
        ),
        (
            "MAX_CONDITIONS",
            conditions(MAX_CONDITIONS),
            conditions(MAX_CONDITIONS + 1),
            format!("$: Filter has too many conditions (maximum {MAX_CONDITIONS})"),
        ),
        (
            "MAX_LIST_VALUES",
            list(MAX_LIST_VALUES),
            list(MAX_LIST_VALUES + 1),
            format!("$.conditions[0].value: List has too many values (maximum {MAX_LIST_VALUES})"),
        ),
        (
            "MAX_VALUE_BYTES",
            equals(&"v".repeat(MAX_VALUE_BYTES)),
            equals(&"v".repeat(MAX_VALUE_BYTES + 1)),
            format!("$.conditions[0].value: Value is too long (maximum {MAX_VALUE_BYTES} bytes)"),
        ),
        (
            "MAX_VALUE_BYTES in two-byte characters",
            equals(&"é".repeat(MAX_VALUE_BYTES / 2)),
            equals(&"é".repeat(MAX_VALUE_BYTES / 2 + 1)),
            format!("$.conditions[0].value: Value is too long (maximum {MAX_VALUE_BYTES} bytes)"),
        ),
        (
            "MAX_REGEX_BYTES",
            matches(&"a".repeat(MAX_REGEX_BYTES)),
            matches(&"a".repeat(MAX_REGEX_BYTES + 1)),
            format!(
                "$.conditions[0].value: Regular expression is too long (maximum {MAX_REGEX_BYTES} bytes)"
            ),
        ),
        (
            "MAX_REGEX_COMPILED_BYTES",
            matches(&format!("\\w{{{n}}}")),
            matches(&format!("\\w{{{}}}", n + 1)),
            format!(
                "$.conditions[0].value: Regular expression is too large once compiled (maximum {MAX_REGEX_COMPILED_BYTES} bytes)"
            ),
        ),
    ];
    let mut cases = Vec::new();
    for (limit, at, past, text) in limits {
        cases.push(case(
            format!("{limit}: at the limit, created"),
            Key::Limits,
            post(
                "/api/v1/groups",
                json!({"name": format!("at {limit}"), "filterConditions": at}),
            ),
            ok(201, vec![("/orgId", json!(LIMITS_ORG))]),
        ));
        cases.push(case(
            format!("{limit}: at the limit, previewed"),
            Key::Acme,
            post("/api/v1/groups/preview", json!({"filterConditions": at})),
            ok(200, vec![("/data/examined", json!(3))]),
        ));
        cases.push(case(
            format!("{limit}: one past, created"),
            Key::Acme,
            post(
                "/api/v1/groups",
                json!({"name": format!("past {limit}"), "filterConditions": past}),
            ),
            bad(format!("Invalid filter: {text}")),
        ));
        cases.push(case(
            format!("{limit}: one past, previewed"),
            Key::Acme,
            post("/api/v1/groups/preview", json!({"filterConditions": past})),
            bad(format!("Invalid filter: {text}")),
        ));
        cases.push(case(
            format!("{limit}: one past, as an update"),
            Key::Acme,
            with_json(
                "PATCH",
                format!("/api/v1/groups/{}", k.dynamic),
                json!({"filterConditions": past}).to_string(),
            ),
            bad(format!("Invalid filter: {text}")),
        ));
    }
    cases
}

/// Regexes that take exponential time in a backtracking engine: accepted, and answered at once with
/// the right count by the linear-time one (dev-1 is 4000 × "a" then "!", dev-2 4000 × "a", dev-3 "xyz").
pub(super) fn catastrophic_regexes() -> Vec<Case> {
    let words: Vec<String> = (0..150).map(|i| format!("w{i:03}")).collect();
    let alternation = format!("^({})$", words.join("|"));
    let long_alternation = (0..260)
        .map(|i| format!("w{i:03}"))
        .collect::<Vec<_>>()
        .join("|");
    let mut cases: Vec<Case> = [
        ("(a+)+$", 1),
        ("^(a|a)*$", 1),
        ("(a|aa)+$", 1),
        ("^(a+)+b", 0),
        ("(\\w+\\s?)*$", 3),
        ("(.*a){25}", 2),
        ("^(([a-z])+.)+[A-Z]([a-z])+$", 0),
        (alternation.as_str(), 0),
    ]
    .into_iter()
    .map(|(pattern, total)| {
        case(
            format!("catastrophic-looking regex {}", short(pattern)),
            Key::Acme,
            post(
                "/api/v1/groups/preview",
                json!({"filterConditions": matches(pattern)}),
            ),
            ok(
                200,
                vec![
                    ("/data/totalCount", json!(total)),
                    ("/data/examined", json!(3)),
                ],
            ),
        )
    })
    .collect();
    cases.push(case(
        "an alternation of 260 words (over MAX_REGEX_BYTES)",
        Key::Acme,
        post(
            "/api/v1/groups/preview",
            json!({"filterConditions": matches(&long_alternation)}),
        ),
        bad(format!(
            "Regular expression is too long (maximum {MAX_REGEX_BYTES} bytes)"
        )),
    ));
    cases.push(case(
        "a repeated alternation too large once compiled",
        Key::Acme,
        post(
            "/api/v1/groups/preview",
            json!({"filterConditions": matches("(\\w|\\d|\\s|[a-zé]){1000}")}),
        ),
        bad("Regular expression is too large once compiled"),
    ));
    for (pattern, text) in [
        ("(", "Invalid regular expression"),
        ("(a)\\1", "Invalid regular expression"),
        ("(?=a)", "Invalid regular expression"),
        ("\\p{Nope}", "Invalid regular expression"),
        ("a{4294967296}", "Invalid regular expression"),
    ] {
        cases.push(case(
            format!("an invalid regex {pattern}"),
            Key::Acme,
            post(
                "/api/v1/groups/preview",
                json!({"filterConditions": matches(pattern)}),
            ),
            bad(text),
        ));
    }
    cases
}
