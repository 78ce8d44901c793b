//! What the test sends and does, and what it therefore expects: a seeded generator of attribute-change
//! events (with duplicates and stale, out-of-order sequences) and of operator actions (group edits, pins,
//! static members, releases, device settings), and the model folded from them — each device's attributes,
//! sequence and settings, the pins and the static memberships — to compare with PostgreSQL at the end.

use std::collections::{BTreeMap, BTreeSet};

use cohort_testkit::Rng;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// The org every device and group belongs to.
pub const ORG: &str = "acme";

const STATUSES: &[&str] = &["online", "offline", "maintenance"];
const OS_TYPES: &[&str] = &["linux", "rtos", "android"];
const TAGS: &[&str] = &["prod", "dev", "eu", "us"];
const PLATFORMS: &[&str] = &["rpi-4", "x86", "arm"];
/// Firmware versions devices report (and the only versions released): integers, so the org never mixes kinds.
pub const VERSIONS: &[&str] = &["1", "2", "3", "4", "5"];
/// The attributes events set and remove.
const FIELDS: &[&str] = &[
    "status",
    "osType",
    "uptimeSeconds",
    "tags",
    "firmwareVersion",
    "hostname",
    "platform",
];

/// How a device's development flag and firmware lock are changed: by its input events or by the API, never
/// both, so the final value is known (the worker orders the two by its pipeline, which the test cannot see).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SettingsBy {
    Events,
    Api,
    Nobody,
}

/// What the test knows about one device.
#[derive(Clone, Debug, Default)]
pub struct DeviceModel {
    /// The highest sequence sent so far.
    pub sent: i64,
    /// The highest sequence applied: an event applies only if its sequence is above this (the fold).
    pub applied: i64,
    /// The attributes after folding every applied event.
    pub attributes: Map<String, Value>,
    pub development: bool,
    pub lock: Option<String>,
    /// The last event sent, re-sent verbatim as a duplicate.
    pub last_payload: Option<String>,
}

/// An input event to produce.
pub struct Event {
    pub device: String,
    pub payload: String,
}

/// Counts of what was sent and done.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub events: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub groups_created: u64,
    pub filters_changed: u64,
    pub groups_deleted: u64,
    pub pins: u64,
    pub unpins: u64,
    pub static_adds: u64,
    pub static_removes: u64,
    pub releases: u64,
    /// Of `releases`, those made in stages.
    pub staged_releases: u64,
    /// Stages advanced.
    pub advances: u64,
    /// Of `releases`, those with a failure signal and a halt threshold.
    pub watched_releases: u64,
    /// Halted releases resumed.
    pub resumes: u64,
    pub default_releases: u64,
    pub withdrawals: u64,
    pub settings: u64,
}

/// The model of everything sent and done.
pub struct Model {
    pub devices: Vec<DeviceModel>,
    /// Live dynamic groups.
    pub dynamic: BTreeSet<Uuid>,
    /// Static groups and their members, as the API reported changing them.
    pub statics: BTreeMap<Uuid, BTreeSet<String>>,
    /// Pinned (group, device) pairs: the last pin or unpin of each pair that the API accepted.
    pub pins: BTreeSet<(Uuid, String)>,
    /// Live releases: (group or `None` for the default) → release id.
    pub releases: BTreeMap<Option<Uuid>, Uuid>,
    pub counts: Counts,
    next_event: u64,
    next_group: u64,
}

impl Model {
    pub fn new(devices: usize) -> Self {
        Self {
            devices: vec![DeviceModel::default(); devices],
            dynamic: BTreeSet::new(),
            statics: BTreeMap::new(),
            pins: BTreeSet::new(),
            releases: BTreeMap::new(),
            counts: Counts::default(),
            next_event: 0,
            next_group: 0,
        }
    }

    pub fn device_id(index: usize) -> String {
        format!("dev-{index:05}")
    }

    pub fn settings_by(index: usize) -> SettingsBy {
        match index % 5 {
            0 => SettingsBy::Events,
            1 => SettingsBy::Api,
            _ => SettingsBy::Nobody,
        }
    }

    /// A fresh group name.
    pub fn group_name(&mut self, prefix: &str) -> String {
        self.next_group += 1;
        format!("{prefix}-{}", self.next_group)
    }

