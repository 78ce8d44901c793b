//! The input contract's types: the limits and keys of an event, its decoded and wire forms, and why a
//! message is dead-lettered.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use super::detail::bound_detail;
use crate::rules::attrs::{value_to_json, AttrValue};
use crate::rules::catalogue::{Catalogue, FieldId};
use crate::rules::time::{format_millis, EpochMillis};

/// Longest `eventId`, in characters (Unicode scalar values, as JSON Schema and PostgreSQL count).
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// Longest `orgId`, in characters; matches `orgs.id`.
pub const MAX_ORG_ID_CHARS: usize = 128;
/// Longest `deviceId`, in characters; matches `devices.id`.
pub const MAX_DEVICE_ID_CHARS: usize = 256;
/// Longest `firmwareLock` version, in characters.
pub const MAX_FIRMWARE_LOCK_CHARS: usize = 128;
/// Most entries in `removed` (the same bound as `attributes`,
/// [`MAX_ATTRIBUTES`](crate::rules::attrs::MAX_ATTRIBUTES)).
pub const MAX_REMOVED: usize = 512;

/// Every top-level key the event may carry; any other is refused. The schema's `properties` must list
/// exactly these (the `event_contract` suite checks it).
pub const EVENT_KEYS: [&str; 10] = [
    "eventId",
    "orgId",
    "deviceId",
    "sequence",
    "attributes",
    "removed",
    "development",
    "firmwareLock",
    "occurredAt",
    "register",
];
/// The keys a registration (`"register": true`) must not carry: it only creates a device that does not
/// exist, so a change sent with it could silently not happen.
pub const NOT_WITH_REGISTER: [&str; 4] = ["attributes", "removed", "development", "firmwareLock"];
/// The keys an event must carry.
pub const REQUIRED_KEYS: [&str; 4] = ["eventId", "orgId", "deviceId", "sequence"];

/// A decoded `device-attribute-changes` event, in canonical form: `set` sorted by field, `removed`
/// sorted and without duplicates, so two encodings of the same change decode equal.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceEvent {
    /// The producer's id for this event; recorded as the cause of the changes it makes.
    pub event_id: String,
    /// The tenant; the worker dead-letters events of unknown orgs, or of a device owned by another org.
    pub org_id: String,
    /// The device, also the Kafka key, so all its events share a partition and arrive in order.
    pub device_id: String,
    /// Per-device ordering: the worker applies an event only if this is above the device's last applied
    /// sequence, so replays and reordered duplicates are ignored.
    pub sequence: i64,
    /// Attributes to set, sorted by field.
    pub set: Vec<(FieldId, AttrValue)>,
    /// Attributes to remove, sorted and de-duplicated: the `removed` list plus attributes given as `null`.
    /// Never shares a field with `set`.
    pub removed: Vec<FieldId>,
    /// The device's development flag; `None` leaves it unchanged.
    pub development: Option<bool>,
    /// The firmware lock: `None` leaves it unchanged, `Some(None)` clears it, `Some(Some(v))` locks the
    /// device to version `v`.
    pub firmware_lock: Option<Option<String>>,
    /// When the change happened at the source, in UTC milliseconds; informational only (ordering uses
    /// `sequence`).
    pub occurred_at: Option<EpochMillis>,
    /// A registration: create the device (no attributes) if it exists nowhere, else do nothing. `set`,
    /// `removed`, `development` and `firmware_lock` are then empty.
    pub register: bool,
}

impl DeviceEvent {
    /// Every attribute the event sets or removes: what the field index needs to pick the groups to
    /// re-evaluate.
    pub fn changed_fields(&self) -> impl Iterator<Item = FieldId> + '_ {
        self.set
            .iter()
            .map(|(field, _)| *field)
            .chain(self.removed.iter().copied())
    }

    /// The event in its wire form, for re-publishing and round-trip tests: removals are listed in
    /// `removed` (never as `null` attributes) and datetimes are rendered as RFC 3339 UTC.
    pub fn to_json(&self, catalogue: &Catalogue) -> DeviceEventJson {
        DeviceEventJson {
            event_id: self.event_id.clone(),
            org_id: self.org_id.clone(),
            device_id: self.device_id.clone(),
            sequence: self.sequence,
            attributes: self
                .set
                .iter()
                .map(|(field, value)| {
                    (
                        catalogue.name(*field).into_string(),
                        value_to_json(catalogue, *field, value),
                    )
                })
                .collect(),
            removed: self
                .removed
                .iter()
                .map(|field| catalogue.name(*field).into_string())
                .collect(),
            development: self.development,
            firmware_lock: self.firmware_lock.clone(),
            occurred_at: self.occurred_at.map(format_millis),
            register: self.register,
        }
    }
}

