//! Rebalances: the poller's callback hands every assignment and revocation to the pipeline and waits for
//! the answer. An assigned partition is claimed in PostgreSQL (fencing any previous owner), its devices
//! loaded and the control entries it has not applied queued; a revoked one has its batches in flight and
//! its buffer finished if they can be, then its state dropped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::device::Device;
use super::partition::{DeviceMap, Partition};
use super::pipeline::{Pipeline, Rebalances};
use crate::backoff::Backoff;
use crate::kafka::RebalanceRequest;
use crate::metrics as m;
use crate::store::control;
use crate::store::{partition as stored, StoreError};

impl Pipeline {
    /// Answers a rebalance request (see the module's documentation).
    pub(super) async fn rebalance(
        &mut self,
        request: RebalanceRequest,
        rebalances: &mut Rebalances,
    ) {
        match request {
            RebalanceRequest::Assign {
                partitions,
                generation,
                reply,
            } => {
                let mut offsets = Vec::new();
                for partition in partitions {
                    // A partition left out of the answer is not assigned by the callback, yet the group
                    // counts it as ours: no worker would consume it until the next rebalance. So a failure
                    // to take it (the database down, restarting or refusing connections) is retried until
                    // it succeeds, like a batch.
                    let mut backoff = Backoff::from_config(&self.config);
                    let next_offset = loop {
                        match self.assign(partition, generation).await {
                            Ok(next_offset) => break next_offset,
                            Err(e) => {
                                let wait = backoff.step();
                                tracing::warn!(partition, error = %e, backoff_ms = wait.as_millis() as u64, "cannot take the partition; retrying");
                                tokio::time::sleep(wait).await;
                            }
                        }
                    };
                    offsets.push((partition, next_offset));
                }
                let _ = reply.send(offsets);
            }
            RebalanceRequest::Revoke { partitions, reply } => {
                for partition in partitions {
                    // Finish the batch in flight and what is buffered if we still can; otherwise the next
                    // owner re-reads it.
                    self.finish_unless_retrying(partition, rebalances).await;
                    self.flush_partition(partition, rebalances).await;
                    self.finish_unless_retrying(partition, rebalances).await;
                    self.drop_partition(partition);
                }
                let _ = reply.send(());
            }
        }
    }

    /// Finishes a partition's batches in flight, unless a commit is failing (the database is away): then
    /// they are abandoned (`drop_partition` aborts them) rather than holding up a rebalance.
    async fn finish_unless_retrying(&mut self, partition: i32, rebalances: &mut Rebalances) {
        let failing = self
            .in_flight
            .get(&partition)
            .is_some_and(|q| q.iter().any(|f| f.retrying.load(Ordering::SeqCst)));
        if !failing {
            self.finish(partition, rebalances).await;
        }
    }

    /// Answers a rebalance request once the pipeline has stopped: assigns nothing, drops what is revoked.
    pub(super) fn answer_during_shutdown(&mut self, request: RebalanceRequest) {
        match request {
            RebalanceRequest::Assign { reply, .. } => {
                let _ = reply.send(Vec::new());
            }
            RebalanceRequest::Revoke { partitions, reply } => {
                for partition in partitions {
                    self.drop_partition(partition);
                }
                let _ = reply.send(());
            }
        }
    }

