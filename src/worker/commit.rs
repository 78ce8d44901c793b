//! Commit: each batch commits in one fenced transaction ([`crate::store::batch`]) on a task of its own,
//! retried with backoff until it succeeds, is fenced, or meets a device conflict. A partition's batches
//! commit in order: the next waits for the previous one's signal. A batch changes its partition's devices
//! as it is computed, and the pipeline installs the rest of its state when its commit starts, keeping what
//! puts it all back (its `Undo`); when the commit ends, the batch is settled
//! (offsets, metrics, counters), or the partition is dropped (fenced), or the batch and every one behind it
//! are put back and recomputed (a device conflict).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::compute::sweep::ControlProgress;
use super::compute::touched::TouchedDevices;
use super::compute::Stats;
use super::partition::Partition;
use super::pipeline::{Completion, Outcome, Pipeline, Rebalances, Undo};
use super::registry::Registry;
use super::status::Status;
use crate::backoff::Backoff;
use crate::kafka::Decoded;
use crate::metrics as m;
use crate::rules::EpochMillis;
use crate::store::control::Positioned;
use crate::store::{self, StoreError};

/// How a commit task retries.
pub(crate) struct CommitRetry {
    pub(super) partition: i32,
    /// The batch's number.
    pub(super) id: u64,
    pub(super) backoff: Backoff,
    /// Set while waiting to retry (see [`InFlight::retrying`]).
    pub(super) retrying: Arc<AtomicBool>,
    /// Where the task announces that it ended.
    pub(super) done: mpsc::UnboundedSender<Completion>,
    pub(super) status: Arc<Status>,
    /// Input records in the batch (for the per-record latency stages).
    pub(super) records: u64,
}

/// Commits a batch once the partition's previous batch has (`after`), retrying every failure with capped
/// exponential backoff except the two that need the pipeline: fenced (the partition is lost) and a device
/// conflict (the batch must be recomputed). Signals `then` when it has committed.
pub(super) async fn commit_with_retry(
    pool: PgPool,
    write: store::batch::BatchWrite,
    retry: CommitRetry,
    after: Option<oneshot::Receiver<()>>,
    then: oneshot::Sender<()>,
) -> Outcome {
    let spawned = Instant::now();
    if let Some(after) = after {
        if after.await.is_err() {
            // The previous batch failed or was abandoned: this one was computed on its state.
            return Outcome::Skipped;
        }
    }
    let mut backoff = retry.backoff;
    let result = loop {
        let started = Instant::now();
        let result = store::batch::commit(&pool, &write).await;
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => break Ok(()),
            Err(e @ (StoreError::Fenced { .. } | StoreError::DeviceConflict { .. })) => {
                break Err(e)
            }
            Err(e) => {
                let kind = e.retry_kind();
                metrics::counter!(m::COMMIT_FAILURES, "kind" => kind).increment(1);
                let wait = backoff.step();
                tracing::warn!(partition = retry.partition, error = %e, backoff_ms = wait.as_millis() as u64, "batch failed; retrying");
                retry.retrying.store(true, Ordering::SeqCst);
                tokio::time::sleep(wait).await;
                retry.retrying.store(false, Ordering::SeqCst);
            }
        }
    };
    let at = Instant::now();
    if result.is_ok() {
        let _ = then.send(());
    }
    retry
        .status
        .stages
        .commit
        .record_n(at.duration_since(spawned).as_millis() as u64, retry.records);
    let _ = retry.done.send(Completion {
        partition: retry.partition,
        id: retry.id,
        at,
        records: retry.records,
    });
    match result {
        Ok(()) => Outcome::Committed,
        Err(e) => Outcome::Failed(e),
    }
}

impl Pipeline {
    /// Waits for every batch of a partition in flight, oldest first, and acts on each outcome.
    pub(super) async fn finish(&mut self, partition: i32, rebalances: &mut Rebalances) {
        while self.in_flight.contains_key(&partition) {
            self.finish_front(partition, rebalances).await;
        }
    }

