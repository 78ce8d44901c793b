//! Rendering a computed batch: its device rows (inserted or updated, guarded by version), membership rows
//! ([`super::diff`]), log rows and outbox rows in one `BatchWrite`, with the partition's positions after
//! it; each device written takes the version its row has once the batch commits.

use foldhash::HashSet;

use super::diff::{diff_memberships, row_unchanged};
use super::sweep::ControlProgress;
use super::touched::{Origin, Start, TouchedDevices};
use super::work::{Stats, Work};
use crate::firmware::progress::Standing;
use crate::kafka::Decoded;
use crate::rules::attrs::write_json_changes;
use crate::store::batch::{AttributesWrite, BatchWrite, DeviceRow};
use crate::store::control::Positioned;

/// What a computed batch will write, and what the partition's state, already changed, was before it (see
/// [`crate::worker`]).
pub(crate) struct Computed {
    pub(crate) write: BatchWrite,
    /// The devices the batch changed in the partition (versions included, as they are once it commits),
    /// with what putting each back restores.
    pub(crate) touched: TouchedDevices,
    pub(crate) stats: Stats,
    /// What the batch did with its control entries: how many it applied, the definition change it leaves
    /// under way, and the devices whose time flips it must recompute.
    pub(crate) control: ControlProgress,
}

impl Work<'_> {
    /// The batch's write, once every input is applied and firmware re-resolved; each device written takes
    /// the version its row has once the batch commits.
    pub(super) fn render(
        self,
        records: &[Decoded],
        control: &[Positioned],
        progress: ControlProgress,
    ) -> Computed {
        let Work {
            registry,
            partition,
            devices,
            ctx,
            mut touched,
            log,
            outbox,
            stats,
            progress: release_progress,
            ..
        } = self;
        let mut write = BatchWrite {
            topic: ctx.input_topic.to_string(),
            partition: partition.id,
            epoch: partition.claim.epoch,
            // next_offset is exclusive: one past the last offset processed.
            next_offset: records
                .last()
                .map_or(partition.claim.next_offset, |r| r.offset + 1),
            control_position: control[..progress.applied]
                .last()
                .map_or(partition.claim.control_position, |e| e.id),
            ..Default::default()
        };
        write.outbox = outbox;
        write.progress = release_progress;
        touched.seal();
        let logged: HashSet<&str> = log.iter().map(|r| r.device_id.as_str()).collect();
        let catalogue = registry.catalogue();
        for index in 0..touched.len() {
            let Some((id, entry)) = touched.get(index) else {
                continue;
            };
            let Some(current) = devices.get_mut(id) else {
                continue;
            };
            let start = touched.started(index);
            let is_held = matches!(entry.origin, Origin::Held(_) | Origin::Reread { .. });
            let row_same = row_unchanged(&start, current);
            // A held device the batch leaves as stored (a replayed or mirrored control entry that changed
            // no stored column) is not written. Anything else is, also to take the version guard: no two
            // owners ever write a device's memberships or log.
            if is_held && row_same && start.members() == current.memberships && !logged.contains(id)
            {
                continue;
            }
            diff_memberships(registry, id, start.members(), current, &mut write);
            if is_held && current.stored && row_same {
                // Only its memberships (or log) change: the row is not rewritten, only checked to be at
                // the version this batch was computed from (`crate::store::batch`).
                write.device_checks.push((id.to_string(), current.version));
                continue;
            }
            if let (false, true, Start::Device(stored)) = (is_held, current.stored, &start) {
                // Taken over from another partition: its memberships as read, which the commit checks
                // are still what is stored once it holds the row.
                let mut basis: Vec<(uuid::Uuid, bool)> = stored
                    .memberships
                    .iter()
                    .map(|m| (registry.group(m.slot).id, m.pinned))
                    .collect();
                basis.sort_unstable();
                write.taken_over.push((id.to_string(), basis));
            }
            // A held device's row is as its starting state says (the version guard holds it so): only
            // what changed is sent (see `AttributesWrite`).
            let mut json = Vec::with_capacity(if is_held { 64 } else { 512 });
            let removes = match &start {
                Start::Saved { .. } if current.stored => Some(write_json_changes(
                    &start.changed_attributes(current),
                    catalogue,
                    &mut json,
                )),
                Start::Device(stored) if is_held && current.stored => Some(
                    current
                        .attrs
                        .write_json_patch(&stored.attrs, catalogue, &mut json),
                ),
                _ => {
                    current.attrs.write_json(catalogue, &mut json);
                    None
                }
            };
            let attributes_write = match removes {
                Some(true) => AttributesWrite::MergeRemoving,
                Some(false) => AttributesWrite::Merge,
                None => AttributesWrite::Replace,
            };
            let row = DeviceRow {
                id: id.to_string(),
                org_id: current.org.clone(),
                // Valid UTF-8: JSON text written from strings.
                attributes: String::from_utf8(json).unwrap_or_default(),
                attributes_write,
                // -1 for a device that only was registered: its first real event, whatever its sequence,
                // applies.
                sequence: current.sequence,
                expected_version: current.version,
                is_development: current.development,
                firmware_lock: current.firmware_lock.as_deref().map(str::to_string),
                target_version: current.target.version.clone(),
                target_reason: current.target.reason.as_str(),
                target_group: current.target.group,
                target_sequence: current.target_sequence,
                target_release: current.target.release,
                target_standing: current.standing.map(Standing::as_str),
                target_reached: current.reached,
            };
            if current.stored {
                write.device_updates.push(row);
            } else {
                write.device_inserts.push(row);
            }
            // What the row will be once the batch commits.
            current.version = if current.stored {
                current.version + 1
            } else {
                1
            };
            current.stored = true;
        }
        drop(logged);
        write.log = log;
        Computed {
            write,
            touched,
            stats,
            control: progress,
        }
    }
}
