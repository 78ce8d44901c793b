//! Rendering a computed batch: its device rows (inserted or updated, guarded by version), membership rows
//! ([`super::diff`]), log rows and outbox rows in one `BatchWrite`, with the partition's positions after
//! it; and the state every device the batch touched has once it commits.

use foldhash::{HashMap, HashMapExt, HashSet};

use super::diff::{diff_memberships, row_equal, stored_equal};
use super::sweep::ControlProgress;
use super::work::{Origin, Stats, Work};
use crate::kafka::Decoded;
use crate::store::batch::{AttributesWrite, BatchWrite, DeviceRow};
use crate::store::control::Positioned;
use crate::worker::device::Device;

/// What a computed batch will write, and the state the partition takes (at once: see [`crate::worker`]).
#[derive(Debug)]
pub(crate) struct Computed {
    pub(crate) write: BatchWrite,
    /// Final state of every device the batch touched, as it is once the batch commits (versions included).
    pub(crate) devices: HashMap<Box<str>, Box<Device>>,
    pub(crate) stats: Stats,
    /// What the batch did with its control entries: how many it applied, the definition change it leaves
    /// under way, and the devices whose time flips it must recompute.
    pub(crate) control: ControlProgress,
}

impl Work<'_> {
    /// The batch's write and end states, once every input is applied and firmware re-resolved.
    pub(super) fn render(
        self,
        records: &[Decoded],
        control: &[Positioned],
        progress: ControlProgress,
    ) -> Computed {
        let Work {
            registry,
            partition,
            held,
            ctx,
            devices: touched,
            log,
            outbox,
            stats,
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
        let logged: HashSet<&str> = log.iter().map(|r| r.device_id.as_str()).collect();
        let mut devices = HashMap::with_capacity(touched.len());
        for (id, (origin, mut current)) in touched {
            let original = match &origin {
                Origin::Held => held.get(&id).map(|d| &**d),
                Origin::Copy(d) => Some(&**d),
                Origin::New => None,
            };
            // A held device the batch leaves as stored (a replayed or mirrored control entry that changed
            // no stored column) is not written. Anything else is, also to take the version guard: no two
            // owners ever write a device's memberships or log.
            let is_held = held.contains_key(&id);
            let untouched = original.is_some_and(|o| stored_equal(o, &current))
                && is_held
                && !logged.contains(&*id);
            if untouched {
                devices.insert(id, Box::new(current));
                continue;
            }
            diff_memberships(registry, &id, original, &current, &mut write);
            if is_held && current.stored && original.is_some_and(|o| row_equal(o, &current)) {
                // Only its memberships (or log) change: the row is not rewritten, only checked to be at
                // the version this batch was computed from (`crate::store::batch`).
                write.device_checks.push((id.to_string(), current.version));
                devices.insert(id, Box::new(current));
                continue;
            }
            if !is_held && current.stored {
                if let Some(original) = original {
                    // Taken over from another partition: its memberships as read, which the commit checks
                    // are still what is stored once it holds the row.
                    let mut basis: Vec<(uuid::Uuid, bool)> = original
                        .memberships
                        .iter()
                        .map(|m| (registry.group(m.slot).id, m.pinned))
                        .collect();
                    basis.sort_unstable();
                    write.taken_over.push((id.to_string(), basis));
                }
            }
            // A held device's row is as its starting state says (the version guard holds it so): only
            // what changed is sent (see `AttributesWrite`).
            let catalogue = registry.catalogue();
            let mut json = Vec::with_capacity(if is_held { 64 } else { 512 });
            let attributes_write = match original.filter(|_| is_held && current.stored) {
                Some(original) => {
                    if current
                        .attrs
                        .write_json_patch(&original.attrs, catalogue, &mut json)
                    {
                        AttributesWrite::MergeRemoving
                    } else {
                        AttributesWrite::Merge
                    }
                }
                None => {
                    current.attrs.write_json(catalogue, &mut json);
                    AttributesWrite::Replace
                }
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
            devices.insert(id, Box::new(current));
        }
        drop(logged);
        write.log = log;
        Computed {
            write,
            devices,
            stats,
            control: progress,
        }
    }
}
