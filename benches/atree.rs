//! cohort's field index against the `a-tree` crate (an A-Tree: an index of boolean expressions that answers
//! which expressions one whole event matches). Results and the command in BENCHMARKS.md.
//!
//! Both answer, for one device event, which of 10,000 dynamic groups the device is in now, and count the
//! membership changes:
//!
//! - `atree_vs_index/atree_search_whole_device`: the device's 200 attributes are made into an a-tree event
//!   and searched; the matches are the device's groups.
//! - `atree_vs_index/atree_search_prebuilt_event`: the search alone, on events built beforehand (one per
//!   device, with no change applied): what a-tree costs even when the event arrives ready.
//! - `atree_vs_index/index_and_truths`: cohort's field index finds the groups the changed fields can
//!   affect, and evaluates each only as far as the truths it found leave it undecided.
//!
//! The groups are `event_pipeline`'s in `benches/rules.rs` (the same generator and seed: an AND or OR of
//! two random conditions over 100 number and 100 string fields), restricted to what a-tree expresses.
//! a-tree has no `startsWith`, `contains` or regular expressions; the benchmark's strings come from a
//! closed set of 20 words, so each such condition is written as the `in` (or, for `notContains`,
//! `not in`) list of the words it holds for, which gives the same result on every device here (a real
//! fleet's strings are open-ended, where no such translation exists). Both sides index the same translated
//! groups, and the benchmark checks that they agree on every device's groups before it measures.

use std::hint::black_box;
use std::time::Duration;

