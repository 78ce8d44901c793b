//! Flush: a partition's batch closes when it is full, old enough, or has control entries or timers due.
//! The batch is computed ([`super::compute`]) on the partition's state, which it changes in place, after
//! the devices it names that the partition does not hold are read from the database; its commit then
//! starts on a task of its own ([`super::commit`]) and the rest of its state is installed at once, so that
//! the next batch can be computed behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::commit::{commit_with_retry, install, CommitRetry};
use super::compute::{self, BatchContext};
use super::device::Device;
use super::pipeline::{BatchInputs, InFlight, Pipeline, Rebalances, PIPELINE_DEPTH};
use crate::backoff::Backoff;
use crate::kafka::Decoded;
use crate::metrics as m;
use crate::store::control::{ControlEntry, Positioned};
use crate::store::partition as stored;

/// A caught-up partition's batch (nothing of its partition in flight) is written back as it goes only if
/// it holds at most `worker.batch_max_events / WRITE_BACK_SHARE` records (a quarter).
const WRITE_BACK_SHARE: usize = 4;

/// Whether a batch of `records`, closed with nothing of its partition in flight, writes back the pages it
/// evicts: only a small one (at most a quarter of `batch_max_events`, at least one record; never a full
/// one). Batches grow when the commits before them were slow, and writing back as they go costs write
/// capacity (every evicted page written at once instead of once per checkpoint), which would slow the
/// next commits and grow the next batches further. So a partition near its write capacity writes like
/// one that is behind until its batches are small again: measured at half the benchmark's sustained rate
/// (BENCHMARKS.md, "Worker end to end"), 73–99% of the batches were written back and the p99
/// was 109–238 ms in ten runs of eleven (490 ms in the other), against 374–520 ms with every caught-up
/// batch written back, its partitions falling behind.
fn writes_back(records: usize, batch_max_events: usize) -> bool {
    records < batch_max_events && records <= (batch_max_events / WRITE_BACK_SHARE).max(1)
}

