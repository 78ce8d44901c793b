//! The synthetic fleet: devices, dynamic groups and attribute-change events, all derived from one seed so a
//! run can be reproduced. Pure: no IO.
//!
//! Devices carry ten attributes of every type the catalogue has (strings, enums, a number, datetimes, a
//! string array), drawn from skewed pools the way a real fleet looks (most devices online, most on Linux, a
//! few dozen OS and firmware versions, fifty sites). Groups use all 24 operators: group *k* of an org starts
//! with a condition on operator `k mod 24` and adds one or two more, sometimes with a nested group; most
//! groups AND their conditions. What events change is their [`Mix`]: by default (`churn`) they are
//! heartbeats (`lastSeenAt`, a random `uptimeSeconds`) that also change the status a quarter of the time
//! and, more rarely, the OS or firmware version, the tags or the site, so most change a membership; a
//! `heartbeat` stream only moves `lastSeenAt` and grows `uptimeSeconds`, as a real fleet mostly does; a
//! `realistic` one is heartbeats with a few state changes.
//!
//! The fleet is created as the event stream keeps it: every attribute an event sets is drawn from the
//! distribution events draw it from, and every device was last seen within the last 15 minutes (the stream
//! heartbeats each device every minute or two). So the events of every phase change as many memberships
//! per event, and the minimal writer's events, which come after the worker's, are no lighter than the
//! worker's. (A fleet with 40% of its devices last seen up to a month ago made each device's first
//! heartbeat flip its time-based groups: the throughput phase wrote 1.54 log rows per event, the ceiling's
//! later events 1.06.)

use serde_json::{json, Map, Value};

use crate::event::{encode, DeviceEventJson};
use crate::rules::time::format_millis;
use crate::rules::{EpochMillis, Operator};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

const STATUSES: &[(&str, u32)] = &[
    ("online", 60),
    ("offline", 30),
    ("maintenance", 8),
    ("decommissioned", 2),
];
const OS_TYPES: &[(&str, u32)] = &[
    ("linux", 50),
    ("rtos", 20),
    ("android", 15),
    ("windows", 10),
    ("other", 5),
];
const OS_VERSIONS: &[&str] = &[
    "1.0", "1.2", "2.0", "2.1", "3.0", "3.4", "4.0", "4.2", "5.0", "5.1",
];
const TAGS: &[&str] = &[
    "prod", "staging", "dev", "eu", "us", "apac", "canary", "beta", "edge", "gateway", "sensor",
    "camera",
];
const SITES: u64 = 50;
const MAX_UPTIME: u64 = 10_000_000;
/// Every device was last seen this recently when the fleet is created: less than the shortest window of
/// any generated time condition (an hour), so a heartbeat alone flips no group.
const LAST_SEEN_WITHIN_MS: u64 = 15 * 60_000;
/// The chance that an event sets a site, and that one which does not removes it.
const SITE_SET: f64 = 0.03;
const SITE_REMOVED: f64 = 0.01;
/// The share of devices with a site when the fleet is created: the share the events keep,
/// `SITE_SET / (SITE_SET + (1 - SITE_SET) * SITE_REMOVED)`, about 0.756.
const SITE_SHARE: f64 = SITE_SET / (SITE_SET + (1.0 - SITE_SET) * SITE_REMOVED);

/// The share of a `realistic` stream's events that also change state, as a `churn` event does.
const REALISTIC_CHANGES: f64 = 0.02;

/// What a stream's events change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Every event a heartbeat with a random uptime, a quarter of them changing the status, a few the OS,
    /// firmware, tags or site: most events change a membership.
    #[default]
    Churn,
    /// Heartbeats only: `lastSeenAt` set to the event's instant and `uptimeSeconds` grown by the time
    /// since the fleet was created. A membership changes only where a device's uptime crosses a group's
    /// threshold.
    Heartbeat,
    /// Heartbeats, 2% of which also change state as a churn event does (its uptime still grown, not
    /// drawn).
    Realistic,
}

