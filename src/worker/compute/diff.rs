//! The membership diff: the rows a batch writes for a device's memberships are the net difference between
//! its state at the batch's start and at its end — inserts, deletes and pin changes — however many changes
//! the batch made in between.

use crate::store::batch::{BatchWrite, MembershipRow};
use crate::worker::device::{Device, Member};
use crate::worker::registry::Registry;

/// Whether two states of a device store the same row and memberships (the in-memory extras — timers,
/// the version itself — aside).
pub(super) fn stored_equal(a: &Device, b: &Device) -> bool {
    row_equal(a, b) && a.memberships == b.memberships
}

/// Whether two states of a device store the same device row (memberships aside).
pub(super) fn row_equal(a: &Device, b: &Device) -> bool {
    // The scalars first: an event always moves `sequence`, so its device's attributes are not compared.
    a.sequence == b.sequence
        && a.development == b.development
        && a.target_sequence == b.target_sequence
        && a.firmware_lock == b.firmware_lock
        && a.target == b.target
        && a.org == b.org
        && a.attrs == b.attrs
}

/// The membership rows to write: the net difference between the batch's start and end states.
pub(super) fn diff_memberships(
    registry: &Registry,
    id: &str,
    original: Option<&Device>,
    current: &Device,
    write: &mut BatchWrite,
) {
    let before: &[Member] = original.map_or(&[], |d| &d.memberships);
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