    /// Forgets a partition: aborts its batches in flight and drops its state and buffer.
    pub(super) fn drop_partition(&mut self, partition: i32) {
        // Its lag is the new owner's to report now; a stale value here would raise false alarms.
        metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string()).set(0.0);
        for flight in self.in_flight.remove(&partition).into_iter().flatten() {
            // Abandoned: if its transaction still commits, it does so under this worker's epoch, before the
            // next owner's claim (which waits for the position row's lock) reads the positions. A batch
            // waiting behind it never starts.
            flight.task.abort();
        }
        self.partitions.remove(&partition);
        self.view.remove(partition);
        if let Some(generation) = self.generations.remove(&partition) {
            self.revoked.insert(partition, generation);
        }
        self.buffers.remove(&partition);
        if let Ok(mut c) = self.shared.committed.lock() {
            c.remove(&partition);
        }
    }

    /// Claims a partition, loads its devices and queues the control entries it has not applied yet.
    async fn assign(&mut self, partition: i32, generation: u64) -> Result<i64, StoreError> {
        let pool = self.pool.clone();
        let topic = self.config.kafka.input_topic.clone();
        let owner = self.owner.clone();
        // The registry must be at least as far as the partition's stored position.
        self.refresh_control().await?;
        let head = self.registry.position;
        let claim = self
            .retry("claiming a partition", || {
                stored::claim(&pool, &topic, partition, &owner, head)
            })
            .await?;
        if claim.control_position > self.registry.position {
            self.refresh_control().await?;
        }
        let mut state = Partition::new(partition, claim);
        self.load_devices(&mut state).await?;
        // The API writes static memberships itself, so what was just loaded can include the effects of
        // entries appended after the registry's position. Read up to the log's head now, and queue every
        // entry up to it: they are all applied in the partition's first batch, whose end state then matches
        // what was loaded (applying an entry whose effect is already loaded changes nothing).
        self.refresh_control().await?;
        let catch_up = if claim.control_position < self.registry.position {
            let from = claim.control_position;
            self.retry("reading the control log", || {
                control::read_after(&pool, from, i64::MAX)
            })
            .await?
        } else {
            Vec::new()
        };
        let upto = self.registry.position;
        state
            .pending_control
            .extend(catch_up.into_iter().filter(|e| e.id <= upto));
        let now = self.clock.now();
        let ids: Vec<Box<str>> = state.devices.read().keys().cloned().collect();
        state.schedule_all(ids.iter().map(|id| &**id), &self.registry, now);
        tracing::info!(
            partition,
            devices = state.devices.read().len(),
            epoch = claim.epoch,
            next_offset = claim.next_offset,
            pending_control = state.pending_control.len(),
            "partition claimed"
        );
        if let Ok(mut c) = self.shared.committed.lock() {
            c.insert(partition, claim.next_offset);
        }
        self.view.insert(partition, state.devices.clone());
        self.partitions.insert(partition, state);
        self.generations.insert(partition, generation);
        Ok(claim.next_offset)
    }

    /// Loads a partition's devices and their memberships into `state`, streaming the rows so that the stored
    /// rows are never all held at once. A transient failure starts over, with backoff.
    async fn load_devices(&mut self, state: &mut Partition) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let mut backoff = Backoff::from_config(&self.config);
        loop {
            let registry = &mut self.registry;
            let mut loaded = DeviceMap::default();
            let devices = &mut loaded;
            let mut result = stored::for_each_device(&pool, state.id, |row| {
                if let Some(device) = Device::from_stored(&row, &[], registry) {
                    devices.insert(row.id.into_boxed_str(), Box::new(device));
                }
            })
            .await;
            if result.is_ok() {
                result = stored::for_each_membership(&pool, state.id, |m| {
                    if let Some(device) = devices.get_mut(m.device_id.as_str()) {
                        device.push_stored_membership(&m, registry);
                    }
                })
                .await;
            }
            match result {
                Ok(()) => {
                    for device in devices.values_mut() {
                        device.loaded();
                    }
                    *state.devices.write() = loaded;
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.step();
                    tracing::warn!(partition = state.id, error = %e, backoff_ms = wait.as_millis() as u64, "loading a partition failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sleeps for `backoff`, serving rebalance requests meanwhile. Returns true if `partition` was revoked.
    pub(super) async fn wait_or_revoked(
        &mut self,
        partition: i32,
        backoff: Duration,
        rebalances: &mut Rebalances,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            let request = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => None,
                r = rebalances.recv() => r,
            };
            match request {
                None => return !self.partitions.contains_key(&partition),
                Some(RebalanceRequest::Revoke { partitions, reply }) => {
                    for p in &partitions {
                        self.drop_partition(*p);
                    }
                    let _ = reply.send(());
                    if partitions.contains(&partition) {
                        return true;
                    }
                }
                Some(assign @ RebalanceRequest::Assign { .. }) => {
                    Box::pin(self.rebalance(assign, rebalances)).await;
                }
            }
        }
    }
}