impl Pipeline {
    /// Flushes every partition whose batch is due (or all with anything to do, when `all`).
    pub(super) async fn flush_ready(&mut self, all: bool, rebalances: &mut Rebalances) {
        let now = self.clock.now();
        let max_events = self.config.worker.batch_max_events;
        let max_wait = Duration::from_millis(self.config.worker.batch_max_wait_ms);
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(id, state)| {
                let buffer = self.buffers.get(id);
                let full = buffer.is_some_and(|b| b.records.len() >= max_events);
                let old = buffer
                    .is_some_and(|b| b.first_at.is_some_and(|t| all || t.elapsed() >= max_wait));
                full || old
                    || !state.pending_control.is_empty()
                    || state.next_timer().is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for partition in due {
            self.flush_partition(partition, rebalances).await;
        }
    }

    /// Computes the next batch of a partition and starts its commit. With a batch of the partition in
    /// flight, only a full batch is computed behind it, and only while the pipeline has room, no commit is
    /// failing, and no control entry waits (see [`crate::worker`]).
    pub(super) async fn flush_partition(&mut self, partition: i32, rebalances: &mut Rebalances) {
        let max_events = self.config.worker.batch_max_events;
        if let Some(queue) = self.in_flight.get(&partition) {
            let control = self
                .partitions
                .get(&partition)
                .is_some_and(|p| !p.pending_control.is_empty());
            let failing = queue.iter().any(|f| f.retrying.load(Ordering::SeqCst));
            let full = self
                .buffers
                .get(&partition)
                .is_some_and(|b| b.records.len() >= max_events);
            if queue.len() >= PIPELINE_DEPTH || control || failing || !full {
                return;
            }
        }
        let records: Vec<Decoded> = match self.buffers.get_mut(&partition) {
            Some(buffer) => {
                let take = buffer.records.len().min(max_events);
                // The records left start the next batch's buffer, sized like the batch just taken (the
                // partition's current traffic): grown from empty, it was reallocated and copied about
                // ten times per batch.
                let mut rest = Vec::with_capacity(take.max(buffer.records.len() - take));
                rest.extend(buffer.records.drain(take..));
                let taken = std::mem::replace(&mut buffer.records, rest);
                let rest = buffer.accepted.split_off(take);
                let now = Instant::now();
                for at in std::mem::replace(&mut buffer.accepted, rest) {
                    self.status
                        .stages
                        .buffered
                        .record(now.duration_since(at).as_millis() as u64);
                }
                buffer.first_at = if buffer.records.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                taken
            }
            None => Vec::new(),
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let now = self.clock.now();
        let due = state.due_timers(now, max_events);
        let control: Vec<Positioned> = state.pending_control.iter().cloned().collect();
        if records.is_empty() && due.is_empty() && control.is_empty() {
            return;
        }
        self.start_batch(
            partition,
            BatchInputs {
                records,
                due,
                control,
                now,
            },
            rebalances,
        )
        .await;
    }

    /// Computes a batch and spawns its commit. Reads the devices the batch names that the partition does not
    /// hold first (re-homed or new ones, and those a reconciliation asks to re-read), retrying with backoff.
    pub(super) async fn start_batch(
        &mut self,
        partition: i32,
        inputs: BatchInputs,
        rebalances: &mut Rebalances,
    ) {
        let mut backoff = Backoff::from_config(&self.config);
        let foreign = loop {
            let Some(state) = self.partitions.get(&partition) else {
                return;
            };
            // Devices a reconciliation asks to re-evaluate are re-read too, so the batch starts from what
            // is stored and writes whatever differs from the rules.
            let mut unknown: Vec<String> = {
                let held = state.devices.read();
                let reread = inputs.control.iter().flat_map(|e| match &e.entry {
                    ControlEntry::Reevaluate { device_ids, .. } => device_ids
                        .iter()
                        .filter(|id| held.contains_key(id.as_str()))
                        .cloned()
                        .collect(),
                    _ => Vec::new(),
                });
                inputs
                    .records
                    .iter()
                    .filter_map(|r| r.event.as_ref().ok())
                    .filter(|e| !held.contains_key(e.device_id.as_str()))
                    .map(|e| e.device_id.clone())
                    .chain(reread)
                    .collect::<foldhash::HashSet<_>>()
                    .into_iter()
                    .collect()
            };
            unknown.sort();
            if unknown.is_empty() {
                break foldhash::HashMap::default();
            }
            match stored::load_devices(&self.pool, &unknown).await {
                Ok((rows, memberships)) => {
                    let mut by_device: foldhash::HashMap<&str, Vec<&stored::StoredMembership>> =
                        foldhash::HashMap::default();
                    for mm in &memberships {
                        by_device.entry(mm.device_id.as_str()).or_default().push(mm);
                    }
                    let mut foreign = foldhash::HashMap::default();
                    for row in &rows {
                        let members = by_device
                            .get(row.id.as_str())
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        if let Some(device) = Device::from_stored(row, members, &mut self.registry)
                        {
                            foreign.insert(row.id.as_str().into(), device);
                        }
                    }
                    break foreign;
                }
                Err(e) => {
                    let kind = e.retry_kind();
                    metrics::counter!(m::COMMIT_FAILURES, "kind" => kind).increment(1);
                    let wait = backoff.step();
                    tracing::warn!(partition, error = %e, backoff_ms = wait.as_millis() as u64, "reading a batch's devices failed; retrying");
                    // Keep answering rebalances while waiting: a revoke abandons the batch.
                    if self.wait_or_revoked(partition, wait, rebalances).await {
                        return;
                    }
                }
            }
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let started = Instant::now();
        let ctx = BatchContext {
            input_topic: &self.config.kafka.input_topic,
            dead_letter_topic: &self.config.kafka.dead_letter_topic,
            max_event_bytes: self.config.worker.max_event_bytes,
            now: inputs.now,
            output_topic: &self.config.kafka.output_topic,
            change_chunk_rows: self.config.worker.change_chunk_rows,
        };
        let mut computed = compute::batch(
            &self.registry,
            state,
            &inputs.control,
            &inputs.records,
            &inputs.due,
            foreign,
            &ctx,
        );
        metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        let stages = &self.status.stages;
        let records = inputs.records.len() as u64;
        stages
            .compute
            .record_n(started.elapsed().as_millis() as u64, records);
        stages.batch_records.record(records);
        let mut write = std::mem::take(&mut computed.write);
        let positions = (write.next_offset, write.control_position);
        self.next_batch += 1;
        let id = self.next_batch;
        let retrying = Arc::new(AtomicBool::new(false));
        let queue = self.in_flight.entry(partition).or_default();
        let after = queue.back_mut().and_then(|f| f.committed.take());
        if after.is_some() {
            metrics::counter!(m::BATCHES_PIPELINED).increment(1);
            self.status
                .batches_pipelined
                .fetch_add(1, Ordering::Relaxed);
        }
        // A partition that keeps up trades some of its write capacity for commits that do not wait on the
        // next checkpoint's file syncs; one that is behind, or nearly, keeps all of it (docs/worker.md,
        // "PostgreSQL's write load").
        let flush_after_kb = self.config.worker.caught_up_flush_after_kb;
        if after.is_none()
            && writes_back(records as usize, self.config.worker.batch_max_events)
            && flush_after_kb > 0
        {
            write.flush_after_kb = Some(flush_after_kb);
            computed.stats.caught_up = true;
        }
        let (then, committed) = oneshot::channel();
        // The commit starts first: installing (rescheduling the devices' flips) overlaps it.
        let task = tokio::spawn(commit_with_retry(
            self.pool.clone(),
            write,
            CommitRetry {
                partition,
                id,
                backoff: Backoff::from_config(&self.config),
                retrying: retrying.clone(),
                done: self.completions_tx.clone(),
                status: self.status.clone(),
                records,
            },
            after,
            then,
        ));
        let undo = install(
            state,
            &self.registry,
            computed.touched,
            computed.control,
            positions,
            inputs.now,
        );
        queue.push_back(InFlight {
            id,
            task,
            retrying,
            committed: Some(committed),
            undo,
            stats: computed.stats,
            next_offset: positions.0,
            inputs,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::writes_back;

    #[test]
    fn only_small_caught_up_batches_write_back() {
        // The default limit of 1,000: up to 250 records.
        assert!(writes_back(1, 1000));
        assert!(writes_back(250, 1000));
        assert!(!writes_back(251, 1000));
        assert!(!writes_back(999, 1000));
        assert!(!writes_back(1000, 1000));
        // Small limits still write back a batch of one, but never a full batch.
        assert!(writes_back(1, 2));
        assert!(!writes_back(2, 2));
        assert!(writes_back(1, 3));
        assert!(!writes_back(1, 1));
        assert!(writes_back(2, 8));
        assert!(!writes_back(3, 8));
    }
}
