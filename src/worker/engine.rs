//! The batch computation alone, with no Kafka, no pipeline and no commit: partitions whose devices are
//! loaded by the caller, and batches of records computed on them in order, each batch's end state kept for
//! the next. The benchmark's ceiling ([`crate::bench::ceiling`]) computes the worker's writes with it, row
//! for row, to time their commits alone.

use std::collections::HashMap;

use super::compute::{self, BatchContext};
use super::device::Device;
use super::partition::Partition;
use super::registry::Registry;
use crate::kafka::Decoded;
use crate::rules::EpochMillis;
use crate::store::batch::BatchWrite;
use crate::store::partition::{Claim, StoredDevice, StoredMembership};

/// What the batches are computed with.
pub(crate) struct Settings<'a> {
    /// The topic the positions are stored under.
    pub(crate) input_topic: &'a str,
    /// Where dead letters go.
    pub(crate) dead_letter_topic: &'a str,
    /// Where rollout-target events go.
    pub(crate) output_topic: &'a str,
    /// `worker.max_event_bytes`.
    pub(crate) max_event_bytes: usize,
    /// The instant every batch is evaluated at.
    pub(crate) now: EpochMillis,
}

/// Partitions and the registry their batches are computed against.
pub(crate) struct Engine<'a> {
    registry: &'a mut Registry,
    settings: Settings<'a>,
    partitions: HashMap<i32, Partition>,
}

/// A computed batch.
pub(crate) struct Batch {
    /// What the batch writes, in one transaction.
    pub(crate) write: BatchWrite,
    /// Input records applied to their device (not skipped as duplicate or stale, nor dead-lettered).
    pub(crate) applied: u64,
}

impl<'a> Engine<'a> {
    /// An engine with no partitions yet.
    pub(crate) fn new(registry: &'a mut Registry, settings: Settings<'a>) -> Self {
        Self {
            registry,
            settings,
            partitions: HashMap::new(),
        }
    }

    /// Adds a partition with its claim and no devices.
    pub(crate) fn add_partition(&mut self, id: i32, claim: Claim) {
        self.partitions.insert(id, Partition::new(id, claim));
    }

    /// Puts a stored device, with its stored memberships, in `partition`. False if the device's org is
    /// unknown or the partition was not added.
    pub(crate) fn load_device(
        &mut self,
        partition: i32,
        row: &StoredDevice,
        memberships: &[&StoredMembership],
    ) -> bool {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return false;
        };
        let Some(device) = Device::from_stored(row, memberships, self.registry) else {
            return false;
        };
        state
            .devices
            .write()
            .insert(row.id.as_str().into(), Box::new(device));
        true
    }

    /// Computes the batch of `records` (decoded, in offset order) on `partition`, which then holds the
    /// batch's end state: its devices as they are once the batch commits, and its next offset. None if the
    /// partition was not added.
    pub(crate) fn compute_batch(&mut self, partition: i32, records: &[Decoded]) -> Option<Batch> {
        let state = self.partitions.get_mut(&partition)?;
        let settings = &self.settings;
        let ctx = BatchContext {
            input_topic: settings.input_topic,
            dead_letter_topic: settings.dead_letter_topic,
            max_event_bytes: settings.max_event_bytes,
            now: settings.now,
            output_topic: settings.output_topic,
            change_chunk_rows: usize::MAX,
        };
        let computed = compute::batch(
            self.registry,
            state,
            &[],
            records,
            &[],
            foldhash::HashMap::default(),
            &ctx,
        );
        // The batch changed the devices in place, to the versions their rows have after the commit.
        state.claim.next_offset = computed.write.next_offset;
        Some(Batch {
            write: computed.write,
            applied: computed.stats.applied,
        })
    }
}
