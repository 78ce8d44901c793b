#![no_main]
//! A Kafka key, value and size limit from the bytes, through `cohort::event::decode`; see
//! `check_event_decode` in `cohort_testkit::fuzz` (`testkit/src/fuzz/`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| cohort_testkit::fuzz::check_event_decode(data));
