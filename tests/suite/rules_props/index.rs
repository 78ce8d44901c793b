//! The field index never misses a group whose result changes, and never returns one that references none
//! of the changed fields.

use std::collections::{BTreeMap, BTreeSet};

use cohort::rules::time::format_millis;
use cohort::rules::{
    AttrValue, Attributes, Candidate, CompiledFilter, ExplainNode, FieldChange, FieldId,
    FieldIndex, Scratch,
};
use cohort_testkit::rules::gen;
use cohort_testkit::rules::gen::catalogue;
use cohort_testkit::rules::reference::{operators, reference_eval, Kind, FIELDS};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

use super::flips::flip_case;
use super::{attributes, compiled, config};

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
    /// The device documents before and after the changes, for the reference evaluator.
    before_doc: Map<String, Value>,
    after_doc: Map<String, Value>,
    changed: Vec<FieldId>,
    candidates: Vec<u32>,
    /// Candidates for the reverse change (after → before), with the same scratch.
    reverse_candidates: Vec<u32>,
    /// The same queries, with the truths the index found.
    with_truths: Vec<Candidate<u32>>,
    reverse_with_truths: Vec<Candidate<u32>>,
}

/// The filters compiled, by group number, and indexed.
fn indexed(filters: &[Value]) -> (FieldIndex<u32>, BTreeMap<u32, CompiledFilter>) {
    let mut index = FieldIndex::new();
    let mut live = BTreeMap::new();
    for (g, filter) in filters.iter().enumerate() {
        let f = compiled(filter, catalogue());
        index.upsert(g as u32, &f);
        live.insert(g as u32, f);
    }
    (index, live)
}

fn run_index_case(case: &IndexCase) -> IndexRun {
    let c = catalogue();
    let (mut index, mut live) = indexed(&case.filters);
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
    let (mut with_truths, mut reverse_with_truths) = (Vec::new(), Vec::new());
    index.candidates_with_truths(&forward, case.now, &mut scratch, &mut with_truths);
    index.candidates_with_truths(&backward, case.now, &mut scratch, &mut reverse_with_truths);
    IndexRun {
        live,
        before,
        after,
        before_doc: case.device.clone(),
        after_doc: doc,
        changed,
        candidates,
        reverse_candidates,
        with_truths,
        reverse_with_truths,
    }
}

/// The truth of each condition of an explanation, in written order (the numbering of `LeafTruths`).
fn leaf_results(node: &ExplainNode, out: &mut Vec<bool>) {
    match node {
        ExplainNode::Condition { result, .. } => out.push(*result),
        ExplainNode::Group { conditions, .. } => {
            conditions.iter().for_each(|c| leaf_results(c, out))
        }
    }
}

