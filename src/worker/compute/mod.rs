//! The computation of a batch: what a partition's next batch writes, computed from its inputs on the
//! partition's devices, changed in place under its write lock, with no IO.
//!
//! A batch's inputs come in this order, each kind in its own module:
//! 1. the control-log entries the partition has still to apply: definition changes, swept over their
//!    org's devices a chunk per batch ([`sweep`]), and pins, static memberships, device settings and
//!    reconciliation ([`control`]);
//! 2. [`event`]: the input records in offset order, already decoded: each event is applied to its device,
//!    and the org's field index names the candidate groups whose truth can change;
//! 3. [`timer`]: the devices whose time flips came due.
//!
//! Then, for every device the batch touched: [`evaluate`] runs the candidate groups' filters and changes
//! memberships, [`resolve`] re-resolves the firmware target, [`progress`] moves the rollout progress of
//! the releases it leaves and joins, [`diff`] turns the difference between the
//! batch's start and end states into membership rows, and [`write`](mod@write) renders the device and log
//! rows into one `BatchWrite` ([`crate::store::batch`]). [`outbox`] renders the outbox rows (rollout-target
//! events and dead letters) and [`causes`] the cause documents the log rows and events carry. [`work`]
//! holds the batch's working state and [`touched`] what its devices started from.
//!
//! The batch changes the devices it touches where the partition holds them and keeps, in [`touched`], only
//! what each started with: a held device's scalars, memberships and replaced attribute values. Its rows are
//! the difference between that start and the end state, and a batch that does not commit is put back from
//! the same record ([`crate::worker::commit`]). A retry recomputes from the state put back: every input has
//! its effect exactly once.
//!
//! Membership rules: a dynamic group's membership follows its filter, except that a pinned member stays when
//! it stops matching. Static groups' memberships are written by the API (`crate::store::members`), never
//! here: a `static_members` control entry is mirrored in memory — in what the batch diffs against as well as
//! in the device, so the batch's membership diff writes nothing for it — because firmware resolution uses
//! every membership. A device new to this partition (first event, registration, or re-homed from another
//! partition) is evaluated against every dynamic group of its org; afterwards only the candidate groups from
//! the field index are.

pub mod causes;
pub mod control;
pub mod diff;
pub mod evaluate;
pub mod event;
pub mod outbox;
pub mod progress;
pub mod resolve;
pub mod sweep;
pub mod timer;
pub mod touched;
pub mod work;
pub mod write;

use foldhash::HashMap;

use self::work::Work;
pub(crate) use self::work::{BatchContext, Stats};
pub(crate) use self::write::Computed;
use super::device::Device;
use super::partition::Partition;
use super::registry::Registry;
use crate::kafka::Decoded;
use crate::store::control::Positioned;

/// Computes a batch. `foreign` holds the devices named by `records` (or re-read for a reconciliation) that
/// the partition does not hold, read from the database by the caller and converted with
/// [`Device::from_stored`].
pub(crate) fn batch(
    registry: &Registry,
    partition: &Partition,
    control: &[Positioned],
    records: &[Decoded],
    due: &[Box<str>],
    foreign: HashMap<Box<str>, Device>,
    ctx: &BatchContext<'_>,
) -> Computed {
    let mut devices = partition.devices.write();
    let mut work = Work::new(registry, partition, &mut devices, ctx, records);
    let mut foreign = foreign;
    let progress = work.control_entries(control, &mut foreign, ctx.change_chunk_rows);
    for (index, record) in records.iter().enumerate() {
        work.record(index, record, &mut foreign);
    }
    for id in due {
        work.timer(id);
    }
    work.resolve_firmware();
    work.track_progress();
    work.render(records, control, progress)
}
