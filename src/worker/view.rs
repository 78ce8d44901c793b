//! The fleet as this process's worker holds it, for previews. A worker keeps every device of the partitions
//! it owns in memory, with its attributes parsed for the evaluator; a preview evaluates a filter there —
//! partition by partition, each under its read lock, with the same compiled evaluator the worker runs —
//! instead of reading every device's attributes from PostgreSQL and parsing them again.
//!
//! What an answer from here promises: each partition as of its latest computed batch, which is the last
//! committed state or, while a batch commits, that batch's (never older than what is committed; a batch that
//! then fails to commit is recomputed, so a device conflict can make a preview a batch early). Partitions
//! this process does not hold — owned by another worker, or moving between owners, or not loaded yet — are
//! not answered here: [`FleetView::evaluate`] says which it answered, and the caller asks the workers
//! holding the rest (`crate::api::internal`) or reads them from PostgreSQL's committed state.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use uuid::Uuid;

use super::partition::Devices;
use crate::rules::attrs::value_to_json;
use crate::rules::{AttrValue, Catalogue, CompiledFilter, EpochMillis, FieldId};
use crate::store::firmware::Facts;

/// The partitions this process's worker holds, shared with the API in the same process.
#[derive(Clone, Debug, Default)]
pub struct FleetView {
    partitions: Arc<parking_lot::RwLock<BTreeMap<i32, Devices>>>,
    /// The registry's group ids by slot (devices name their groups by slot), as the pipeline last
    /// published them.
    groups: Arc<parking_lot::RwLock<Vec<Uuid>>>,
}

/// A matching device in a sample: its id and the values of the fields asked for, as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub id: String,
    pub fields: Vec<Option<serde_json::Value>>,
}

/// What a filter matched over the partitions this process holds.
#[derive(Clone, Debug, Default)]
pub struct Evaluated {
    /// The partitions answered (all of those held when the evaluation started).
    pub partitions: Vec<i32>,
    /// Devices of the org (and site) examined.
    pub examined: u64,
    /// Devices matching.
    pub matched: u64,
    /// The first `limit` matching devices by id.
    pub sample: Vec<Sampled>,
}

/// A sampled device, ordered by id alone.
struct ById(Box<str>, Vec<Option<serde_json::Value>>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// What to evaluate.
#[derive(Clone, Copy)]
pub struct Question<'a> {
    pub org: &'a str,
    /// Only devices whose `siteId` is this.
    pub site: Option<&'a str>,
    pub filter: &'a CompiledFilter,
    pub now: EpochMillis,
    /// Sample size.
    pub limit: usize,
    /// The fields each sampled device shows.
    pub shown: &'a [FieldId],
    /// Only these partitions (those held among them), when given: a peer asks for the partitions it
    /// did not answer itself.
    pub partitions: Option<&'a [i32]>,
}

impl FleetView {
    /// Publishes a partition once its devices are loaded.
    pub(crate) fn insert(&self, partition: i32, devices: Devices) {
        self.partitions.write().insert(partition, devices);
    }

    /// Withdraws a partition the worker no longer holds.
    pub(crate) fn remove(&self, partition: i32) {
        self.partitions.write().remove(&partition);
    }

    /// Publishes the registry's group ids by slot.
    pub(crate) fn publish_groups(&self, ids: impl Iterator<Item = Uuid>) {
        let mut groups = self.groups.write();
        groups.clear();
        groups.extend(ids);
    }

    /// How many group slots were last published.
    pub(crate) fn published_groups(&self) -> usize {
        self.groups.read().len()
    }

