//! The devices a batch touched, and what it changed in each. A batch changes its partition's devices in
//! place, under the partition's write lock, and keeps of each only what putting it back needs: for a
//! device the partition held, its scalars, its memberships and the first old value of every attribute the
//! batch set or removed — a few dozen bytes, no copy of the device. The batch's rows are the difference
//! between that start and the device's end state ([`super::write`]); a batch that does not commit is put
//! back from the same record (`TouchedDevices::restore`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use indexmap::IndexMap;

use super::causes::Cause;
use crate::firmware::progress::Standing;
use crate::rules::{AttrValue, EpochMillis, FieldId};
use crate::worker::device::{Device, Member, Scalars};
use crate::worker::partition::DeviceMap;

/// Where a device the batch touched started from.
pub(crate) enum Origin {
    /// Held by the partition: changed in place, with what it started with saved.
    Held(Saved),
    /// Held, and replaced for a reconciliation by its stored row (`stored`), which its rows are diffed
    /// against; `previous` is what the partition held.
    Reread {
        previous: Box<Device>,
        stored: Box<Device>,
    },
    /// Not held: read from the database for this batch (taken over from another partition), diffed
    /// against its stored state.
    Foreign(Box<Device>),
    /// Stored nowhere yet.
    New,
}

/// What a held device started the batch with (its attributes' old values are kept apart, in
/// [`TouchedDevices`]).
pub(crate) struct Saved {
    pub(crate) scalars: Scalars,
    /// Its memberships: a range of [`TouchedDevices`]' saved memberships.
    members: Range<u32>,
    /// Set when the batch mirrors a change the API already wrote: the memberships as stored, which the
    /// diff compares against (what putting the device back restores stays `members`).
    mirrored: Option<Vec<Member>>,
}

/// A device the batch touched.
pub(crate) struct Touched {
    pub(super) origin: Origin,
    /// The last cause that touched it (carried by its rollout-target event).
    pub(super) cause: Option<Cause>,
    /// Whether the batch changed its resolved target (its release included).
    pub(super) retargeted: bool,
}

/// An attribute's value before an event set or removed it: (device's index, field, old value).
type Old = (u32, FieldId, Option<AttrValue>);

/// The devices a batch touched, in the order touched, with what each started from.
#[derive(Default)]
pub(crate) struct TouchedDevices {
    entries: IndexMap<Box<str>, Touched, foldhash::fast::RandomState>,
    /// Held devices' memberships at the batch's start ([`Saved::members`]).
    members: Vec<Member>,
    /// Each attribute an event set or removed, with its value before, in the order applied; once the batch
    /// is rendered, sorted by device and field (stably: the first of each pair is the value the batch
    /// started with).
    olds: Vec<Old>,
}