    /// Waits for a partition's oldest batch in flight and acts on the outcome: settles it (committed), drops
    /// the partition (fenced), or puts it and the batches after it back and recomputes them (a device
    /// conflict).
    pub(super) async fn finish_front(&mut self, partition: i32, rebalances: &mut Rebalances) {
        let Some(queue) = self.in_flight.get_mut(&partition) else {
            return;
        };
        let flight = queue.pop_front();
        if queue.is_empty() {
            self.in_flight.remove(&partition);
        }
        let Some(flight) = flight else {
            return;
        };
        let outcome = match flight.task.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(partition, error = %e, "a batch commit task failed; dropping the partition");
                self.drop_partition(partition);
                return;
            }
        };
        let conflicted = match outcome {
            Outcome::Committed => {
                self.settle(
                    partition,
                    flight.next_offset,
                    &flight.stats,
                    &flight.inputs.records,
                );
                return;
            }
            Outcome::Failed(StoreError::Fenced { .. }) => {
                metrics::counter!(m::COMMIT_FAILURES, "kind" => "fenced").increment(1);
                tracing::warn!(partition, "partition fenced: another worker owns it now");
                self.drop_partition(partition);
                return;
            }
            Outcome::Failed(StoreError::DeviceConflict { devices }) => {
                metrics::counter!(m::COMMIT_FAILURES, "kind" => "device_conflict").increment(1);
                tracing::info!(
                    partition,
                    devices = devices.len(),
                    "devices changed under the batch; reloading them"
                );
                devices
            }
            // Not reached: the oldest batch waits for nothing.
            Outcome::Skipped => Vec::new(),
            Outcome::Failed(e) => {
                // `commit_with_retry` retries everything else; not reached.
                tracing::error!(partition, error = %e, "batch commit gave up; dropping the partition");
                self.drop_partition(partition);
                return;
            }
        };
        // Put back the batch and every one computed after it, newest first, then recompute them in order.
        let mut flights = vec![(flight.undo, flight.inputs)];
        for later in self.in_flight.remove(&partition).into_iter().flatten() {
            later.task.abort();
            flights.push((later.undo, later.inputs));
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let mut recompute = Vec::with_capacity(flights.len());
        for (undo, inputs) in flights.into_iter().rev() {
            uninstall(state, undo, &inputs.control);
            recompute.push(inputs);
        }
        {
            let mut devices = state.devices.write();
            for id in &conflicted {
                devices.remove(id.as_str());
            }
        }
        for inputs in recompute.into_iter().rev() {
            self.start_batch(partition, inputs, rebalances).await;
        }
    }

    /// Finishes every batch in flight.
    pub(super) async fn finish_all(&mut self, rebalances: &mut Rebalances) {
        let partitions: Vec<i32> = self.in_flight.keys().copied().collect();
        for partition in partitions {
            self.finish(partition, rebalances).await;
        }
    }

    /// Records a committed batch: the offset Kafka may be told, metrics and counters.
    fn settle(&mut self, partition: i32, next_offset: i64, stats: &Stats, records: &[Decoded]) {
        if !self.partitions.contains_key(&partition) {
            return;
        }
        if let Ok(mut c) = self.shared.committed.lock() {
            c.insert(partition, next_offset);
        }
        metrics::counter!(m::BATCHES).increment(1);
        if stats.caught_up {
            metrics::counter!(m::BATCHES_CAUGHT_UP).increment(1);
            self.status.batches_caught_up.fetch_add(1, Ordering::SeqCst);
        }
        metrics::counter!(m::EVENTS, "outcome" => "applied").increment(stats.applied);
        metrics::counter!(m::EVENTS, "outcome" => "duplicate").increment(stats.duplicates);
        metrics::counter!(m::EVENTS, "outcome" => "stale").increment(stats.stale);
        metrics::counter!(m::EVENTS, "outcome" => "dead_letter")
            .increment(stats.dead_letters.len() as u64);
        for reason in &stats.dead_letters {
            metrics::counter!(m::DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
        }
        for (reason, n) in &stats.changes {
            metrics::counter!(m::MEMBERSHIP_CHANGES, "reason" => *reason).increment(*n);
        }
        metrics::counter!(m::GROUP_EVALUATIONS).increment(stats.groups_evaluated);
        metrics::counter!(m::EVENTS_WITHOUT_CANDIDATES).increment(stats.no_candidates);
        metrics::counter!(m::DEVICES_REHOMED).increment(stats.rehomed);
        metrics::counter!(m::CONTROL_ENTRIES).increment(stats.control_entries);
        metrics::counter!(m::TIMER_EVALUATIONS).increment(stats.timer_evaluations);
        metrics::counter!(m::ROLLOUT_EVENTS).increment(stats.rollouts);
        let wall = chrono::Utc::now().timestamp_millis();
        let latency = metrics::histogram!(m::EVENT_LATENCY_SECONDS);
        for record in records {
            if let Some(ts) = record.timestamp {
                let ms = (wall - ts).max(0);
                latency.record(ms as f64 / 1000.0);
                self.status.latency.record(ms as u64);
            }
        }
        self.status
            .devices_rehomed
            .fetch_add(stats.rehomed, Ordering::Relaxed);
        self.status
            .timer_evaluations
            .fetch_add(stats.timer_evaluations, Ordering::SeqCst);
        self.status
            .records_committed
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        self.status.batches.fetch_add(1, Ordering::SeqCst);
    }
}

