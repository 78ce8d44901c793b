//! The membership diff: the rows a batch writes for a device's memberships are the net difference between
//! its state at the batch's start and at its end — inserts, deletes and pin changes — however many changes
//! the batch made in between.

use super::touched::Start;
use crate::store::batch::{BatchWrite, MembershipRow};
use crate::worker::device::{Device, Member};
use crate::worker::registry::Registry;

/// Whether a device stores the same row (memberships aside) at the end of the batch as at its start.
pub(super) fn row_unchanged(start: &Start<'_>, current: &Device) -> bool {
    match start {
        // The scalars first: an event always moves `sequence`, so its attributes are not compared.
        Start::Saved { scalars, .. } => {
            scalars.row_equal(current) && start.changed_attributes(current).is_empty()
        }
        Start::Device(stored) => row_equal(stored, current),
        Start::Nothing => false,
    }
}

/// Whether two states of a device store the same device row (memberships aside). Only devices read for
/// the batch (re-read or taken over) are compared so; held ones compare their saved scalars.
fn row_equal(a: &Device, b: &Device) -> bool {
    // The scalars first: an event always moves `sequence`, so its device's attributes are not compared.
    a.scalars().row_equal(b) && a.org == b.org && a.attrs == b.attrs
}

/// The membership rows to write: the net difference between the batch's start and end states.
pub(super) fn diff_memberships(
    registry: &Registry,
    id: &str,
    before: &[Member],
    current: &Device,
    write: &mut BatchWrite,
) {
    let after = &current.memberships;
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < after.len() {
        let b = before.get(i);
        let a = after.get(j);
        match (b, a) {
            (Some(b), Some(a)) if b.slot == a.slot => {
                if b.pinned != a.pinned {
                    write
                        .pin_updates
                        .push((registry.group(a.slot).id, id.to_string(), a.pinned));
                }
                i += 1;
                j += 1;
            }
            (Some(b), a) if a.is_none_or(|a| b.slot < a.slot) => {
                write
                    .membership_deletes
                    .push((registry.group(b.slot).id, id.to_string()));
                i += 1;
            }
            (_, Some(a)) => {
                write.membership_inserts.push(MembershipRow {
                    group_id: registry.group(a.slot).id,
                    device_id: id.to_string(),
                    is_pinned: a.pinned,
                    added_by: a.added_by.as_str(),
                });
                j += 1;
            }
            (_, None) => unreachable!("loop condition"),
        }
    }
}
