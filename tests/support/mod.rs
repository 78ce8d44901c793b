//! Shared infrastructure for the integration suites: a fresh PostgreSQL database and a Kafka-protocol
//! broker per test, and helpers to produce and read messages.
//!
//! Include it from a suite (`tests/<suite>/main.rs`) with
//! `#[path = "../support/mod.rs"] mod support;`.
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

#![allow(dead_code)] // each suite uses a different part of the harness

pub mod app;
pub mod child;
pub mod cluster;
pub mod containers;
pub mod db;
pub mod docker;
pub mod faults;
pub mod http;
pub mod kafka;

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

pub use db::TestDatabase;
#[allow(unused_imports)] // not every suite reads messages
pub use kafka::{ConsumedMessage, TestKafka};

/// The default bound for a single infrastructure operation (connect, create, produce, read).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// 16 random lower-case hex digits, for names that must not collide across tests and test runs.
pub fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS once per thread and advanced on every `new()`, so this is
    // unpredictable across processes and distinct within one.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

/// Awaits `future` for at most `limit`, turning a timeout into an error that says what was waited for.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .with_context(|| format!("timed out after {limit:?} waiting to {what}"))?
}

/// Runs blocking work (librdkafka calls that block the calling thread) on a thread of its own,
/// bounded by `limit`. On timeout the thread is abandoned and an error returned, so the test fails
/// instead of hanging. (Not `spawn_blocking`: dropping a tokio runtime waits for its blocking tasks,
/// so an abandoned one would hang the test at its end.)
pub async fn blocking<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("test-blocking".to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .with_context(|| format!("failed to spawn a thread to {what}"))?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(anyhow::anyhow!("the thread meant to {what} panicked")),
        Err(_) => Err(anyhow::anyhow!(
            "timed out after {limit:?} waiting to {what}"
        )),
    }
}

/// Polls `condition` every 50 ms until it returns `Some`, or fails once `limit` has passed. Use this to
/// wait for an effect instead of sleeping a fixed time.
pub async fn eventually<T, F, Fut>(
    limit: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: still not true after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
