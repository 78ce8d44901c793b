//! Rule-language benchmarks (results and reproduction commands in BENCHMARKS.md).
//!
//! - `filter_eval/*`: one compiled filter against one device, small (3 conditions) and large (120).
//! - `event_pipeline/*`: the worker's per-event rule work — apply 1–3 attribute changes to a device, ask the
//!   field index for candidate groups, evaluate them, diff against the device's memberships — with 10,000
//!   dynamic groups in one org where each field is referenced by ~1% of the groups; with each candidate
//!   evaluated in full, or only as far as the truths the index found leave it undecided; against the
//!   baseline that evaluates every group.
//! - `value_index/*`: 10,000 groups that all reference one field with `equals`; value indexing against
//!   field-only indexing.
//!
//! Throughput is reported in events (or evaluations) per second on one core.

use std::hint::black_box;
use std::time::Duration;

use cohort::rules::{
    compile, AttrValue, Attributes, Candidate, Catalogue, CompiledFilter, FieldChange, FieldId,
    FieldIndex, FieldKeys, Scratch,
};
use cohort_testkit::rules::shapes::{
    benchmarking, catalogue, memberships, random_value, Rng, NOW, NUMBER_FIELDS, STRING_FIELDS,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};

fn groups_count() -> usize {
    if benchmarking() {
        10_000
    } else {
        500
    }
}

fn devices_count() -> usize {
    if benchmarking() {
        2_000
    } else {
        50
    }
}

/// A random condition on `custom.n<i>` or `custom.s<i>`, drawn from the whole operator set for its type.
fn condition(rng: &mut Rng, field: usize) -> Value {
    if field < NUMBER_FIELDS {
        let f = format!("custom.n{field}");
        let x = rng.below(100);
        match rng.below(5) {
            0 => json!({"field": f, "operator": "greaterThan", "value": x}),
            1 => json!({"field": f, "operator": "lessThanOrEquals", "value": x}),
            2 => json!({"field": f, "operator": "between", "value": {"from": x, "to": x + 20}}),
            3 => json!({"field": f, "operator": "in", "value": [x, (x + 7) % 100, (x + 31) % 100]}),
            _ => json!({"field": f, "operator": "notEquals", "value": x}),
        }
    } else {
        let f = format!("custom.s{}", field - NUMBER_FIELDS);
        match rng.below(6) {
            0 => json!({"field": f, "operator": "equals", "value": rng.word()}),
            1 => json!({"field": f, "operator": "in", "value": [rng.word(), rng.word()]}),
            2 => json!({"field": f, "operator": "startsWith", "value": &rng.word()[..2]}),
            3 => json!({"field": f, "operator": "contains", "value": &rng.word()[1..3]}),
            4 => {
                json!({"field": f, "operator": "matches", "value": format!("^{}", &rng.word()[..1])})
            }
            _ => json!({"field": f, "operator": "notContains", "value": &rng.word()[1..3]}),
        }
    }
}

/// 10,000 groups, each referencing two distinct fields out of 200: every field is referenced by ~1%.
fn groups(rng: &mut Rng, c: &Catalogue) -> Vec<CompiledFilter> {
    let fields = NUMBER_FIELDS + STRING_FIELDS;
    (0..groups_count())
        .map(|_| {
            let a = rng.below(fields);
            let b = (a + 1 + rng.below(fields - 1)) % fields;
            let op = if rng.below(2) == 0 { "AND" } else { "OR" };
            let filter =
                json!({"operator": op, "conditions": [condition(rng, a), condition(rng, b)]});
            compile(&filter, c).expect("valid filter")
        })
        .collect()
}

struct Fleet {
    field_ids: Vec<FieldId>,
    devices: Vec<Attributes>,
    /// One bit per group for each device: O(1) membership updates, so the benchmark measures rule work
    /// rather than membership bookkeeping (the worker keeps its own compact per-device lists).
    memberships: Vec<Vec<u64>>,
}

fn fleet(rng: &mut Rng, c: &Catalogue, filters: &[CompiledFilter]) -> Fleet {
    let field_ids: Vec<FieldId> = (0..NUMBER_FIELDS)
        .map(|i| format!("custom.n{i}"))
        .chain((0..STRING_FIELDS).map(|i| format!("custom.s{i}")))
        .map(|name| c.resolve(&name).expect("declared"))
        .collect();
    let devices: Vec<Attributes> = (0..devices_count())
        .map(|_| {
            let mut attrs = Attributes::new();
            for (i, id) in field_ids.iter().enumerate() {
                attrs.set(*id, random_value(rng, i));
            }
            attrs
        })
        .collect();
    let memberships: Vec<Vec<u64>> = devices.iter().map(|d| memberships(filters, d)).collect();
    let total: u32 = memberships.iter().flatten().map(|w| w.count_ones()).sum();
    eprintln!(
        "fleet: {} devices, {} groups, {:.0} memberships per device",
        devices.len(),
        filters.len(),
        f64::from(total) / devices.len() as f64
    );
    Fleet {
        field_ids,
        devices,
        memberships,
    }
}