impl Mix {
    pub const ALL: [Mix; 3] = [Mix::Churn, Mix::Heartbeat, Mix::Realistic];

    pub fn name(self) -> &'static str {
        match self {
            Mix::Churn => "churn",
            Mix::Heartbeat => "heartbeat",
            Mix::Realistic => "realistic",
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mix::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| "expected one of churn, heartbeat, realistic".to_owned())
    }
}

/// What every synthetic org id starts with: a database whose orgs all start with it holds only synthetic
/// data.
pub const ORG_ID_PREFIX: &str = "bench-org-";

/// A small, fast, seedable generator (SplitMix64): reproducible runs without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn weighted(&mut self, items: &[(&'static str, u32)]) -> &'static str {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(u64::from(total)) as u32;
        for (item, weight) in items {
            if x < *weight {
                return item;
            }
            x -= weight;
        }
        items[items.len() - 1].0
    }
}

/// The fleet's shape and the instant its attributes are relative to.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub devices: usize,
    pub orgs: usize,
    pub seed: u64,
    /// The instant the fleet is generated at: datetimes are spread before it.
    pub t0: EpochMillis,
    /// Digits in device ids, so that ids sort like their numbers.
    width: usize,
}

/// One group to create.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Index of the org.
    pub org: usize,
    pub name: String,
    pub site: Option<String>,
    pub filter: Value,
}

/// One event to produce.
#[derive(Clone, Debug)]
pub struct SyntheticEvent {
    /// Index of the device.
    pub device: usize,
    /// The Kafka key (the device id).
    pub key: Vec<u8>,
    /// The encoded `device-attribute-changes` value.
    pub payload: Vec<u8>,
}

impl Fleet {
    /// A fleet of `devices` devices spread round-robin over `orgs` orgs.
    pub fn new(devices: usize, orgs: usize, seed: u64, t0: EpochMillis) -> Self {
        let width = devices.saturating_sub(1).to_string().len().max(7);
        Self {
            devices,
            orgs: orgs.max(1),
            seed,
            t0,
            width,
        }
    }

    /// The id of device `i`; ids sort in index order.
    pub fn device_id(&self, i: usize) -> String {
        format!("dev-{i:0w$}", w = self.width)
    }

    /// The org index of device `i`.
    pub fn org_of(&self, i: usize) -> usize {
        i % self.orgs
    }

    /// The id of org `o`.
    pub fn org_id(o: usize) -> String {
        format!("{ORG_ID_PREFIX}{o:02}")
    }

    fn device_rng(&self, i: usize) -> Rng {
        Rng::new(self.seed ^ (i as u64).wrapping_mul(0xd6e8_feb8_6659_fd93))
    }

    /// Device `i`'s `uptimeSeconds` when the fleet is created (drawn apart from its other attributes, so
    /// a heartbeat can grow it without drawing them again).
    fn seeded_uptime(&self, i: usize) -> u64 {
        Rng::new(self.seed ^ (i as u64).wrapping_mul(0x9e6c_63d0_676a_9a99) ^ 0x7570)
            .below(MAX_UPTIME)
    }

    /// Device `i`'s attributes when the fleet is created, as a device document.
    pub fn attributes(&self, i: usize) -> Map<String, Value> {
        let mut rng = self.device_rng(i);
        let mut doc = Map::new();
        doc.insert(
            "hostname".into(),
            json!(format!("host-{i:0w$}", w = self.width)),
        );
        let status = rng.weighted(STATUSES);
        doc.insert("status".into(), json!(status));
        doc.insert("osType".into(), json!(rng.weighted(OS_TYPES)));
        doc.insert("osVersion".into(), json!(rng.pick(OS_VERSIONS)));
        doc.insert("firmwareVersion".into(), json!(firmware(&mut rng)));
        doc.insert("uptimeSeconds".into(), json!(self.seeded_uptime(i)));
        // Every device heartbeats, whatever its status (as the stream's events do).
        let last_seen = self.t0 - rng.below(LAST_SEEN_WITHIN_MS) as i64;
        doc.insert("lastSeenAt".into(), json!(format_millis(last_seen)));
        let enrolled = self.t0 - 30 * DAY_MS - rng.below(970 * DAY_MS as u64) as i64;
        doc.insert("enrolledAt".into(), json!(format_millis(enrolled)));
        doc.insert("tags".into(), json!(tags(&mut rng)));
        if rng.chance(SITE_SHARE) {
            doc.insert("siteId".into(), json!(site(&mut rng)));
        }
        doc
    }

