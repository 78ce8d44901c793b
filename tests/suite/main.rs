//! cohort's integration suites in one test binary: one link of cohort, librdkafka, sqlx and axum for all
//! of them. Each suite is a module, so a test's name is its suite and its behaviour
//! (`worker::out_of_order_and_duplicate_events_change_nothing`), and a suite runs alone with its module
//! path as the filter: `cargo test --test suite faults::` (a filter matches any part of a test's path).
//!
//! Tests of every suite run side by side in one process. They share nothing a test could disturb: each
//! has its own database, topics and consumer group, or a private cluster ([`cohort_testkit`]); the
//! process-wide metrics recorder is only read for increases of counters, or for labels the test owns (its
//! own topic). The one suite that reads process-wide counters exactly is the hostile-input corpus, in a
//! binary of its own (`tests/hostile`).
//!
//! - [`api`]: the REST API against real PostgreSQL: every route, its errors, org isolation, keys, limits,
//!   the end-to-end flows with a worker, `cohort demo` and the schemathesis probe.
//! - [`bench`]: `cohort bench` on a small fleet, its group-changes phase included.
//! - [`cli`]: the `cohort` binary as an operator uses it (`cohort eval`, `cohort fields`).
//! - [`console`]: the web console in a real headless Chromium through WebDriver, with screenshots.
//! - [`crash`]: the real `cohort worker` and `cohort relay` processes SIGKILLed hundreds of times during a
//!   stream, ending exactly as computed from scratch.
//! - [`deploy`]: the deployment files and documents checked against the code.
//! - [`event_contract`]: the input and dead-letter contracts against `schemas/`.
//! - [`faults`]: the worker and relay streaming through PostgreSQL restarts, broker outages and injected
//!   Kafka errors.
//! - [`firmware`]: releases, locks and development devices, and the rollout-target events they cause.
//! - [`fuzz_corpus`]: the committed fuzz corpus replayed through the fuzz checks.
//! - [`infra`]: the harness itself.
//! - [`plan`]: `cohort plan` and `cohort apply` against real PostgreSQL with the worker.
//! - [`relay`]: the outbox relay.
//! - [`rules_props`]: property tests of the rule language against a reference evaluator.
//! - [`worker`]: the worker pipeline against PostgreSQL and a Kafka-protocol broker.

mod api;
mod bench;
mod cli;
mod console;
mod crash;
mod deploy;
mod event_contract;
mod faults;
mod firmware;
mod fuzz_corpus;
mod infra;
mod plan;
mod relay;
mod rules_props;
mod worker;
