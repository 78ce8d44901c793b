//! The field index never misses a group whose result changes, and never returns one that references none
//! of the changed fields.

use std::collections::{BTreeMap, BTreeSet};

use cohort::rules::{Attributes, CompiledFilter, FieldChange, FieldId, FieldIndex, Scratch};
use cohort_testkit::rules::gen;
use cohort_testkit::rules::gen::catalogue;
use cohort_testkit::rules::reference::{Kind, FIELDS};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};

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