impl TouchedDevices {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.entries.get_index_of(id)
    }

    /// The device at `index`, with its id.
    pub(crate) fn get(&self, index: usize) -> Option<(&str, &Touched)> {
        self.entries.get_index(index).map(|(id, t)| (&**id, t))
    }

    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut Touched> {
        self.entries.get_index_mut(index).map(|(_, t)| t)
    }

    /// The ids, in the order touched.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|id| &**id)
    }

    /// Takes in a device the partition holds, saving what it starts with. Its index.
    pub(crate) fn hold(&mut self, id: &str, device: &Device) -> usize {
        let start = self.members.len() as u32;
        self.members.extend_from_slice(&device.memberships);
        let saved = Saved {
            scalars: device.scalars(),
            members: start..self.members.len() as u32,
            mirrored: None,
        };
        self.insert(id, Origin::Held(saved))
    }

    /// Takes in a device with the given origin (not [`Origin::Held`]: see [`TouchedDevices::hold`]). Its
    /// index.
    pub(crate) fn insert(&mut self, id: &str, origin: Origin) -> usize {
        let touched = Touched {
            origin,
            cause: None,
            retargeted: false,
        };
        self.entries.insert_full(id.into(), touched).0
    }

    /// Records the value an event replaced in device `index`'s attribute `field`.
    pub(crate) fn push_old(&mut self, index: usize, field: FieldId, old: Option<AttrValue>) {
        self.olds.push((index as u32, field, old));
    }

    /// The values replaced since the first `from` were recorded, as (field, old value).
    pub(crate) fn olds_since(
        &self,
        from: usize,
    ) -> impl Iterator<Item = (FieldId, Option<&AttrValue>)> {
        self.olds[from..].iter().map(|(_, f, v)| (*f, v.as_ref()))
    }

    pub(crate) fn olds_len(&self) -> usize {
        self.olds.len()
    }

    /// Applies a change the API has already written to a device's starting memberships too, so that the
    /// batch's diff writes nothing for it. (A device new to the batch has none to mirror.)
    pub(crate) fn mirror(&mut self, index: usize, change: impl Fn(&mut Vec<Member>)) {
        let Some((_, touched)) = self.entries.get_index_mut(index) else {
            return;
        };
        match &mut touched.origin {
            Origin::Held(saved) => {
                let range = saved.members.start as usize..saved.members.end as usize;
                let members = &self.members[range];
                change(saved.mirrored.get_or_insert_with(|| members.to_vec()));
            }
            Origin::Reread { stored, .. } | Origin::Foreign(stored) => {
                change(&mut stored.memberships)
            }
            Origin::New => {}
        }
    }

    /// Sorts the recorded attribute values by device and field, keeping each pair's order: the first of
    /// each is then what the batch started with ([`TouchedDevices::started`]).
    pub(crate) fn seal(&mut self) {
        self.olds.sort_by_key(|(index, field, _)| (*index, *field));
    }

    /// What device `index` started the batch with, once [`sealed`](TouchedDevices::seal).
    pub(crate) fn started(&self, index: usize) -> Start<'_> {
        let Some((_, touched)) = self.entries.get_index(index) else {
            return Start::Nothing;
        };
        match &touched.origin {
            Origin::Held(saved) => {
                let members = match &saved.mirrored {
                    Some(mirrored) => mirrored.as_slice(),
                    None => &self.members[saved.members.start as usize..saved.members.end as usize],
                };
                let index = index as u32;
                let from = self.olds.partition_point(|(i, _, _)| *i < index);
                let to = from + self.olds[from..].partition_point(|(i, _, _)| *i == index);
                Start::Saved {
                    scalars: &saved.scalars,
                    members,
                    olds: &self.olds[from..to],
                }
            }
            Origin::Reread { stored, .. } | Origin::Foreign(stored) => Start::Device(stored),
            Origin::New => Start::Nothing,
        }
    }

    /// The release device `index`'s target named at the batch's start, and where it stood in it (sealed
    /// or not: only its scalars are read).
    pub(crate) fn progress_at_start(&self, index: usize) -> Option<(uuid::Uuid, Standing)> {
        match &self.entries.get_index(index)?.1.origin {
            Origin::Held(saved) => saved.scalars.progress(),
            Origin::Reread { stored, .. } | Origin::Foreign(stored) => stored.progress(),
            Origin::New => None,
        }
    }

    /// Puts every device back as the batch found it: a held one's attributes, memberships and scalars
    /// restored, a re-read one's previous state reinstalled, one the partition did not hold removed. A
    /// restored device's flip is pushed again onto `timers`, in case its timer was taken meanwhile (a
    /// duplicate timer is harmless: the device is due once).
    pub(crate) fn restore(
        mut self,
        devices: &mut DeviceMap,
        timers: &mut BinaryHeap<Reverse<(EpochMillis, Box<str>)>>,
    ) {
        self.seal();
        let mut olds = self.olds.into_iter().peekable();
        for (index, (id, touched)) in self.entries.into_iter().enumerate() {
            let index = index as u32;
            let restored = match touched.origin {
                Origin::Held(saved) => {
                    let Some(device) = devices.get_mut(&*id) else {
                        continue;
                    };
                    let mut last = None;
                    while let Some((_, field, old)) = olds.next_if(|(i, _, _)| *i == index) {
                        if last == Some(field) {
                            continue;
                        }
                        last = Some(field);
                        match old {
                            Some(value) => device.attrs.set(field, value),
                            None => device.attrs.remove(field),
                        };
                    }
                    let members = saved.members.start as usize..saved.members.end as usize;
                    device.memberships.clear();
                    device.memberships.extend_from_slice(&self.members[members]);
                    device.restore(saved.scalars);
                    device.next_flip()
                }
                Origin::Reread { previous, .. } => {
                    let flip = previous.next_flip();
                    devices.insert(id.clone(), previous);
                    flip
                }
                Origin::Foreign(_) | Origin::New => {
                    devices.remove(&*id);
                    None
                }
            };
            if let Some(at) = restored {
                timers.push(Reverse((at, id)));
            }
        }
    }
}

