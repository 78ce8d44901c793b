//! What the fuzz targets assert, shared by the cargo-fuzz crate (`fuzz/fuzz_targets/*.rs`) and the corpus
//! replay of the integration suites (`tests/suite/fuzz_corpus.rs`), so that CI replays every committed
//! corpus file and crash regression through exactly the checks the fuzzer ran.
//!
//! Each `check_*` function takes one raw fuzz input and panics when an invariant does not hold; inputs the
//! target cannot use (bytes that are not JSON, for `filter_parse`) simply return.
//!
//! - [`check_filter_parse`]: bytes → JSON → `validate`/`compile` with the default catalogue (and with the
//!   property tests' catalogue, where the reference evaluator then has to agree).
//! - [`check_eval_vs_reference`]: bytes → a valid filter, a device document and an instant, built from the
//!   bytes as a sequence of choices (`arbitrary::Unstructured`) → the compiled evaluator, its explanation
//!   and its time flips agree with the reference evaluator ([`crate::rules::reference`]).
//! - [`check_event_decode`]: bytes → a Kafka key, a value and a size limit → `cohort::event::decode`, whose
//!   result must satisfy the contract of `src/event/` and `schemas/`.
//!
//! Each target's checks are a module of their own (`filter_parse`, `eval` with its generators `eval_gen`,
//! `event_decode`); this module holds the helpers they share.

mod eval;
mod eval_gen;
mod event_decode;
mod filter_parse;

pub use eval::*;
pub use event_decode::*;
pub use filter_parse::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub use arbitrary::Unstructured;
use chrono::DateTime;
use cohort::rules::catalogue::Computed;
use cohort::rules::filter::{
    MAX_CONDITIONS, MAX_DEPTH, MAX_LIST_VALUES, MAX_REGEX_BYTES, MAX_VALUE_BYTES,
};
use cohort::rules::time::MAX_MILLIS;
use cohort::rules::{compile, validate, Attributes, Catalogue, CompiledFilter, ExplainNode};
use serde_json::{Map, Value};

pub use crate::rules::pools::test_catalogue;
use crate::rules::reference::{reference_eval, DAY};

// =========================================================================================================
// Shared helpers.

/// The repository root: the harness lives in `testkit/`, one level below it.
fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("bad constant datetime {s}: {e}"))
        .timestamp_millis()
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
