//! A batch's second input kind: the input records, in offset order, each already decoded. An event is
//! applied to its device (found in the batch, held, read from the database for the batch — re-homed — or
//! new), and the org's field index names the candidate groups whose truth the change can alter; a record
//! that cannot be applied is a dead letter.

use std::sync::Arc;

use foldhash::HashMap;

use super::causes::Cause;
use super::touched::Origin;
use super::work::Work;
use crate::event::{DeadLetterReason, DecodeError, DeviceEvent};
use crate::kafka::Decoded;
use crate::rules::{Candidate, FieldChange, LeafTruths};
use crate::worker::device::Device;

impl Work<'_> {
    /// Applies one input record (see the module's documentation).
    pub(super) fn record(
        &mut self,
        index: usize,
        record: &Decoded,
        foreign: &mut HashMap<Box<str>, Device>,
    ) {
        let event = match &record.event {
            Ok(event) => event,
            Err(error) => return self.dead_letter(record, error),
        };
        let registry = self.registry;
        let Some((org, org_groups)) = registry.org(&event.org_id) else {
            let error = DecodeError {
                reason: DeadLetterReason::UnknownOrg,
                detail: format!("unknown org {:?}", truncate(&event.org_id)),
            };
            return self.dead_letter(record, &error);
        };
        let id: &str = &event.device_id;
        if event.register {
            return self.register(index, record, event, org, &org_groups.dynamic, foreign);
        }
        // Find the device: held (or already added by the batch), read from the database for this batch,
        // or new.
        let mut evaluate_all = false;
        if !self.devices.contains_key(id) {
            // A device stored under another partition is taken over (re-homed) only by an event that applies
            // to it: one of another org, or not newer than the stored device, is refused or skipped without
            // moving the device (else a misrouted or replayed event would steal it from its owner).
            if let Some(stored) = foreign.get(id) {
                if *stored.org != *event.org_id {
                    let owner = stored.org.clone();
                    return self.org_mismatch(record, event, &owner);
                }
                if event.sequence <= stored.sequence {
                    return self.skip(event.sequence, stored.sequence);
                }
            }
            match foreign.remove(id) {
                Some(device) => {
                    self.stats.rehomed += 1;
                    let origin = Origin::Foreign(Box::new(device.clone()));
                    self.adopt(id, device, origin);
                }
                None => self.adopt(id, Device::new(org.clone()), Origin::New),
            }
            // New here: its memberships were computed elsewhere (or never), so evaluate every group.
            evaluate_all = true;
        }
        let current = self.current(id).expect("inserted above");
        if *current.org != *event.org_id {
            let owner = current.org.clone();
            return self.org_mismatch(record, event, &owner);
        }
        if event.sequence <= current.sequence {
            let current = current.sequence;
            return self.skip(event.sequence, current);
        }
        self.stats.applied += 1;
        let now = self.ctx.now;
        let Some(at) = self.touch(id) else {
            return;
        };
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let fresh = evaluate_all || device.sequence < 0;
        // The values replaced, kept for the batch's diff and for putting the device back.
        let from = self.touched.olds_len();
        for (field, value) in &event.set {
            let old = device.attrs.set(*field, value.clone());
            self.touched.push_old(at, *field, old);
        }
        for field in &event.removed {
            let old = device.attrs.remove(*field);
            self.touched.push_old(at, *field, old);
        }
        if let Some(dev) = event.development {
            device.development = dev;
        }
        if let Some(lock) = &event.firmware_lock {
            device.firmware_lock = lock.as_deref().map(Into::into);
        }
        device.sequence = event.sequence;
        let cause = Cause::Record(index);
        self.record_cause(id, &cause);
        if fresh {
            return self.reconcile_slots(id, &org_groups.dynamic, &cause);
        }
        let mut found = std::mem::take(&mut self.found);
        found.clear();
        let Some(device) = self.devices.get(id) else {
            return;
        };
        let changes: Vec<FieldChange<'_>> = self
            .touched
            .olds_since(from)
            .filter(|(field, old)| *old != device.attrs.get(*field))
            .map(|(field, old)| FieldChange {
                field,
                old,
                new: device.attrs.get(field),
            })
            .collect();
        org_groups
            .index
            .candidates_with_truths(&changes, now, &mut self.scratch, &mut found);
        drop(changes);
        // A time flip already due whose timer this batch did not take (more were due than a batch
        // takes): evaluated here, as the device's timer is rescheduled when the batch installs.
        if device.next_flip().is_some_and(|t| t <= now) {
            for &group in &org_groups.time_groups {
                if !found.iter().any(|c| c.group == group) {
                    found.push(Candidate {
                        group,
                        truths: LeafTruths::NONE,
                    });
                }
            }
            found.sort_unstable_by_key(|c| c.group);
        }
        if found.is_empty() {
            self.stats.no_candidates += 1;
        }
        self.reconcile_candidates(id, &found, &cause);
        self.found = found;
    }

    /// A registration: creates the device — no attributes, sequence -1 so that its first real event applies
    /// — if it exists nowhere (not in the batch, not held, not stored on another partition), evaluating
    /// every dynamic group of its org as for any new device. An existing device is left exactly as it is (not
    /// re-homed, sequence unchanged) and the registration counted as a duplicate; one of another org is an
    /// org mismatch, as for any event.
    fn register(
        &mut self,
        index: usize,
        record: &Decoded,
        event: &DeviceEvent,
        org: &Arc<str>,
        dynamic: &[u32],
        foreign: &HashMap<Box<str>, Device>,
    ) {
        let id = event.device_id.as_str();
        let existing = self
            .current(id)
            .or_else(|| foreign.get(id))
            .map(|d| d.org.clone());
        if let Some(owner) = existing {
            if *owner != *event.org_id {
                return self.org_mismatch(record, event, &owner);
            }
            self.stats.duplicates += 1;
            return;
        }
        self.stats.applied += 1;
        self.adopt(id, Device::new(org.clone()), Origin::New);
        let cause = Cause::Record(index);
        self.record_cause(id, &cause);
        self.reconcile_slots(id, dynamic, &cause);
    }

    /// Counts an event whose `sequence` is not above the device's `current` one: a duplicate or stale.
    fn skip(&mut self, sequence: i64, current: i64) {
        if sequence == current {
            self.stats.duplicates += 1;
        } else {
            self.stats.stale += 1;
        }
    }

    fn org_mismatch(&mut self, record: &Decoded, event: &DeviceEvent, owner: &str) {
        let error = DecodeError {
            reason: DeadLetterReason::OrgMismatch,
            detail: format!(
                "device {:?} belongs to org {:?}, not {:?}",
                truncate(&event.device_id),
                truncate(owner),
                truncate(&event.org_id)
            ),
        };
        self.dead_letter(record, &error);
    }
}

