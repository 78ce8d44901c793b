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
//! they keep doing so. `PROPTEST_CASES=5000 cargo test --test rules_props` runs a deeper search.

mod gen;
mod pools;
mod reference;

use std::collections::{BTreeMap, BTreeSet};

use cohort::rules::{
    compile, validate, Attributes, Catalogue, CompiledFilter, ExplainNode, FieldChange, FieldId,
    FieldIndex, FlipTable, Scratch,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{json, Map, Value};

use gen::{catalogue, Mutation};
use reference::{reference_eval, stored_field, Kind, DAY, FIELDS};

/// `cases` per property, unless `PROPTEST_CASES` asks for more (or fewer) for a deeper run. Failing inputs
/// are saved beside this suite (proptest's default would put them in `tests/proptest-regressions/main.txt`,
/// a file every `tests/*/main.rs` suite would share).
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/rules_props/proptest-regressions.txt",
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

#[derive(Clone, Debug)]
struct IndexCase {
    now: i64,
    /// Group `i` gets filter `i`.
    filters: Vec<Value>,
    /// Then: re-upsert a group with another filter (`Some`) or remove it (`None`); ids beyond the initial
    /// groups add new ones.
    edits: Vec<(u32, Option<Value>)>,
    device: Map<String, Value>,
    changes: Vec<(String, Option<Value>)>,
}

/// Filters and changes concentrate on a few "focus" fields (so that changes often matter), with some
/// leaves and changes on any field.
fn index_case() -> impl Strategy<Value = IndexCase> {
    (
        gen::now(),
        prop::sample::subsequence(FIELDS.to_vec(), 2..=4),
    )
        .prop_flat_map(|(now, focus)| {
            let mut stored: Vec<(&'static str, Kind)> = focus
                .iter()
                .map(|(name, kind)| match kind {
                    Kind::DaysSince(source) => (*source, Kind::Time),
                    _ => (*name, *kind),
                })
                .collect();
            stored.sort_by_key(|(name, _)| *name);
            stored.dedup_by_key(|(name, _)| *name);
            let leaves = prop_oneof![4 => gen::leaf_among(focus, now), 1 => gen::leaf(now)].boxed();
            let filter = gen::filter_of(leaves);
            (
                prop::collection::vec(filter.clone(), 1..=12),
                prop::collection::vec((0u32..20, prop::option::weighted(0.7, filter)), 0..=6),
                gen::device(now),
                prop_oneof![4 => gen::changes_among(stored, now), 1 => gen::changes(now)],
            )
                .prop_map(move |(filters, edits, device, changes)| IndexCase {
                    now,
                    filters,
                    edits,
                    device,
                    changes,
                })
        })
}

/// What one index query saw.
struct IndexRun {
    live: BTreeMap<u32, CompiledFilter>,
    before: Attributes,
    after: Attributes,
    changed: Vec<FieldId>,
    candidates: Vec<u32>,
    /// Candidates for the reverse change (after → before), with the same scratch.
    reverse_candidates: Vec<u32>,
}

fn run_index_case(case: &IndexCase) -> IndexRun {
    let c = catalogue();
    let mut index = FieldIndex::new();
    let mut live = BTreeMap::new();
    for (g, filter) in case.filters.iter().enumerate() {
        let f = compiled(filter, c);
        index.upsert(g as u32, &f);
        live.insert(g as u32, f);
    }
    for (g, edit) in &case.edits {
        match edit {
            Some(filter) => {
                let f = compiled(filter, c);
                index.upsert(*g, &f);
                live.insert(*g, f);
            }
            None => {
                index.remove(*g);
                live.remove(g);
            }
        }
    }
    assert_eq!(index.len(), live.len());
    let before = attributes(&case.device, c);
    let mut doc = case.device.clone();
    for (name, value) in &case.changes {
        match value {
            Some(v) => doc.insert(name.clone(), v.clone()),
            None => doc.remove(name),
        };
    }
    let after = attributes(&doc, c);
    let changed: Vec<FieldId> = case
        .changes
        .iter()
        .map(|(name, _)| c.resolve(name).unwrap())
        .collect();
    let forward: Vec<FieldChange<'_>> = changed
        .iter()
        .map(|f| FieldChange {
            field: *f,
            old: before.get(*f),
            new: after.get(*f),
        })
        .collect();
    let backward: Vec<FieldChange<'_>> = changed
        .iter()
        .map(|f| FieldChange {
            field: *f,
            old: after.get(*f),
            new: before.get(*f),
        })
        .collect();
    let mut scratch = Scratch::default();
    let (mut candidates, mut reverse_candidates) = (Vec::new(), Vec::new());
    index.candidates(&forward, case.now, &mut scratch, &mut candidates);
    index.candidates(&backward, case.now, &mut scratch, &mut reverse_candidates);
    IndexRun {
        live,
        before,
        after,
        changed,
        candidates,
        reverse_candidates,
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_group_whose_result_changes_is_a_candidate(case in index_case()) {
        let run = run_index_case(&case);
        for candidates in [&run.candidates, &run.reverse_candidates] {
            let unique: BTreeSet<u32> = candidates.iter().copied().collect();
            prop_assert_eq!(unique.len(), candidates.len(), "candidates repeat a group");
            prop_assert!(unique.iter().all(|g| run.live.contains_key(g)), "a removed group is a candidate");
            for (g, f) in &run.live {
                if f.evaluate(&run.before, case.now) != f.evaluate(&run.after, case.now) {
                    prop_assert!(unique.contains(g), "group {} ({}) changed but is not a candidate", g, f.source());
                }
            }
        }
    }

    #[test]
    fn evaluating_only_candidates_gives_the_same_memberships_as_evaluating_all(case in index_case()) {
        let run = run_index_case(&case);
        let members = |attrs: &Attributes| -> BTreeSet<u32> {
            run.live
                .iter()
                .filter(|(_, f)| f.evaluate(attrs, case.now))
                .map(|(g, _)| *g)
                .collect()
        };
        let mut incremental = members(&run.before);
        for g in &run.candidates {
            if run.live[g].evaluate(&run.after, case.now) {
                incremental.insert(*g);
            } else {
                incremental.remove(g);
            }
        }
        prop_assert_eq!(incremental, members(&run.after));
    }

    #[test]
    fn no_candidate_is_unrelated_to_the_changed_fields(case in index_case()) {
        let run = run_index_case(&case);
        for g in run.candidates.iter().chain(&run.reverse_candidates) {
            let f = &run.live[g];
            prop_assert!(
                f.fields_used().iter().any(|u| run.changed.contains(u)),
                "group {} uses {:?}, none of the changed {:?}", g, f.field_names(), case.changes
            );
        }
    }
}

/// The index and flip generators are not vacuous: changes often change some group's result, and time
/// filters often have a next flip (and sometimes none).
#[test]
fn index_and_flip_cases_are_not_vacuous() {
    let c = catalogue();
    let mut runner = TestRunner::deterministic();
    let (mut changed, mut pruned, total) = (0, 0, 150);
    for _ in 0..total {
        let case = index_case().new_tree(&mut runner).unwrap().current();
        let run = run_index_case(&case);
        if run
            .live
            .values()
            .any(|f| f.evaluate(&run.before, case.now) != f.evaluate(&run.after, case.now))
        {
            changed += 1;
        }
        if run.candidates.len() < run.live.len() {
            pruned += 1;
        }
    }
    eprintln!("index cases: {changed}/{total} change a membership, {pruned}/{total} prune");
    assert!(
        changed * 3 >= total,
        "only {changed} of {total} index cases change a membership"
    );
    let (mut some, mut none, total) = (0, 0, 500);
    for _ in 0..total {
        let (now, filter, device, _) = flip_case().new_tree(&mut runner).unwrap().current();
        match compiled(&filter, c).next_flip(&attributes(&device, c), now) {
            Some(_) => some += 1,
            None => none += 1,
        }
    }
    eprintln!("flip cases: {some} with a flip, {none} without");
    // A time condition that already went its final way (a `withinLast` that is false, a relative `before`
    // that is true, …) never flips again, so flips come in only a third of the cases or so.
    assert!(
        some * 4 >= total && none * 20 >= total,
        "{some} flips, {none} without"
    );
}

// -------------------------------------------------------------------------------------------------------
// Time flips.

const YEAR: i64 = 365 * DAY;

fn flip_case() -> impl Strategy<Value = (i64, Value, Map<String, Value>, Vec<f64>)> {
    gen::now().prop_flat_map(|now| {
        (
            Just(now),
            gen::time_filter(now),
            gen::device(now),
            prop::collection::vec(0.0..1.0f64, 8),
        )
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_result_is_constant_until_the_next_flip((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        prop_assert!(f.is_time_dependent());
        let attrs = attributes(&device, c);
        let at_now = f.evaluate(&attrs, now);
        let flip = f.next_flip(&attrs, now);
        let (end, mut instants) = match flip {
            Some(flip) => {
                prop_assert!(flip > now, "flip {} is not after now {}", flip, now);
                (flip, vec![now, flip - 1, (now + 1).min(flip - 1)])
            }
            None => (now + 5 * YEAR, vec![now + 5 * YEAR - 1]),
        };
        instants.extend(fractions.iter().map(|x| now + ((end - 1 - now) as f64 * x) as i64));
        // The reference agrees at these instants, node by node (the costlier check) …
        for t in &instants {
            agrees_everywhere(&filter, &f, &attrs, &device, *t, c)?;
        }
        if let Some(flip) = flip {
            agrees_everywhere(&filter, &f, &attrs, &device, flip, c)?;
        }
        // … and the result is constant at many more: whole days and calendar months ahead, and UTC
        // midnights (and the millisecond before), where calendar-month spans jump.
        instants.extend((1..=40).map(|k| now + k * DAY));
        instants.extend((1..=24).map(|m| reference::shift(now, m, "months", true)));
        let first_midnight = (now.div_euclid(DAY) + 1) * DAY;
        instants.extend((0..70).flat_map(|k| [first_midnight + k * DAY - 1, first_midnight + k * DAY]));
        for t in instants.into_iter().filter(|t| *t < end) {
            prop_assert_eq!(f.evaluate(&attrs, t), at_now, "changed at {} (now {}, end {})", t, now, end);
        }
    }

    #[test]
    fn the_wake_up_is_never_after_the_flip((now, filter, device, _fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let wake = FlipTable::new([&f]).next(&attrs, now);
        if let Some(w) = wake {
            prop_assert!(w > now, "wake-up {} is not after now {}", w, now);
        }
        match (f.next_flip(&attrs, now), wake) {
            (None, _) => {}
            (Some(flip), Some(w)) => prop_assert!(w <= flip, "wake-up {} is after the flip {}", w, flip),
            (Some(flip), None) => prop_assert!(false, "no wake-up, but a flip at {}", flip),
        }
    }

    /// What the worker does: re-evaluate at each wake-up, and in between nothing changes (checked at the
    /// millisecond before each wake-up, at random instants, and at whole days and UTC midnights).
    #[test]
    fn nothing_changes_between_wake_ups((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let table = FlipTable::new([&f]);
        let mut t = now;
        for step in 0..12 {
            let held = f.evaluate(&attrs, t);
            let end = table.next(&attrs, t);
            let last = end.map_or(t + 5 * YEAR, |w| w - 1);
            prop_assert!(last >= t, "step {}: wake-up {:?} is not after {}", step, end, t);
            let mut instants = vec![last];
            instants.extend(fractions.iter().map(|x| t + ((last - t) as f64 * x) as i64));
            let first_midnight = (t.div_euclid(DAY) + 1) * DAY;
            instants.extend((0..40).flat_map(|k| [first_midnight + k * DAY - 1, first_midnight + k * DAY]));
            for i in instants.into_iter().filter(|i| *i <= last) {
                prop_assert_eq!(f.evaluate(&attrs, i), held, "step {}: changed at {} before the wake-up {:?}", step, i, end);
            }
            let Some(w) = end else { break };
            t = w;
        }
    }

    #[test]
    fn re_evaluating_at_the_flip_makes_progress((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let mut t = now;
        for step in 0..12 {
            let Some(flip) = f.next_flip(&attrs, t) else { break };
            prop_assert!(flip > t, "step {}: next flip {} is not after {}", step, flip, t);
            let held = f.evaluate(&attrs, t);
            prop_assert_eq!(f.evaluate(&attrs, flip - 1), held, "step {}: changed before the flip", step);
            let x = fractions[step % fractions.len()];
            let inside = t + ((flip - 1 - t) as f64 * x) as i64;
            prop_assert_eq!(f.evaluate(&attrs, inside), held, "step {}: changed at {}", step, inside);
            // The flip is a boundary of some time condition: exactly where off-by-one mistakes show.
            agrees_everywhere(&filter, &f, &attrs, &device, flip, c)?;
            t = flip;
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// Validation.

/// The stored fields a filter's leaves mention (a computed field counts as its source), by walking the JSON.
fn mentioned_fields(filter: &Value, out: &mut BTreeSet<String>) {
    let Some(node) = filter.as_object() else {
        return;
    };
    if let Some(field) = node.get("field") {
        out.insert(stored_field(field.as_str().unwrap()).to_string());
    } else if let Some(Value::Array(conditions)) = node.get("conditions") {
        for c in conditions {
            mentioned_fields(c, out);
        }
    }
}

fn check_fields_used(
    filter: &Value,
    f: &CompiledFilter,
    c: &Catalogue,
) -> Result<(), TestCaseError> {
    let mut mentioned = BTreeSet::new();
    mentioned_fields(filter, &mut mentioned);
    let names: BTreeSet<String> = f.field_names().iter().cloned().collect();
    prop_assert_eq!(&names, &mentioned, "field_names of {}", filter);
    prop_assert_eq!(names.len(), f.field_names().len(), "field_names repeat");
    let ids: BTreeSet<FieldId> = mentioned.iter().map(|n| c.resolve(n).unwrap()).collect();
    prop_assert_eq!(
        f.fields_used().to_vec(),
        ids.into_iter().collect::<Vec<_>>()
    );
    Ok(())
}

fn mutation_case() -> impl Strategy<Value = (i64, Value, Vec<Mutation>, Map<String, Value>)> {
    gen::now().prop_flat_map(|now| {
        (
            Just(now),
            gen::filter(now),
            prop::collection::vec(gen::mutation(now), 1..=3),
            gen::device(now),
        )
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn validation_never_panics_on_arbitrary_json(value in gen::arbitrary_json()) {
        // A fresh catalogue: arbitrary custom names are interned, and must not crowd the shared one.
        let c = gen::new_catalogue();
        let errors = validate(&value, &c);
        match compile(&value, &c) {
            Ok(f) => {
                prop_assert!(errors.is_empty());
                check_fields_used(&value, &f, &c)?;
            }
            Err(e) => {
                prop_assert!(!e.is_empty(), "compile failed with no error");
                prop_assert_eq!(e, errors);
            }
        }
    }

    #[test]
    fn validation_never_panics_on_mutated_filters((now, filter, mutations, device) in mutation_case()) {
        let c = gen::new_catalogue();
        let mut mutant = filter;
        for m in &mutations {
            gen::apply(&mut mutant, m);
        }
        match compile(&mutant, &c) {
            Ok(f) => {
                // A mutant that is still valid means what the reference says it means.
                check_fields_used(&mutant, &f, &c)?;
                let attrs = attributes(&device, &c);
                agrees_everywhere(&mutant, &f, &attrs, &device, now, &c)?;
                let _ = f.next_flip(&attrs, now);
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(e.path.starts_with('$'), "error path {:?}", e.path);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn a_compiled_filter_uses_exactly_the_fields_it_mentions(filter in gen::now().prop_flat_map(gen::filter)) {
        let c = catalogue();
        let f = compiled(&filter, c);
        check_fields_used(&filter, &f, c)?;
        prop_assert_eq!(f.is_time_dependent(), is_time_dependent(&filter), "{}", filter);
    }
}

/// Whether some leaf's truth can change with time alone: `withinLast`, `notWithinLast`, a relative
/// `before`/`after`, or a comparison (not a null test) of a `daysSince…` field.
fn is_time_dependent(filter: &Value) -> bool {
    let node = filter.as_object().unwrap();
    if let Some(field) = node.get("field").and_then(Value::as_str) {
        let op = node["operator"].as_str().unwrap();
        return match op {
            "withinLast" | "notWithinLast" => true,
            "before" | "after" => !matches!(&node["value"], Value::String(s) if s != "now"),
            "isNull" | "isNotNull" => false,
            _ => matches!(reference::kind_of(field), Kind::DaysSince(_)),
        };
    }
    node["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(is_time_dependent)
}

// -------------------------------------------------------------------------------------------------------
// Regressions found by the properties above (minimal cases).
//
// Calendar-month spans clamp the day to the end of the month and keep the time of day, so `t - 1 month` is
// not monotone in `t`: at 2024-03-29T23:00Z it is 2024-02-29T23:00Z, at 2024-03-30T00:00Z it is back to
// 2024-02-29T00:00Z. A month-span condition can therefore change truth several times around a month end,
// while `next_flip` searches for one boundary by bisection, as if the change happened once.

/// The first instant in `[from, to)` at which `f`'s result differs from its result at `from`, found by
/// probing every minute (and the millisecond after it), then every millisecond of the minute before the
/// first differing probe. Enough for the hand-written cases below, whose changes last longer than a minute.
fn first_change(f: &CompiledFilter, attrs: &Attributes, from: i64, to: i64) -> Option<i64> {
    let start = f.evaluate(attrs, from);
    let probe = (from..to)
        .step_by(60_000)
        .flat_map(|t| [t, t + 1])
        .find(|t| f.evaluate(attrs, *t) != start)?;
    ((probe - 60_000).max(from)..=probe).find(|t| f.evaluate(attrs, *t) != start)
}

fn single(field: &str, op: &str, value: Value) -> CompiledFilter {
    compiled(
        &one_leaf(json!({"field": field, "operator": op, "value": value})),
        catalogue(),
    )
}

fn device_with(field: &str, value: &str) -> Attributes {
    let doc = json!({ field: value });
    attributes(doc.as_object().unwrap(), catalogue())
}

#[test]
fn next_flip_is_not_later_than_a_month_span_clamped_at_the_month_end_changes() {
    // lastSeenAt withinLast 1 month, last seen 2024-02-29T12:00Z, now 2024-03-01T00:00Z: true now; false
    // from 2024-03-29T12:00:00.001Z (1 month before is 2024-02-29T12:00:00.001Z); true again from
    // 2024-03-30T00:00Z (1 month before is clamped to 2024-02-29T00:00Z); false again from
    // 2024-03-30T12:00:00.001Z; and so on until 2024-04-01T00:00Z.
    let f = single(
        "lastSeenAt",
        "withinLast",
        json!({"amount": 1, "unit": "months"}),
    );
    let attrs = device_with("lastSeenAt", "2024-02-29T12:00:00Z");
    let now = reference::datetime("2024-03-01T00:00:00Z");
    let first = reference::datetime("2024-03-29T12:00:00.001Z");
    assert!(f.evaluate(&attrs, now));
    assert!(!f.evaluate(&attrs, first));
    assert!(f.evaluate(&attrs, first - 1));
    assert_eq!(first_change(&f, &attrs, now, now + 40 * DAY), Some(first));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= first),
        "next_flip at {} is {:?}, but the result already changes at {}",
        cohort::rules::time::format_millis(now),
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(first),
    );
}

#[test]
fn next_flip_is_not_none_while_a_month_span_clamped_at_the_month_end_will_change_again() {
    // Same condition and device, now 2024-03-30T12:00:00.001Z: false now, true again from
    // 2024-03-31T00:00Z.
    let f = single(
        "lastSeenAt",
        "withinLast",
        json!({"amount": 1, "unit": "months"}),
    );
    let attrs = device_with("lastSeenAt", "2024-02-29T12:00:00Z");
    let now = reference::datetime("2024-03-30T12:00:00.001Z");
    let again = reference::datetime("2024-03-31T00:00:00Z");
    assert!(!f.evaluate(&attrs, now));
    assert!(f.evaluate(&attrs, again));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= again),
        "next_flip is {:?}, but the result changes at {}",
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(again),
    );
}

#[test]
fn next_flip_is_not_later_than_a_from_now_month_span_clamped_at_the_month_end_changes() {
    // installedAt after {1 month fromNow}, installed 2024-02-29T06:00Z, now 2024-01-01T00:00Z: true now;
    // false from 2024-01-29T06:00Z (1 month later is 2024-02-29T06:00Z); true again from 2024-01-30T00:00Z
    // (1 month later is clamped to 2024-02-29T00:00Z); false again from 2024-01-30T06:00Z; …
    let f = single(
        "custom.installedAt",
        "after",
        json!({"amount": 1, "unit": "months", "direction": "fromNow"}),
    );
    let attrs = device_with("custom.installedAt", "2024-02-29T06:00:00Z");
    let now = reference::datetime("2024-01-01T00:00:00Z");
    let first = reference::datetime("2024-01-29T06:00:00Z");
    assert_eq!(first_change(&f, &attrs, now, now + 40 * DAY), Some(first));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= first),
        "next_flip is {:?}, but the result already changes at {}",
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(first),
    );
}