    /// The next event: usually a new sequence with a partial change; sometimes a verbatim duplicate of the
    /// device's last event, or a stale one (a sequence at or below one already sent), which must change
    /// nothing.
    pub fn next_event(&mut self, rng: &mut Rng) -> Event {
        // A few devices are much busier than the rest.
        let index = if rng.chance(20) {
            rng.below(50.min(self.devices.len() as u64)) as usize
        } else {
            rng.below(self.devices.len() as u64) as usize
        };
        let device = Self::device_id(index);
        let model = &mut self.devices[index];
        if model.sent > 0 && rng.chance(2) {
            if let Some(payload) = model.last_payload.clone() {
                self.counts.duplicates += 1;
                self.counts.events += 1;
                return Event { device, payload };
            }
        }
        let stale = model.sent > 0 && rng.chance(2);
        let sequence = if stale {
            1 + rng.below(model.sent as u64) as i64
        } else {
            model.sent + 1 + rng.below(3) as i64
        };
        self.next_event += 1;
        let mut event = json!({
            "eventId": format!("ev-{}", self.next_event),
            "orgId": ORG,
            "deviceId": device,
            "sequence": sequence,
        });
        let mut set = Map::new();
        let mut removed = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let field = *rng.pick(FIELDS);
            if set.contains_key(field) || removed.contains(&field) {
                continue;
            }
            if rng.chance(8) {
                // Removed either as `null` or through `removed`.
                if rng.chance(50) {
                    set.insert(field.to_owned(), Value::Null);
                } else {
                    removed.push(field);
                }
            } else {
                set.insert(field.to_owned(), random_value(field, rng));
            }
        }
        event["attributes"] = Value::Object(set.clone());
        if !removed.is_empty() {
            event["removed"] = json!(removed);
        }
        let mut development = None;
        let mut lock = None;
        if Self::settings_by(index) == SettingsBy::Events {
            if rng.chance(10) {
                development = Some(rng.chance(30));
                event["development"] = json!(development);
            }
            if rng.chance(10) {
                let value = rng.chance(60).then(|| rng.pick(VERSIONS).to_string());
                event["firmwareLock"] = json!(value);
                lock = Some(value);
            }
        }
        let payload = event.to_string();
        if stale {
            self.counts.stale += 1;
        } else {
            model.sent = sequence;
            model.last_payload = Some(payload.clone());
        }
        // The fold: the worker applies an event only if its sequence is above the device's.
        if sequence > model.applied {
            model.applied = sequence;
            for (field, value) in set {
                if value.is_null() {
                    model.attributes.remove(&field);
                } else {
                    model.attributes.insert(field, value);
                }
            }
            for field in removed {
                model.attributes.remove(field);
            }
            if let Some(development) = development {
                model.development = development;
            }
            if let Some(lock) = lock {
                model.lock = lock;
            }
        }
        self.counts.events += 1;
        Event { device, payload }
    }
}

fn random_value(field: &str, rng: &mut Rng) -> Value {
    match field {
        "status" => json!(rng.pick(STATUSES)),
        "osType" => json!(rng.pick(OS_TYPES)),
        "uptimeSeconds" => json!(rng.below(1000)),
        "tags" => {
            let tags: Vec<&str> = TAGS.iter().copied().filter(|_| rng.chance(40)).collect();
            json!(tags)
        }
        "firmwareVersion" => json!(rng.pick(VERSIONS)),
        "hostname" => json!(format!("h-{}", rng.below(20))),
        "platform" => json!(rng.pick(PLATFORMS)),
        other => unreachable!("no values for {other}"),
    }
}

/// A random dynamic-group filter over the fields events change: one to three conditions under AND or OR.
/// No time-relative operator, so membership depends on the attributes alone, and no site scope.
pub fn random_filter(rng: &mut Rng) -> Value {
    let conditions: Vec<Value> = (0..1 + rng.below(3))
        .map(|_| match rng.below(9) {
            0 => json!({"field": "status", "operator": "equals", "value": rng.pick(STATUSES)}),
            1 => json!({"field": "status", "operator": "notEquals", "value": rng.pick(STATUSES)}),
            2 => json!({"field": "osType", "operator": "in", "value": [rng.pick(OS_TYPES), rng.pick(OS_TYPES)]}),
            3 => json!({"field": "uptimeSeconds", "operator": "greaterThan", "value": rng.below(1000)}),
            4 => json!({"field": "uptimeSeconds", "operator": "lessThan", "value": rng.below(1000)}),
            5 => json!({"field": "tags", "operator": "contains", "value": rng.pick(TAGS).to_uppercase()}),
            6 => json!({"field": "tags", "operator": "notContains", "value": rng.pick(TAGS)}),
            7 => json!({"field": "firmwareVersion", "operator": "equals", "value": rng.pick(VERSIONS)}),
            _ => json!({"field": "hostname", "operator": "startsWith", "value": format!("H-{}", rng.below(3))}),
        })
        .collect();
    json!({"operator": if rng.chance(60) { "AND" } else { "OR" }, "conditions": conditions})
}
