//! One owned partition: its devices in memory, and the computation of a batch.
//!
//! A batch (control-log entries, then input records in offset order, then due timers) is computed on
//! *copies* of the devices it touches; the partition's state takes the copies only after the batch's
//! transaction has committed. A failed or fenced transaction therefore leaves the state as committed, and a
//! retry recomputes from it: every input has its effect exactly once.
//!
//! Membership rules: a dynamic group's membership follows its filter, except that a pinned member stays when
//! it stops matching. Static groups' memberships are written by the API (`crate::store::members`), never
//! here: a `static_members` control entry is mirrored in memory — in the batch's starting copy as well as
//! the working one, so the batch's membership diff writes nothing for it — because firmware resolution uses
//! every membership. A device new to this partition (first event, registration, or re-homed from another
//! partition) is evaluated against every dynamic group of its org; afterwards only the candidate groups from
//! the field index are.
//!
//! Why this file is over 800 lines: the device model, the batch computation per input kind (event, control
//! entry, timer), the membership diff and firmware resolution still share this file; they are to split by
//! concern along those lines, a mechanical move guarded by the crash and fault suites.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::registry::Registry;
use crate::event::{self, DeadLetterReason, DecodeError, DeviceEvent};
use crate::firmware::{Reason, RolloutTarget, Target};
use crate::outbox::Message;
use crate::rules::time::format_millis;
use crate::rules::{AttrValue, Attributes, EpochMillis, FieldChange, FieldId, Scratch};
use crate::store::batch::{BatchWrite, DeviceRow, LogRow, MembershipRow};
use crate::store::control::{ControlEntry, Positioned};
use crate::store::partition::{Claim, StoredDevice, StoredMembership};

/// One input message, owned (so no librdkafka message outlives its consumer).
#[derive(Clone, Debug)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The message's Kafka timestamp (produce time), for latency metrics.
    pub timestamp: Option<EpochMillis>,
}

/// Who added a membership.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AddedBy {
    Manual,
    DynamicRule,
    Policy,
}

impl AddedBy {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AddedBy::Manual => "manual",
            AddedBy::DynamicRule => "dynamic_rule",
            AddedBy::Policy => "policy",
        }
    }

    fn parse(s: &str) -> AddedBy {
        match s {
            "manual" => AddedBy::Manual,
            "policy" => AddedBy::Policy,
            _ => AddedBy::DynamicRule,
        }
    }
}

/// One membership of a device.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub slot: u32,
    pub pinned: bool,
    pub added_by: AddedBy,
}

/// `Device::wake_at` of a device none of whose conditions can change truth with time alone.
const NEVER: EpochMillis = EpochMillis::MAX;

/// A device as its owning worker holds it.
#[derive(Clone, Debug)]
pub struct Device {
    /// The org, interned in the registry.
    pub org: Arc<str>,
    pub attrs: Attributes,
    /// The highest sequence applied; -1 for a device not yet stored, or only registered (so that its first
    /// real event, whatever its sequence, applies).
    pub sequence: i64,
    /// The stored version this state corresponds to (guards the next write).
    pub version: i64,
    /// Whether a row exists in PostgreSQL.
    pub stored: bool,
    /// Sorted by slot.
    pub memberships: Vec<Member>,
    pub development: bool,
    pub firmware_lock: Option<Box<str>>,
    /// When a time-based condition of one of its org's groups can next change truth, so that the device
    /// must be re-evaluated ([`crate::worker::registry::Org::next_wakeup`]); [`NEVER`] when none can (an
    /// instant, not an `Option`: the device then fits a smaller allocation). Read with
    /// [`Device::next_flip`].
    wake_at: EpochMillis,
    /// The resolved firmware target as stored.
    pub target: Target,
    /// Rollout-target events emitted for this device so far (numbers them; makes their ids deterministic).
    pub target_sequence: i64,
}

impl Device {
    fn new(org: Arc<str>) -> Self {
        Self {
            org,
            attrs: Attributes::new(),
            sequence: -1,
            version: 0,
            stored: false,
            memberships: Vec::new(),
            development: false,
            firmware_lock: None,
            wake_at: NEVER,
            target: Target::none(),
            target_sequence: 0,
        }
    }

