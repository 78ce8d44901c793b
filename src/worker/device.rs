//! A device as its owning worker holds it: attributes, memberships, stored version, firmware target, and
//! when it must next be re-evaluated with no event (its wake-up, which the partition's timers schedule).

use std::sync::Arc;

use serde_json::Value;

use super::registry::Registry;
use crate::firmware::progress::{self, Standing};
use crate::firmware::{Reason, Target};
use crate::rules::{Attributes, EpochMillis};
use crate::store::partition::{StoredDevice, StoredMembership};

/// Who added a membership.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum AddedBy {
    Manual,
    DynamicRule,
    Policy,
}

impl AddedBy {
    /// The stored spelling.
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct Member {
    pub(crate) slot: u32,
    pub(crate) pinned: bool,
    pub(crate) added_by: AddedBy,
}

impl Member {
    /// A membership the API wrote: manual, not pinned.
    pub(crate) fn manual(slot: u32) -> Self {
        Member {
            slot,
            pinned: false,
            added_by: AddedBy::Manual,
        }
    }
}

/// `Device::wake_at` of a device none of whose conditions can change truth with time alone.
const NEVER: EpochMillis = EpochMillis::MAX;

/// A device as its owning worker holds it.
#[derive(Clone, Debug)]
#[cfg_attr(test, derive(PartialEq))]
pub(crate) struct Device {
    /// The org, interned in the registry.
    pub(crate) org: Arc<str>,
    pub(crate) attrs: Attributes,
    /// The highest sequence applied; -1 for a device not yet stored, or only registered (so that its first
    /// real event, whatever its sequence, applies).
    pub(crate) sequence: i64,
    /// The stored version this state corresponds to (guards the next write).
    pub(crate) version: i64,
    /// Whether a row exists in PostgreSQL.
    pub(crate) stored: bool,
    /// Sorted by slot.
    pub(crate) memberships: Vec<Member>,
    pub(crate) development: bool,
    pub(crate) firmware_lock: Option<Box<str>>,
    /// When a time-based condition of one of its org's groups can next change truth, so that the device
    /// must be re-evaluated ([`crate::worker::registry::Org::next_wakeup`]); [`NEVER`] when none can (an
    /// instant, not an `Option`: the device then fits a smaller allocation). Read with
    /// [`Device::next_flip`].
    wake_at: EpochMillis,
    /// The resolved firmware target as stored.
    pub(crate) target: Target,
    /// Where it stands in the release its target names (`None` when none does): see
    /// [`crate::firmware::progress`].
    pub(crate) standing: Option<Standing>,
    /// Whether it has reported running its target since that release came to target it.
    pub(crate) reached: bool,
    /// Rollout-target events emitted for this device so far (numbers them; makes their ids deterministic).
    pub(crate) target_sequence: i64,
}

impl Device {
    pub(crate) fn new(org: Arc<str>) -> Self {
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
            standing: None,
            reached: false,
            target_sequence: 0,
        }
    }

    /// The release its target names and where it stands in it.
    pub(crate) fn progress(&self) -> Option<(uuid::Uuid, Standing)> {
        self.target.release.zip(self.standing)
    }

    /// Works out where it stands in the release its target names, from what it reports now: the version
    /// it runs (field `running`, its `firmwareVersion`) and the release's failure signal, if any.
    pub(crate) fn stand(&mut self, registry: &Registry, running: Option<crate::rules::FieldId>) {
        let (Some(release), Some(version)) = (self.target.release, self.target.version.as_deref())
        else {
            self.standing = None;
            self.reached = false;
            return;
        };
        let runs = running.and_then(|f| match self.attrs.get(f) {
            Some(crate::rules::AttrValue::Str(s)) => Some(s.as_str()),
            _ => None,
        });
        let failed = registry
            .failure_signal(release)
            .is_some_and(|(field, value)| self.attrs.get(*field) == Some(value));
        let (standing, reached) = progress::standing(version, runs, failed, self.reached);
        self.standing = Some(standing);
        self.reached = reached;
    }

    pub(crate) fn member(&self, slot: u32) -> Option<&Member> {
        self.memberships
            .binary_search_by_key(&slot, |m| m.slot)
            .ok()
            .map(|i| &self.memberships[i])
    }

    pub(crate) fn set_member(&mut self, member: Member) {
        set_member(&mut self.memberships, member);
    }

    pub(crate) fn remove_member(&mut self, slot: u32) {
        remove_member(&mut self.memberships, slot);
    }

    /// Builds a device from its stored row, parsing attributes leniently: an attribute that no longer parses
    /// (the catalogue changed) is skipped with a warning and stays in the stored JSON until the device changes.
    pub(crate) fn from_stored(
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
                release: row.target_release,
            },
            standing: row.target_standing.as_deref().and_then(Standing::parse),
            reached: row.target_reached,
            target_sequence: row.target_sequence,
        })
    }
}