/// Installs a computed batch in its partition's state — its devices are already changed in place — by
/// rescheduling the time flips of the devices it touched and of those its definition changes visited,
/// moving its positions, taking the control entries it applied off the queue, and keeping the definition
/// change it leaves under way. Returns what puts the partition back.
pub(super) fn install(
    state: &mut Partition,
    registry: &Registry,
    touched: TouchedDevices,
    control: ControlProgress,
    (next_offset, control_position): (i64, i64),
    now: EpochMillis,
) -> Undo {
    let undo_positions = (state.claim.next_offset, state.claim.control_position);
    state.claim.next_offset = next_offset;
    state.claim.control_position = control_position;
    for _ in 0..control.applied {
        state.pending_control.pop_front();
    }
    let sweep = std::mem::replace(&mut state.sweep, control.sweep);
    let visited = control
        .visited
        .iter()
        .flat_map(|(ids, range)| ids[range.clone()].iter().map(|id| &**id));
    state.schedule_all(touched.ids().chain(visited), registry, now);
    Undo {
        devices: touched,
        next_offset: undo_positions.0,
        control_position: undo_positions.1,
        control_applied: control.applied,
        sweep,
    }
}

/// Puts back what a batch changed: the devices as they were, the positions, the sweep under way, and the
/// control entries the batch applied (the first of `control`) at the head of the queue.
fn uninstall(state: &mut Partition, undo: Undo, control: &[Positioned]) {
    state.claim.next_offset = undo.next_offset;
    state.claim.control_position = undo.control_position;
    state.sweep = undo.sweep;
    for entry in control[..undo.control_applied].iter().rev() {
        state.pending_control.push_front(entry.clone());
    }
    let mut devices = state.devices.write();
    undo.devices.restore(&mut devices, &mut state.timers);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;

    /// A batch computed on the state of one that did not commit never writes: its task ends without
    /// touching the database (this pool points at a closed port, so an attempt would retry, not end).
    #[tokio::test]
    async fn a_batch_whose_predecessor_did_not_commit_is_not_attempted() {
        let config =
            Config::load_from(None, Vec::<(String, String)>::new()).expect("defaults load");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let (predecessor, after) = oneshot::channel::<()>();
        drop(predecessor);
        let (then, committed) = oneshot::channel();
        let (done, mut completions) = mpsc::unbounded_channel();
        let retry = CommitRetry {
            partition: 0,
            id: 2,
            backoff: Backoff::from_config(&config),
            retrying: Arc::new(AtomicBool::new(false)),
            done,
            status: Arc::new(Status::default()),
            records: 1,
        };
        let task = commit_with_retry(
            pool,
            store::batch::BatchWrite::default(),
            retry,
            Some(after),
            then,
        );
        // A guard against a hang (an attempted commit retries forever), not a timing assertion.
        let outcome = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the task ends without attempting the commit");
        assert!(matches!(outcome, Outcome::Skipped));
        assert!(committed.await.is_err(), "no success signal");
        assert!(completions.try_recv().is_err(), "no completion announced");
    }
}