    fn member(&self, slot: u32) -> Option<&Member> {
        self.memberships
            .binary_search_by_key(&slot, |m| m.slot)
            .ok()
            .map(|i| &self.memberships[i])
    }

    fn set_member(&mut self, member: Member) {
        match self
            .memberships
            .binary_search_by_key(&member.slot, |m| m.slot)
        {
            Ok(i) => self.memberships[i] = member,
            Err(i) => self.memberships.insert(i, member),
        }
    }

    fn remove_member(&mut self, slot: u32) {
        if let Ok(i) = self.memberships.binary_search_by_key(&slot, |m| m.slot) {
            self.memberships.remove(i);
        }
    }

    /// Builds a device from its stored row, parsing attributes leniently: an attribute that no longer parses
    /// (the catalogue changed) is skipped with a warning and stays in the stored JSON until the device changes.
    pub fn from_stored(
        row: &StoredDevice,
        memberships: &[&StoredMembership],
        registry: &mut Registry,
    ) -> Option<Self> {
        let org = registry.org(&row.org_id).map(|(name, _)| name.clone())?;
        let mut attrs = Attributes::new();
        if let Value::Object(map) = &row.attributes {
            for (name, value) in map {
                match crate::rules::attrs::parse_attribute(registry.catalogue(), name, value) {
                    Ok((field, Some(v))) => {
                        attrs.set(field, v);
                    }
                    Ok((_, None)) => {}
                    Err(message) => {
                        tracing::warn!(device_id = %row.id, field = %name, %message, "stored attribute skipped");
                    }
                }
            }
        }
        attrs.shrink_to_fit();
        let mut members: Vec<Member> = memberships
            .iter()
            .map(|m| Member {
                slot: registry.slot_or_tombstone(m.group_id, &org),
                pinned: m.is_pinned,
                added_by: AddedBy::parse(&m.added_by),
            })
            .collect();
        members.sort_by_key(|m| m.slot);
        Some(Self {
            org,
            attrs,
            sequence: row.sequence,
            version: row.version,
            stored: true,
            memberships: members,
            development: row.is_development,
            firmware_lock: row.firmware_lock.as_deref().map(Into::into),
            wake_at: NEVER,
            target: Target {
                version: row.target_version.as_deref().map(|v| registry.intern(v)),
                reason: Reason::parse(&row.target_reason).unwrap_or(Reason::None),
                group: row.target_group,
            },
            target_sequence: row.target_sequence,
        })
    }
}

impl Device {
    /// When the device must next be re-evaluated with no event (see [`Partition::schedule`]).
    pub fn next_flip(&self) -> Option<EpochMillis> {
        (self.wake_at != NEVER).then_some(self.wake_at)
    }

    /// Adds a stored membership while a partition is loaded row by row; [`Device::loaded`] then sorts them.
    pub fn push_stored_membership(&mut self, m: &StoredMembership, registry: &mut Registry) {
        self.memberships.push(Member {
            slot: registry.slot_or_tombstone(m.group_id, &self.org),
            pinned: m.is_pinned,
            added_by: AddedBy::parse(&m.added_by),
        });
    }

    /// Finishes loading: sorts the memberships by slot and releases spare capacity.
    pub fn loaded(&mut self) {
        self.memberships.sort_by_key(|m| m.slot);
        self.memberships.shrink_to_fit();
    }
}

/// An owned partition.
#[derive(Debug)]
pub struct Partition {
    pub id: i32,
    /// The epoch, and the positions after the last batch computed (committed, or in flight: see
    /// [`crate::worker`]; the positions Kafka is told are those committed).
    pub claim: Claim,
    /// Boxed: a map's spare buckets then cost a pointer each, not a whole device (a table of half a million
    /// inline devices is often half empty after doubling).
    pub devices: HashMap<Box<str>, Box<Device>>,
    /// (instant, device): when to re-evaluate a device's time-dependent groups. Entries whose instant no
    /// longer equals the device's `next_flip` are stale and skipped.
    pub timers: BinaryHeap<Reverse<(EpochMillis, Box<str>)>>,
    /// Control-log entries this partition still has to apply, in order.
    pub pending_control: VecDeque<Positioned>,
}

