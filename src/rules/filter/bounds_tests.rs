//! The validator's reporting is bounded: however many mistakes a filter holds, [`compile`] returns at most
//! `MAX_ERRORS + 1` errors, builds no more than that, and quotes untrusted strings briefly.
//!
//! The work is measured in bytes allocated by the validating thread (a counting allocator wraps the system
//! one in this test binary), which is deterministic: no timing, no process-wide figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use serde_json::{json, Value};

use super::*;

/// The system allocator, counting the bytes each thread allocates.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a const-initialised
// thread-local without a destructor, so reading it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(layout.size())));
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(layout.size())));
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(new_size)));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// What `f` returns, and the bytes this thread allocated while it ran.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

/// `conditions` conditions of `field` `in` a list of `values` values nobody allows.
fn bad_lists(conditions: usize, values: usize, field: &str) -> Value {
    let list: Vec<Value> = (0..values).map(|i| json!(format!("nope-{i}"))).collect();
    let leaves: Vec<Value> = (0..conditions)
        .map(|_| json!({"field": field, "operator": "in", "value": list}))
        .collect();
    json!({"operator": "AND", "conditions": leaves})
}

#[test]
fn a_filter_full_of_mistakes_reports_a_bounded_number_of_errors() {
    let catalogue = Catalogue::default();
    // 250 conditions of 1,000 bad enum values: 250,000 mistakes in about a megabyte of JSON.
    let filter = bad_lists(250, MAX_LIST_VALUES, "status");
    let (errors, bytes) = allocated_by(|| compile(&filter, &catalogue).err().unwrap_or_default());
    assert_eq!(errors.len(), MAX_ERRORS + 1, "{:?}", errors.last());
    assert_eq!(errors[0].path, "$.conditions[0].value[0]");
    assert!(errors[0].message.contains("nope-0"), "{:?}", errors[0]);
    // Every error is short, and the work is a hundred errors' worth: building all 250,000 (a path and a
    // message of about a hundred bytes each) would allocate tens of megabytes.
    for e in &errors {
        assert!(e.path.len() < 64 && e.message.len() < 256, "{e:?}");
    }
    assert!(bytes < 256 * 1024, "validation allocated {bytes} bytes");
    // The same for lists of numbers, strings, and string sets, and for conditions that are all wrong.
    for (field, bad_value) in [
        ("uptimeSeconds", json!("x")),
        ("hostname", json!(1)),
        ("tags", json!(1)),
    ] {
        let operator = if field == "tags" { "hasAny" } else { "in" };
        let leaves: Vec<Value> = (0..250)
            .map(|_| json!({"field": field, "operator": operator, "value": vec![bad_value.clone(); 1000]}))
            .collect();
        let filter = json!({"operator": "OR", "conditions": leaves});
        let (errors, bytes) = allocated_by(|| validate(&filter, &catalogue));
        assert_eq!(errors.len(), MAX_ERRORS + 1, "{field}");
        assert!(
            bytes < 256 * 1024,
            "{field}: validation allocated {bytes} bytes"
        );
    }
    let leaves: Vec<Value> = (0..5000)
        .map(|i| json!({"field": format!("nope{i}"), "operator": "equals", "value": 1}))
        .collect();
    let errors = validate(
        &json!({"operator": "AND", "conditions": leaves}),
        &catalogue,
    );
    assert_eq!(errors.len(), MAX_ERRORS + 1);
}

#[test]
fn a_filter_with_a_hundred_mistakes_reports_each() {
    let catalogue = Catalogue::default();
    let errors = validate(&bad_lists(1, MAX_ERRORS, "status"), &catalogue);
    assert_eq!(errors.len(), MAX_ERRORS);
    let paths: Vec<String> = (0..MAX_ERRORS)
        .map(|i| format!("$.conditions[0].value[{i}]"))
        .collect();
    assert_eq!(
        errors.iter().map(|e| e.path.clone()).collect::<Vec<_>>(),
        paths
    );
}

#[test]
fn many_unknown_keys_stop_at_the_cap() {
    let catalogue = Catalogue::default();
    let mut leaf = serde_json::Map::new();
    leaf.insert("field".into(), json!("hostname"));
    leaf.insert("operator".into(), json!("isNull"));
    for i in 0..10_000 {
        leaf.insert(format!("extra{i}"), json!(1));
    }
    // (`json!` copies what it interpolates, so the filter is built before counting.)
    let filter = json!({"operator": "AND", "conditions": [Value::Object(leaf)]});
    let (errors, bytes) = allocated_by(|| validate(&filter, &catalogue));
    assert_eq!(errors.len(), MAX_ERRORS + 1);
    assert!(errors
        .iter()
        .all(|e| e.message.starts_with("Unknown key: extra")));
    assert!(bytes < 128 * 1024, "validation allocated {bytes} bytes");
}

#[test]
fn untrusted_names_are_quoted_briefly() {
    let catalogue = Catalogue::default();
    let long = "z".repeat(100_000);
    let mut leaf = serde_json::Map::new();
    leaf.insert("field".into(), json!(long));
    leaf.insert("operator".into(), json!(long));
    leaf.insert(long.clone(), json!(1));
    let errors = validate(
        &json!({"operator": "AND", "conditions": [Value::Object(leaf)]}),
        &catalogue,
    );
    assert_eq!(errors.len(), 3, "{errors:?}");
    for e in &errors {
        assert!(e.path.len() < 128 && e.message.len() < 128, "{e:?}");
        assert!(e.path.ends_with('…') || e.message.ends_with('…'), "{e:?}");
    }
    // An enum value at the longest allowed length is quoted briefly too.
    let value = "v".repeat(MAX_VALUE_BYTES);
    let errors = validate(
        &one(json!({"field": "status", "operator": "equals", "value": value})),
        &catalogue,
    );
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.len() < 256, "{:?}", errors[0]);
    assert!(
        errors[0].message.contains("online, offline"),
        "{:?}",
        errors[0]
    );
}

#[test]
fn a_long_invalid_regex_keeps_what_is_wrong() {
    let catalogue = Catalogue::default();
    let pattern = format!("{}(", "a".repeat(MAX_REGEX_BYTES - 1));
    let errors = validate(
        &one(json!({"field": "hostname", "operator": "matches", "value": pattern})),
        &catalogue,
    );
    assert_eq!(errors.len(), 1);
    let message = &errors[0].message;
    assert!(message.len() < 512, "{message}");
    assert!(message.contains("unclosed group"), "{message}");
}

fn one(condition: Value) -> Value {
    json!({"operator": "AND", "conditions": [condition]})
}