    /// Calls `each` with every held device of the org — only the members of `group`, when given — with
    /// its groups (a group the pipeline has not published yet is left out: a tombstone of a deleted
    /// group, which carries no release), each partition (of `only`, when given) on a thread of its own
    /// with its own state from `start`. Returns the partitions answered and each one's state. Blocks the
    /// calling thread.
    pub fn for_each_device<T: Send>(
        &self,
        catalogue: &Catalogue,
        org: &str,
        group: Option<Uuid>,
        only: Option<&[i32]>,
        start: impl Fn() -> T + Sync,
        each: impl Fn(&mut T, Facts<'_>, &[Uuid]) + Sync,
    ) -> (Vec<i32>, Vec<T>) {
        let groups = self.groups.read().clone();
        let slot = group.and_then(|g| groups.iter().position(|id| *id == g));
        if group.is_some() && slot.is_none() {
            // Not published yet: no held device is known to be a member.
            let held = self.held_among(only).into_iter().map(|(p, _)| p).collect();
            return (held, Vec::new());
        }
        let running_field = catalogue.builtin("firmwareVersion");
        let one = |devices: &Devices| {
            let mut state = start();
            let mut member_of = Vec::new();
            let devices = devices.read();
            for (id, device) in devices.iter() {
                if &*device.org != org {
                    continue;
                }
                if let Some(slot) = slot {
                    if device.member(slot as u32).is_none() {
                        continue;
                    }
                }
                member_of.clear();
                member_of.extend(
                    device
                        .memberships
                        .iter()
                        .filter_map(|m| groups.get(m.slot as usize).copied()),
                );
                let running = running_field.and_then(|f| match device.attrs.get(f) {
                    Some(AttrValue::Str(s)) => Some(&**s),
                    _ => None,
                });
                let facts = Facts {
                    id,
                    development: device.development,
                    lock: device.firmware_lock.as_deref(),
                    running,
                    current: device.target.release,
                };
                each(&mut state, facts, &member_of);
            }
            state
        };
        self.each_partition(only, one)
    }

    /// Runs `one` on every partition held (of `only`, when given), each on a thread of its own; returns
    /// the partitions and what `one` gave for each (a partition whose thread panicked — none is reachable:
    /// evaluation does not panic — gives nothing).
    fn each_partition<T: Send>(
        &self,
        only: Option<&[i32]>,
        one: impl Fn(&Devices) -> T + Sync,
    ) -> (Vec<i32>, Vec<T>) {
        let partitions = self.held_among(only);
        let results = std::thread::scope(|scope| {
            let running: Vec<_> = partitions
                .iter()
                .map(|(_, devices)| scope.spawn(|| one(devices)))
                .collect();
            running.into_iter().filter_map(|r| r.join().ok()).collect()
        });
        (partitions.into_iter().map(|(p, _)| p).collect(), results)
    }

    /// The partitions held now (of `only`, when given), with their devices.
    fn held_among(&self, only: Option<&[i32]>) -> Vec<(i32, Devices)> {
        self.partitions
            .read()
            .iter()
            .filter(|(p, _)| only.is_none_or(|only| only.contains(p)))
            .map(|(p, d)| (*p, d.clone()))
            .collect()
    }

    /// The partitions held now.
    pub fn held(&self) -> Vec<i32> {
        self.partitions.read().keys().copied().collect()
    }

    /// Evaluates a filter over every partition held (of `question.partitions`, when given), each on a
    /// thread of its own and under its read lock (the worker waits at most one partition's evaluation to
    /// install a batch). Blocks the calling thread: call it from a blocking task.
    pub fn evaluate(&self, catalogue: &Catalogue, question: &Question<'_>) -> Evaluated {
        let (partitions, parts) = self.each_partition(question.partitions, |devices| {
            evaluate_partition(devices, catalogue, question)
        });
        let mut answer = Evaluated {
            partitions,
            ..Evaluated::default()
        };
        let mut sample: Vec<ById> = Vec::new();
        for (examined, matched, part) in parts {
            answer.examined += examined;
            answer.matched += matched;
            sample.extend(part);
        }
        sample.sort();
        sample.truncate(question.limit);
        answer.sample = sample
            .into_iter()
            .map(|ById(id, fields)| Sampled {
                id: id.into(),
                fields,
            })
            .collect();
        answer
    }
}

/// One partition's part of [`FleetView::evaluate`]: devices examined, matched, and the `limit` smallest
/// matching ids with their shown fields.
fn evaluate_partition(
    devices: &Devices,
    catalogue: &Catalogue,
    question: &Question<'_>,
) -> (u64, u64, BinaryHeap<ById>) {
    let site_field = catalogue.builtin("siteId");
    let (mut examined, mut matched) = (0, 0);
    // A max-heap whose top is the largest id kept.
    let mut sample: BinaryHeap<ById> = BinaryHeap::new();
    let devices = devices.read();
    for (id, device) in devices.iter() {
        if &*device.org != question.org {
            continue;
        }
        if let (Some(site), Some(field)) = (question.site, site_field) {
            match device.attrs.get(field) {
                Some(AttrValue::Str(s)) if **s == *site => {}
                _ => continue,
            }
        }
        examined += 1;
        if !question.filter.evaluate(&device.attrs, question.now) {
            continue;
        }
        matched += 1;
        let wanted =
            sample.len() < question.limit || sample.peek().is_some_and(|largest| **id < *largest.0);
        if !wanted {
            continue;
        }
        if sample.len() == question.limit {
            sample.pop();
        }
        let fields = question
            .shown
            .iter()
            .map(|&f| device.attrs.get(f).map(|v| value_to_json(catalogue, f, v)))
            .collect();
        sample.push(ById(id.clone(), fields));
    }
    (examined, matched, sample)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rules::{compile, Attributes};
    use crate::worker::device::Device;

    fn device(org: &Arc<str>, doc: serde_json::Value, catalogue: &Catalogue) -> Box<Device> {
        let mut device = Device::new(org.clone());
        device.attrs = Attributes::from_json(doc.as_object().unwrap(), catalogue).unwrap();
        Box::new(device)
    }

    #[test]
    fn a_filter_is_counted_over_every_partition_held_with_the_smallest_ids_sampled() {
        let catalogue = Catalogue::default();
        let org: Arc<str> = "o".into();
        let other: Arc<str> = "other".into();
        let view = FleetView::default();
        for partition in 0..3 {
            let devices = Devices::default();
            {
                let mut map = devices.write();
                for i in 0..10 {
                    let id = format!("d{:02}", partition * 10 + i);
                    let status = if i % 2 == 0 { "online" } else { "offline" };
                    let doc = json!({"status": status, "siteId": if i < 6 { "s1" } else { "s2" }});
                    map.insert(id.into(), device(&org, doc, &catalogue));
                }
                map.insert(
                    format!("x{partition}").into(),
                    device(&other, json!({"status": "online"}), &catalogue),
                );
            }
            view.insert(partition, devices);
        }
        let filter = compile(
            &json!({"operator": "AND", "conditions": [
                {"field": "status", "operator": "equals", "value": "online"}]}),
            &catalogue,
        )
        .unwrap();
        let status = catalogue.builtin("status").unwrap();
        let question = Question {
            org: "o",
            site: None,
            filter: &filter,
            now: 0,
            limit: 4,
            shown: &[status],
            partitions: None,
        };
        let answer = view.evaluate(&catalogue, &question);
        assert_eq!(answer.partitions, vec![0, 1, 2]);
        assert_eq!((answer.examined, answer.matched), (30, 15));
        let ids: Vec<&str> = answer.sample.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["d00", "d02", "d04", "d06"]);
        assert_eq!(answer.sample[0].fields, vec![Some(json!("online"))]);
        // Scoped to a site: six of each partition's ten, three of them online.
        let scoped = view.evaluate(
            &catalogue,
            &Question {
                site: Some("s1"),
                ..question
            },
        );
        assert_eq!((scoped.examined, scoped.matched), (18, 9));
        // Asked for some partitions: those held among them.
        let some = view.evaluate(
            &catalogue,
            &Question {
                partitions: Some(&[2, 5]),
                ..question
            },
        );
        assert_eq!(some.partitions, vec![2]);
        assert_eq!((some.examined, some.matched), (10, 5));
        assert_eq!(some.sample[0].id, "d20");
        view.remove(1);
        assert_eq!(view.held(), vec![0, 2]);
    }
}
