#![no_main]
//! A valid filter, device and instant chosen by the bytes: the compiled evaluator against the reference
//! evaluator; see `check_eval_vs_reference` in `fuzz/checks.rs`.

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

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_eval_vs_reference(data));