/// How an event's candidates are found and evaluated.
#[derive(Copy, Clone)]
enum Mode<'a> {
    /// Candidates from the index, each evaluated in full.
    Index(&'a FieldIndex<u32>),
    /// Candidates from the index with the truths it found, their filters prefetched together, each
    /// evaluated only as far as the truths leave it undecided.
    Truths(&'a FieldIndex<u32>),
    /// Every group evaluated.
    All,
}

/// Reusable buffers of the event loop.
#[derive(Default)]
struct Buffers {
    scratch: Scratch,
    groups: Vec<u32>,
    candidates: Vec<Candidate<u32>>,
    olds: Vec<(FieldId, Option<AttrValue>)>,
}

impl Buffers {
    /// The number of groups the last event evaluated.
    fn evaluated(&self) -> usize {
        self.groups.len() + self.candidates.len()
    }
}

/// Applies one random event (1–3 changed fields) and returns the number of membership changes.
fn apply_event(
    rng: &mut Rng,
    fleet: &mut Fleet,
    filters: &[CompiledFilter],
    mode: Mode<'_>,
    buffers: &mut Buffers,
) -> usize {
    let Buffers {
        scratch,
        groups,
        candidates,
        olds,
    } = buffers;
    let d = rng.below(fleet.devices.len());
    let n = 1 + rng.below(3);
    olds.clear();
    for _ in 0..n {
        let f = rng.below(fleet.field_ids.len());
        let id = fleet.field_ids[f];
        let old = fleet.devices[d].set(id, random_value(rng, f));
        olds.push((id, old));
    }
    groups.clear();
    candidates.clear();
    let attrs = &fleet.devices[d];
    let changes: [Option<FieldChange<'_>>; 3] = std::array::from_fn(|i| {
        olds.get(i).map(|(field, old)| FieldChange {
            field: *field,
            old: old.as_ref(),
            new: attrs.get(*field),
        })
    });
    let changes: Vec<FieldChange<'_>> = changes.into_iter().flatten().collect();
    match mode {
        Mode::Index(index) => index.candidates(&changes, NOW, scratch, groups),
        Mode::Truths(index) => index.candidates_with_truths(&changes, NOW, scratch, candidates),
        Mode::All => groups.extend(0..filters.len() as u32),
    }
    let members = &mut fleet.memberships[d];
    let mut changed = 0;
    let mut update = |g: u32, now_in: bool| {
        let (word, bit) = (g as usize / 64, 1u64 << (g % 64));
        if (members[word] & bit != 0) != now_in {
            members[word] ^= bit;
            changed += 1;
        }
    };
    for g in groups.iter() {
        update(*g, filters[*g as usize].evaluate(attrs, NOW));
    }
    // Every candidate's filter read first, the reads independent of each other, so that their cache
    // misses overlap instead of each evaluation waiting for its own.
    candidates
        .iter()
        .for_each(|c| filters[c.group as usize].prefetch());
    for Candidate { group, truths } in candidates.iter() {
        update(
            *group,
            filters[*group as usize].evaluate_with(attrs, NOW, *truths),
        );
    }
    changed
}

fn filter_eval(c: &mut Criterion) {
    let cat = Catalogue::default();
    let small = compile(
        &json!({"operator": "AND", "conditions": [
            {"field": "status", "operator": "equals", "value": "online"},
            {"field": "osType", "operator": "in", "value": ["linux", "rtos"]},
            {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 7, "unit": "days"}}
        ]}),
        &cat,
    )
    .expect("valid");
    // 40 OR-ed AND groups of 3 conditions each, over every type; the device matches only the last one, so
    // evaluation visits most of the tree.
    let mut alternatives: Vec<Value> = (0..39)
        .map(|i| {
            json!({"operator": "AND", "conditions": [
                {"field": "hostname", "operator": "startsWith", "value": format!("host-{i}-")},
                {"field": "uptimeSeconds", "operator": "between", "value": {"from": i * 10, "to": i * 10 + 5}},
                {"field": "tags", "operator": "hasAny", "value": [format!("t{i}"), "x"]}
            ]})
        })
        .collect();
    alternatives.push(json!({"operator": "AND", "conditions": [
        {"field": "displayName", "operator": "contains", "value": "LOBBY"},
        {"field": "platform", "operator": "matches", "value": "^rpi-[0-9]+$"},
        {"field": "daysSinceEnrolled", "operator": "greaterThan", "value": 30}
    ]}));
    let large =
        compile(&json!({"operator": "OR", "conditions": alternatives}), &cat).expect("valid");
    let device = Attributes::from_json(
        json!({
            "hostname": "gw-17", "displayName": "Lobby gateway", "status": "online", "osType": "linux",
            "platform": "rpi-4", "uptimeSeconds": 1234, "tags": ["lobby", "eu"],
            "enrolledAt": "2023-01-01T00:00:00Z", "lastSeenAt": "2024-06-15T11:00:00Z"
        })
        .as_object()
        .expect("object"),
        &cat,
    )
    .expect("valid device");
    assert!(small.evaluate(&device, NOW) && large.evaluate(&device, NOW));
    let mut group = c.benchmark_group("filter_eval");
    group.throughput(Throughput::Elements(1));
    group.bench_function("small_3_conditions", |b| {
        b.iter(|| black_box(&small).evaluate(black_box(&device), NOW))
    });
    group.bench_function("large_120_conditions", |b| {
        b.iter(|| black_box(&large).evaluate(black_box(&device), NOW))
    });
    group.bench_function("explain_small", |b| {
        b.iter(|| black_box(&small).explain(black_box(&device), NOW, &cat))
    });
    group.bench_function("next_flip_small", |b| {
        b.iter(|| black_box(&small).next_flip(black_box(&device), NOW))
    });
    group.finish();
}