/// A bounded prefix of untrusted text for messages.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use foldhash::HashMap;
    use serde_json::json;
    use uuid::Uuid;

    use crate::kafka::Record;
    use crate::rules::time::format_millis;
    use crate::rules::{Attributes, Catalogue};
    use crate::store::control::GroupDefinition;
    use crate::store::partition::Claim;
    use crate::worker::compute::{batch, BatchContext};
    use crate::worker::device::{AddedBy, Device, Member};
    use crate::worker::partition::Partition;
    use crate::worker::registry::Registry;

    fn claim() -> Claim {
        Claim {
            epoch: 1,
            next_offset: 0,
            control_position: 0,
        }
    }

    /// A registry of org `o` with one group, "seen within the last hour", and its slot.
    fn one_time_group() -> (Registry, u32) {
        let mut registry = Registry::new(Arc::new(Catalogue::default()));
        let slot = registry.upsert(&GroupDefinition {
            group_id: Uuid::new_v4(),
            org_id: "o".into(),
            site_id: None,
            version: 1,
            filter: Some(json!({"operator": "AND", "conditions": [
                {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1, "unit": "hours"}}
            ]})),
        });
        (registry, slot)
    }

    #[test]
    fn an_event_for_a_device_whose_flip_is_due_but_not_taken_applies_the_flip() {
        let (registry, slot) = one_time_group();
        let org = registry.org("o").unwrap().0.clone();
        let seen = 1_750_000_000_000;
        let now = seen + 2 * 3_600_000; // the one-hour window ended an hour ago
        let mut p = Partition::new(0, claim());
        let mut device = Device::new(org);
        device.attrs = Attributes::from_json(
            json!({"lastSeenAt": format_millis(seen)})
                .as_object()
                .unwrap(),
            &Catalogue::default(),
        )
        .unwrap();
        device.sequence = 1;
        device.version = 1;
        device.stored = true;
        device.memberships = vec![Member {
            slot,
            pinned: false,
            added_by: AddedBy::DynamicRule,
        }];
        p.devices.write().insert("d".into(), Box::new(device));
        p.schedule("d", &registry, seen);
        assert_eq!(
            p.devices.read()["d"].next_flip(),
            Some(seen + 3_600_000 + 1)
        );
        // An event that changes only uptimeSeconds, in a batch that did not take the device's timer.
        let mut event = crate::event::DeviceEventJson::new("e", "o", "d", 2);
        event.attributes.insert("uptimeSeconds".into(), json!(5));
        let payload = serde_json::to_vec(&event).unwrap();
        let record = Record {
            offset: 0,
            key: Some(b"d".to_vec()),
            payload: Some(payload),
            timestamp: None,
        };
        let decoded = record.decode(registry.catalogue(), 1 << 20);
        let ctx = BatchContext {
            input_topic: "in",
            dead_letter_topic: "dlq",
            max_event_bytes: 1 << 20,
            now,
            output_topic: "out",
            change_chunk_rows: usize::MAX,
        };
        let computed = batch(
            &registry,
            &p,
            &[],
            &[decoded],
            &[],
            HashMap::default(),
            &ctx,
        );
        assert!(p.devices.read()["d"].memberships.is_empty());
        assert_eq!(computed.write.log.len(), 1);
        assert_eq!(
            (computed.write.log[0].action, computed.write.log[0].reason),
            ("removed", "filter_unmatch")
        );
    }
}
