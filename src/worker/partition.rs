//! One owned partition's state: its claim (epoch and positions), its devices in memory, the timers that
//! wake its devices when a time-based condition can change truth, the control-log entries it has still to
//! apply, and how far it has applied a definition change that takes several batches.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashSet, HashSetExt};

use super::device::Device;
use super::registry::Registry;
use crate::rules::EpochMillis;
use crate::store::control::Positioned;
use crate::store::partition::Claim;

/// An owned partition.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) id: i32,
    /// The epoch, and the positions after the last batch computed (committed, or in flight: see
    /// [`crate::worker`]; the positions Kafka is told are those committed).
    pub(crate) claim: Claim,
    /// Shared with previews in the same process ([`crate::worker::view`]); the pipeline is its only writer.
    pub(crate) devices: Devices,
    /// (instant, device): when to re-evaluate a device's time-dependent groups. Every device with a pending
    /// wake-up has an entry at or before it ([`Device::reschedule`]); an entry that comes due before its
    /// device's wake-up is pushed again for it, and one of a device with none, or gone, is dropped.
    pub(crate) timers: BinaryHeap<Reverse<(EpochMillis, Box<str>)>>,
    /// Control-log entries this partition still has to apply, in order.
    pub(crate) pending_control: VecDeque<Positioned>,
    /// The definition change at the head of `pending_control` while it is applied over several batches.
    pub(crate) sweep: Option<Sweep>,
}

/// A partition's devices by id. Boxed: a map's spare buckets then cost a pointer each, not a whole device
/// (a table of half a million inline devices is often half empty after doubling).
pub(crate) type DeviceMap = HashMap<Box<str>, Box<Device>>;

/// A partition's devices behind a read-write lock, so that previews can evaluate filters where the devices
/// already are. The pipeline is the only writer and holds the write lock only to install a batch's devices;
/// a preview holds the read lock while it evaluates this one partition.
#[derive(Clone, Debug, Default)]
pub(crate) struct Devices(Arc<parking_lot::RwLock<DeviceMap>>);

impl Devices {
    pub(crate) fn read(&self) -> parking_lot::RwLockReadGuard<'_, DeviceMap> {
        self.0.read()
    }

    pub(crate) fn write(&self) -> parking_lot::RwLockWriteGuard<'_, DeviceMap> {
        self.0.write()
    }
}

/// How far a definition change (a group created, edited, retyped or deleted, a release changed) has been
/// applied to the partition's devices. Such a change visits every device of its org; it is applied in
/// bounded chunks, one per batch, each batch also taking the partition's events
/// ([`crate::worker::compute::sweep`]). The entry stays pending, and the partition's stored
/// `control_position` before it, until the last chunk commits: a worker that takes the partition over
/// starts the change again from its first device, which writes nothing for the devices already done.
#[derive(Clone, Debug)]
pub(crate) struct Sweep {
    /// The control-log entry being applied.
    pub(crate) entry: i64,
    /// The org's devices when the change started, in the order they are visited.
    pub(crate) ids: Arc<[Box<str>]>,
    /// How many of `ids` have been visited.
    pub(crate) next: usize,
}

impl Partition {
    /// A partition with its claim and no devices yet.
    pub(crate) fn new(id: i32, claim: Claim) -> Self {
        Self {
            id,
            claim,
            devices: Devices::default(),
            timers: BinaryHeap::new(),
            pending_control: VecDeque::new(),
            sweep: None,
        }
    }

    /// Computes a device's next wake-up (the next instant at which a time-based condition of its org's
    /// groups can change truth) and schedules it. An unchanged instant is left to the timer already there.
    #[cfg(test)]
    pub(crate) fn schedule(&mut self, id: &str, registry: &Registry, now: EpochMillis) {
        self.schedule_all(std::iter::once(id), registry, now);
    }

