//! cohort's field index against a published structure for the same problem: the `a-tree` crate, an
//! implementation of the A-Tree (Ji, Lim, Chen et al., SIGMOD 2021), which indexes boolean expressions and
//! answers which of them one event satisfies (results and reproduction commands in BENCHMARKS.md).
//!
//! Both run cohort's rule shapes — 10,000 groups in one org, each an AND or an OR of two conditions over
//! 200 fields (100 numbers, 100 strings), so each field is referenced by ~1% of the groups — restricted to
//! the operators both languages have: `greaterThan`, `lessThanOrEquals`, `between`, `in` and `notEquals` on
//! numbers; `equals`, `in` and `notEquals` on strings (the A-Tree's language has no `startsWith`,
//! `contains` or regular expressions). Per event, 1–3 random attributes of a random device (of 2,000)
//! change, and each structure brings the device's memberships up to date:
//!
//! - `cohort_index`: the field index names the groups a condition of which can change truth between the
//!   old and the new values; those are evaluated.
//! - `a_tree_search`: the A-Tree is searched with the device's whole attribute set (it indexes events,
//!   not changes, so every attribute is an input), and the matches replace the memberships.
//!
//! Both are checked against each other on every run (`cargo test` runs this file with small sizes), so
//! the comparison is between two correct answers.

use std::hint::black_box;

use a_tree::{ATree, AttributeDefinition, Event};
use cohort::rules::catalogue::{CatalogueConfig, CustomFieldConfig, DeclaredType};
use cohort::rules::{
    compile, AttrValue, Attributes, Catalogue, CompiledFilter, FieldChange, FieldId, FieldIndex,
    Scratch,
};
use cohort_testkit::rng::Rng;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};

const NOW: i64 = 1_718_452_800_000;
const NUMBER_FIELDS: usize = 100;
const STRING_FIELDS: usize = 100;
const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];

/// Full sizes when benchmarking (`cargo bench` passes `--bench`); small ones when `cargo test` only checks.
fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn sizes() -> (usize, usize) {
    if benchmarking() {
        (10_000, 2_000)
    } else {
        (500, 50)
    }
}

fn catalogue() -> Catalogue {
    let custom_fields = (0..NUMBER_FIELDS)
        .map(|i| (format!("n{i}"), DeclaredType::Number))
        .chain((0..STRING_FIELDS).map(|i| (format!("s{i}"), DeclaredType::String)))
        .map(|(key, ty)| CustomFieldConfig {
            key,
            ty,
            values: vec![],
            description: String::new(),
        })
        .collect();
    Catalogue::from_config(&CatalogueConfig {
        custom_fields,
        ..Default::default()
    })
    .expect("valid catalogue")
}

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

/// A random condition on field `i`, in cohort's language and in the A-Tree's.
fn condition(rng: &mut Rng, i: usize) -> (Value, String) {
    if i < NUMBER_FIELDS {
        let (f, n) = (format!("custom.n{i}"), format!("n{i}"));
        let x = rng.below(100);
        match rng.below(5) {
            0 => (
                json!({"field": f, "operator": "greaterThan", "value": x}),
                format!("{n} > {x}"),
            ),
            1 => (
                json!({"field": f, "operator": "lessThanOrEquals", "value": x}),
                format!("{n} <= {x}"),
            ),
            2 => (
                json!({"field": f, "operator": "between", "value": {"from": x, "to": x + 20}}),
                format!("({n} >= {x} and {n} <= {})", x + 20),
            ),
            3 => {
                let (a, b) = ((x + 7) % 100, (x + 31) % 100);
                (
                    json!({"field": f, "operator": "in", "value": [x, a, b]}),
                    format!("{n} in [{x}, {a}, {b}]"),
                )
            }
            _ => (
                json!({"field": f, "operator": "notEquals", "value": x}),
                format!("{n} <> {x}"),
            ),
        }
    } else {
        let k = i - NUMBER_FIELDS;
        let (f, n) = (format!("custom.s{k}"), format!("s{k}"));
        let w = word(rng);
        match rng.below(3) {
            0 => (
                json!({"field": f, "operator": "equals", "value": w}),
                format!("{n} = '{w}'"),
            ),
            1 => {
                let v = word(rng);
                (
                    json!({"field": f, "operator": "in", "value": [w, v]}),
                    format!("{n} in ['{w}', '{v}']"),
                )
            }
            _ => (
                json!({"field": f, "operator": "notEquals", "value": w}),
                format!("{n} <> '{w}'"),
            ),
        }
    }
}

