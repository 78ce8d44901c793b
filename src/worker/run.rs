//! The worker and its run loop: one pipeline task serves every owned partition.
//!
//! [`Worker::run_until_stopped`] starts the poller thread, runs the loop until shutdown, then serves the
//! revocations the poller makes while it leaves the consumer group.
//!
//! The loop owns the `Channels` it waits on: records from the poller thread (bounded), rebalance
//! requests from the poller's callback, and the commit tasks' completions; and it listens for control-log
//! notifications. It serves, in this order of priority: shutdown, rebalance requests, completions (before
//! new input), records, notifications. Then, on every turn, it reads the control log if it changed
//! ([`super::refresh`]), flushes the partitions whose batch is due ([`super::flush`]) and reports its
//! gauges. Code that waits deeper down while still answering rebalances (a batch whose devices cannot be
//! read yet) is lent the rebalance receiver.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::clock::Clock;
use super::pipeline::{Completion, Pipeline, Rebalances};
use super::registry::Registry;
use super::status::Status;
use super::view::FleetView;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::kafka::{self, Polled, Shared};
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
    /// The partitions it holds, for previews in this process and its peers.
    view: FleetView,
    /// The name it claims partitions under, unique per worker.
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
        // Unique per worker, not only per process (tests run several workers in one process): peers find
        // a partition's worker by this name (`live_workers`).
        let owner = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "cohort".into()),
            std::process::id(),
            super::presence::random_hex(4)
        );
        Self {
            config,
            brokers,
            pool,
            catalogue,
            clock,
            status: Arc::new(Status::default()),
            view: FleetView::default(),
            owner,
        }
    }

    /// The worker's observable status.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The name it claims partitions under (`partition_positions.owner`).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The devices it holds, for previews evaluated where the devices are ([`super::view`]).
    pub fn view(&self) -> FleetView {
        self.view.clone()
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

/// What the run loop waits on.
struct Channels {
    /// Records from the poller thread (bounded: the poller holds what does not fit).
    records: mpsc::Receiver<Polled>,
    /// Assignments and revocations, each waited for by the poller's rebalance callback.
    rebalances: Rebalances,
    /// Commit tasks announce here that they ended.
    completions: mpsc::UnboundedReceiver<Completion>,
}

impl Pipeline {
    fn new(
        worker: &Worker,
        shared: Arc<Shared>,
        completions_tx: mpsc::UnboundedSender<Completion>,
    ) -> Self {
        Self {
            config: worker.config.clone(),
            pool: worker.pool.clone(),
            registry: Registry::new(worker.catalogue.clone()),
            partitions: HashMap::new(),
            generations: HashMap::new(),
            revoked: HashMap::new(),
            buffers: HashMap::new(),
            clock: worker.clock.clone(),
            status: worker.status.clone(),
            view: worker.view.clone(),
            shared,
            owner: worker.owner.clone(),
            control_dirty: true,
            in_flight: HashMap::new(),
            next_batch: 0,
            completions_tx,
        }
    }

    /// Runs until `shutdown` resolves, then finishes what is in flight and buffered, bounded by
    /// `worker.shutdown_deadline_ms`.
    async fn run(
        &mut self,
        channels: &mut Channels,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut listener = self.listen().await;
        tokio::pin!(shutdown);
        let tick = Duration::from_millis(self.config.worker.batch_max_wait_ms.clamp(5, 100));
        // After the control log could not be read or listened to (the database is away), neither is tried
        // again before this instant: capped exponential backoff instead of a reconnect on every tick.
        let mut control_backoff = Backoff::from_config(&self.config);
        let mut control_quiet_until: Option<Instant> = None;
        loop {
            let control_quiet = control_quiet_until.is_some_and(|t| Instant::now() < t);
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    break;
                }
                Some(request) = channels.rebalances.recv() => {
                    self.rebalance(request, &mut channels.rebalances).await;
                }
                Some(Completion { partition, id, at, records: n }) = channels.completions.recv() => {
                    self.status.stages.settle.record_n(at.elapsed().as_millis() as u64, n);
                    // Settle the batch that ended and any before it (they ended first: a batch commits
                    // only after its predecessor has).
                    while self
                        .in_flight
                        .get(&partition)
                        .and_then(VecDeque::front)
                        .is_some_and(|f| f.id <= id)
                    {
                        self.finish_front(partition, &mut channels.rebalances).await;
                    }
                }
                Some(polled) = channels.records.recv() => {
                    // One reading of the clocks for the burst: its records are taken together.
                    let taken = (Instant::now(), chrono::Utc::now().timestamp_millis());
                    self.accept(polled, taken);
                    // Take what is already queued, up to a batch, without waiting.
                    for _ in 0..self.config.worker.batch_max_events {
                        match channels.records.try_recv() {
                            Ok(p) => self.accept(p, taken),
                            Err(_) => break,
                        }
                    }
                }
                notified = async {
                    match listener.as_mut() {
                        Some(l) if !control_quiet => l.recv().await.map(|_| ()),
                        _ => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = notified {
                        // The listener reconnects on its own, at its next use (after the backoff); catch up
                        // then in case a notification was missed.
                        let wait = control_backoff.step();
                        tracing::warn!(error = %e, backoff_ms = wait.as_millis() as u64, "control-log listener interrupted");
                        control_quiet_until = Some(Instant::now() + wait);
                    }
                    self.control_dirty = true;
                }
                _ = tokio::time::sleep(tick) => {}
            }
            if control_quiet_until.is_none_or(|t| Instant::now() >= t) {
                if listener.is_none() {
                    listener = self.listen().await;
                }
                let mut failed = listener.is_none();
                if self.control_dirty {
                    if let Err(e) = self.refresh_control().await {
                        tracing::warn!(error = %e, backoff_ms = control_backoff.current().as_millis() as u64, "cannot read the control log; will retry");
                        failed = true;
                    } else {
                        self.control_dirty = false;
                    }
                }
                if failed {
                    control_quiet_until = Some(Instant::now() + control_backoff.step());
                } else {
                    control_quiet_until = None;
                    control_backoff.reset();
                }
            }
            self.flush_ready(false, &mut channels.rebalances).await;
            self.report();
        }
        // Shutdown: finish what is buffered, bounded by the deadline.
        let deadline = Duration::from_millis(self.config.worker.shutdown_deadline_ms);
        if tokio::time::timeout(deadline, self.drain(&mut channels.rebalances))
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline passed with batches unfinished; they will be re-read from the stored positions");
            for flight in self.in_flight.drain().flat_map(|(_, queue)| queue) {
                flight.task.abort();
            }
        }
        Ok(())
    }

    /// At shutdown: finishes the batches in flight and flushes everything buffered, until nothing is left.
    async fn drain(&mut self, rebalances: &mut Rebalances) {
        loop {
            self.finish_all(rebalances).await;
            self.flush_ready(true, rebalances).await;
            if self.in_flight.is_empty() {
                return;
            }
        }
    }

    /// Reports the owned partitions, the devices held and each partition's consumer lag.
    fn report(&self) {
        self.status
            .partitions
            .store(self.partitions.len(), Ordering::SeqCst);
        metrics::gauge!(m::PARTITIONS_OWNED).set(self.partitions.len() as f64);
        metrics::gauge!(m::CHANGES_IN_PROGRESS).set(
            self.partitions
                .values()
                .filter(|p| p.sweep.is_some())
                .count() as f64,
        );
        if self.view.published_groups() != self.registry.slots() {
            self.view.publish_groups(self.registry.group_ids());
        }
        metrics::gauge!(m::DEVICES_HELD).set(
            self.partitions
                .values()
                .map(|p| p.devices.read().len())
                .sum::<usize>() as f64,
        );
        // Read in place (no other code holds both locks): this runs on every turn of the pipeline's loop.
        let (Ok(marks), Ok(committed)) = (
            self.shared.high_watermarks.lock(),
            self.shared.committed.lock(),
        ) else {
            return;
        };
        for partition in self.partitions.keys() {
            if let (Some(high), Some(next)) = (marks.get(partition), committed.get(partition)) {
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                    .set((high - next).max(0) as f64);
            }
        }
    }
}
