//! cohort keeps dynamic device-group membership and per-device firmware targets correct, continuously, as
//! device attributes change, and tells the OTA dispatcher the moment a device's target firmware changes.
//!
//! # Layout
//!
//! - [`rules`]: the rule language — field catalogue, filter validation, compiled evaluation with
//!   explanations, the field index, and time flips. Pure: no IO, no clock.
//! - [`firmware`]: versions, the resolution precedence, rollout progress and halt thresholds, rollout-target
//!   events (CloudEvents). Pure.
//! - [`event`]: the `device-attribute-changes` input contract: strict decoding and dead letters.
//! - [`outbox`]: the outgoing message (topic, key, value, headers) that rollout events and dead letters
//!   are, as the transactional outbox holds it. Pure.
//! - [`config`]: the typed configuration (defaults, then a TOML file, then `COHORT_…` variables).
//! - [`store`]: PostgreSQL — migrations, error classification, the control log, batch transactions, the
//!   outbox table.
//! - [`kafka`]: the consumer's poller thread and rebalance handling, and the input record it hands over.
//! - [`worker`]: the pipeline, one module per stage — record in, flush, compute (decode, index, evaluate,
//!   diff), write, outbox — with partitions, in-memory device state and timers.
//! - [`relay`]: publishes the transactional outbox to Kafka (idempotent producer, leader lease, at-least-once
//!   with stable ids, per-key order).
//! - [`demo`]: `cohort demo` — the whole main job on a fresh machine (embedded broker, synthetic fleet,
//!   worker, relay and API) with live progress and a summary.
//! - [`metrics`]: every metric name and the Prometheus recorder.
//! - [`reconcile`]: `cohort reconcile` — recomputes memberships, targets, standings and release progress
//!   from PostgreSQL and reports drift.
//! - [`plan`]: `cohort plan` and `cohort apply` — an org's groups and releases kept in a file, compared
//!   with its live state, with each change's membership and firmware impact, and applied exactly.
//! - [`release_watch`]: advances staged releases whose soak time ran out, and publishes release progress
//!   as metrics (every worker process runs it).
//! - [`api`]: the REST API (groups, members, pins, previews, the log, devices, releases, keys, OpenAPI).
//! - [`console`]: the web console at `/console` — server-rendered pages over the API's handlers, signed
//!   in with an org's key (sessions in PostgreSQL, CSRF tokens, a strict Content-Security-Policy).
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`app`]: `Application::build(config)` then `run_until_stopped(shutdown)`.
//! - [`synthetic`]: the synthetic fleet the demo and the benchmark run — the generator, its seeding into
//!   PostgreSQL, and the broker its events stream through.
//! - [`bench`](mod@bench): `cohort bench`, the end-to-end benchmark: a synthetic fleet streamed through a
//!   broker into the worker and PostgreSQL, against the ceiling of the same writes by a minimal writer.
//! - [`cli`]: the `cohort` command line; `main.rs` only parses and calls it.
//! - [`telemetry`]: logging set-up.

pub mod api;
pub mod app;
pub mod backoff;
pub mod bench;
pub mod cli;
pub mod config;
pub mod console;
pub mod demo;
pub mod event;
pub mod firmware;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod plan;
pub mod reconcile;
pub mod relay;
pub mod release_watch;
pub mod rules;
pub mod store;
pub mod synthetic;
pub mod telemetry;
pub mod worker;