impl Partition {
    /// A partition with its claim and no devices yet.
    pub fn new(id: i32, claim: Claim) -> Self {
        Self {
            id,
            claim,
            devices: HashMap::new(),
            timers: BinaryHeap::new(),
            pending_control: VecDeque::new(),
        }
    }

    /// Computes a device's next wake-up (the next instant at which a time-based condition of its org's
    /// groups can change truth) and schedules it. An unchanged instant is left to the timer already there.
    pub fn schedule(&mut self, id: &str, registry: &Registry, now: EpochMillis) {
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let previous = device.next_flip();
        let next = registry
            .org(&device.org)
            .and_then(|(_, org)| org.next_wakeup(&device.attrs, now));
        device.wake_at = next.unwrap_or(NEVER);
        // A pending instant (after `now`) always has its timer in the heap: only due ones are taken out.
        match next {
            Some(at) if previous != Some(at) => self.timers.push(Reverse((at, id.into()))),
            _ => {}
        }
    }

    /// Removes and returns the devices whose timers are due at `now`, each once, skipping stale entries.
    pub fn due_timers(&mut self, now: EpochMillis, limit: usize) -> Vec<Box<str>> {
        let mut due = Vec::new();
        let mut seen = HashSet::new();
        while due.len() < limit {
            match self.timers.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((at, id))) = self.timers.pop() else {
                break;
            };
            if self.devices.get(&id).is_some_and(|d| d.wake_at == at) && seen.insert(id.clone()) {
                due.push(id);
            }
        }
        due
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<EpochMillis> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }
}

/// Counters describing what a batch did (recorded as metrics once it commits).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub applied: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub dead_letters: Vec<DeadLetterReason>,
    pub rehomed: u64,
    pub groups_evaluated: u64,
    /// Events whose changed fields no dynamic group references.
    pub no_candidates: u64,
    /// Membership changes by log reason.
    pub changes: HashMap<&'static str, u64>,
    pub control_entries: u64,
    pub timer_evaluations: u64,
    /// Rollout-target events emitted (written to the outbox).
    pub rollouts: u64,
    /// Whether the batch was its partition's while caught up, and written with `backend_flush_after`
    /// (set by the pipeline, which knows).
    pub caught_up: bool,
}

/// Devices read from PostgreSQL for this batch (not held by the partition), by id.
pub type Loaded = HashMap<String, (StoredDevice, Vec<StoredMembership>)>;

/// What a computed batch will write, and the state the partition takes (at once: see [`crate::worker`]).
#[derive(Debug)]
pub struct Computed {
    pub write: BatchWrite,
    /// Final state of every device the batch touched, as it is once the batch commits (versions included).
    pub devices: HashMap<Box<str>, Box<Device>>,
    pub stats: Stats,
    /// Whether time-dependent definitions changed, so every device's flips must be recomputed.
    pub reschedule_all: bool,
}

/// Settings a batch needs.
pub struct BatchContext<'a> {
    pub input_topic: &'a str,
    pub dead_letter_topic: &'a str,
    pub max_event_bytes: usize,
    pub now: EpochMillis,
    /// Where rollout-target events go.
    pub output_topic: &'a str,
}

/// Where a device of the batch started from: what its memberships are diffed against, and whether its row
/// changed.
enum Origin {
    /// The partition's copy (`Partition::devices`), unchanged while the batch is computed.
    Held,
    /// A copy: a device read from the database for this batch, or a held one whose starting state the
    /// batch mirrors an API write into.
    Copy(Box<Device>),
    /// A device not stored anywhere yet.
    New,
}

struct Work<'a> {
    registry: &'a Registry,
    partition: &'a Partition,
    ctx: &'a BatchContext<'a>,
    /// (state at batch start, or None for a device not stored; current state).
    devices: HashMap<Box<str>, (Origin, Device)>,
    log: Vec<LogRow>,
    outbox: Vec<Message>,
    stats: Stats,
    scratch: Scratch,
    candidates: Vec<u32>,
    /// Reused by [`Work::reconcile_slots`]: (slot, action, reason) of each membership change.
    changes: Vec<(u32, &'static str, &'static str)>,
    /// The last cause that touched each device in this batch (carried by its rollout-target event).
    causes: HashMap<Box<str>, Cause>,
    /// Devices whose firmware must be re-resolved although the batch may not otherwise touch them (release
    /// changes), with the cause.
    resolve: Vec<(Box<str>, Cause)>,
    /// See [`Work::timer_cause`].
    timer_cause: Option<Cause>,
}

