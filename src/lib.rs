//! cohort keeps dynamic device-group membership and per-device firmware targets correct, continuously, as
//! device attributes change, and tells the OTA dispatcher the moment a device's target firmware changes.
//!
//! # Layout
//!
//! - [`rules`]: the rule language — field catalogue, filter validation, compiled evaluation with
//!   explanations, the field index, and time flips. Pure: no IO, no clock.
//! - [`event`]: the `device-attribute-changes` input contract — strict decoding, with a dead-letter
//!   reason for every failure, the encoder producers use, and dead-letter messages. Pure: no IO.
//! - [`config`]: the typed configuration (defaults, then a TOML file, then `COHORT_…` variables).
//! - [`cli`]: the `cohort` command line (`eval`, `fields`); `main.rs` only parses and calls it.
//! - [`telemetry`]: logging set-up.

pub mod cli;
pub mod config;
pub mod event;
pub mod rules;
pub mod telemetry;
