//! A batch's working state: the settings it is computed with, the partition's devices it changes in
//! place and what each touched one started from, the rows it has rendered so far, its counters and the
//! buffers it reuses; and the lookups every input kind shares.

use foldhash::{HashMap, HashMapExt};

use super::causes::{self, Cause, Document};
use super::touched::{Origin, TouchedDevices};
use crate::event::DeadLetterReason;
use crate::kafka::Decoded;
use crate::outbox::Message;
use crate::rules::{Candidate, EpochMillis, Scratch};
use crate::store::batch::{LogRow, ReleaseProgress};
use crate::worker::device::Device;
use crate::worker::partition::{DeviceMap, Partition};
use crate::worker::registry::Registry;

/// Settings a batch needs.
pub(crate) struct BatchContext<'a> {
    pub(crate) input_topic: &'a str,
    pub(crate) dead_letter_topic: &'a str,
    pub(crate) max_event_bytes: usize,
    pub(crate) now: EpochMillis,
    /// Where rollout-target events go.
    pub(crate) output_topic: &'a str,
    /// `worker.change_chunk_rows`: how many changes one batch's chunk of a definition change writes.
    pub(crate) change_chunk_rows: usize,
}

/// Counters describing what a batch did (recorded as metrics once it commits).
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub(crate) applied: u64,
    pub(crate) duplicates: u64,
    pub(crate) stale: u64,
    pub(crate) dead_letters: Vec<DeadLetterReason>,
    pub(crate) rehomed: u64,
    pub(crate) groups_evaluated: u64,
    /// Events whose changed fields no dynamic group references.
    pub(crate) no_candidates: u64,
    /// Membership changes by log reason.
    pub(crate) changes: HashMap<&'static str, u64>,
    pub(crate) control_entries: u64,
    pub(crate) timer_evaluations: u64,
    /// Rollout-target events emitted (written to the outbox).
    pub(crate) rollouts: u64,
    /// Whether the batch was its partition's while caught up, and written with `backend_flush_after`
    /// (set by the pipeline, which knows).
    pub(crate) caught_up: bool,
}

/// A batch being computed.
pub(super) struct Work<'a> {
    pub(super) registry: &'a Registry,
    pub(super) partition: &'a Partition,
    /// The partition's devices, write-locked for the batch's computation, which changes them in place.
    pub(super) devices: &'a mut DeviceMap,
    pub(super) ctx: &'a BatchContext<'a>,
    /// The batch's input records (what [`Cause::Record`] indexes).
    pub(super) records: &'a [Decoded],
    /// The documents of the records' causes rendered so far, by record index.
    pub(super) rendered: HashMap<usize, Document>,
    /// The devices the batch touched, with what each started from.
    pub(super) touched: TouchedDevices,
    pub(super) log: Vec<LogRow>,
    pub(super) outbox: Vec<Message>,
    pub(super) stats: Stats,
    pub(super) scratch: Scratch,
    /// Reused by [`Work::record`]: the field index's candidates for an event, with known truths.
    pub(super) found: Vec<Candidate<u32>>,
    /// Reused by [`Work::reconcile_slots`]: (slot, action, reason) of each membership change.
    pub(super) changes: Vec<(u32, &'static str, &'static str)>,
    /// Devices whose firmware must be re-resolved although the batch may not otherwise touch them (release
    /// changes), with the cause.
    pub(super) resolve: Vec<(Box<str>, Cause)>,
    /// See [`Work::timer_cause`].
    pub(super) timer_cause: Option<Document>,
    /// What the batch moved in each release's progress ([`Work::track_progress`]).
    pub(super) progress: Vec<ReleaseProgress>,
}

impl<'a> Work<'a> {
    /// A batch with nothing done yet.
    pub(super) fn new(
        registry: &'a Registry,
        partition: &'a Partition,
        devices: &'a mut DeviceMap,
        ctx: &'a BatchContext<'a>,
        records: &'a [Decoded],
    ) -> Self {
        Work {
            registry,
            partition,
            devices,
            ctx,
            records,
            rendered: HashMap::new(),
            touched: TouchedDevices::default(),
            log: Vec::new(),
            outbox: Vec::new(),
            stats: Stats::default(),
            scratch: Scratch::default(),
            found: Vec::new(),
            changes: Vec::new(),
            resolve: Vec::new(),
            timer_cause: None,
            progress: Vec::new(),
        }
    }
}

impl Work<'_> {
    /// A device the partition holds, taken into the batch (what it starts with saved) to be changed.
    pub(super) fn held(&mut self, id: &str) -> Option<&mut Device> {
        self.touch(id)?;
        self.devices.get_mut(id).map(|d| &mut **d)
    }

    /// Takes a device the partition holds into the batch, saving what it starts with, once. Its index
    /// among the batch's devices; None if the partition does not hold it.
    pub(super) fn touch(&mut self, id: &str) -> Option<usize> {
        if let Some(index) = self.touched.index_of(id) {
            return Some(index);
        }
        let device = self.devices.get(id)?;
        Some(self.touched.hold(id, device))
    }

    /// Adds a device the partition did not hold (read for the batch, or new) and takes it in.
    pub(super) fn adopt(&mut self, id: &str, device: Device, origin: Origin) {
        self.devices.insert(id.into(), Box::new(device));
        self.touched.insert(id, origin);
    }

    /// Ids of the org's devices the partition holds (with those the batch added).
    pub(super) fn org_devices(&self, org: &str) -> Vec<Box<str>> {
        self.devices
            .iter()
            .filter(|(_, d)| &*d.org == org)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A device's state in the batch.
    pub(super) fn current(&self, id: &str) -> Option<&Device> {
        self.devices.get(id).map(|d| &**d)
    }

    /// Logs a membership change of device `id` in the group at `slot`, with its cause.
    pub(super) fn push_log(
        &mut self,
        slot: u32,
        version: i64,
        id: &str,
        action: &'static str,
        reason: &'static str,
        cause: &Cause,
    ) {
        *self.stats.changes.entry(reason).or_default() += 1;
        self.record_cause(id, cause);
        let document = self.document(cause);
        self.log.push(LogRow {
            group_id: self.registry.group(slot).id,
            device_id: id.to_string(),
            action,
            reason,
            cause: document,
            group_version: version,
        });
    }

    /// The cause of changes made by the clock alone: the batch's instant (one document per batch).
    pub(super) fn timer_cause(&mut self) -> Cause {
        let now = self.ctx.now;
        Cause::Rendered(
            self.timer_cause
                .get_or_insert_with(|| causes::timer_cause(now))
                .clone(),
        )
    }

    /// The document of `cause`: an event's — its id and position — rendered on first use and shared.
    pub(super) fn document(&mut self, cause: &Cause) -> Document {
        let index = match cause {
            Cause::Rendered(document) => return document.clone(),
            Cause::Record(index) => *index,
        };
        if let Some(document) = self.rendered.get(&index) {
            return document.clone();
        }
        let document = match self.records.get(index).map(|r| (r, &r.event)) {
            Some((record, Ok(event))) => {
                causes::event_cause(&event.event_id, self.partition.id, record.offset)
            }
            // Only an applied event is ever a cause; should another be named, the batch's instant is the
            // truthful one.
            _ => causes::timer_cause(self.ctx.now),
        };
        self.rendered.insert(index, document.clone());
        document
    }

    /// Records `cause` as the last to touch device `id`, taking the device into the batch.
    pub(super) fn record_cause(&mut self, id: &str, cause: &Cause) {
        if let Some(touched) = self.touch(id).and_then(|i| self.touched.get_mut(i)) {
            touched.cause = Some(cause.clone());
        }
    }
}
