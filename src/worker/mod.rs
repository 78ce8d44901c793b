//! The worker: a Kafka consumer-group member that owns the devices of its partitions and is the only writer
//! of their dynamic memberships.
//!
//! # The pipeline, stage by stage
//!
//! One pipeline task serves every owned partition ([`run`]). A record's way through it:
//!
//! 1. **Record in.** The poller thread ([`crate::kafka`]) hands each record, with its partition and
//!    assignment generation, over a bounded channel. [`accept`] drops records of an older assignment,
//!    decodes the others once ([`crate::kafka::record`]; a record that can never be applied is kept for its
//!    dead letter) and buffers them per partition.
//! 2. **Flush.** [`flush`] closes a partition's batch when it is full, old enough, or has control entries or
//!    timers due, and reads the devices it names that the partition does not hold (re-homed or new ones).
//! 3. **Compute.** [`compute`] computes the batch on copies of the devices it touches, one module per input
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
//! what the worker lets others observe; [`Clock`] is where it reads the time.
//!
//! # Pipelining
//!
//! A partition's batches commit in order, one at a time, and are pipelined two deep when the partition is
//! behind: while one commits, a full next batch is computed on the state the first leaves, and its commit
//! task starts the moment the first commits (it waits for the first's signal, not for this task). So a
//! partition that is behind does not idle its connection while a batch is computed. One that is not waits
//! for the commit instead, and its next batch gathers what arrives meanwhile: computing it early would
//! split that into two smaller commits. The in-memory state moves on when a batch is computed; each batch
//! in flight keeps what it replaced, so that a batch which does not commit, and every batch after it, can
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
pub mod rebalance;
pub mod refresh;
// Public: the benchmark's public functions (`bench::seed`, `bench::verify`) take and return a `Registry`.
pub mod registry;
pub mod run;
mod status;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::sync::mpsc;

pub use self::clock::{Clock, ManualClock, SystemClock};
use self::run::{Channels, Pipeline};
pub use self::status::{Stages, Status};
use crate::config::Config;
use crate::kafka::{self, Shared};
use crate::metrics as m;
use crate::rules::Catalogue;

/// Everything the worker needs, built once.
pub struct Worker {
    config: Config,
    brokers: String,
    pool: PgPool,
    catalogue: Arc<Catalogue>,
    clock: Arc<dyn Clock>,
    status: Arc<Status>,
    owner: String,
}

impl Worker {
    /// Prepares a worker; nothing connects until [`Worker::run_until_stopped`].
    pub fn build(
        config: Config,
        brokers: String,
        pool: PgPool,
        catalogue: Arc<Catalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "cohort".into()),
            std::process::id()
        );
        Self {
            config,
            brokers,
            pool,
            catalogue,
            clock,
            status: Arc::new(Status::default()),
            owner,
        }
    }

    /// The worker's observable status.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` resolves, then finishes in-flight batches (bounded by the configured deadline),
    /// leaves the consumer group and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (records_tx, records) = mpsc::channel(self.config.worker.batch_max_events.max(1) * 4);
        let (rebalance_tx, rebalances) = mpsc::unbounded_channel();
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let mut pipeline = Pipeline::new(&self, shared.clone(), completions_tx);
        // Definitions first, so the first assignment can be served.
        pipeline.load_definitions().await?;
        let consumer = kafka::client_config(&self.config.kafka, &self.brokers, kafka::Role::Worker);
        let poller = kafka::spawn_poller(
            consumer,
            self.config.kafka.input_topic.clone(),
            records_tx,
            rebalance_tx,
            shared.clone(),
        )
        .context("failed to start the Kafka consumer")?;
        self.status.ready.store(true, Ordering::SeqCst);
        metrics::gauge!(m::READY).set(1.0);
        let mut channels = Channels {
            records,
            rebalances,
            completions,
        };
        let result = pipeline.run(&mut channels, shutdown).await;
        // The pipeline takes no more records (the poller sees the channel closed) and no completions.
        let Channels {
            records,
            mut rebalances,
            completions,
        } = channels;
        drop(records);
        drop(completions);
        self.status.ready.store(false, Ordering::SeqCst);
        metrics::gauge!(m::READY).set(0.0);
        shared.stop.store(true, Ordering::SeqCst);
        // The poller revokes through the pipeline while closing; serve those requests until it is gone.
        let join = tokio::task::spawn_blocking(move || poller.join());
        tokio::pin!(join);
        loop {
            tokio::select! {
                _ = &mut join => break,
                Some(request) = rebalances.recv() => {
                    pipeline.answer_during_shutdown(request);
                }
            }
        }
        result
    }
}