/// The groups, compiled for cohort and as A-Tree expressions.
fn groups(rng: &mut Rng, c: &Catalogue, count: usize) -> (Vec<CompiledFilter>, Vec<String>) {
    let fields = (NUMBER_FIELDS + STRING_FIELDS) as u64;
    (0..count)
        .map(|_| {
            let a = rng.below(fields) as usize;
            let b = ((a as u64 + 1 + rng.below(fields - 1)) % fields) as usize;
            let (ca, ta) = condition(rng, a);
            let (cb, tb) = condition(rng, b);
            let (op, top) = if rng.below(2) == 0 {
                ("AND", "and")
            } else {
                ("OR", "or")
            };
            let filter = json!({"operator": op, "conditions": [ca, cb]});
            let compiled = compile(&filter, c).expect("valid filter");
            (compiled, format!("({ta}) {top} ({tb})"))
        })
        .unzip()
}

fn value(rng: &mut Rng, i: usize) -> AttrValue {
    if i < NUMBER_FIELDS {
        AttrValue::Num(rng.below(100) as f64)
    } else {
        AttrValue::Str(word(rng).into())
    }
}

/// The fleet: each device's attributes and its memberships, one bit per group.
struct Fleet {
    fields: Vec<FieldId>,
    devices: Vec<Attributes>,
    members: Vec<Vec<u64>>,
}

fn fleet(rng: &mut Rng, c: &Catalogue, filters: &[CompiledFilter], count: usize) -> Fleet {
    let fields: Vec<FieldId> = (0..NUMBER_FIELDS)
        .map(|i| format!("custom.n{i}"))
        .chain((0..STRING_FIELDS).map(|i| format!("custom.s{i}")))
        .map(|name| c.resolve(&name).expect("declared"))
        .collect();
    let devices: Vec<Attributes> = (0..count)
        .map(|_| {
            let mut attrs = Attributes::new();
            for (i, id) in fields.iter().enumerate() {
                attrs.set(*id, value(rng, i));
            }
            attrs
        })
        .collect();
    let members = devices
        .iter()
        .map(|d| {
            let mut bits = vec![0u64; filters.len().div_ceil(64)];
            for (g, f) in filters.iter().enumerate() {
                if f.evaluate(d, NOW) {
                    bits[g / 64] |= 1 << (g % 64);
                }
            }
            bits
        })
        .collect();
    Fleet {
        fields,
        devices,
        members,
    }
}

/// The A-Tree's event for a device: every attribute.
fn a_tree_event(tree: &ATree<u64>, fleet: &Fleet, d: usize) -> Event {
    let mut event = tree.make_event();
    for (i, id) in fleet.fields.iter().enumerate() {
        let done = match fleet.devices[d].get(*id) {
            Some(AttrValue::Num(n)) => event.with_integer(&format!("n{i}"), *n as i64),
            Some(AttrValue::Str(s)) => {
                event.with_string(&format!("s{}", i - NUMBER_FIELDS), s.as_str())
            }
            _ => Ok(()),
        };
        done.expect("a defined attribute");
    }
    event.build().expect("every attribute set")
}

/// How a structure brings a device's memberships up to date after a change.
enum Structure<'a> {
    Cohort(&'a FieldIndex<u32>, &'a [CompiledFilter]),
    ATree(&'a ATree<u64>),
}

