//! `cohort bench`: the worker end to end — a synthetic fleet streamed through a Kafka-protocol broker into
//! the worker and PostgreSQL — measured against the ceiling of the same PostgreSQL writes done by a minimal
//! writer, in the same run.
//!
//! Phases, in one process ([`run`](mod@run) orders them, [`phases`] runs the worker's):
//! 1. **seed** ([`synthetic::seed`](crate::synthetic::seed)): orgs and dynamic groups through the store
//!    (so the control log is right), then devices and their initial memberships bulk-loaded, each device
//!    on its Kafka partition, and the partitions' positions at the control-log head: the worker starts in
//!    steady state, with every device as the event stream keeps it
//!    ([`synthetic::fleet`](crate::synthetic::fleet)), so every phase's events change as many memberships
//!    per event.
//! 2. **load**: the worker (the same [`Application`](crate::app::Application) `cohort worker` runs,
//!    embedded relay included) joins the consumer group and loads its partitions; resident memory is read
//!    before and after (`/proc/self/status`), giving bytes per device held, and its peak is reset, so the
//!    peak read at the stop is the operating worker's.
//! 3. **throughput**: `--events` events are produced as fast as the broker takes them; the sustained rate
//!    is the committed rate between 10% and 90% of them (the worker's [`Status`](crate::worker::Status)
//!    counters, sampled by [`readings`]); the CPU the phase used per event is read from `/proc` by role
//!    ([`cpu`]), the log rows it wrote per event from the log's ids, and resident memory once they are
//!    committed (with a heartbeat or realistic mix, `--events` ≥ `--devices` has every device report).
//! 4. **latency**: events are produced at half the sustained rate (or `--rate`) for `--latency-seconds`; the latency of
//!    each is from its Kafka timestamp (set when produced) to just after its batch commits.
//! 5. **changes** ([`changes`], unless `--skip-changes`): events go on at the same rate while
//!    the worker's REST API ([`api`] is its client) is read — a group, a page of groups, previews, one at
//!    a time and 20 at once — and a group is created, edited and deleted, each change timed until every
//!    partition has applied it, with the latency of the events committed meanwhile; a release dry run
//!    to the created group.
//! 6. **ceiling** ([`ceiling`]): the worker stopped, a minimal writer commits precomputed batches of the
//!    same shape, with one connection per partition and then with one, each run long enough to span
//!    several checkpoint cycles. The database server's own counters ([`server`]) say what it wrote.
//! 7. **check** ([`verify`]): every event committed, every membership equal to an oracle, the log
//!    consistent.
//!
//! Then the [`report`], as text or JSON, with the goals met or not; the command line is [`options`].
//!
//! Time: the worker runs on a [`ManualClock`](crate::worker::ManualClock) the benchmark sets. It reads
//! the seeding instant while the partitions load (the seeded memberships were evaluated then), then
//! follows the wall clock, and is frozen before the worker stops, so the oracle evaluates at the instant
//! the worker's timers last fired.
//!
//! Without `--brokers`, the broker is librdkafka's in-process mock cluster
//! ([`synthetic::broker`](crate::synthetic::broker)). The fleet, its seeding and the broker are
//! [`crate::synthetic`]'s, shared with `cohort demo`.

pub mod api;
pub mod ceiling;
pub mod changes;
pub mod cpu;
pub mod options;
pub mod phases;
pub mod readings;
pub mod report;
pub mod run;
pub mod server;
pub mod verify;

// The minimal writer (`ceiling`) reaches the shared fleet and broker through these.
use crate::synthetic::{broker, fleet};

pub use options::{BenchArgs, BenchOptions};
pub use report::{render, BenchReport};
pub use run::run;

/// `cohort bench`: runs and prints the report; fails if the check fails.
pub async fn command(args: BenchArgs) -> anyhow::Result<()> {
    let report = run(&args.options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", render(&report));
    }
    anyhow::ensure!(
        report.correctness.ok(),
        "the correctness check failed: {:?}",
        report.correctness
    );
    Ok(())
}