/// Each candidate's known truths are the truths of those conditions for `attrs` at `now`, and evaluating
/// it with them gives the full evaluation's result (and the reference's, on `doc`, when given).
fn truths_hold(
    live: &BTreeMap<u32, CompiledFilter>,
    candidates: &[Candidate<u32>],
    attrs: &Attributes,
    doc: Option<&Map<String, Value>>,
    now: i64,
) -> Result<(), TestCaseError> {
    for Candidate { group, truths } in candidates {
        let f = &live[group];
        let explanation = f.explain(attrs, now, catalogue());
        let mut leaves = Vec::new();
        leaf_results(&explanation.root, &mut leaves);
        for (i, result) in leaves.iter().enumerate() {
            if let Some(known) = truths.get(i) {
                prop_assert_eq!(
                    known,
                    *result,
                    "condition {} of group {} ({})",
                    i,
                    group,
                    f.source()
                );
            }
        }
        prop_assert!(
            (leaves.len()..64).all(|i| truths.get(i).is_none()),
            "a truth for a condition group {} does not have",
            group
        );
        let full = f.evaluate(attrs, now);
        prop_assert_eq!(
            f.evaluate_with(attrs, now, *truths),
            full,
            "group {} ({}) with {:?}",
            group,
            f.source(),
            truths
        );
        if let Some(doc) = doc {
            prop_assert_eq!(
                full,
                reference_eval(f.source(), doc, now),
                "the reference disagrees"
            );
        }
    }
    Ok(())
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
    fn candidates_evaluated_with_the_truths_found_match_full_evaluation(case in index_case()) {
        let run = run_index_case(&case);
        for (plain, with_truths) in [
            (&run.candidates, &run.with_truths),
            (&run.reverse_candidates, &run.reverse_with_truths),
        ] {
            let groups: Vec<u32> = with_truths.iter().map(|c| c.group).collect();
            prop_assert_eq!(&groups, plain, "the same candidates, in the same order");
        }
        truths_hold(&run.live, &run.with_truths, &run.after, Some(&run.after_doc), case.now)?;
        truths_hold(&run.live, &run.reverse_with_truths, &run.before, Some(&run.before_doc), case.now)?;
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
    let (mut candidates, mut known) = (0, 0);
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
        for c in &run.with_truths {
            candidates += 1;
            if !c.truths.is_empty() {
                known += 1;
            }
        }
    }
    eprintln!("index cases: {changed}/{total} change a membership, {pruned}/{total} prune");
    eprintln!("candidates: {candidates}, {known} with a known truth");
    assert!(
        changed * 3 >= total,
        "only {changed} of {total} index cases change a membership"
    );
    assert!(
        known * 2 >= candidates,
        "only {known} of {candidates} candidates come with a known truth"
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
// Interval indexes: every numeric and absolute datetime operator, at and around equal thresholds.

/// Numbers the thresholds and the values are both drawn from, so that values often sit exactly on a
/// threshold (inclusive and exclusive ends), and thresholds often coincide.
const EDGE_NUMBERS: &[f64] = &[
    -1e9, -1.0, -0.5, -0.0, 0.0, 0.5, 1.0, 2.5, 3.0, 7.0, 100.0, 1e15,
];

/// Offsets (ms) from an anchor instant: thresholds and values one millisecond apart and equal.
const EDGE_OFFSETS: &[i64] = &[-86_400_000, -1_000, -2, -1, 0, 1, 2, 1_000, 86_400_000];
const ANCHOR: i64 = 1_718_452_800_000; // 2024-06-15T12:00:00Z

const NUM_FIELDS: &[&str] = &["uptimeSeconds", "custom.cpu"];
const TIME_FIELDS: &[&str] = &["lastSeenAt", "custom.installedAt"];

fn edge_number() -> BoxedStrategy<f64> {
    prop::sample::select(EDGE_NUMBERS).boxed()
}

fn edge_instant() -> BoxedStrategy<i64> {
    prop::sample::select(EDGE_OFFSETS)
        .prop_map(|d| ANCHOR + d)
        .boxed()
}

fn instant_json(t: i64) -> Value {
    Value::from(format_millis(t))
}

/// A condition on a number or datetime field with any operator the field type takes.
fn threshold_leaf() -> BoxedStrategy<Value> {
    let num = (
        prop::sample::select(NUM_FIELDS),
        prop::sample::select(operators(Kind::Num)),
        edge_number(),
        edge_number(),
        prop::collection::vec(edge_number(), 0..=3),
    )
        .prop_map(|(field, op, a, b, set)| match op {
            "between" => {
                json!({"field": field, "operator": op, "value": {"from": a.min(b), "to": a.max(b)}})
            }
            "in" | "notIn" => json!({"field": field, "operator": op, "value": set}),
            "isNull" | "isNotNull" => json!({"field": field, "operator": op}),
            _ => json!({"field": field, "operator": op, "value": a}),
        });
    let time = (
        prop::sample::select(TIME_FIELDS),
        prop::sample::select(operators(Kind::Time)),
        edge_instant(),
        edge_instant(),
        any::<bool>(),
    )
        .prop_map(|(field, op, a, b, relative)| match op {
            "between" => json!({"field": field, "operator": op,
                "value": {"from": instant_json(a.min(b)), "to": instant_json(a.max(b))}}),
            "withinLast" | "notWithinLast" => {
                json!({"field": field, "operator": op, "value": {"amount": 1, "unit": "days"}})
            }
            "before" | "after" if relative => {
                json!({"field": field, "operator": op, "value": {"amount": 1, "unit": "days"}})
            }
            "isNull" | "isNotNull" => json!({"field": field, "operator": op}),
            _ => json!({"field": field, "operator": op, "value": instant_json(a)}),
        });
    prop_oneof![num, time].boxed()
}

/// A stored value of any type (a catalogue change can leave a value of another type than the field's), or
/// none.
fn any_value() -> BoxedStrategy<Option<AttrValue>> {
    prop_oneof![
        6 => edge_number().prop_map(|x| Some(AttrValue::Num(x))),
        6 => edge_instant().prop_map(|t| Some(AttrValue::Time(t))),
        2 => Just(None),
        1 => Just(Some(AttrValue::Str("3".into()))),
        1 => any::<bool>().prop_map(|b| Some(AttrValue::Bool(b))),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct ThresholdCase {
    now: i64,
    filters: Vec<Value>,
    /// Per field of `NUM_FIELDS` then `TIME_FIELDS`: the value before and after.
    values: Vec<(Option<AttrValue>, Option<AttrValue>)>,
    /// Groups removed after every group was added.
    removed: Vec<u32>,
}

fn threshold_case() -> impl Strategy<Value = ThresholdCase> {
    (
        prop::sample::select(EDGE_OFFSETS).prop_map(|d| ANCHOR + 86_400_000 + d),
        prop::collection::vec(gen::filter_of(threshold_leaf()), 1..=16),
        prop::collection::vec((any_value(), any_value()), 4),
        prop::collection::vec(0u32..16, 0..=3),
    )
        .prop_map(|(now, filters, values, removed)| ThresholdCase {
            now,
            filters,
            values,
            removed,
        })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn threshold_conditions_are_found_whenever_their_group_changes(case in threshold_case()) {
        let c = catalogue();
        let fields: Vec<FieldId> = NUM_FIELDS
            .iter()
            .chain(TIME_FIELDS)
            .map(|name| c.resolve(name).unwrap())
            .collect();
        let (mut index, mut live) = indexed(&case.filters);
        for g in &case.removed {
            index.remove(*g);
            live.remove(g);
        }
        let (mut before, mut after) = (Attributes::new(), Attributes::new());
        for (field, (old, new)) in fields.iter().zip(&case.values) {
            if let Some(v) = old {
                before.set(*field, v.clone());
            }
            if let Some(v) = new {
                after.set(*field, v.clone());
            }
        }
        let changes: Vec<FieldChange<'_>> = fields
            .iter()
            .map(|f| FieldChange { field: *f, old: before.get(*f), new: after.get(*f) })
            .collect();
        let mut candidates = Vec::new();
        index.candidates(&changes, case.now, &mut Scratch::default(), &mut candidates);
        let unique: BTreeSet<u32> = candidates.iter().copied().collect();
        prop_assert_eq!(unique.len(), candidates.len(), "candidates repeat a group");
        for (g, f) in &live {
            if f.evaluate(&before, case.now) != f.evaluate(&after, case.now) {
                prop_assert!(unique.contains(g), "group {} ({}) changed but is not a candidate", g, f.source());
            }
        }
        prop_assert!(unique.iter().all(|g| live.contains_key(g)), "a removed group is a candidate");
        let mut with_truths = Vec::new();
        index.candidates_with_truths(&changes, case.now, &mut Scratch::default(), &mut with_truths);
        let groups: Vec<u32> = with_truths.iter().map(|c| c.group).collect();
        prop_assert_eq!(groups, candidates);
        truths_hold(&live, &with_truths, &after, None, case.now)?;
    }
}

// -------------------------------------------------------------------------------------------------------
// Time flips.