/// The wire form of an event, for producers, tests and the demo to build events with; [`encode`] turns
/// it into a message value. It does not check anything: an event built with bad ids or attributes encodes
/// fine and is refused by [`decode`](fn@super::decode).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEventJson {
    /// `eventId`: 1–128 characters, no control characters.
    pub event_id: String,
    /// `orgId`: 1–128 characters, no control characters.
    pub org_id: String,
    /// `deviceId`: 1–256 characters, no control characters; use it as the Kafka key too.
    pub device_id: String,
    /// `sequence`: 0 or more, increasing per device (a millisecond timestamp will do).
    pub sequence: i64,
    /// `attributes`: catalogue field name → value; `null` removes the attribute. Omitted when empty.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// `removed`: field names to remove. Omitted when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// `development`; omitted when `None` (unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub development: Option<bool>,
    /// `firmwareLock`: omitted when `None` (unchanged), `null` when `Some(None)` (clear the lock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware_lock: Option<Option<String>>,
    /// `occurredAt`: an RFC 3339 datetime; omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<String>,
    /// `register`: `true` for a registration (then leave the attributes, removals, development flag and
    /// lock empty); omitted when `false`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub register: bool,
}

impl DeviceEventJson {
    /// An event with no changes yet (set the fields to add them). Sent as is, it touches the device: it
    /// creates it if needed, or re-homes it, and advances its sequence; see [`registration_event`] for an
    /// import that never does more than create.
    pub fn new(
        event_id: impl Into<String>,
        org_id: impl Into<String>,
        device_id: impl Into<String>,
        sequence: i64,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            org_id: org_id.into(),
            device_id: device_id.into(),
            sequence,
            ..Self::default()
        }
    }
}

/// A registration (device import) of `device_id` in `org_id`, as a message value to produce with the key
/// `device_id`: a fresh UUID as its event id and sequence 0 (a registration's sequence is not recorded).
pub fn registration_event(org_id: &str, device_id: &str) -> Vec<u8> {
    let mut event = DeviceEventJson::new(uuid::Uuid::new_v4().to_string(), org_id, device_id, 0);
    event.register = true;
    encode(&event)
}

/// Encodes an event as a message value (compact JSON).
pub fn encode(event: &DeviceEventJson) -> Vec<u8> {
    match serde_json::to_vec(event) {
        Ok(bytes) => bytes,
        // Strings, integers, booleans and a string-keyed map of JSON values always serialise.
        Err(e) => unreachable!("a DeviceEventJson always serialises: {e}"),
    }
}

/// Why a message was dead-lettered. The first six are decided by [`decode`](fn@super::decode); the worker
/// decides the org checks, because only it knows the orgs and which org owns a device.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The message has no value (a tombstone) or an empty one.
    EmptyPayload,
    /// The value is larger than the configured maximum (`worker.max_event_bytes`); not parsed.
    Oversize,
    /// The value is not UTF-8 JSON: invalid UTF-8, a syntax error, truncated, trailing data, or nested
    /// deeper than the parser's limit (128).
    MalformedJson,
    /// JSON, but not a valid event: not an object, a missing, unknown, duplicate or wrong-typed key, a bad
    /// id, sequence, `occurredAt` or `removed` entry, or a field both set and removed.
    InvalidEvent,
    /// One or more attributes are unknown, computed, or of the wrong type for their field.
    InvalidAttributes,
    /// The Kafka key is not the event's `deviceId`, so the event may be on the wrong partition.
    KeyMismatch,
    /// The event's org does not exist.
    UnknownOrg,
    /// The device exists under another org.
    OrgMismatch,
}

impl DeadLetterReason {
    /// Every reason, for metrics (one counter series each) and tests.
    pub const ALL: [Self; 8] = [
        Self::EmptyPayload,
        Self::Oversize,
        Self::MalformedJson,
        Self::InvalidEvent,
        Self::InvalidAttributes,
        Self::KeyMismatch,
        Self::UnknownOrg,
        Self::OrgMismatch,
    ];

    /// The snake_case name used in headers, dead-letter bodies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyPayload => "empty_payload",
            Self::Oversize => "oversize",
            Self::MalformedJson => "malformed_json",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidAttributes => "invalid_attributes",
            Self::KeyMismatch => "key_mismatch",
            Self::UnknownOrg => "unknown_org",
            Self::OrgMismatch => "org_mismatch",
        }
    }

    /// The reason named `s` (the inverse of [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that cannot be processed, for a deterministic reason: it goes to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    /// What kind of failure; decides the metric label and lets consumers of the dead-letter topic triage.
    pub reason: DeadLetterReason,
    /// What exactly is wrong, naming the key at fault; bounded and free of control characters when built
    /// with [`DecodeError::new`].
    pub detail: String,
}

impl DecodeError {
    /// An error whose detail is bounded to [`MAX_DETAIL_BYTES`](super::MAX_DETAIL_BYTES) and has control
    /// characters escaped.
    pub fn new(reason: DeadLetterReason, detail: impl AsRef<str>) -> Self {
        Self {
            reason,
            detail: bound_detail(detail.as_ref()),
        }
    }
}

/// An [`DeadLetterReason::InvalidEvent`] error.
pub(super) fn invalid(detail: impl AsRef<str>) -> DecodeError {
    DecodeError::new(DeadLetterReason::InvalidEvent, detail)
}

/// Puts an event's changes in the order [`DeviceEvent`] promises: `set` sorted by field, `removed` sorted
/// and de-duplicated.
pub(super) fn in_field_order(set: &mut [(FieldId, AttrValue)], removed: &mut Vec<FieldId>) {
    set.sort_by_key(|(field, _)| *field);
    removed.sort_unstable();
    removed.dedup();
}

/// Whether `s` is a valid id: 1 to `max_chars` characters, none of them a control character.
pub(super) fn valid_id(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}
