#![no_main]
//! A Kafka key, value and size limit from the bytes, through `cohort::event::decode`; see
//! `check_event_decode` in `fuzz/checks.rs`.

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

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::check_event_decode(data));
