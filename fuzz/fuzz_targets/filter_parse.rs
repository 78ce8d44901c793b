#![no_main]
//! Arbitrary bytes, parsed as JSON, validated and compiled as a filter: see `check_filter_parse` in
//! `fuzz/checks.rs`.

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;
#[allow(dead_code)]
#[path = "../../tests/rules_props/pools.rs"]
mod pools;
#[allow(dead_code)]
#[path = "../../tests/rules_props/reference.rs"]
mod reference;
#[allow(dead_code)]
#[path = "../../tests/event_contract/schema.rs"]
mod schema;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_filter_parse(data));