/// What caused a change (a log row's `cause`, a rollout-target event's): rendered to JSON once per event
/// or control entry and shared by every row it causes, so no row builds or serializes a document of its
/// own.
type Cause = Arc<RawValue>;

/// The causes' documents, as stored: `{"type": "event", "eventId", "partition", "offset"}`,
/// `{"type": "control", "controlId", "kind"}` or `{"type": "timer", "at"}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum CauseDoc<'a> {
    Event {
        #[serde(rename = "eventId")]
        event_id: &'a str,
        partition: i32,
        offset: i64,
    },
    Control {
        #[serde(rename = "controlId")]
        control_id: i64,
        kind: &'a str,
    },
    Timer {
        at: &'a str,
    },
}

impl CauseDoc<'_> {
    fn render(&self) -> Cause {
        // Strings and integers only: serializing cannot fail.
        let raw = serde_json::value::to_raw_value(self).expect("a cause document serializes");
        Arc::from(raw)
    }
}

/// The cause of changes a control-log entry made.
fn control_cause(entry: &Positioned) -> Cause {
    CauseDoc::Control {
        control_id: entry.id,
        kind: entry.entry.kind(),
    }
    .render()
}

/// Computes a batch. `loaded` holds the stored rows of devices named by `records` that the partition does
/// not hold (already converted with [`Device::from_stored`] by the caller into `foreign`).
pub fn compute(
    registry: &Registry,
    partition: &Partition,
    control: &[Positioned],
    records: &[(Record, Result<DeviceEvent, DecodeError>)],
    due: &[Box<str>],
    foreign: HashMap<Box<str>, Device>,
    ctx: &BatchContext<'_>,
) -> Computed {
    let mut work = Work {
        registry,
        partition,
        ctx,
        devices: HashMap::new(),
        log: Vec::new(),
        outbox: Vec::new(),
        stats: Stats::default(),
        scratch: Scratch::default(),
        candidates: Vec::new(),
        changes: Vec::new(),
        causes: HashMap::new(),
        resolve: Vec::new(),
        timer_cause: None,
    };
    let mut reschedule_all = false;
    let mut foreign = foreign;
    for entry in control {
        if let ControlEntry::Reevaluate { device_ids, .. } = &entry.entry {
            work.reevaluate(entry, device_ids, &mut foreign);
            continue;
        }
        reschedule_all |= work.control(entry);
    }
    for (record, decoded) in records {
        work.record(record, decoded, &mut foreign);
    }
    for id in due {
        work.timer(id);
    }
    work.resolve_firmware();
    let mut write = BatchWrite {
        topic: ctx.input_topic.to_string(),
        partition: partition.id,
        epoch: partition.claim.epoch,
        // next_offset is exclusive: one past the last offset processed.
        next_offset: records
            .last()
            .map_or(partition.claim.next_offset, |(r, _)| r.offset + 1),
        control_position: control
            .last()
            .map_or(partition.claim.control_position, |e| e.id),
        ..Default::default()
    };
    let log = std::mem::take(&mut work.log);
    write.outbox = std::mem::take(&mut work.outbox);
    let logged: HashSet<&str> = log.iter().map(|r| r.device_id.as_str()).collect();
    let mut devices = HashMap::with_capacity(work.devices.len());
    for (id, (origin, mut current)) in work.devices {
        let original = match &origin {
            Origin::Held => partition.devices.get(&id).map(|d| &**d),
            Origin::Copy(d) => Some(&**d),
            Origin::New => None,
        };
        // A held device the batch leaves as stored (a replayed or mirrored control entry that changed no
        // stored column) is not written. Anything else is, also to take the version guard: no two owners
        // ever write a device's memberships or log.
        let untouched = original.is_some_and(|o| stored_equal(o, &current))
            && partition.devices.contains_key(&id)
            && !logged.contains(&*id);
        if untouched {
            devices.insert(id, Box::new(current));
            continue;
        }
        diff_memberships(registry, &id, original, &current, &mut write);
        let row = DeviceRow {
            id: id.to_string(),
            org_id: current.org.clone(),
            attributes: {
                let mut json = Vec::with_capacity(512);
                current.attrs.write_json(registry.catalogue(), &mut json);
                // Valid UTF-8: JSON text written from strings.
                String::from_utf8(json).unwrap_or_default()
            },
            // -1 for a device that only was registered: its first real event, whatever its sequence, applies.
            sequence: current.sequence,
            expected_version: current.version,
            is_development: current.development,
            firmware_lock: current.firmware_lock.as_deref().map(str::to_string),
            target_version: current.target.version.clone(),
            target_reason: current.target.reason.as_str(),
            target_group: current.target.group,
            target_sequence: current.target_sequence,
        };
        if current.stored {
            write.device_updates.push(row);
        } else {
            write.device_inserts.push(row);
        }
        // What the row will be once the batch commits.
        current.version = if current.stored {
            current.version + 1
        } else {
            1
        };
        current.stored = true;
        devices.insert(id, Box::new(current));
    }
    drop(logged);
    write.log = log;
    Computed {
        write,
        devices,
        stats: work.stats,
        reschedule_all,
    }
}

