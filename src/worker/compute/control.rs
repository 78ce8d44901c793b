//! A batch's first input kind: the control-log entries its partition has still to apply. Here, those that
//! concern single devices — pins and unpins, static memberships, device settings — and reconciliation's
//! re-evaluations; definition changes (a group created, edited, retyped or deleted, a release changed) are
//! swept over their org's devices in chunks ([`super::sweep`]).

use foldhash::HashMap;

use super::causes::{control_cause, Cause};
use super::touched::Origin;
use super::work::Work;
use crate::store::control::{ControlEntry, Positioned};
use crate::worker::device::{remove_member, set_member, AddedBy, Device, Member};

impl Work<'_> {
    /// Applies one control-log entry that concerns single devices (pins, static memberships, device
    /// settings) to this partition's devices. Definition changes are swept ([`super::sweep`]) and
    /// reconciliations re-evaluated ([`Work::reevaluate`]); a definition change that concerns nothing this
    /// worker knows (a group it has no slot for) comes here only to be counted.
    pub(super) fn control(&mut self, entry: &Positioned) {
        self.stats.control_entries += 1;
        let registry = self.registry;
        let cause = control_cause(entry);
        match &entry.entry {
            ControlEntry::OrgCreated { .. }
            | ControlEntry::Reevaluate { .. }
            | ControlEntry::ReleaseChanged { .. }
            | ControlEntry::GroupUpserted(_)
            | ControlEntry::GroupDeleted { .. } => {}
            ControlEntry::Pinned {
                group_id,
                device_id,
                ..
            } => {
                let Some(slot) = registry.slot(group_id) else {
                    return;
                };
                let group = registry.group(slot);
                if group.deleted || group.filter.is_none() {
                    return;
                }
                let version = group.version;
                if self.current(device_id).is_some() {
                    self.record_cause(device_id, &cause);
                }
                let Some(device) = self.held(device_id) else {
                    return;
                };
                match device.member(slot).copied() {
                    Some(m) if m.pinned => {}
                    Some(m) => device.set_member(Member { pinned: true, ..m }),
                    None => {
                        device.set_member(Member {
                            slot,
                            pinned: true,
                            added_by: AddedBy::Manual,
                        });
                        self.push_log(slot, version, device_id, "added", "pinned", &cause);
                    }
                }
            }
            ControlEntry::StaticMembers {
                group_id,
                added,
                removed,
                ..
            } => {
                // Applied even when the registry has the group deleted since: the rows exist until the
                // deletion's entry (later in the log) removes them, and memory must hold them until then.
                let Some(slot) = registry.slot(group_id) else {
                    return;
                };
                self.static_members(slot, added, removed, &cause);
            }
            ControlEntry::DeviceSettings {
                org_id,
                device_id,
                development,
                firmware_lock,
                ..
            } => {
                let Some(device) = self.current(device_id) else {
                    return;
                };
                let lock = firmware_lock.as_event();
                let unchanged = &*device.org != org_id.as_str()
                    || (development.is_none_or(|d| d == device.development)
                        && lock.is_none_or(|l| l == device.firmware_lock.as_deref()));
                if unchanged {
                    return;
                }
                self.record_cause(device_id, &cause);
                let Some(device) = self.held(device_id) else {
                    return;
                };
                if let Some(development) = development {
                    device.development = *development;
                }
                if let Some(lock) = lock {
                    device.firmware_lock = lock.map(Into::into);
                }
            }
            ControlEntry::Unpinned {
                group_id,
                device_id,
                ..
            } => {
                let Some(slot) = registry.slot(group_id) else {
                    return;
                };
                let now = self.ctx.now;
                let version = registry.group(slot).version;
                let Some(device) = self.held(device_id) else {
                    return;
                };
                let Some(m) = device.member(slot).copied() else {
                    return;
                };
                if !m.pinned {
                    return;
                }
                if registry.matches(slot, &device.attrs, now) {
                    device.set_member(Member { pinned: false, ..m });
                } else {
                    device.remove_member(slot);
                    self.push_log(slot, version, device_id, "removed", "unpinned", &cause);
                }
            }
        }
    }

    /// Mirrors a `static_members` entry: the API has written the rows and the log, so the change goes into
    /// each device this partition holds and into what the batch diffs it against (the diff then writes
    /// nothing for it), and the device's firmware is re-resolved with the entry as the cause.
    /// Devices already in the stated state are not touched, so applying the entry again changes nothing.
    fn static_members(&mut self, slot: u32, added: &[String], removed: &[String], cause: &Cause) {
        let changes = added
            .iter()
            .map(|id| (id, true))
            .chain(removed.iter().map(|id| (id, false)));
        for (id, member) in changes {
            let Some(device) = self.current(id) else {
                continue;
            };
            if device.member(slot).is_some() == member {
                continue;
            }
            self.mirror(id, cause, |members| {
                if member {
                    set_member(members, Member::manual(slot));
                } else {
                    remove_member(members, slot);
                }
            });
        }
    }

    /// Applies a membership change the API has already written to a held device and to what the batch
    /// diffs it against, so the diff writes nothing for it; the device's firmware is re-resolved with
    /// `cause`.
    pub(super) fn mirror(&mut self, id: &str, cause: &Cause, change: impl Fn(&mut Vec<Member>)) {
        let Some(index) = self.touch(id) else {
            return;
        };
        if let Some(device) = self.devices.get_mut(id) {
            change(&mut device.memberships);
        }
        self.touched.mirror(index, change);
        self.record_cause(id, cause);
    }

    /// `cohort reconcile --repair`: for each held device named, start from its stored row (re-read into
    /// `reread`, unless the batch already changed the device), evaluate every dynamic group of its org,
    /// drop memberships of deleted groups, and re-resolve its firmware. The batch writes what differs.
    pub(super) fn reevaluate(
        &mut self,
        entry: &Positioned,
        device_ids: &[String],
        reread: &mut HashMap<Box<str>, Device>,
    ) {
        self.stats.control_entries += 1;
        let registry = self.registry;
        let cause = control_cause(entry);
        for id in device_ids {
            let id = id.as_str();
            if self.touched.index_of(id).is_none() {
                if let Some(stored) = reread.remove(id) {
                    let Some(held) = self.devices.get_mut(id) else {
                        continue;
                    };
                    let previous = std::mem::replace(held, Box::new(stored.clone()));
                    let stored = Box::new(stored);
                    self.touched.insert(id, Origin::Reread { previous, stored });
                }
            }
            let Some(device) = self.current(id) else {
                continue;
            };
            let Some((_, org)) = registry.org(&device.org) else {
                continue;
            };
            let gone: Vec<u32> = device
                .memberships
                .iter()
                .map(|m| m.slot)
                .filter(|&slot| registry.group(slot).deleted)
                .collect();
            for slot in gone {
                let version = registry.group(slot).version;
                if let Some(device) = self.held(id) {
                    device.remove_member(slot);
                }
                self.push_log(slot, version, id, "removed", "manual", &cause);
            }
            self.reconcile_slots(id, &org.dynamic, &cause);
            self.record_cause(id, &cause);
            self.resolve.push((id.into(), cause.clone()));
        }
    }
}