    /// `count` dynamic groups spread round-robin over the orgs, together using every operator.
    ///
    /// As operators write them, most groups AND a condition that picks a slice of the fleet (an OS, a few
    /// sites, a firmware line, a tag) with the conditions that make the group; a few OR broad conditions.
    pub fn groups(&self, count: usize) -> Vec<GroupSpec> {
        let mut rng = Rng::new(self.seed ^ 0x6772_6f75_7073);
        (0..count)
            .map(|g| {
                let org = g % self.orgs;
                let k = g / self.orgs;
                let first = condition(Operator::ALL[k % Operator::ALL.len()], &mut rng, self.t0);
                let mut conditions = vec![first];
                let operator = if rng.chance(0.03) {
                    conditions.push(condition(*rng.pick(&Operator::ALL), &mut rng, self.t0));
                    "OR"
                } else {
                    conditions.push(slice(&mut rng));
                    if rng.chance(0.5) {
                        conditions.push(condition(*rng.pick(&Operator::ALL), &mut rng, self.t0));
                    }
                    "AND"
                };
                if rng.chance(0.1) {
                    let a = condition(*rng.pick(&Operator::ALL), &mut rng, self.t0);
                    let b = condition(*rng.pick(&Operator::ALL), &mut rng, self.t0);
                    conditions.push(json!({"operator": "OR", "conditions": [a, b]}));
                }
                let site = rng.chance(0.05).then(|| site(&mut rng));
                GroupSpec {
                    org,
                    name: format!("bench-group-{g:05}"),
                    site,
                    filter: json!({"operator": operator, "conditions": conditions}),
                }
            })
            .collect()
    }

    /// The device whose turn to heartbeat event `sequence` is: any `devices` consecutive sequences name
    /// every device once, in an order that scatters them over the orgs and partitions (a stride by a
    /// prime larger than any fleet, so coprime with its size).
    fn in_turn(&self, sequence: i64) -> usize {
        const STRIDE: u64 = 1_000_000_007;
        let n = self.devices.max(1) as u128;
        // In u128: the product of two residues of a fleet above 2^32 devices would overflow u64.
        ((u128::from(sequence.unsigned_abs()) % n) * (u128::from(STRIDE) % n) % n) as usize
    }

    /// An attribute change of `mix` — for a random device in a churn stream; in a heartbeat or realistic
    /// one, for each device in turn, as a fleet heartbeats (see `Fleet::in_turn`) — with sequence
    /// `sequence` (callers hand out increasing sequences, so every event is newer than anything its
    /// device has seen) and `now` as the heartbeat.
    pub fn event(
        &self,
        mix: Mix,
        rng: &mut Rng,
        sequence: i64,
        now: EpochMillis,
    ) -> SyntheticEvent {
        let device = match mix {
            Mix::Churn => rng.below(self.devices as u64) as usize,
            Mix::Heartbeat | Mix::Realistic => self.in_turn(sequence),
        };
        let id = self.device_id(device);
        let mut attributes = Map::new();
        let mut removed = Vec::new();
        attributes.insert("lastSeenAt".into(), json!(format_millis(now)));
        let grown = || self.seeded_uptime(device) + ((now - self.t0).max(0) / 1000) as u64;
        match mix {
            Mix::Churn => {
                attributes.insert("uptimeSeconds".into(), json!(rng.below(MAX_UPTIME)));
                change_state(rng, &mut attributes, &mut removed);
            }
            Mix::Heartbeat => {
                attributes.insert("uptimeSeconds".into(), json!(grown()));
            }
            Mix::Realistic => {
                attributes.insert("uptimeSeconds".into(), json!(grown()));
                if rng.chance(REALISTIC_CHANGES) {
                    change_state(rng, &mut attributes, &mut removed);
                }
            }
        }
        let event = DeviceEventJson {
            attributes,
            removed,
            ..DeviceEventJson::new(
                format!("bench-{sequence}"),
                Self::org_id(self.org_of(device)),
                id.clone(),
                sequence,
            )
        };
        SyntheticEvent {
            device,
            key: id.into_bytes(),
            payload: encode(&event),
        }
    }
}