/// Whether two states of a device store the same row and memberships (the in-memory extras — timers,
/// the version itself — aside).
fn stored_equal(a: &Device, b: &Device) -> bool {
    a.attrs == b.attrs
        && a.sequence == b.sequence
        && a.development == b.development
        && a.firmware_lock == b.firmware_lock
        && a.memberships == b.memberships
        && a.target == b.target
        && a.target_sequence == b.target_sequence
        && a.org == b.org
}

/// The membership rows to write: the net difference between the batch's start and end states.
fn diff_memberships(
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

impl Work<'_> {
    /// The working copy of a device held by the partition (cloned on first touch).
    fn held(&mut self, id: &str) -> Option<&mut Device> {
        if !self.devices.contains_key(id) {
            let device: &Device = self.partition.devices.get(id)?;
            self.devices
                .insert(id.into(), (Origin::Held, device.clone()));
        }
        self.devices.get_mut(id).map(|(_, current)| current)
    }

    /// Applies one control-log entry to this partition's devices. Returns whether time-dependent
    /// definitions changed.
    fn control(&mut self, entry: &Positioned) -> bool {
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
    fn reevaluate(
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

    /// Ids of the org's devices, held by the partition or already in the batch.
    fn org_devices(&self, org: &str) -> Vec<Box<str>> {
        let mut ids: Vec<Box<str>> = self
            .partition
            .devices
            .iter()
            .filter(|(_, d)| &*d.org == org)
            .map(|(id, _)| id.clone())
            .collect();
        ids.extend(
            self.devices
                .iter()
                .filter(|(id, (_, d))| {
                    &*d.org == org && !self.partition.devices.contains_key(&**id)
                })
                .map(|(id, _)| id.clone()),
        );
        ids
    }

    fn current(&self, id: &str) -> Option<&Device> {
        self.devices
            .get(id)
            .map(|(_, d)| d)
            .or_else(|| self.partition.devices.get(id).map(|d| &**d))
    }

    /// Re-evaluates `slots` for one held device: the device is looked up once and every group evaluated
    /// against the same attributes (one group's result never depends on another's membership), then the
    /// changes are applied — the device copied only if there are any — and logged in slot order.
    fn reconcile_slots(&mut self, id: &str, slots: &[u32], cause: &Cause) {
        self.stats.groups_evaluated += slots.len() as u64;
        let mut changes = std::mem::take(&mut self.changes);
        changes.clear();
        let Some(device) = self.current(id) else {
            self.changes = changes;
            return;
        };
        for &slot in slots {
            let should = self.registry.matches(slot, &device.attrs, self.ctx.now);
            if let Some((action, reason)) = membership_change(device.member(slot), should) {
                changes.push((slot, action, reason));
            }
        }
        if !changes.is_empty() {
            if let Some(device) = self.held(id) {
                for &(slot, action, _) in &changes {
                    apply_change(device, slot, action);
                }
            }
            for &(slot, action, reason) in &changes {
                let version = self.registry.group(slot).version;
                self.push_log(slot, version, id, action, reason, cause);
            }
        }
        self.changes = changes;
    }

    /// Re-resolves the firmware target of every device the batch touched or a release change affects; a
    /// changed target is stored, and a changed *version* is a rollout-target event in the outbox.
    fn resolve_firmware(&mut self) {
        let registry = self.registry;
        let mut ids: Vec<(Box<str>, Option<Cause>)> =
            self.devices.keys().map(|id| (id.clone(), None)).collect();
        // Each device once: the batch's devices are distinct keys; a release change's devices are added
        // unless the batch already holds them or one of them came earlier.
        let mut seen = HashSet::new();
        for (id, cause) in std::mem::take(&mut self.resolve) {
            if !self.devices.contains_key(&id) && seen.insert(id.clone()) {
                ids.push((id, Some(cause)));
            }
        }
        for (id, cause) in ids {
            let Some(device) = self.current(&id) else {
                continue;
            };
            let target = registry.resolve(
                &device.org,
                device.development,
                device.firmware_lock.as_deref(),
                device.memberships.iter().map(|m| m.slot),
            );
            if target == device.target {
                continue;
            }
            let previous = device.target.clone();
            let cause = self
                .causes
                .get(&id)
                .cloned()
                .or(cause)
                // Every path that touches a device records its cause; should one not, the instant of
                // re-resolution is the truthful cause.
                .unwrap_or_else(|| self.timer_cause());
            let now = self.ctx.now;
            let Some(device) = self.held(&id) else {
                continue;
            };
            let rollout = previous.is_rollout_change(&target);
            device.target = target.clone();
            if !rollout {
                continue;
            }
            device.target_sequence += 1;
            let sequence = device.target_sequence;
            let org = device.org.clone();
            let event = RolloutTarget {
                org_id: &org,
                device_id: &id,
                sequence,
                previous: &previous,
                target: &target,
                cause: &cause,
                at: now,
            };
            self.stats.rollouts += 1;
            self.outbox.push(event.message(self.ctx.output_topic));
        }
    }

    fn push_log(
        &mut self,
        slot: u32,
        version: i64,
        id: &str,
        action: &'static str,
        reason: &'static str,
        cause: &Cause,
    ) {
        *self.stats.changes.entry(reason).or_default() += 1;
        self.record_cause(id, cause);
        self.log.push(LogRow {
            group_id: self.registry.group(slot).id,
            device_id: id.to_string(),
            action,
            reason,
            cause: cause.clone(),
            group_version: version,
        });
    }

    /// The cause of changes an event made: its id and position.
    fn event_cause(&self, record: &Record, event: &DeviceEvent) -> Cause {
        CauseDoc::Event {
            event_id: &event.event_id,
            partition: self.partition.id,
            offset: record.offset,
        }
        .render()
    }

    /// The cause of changes made by the clock alone: the batch's instant (one document per batch).
    fn timer_cause(&mut self) -> Cause {
        let now = self.ctx.now;
        self.timer_cause
            .get_or_insert_with(|| {
                CauseDoc::Timer {
                    at: &format_millis(now),
                }
                .render()
            })
            .clone()
    }

    /// Records `cause` as the last to touch device `id` (its key allocated only on the first).
    fn record_cause(&mut self, id: &str, cause: &Cause) {
        match self.causes.get_mut(id) {
            Some(last) => *last = cause.clone(),
            None => {
                self.causes.insert(id.into(), cause.clone());
            }
        }
    }

    fn dead_letter(&mut self, record: &Record, error: &DecodeError) {
        self.stats.dead_letters.push(error.reason);
        self.outbox.push(event::dead_letter(
            self.ctx.dead_letter_topic,
            self.ctx.input_topic,
            self.partition.id,
            record.offset,
            record.key.as_deref(),
            record.payload.as_deref(),
            error,
            self.ctx.max_event_bytes,
        ));
    }

    fn record(
        &mut self,
        record: &Record,
        decoded: &Result<DeviceEvent, DecodeError>,
        foreign: &mut HashMap<Box<str>, Device>,
    ) {
        let event = match decoded {
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
            return self.register(record, event, org, &org_groups.dynamic, foreign);
        }
        // Find the device: in the batch, held, read from the database for this batch, or new.
        let mut evaluate_all = false;
        if !self.devices.contains_key(id) && !self.partition.devices.contains_key(id) {
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
            let (origin, device) = match foreign.remove(id) {
                Some(device) => {
                    self.stats.rehomed += 1;
                    (Origin::Copy(Box::new(device.clone())), device)
                }
                None => (Origin::New, Device::new(org.clone())),
            };
            // New here: its memberships were computed elsewhere (or never), so evaluate every group.
            evaluate_all = true;
            self.devices.insert(id.into(), (origin, device));
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
        let device = self.held(id).expect("present");
        let fresh = evaluate_all || device.sequence < 0;
        let mut olds: Vec<(FieldId, Option<AttrValue>)> =
            Vec::with_capacity(event.set.len() + event.removed.len());
        for (field, value) in &event.set {
            olds.push((*field, device.attrs.set(*field, value.clone())));
        }
        for field in &event.removed {
            olds.push((*field, device.attrs.remove(*field)));
        }
        if let Some(dev) = event.development {
            device.development = dev;
        }
        if let Some(lock) = &event.firmware_lock {
            device.firmware_lock = lock.as_deref().map(Into::into);
        }
        device.sequence = event.sequence;
        let cause = self.event_cause(record, event);
        self.record_cause(id, &cause);
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        if fresh {
            candidates.extend_from_slice(&org_groups.dynamic);
        } else {
            let device = match self.devices.get(id) {
                Some((_, d)) => d,
                None => return,
            };
            let changes: Vec<FieldChange<'_>> = olds
                .iter()
                .filter(|(field, old)| old.as_ref() != device.attrs.get(*field))
                .map(|(field, old)| FieldChange {
                    field: *field,
                    old: old.as_ref(),
                    new: device.attrs.get(*field),
                })
                .collect();
            org_groups
                .index
                .candidates(&changes, now, &mut self.scratch, &mut candidates);
            drop(changes);
            // A time flip already due whose timer this batch did not take (more were due than a batch
            // takes): evaluated here, as the device's timer is rescheduled when the batch installs.
            if device.next_flip().is_some_and(|t| t <= now) {
                candidates.extend_from_slice(&org_groups.time_groups);
                candidates.sort_unstable();
                candidates.dedup();
            }
            if candidates.is_empty() {
                self.stats.no_candidates += 1;
            }
        }
        self.reconcile_slots(id, &candidates, &cause);
        self.candidates = candidates;
    }

    /// A registration: creates the device — no attributes, sequence -1 so that its first real event applies
    /// — if it exists nowhere (not in the batch, not held, not stored on another partition), evaluating
    /// every dynamic group of its org as for any new device. An existing device is left exactly as it is (not
    /// re-homed, sequence unchanged) and the registration counted as a duplicate; one of another org is an
    /// org mismatch, as for any event.
    fn register(
        &mut self,
        record: &Record,
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
        self.devices
            .insert(id.into(), (Origin::New, Device::new(org.clone())));
        let cause = self.event_cause(record, event);
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

    fn org_mismatch(&mut self, record: &Record, event: &DeviceEvent, owner: &str) {
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

    fn timer(&mut self, id: &str) {
        let registry = self.registry;
        let Some(device) = self.current(id) else {
            return;
        };
        let Some((_, org)) = registry.org(&device.org) else {
            return;
        };
        self.stats.timer_evaluations += 1;
        let cause = self.timer_cause();
        self.reconcile_slots(id, &org.time_groups, &cause);
        // Taken into the batch even when nothing changed: a flip instant is when the result *may* change,
        // and the device's next flip must be scheduled from here either way (installing the batch does it).
        // A device the batch leaves as stored is not written.
        self.held(id);
    }
}

/// The change a group's evaluation calls for: `(action, reason)`.
fn membership_change(
    member: Option<&Member>,
    should: bool,
) -> Option<(&'static str, &'static str)> {
    match (member, should) {
        (None, true) => Some(("added", "filter_match")),
        (Some(m), false) if !m.pinned => Some(("removed", "filter_unmatch")),
        _ => None,
    }
}

fn apply_change(device: &mut Device, slot: u32, action: &str) {
    if action == "added" {
        device.set_member(Member {
            slot,
            pinned: false,
            added_by: AddedBy::DynamicRule,
        });
    } else {
        device.remove_member(slot);
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
    use super::*;
    use crate::rules::Catalogue;
    use crate::store::control::GroupDefinition;
    use serde_json::json;
    use uuid::Uuid;

    const HOUR: EpochMillis = 3_600_000;

    #[test]
    fn causes_render_to_the_stored_documents_once_with_their_text_escaped() {
        let event = CauseDoc::Event {
            event_id: "e-\"1\"",
            partition: 3,
            offset: 42,
        }
        .render();
        let parsed: Value = serde_json::from_str(event.get()).unwrap();
        assert_eq!(
            parsed,
            json!({"type": "event", "eventId": "e-\"1\"", "partition": 3, "offset": 42})
        );
        let control = CauseDoc::Control {
            control_id: 7,
            kind: "pinned",
        }
        .render();
        assert_eq!(
            serde_json::from_str::<Value>(control.get()).unwrap(),
            json!({"type": "control", "controlId": 7, "kind": "pinned"})
        );
        let timer = CauseDoc::Timer {
            at: "2026-01-01T00:00:00.000Z",
        }
        .render();
        assert_eq!(
            serde_json::from_str::<Value>(timer.get()).unwrap(),
            json!({"type": "timer", "at": "2026-01-01T00:00:00.000Z"})
        );
        // A rollout-target event embeds the same document.
        let rollout = crate::firmware::rollout_event(
            "o",
            "d",
            1,
            &Target::none(),
            &Target::none(),
            &control,
            "t",
        );
        assert_eq!(
            rollout["data"]["cause"],
            json!({"type": "control", "controlId": 7, "kind": "pinned"})
        );
    }

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
        p.devices.insert("d".into(), Box::new(device));
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
            assert_eq!(p.devices["d"].next_flip(), want, "wake-up {i}");
            if let Some(t) = want {
                assert_eq!(p.due_timers(t - 1, 10), Vec::<Box<str>>::new());
                assert_eq!(p.due_timers(t, 10), vec![Box::<str>::from("d")]);
                at = t;
            }
        }
        assert!(p.timers.is_empty());
    }

    #[test]
    fn an_unchanged_wake_up_keeps_its_timer_and_pushes_no_other() {
        let registry = registry();
        let org = registry.org("o").unwrap().0.clone();
        let mut p = Partition::new(0, claim());
        let mut device = Device::new(org);
        device.attrs = attrs(json!({"lastSeenAt": iso(NOW - HOUR / 2)}));
        p.devices.insert("d".into(), Box::new(device));
        p.schedule("d", &registry, NOW);
        // An attribute no time-based condition reads changes: same instant, one timer.
        p.devices.get_mut("d").unwrap().attrs =
            attrs(json!({"lastSeenAt": iso(NOW - HOUR / 2), "hostname": "a"}));
        p.schedule("d", &registry, NOW + 1);
        assert_eq!(p.timers.len(), 1);
        // A heartbeat moves it: the old timer is stale and skipped when it comes due.
        p.devices.get_mut("d").unwrap().attrs = attrs(json!({"lastSeenAt": iso(NOW)}));
        p.schedule("d", &registry, NOW + 2);
        assert_eq!(p.timers.len(), 2);
        assert_eq!(p.next_timer(), Some(NOW + HOUR / 2 + 1));
        assert!(p.due_timers(NOW + HOUR / 2 + 1, 10).is_empty());
        assert_eq!(
            p.due_timers(NOW + HOUR + 1, 10),
            vec![Box::<str>::from("d")]
        );
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
        p.devices.insert("d".into(), Box::new(device));
        p.schedule("d", &registry, seen);
        assert_eq!(p.devices["d"].next_flip(), Some(seen + 3_600_000 + 1));
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
        let decoded = event::decode(
            record.key.as_deref(),
            record.payload.as_deref(),
            registry.catalogue(),
            1 << 20,
        );
        let ctx = BatchContext {
            input_topic: "in",
            dead_letter_topic: "dlq",
            max_event_bytes: 1 << 20,
            now,
            output_topic: "out",
        };
        let computed = compute(
            &registry,
            &p,
            &[],
            &[(record, decoded)],
            &[],
            HashMap::new(),
            &ctx,
        );
        assert!(computed.devices["d"].memberships.is_empty());
        assert_eq!(computed.write.log.len(), 1);
        assert_eq!(
            (computed.write.log[0].action, computed.write.log[0].reason),
            ("removed", "filter_unmatch")
        );
    }
}