/// Sets a membership in a list sorted by slot.
pub(crate) fn set_member(memberships: &mut Vec<Member>, member: Member) {
    match memberships.binary_search_by_key(&member.slot, |m| m.slot) {
        Ok(i) => memberships[i] = member,
        Err(i) => {
            // Exactly one more, as for attributes: no slack kept for the device's lifetime.
            memberships.reserve_exact(1);
            memberships.insert(i, member);
        }
    }
}

/// Removes a membership from a list sorted by slot.
pub(crate) fn remove_member(memberships: &mut Vec<Member>, slot: u32) {
    if let Ok(i) = memberships.binary_search_by_key(&slot, |m| m.slot) {
        memberships.remove(i);
    }
}

/// A device's state of fixed size — all but its org, attributes and memberships — as a batch saves it to
/// put the device back ([`crate::worker::compute::touched`]).
#[derive(Clone, Debug)]
pub(crate) struct Scalars {
    sequence: i64,
    version: i64,
    stored: bool,
    development: bool,
    firmware_lock: Option<Box<str>>,
    wake_at: EpochMillis,
    target: Target,
    standing: Option<Standing>,
    reached: bool,
    target_sequence: i64,
}

impl Scalars {
    /// Whether `device` stores the same row as these, attributes aside.
    pub(crate) fn row_equal(&self, device: &Device) -> bool {
        self.sequence == device.sequence
            && self.development == device.development
            && self.target_sequence == device.target_sequence
            && self.firmware_lock == device.firmware_lock
            && self.target == device.target
            && self.standing == device.standing
            && self.reached == device.reached
    }

    /// The release its target named and where it stood in it.
    pub(crate) fn progress(&self) -> Option<(uuid::Uuid, Standing)> {
        self.target.release.zip(self.standing)
    }
}

impl Device {
    /// The scalars to put back with [`Device::restore`].
    pub(crate) fn scalars(&self) -> Scalars {
        Scalars {
            sequence: self.sequence,
            version: self.version,
            stored: self.stored,
            development: self.development,
            firmware_lock: self.firmware_lock.clone(),
            wake_at: self.wake_at,
            target: self.target.clone(),
            standing: self.standing,
            reached: self.reached,
            target_sequence: self.target_sequence,
        }
    }

    /// Puts back scalars saved by [`Device::scalars`].
    pub(crate) fn restore(&mut self, scalars: Scalars) {
        let Scalars {
            sequence,
            version,
            stored,
            development,
            firmware_lock,
            wake_at,
            target,
            standing,
            reached,
            target_sequence,
        } = scalars;
        self.sequence = sequence;
        self.version = version;
        self.stored = stored;
        self.development = development;
        self.firmware_lock = firmware_lock;
        self.wake_at = wake_at;
        self.target = target;
        self.standing = standing;
        self.reached = reached;
        self.target_sequence = target_sequence;
    }
}

impl Device {
    /// When the device must next be re-evaluated with no event (see
    /// [`Partition::schedule`](super::partition::Partition::schedule)).
    pub(crate) fn next_flip(&self) -> Option<EpochMillis> {
        (self.wake_at != NEVER).then_some(self.wake_at)
    }

    /// Computes the device's next wake-up (the next instant after `now` at which a time-based condition of
    /// its org's groups can change truth) and keeps it. Returns the instant when it needs a timer of its
    /// own: when there was none before, when it is earlier than the one before, or when the one before was
    /// due by `now` (its timer taken). A later instant needs none: the earlier timer, still pending, finds
    /// the device not yet due and schedules it again for its wake-up then
    /// ([`crate::worker::partition::Partition::due_timers`]). So a device whose heartbeats keep moving its
    /// wake-up later holds one timer, not one per heartbeat.
    pub(crate) fn reschedule(
        &mut self,
        registry: &Registry,
        now: EpochMillis,
    ) -> Option<EpochMillis> {
        let previous = self.next_flip();
        let next = registry
            .org(&self.org)
            .and_then(|(_, org)| org.next_wakeup(&self.attrs, now));
        self.wake_at = next.unwrap_or(NEVER);
        next.filter(|at| previous.is_none_or(|previous| *at < previous || previous <= now))
    }

    /// Adds a stored membership while a partition is loaded row by row; [`Device::loaded`] then sorts them.
    pub(crate) fn push_stored_membership(&mut self, m: &StoredMembership, registry: &mut Registry) {
        self.memberships.push(Member {
            slot: registry.slot_or_tombstone(m.group_id, &self.org),
            pinned: m.is_pinned,
            added_by: AddedBy::parse(&m.added_by),
        });
    }

    /// Finishes loading: sorts the memberships by slot and releases spare capacity.
    pub(crate) fn loaded(&mut self) {
        self.memberships.sort_by_key(|m| m.slot);
        self.memberships.shrink_to_fit();
    }
}
