#![no_main]
//! A valid filter, device and instant chosen by the bytes: the compiled evaluator against the reference
//! evaluator; see `check_eval_vs_reference` in `cohort_testkit::fuzz` (`testkit/src/fuzz/`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_testkit::fuzz::check_eval_vs_reference(data));