use a_tree::{ATree, AttributeDefinition, Event};
use cohort::rules::{
    compile, AttrValue, Attributes, Candidate, Catalogue, CompiledFilter, FieldChange, FieldId,
    FieldIndex, Scratch,
};
use cohort_testkit::rules::shapes::{
    benchmarking, catalogue, memberships, random_value, Rng, NOW, NUMBER_FIELDS, STRING_FIELDS,
    WORDS,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

/// A condition in both languages: cohort's JSON and a-tree's expression.
struct Condition {
    json: Value,
    atree: String,
}

/// The words a text condition holds for, as a list in both languages.
fn words_where(keep: impl Fn(&str) -> bool) -> (Vec<&'static str>, String) {
    let words: Vec<&'static str> = WORDS.iter().copied().filter(|w| keep(w)).collect();
    let list = words
        .iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ");
    (words, format!("[{list}]"))
}

/// `benches/rules.rs`'s random condition (the same draws), translated for a-tree.
fn condition(rng: &mut Rng, field: usize) -> Condition {
    if field < NUMBER_FIELDS {
        let (f, a) = (format!("custom.n{field}"), format!("n{field}"));
        let x = rng.below(100);
        let (json, atree) = match rng.below(5) {
            0 => (
                json!({"field": f, "operator": "greaterThan", "value": x}),
                format!("{a} > {x}"),
            ),
            1 => (
                json!({"field": f, "operator": "lessThanOrEquals", "value": x}),
                format!("{a} <= {x}"),
            ),
            2 => (
                json!({"field": f, "operator": "between", "value": {"from": x, "to": x + 20}}),
                format!("({a} >= {x} and {a} <= {})", x + 20),
            ),
            3 => {
                let set = [x, (x + 7) % 100, (x + 31) % 100];
                (
                    json!({"field": f, "operator": "in", "value": set}),
                    format!("{a} in [{}, {}, {}]", set[0], set[1], set[2]),
                )
            }
            _ => (
                json!({"field": f, "operator": "notEquals", "value": x}),
                format!("{a} <> {x}"),
            ),
        };
        Condition { json, atree }
    } else {
        let i = field - NUMBER_FIELDS;
        let (f, a) = (format!("custom.s{i}"), format!("s{i}"));
        let (json, atree) = match rng.below(6) {
            0 => {
                let w = rng.word();
                (
                    json!({"field": f, "operator": "equals", "value": w}),
                    format!("{a} = \"{w}\""),
                )
            }
            1 => {
                let (v, w) = (rng.word(), rng.word());
                (
                    json!({"field": f, "operator": "in", "value": [v, w]}),
                    format!("{a} in [\"{v}\", \"{w}\"]"),
                )
            }
            2 => {
                // startsWith the word's first two letters.
                let prefix = &rng.word()[..2];
                let (words, list) = words_where(|w| w.starts_with(prefix));
                (
                    json!({"field": f, "operator": "in", "value": words}),
                    format!("{a} in {list}"),
                )
            }
            3 => {
                // contains two of the word's letters.
                let needle = &rng.word()[1..3];
                let (words, list) = words_where(|w| w.contains(needle));
                (
                    json!({"field": f, "operator": "in", "value": words}),
                    format!("{a} in {list}"),
                )
            }
            4 => {
                // matches `^<first letter>`.
                let first = &rng.word()[..1];
                let (words, list) = words_where(|w| w.starts_with(first));
                (
                    json!({"field": f, "operator": "in", "value": words}),
                    format!("{a} in {list}"),
                )
            }
            _ => {
                // notContains two of the word's letters.
                let needle = &rng.word()[1..3];
                let (words, list) = words_where(|w| w.contains(needle));
                (
                    json!({"field": f, "operator": "notIn", "value": words}),
                    format!("{a} not in {list}"),
                )
            }
        };
        Condition { json, atree }
    }
}

/// The groups, compiled for cohort and inserted in an a-tree.
fn groups(c: &Catalogue) -> (Vec<CompiledFilter>, ATree<u32>) {
    let definitions: Vec<AttributeDefinition> = (0..NUMBER_FIELDS)
        .map(|i| AttributeDefinition::integer(&format!("n{i}")))
        .chain((0..STRING_FIELDS).map(|i| AttributeDefinition::string(&format!("s{i}"))))
        .collect();
    let mut atree = ATree::new(&definitions).expect("valid attributes");
    let mut rng = Rng::new(7);
    let fields = NUMBER_FIELDS + STRING_FIELDS;
    let count = if benchmarking() { 10_000 } else { 500 };
    let mut filters = Vec::with_capacity(count);
    let mut expressions = Vec::with_capacity(count);
    for _ in 0..count {
        let a = rng.below(fields);
        let b = (a + 1 + rng.below(fields - 1)) % fields;
        let and = rng.below(2) == 0;
        let (x, y) = (condition(&mut rng, a), condition(&mut rng, b));
        let op = if and { "AND" } else { "OR" };
        let filter = json!({"operator": op, "conditions": [x.json, y.json]});
        filters.push(compile(&filter, c).expect("valid filter"));
        let op = if and { "and" } else { "or" };
        expressions.push(format!("({}) {op} ({})", x.atree, y.atree));
    }
    for (g, expression) in expressions.iter().enumerate() {
        atree
            .insert(&(g as u32), expression)
            .unwrap_or_else(|e| panic!("a-tree refuses {expression}: {e:?}"));
    }
    (filters, atree)
}

/// The devices and each one's groups, one bit per group.
struct Fleet {
    field_ids: Vec<FieldId>,
    devices: Vec<Attributes>,
    memberships: Vec<Vec<u64>>,
}

fn fleet(c: &Catalogue, filters: &[CompiledFilter]) -> Fleet {
    let mut rng = Rng::new(11);
    let field_ids: Vec<FieldId> = (0..NUMBER_FIELDS)
        .map(|i| format!("custom.n{i}"))
        .chain((0..STRING_FIELDS).map(|i| format!("custom.s{i}")))
        .map(|name| c.resolve(&name).expect("declared"))
        .collect();
    let count = if benchmarking() { 2_000 } else { 50 };
    let devices: Vec<Attributes> = (0..count)
        .map(|_| {
            let mut attrs = Attributes::new();
            for (i, id) in field_ids.iter().enumerate() {
                attrs.set(*id, random_value(&mut rng, i));
            }
            attrs
        })
        .collect();
    let memberships = devices.iter().map(|d| memberships(filters, d)).collect();
    Fleet {
        field_ids,
        devices,
        memberships,
    }
}

/// The a-tree attribute name of each field, in `Fleet::field_ids` order.
fn atree_names() -> Vec<String> {
    (0..NUMBER_FIELDS)
        .map(|i| format!("n{i}"))
        .chain((0..STRING_FIELDS).map(|i| format!("s{i}")))
        .collect()
}

/// The device's groups by a-tree search over its whole attribute set, one bit per group in `out`.
fn atree_groups(
    atree: &ATree<u32>,
    fields: (&[FieldId], &[String]),
    device: &Attributes,
    out: &mut [u64],
) {
    let event = atree_event(atree, fields, device);
    search(atree, &event, out);
}

/// The a-tree event for a device: its whole attribute set.
fn atree_event(
    atree: &ATree<u32>,
    (field_ids, names): (&[FieldId], &[String]),
    device: &Attributes,
) -> Event {
    let mut event = atree.make_event();
    for (id, name) in field_ids.iter().zip(names) {
        let set = match device.get(*id) {
            Some(AttrValue::Num(x)) => event.with_integer(name, *x as i64),
            Some(AttrValue::Str(s)) => event.with_string(name, s.as_str()),
            _ => Ok(()),
        };
        set.expect("declared attribute");
    }
    event.build().expect("complete event")
}

/// The groups matching `event`, one bit per group in `out`.
fn search(atree: &ATree<u32>, event: &Event, out: &mut [u64]) {
    let report = atree.search(event).expect("search");
    out.iter_mut().for_each(|w| *w = 0);
    for g in report.matches() {
        out[**g as usize / 64] |= 1 << (**g % 64);
    }
}

/// Changes 1–3 random fields of a random device; returns the device and the old values.
fn change(rng: &mut Rng, fleet: &mut Fleet, olds: &mut Vec<(FieldId, Option<AttrValue>)>) -> usize {
    let d = rng.below(fleet.devices.len());
    olds.clear();
    for _ in 0..1 + rng.below(3) {
        let f = rng.below(fleet.field_ids.len());
        let id = fleet.field_ids[f];
        let old = fleet.devices[d].set(id, random_value(rng, f));
        olds.push((id, old));
    }
    d
}

fn atree_vs_index(c: &mut Criterion) {
    let cat = catalogue();
    let (filters, atree) = groups(&cat);
    let mut index = FieldIndex::new();
    for (g, f) in filters.iter().enumerate() {
        index.upsert(g as u32, f);
    }
    let mut fleet = fleet(&cat, &filters);
    let names = atree_names();
    // Both answer the same question: check it on every device before measuring.
    let mut found = vec![0u64; filters.len().div_ceil(64)];
    for (d, device) in fleet.devices.iter().enumerate() {
        atree_groups(&atree, (&fleet.field_ids, &names), device, &mut found);
        assert_eq!(
            found, fleet.memberships[d],
            "a-tree and cohort disagree on device {d}"
        );
    }
    let total: u32 = fleet
        .memberships
        .iter()
        .flatten()
        .map(|w| w.count_ones())
        .sum();
    eprintln!(
        "{} devices, {} groups, {:.0} groups per device",
        fleet.devices.len(),
        filters.len(),
        f64::from(total) / fleet.devices.len() as f64
    );
    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("atree_vs_index");
    group.throughput(Throughput::Elements(EVENTS));
    let mut olds = Vec::new();
    let mut rng = Rng::new(13);
    group.bench_function("atree_search_whole_device", |b| {
        b.iter(|| {
            let mut changes = 0;
            for _ in 0..EVENTS {
                let d = change(&mut rng, &mut fleet, &mut olds);
                let fields = (fleet.field_ids.as_slice(), names.as_slice());
                atree_groups(&atree, fields, &fleet.devices[d], &mut found);
                for (old, new) in fleet.memberships[d].iter_mut().zip(&found) {
                    changes += (*old ^ *new).count_ones();
                    *old = *new;
                }
            }
            black_box(changes)
        })
    });
    let events: Vec<Event> = fleet
        .devices
        .iter()
        .map(|d| atree_event(&atree, (&fleet.field_ids, &names), d))
        .collect();
    group.bench_function("atree_search_prebuilt_event", |b| {
        b.iter(|| {
            let mut matched = 0;
            for _ in 0..EVENTS {
                let d = rng.below(events.len());
                search(&atree, &events[d], &mut found);
                matched += found.iter().map(|w| w.count_ones()).sum::<u32>();
            }
            black_box(matched)
        })
    });
    let (mut scratch, mut candidates) = (Scratch::default(), Vec::new());
    let mut rng = Rng::new(17);
    group.bench_function("index_and_truths", |b| {
        b.iter(|| {
            let mut changes = 0;
            for _ in 0..EVENTS {
                let d = change(&mut rng, &mut fleet, &mut olds);
                let attrs = &fleet.devices[d];
                let field_changes: Vec<FieldChange<'_>> = olds
                    .iter()
                    .map(|(field, old)| FieldChange {
                        field: *field,
                        old: old.as_ref(),
                        new: attrs.get(*field),
                    })
                    .collect();
                candidates.clear();
                index.candidates_with_truths(&field_changes, NOW, &mut scratch, &mut candidates);
                let members = &mut fleet.memberships[d];
                for Candidate { group, truths } in &candidates {
                    let now_in = filters[*group as usize].evaluate_with(attrs, NOW, *truths);
                    let (word, bit) = (*group as usize / 64, 1u64 << (*group % 64));
                    if (members[word] & bit != 0) != now_in {
                        members[word] ^= bit;
                        changes += 1;
                    }
                }
            }
            black_box(changes)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = atree_vs_index
}
criterion_main!(benches);
