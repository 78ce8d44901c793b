//! A batch's first input kind: the control-log entries its partition has still to apply — definition
//! changes (a group created, edited or deleted, a release changed), pins and unpins, static memberships,
//! device settings, and reconciliation's re-evaluations.

use foldhash::HashMap;

use super::causes::{control_cause, Cause};
use super::work::{Origin, Work};
use crate::store::control::{ControlEntry, Positioned};
use crate::worker::device::{AddedBy, Device, Member};

impl Work<'_> {
    /// Applies one control-log entry to this partition's devices. Returns whether time-dependent
    /// definitions changed.
    pub(super) fn control(&mut self, entry: &Positioned) -> bool {
        self.stats.control_entries += 1;
        let registry = self.registry;
        let cause = control_cause(entry);
        match &entry.entry {
            ControlEntry::OrgCreated { .. } => false,
            // Applied by `reevaluate`, which needs the re-read devices.
            ControlEntry::Reevaluate { .. } => false,
            ControlEntry::ReleaseChanged {
                org_id, group_id, ..
            } => {
                // Re-resolve the devices the release can affect: the group's members, or every device of
                // the org for the default. The registry already holds the new release.
                let slot = group_id.and_then(|g| registry.slot(&g));
                if group_id.is_some() && slot.is_none() {
                    return false;
                }
                for id in self.org_devices(org_id) {
                    let affected = match slot {
                        Some(slot) => self.current(&id).is_some_and(|d| d.member(slot).is_some()),
                        None => true,
                    };
                    if affected {
                        self.resolve.push((id, cause.clone()));
                    }
                }
                false
            }
            ControlEntry::GroupUpserted(def) => {
                let Some(slot) = registry.slot(&def.group_id) else {
                    return false;
                };
                if def.filter.is_none() {
                    // A static group: its members are the API's to change (`static_members`), and evaluating
                    // it (it matches nothing) would remove them all. A dynamic group turned static had its
                    // members made manual and unpinned by the API, in the same transaction as this entry:
                    // mirrored here, so the diff writes nothing for them.
                    self.static_conversion(slot, &def.org_id, &cause);
                    return false;
                }
                let ids: Vec<Box<str>> = self.org_devices(&def.org_id);
                for id in ids {
                    self.reconcile_slots(&id, &[slot], &cause);
                }
                // A changed definition (time-dependent before or after) can move any device's next flip.
                true
            }
            ControlEntry::GroupDeleted { group_id, org_id } => {
                let Some(slot) = registry.slot(group_id) else {
                    return false;
                };
                for id in self.org_devices(org_id) {
                    let has = self.current(&id).is_some_and(|d| d.member(slot).is_some());
                    if has {
                        let version = registry.group(slot).version;
                        if let Some(device) = self.held(&id) {
                            device.remove_member(slot);
                        }
                        self.push_log(slot, version, &id, "removed", "manual", &cause);
                    }
                }
                true
            }
            ControlEntry::Pinned {
                group_id,
                device_id,
                ..
            } => {
                let Some(slot) = registry.slot(group_id) else {
                    return false;
                };
                let group = registry.group(slot);
                if group.deleted || group.filter.is_none() {
                    return false;
                }
                let version = group.version;
                if self.current(device_id).is_some() {
                    self.record_cause(device_id, &cause);
                }
                let Some(device) = self.held(device_id) else {
                    return false;
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
                false
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
                    return false;
                };
                self.static_members(slot, added, removed, &cause);
                false
            }
            ControlEntry::DeviceSettings {
                org_id,
                device_id,
                development,
                firmware_lock,
                ..
            } => {
                let Some(device) = self.current(device_id) else {
                    return false;
                };
                let lock = firmware_lock.as_event();
                let unchanged = &*device.org != org_id.as_str()
                    || (development.is_none_or(|d| d == device.development)
                        && lock.is_none_or(|l| l == device.firmware_lock.as_deref()));
                if unchanged {
                    return false;
                }
                self.record_cause(device_id, &cause);
                let Some(device) = self.held(device_id) else {
                    return false;
                };
                if let Some(development) = development {
                    device.development = *development;
                }
                if let Some(lock) = lock {
                    device.firmware_lock = lock.map(Into::into);
                }
                false
            }
            ControlEntry::Unpinned {
                group_id,
                device_id,
                ..
            } => {
                let Some(slot) = registry.slot(group_id) else {
                    return false;
                };
                let now = self.ctx.now;
                let version = registry.group(slot).version;
                let Some(device) = self.held(device_id) else {
                    return false;
                };
                let Some(m) = device.member(slot).copied() else {
                    return false;
                };
                if !m.pinned {
                    return false;
                }
                if registry.matches(slot, &device.attrs, now) {
                    device.set_member(Member { pinned: false, ..m });
                } else {
                    device.remove_member(slot);
                    self.push_log(slot, version, device_id, "removed", "unpinned", &cause);
                }
                false
            }
        }
    }

    /// Mirrors a `static_members` entry: the API has written the rows and the log, so the change goes into
    /// both the batch's starting copy and the working copy of each device this partition holds (the diff
    /// then writes nothing for it), and the device's firmware is re-resolved with the entry as the cause.
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
            self.mirror(id, cause, |device| {
                if member {
                    device.set_member(Member {
                        slot,
                        pinned: false,
                        added_by: AddedBy::Manual,
                    });
                } else {
                    device.remove_member(slot);
                }
            });
        }
    }

    /// Mirrors a group's conversion to static: every member of the org's devices this partition holds
    /// becomes manual and unpinned, as the API wrote. Members already so are not touched, so applying the
    /// entry again (or to a group that always was static) changes nothing.
    fn static_conversion(&mut self, slot: u32, org: &str, cause: &Cause) {
        for id in self.org_devices(org) {
            let converts = self
                .current(&id)
                .and_then(|d| d.member(slot))
                .is_some_and(|m| m.pinned || m.added_by != AddedBy::Manual);
            if converts {
                self.mirror(&id, cause, |device| {
                    device.set_member(Member {
                        slot,
                        pinned: false,
                        added_by: AddedBy::Manual,
                    });
                });
            }
        }
    }

    /// Applies a change the API has already written to both the batch's starting copy and the working copy
    /// of a held device, so the diff writes nothing for it; the device's firmware is re-resolved with
    /// `cause`.
    fn mirror(&mut self, id: &str, cause: &Cause, change: impl Fn(&mut Device)) {
        self.held(id);
        let Some((origin, current)) = self.devices.get_mut(id) else {
            return;
        };
        // The starting state is mirrored too (the API wrote these rows): a held device's is copied from
        // the partition first.
        if let Origin::Held = origin {
            if let Some(held) = self.partition.devices.get(id) {
                *origin = Origin::Copy(held.clone());
            }
        }
        let original = match origin {
            Origin::Copy(d) => Some(&mut **d),
            _ => None,
        };
        for device in original.into_iter().chain(std::iter::once(current)) {
            change(device);
        }
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
            if !self.partition.devices.contains_key(id.as_str()) {
                continue;
            }
            if !self.devices.contains_key(id.as_str()) {
                if let Some(stored) = reread.remove(id.as_str()) {
                    self.devices.insert(
                        id.as_str().into(),
                        (Origin::Copy(Box::new(stored.clone())), stored),
                    );
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
            self.resolve.push((id.as_str().into(), cause.clone()));
        }
    }
}
