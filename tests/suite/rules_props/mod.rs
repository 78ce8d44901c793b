//! Property tests of the rule language (`cohort::rules`) against a deliberately simple reference evaluator
//! ([`reference`]) written from DESIGN.md "Rule semantics".
//!
//! - The compiled evaluator (and its explanations) agree with the reference on random filters, devices and
//!   instants; negative operators are exact complements.
//! - The field index never misses a group whose result changes, and never returns one that references none
//!   of the changed fields.
//! - Time flips: the result is constant until `next_flip`, and asking again at the flip makes progress.
//! - Validation never panics, and a compiled filter's `fields_used` is exactly the fields it mentions.
//!
//! - Regressions: minimal cases of what the properties found, as plain tests (calendar-month spans that
//!   clamp at a month end change truth more than once, which `next_flip` does not expect).
//!
//! Generators ([`gen`]) draw values from small overlapping pools so that every operator comes out both true
//! and false often; `each_operator_yields_both_results` and `index_and_flip_cases_are_not_vacuous` check that
//! they keep doing so. `PROPTEST_CASES=5000 cargo test --test suite rules_props::` runs a deeper search.

mod flips;
mod index;
mod validation;

use std::collections::{BTreeMap, BTreeSet};

use cohort::rules::{compile, Attributes, Catalogue, CompiledFilter, ExplainNode};
use cohort_testkit::rules::gen::catalogue;
use cohort_testkit::rules::reference::{reference_eval, Kind, FIELDS};
use cohort_testkit::rules::{gen, reference};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{json, Map, Value};

/// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deeper run. Failing inputs
/// are saved in one named file beside this module, which every property of it reads back first (proptest's
/// default names the file after the source file of each property).
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/suite/rules_props/proptest-regressions.txt",
        ))),
        ..Config::default()
    }
}

fn compiled(filter: &Value, catalogue: &Catalogue) -> CompiledFilter {
    compile(filter, catalogue)
        .unwrap_or_else(|e| panic!("generated filter {filter} does not compile: {e:?}"))
}

fn attributes(device: &Map<String, Value>, catalogue: &Catalogue) -> Attributes {
    Attributes::from_json(device, catalogue)
        .unwrap_or_else(|e| panic!("generated device {device:?} does not parse: {e:?}"))
}

fn one_leaf(leaf: Value) -> Value {
    json!({"operator": "AND", "conditions": [leaf]})
}

// -------------------------------------------------------------------------------------------------------
// Agreement with the reference.

/// The compiled filter agrees with the reference at `now`: at the root through `evaluate`, and at every node
/// (group and leaf) through the explanation, whose paths must be the nodes' JSON paths. Checking every
/// node, not just the root, keeps a wrong leaf from hiding behind the AND/OR above it.
fn agrees_everywhere(
    filter: &Value,
    f: &CompiledFilter,
    attrs: &Attributes,
    device: &Map<String, Value>,
    now: i64,
    c: &Catalogue,
) -> Result<(), TestCaseError> {
    let got = f.evaluate(attrs, now);
    prop_assert_eq!(
        got,
        reference_eval(filter, device, now),
        "evaluate at {} disagrees with the reference",
        now
    );
    let explanation = f.explain(attrs, now, c);
    prop_assert_eq!(explanation.matches, got, "explain disagrees with evaluate");
    node_agrees(filter, &explanation.root, "$".to_string(), device, now)
}

fn node_agrees(
    filter: &Value,
    node: &ExplainNode,
    path: String,
    device: &Map<String, Value>,
    now: i64,
) -> Result<(), TestCaseError> {
    let expected = reference_eval(filter, device, now);
    match node {
        ExplainNode::Condition {
            path: at, result, ..
        } => {
            prop_assert_eq!(at, &path);
            prop_assert_eq!(
                *result,
                expected,
                "condition {} = {} at {}",
                path,
                filter,
                now
            );
        }
        ExplainNode::Group {
            path: at,
            result,
            conditions,
            ..
        } => {
            prop_assert_eq!(at, &path);
            prop_assert_eq!(*result, expected, "group {} at {}", path, now);
            let children = filter["conditions"].as_array().unwrap();
            prop_assert_eq!(children.len(), conditions.len());
            for (i, (child, node)) in children.iter().zip(conditions).enumerate() {
                node_agrees(child, node, format!("{path}.conditions[{i}]"), device, now)?;
            }
        }
    }
    Ok(())
}

fn agreement_case() -> impl Strategy<Value = (i64, Value, Map<String, Value>)> {
    gen::now().prop_flat_map(|now| (Just(now), gen::filter(now), gen::device(now)))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn compiled_evaluator_agrees_with_the_reference((now, filter, device) in agreement_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        agrees_everywhere(&filter, &f, &attrs, &device, now, c)?;
    }
}