    /// [`Partition::schedule`] for each of `ids`, under one write lock.
    pub(crate) fn schedule_all<'i>(
        &mut self,
        ids: impl IntoIterator<Item = &'i str>,
        registry: &Registry,
        now: EpochMillis,
    ) {
        let mut devices = self.devices.write();
        for id in ids {
            let Some(device) = devices.get_mut(id) else {
                continue;
            };
            // A pending instant (after `now`) always has its timer in the heap: only due ones are taken out.
            if let Some(at) = device.reschedule(registry, now) {
                self.timers.push(Reverse((at, id.into())));
            }
        }
    }

    /// Removes and returns the devices due at `now` (their wake-up has come), each once, at most `limit`.
    /// A timer that comes due before its device's wake-up (the device's wake-up moved later since) is
    /// pushed again for the wake-up; one of a device gone, or with no wake-up left, is dropped.
    pub(crate) fn due_timers(&mut self, now: EpochMillis, limit: usize) -> Vec<Box<str>> {
        let mut due = Vec::new();
        let mut later = Vec::new();
        let mut seen = HashSet::new();
        let devices = self.devices.read();
        while due.len() < limit {
            match self.timers.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((_, id))) = self.timers.pop() else {
                break;
            };
            let Some(wake) = devices.get(&id).and_then(|d| d.next_flip()) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            if wake <= now {
                due.push(id);
            } else {
                later.push(Reverse((wake, id)));
            }
        }
        drop(devices);
        self.timers.extend(later);
        due
    }

    /// The earliest pending timer.
    pub(crate) fn next_timer(&self) -> Option<EpochMillis> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::*;
    use crate::rules::time::format_millis;
    use crate::rules::{Attributes, Catalogue};
    use crate::store::control::GroupDefinition;

    const HOUR: EpochMillis = 3_600_000;

    fn within_last(field: &str, amount: i64, unit: &str) -> Value {
        json!({"operator": "AND", "conditions": [
            {"field": field, "operator": "withinLast", "value": {"amount": amount, "unit": unit}}
        ]})
    }

    /// A registry of one org with three time-dependent groups (on `lastSeenAt`, on `enrolledAt`, and on
    /// `lastSeenAt` within one site) and one that is not.
    fn registry() -> Registry {
        let mut registry = Registry::new(Arc::new(Catalogue::default()));
        let org = "o";
        for (site, filter) in [
            (None, within_last("lastSeenAt", 1, "hours")),
            (None, within_last("enrolledAt", 1, "days")),
            (Some("s1"), within_last("lastSeenAt", 3, "hours")),
            (
                None,
                json!({"field": "hostname", "operator": "equals", "value": "a"}),
            ),
        ] {
            registry.upsert(&GroupDefinition {
                group_id: Uuid::new_v4(),
                org_id: org.into(),
                site_id: site.map(Into::into),
                version: 1,
                filter: Some(filter),
            });
        }
        registry
    }

    fn attrs(doc: Value) -> Attributes {
        Attributes::from_json(doc.as_object().unwrap(), &Catalogue::default()).unwrap()
    }

    fn iso(ms: EpochMillis) -> String {
        format_millis(ms)
    }

    const NOW: EpochMillis = 1_750_000_000_000;

    fn claim() -> Claim {
        Claim {
            epoch: 1,
            next_offset: 0,
            control_position: 0,
        }
    }

    #[test]
    fn a_device_wakes_up_whenever_a_condition_of_its_orgs_groups_changes_truth() {
        let registry = registry();
        let org = registry.org("o").unwrap().0.clone();
        let now = NOW;
        let mut p = Partition::new(0, claim());
        let mut device = Device::new(org);
        device.attrs =
            attrs(json!({"lastSeenAt": iso(now - HOUR / 2), "enrolledAt": iso(now - 12 * HOUR)}));
        p.devices.write().insert("d".into(), Box::new(device));
        // A withinLast condition stops holding one millisecond after its window ends: seen within the
        // hour, then within 3 hours (the site-scoped group: a wake-up for a device of no site changes
        // nothing, and is cheaper than telling), then enrolled within the day; then nothing can change.
        let expected = [
            Some(now + HOUR / 2 + 1),
            Some(now + 5 * HOUR / 2 + 1),
            Some(now + 12 * HOUR + 1),
            None,
        ];
        let mut at = now;
        for (i, want) in expected.into_iter().enumerate() {
            p.schedule("d", &registry, at);
            assert_eq!(p.devices.read()["d"].next_flip(), want, "wake-up {i}");
            if let Some(t) = want {
                assert_eq!(p.due_timers(t - 1, 10), Vec::<Box<str>>::new());
                assert_eq!(p.due_timers(t, 10), vec![Box::<str>::from("d")]);
                at = t;
            }
        }
        assert!(p.timers.is_empty());
    }

    #[test]
    fn a_device_keeps_one_timer_while_heartbeats_move_its_wake_up_later() {
        let registry = registry();
        let org = registry.org("o").unwrap().0.clone();
        let mut p = Partition::new(0, claim());
        let mut device = Device::new(org);
        device.attrs = attrs(json!({"lastSeenAt": iso(NOW - HOUR / 2)}));
        p.devices.write().insert("d".into(), Box::new(device));
        p.schedule("d", &registry, NOW);
        // An attribute no time-based condition reads changes: same instant, one timer.
        p.devices.write().get_mut("d").unwrap().attrs =
            attrs(json!({"lastSeenAt": iso(NOW - HOUR / 2), "hostname": "a"}));
        p.schedule("d", &registry, NOW + 1);
        assert_eq!(p.timers.len(), 1);
        // Heartbeats move it later: no timer is added; the first, when it comes due, finds the device not
        // yet due and is pushed again for its wake-up.
        for minute in 0..10 {
            p.devices.write().get_mut("d").unwrap().attrs =
                attrs(json!({"lastSeenAt": iso(NOW + minute * 60_000)}));
            p.schedule("d", &registry, NOW + 2 + minute * 60_000);
        }
        assert_eq!(p.timers.len(), 1);
        assert_eq!(p.next_timer(), Some(NOW + HOUR / 2 + 1));
        assert!(p.due_timers(NOW + HOUR / 2 + 1, 10).is_empty());
        assert_eq!(p.timers.len(), 1);
        let wake = NOW + 9 * 60_000 + HOUR + 1;
        assert_eq!(p.next_timer(), Some(wake));
        assert!(p.due_timers(wake - 1, 10).is_empty());
        assert_eq!(p.due_timers(wake, 10), vec![Box::<str>::from("d")]);
        assert!(p.timers.is_empty());
        // A wake-up moved earlier gets a timer of its own; the later one is dropped once the device has
        // been woken (its wake-up is then past, or none).
        p.devices.write().get_mut("d").unwrap().attrs = attrs(json!({"lastSeenAt": iso(NOW)}));
        p.schedule("d", &registry, NOW + 10);
        p.devices.write().get_mut("d").unwrap().attrs =
            attrs(json!({"lastSeenAt": iso(NOW - HOUR / 2)}));
        p.schedule("d", &registry, NOW + 20);
        assert_eq!(p.timers.len(), 2);
        assert_eq!(p.next_timer(), Some(NOW + HOUR / 2 + 1));
    }
}