fn event_pipeline(c: &mut Criterion) {
    let cat = catalogue();
    let mut rng = Rng::new(7);
    let filters = groups(&mut rng, &cat);
    let mut index = FieldIndex::new();
    for (g, f) in filters.iter().enumerate() {
        index.upsert(g as u32, f);
    }
    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("event_pipeline");
    group.throughput(Throughput::Elements(EVENTS));
    for (name, mode) in [
        ("10k_groups_with_index", Mode::Index(&index)),
        ("10k_groups_with_index_and_truths", Mode::Truths(&index)),
        ("10k_groups_evaluate_all", Mode::All),
    ] {
        let mut fleet = fleet(&mut Rng::new(11), &cat, &filters);
        let mut buffers = Buffers::default();
        let mut rng = Rng::new(13);
        let (mut evaluated, mut events) = (0usize, 0usize);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let mut changes = 0;
                events += EVENTS as usize;
                for _ in 0..EVENTS {
                    changes += apply_event(&mut rng, &mut fleet, &filters, mode, &mut buffers);
                    evaluated += buffers.evaluated();
                }
                black_box(changes)
            })
        });
        eprintln!(
            "{name}: {:.1} groups evaluated per event",
            evaluated as f64 / events.max(1) as f64
        );
    }
    group.finish();
}

fn value_index(c: &mut Criterion) {
    let cat = catalogue();
    let region = cat.resolve("custom.s0").expect("declared");
    let n0 = cat.resolve("custom.n0").expect("declared");
    // Every group references custom.s0 with equals (1,000 distinct values), plus a range on custom.n0.
    let filters: Vec<CompiledFilter> = (0..groups_count())
        .map(|g| {
            compile(
                &json!({"operator": "AND", "conditions": [
                    {"field": "custom.s0", "operator": "equals", "value": format!("region-{}", g % 1000)},
                    {"field": "custom.n0", "operator": "greaterThan", "value": g % 100}
                ]}),
                &cat,
            )
            .expect("valid")
        })
        .collect();
    let mut by_value = FieldIndex::new();
    let mut by_field = FieldIndex::new();
    for (g, f) in filters.iter().enumerate() {
        by_value.upsert(g as u32, f);
        let keys = f
            .index_keys()
            .into_iter()
            .map(|(field, _)| (field, FieldKeys::Any))
            .collect();
        by_field.upsert_keys(g as u32, keys);
    }
    let values: Vec<AttrValue> = (0..1000)
        .map(|i| AttrValue::Str(format!("region-{i}").into()))
        .collect();
    let mut device = Attributes::new();
    device.set(n0, AttrValue::Num(50.0));
    const EVENTS: u64 = 1_000;
    let mut group = c.benchmark_group("value_index");
    group.throughput(Throughput::Elements(EVENTS));
    for (name, index) in [
        ("equals_on_one_field_by_value", &by_value),
        ("equals_on_one_field_by_field", &by_field),
    ] {
        let mut rng = Rng::new(3);
        let (mut scratch, mut cands) = (Scratch::default(), Vec::new());
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut matched = 0;
                for _ in 0..EVENTS {
                    let new = values[rng.below(values.len())].clone();
                    let old = device.set(region, new);
                    cands.clear();
                    let change = FieldChange {
                        field: region,
                        old: old.as_ref(),
                        new: device.get(region),
                    };
                    index.candidates(&[change], NOW, &mut scratch, &mut cands);
                    matched += cands
                        .iter()
                        .filter(|g| filters[**g as usize].evaluate(&device, NOW))
                        .count();
                }
                black_box(matched)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(20);
    targets = filter_eval, event_pipeline, value_index
}
criterion_main!(benches);