/// A churn event's state changes: the status a quarter of the time, more rarely the OS or firmware
/// version, the tags or the site.
fn change_state(rng: &mut Rng, attributes: &mut Map<String, Value>, removed: &mut Vec<String>) {
    if rng.chance(0.25) {
        attributes.insert("status".into(), json!(rng.weighted(STATUSES)));
    }
    if rng.chance(0.05) {
        attributes.insert("osVersion".into(), json!(rng.pick(OS_VERSIONS)));
    }
    if rng.chance(0.05) {
        attributes.insert("firmwareVersion".into(), json!(firmware(rng)));
    }
    if rng.chance(0.1) {
        attributes.insert("tags".into(), json!(tags(rng)));
    }
    if rng.chance(SITE_SET) {
        attributes.insert("siteId".into(), json!(site(rng)));
    } else if rng.chance(SITE_REMOVED) {
        removed.push("siteId".to_string());
    }
}

fn firmware(rng: &mut Rng) -> String {
    format!("{}.{}.{}", 1 + rng.below(5), rng.below(6), rng.below(2))
}

fn tags(rng: &mut Rng) -> Vec<&'static str> {
    let n = rng.below(4);
    let mut tags: Vec<&'static str> = Vec::new();
    for _ in 0..n {
        let tag = *rng.pick(TAGS);
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

fn site(rng: &mut Rng) -> String {
    format!("site-{:02}", rng.below(SITES))
}

/// A condition selecting a slice of the fleet (5–20% of it).
fn slice(rng: &mut Rng) -> Value {
    match rng.below(5) {
        0 => {
            json!({"field": "osType", "operator": "equals", "value": rng.pick(&["rtos", "android", "windows"])})
        }
        1 => {
            json!({"field": "siteId", "operator": "in", "value": (0..5).map(|_| site(rng)).collect::<Vec<_>>()})
        }
        2 => {
            json!({"field": "osVersion", "operator": "in", "value": [rng.pick(OS_VERSIONS), rng.pick(OS_VERSIONS)]})
        }
        3 => {
            json!({"field": "firmwareVersion", "operator": "startsWith", "value": format!("{}.", 1 + rng.below(5))})
        }
        _ => json!({"field": "tags", "operator": "contains", "value": rng.pick(TAGS)}),
    }
}

fn instant(t0: EpochMillis, days_ago: i64) -> String {
    format_millis(t0 - days_ago * DAY_MS)
}

/// One condition using `op`, on a field and with a value that suit it.
fn condition(op: Operator, rng: &mut Rng, t0: EpochMillis) -> Value {
    use Operator::*;
    let name = op.name();
    let leaf =
        |field: &str, value: Value| json!({"field": field, "operator": name, "value": value});
    let unary = |field: &str| json!({"field": field, "operator": name});
    let digit = rng.below(10);
    match op {
        Equals | NotEquals => match rng.below(5) {
            0 => leaf("status", json!(rng.weighted(STATUSES))),
            1 => leaf("osType", json!(rng.weighted(OS_TYPES))),
            2 => leaf("osVersion", json!(rng.pick(OS_VERSIONS))),
            3 => leaf("siteId", json!(site(rng))),
            // The same set of tags, in any order.
            _ => leaf("tags", json!(tags(rng))),
        },
        GreaterThan | GreaterThanOrEquals | LessThan | LessThanOrEquals => match rng.below(4) {
            0 => leaf("uptimeSeconds", json!(rng.below(MAX_UPTIME))),
            1 => leaf("daysSinceLastSeen", json!(1 + rng.below(20))),
            2 => leaf("daysSinceEnrolled", json!(30 + rng.below(970))),
            // An absolute instant: enrolled before or after a date.
            _ => leaf("enrolledAt", json!(instant(t0, 30 + rng.below(970) as i64))),
        },
        Contains | NotContains => match rng.below(2) {
            0 => leaf("hostname", json!(format!("{}{}", digit, rng.below(10)))),
            _ => leaf("tags", json!(rng.pick(TAGS).to_uppercase())),
        },
        StartsWith => match rng.below(2) {
            0 => leaf("osVersion", json!(format!("{}.", 1 + rng.below(5)))),
            _ => leaf("firmwareVersion", json!(format!("{}.", 1 + rng.below(5)))),
        },
        EndsWith => match rng.below(2) {
            0 => leaf("hostname", json!(digit.to_string())),
            _ => leaf("firmwareVersion", json!(format!(".{}", rng.below(2)))),
        },
        Matches => match rng.below(2) {
            0 => leaf("hostname", json!(format!("[02468]{digit}$"))),
            _ => leaf(
                "firmwareVersion",
                json!(format!("^[1-{}]\\.[0-2]\\.", 1 + rng.below(5))),
            ),
        },
        In | NotIn => match rng.below(3) {
            0 => leaf(
                "osType",
                json!([rng.weighted(OS_TYPES), rng.weighted(OS_TYPES)]),
            ),
            1 => leaf("status", json!([rng.weighted(STATUSES), "maintenance"])),
            _ => leaf(
                "siteId",
                json!((0..5).map(|_| site(rng)).collect::<Vec<_>>()),
            ),
        },
        HasAny | HasAll => leaf("tags", json!([rng.pick(TAGS), rng.pick(TAGS)])),
        IsEmpty | IsNotEmpty => match rng.below(2) {
            0 => unary("tags"),
            _ => unary("siteId"),
        },
        IsNull | IsNotNull => match rng.below(3) {
            0 => unary("siteId"),
            1 => unary("tags"),
            _ => unary("displayName"),
        },
        Before | After => match rng.below(3) {
            0 => leaf("enrolledAt", json!(instant(t0, 30 + rng.below(970) as i64))),
            1 => leaf(
                "lastSeenAt",
                json!({"amount": 1 + rng.below(14), "unit": "days"}),
            ),
            _ => leaf(
                "lastSeenAt",
                json!({"amount": 1 + rng.below(48), "unit": "hours"}),
            ),
        },
        Between => match rng.below(2) {
            0 => {
                let from = rng.below(MAX_UPTIME);
                leaf(
                    "uptimeSeconds",
                    json!({"from": from, "to": from + rng.below(MAX_UPTIME / 4)}),
                )
            }
            _ => {
                let from = 30 + rng.below(970) as i64;
                let to = from - rng.below(300) as i64;
                leaf(
                    "enrolledAt",
                    json!({"from": instant(t0, from), "to": instant(t0, to.max(30))}),
                )
            }
        },
        WithinLast | NotWithinLast => match rng.below(2) {
            0 => leaf(
                "lastSeenAt",
                json!({"amount": 1 + rng.below(24), "unit": "hours"}),
            ),
            _ => leaf(
                "lastSeenAt",
                json!({"amount": 1 + rng.below(14), "unit": "days"}),
            ),
        },
    }
}

#[cfg(test)]
mod tests;