/// Positive operator → its negative.
const COMPLEMENTS: &[(&str, &str)] = &[
    ("equals", "notEquals"),
    ("contains", "notContains"),
    ("in", "notIn"),
    ("isEmpty", "isNotEmpty"),
    ("isNull", "isNotNull"),
    ("withinLast", "notWithinLast"),
];

/// A leaf with a positive operator that has a negative, on a field where it is valid.
fn complement_case() -> impl Strategy<Value = (i64, Value, &'static str, Map<String, Value>)> {
    let pairs: Vec<(&'static str, Kind, &'static str, &'static str)> = FIELDS
        .iter()
        .flat_map(|(field, kind)| {
            COMPLEMENTS
                .iter()
                .filter(|(pos, _)| gen::operators(*kind).contains(pos))
                .map(|(pos, neg)| (*field, *kind, *pos, *neg))
        })
        .collect();
    gen::now().prop_flat_map(move |now| {
        (
            Just(now),
            prop::sample::select(pairs.clone()).prop_flat_map(move |(field, kind, pos, neg)| {
                (gen::leaf_with(field, kind, pos, now), Just(neg))
            }),
            gen::device(now),
        )
            .prop_map(|(now, (leaf, neg), device)| (now, leaf, neg, device))
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn negative_operators_are_exact_complements((now, positive, negative_op, device) in complement_case()) {
        let c = catalogue();
        let mut negative = positive.clone();
        negative["operator"] = json!(negative_op);
        let pos = compiled(&one_leaf(positive.clone()), c);
        let neg = compiled(&one_leaf(negative.clone()), c);
        let attrs = attributes(&device, c);
        prop_assert_eq!(neg.evaluate(&attrs, now), !pos.evaluate(&attrs, now), "{} vs {}", positive, negative);
        prop_assert_eq!(
            neg.explain(&attrs, now, c).matches,
            !pos.explain(&attrs, now, c).matches
        );
    }
}

/// A field kind for tallies: enums and day counts as one kind each, whatever their values or source.
fn kind_label(kind: Kind) -> String {
    match kind {
        Kind::Enum(_) => "enum".to_string(),
        Kind::DaysSince(_) => "daysSince".to_string(),
        other => format!("{other:?}"),
    }
}

/// Over a large deterministic sample, every (field kind, operator) pair comes out both true and false often
/// enough that the other properties test something; whole filters too.
#[test]
fn each_operator_yields_both_results() {
    let c = catalogue();
    let mut runner = TestRunner::deterministic();
    let mut tally: BTreeMap<(String, String), (u32, u32)> = BTreeMap::new();
    // Devices are the costly part to generate, so each is tried against many leaves.
    for _ in 0..500 {
        let now = gen::now().new_tree(&mut runner).unwrap().current();
        let device = gen::device(now).new_tree(&mut runner).unwrap().current();
        let attrs = attributes(&device, c);
        let leaves = gen::leaf(now);
        for _ in 0..50 {
            let leaf = leaves.new_tree(&mut runner).unwrap().current();
            let kind = kind_label(reference::kind_of(leaf["field"].as_str().unwrap()));
            let op = leaf["operator"].as_str().unwrap().to_string();
            let filter = one_leaf(leaf);
            let result = compiled(&filter, c).evaluate(&attrs, now);
            assert_eq!(result, reference_eval(&filter, &device, now), "{filter}");
            let entry = tally.entry((kind, op)).or_default();
            if result {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let expected: BTreeSet<(String, String)> = FIELDS
        .iter()
        .flat_map(|(_, kind)| {
            gen::operators(*kind)
                .iter()
                .map(|op| (kind_label(*kind), op.to_string()))
        })
        .collect();
    assert_eq!(
        tally.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every operator of every kind is generated"
    );
    let mut rare = Vec::new();
    for ((kind, op), (t, f)) in &tally {
        let n = t + f;
        // Generators aim at 8% or more of each outcome; 3% of at least 80 samples leaves room for chance.
        if n < 80 || *t * 33 < n || *f * 33 < n {
            rare.push(format!("{kind} {op}: {t} true, {f} false"));
        }
    }
    assert!(
        rare.is_empty(),
        "outcomes too lopsided:\n{}",
        rare.join("\n")
    );

    let filter_case =
        gen::now().prop_flat_map(|now| (Just(now), gen::filter(now), gen::device(now)));
    let (mut t, mut f) = (0, 0);
    for _ in 0..2_000 {
        let (now, filter, device) = filter_case.new_tree(&mut runner).unwrap().current();
        if compiled(&filter, c).evaluate(&attributes(&device, c), now) {
            t += 1;
        } else {
            f += 1;
        }
    }
    assert!(t >= 400 && f >= 400, "whole filters: {t} true, {f} false");
}

// -------------------------------------------------------------------------------------------------------
// The field index.