/// What a device started a batch with, as its rows are diffed against.
pub(crate) enum Start<'a> {
    /// A held device: its scalars and memberships, and the first old value of each attribute the batch
    /// set or removed (sorted by field).
    Saved {
        scalars: &'a Scalars,
        members: &'a [Member],
        olds: &'a [Old],
    },
    /// A stored device read for the batch.
    Device(&'a Device),
    /// Stored nowhere.
    Nothing,
}

impl Start<'_> {
    pub(crate) fn members(&self) -> &[Member] {
        match self {
            Start::Saved { members, .. } => members,
            Start::Device(device) => &device.memberships,
            Start::Nothing => &[],
        }
    }

    /// The attributes whose values differ at the end of the batch from its start (a held device only), as
    /// (field, value now; `None` for removed), in field order.
    pub(crate) fn changed_attributes<'d>(
        &self,
        current: &'d Device,
    ) -> Vec<(FieldId, Option<&'d AttrValue>)> {
        let Start::Saved { olds, .. } = self else {
            return Vec::new();
        };
        let mut changed = Vec::new();
        let mut last = None;
        for (_, field, old) in olds.iter() {
            if last == Some(*field) {
                continue;
            }
            last = Some(*field);
            let now = current.attrs.get(*field);
            if old.as_ref() != now {
                changed.push((*field, now));
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use foldhash::HashMap;
    use serde_json::{json, Value};
    use uuid::Uuid;

    use crate::firmware::Staging;
    use crate::kafka::{Decoded, Record};
    use crate::rules::{Attributes, Catalogue};
    use crate::store::batch::AttributesWrite;
    use crate::store::control::{ControlEntry, GroupDefinition, Positioned};
    use crate::store::partition::Claim;
    use crate::worker::compute::{batch, BatchContext};
    use crate::worker::device::{AddedBy, Device, Member};
    use crate::worker::partition::{DeviceMap, Partition};
    use crate::worker::registry::Registry;

    const NOW: i64 = 1_750_000_000_000;

    /// Org `o` with a dynamic group (`hostname` is "a") and a static group released version 2.
    fn registry() -> (Registry, u32, Uuid) {
        let mut registry = Registry::new(Arc::new(Catalogue::default()));
        let dynamic = registry.upsert(&GroupDefinition {
            group_id: Uuid::new_v4(),
            org_id: "o".into(),
            site_id: None,
            version: 1,
            filter: Some(json!({"operator": "AND", "conditions": [
                {"field": "hostname", "operator": "equals", "value": "a"}
            ]})),
        });
        let fixed = Uuid::new_v4();
        registry.upsert(&GroupDefinition {
            group_id: fixed,
            org_id: "o".into(),
            site_id: None,
            version: 1,
            filter: None,
        });
        registry.set_release("o", Some(fixed), Some("2"), Staging::WHOLE, None);
        (registry, dynamic, fixed)
    }

    fn device(registry: &Registry, attrs: Value, memberships: Vec<Member>) -> Box<Device> {
        let mut device = Device::new(registry.org("o").unwrap().0.clone());
        device.attrs =
            Attributes::from_json(attrs.as_object().unwrap(), registry.catalogue()).unwrap();
        device.sequence = 5;
        device.version = 3;
        device.stored = true;
        device.memberships = memberships;
        Box::new(device)
    }

    fn record(registry: &Registry, offset: i64, event: crate::event::DeviceEventJson) -> Decoded {
        let record = Record {
            offset,
            key: Some(event.device_id.clone().into_bytes()),
            payload: Some(serde_json::to_vec(&event).unwrap()),
            timestamp: None,
        };
        record.decode(registry.catalogue(), 1 << 20)
    }

    fn event(
        id: &str,
        device: &str,
        sequence: i64,
        attributes: Value,
    ) -> crate::event::DeviceEventJson {
        let mut event = crate::event::DeviceEventJson::new(id, "o", device, sequence);
        event.attributes = attributes.as_object().unwrap().clone();
        event
    }

    /// A batch changes its partition's devices in place; put back, every device is exactly as the batch
    /// found it — attributes set twice, removed, memberships gained and lost, a mirrored static membership,
    /// a new firmware target — and devices the batch added are gone. Its rows are the difference between
    /// the start and the end, an attribute changed twice sent once with its last value.
    #[test]
    fn a_batch_put_back_leaves_every_device_as_it_found_it() {
        let (registry, dynamic, fixed) = registry();
        let member = Member {
            slot: dynamic,
            pinned: false,
            added_by: AddedBy::DynamicRule,
        };
        let mut p = Partition::new(
            0,
            Claim {
                epoch: 1,
                next_offset: 0,
                control_position: 0,
            },
        );
        {
            let mut devices = p.devices.write();
            let held = json!({"hostname": "b", "uptimeSeconds": 1, "siteId": "s"});
            devices.insert("held".into(), device(&registry, held, vec![]));
            let joined = json!({"hostname": "a"});
            devices.insert("member".into(), device(&registry, joined, vec![member]));
            devices.insert("static".into(), device(&registry, json!({}), vec![]));
        }
        p.schedule("held", &registry, NOW);
        let before: DeviceMap = p.devices.read().clone();
        let mut first = event(
            "e1",
            "held",
            6,
            json!({"hostname": "a", "uptimeSeconds": null}),
        );
        first.development = Some(true);
        let records = [
            record(&registry, 0, first),
            record(
                &registry,
                1,
                event("e2", "held", 7, json!({"uptimeSeconds": 7})),
            ),
            record(
                &registry,
                2,
                event("e3", "member", 6, json!({"hostname": null})),
            ),
            record(
                &registry,
                3,
                event("e4", "new", 1, json!({"hostname": "a"})),
            ),
        ];
        let control = [Positioned {
            id: 1,
            entry: ControlEntry::StaticMembers {
                group_id: fixed,
                org_id: "o".into(),
                added: vec!["static".into()],
                removed: vec![],
            },
        }];
        let ctx = BatchContext {
            input_topic: "in",
            dead_letter_topic: "dlq",
            max_event_bytes: 1 << 20,
            now: NOW,
            output_topic: "out",
            change_chunk_rows: usize::MAX,
        };
        let computed = batch(
            &registry,
            &p,
            &control,
            &records,
            &[],
            HashMap::default(),
            &ctx,
        );
        {
            let devices = p.devices.read();
            assert_eq!(devices["held"].memberships, vec![member]);
            assert!(devices["held"].development);
            assert_eq!(devices["held"].version, 4);
            assert!(devices["member"].memberships.is_empty());
            assert_eq!(devices["static"].target.version.as_deref(), Some("2"));
            assert!(devices.contains_key("new"));
        }
        let write = &computed.write;
        let held = write
            .device_updates
            .iter()
            .find(|r| r.id == "held")
            .unwrap();
        assert_eq!(held.attributes_write, AttributesWrite::Merge);
        let patch: Value = serde_json::from_str(&held.attributes).unwrap();
        assert_eq!(patch, json!({"hostname": "a", "uptimeSeconds": 7.0}));
        let gone = write
            .device_updates
            .iter()
            .find(|r| r.id == "member")
            .unwrap();
        assert_eq!(gone.attributes_write, AttributesWrite::MergeRemoving);
        // The mirrored static membership is the API's row: no membership row for it, only the new target.
        assert!(write
            .membership_inserts
            .iter()
            .all(|m| m.device_id != "static"));
        assert!(write.device_updates.iter().any(|r| r.id == "static"));
        assert_eq!(write.device_inserts.len(), 1);

        let mut devices = p.devices.write();
        computed.touched.restore(&mut devices, &mut p.timers);
        assert_eq!(devices.len(), before.len());
        for (id, device) in before.iter() {
            assert_eq!(devices.get(id), Some(device), "{id}");
        }
    }
}