/// Applies one random event (1–3 changed attributes) and updates the device's memberships; returns how
/// many changed.
fn apply_event(
    rng: &mut Rng,
    fleet: &mut Fleet,
    structure: &Structure<'_>,
    scratch: &mut Scratch,
) -> u32 {
    let d = rng.below(fleet.devices.len() as u64) as usize;
    let mut olds: Vec<(FieldId, Option<AttrValue>)> = Vec::with_capacity(3);
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(fleet.fields.len() as u64) as usize;
        let id = fleet.fields[i];
        let old = fleet.devices[d].set(id, value(rng, i));
        olds.push((id, old));
    }
    match structure {
        Structure::Cohort(index, filters) => {
            let attrs = &fleet.devices[d];
            let changes: Vec<FieldChange<'_>> = olds
                .iter()
                .map(|(field, old)| FieldChange {
                    field: *field,
                    old: old.as_ref(),
                    new: attrs.get(*field),
                })
                .collect();
            let mut candidates = Vec::new();
            index.candidates(&changes, NOW, scratch, &mut candidates);
            let members = &mut fleet.members[d];
            let mut changed = 0;
            for g in candidates {
                let now_in = filters[g as usize].evaluate(attrs, NOW);
                let (word, bit) = (g as usize / 64, 1u64 << (g % 64));
                if (members[word] & bit != 0) != now_in {
                    members[word] ^= bit;
                    changed += 1;
                }
            }
            changed
        }
        Structure::ATree(tree) => {
            let event = a_tree_event(tree, fleet, d);
            let report = tree.search(&event).expect("a valid event");
            let mut bits = vec![0u64; fleet.members[d].len()];
            for g in report.matches() {
                bits[**g as usize / 64] |= 1 << (**g % 64);
            }
            let members = &mut fleet.members[d];
            let changed = members
                .iter()
                .zip(&bits)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            *members = bits;
            changed
        }
    }
}

fn compare(c: &mut Criterion) {
    let cat = catalogue();
    let (groups_count, devices_count) = sizes();
    let (filters, expressions) = groups(&mut Rng::new(7), &cat, groups_count);
    let mut index = FieldIndex::new();
    for (g, f) in filters.iter().enumerate() {
        index.upsert(g as u32, f);
    }
    let definitions: Vec<AttributeDefinition> = (0..NUMBER_FIELDS)
        .map(|i| AttributeDefinition::integer(&format!("n{i}")))
        .chain((0..STRING_FIELDS).map(|i| AttributeDefinition::string(&format!("s{i}"))))
        .collect();
    let mut tree = ATree::new(&definitions).expect("valid attributes");
    for (g, expression) in expressions.iter().enumerate() {
        tree.insert(&(g as u64), expression)
            .unwrap_or_else(|e| panic!("{expression}: {e:?}"));
    }

    // The two structures agree: the same events leave the same memberships.
    let mut scratch = Scratch::default();
    let mut by_cohort = fleet(&mut Rng::new(11), &cat, &filters, devices_count);
    let mut by_tree = fleet(&mut Rng::new(11), &cat, &filters, devices_count);
    let (mut events_a, mut events_b) = (Rng::new(13), Rng::new(13));
    let mut changed = 0;
    for _ in 0..2_000 {
        changed += apply_event(
            &mut events_a,
            &mut by_cohort,
            &Structure::Cohort(&index, &filters),
            &mut scratch,
        );
        apply_event(
            &mut events_b,
            &mut by_tree,
            &Structure::ATree(&tree),
            &mut scratch,
        );
    }
    assert!(changed > 0, "the events change memberships");
    assert!(
        by_cohort.members == by_tree.members,
        "cohort's index and the A-Tree disagree on the memberships"
    );

    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("published_structures");
    group.throughput(Throughput::Elements(EVENTS));
    for (name, structure) in [
        ("cohort_index", Structure::Cohort(&index, &filters)),
        ("a_tree_search", Structure::ATree(&tree)),
    ] {
        let mut fleet = fleet(&mut Rng::new(11), &cat, &filters, devices_count);
        let mut rng = Rng::new(17);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut changed = 0;
                for _ in 0..EVENTS {
                    changed += apply_event(&mut rng, &mut fleet, &structure, &mut scratch);
                }
                black_box(changed)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = compare
}
criterion_main!(benches);
