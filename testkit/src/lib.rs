//! cohort's test harness: what the integration suites (`tests/suite`, `tests/hostile`), the fuzz targets
//! (`fuzz/`) and the corpus replay share.
//!
//! # Layout
//! - [`rng`]: the one seeded pseudo-random generator every suite and check draws from, the seed
//!   convention (`COHORT_TEST_SEED`) and names that must not collide ([`random_suffix`]). Property tests
//!   draw from proptest, and the fuzz checks from the fuzzer's bytes; everything else draws from here.
//! - [`rules`]: the rule language's test side — value pools ([`rules::pools`]), a deliberately simple
//!   reference evaluator ([`rules::reference`]) and proptest strategies for filters, devices and
//!   instants ([`rules::gen`], feature `strategies`).
//! - [`schema`]: a checker for the subset of JSON Schema that `schemas/` uses.
//! - [`fuzz`]: what the fuzz targets assert, for the cargo-fuzz crate and the corpus replay.
//! - [`child`]: the environment a test gives a `cohort` child process.
//! - Infrastructure (feature `infra`): [`db`] (a fresh PostgreSQL database per test), [`kafka`] (a
//!   Kafka-protocol broker per test), [`containers`] and [`docker`] (testcontainers, when Docker
//!   answers), [`cluster`] (a private PostgreSQL cluster a test may stop), [`app`] (an in-process
//!   cohort and the from-scratch oracle), [`counts`] (maintained member counts against `count(*)`, part
//!   of the oracle), [`http`] (an HTTP/1.1 JSON client), [`faults`] (fault injection on a mock cluster of
//!   several brokers), and the bounded waits [`within`], [`blocking`] and [`eventually`].
//!
//! # Which infrastructure is used
//! Chosen once per test binary, independently for PostgreSQL and Kafka, in this order:
//! 1. `DATABASE_URL` / `KAFKA_BROKERS`, when set: a real server or cluster you run. `DATABASE_URL` may
//!    name any database on the server; test databases are created beside it (PostgreSQL 13 or later,
//!    for `DROP DATABASE … WITH (FORCE)`).
//! 2. testcontainers, when a Docker daemon answers a ping within 2 s: one PostgreSQL and one Apache
//!    Kafka container, shared by all tests of the binary and removed when it exits. If a container
//!    cannot be started (e.g. no registry reachable), the next option is used, with a warning on stderr.
//! 3. Otherwise the local PostgreSQL at `postgres://postgres@127.0.0.1:5432/postgres` and librdkafka's
//!    in-process mock cluster (a fresh one per [`TestKafka`], so fault injection in one test cannot
//!    disturb another).
//!
//! Every call that can block is bounded by a timeout: a broken environment fails a test, never hangs it.
//!
//! # Servers the tests do not own
//! No test stops, restarts or reconfigures a server it did not start: the servers above are shared with
//! the binary's other tests, other test binaries and whoever else uses the machine. A test that needs a
//! server to go down creates its own with [`cluster::PrivateCluster`] (`initdb` in a temporary folder,
//! its own port, stopped and removed when dropped). A test that starts the `cohort` binary clears the
//! child's environment and passes [`child::inherited`] and the variables it means to give, so a
//! `COHORT_*` variable or `DATABASE_URL` set by the caller cannot change what the child does.

pub mod child;
pub mod fuzz;
pub mod rng;
pub mod rules;
pub mod schema;

#[cfg(feature = "infra")]
pub mod app;
#[cfg(feature = "infra")]
pub mod cluster;
#[cfg(feature = "infra")]
pub mod containers;
#[cfg(feature = "infra")]
pub mod counts;
#[cfg(feature = "infra")]
pub mod db;
#[cfg(feature = "infra")]
pub mod docker;
#[cfg(feature = "infra")]
pub mod faults;
#[cfg(feature = "infra")]
pub mod http;
#[cfg(feature = "infra")]
pub mod kafka;
#[cfg(feature = "infra")]
mod wait;

#[cfg(feature = "infra")]
pub use db::TestDatabase;
#[cfg(feature = "infra")]
pub use kafka::{ConsumedMessage, TestKafka};
pub use rng::{random_suffix, Rng};
#[cfg(feature = "infra")]
pub use wait::{blocking, eventually, within, OPERATION_TIMEOUT};
