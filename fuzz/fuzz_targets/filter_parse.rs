#![no_main]
//! Arbitrary bytes, parsed as JSON, validated and compiled as a filter: see `check_filter_parse` in
//! `cohort_testkit::fuzz` (`testkit/src/fuzz/`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_testkit::fuzz::check_filter_parse(data));
