//! The worker: a Kafka consumer-group member that owns the devices of its partitions and is the only writer
//! of their dynamic memberships.
//!
//! # The pipeline, stage by stage
//!
//! One pipeline task serves every owned partition ([`run`]), on the state in [`pipeline`]. A record's way
//! through it:
//!
//! 1. **Record in.** The poller thread ([`crate::kafka`]) hands each record, with its partition and
//!    assignment generation, over a bounded channel. [`accept`] drops records of an older assignment,
//!    decodes the others once ([`crate::kafka::record`]; a record that can never be applied is kept for its
//!    dead letter) and buffers them per partition.
//! 2. **Flush.** [`flush`] closes a partition's batch when it is full, old enough, or has control entries or
//!    timers due, and reads the devices it names that the partition does not hold (re-homed or new ones).
//! 3. **Compute.** [`compute`] computes the batch on the devices it touches, in place, one module per input
//!    kind — [`compute::control`] (control-log entries), [`compute::event`] (the records: each event applied
//!    to its device, and the org's field index naming the candidate groups), [`compute::timer`] (due time
//!    flips) — then [`compute::evaluate`] (the candidates' filters), [`compute::diff`] (membership rows),
//!    [`compute::resolve`] (firmware targets) and [`compute::write`] (device and log rows), with
//!    [`compute::outbox`] rendering rollout-target events and dead letters.
//! 4. **Write.** [`commit`] commits everything in one fenced transaction ([`crate::store::batch`]) on a task
//!    of its own, so the other partitions' batches are computed and committed meanwhile, then settles it:
//!    offsets, metrics, counters.
//! 5. **Outbox → relay.** The outbox rows committed with the batch are published by [`crate::relay`].
//!
//! Beside the stages: [`rebalance`] claims assigned partitions and loads their devices, and finishes or
//! drops revoked ones; [`refresh`] loads the group definitions and follows the control log; a partition's
//! state is a [`partition`] of [`device`]s, evaluated against the [`registry`] of every org's groups.
//! [`engine`] is the batch computation alone, for the benchmark's ceiling. [`Status`] and [`latency`] are
//! what the worker lets others observe, [`view`] the devices it holds (previews evaluate there) and
//! [`presence`] where its peers reach it; [`Clock`] is where it reads the time.
//!
//! # Pipelining
//!
//! A partition's batches commit in order, one at a time, and are pipelined two deep when the partition is
//! behind: while one commits, a full next batch is computed on the state the first leaves, and its commit
//! task starts the moment the first commits (it waits for the first's signal, not for this task). So a
//! partition that is behind does not idle its connection while a batch is computed. One that is not waits
//! for the commit instead, and its next batch gathers what arrives meanwhile: computing it early would
//! split that into two smaller commits. The in-memory state moves on when a batch is computed; each batch
//! in flight keeps what puts its changes back, so that a batch which does not commit, and every batch after it, can
//! be put back.
//! A batch whose inputs include control entries is computed only when nothing of its partition is in
//! flight (a reconciliation re-reads devices from the database, which must hold every earlier batch).
//! Kafka offsets, metrics and the committed-record count move only when a commit succeeds.
//!
//! # Failures
//!
//! A transient database error is retried with capped exponential backoff with jitter ([`crate::backoff`]),
//! never skipped (while rebalance requests are still answered); a fenced commit means another worker owns
//! the partition, so its state is dropped; a device conflict (another partition re-homed the device) puts
//! the batch and the one behind it back, evicts the device, and recomputes both.

pub mod accept;
mod clock;
pub mod commit;
pub mod compute;
pub mod device;
pub mod engine;
pub mod flush;
pub mod latency;
pub mod partition;
pub mod pipeline;
pub mod presence;
pub mod rebalance;
pub mod refresh;
// Public: the benchmark's public functions (`bench::seed`, `bench::verify`) take and return a `Registry`.
pub mod registry;
pub mod run;
mod status;
pub mod view;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::run::Worker;
pub use self::status::{Stages, Status};
pub use self::view::FleetView;
