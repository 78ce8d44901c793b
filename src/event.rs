//! The `device-attribute-changes` input contract: what a message on the input topic must look like, how
//! it is decoded, and the dead-letter message written when it cannot be.
//!
//! The contract is published as JSON Schema in `schemas/device-attribute-changes.schema.json` (with
//! examples under `schemas/examples/device-attribute-changes/`) and `schemas/dead-letter.schema.json`;
//! the `event_contract` test suite keeps those files and this module from drifting apart.
//!
//! # The event
//! A JSON object with camelCase keys ([`EVENT_KEYS`]; any other key is refused): `eventId`, `orgId`,
//! `deviceId` and `sequence` are required; `attributes` (catalogue field → value, `null` removes),
//! `removed` (field names), `development`, `firmwareLock` (`null` clears the lock) and `occurredAt`
//! (informational) are optional. The Kafka key, when present, must equal `deviceId`.
//!
//! `"register": true` makes the event a **registration** (a device import): the worker creates the device,
//! with no attributes, if it exists nowhere yet, and otherwise does nothing at all (no re-homing, no
//! sequence change). A registration carries nothing but the envelope — `attributes`, `removed`,
//! `development` and `firmwareLock` are refused with it — and its `sequence` is not recorded: a registered
//! device's sequence stays below 0, so its first real event (any sequence ≥ 0) is applied.
//! [`registration_event`] builds one.
//!
//! # Decoding
//! [`decode`] is strict and total: it never panics, and every failure carries a [`DeadLetterReason`],
//! because a message that fails to decode fails the same way every time and must go to the dead-letter
//! topic (see [`dead_letter`]) rather than block its partition. Checks run in this order, and the first
//! failing one decides the reason: missing or empty value, size, JSON syntax, the envelope (keys, ids,
//! `sequence`, `removed`, …), the attributes (every bad one reported at once), and finally the Kafka key.
//!
//! Duplicate object keys are refused (as [`DeadLetterReason::InvalidEvent`]), anywhere in the event. JSON
//! leaves their meaning open — serde_json keeps the last, other parsers keep the first — so a producer, a
//! gateway and cohort could otherwise disagree about an event's `orgId` or `deviceId`.
//!
//! Detail strings are bounded ([`MAX_DETAIL_BYTES`]), quote at most a short prefix of any input value,
//! and carry no control characters, so they are safe in logs and Kafka headers.
//!
//! Decoding resolves field names through the [`Catalogue`], which interns undeclared `custom.<key>` names
//! it has not seen before (up to the catalogue's cap) — also for an event that is then refused for a later
//! check, such as a mismatched key.
//!
//! Why this file is over 800 lines: the envelope's decoding, the attribute checks and the dead-letter message
//! are one contract kept side by side; they are to split into decode, validation and dead-letter modules when
//! the input side takes ownership of its record type.

use std::cell::RefCell;
use std::fmt;

use base64::Engine as _;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::rules::attrs::{parse_attribute, value_to_json, AttrValue, MAX_ATTRIBUTES};
use crate::rules::catalogue::{Catalogue, FieldId};
use crate::rules::time::{format_millis, parse_datetime, EpochMillis};

/// Longest `eventId`, in characters (Unicode scalar values, as JSON Schema and PostgreSQL count).
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// Longest `orgId`, in characters; matches `orgs.id`.
pub const MAX_ORG_ID_CHARS: usize = 128;
/// Longest `deviceId`, in characters; matches `devices.id`.
pub const MAX_DEVICE_ID_CHARS: usize = 256;
/// Longest `firmwareLock` version, in characters.
pub const MAX_FIRMWARE_LOCK_CHARS: usize = 128;
/// Most entries in `removed` (the same bound as `attributes`, [`MAX_ATTRIBUTES`]).
pub const MAX_REMOVED: usize = 512;
/// Longest [`DecodeError::detail`], in bytes (plus a closing `…` when cut).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Most characters of an input value quoted in a detail.
const SNIPPET_CHARS: usize = 64;
/// Longest single attribute error within an `InvalidAttributes` detail, in bytes.
const MAX_ATTRIBUTE_ERROR_BYTES: usize = 256;

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

/// Header: the [`DeadLetterReason`] of a dead letter, as [`DeadLetterReason::as_str`].
pub const HEADER_REASON: &str = "cohort-dead-letter-reason";
/// Header: the [`DecodeError::detail`] of a dead letter.
pub const HEADER_DETAIL: &str = "cohort-dead-letter-detail";
/// Header: the topic the dead-lettered message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "cohort-source-topic";
/// Header: its partition, in decimal.
pub const HEADER_SOURCE_PARTITION: &str = "cohort-source-partition";
/// Header: its offset, in decimal.
pub const HEADER_SOURCE_OFFSET: &str = "cohort-source-offset";

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
/// fine and is refused by [`decode`].
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

/// Why a message was dead-lettered. The first six are decided by [`decode`]; the worker decides the org
/// checks, because only it knows the orgs and which org owns a device.
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
    /// An error whose detail is bounded to [`MAX_DETAIL_BYTES`] and has control characters escaped.
    pub fn new(reason: DeadLetterReason, detail: impl AsRef<str>) -> Self {
        Self {
            reason,
            detail: bound_detail(detail.as_ref()),
        }
    }
}

fn invalid(detail: impl AsRef<str>) -> DecodeError {
    DecodeError::new(DeadLetterReason::InvalidEvent, detail)
}

/// Decodes one message of the `device-attribute-changes` topic. `key` is the Kafka key (`None` when the
/// message has none), `payload` the value (`None` for a tombstone), `max_bytes` the largest value accepted.
pub fn decode(
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    catalogue: &Catalogue,
    max_bytes: usize,
) -> Result<DeviceEvent, DecodeError> {
    use DeadLetterReason::*;
    let payload = match payload {
        None => {
            return Err(DecodeError::new(
                EmptyPayload,
                "the message has no value (a tombstone)",
            ))
        }
        Some([]) => return Err(DecodeError::new(EmptyPayload, "the message value is empty")),
        Some(p) => p,
    };
    // Checked before parsing, so an oversize message costs nothing but its length.
    if payload.len() > max_bytes {
        return Err(DecodeError::new(
            Oversize,
            format!(
                "the message value is {} bytes, more than the maximum of {max_bytes}",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        DecodeError::new(
            MalformedJson,
            format!(
                "the message value is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ),
        )
    })?;
    let value = parse_json(text)?;
    let Value::Object(mut obj) = value else {
        return Err(invalid(format!(
            "the event must be a JSON object, got {}",
            json_type(&value)
        )));
    };

    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !EVENT_KEYS.contains(&k.as_str()))
        .take(4)
        .map(|k| snippet(k))
        .collect();
    if !unknown.is_empty() {
        return Err(invalid(format!(
            "unknown key{} {} (an event has only the keys {})",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            EVENT_KEYS.join(", ")
        )));
    }

    let event_id = id(&mut obj, "eventId", MAX_EVENT_ID_CHARS)?;
    let org_id = id(&mut obj, "orgId", MAX_ORG_ID_CHARS)?;
    let device_id = id(&mut obj, "deviceId", MAX_DEVICE_ID_CHARS)?;
    let sequence = match obj.remove("sequence") {
        None => return Err(invalid("missing required key sequence")),
        // `as_i64` is `None` for floats (`42.0`, `1e300`) and for integers above `i64::MAX`.
        Some(value) => match value.as_i64() {
            Some(sequence) if sequence >= 0 => sequence,
            _ => {
                return Err(invalid(format!(
                    "sequence must be an integer from 0 to {}, got {}",
                    i64::MAX,
                    describe(&value)
                )))
            }
        },
    };
    let register = match obj.remove("register") {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(other) => {
            return Err(invalid(format!(
                "register must be a boolean, got {}",
                describe(&other)
            )))
        }
    };
    if register {
        let extra: Vec<&str> = NOT_WITH_REGISTER
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        if !extra.is_empty() {
            return Err(invalid(format!(
                "a registration (register: true) cannot carry {}: it only creates a device that does not \
                 exist yet; send changes in an event of their own",
                extra.join(", ")
            )));
        }
    }
    let development = match obj.remove("development") {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(other) => {
            return Err(invalid(format!(
                "development must be a boolean, got {}",
                describe(&other)
            )))
        }
    };
    let firmware_lock = match obj.remove("firmwareLock") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) if valid_id(&s, MAX_FIRMWARE_LOCK_CHARS) => Some(Some(s)),
        Some(other) => {
            return Err(invalid(format!(
            "firmwareLock must be null or a string of 1 to {MAX_FIRMWARE_LOCK_CHARS} characters \
                 without control characters, got {}",
            describe(&other)
        )))
        }
    };
    let occurred_at = match obj.remove("occurredAt") {
        None => None,
        Some(value) => match value.as_str().and_then(parse_datetime) {
            Some(ms) => Some(ms),
            None => {
                return Err(invalid(format!(
                    "occurredAt must be an RFC 3339 datetime from year 1 to 9999, got {}",
                    describe(&value)
                )))
            }
        },
    };
    let attributes = match obj.remove("attributes") {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(invalid(format!(
                "attributes must be an object, got {}",
                json_type(&other)
            )))
        }
    };
    let removed_names = match obj.remove("removed") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() > MAX_REMOVED => {
            return Err(invalid(format!(
                "removed has {} entries, more than the maximum of {MAX_REMOVED}",
                items.len()
            )))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "removed must be an array of field names, got {}",
                json_type(&other)
            )))
        }
    };

    let mut removed = Vec::with_capacity(removed_names.len());
    for (i, item) in removed_names.iter().enumerate() {
        let Value::String(name) = item else {
            return Err(invalid(format!(
                "removed[{i}] must be a field name (a string), got {}",
                describe(item)
            )));
        };
        // Names are unique in the catalogue, so comparing names is comparing fields.
        if attributes.get(name).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!(
                "{} is both set in attributes and listed in removed",
                snippet(name)
            )));
        }
        let field = catalogue.resolve(name).map_err(|e| {
            invalid(format!(
                "removed[{i}]: {}",
                truncate(&e.to_string(), MAX_ATTRIBUTE_ERROR_BYTES)
            ))
        })?;
        if catalogue.computed(field).is_some() {
            return Err(invalid(format!(
                "removed[{i}]: field {} is computed and cannot be removed",
                snippet(name)
            )));
        }
        removed.push(field);
    }

    if attributes.len() > MAX_ATTRIBUTES {
        return Err(DecodeError::new(
            InvalidAttributes,
            format!(
                "attributes has {} entries, more than the maximum of {MAX_ATTRIBUTES}",
                attributes.len()
            ),
        ));
    }
    let mut set = Vec::with_capacity(attributes.len());
    let mut errors = Vec::new();
    for (name, value) in &attributes {
        match parse_attribute(catalogue, name, value) {
            Ok((field, Some(v))) => set.push((field, v)),
            Ok((field, None)) => removed.push(field),
            Err(message) => errors.push(format!(
                "attributes.{}: {}",
                truncate(name, SNIPPET_CHARS),
                truncate(&message, MAX_ATTRIBUTE_ERROR_BYTES)
            )),
        }
    }
    if !errors.is_empty() {
        return Err(DecodeError::new(InvalidAttributes, join_bounded(&errors)));
    }

    if let Some(key) = key {
        if key != device_id.as_bytes() {
            return Err(DecodeError::new(
                KeyMismatch,
                format!(
                    "the Kafka key {} is not the deviceId {}",
                    snippet(&String::from_utf8_lossy(key)),
                    snippet(&device_id)
                ),
            ));
        }
    }

    set.sort_by_key(|(field, _)| *field);
    removed.sort_unstable();
    removed.dedup();
    Ok(DeviceEvent {
        event_id,
        org_id,
        device_id,
        sequence,
        set,
        removed,
        development,
        firmware_lock,
        occurred_at,
        register,
    })
}

/// A required id: a string of 1 to `max_chars` characters without control characters.
fn id(obj: &mut Map<String, Value>, key: &str, max_chars: usize) -> Result<String, DecodeError> {
    match obj.remove(key) {
        None => Err(invalid(format!("missing required key {key}"))),
        Some(Value::String(s)) if valid_id(&s, max_chars) => Ok(s),
        Some(other) => Err(invalid(format!(
            "{key} must be a string of 1 to {max_chars} characters without control characters, got {}",
            describe(&other)
        ))),
    }
}

fn valid_id(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// Parses JSON into a [`Value`], refusing duplicate object keys. Syntax errors (including nesting deeper
/// than serde_json's recursion limit, which still applies to this visitor) are `MalformedJson`; a
/// duplicate key in otherwise well-formed JSON is `InvalidEvent`.
fn parse_json(text: &str) -> Result<Value, DecodeError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    let value = parsed.map_err(|e| {
        DecodeError::new(
            DeadLetterReason::MalformedJson,
            format!("the message value is not valid JSON: {e}"),
        )
    })?;
    match duplicate.into_inner() {
        Some(key) => Err(invalid(format!(
            "duplicate key {} (each key may appear once per object)",
            snippet(&key)
        ))),
        None => Ok(value),
    }
}

/// Builds a [`Value`] like serde_json's own, but notes the first duplicate key instead of silently keeping
/// the last value (it keeps parsing, so a later syntax error still wins as `MalformedJson`).
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never yields a non-finite number; `Value::from` would turn one into null.
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue {
            duplicate: self.duplicate,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue {
                duplicate: self.duplicate,
            })?;
            if out.insert(key.clone(), value).is_some() {
                let mut duplicate = self.duplicate.borrow_mut();
                if duplicate.is_none() {
                    *duplicate = Some(key);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a wrong value: scalars quoted (cut to a prefix), containers by type.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => snippet(s),
        Value::Number(n) => truncate(&n.to_string(), SNIPPET_CHARS),
        Value::Bool(b) => b.to_string(),
        other => json_type(other).to_string(),
    }
}

/// `s` quoted and escaped, cut to its first [`SNIPPET_CHARS`] characters.
fn snippet(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == SNIPPET_CHARS {
            out.push('…');
            break;
        }
        match c {
            // `escape_debug` writes NUL as `\0`, which reads as octal before a digit.
            '\0' => out.push_str("\\u{0}"),
            c => out.extend(c.escape_debug()),
        }
    }
    out.push('"');
    out
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` appended when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

/// Escapes control characters (so details are safe in logs and headers) and bounds the length.
fn bound_detail(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_DETAIL_BYTES + 3));
    for c in s.chars() {
        let before = out.len();
        if c == '\0' {
            out.push_str("\\u{0}");
        } else if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        if out.len() > MAX_DETAIL_BYTES {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// Joins attribute errors with `; `, stopping (and saying how many are left out) before the detail bound.
fn join_bounded(errors: &[String]) -> String {
    // Leaves room for the "; and N more" suffix.
    const BUDGET: usize = MAX_DETAIL_BYTES - 32;
    let mut out = String::new();
    let mut shown = 0;
    for error in errors {
        let sep = if out.is_empty() { 0 } else { 2 };
        if shown > 0 && out.len() + sep + error.len() > BUDGET {
            break;
        }
        if sep > 0 {
            out.push_str("; ");
        }
        out.push_str(error);
        shown += 1;
    }
    if shown < errors.len() {
        out.push_str(&format!("; and {} more", errors.len() - shown));
    }
    out
}

/// A message for the transactional outbox: written to the `outbox` table in the same transaction as the
/// effect that caused it, and published to Kafka by the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The Kafka topic to publish to.
    pub topic: String,
    /// The Kafka key; for a dead letter, the original message's key (so a device's dead letters stay
    /// together and in order).
    pub key: Option<Vec<u8>>,
    /// The Kafka value.
    pub payload: Vec<u8>,
    /// Kafka headers, in order.
    pub headers: Vec<(String, String)>,
}

/// Builds the dead-letter message for a message that failed with `error`, read from
/// `source_topic`/`partition` at `offset`. Total: every input gets one, whatever its size or bytes.
///
/// The body (`schemas/dead-letter.schema.json`) embeds the original value as a string when it is UTF-8,
/// else as `payloadBase64`. The embedded form is cut to a prefix whose encoding (JSON string escapes or
/// base64) takes at most `max_bytes` (pass `worker.max_event_bytes`), and `truncated` says whether it was
/// cut; `payloadBytes` is the original length. The whole value is then at most `max_bytes` plus a few KiB
/// (the detail and the source), which must fit the dead-letter topic's `max.message.bytes`.
// Eight plain values the worker has at hand when it dead-letters; a parameter struct would only move
// the same list.
#[allow(clippy::too_many_arguments)]
pub fn dead_letter(
    dlq_topic: &str,
    source_topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    error: &DecodeError,
    max_bytes: usize,
) -> OutboxMessage {
    // A detail built without `DecodeError::new` is bounded here too: it goes into a header.
    let detail = bound_detail(&error.detail);
    let mut body = Map::new();
    body.insert("reason".into(), error.reason.as_str().into());
    body.insert("detail".into(), detail.clone().into());
    body.insert(
        "source".into(),
        serde_json::json!({ "topic": source_topic, "partition": partition, "offset": offset }),
    );
    let original = payload.unwrap_or_default();
    let truncated = match payload.map(std::str::from_utf8) {
        None => {
            body.insert("payload".into(), Value::Null);
            false
        }
        Some(Ok(text)) => {
            let prefix = json_string_prefix(text, max_bytes);
            body.insert("payload".into(), prefix.into());
            prefix.len() < text.len()
        }
        Some(Err(_)) => {
            // Whole 3-byte groups, so the base64 text is at most `max_bytes`.
            let raw_max = max_bytes / 4 * 3;
            let prefix = original.get(..raw_max).unwrap_or(original);
            body.insert("payload".into(), Value::Null);
            body.insert(
                "payloadBase64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(prefix)
                    .into(),
            );
            prefix.len() < original.len()
        }
    };
    body.insert("payloadBytes".into(), original.len().into());
    body.insert("truncated".into(), truncated.into());
    OutboxMessage {
        topic: dlq_topic.to_string(),
        key: key.map(<[u8]>::to_vec),
        // `Value`'s `Display` cannot fail.
        payload: Value::Object(body).to_string().into_bytes(),
        headers: vec![
            (HEADER_REASON.into(), error.reason.as_str().into()),
            (HEADER_DETAIL.into(), detail),
            (HEADER_SOURCE_TOPIC.into(), source_topic.into()),
            (HEADER_SOURCE_PARTITION.into(), partition.to_string()),
            (HEADER_SOURCE_OFFSET.into(), offset.to_string()),
        ],
    }
}

/// The longest prefix of `s` (at a character boundary) whose JSON string escaping, as serde_json writes
/// it, takes at most `max_bytes`.
fn json_string_prefix(s: &str, max_bytes: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' | '\\' | '\u{08}' | '\u{0c}' | '\n' | '\r' | '\t' => 2,
            c if c < ' ' => 6,
            c => c.len_utf8(),
        };
        if used + escaped > max_bytes {
            return s.get(..i).unwrap_or_default();
        }
        used += escaped;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use DeadLetterReason::*;

    const MAX: usize = 65_536;

    fn catalogue() -> Catalogue {
        Catalogue::default()
    }

    fn decode_value(value: &Value) -> Result<DeviceEvent, DecodeError> {
        decode(None, Some(value.to_string().as_bytes()), &catalogue(), MAX)
    }

    fn reason_of(payload: &[u8]) -> DeadLetterReason {
        decode(None, Some(payload), &catalogue(), MAX)
            .unwrap_err()
            .reason
    }

    fn base() -> Value {
        json!({"eventId": "e-1", "orgId": "acme", "deviceId": "gw-17", "sequence": 42})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut event = base();
        event[key] = value;
        event
    }

    #[test]
    fn the_documented_example_decodes() {
        let c = catalogue();
        let payload = br#"{ "eventId": "01J0", "orgId": "acme", "deviceId": "gw-17", "sequence": 42,
            "attributes": {"hostname": "gw-17", "tags": ["eu"], "custom.rack": "r1", "uptimeSeconds": null},
            "removed": ["displayName"], "development": false, "firmwareLock": "2.4.1",
            "occurredAt": "2024-06-15T11:00:00Z" }"#;
        let event = decode(Some(b"gw-17"), Some(payload), &c, MAX).unwrap();
        let field = |n: &str| c.resolve(n).unwrap();
        assert_eq!(event.event_id, "01J0");
        assert_eq!(event.org_id, "acme");
        assert_eq!(event.device_id, "gw-17");
        assert_eq!(event.sequence, 42);
        let mut set = vec![
            (field("hostname"), AttrValue::Str("gw-17".into())),
            (field("tags"), AttrValue::StrList(Box::new(["eu".into()]))),
            (field("custom.rack"), AttrValue::Str("r1".into())),
        ];
        set.sort_by_key(|(f, _)| *f);
        assert_eq!(event.set, set);
        let mut removed = vec![field("displayName"), field("uptimeSeconds")];
        removed.sort();
        assert_eq!(event.removed, removed);
        assert_eq!(event.development, Some(false));
        assert_eq!(event.firmware_lock, Some(Some("2.4.1".into())));
        assert_eq!(
            event.occurred_at,
            parse_datetime("2024-06-15T11:00:00.000Z")
        );
        let changed: Vec<_> = event.changed_fields().collect();
        assert_eq!(changed.len(), 5);
    }

    #[test]
    fn an_event_without_changes_is_valid_and_is_not_a_registration() {
        let event = decode_value(&base()).unwrap();
        assert!(event.set.is_empty() && event.removed.is_empty());
        assert_eq!(event.development, None);
        assert_eq!(event.firmware_lock, None);
        assert_eq!(event.occurred_at, None);
        assert!(!event.register);
        assert_eq!(event.changed_fields().count(), 0);
        assert!(
            !decode_value(&with("register", json!(false)))
                .unwrap()
                .register
        );
    }

    #[test]
    fn a_registration_carries_nothing_but_the_envelope() {
        let event = decode_value(&with("register", json!(true))).unwrap();
        assert!(event.register);
        let mut timed = with("register", json!(true));
        timed["occurredAt"] = json!("2024-06-15T11:00:00Z");
        assert!(decode_value(&timed).unwrap().register);
        for (key, value) in [
            ("attributes", json!({"hostname": "h"})),
            ("attributes", json!({})),
            ("removed", json!([])),
            ("development", json!(true)),
            ("firmwareLock", Value::Null),
        ] {
            let mut event = with("register", json!(true));
            event[key] = value;
            let err = decode_value(&event).unwrap_err();
            assert_eq!(err.reason, InvalidEvent, "{event}");
            assert_eq!(
                err.detail,
                format!(
                    "a registration (register: true) cannot carry {key}: it only creates a device that does \
                     not exist yet; send changes in an event of their own"
                )
            );
        }
        let err = decode_value(&with("register", json!("yes"))).unwrap_err();
        assert_eq!(err.detail, "register must be a boolean, got \"yes\"");
    }

    #[test]
    fn registration_events_decode_as_registrations_with_fresh_ids() {
        let c = catalogue();
        let payload = registration_event("acme", "gw-17");
        let event = decode(Some(b"gw-17"), Some(&payload), &c, MAX).unwrap();
        assert!(event.register);
        assert_eq!(
            (event.org_id.as_str(), event.device_id.as_str()),
            ("acme", "gw-17")
        );
        assert_eq!(event.sequence, 0);
        assert!(uuid::Uuid::parse_str(&event.event_id).is_ok());
        let other = decode(None, Some(&registration_event("acme", "gw-17")), &c, MAX).unwrap();
        assert_ne!(other.event_id, event.event_id);
        let again = decode(None, Some(&encode(&event.to_json(&c))), &c, MAX).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn a_null_firmware_lock_clears_it_and_an_absent_one_leaves_it() {
        let event = decode_value(&with("firmwareLock", Value::Null)).unwrap();
        assert_eq!(event.firmware_lock, Some(None));
        assert_eq!(decode_value(&base()).unwrap().firmware_lock, None);
    }

    #[test]
    fn encoding_then_decoding_gives_the_same_event() {
        let c = catalogue();
        let mut json = DeviceEventJson::new("e-9", "acme", "dev-1", i64::MAX);
        json.attributes = serde_json::from_value(json!({
            "hostname": "h", "status": "online", "uptimeSeconds": 12.5, "lastSeenAt": "2024-01-01T00:00:00+02:00",
            "tags": ["a", "b"], "custom.rack": 12, "osVersion": null
        }))
        .unwrap();
        json.removed = vec!["displayName".into(), "displayName".into()];
        json.development = Some(true);
        json.firmware_lock = Some(None);
        json.occurred_at = Some("2024-06-15T11:00:00.123456Z".into());
        let event = decode(Some(b"dev-1"), Some(&encode(&json)), &c, MAX).unwrap();
        assert_eq!(event.set.len(), 6);
        assert_eq!(event.removed.len(), 2);
        assert_eq!(event.firmware_lock, Some(None));
        let again = decode(None, Some(&encode(&event.to_json(&c))), &c, MAX).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn encode_writes_only_the_contract_keys() {
        let mut json = DeviceEventJson::new("e", "o", "d", 1);
        json.attributes.insert("hostname".into(), json!("h"));
        json.removed.push("tags".into());
        json.development = Some(false);
        json.firmware_lock = Some(Some("1.0".into()));
        json.occurred_at = Some("2024-01-01T00:00:00Z".into());
        let value: Value = serde_json::from_slice(&encode(&json)).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        // Every key but `register`, which cannot come with changes.
        let mut expected: Vec<_> = EVENT_KEYS
            .iter()
            .filter(|k| **k != "register")
            .map(|k| k.to_string())
            .collect();
        keys.sort();
        expected.sort();
        assert_eq!(keys, expected);
        let minimal: Value =
            serde_json::from_slice(&encode(&DeviceEventJson::new("e", "o", "d", 1))).unwrap();
        assert_eq!(minimal.as_object().unwrap().len(), REQUIRED_KEYS.len());
        let mut registration = DeviceEventJson::new("e", "o", "d", 1);
        registration.register = true;
        let value: Value = serde_json::from_slice(&encode(&registration)).unwrap();
        assert_eq!(value["register"], json!(true));
        assert_eq!(value.as_object().unwrap().len(), REQUIRED_KEYS.len() + 1);
    }

    #[test]
    fn a_missing_or_empty_value_is_an_empty_payload() {
        let c = catalogue();
        assert_eq!(
            decode(None, None, &c, MAX).unwrap_err().reason,
            EmptyPayload
        );
        assert_eq!(reason_of(b""), EmptyPayload);
        // Whitespace is a value, just not JSON.
        assert_eq!(reason_of(b"  "), MalformedJson);
    }

    #[test]
    fn size_is_checked_before_parsing() {
        let c = catalogue();
        let payload = vec![b'{'; 10 * 1024 * 1024];
        let err = decode(None, Some(&payload), &c, MAX).unwrap_err();
        assert_eq!(err.reason, Oversize);
        assert_eq!(
            err.detail,
            "the message value is 10485760 bytes, more than the maximum of 65536"
        );
        let exact = base().to_string();
        assert!(decode(None, Some(exact.as_bytes()), &c, exact.len()).is_ok());
        assert_eq!(
            decode(None, Some(exact.as_bytes()), &c, exact.len() - 1)
                .unwrap_err()
                .reason,
            Oversize
        );
    }

    #[test]
    fn hostile_json_is_malformed_not_a_panic() {
        let deep = format!(
            r#"{{"eventId":"e","orgId":"o","deviceId":"d","sequence":1,"attributes":{{"custom.x":{}{}}}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert_eq!(reason_of(deep.as_bytes()), MalformedJson);
        let deep_objects = format!("{}{}", r#"{"a":"#.repeat(1000), "}".repeat(1000));
        assert_eq!(reason_of(deep_objects.as_bytes()), MalformedJson);
        let err = decode(None, Some(b"{\"eventId\":\"\xff\"}"), &catalogue(), MAX).unwrap_err();
        assert_eq!(err.reason, MalformedJson);
        assert!(err.detail.contains("not valid UTF-8 (at byte 12)"), "{err}");
        assert_eq!(reason_of(br#"{"eventId":"e""#), MalformedJson);
        assert_eq!(reason_of(br#"{"eventId":"e"} {}"#), MalformedJson);
        assert_eq!(reason_of(br#"{'eventId':'e'}"#), MalformedJson);
        assert_eq!(reason_of(br#"{"sequence": 1e400}"#), MalformedJson);
    }

    #[test]
    fn a_sequence_must_be_a_non_negative_64_bit_integer() {
        for bad in [
            json!(1e300),
            json!(-1),
            json!(42.0),
            json!("42"),
            Value::Null,
        ] {
            let err = decode_value(&with("sequence", bad.clone())).unwrap_err();
            assert_eq!(err.reason, InvalidEvent, "{bad}");
            assert!(
                err.detail
                    .starts_with("sequence must be an integer from 0 to 9223372036854775807, got "),
                "{err}"
            );
        }
        let too_large =
            br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":9223372036854775808}"#;
        assert_eq!(reason_of(too_large), InvalidEvent);
        let max = br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":9223372036854775807}"#;
        assert_eq!(
            decode(None, Some(max), &catalogue(), MAX).unwrap().sequence,
            i64::MAX
        );
        assert_eq!(
            decode_value(&with("sequence", json!(0))).unwrap().sequence,
            0
        );
    }

    #[test]
    fn ids_are_bounded_and_free_of_control_characters() {
        let err = decode_value(&with("deviceId", json!("gw\u{0}17"))).unwrap_err();
        assert_eq!(err.reason, InvalidEvent);
        assert_eq!(
            err.detail,
            r#"deviceId must be a string of 1 to 256 characters without control characters, got "gw\u{0}17""#
        );
        assert_eq!(
            decode_value(&with("orgId", json!(""))).unwrap_err().reason,
            InvalidEvent
        );
        assert_eq!(
            decode_value(&with("eventId", json!(7))).unwrap_err().reason,
            InvalidEvent
        );
        assert_eq!(
            decode_value(&with("orgId", json!("\u{85}")))
                .unwrap_err()
                .reason,
            InvalidEvent
        );
        // Limits count characters, not bytes.
        let device = "é".repeat(MAX_DEVICE_ID_CHARS);
        assert_eq!(
            decode_value(&with("deviceId", json!(device)))
                .unwrap()
                .device_id,
            device
        );
        let err = decode_value(&with("deviceId", json!(format!("{device}x")))).unwrap_err();
        assert_eq!(err.reason, InvalidEvent);
        assert!(err.detail.len() < 300, "only a prefix is quoted: {err}");
        let long_event = "e".repeat(MAX_EVENT_ID_CHARS + 1);
        assert_eq!(
            decode_value(&with("eventId", json!(long_event)))
                .unwrap_err()
                .reason,
            InvalidEvent
        );
        let missing = json!({"eventId": "e", "orgId": "o", "sequence": 1});
        assert_eq!(
            decode_value(&missing).unwrap_err().detail,
            "missing required key deviceId"
        );
    }

    #[test]
    fn envelope_type_errors_name_the_key() {
        let cases = [
            (
                json!([1, 2]),
                "the event must be a JSON object, got an array",
            ),
            (with("colour", json!(1)), "unknown key \"colour\""),
            (
                with("development", json!("yes")),
                "development must be a boolean",
            ),
            (
                with("development", Value::Null),
                "development must be a boolean",
            ),
            (
                with("firmwareLock", json!("")),
                "firmwareLock must be null or a string",
            ),
            (
                with("firmwareLock", json!(2)),
                "firmwareLock must be null or a string",
            ),
            (
                with("attributes", json!([])),
                "attributes must be an object, got an array",
            ),
            (
                with("attributes", Value::Null),
                "attributes must be an object, got null",
            ),
            (with("removed", json!("tags")), "removed must be an array"),
            (
                with("removed", json!([1])),
                "removed[0] must be a field name",
            ),
            (
                with("removed", json!(["nope"])),
                "removed[0]: Unknown field: nope",
            ),
            (
                with("removed", json!(["daysSinceLastSeen"])),
                "removed[0]: field \"daysSinceLastSeen\" is computed",
            ),
            (
                with("occurredAt", json!("yesterday")),
                "occurredAt must be an RFC 3339",
            ),
        ];
        for (event, expected) in cases {
            let err = decode_value(&event).unwrap_err();
            assert_eq!(err.reason, InvalidEvent, "{event}");
            assert!(err.detail.starts_with(expected), "{err} for {event}");
        }
        let too_many = with("removed", json!(vec!["tags"; MAX_REMOVED + 1]));
        assert_eq!(decode_value(&too_many).unwrap_err().reason, InvalidEvent);
        let many = with("removed", json!(vec!["tags"; MAX_REMOVED]));
        assert_eq!(decode_value(&many).unwrap().removed.len(), 1);
    }

    #[test]
    fn occurred_at_outside_years_1_to_9999_is_refused() {
        for bad in [
            "+275760-09-13T00:00:00Z",
            "10000-01-01T00:00:00Z",
            "2024-13-01T00:00:00Z",
        ] {
            let err = decode_value(&with("occurredAt", json!(bad))).unwrap_err();
            assert_eq!(err.reason, InvalidEvent, "{bad}");
        }
        let ok = decode_value(&with("occurredAt", json!("2024-06-15T13:00:00+02:00"))).unwrap();
        assert_eq!(ok.occurred_at, parse_datetime("2024-06-15T11:00:00Z"));
    }

    #[test]
    fn a_field_both_set_and_removed_is_refused_but_null_and_removed_agree() {
        let mut event = with("attributes", json!({"hostname": "h"}));
        event["removed"] = json!(["hostname"]);
        let err = decode_value(&event).unwrap_err();
        assert_eq!(err.reason, InvalidEvent);
        assert_eq!(
            err.detail,
            "\"hostname\" is both set in attributes and listed in removed"
        );
        event["attributes"] = json!({"hostname": null});
        let ok = decode_value(&event).unwrap();
        assert_eq!(ok.removed, vec![catalogue().resolve("hostname").unwrap()]);
    }

    #[test]
    fn duplicate_keys_are_refused_anywhere() {
        let top = br#"{"eventId":"e","orgId":"acme","orgId":"other","deviceId":"d","sequence":1}"#;
        let err = decode(None, Some(top), &catalogue(), MAX).unwrap_err();
        assert_eq!(err.reason, InvalidEvent);
        assert!(err.detail.starts_with("duplicate key \"orgId\""), "{err}");
        let nested = br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":1,
            "attributes":{"hostname":"a","hostname":"b"}}"#;
        assert_eq!(reason_of(nested), InvalidEvent);
        // A syntax error later in the message still makes it malformed.
        let both = br#"{"eventId":"e","eventId":"e","orgId":"#;
        assert_eq!(reason_of(both), MalformedJson);
    }

    #[test]
    fn every_bad_attribute_is_named() {
        let event = with(
            "attributes",
            json!({"status": "x", "tags": "eu", "hostname": "ok", "daysSinceEnrolled": 1, "bogus": 1}),
        );
        let err = decode_value(&event).unwrap_err();
        assert_eq!(err.reason, InvalidAttributes);
        for name in ["status", "tags", "daysSinceEnrolled", "bogus"] {
            assert!(
                err.detail.contains(&format!("attributes.{name}: ")),
                "{err}"
            );
        }
        assert!(err
            .detail
            .contains("attributes.status: Value \"x\" is not one of"));
        assert!(!err.detail.contains("attributes.hostname"));
        let too_many: Map<String, Value> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("custom.k{i}"), json!("v")))
            .collect();
        let err = decode_value(&with("attributes", Value::Object(too_many))).unwrap_err();
        assert_eq!(err.reason, InvalidAttributes);
    }

    #[test]
    fn attribute_errors_are_bounded_and_quote_only_prefixes() {
        let huge = "x".repeat(20_000);
        let attributes: Map<String, Value> = (0..100)
            .map(|i| (format!("bad{i}{huge}"), json!(huge)))
            .chain([("status".to_string(), json!(huge))])
            .collect();
        let err = decode(
            None,
            Some(
                with("attributes", Value::Object(attributes))
                    .to_string()
                    .as_bytes(),
            ),
            &catalogue(),
            usize::MAX,
        )
        .unwrap_err();
        assert_eq!(err.reason, InvalidAttributes);
        assert!(
            err.detail.len() <= MAX_DETAIL_BYTES + 3,
            "{}",
            err.detail.len()
        );
        assert!(err.detail.ends_with("more"), "{err}");
        let err = decode_value(&with("attributes", json!({"bad\nname": 1}))).unwrap_err();
        assert!(!err.detail.chars().any(char::is_control), "{err}");
    }

    #[test]
    fn the_key_must_be_the_device_id_when_present() {
        let payload = base().to_string();
        let c = catalogue();
        assert!(decode(None, Some(payload.as_bytes()), &c, MAX).is_ok());
        assert!(decode(Some(b"gw-17"), Some(payload.as_bytes()), &c, MAX).is_ok());
        let err = decode(Some(b"gw-18"), Some(payload.as_bytes()), &c, MAX).unwrap_err();
        assert_eq!(err.reason, KeyMismatch);
        assert_eq!(
            err.detail,
            "the Kafka key \"gw-18\" is not the deviceId \"gw-17\""
        );
        assert_eq!(
            decode(Some(b""), Some(payload.as_bytes()), &c, MAX)
                .unwrap_err()
                .reason,
            KeyMismatch
        );
        let err = decode(Some(b"\xff\x00"), Some(payload.as_bytes()), &c, MAX).unwrap_err();
        assert!(!err.detail.chars().any(char::is_control), "{err}");
    }

    #[test]
    fn reasons_have_distinct_snake_case_names() {
        let names: Vec<_> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), DeadLetterReason::ALL.len());
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
            assert_eq!(reason.to_string(), reason.as_str());
        }
        let err = DecodeError::new(InvalidEvent, "sequence must be …");
        assert_eq!(err.to_string(), "invalid_event: sequence must be …");
    }

    fn body(message: &OutboxMessage) -> Value {
        serde_json::from_slice(&message.payload).unwrap()
    }

    #[test]
    fn a_dead_letter_carries_the_reason_source_and_original() {
        let payload = br#"{"eventId": 1}"#;
        let err = decode(Some(b"k"), Some(payload), &catalogue(), MAX).unwrap_err();
        let msg = dead_letter("dlq", "in", 3, 99, Some(b"k"), Some(payload), &err, MAX);
        assert_eq!(msg.topic, "dlq");
        assert_eq!(msg.key.as_deref(), Some(&b"k"[..]));
        let headers: Vec<(&str, &str)> = msg
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            headers,
            [
                ("cohort-dead-letter-reason", "invalid_event"),
                ("cohort-dead-letter-detail", err.detail.as_str()),
                ("cohort-source-topic", "in"),
                ("cohort-source-partition", "3"),
                ("cohort-source-offset", "99"),
            ]
        );
        assert_eq!(
            body(&msg),
            json!({
                "reason": "invalid_event", "detail": err.detail,
                "source": {"topic": "in", "partition": 3, "offset": 99},
                "payload": r#"{"eventId": 1}"#, "payloadBytes": 14, "truncated": false
            })
        );
        let tombstone = dead_letter("dlq", "in", 0, 0, None, None, &err, MAX);
        assert_eq!(body(&tombstone)["payload"], Value::Null);
        assert_eq!(tombstone.key, None);
    }

    #[test]
    fn a_non_utf8_original_round_trips_through_base64() {
        let payload = b"{\"eventId\":\"\xff\xfe\"}\x00";
        let err = decode(None, Some(payload), &catalogue(), MAX).unwrap_err();
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(payload), &err, MAX);
        let body = body(&msg);
        assert_eq!(body["payload"], Value::Null);
        assert_eq!(body["truncated"], json!(false));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body["payloadBase64"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, payload);
    }

    #[test]
    fn a_huge_original_is_cut_to_max_bytes_in_the_dead_letter() {
        let c = catalogue();
        let mut text = vec![b'\x01'; 10 * 1024 * 1024];
        text.extend_from_slice("é".as_bytes());
        let err = decode(None, Some(&text), &c, MAX).unwrap_err();
        assert_eq!(err.reason, Oversize);
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(&text), &err, MAX);
        assert!(msg.payload.len() <= MAX + 2048, "{}", msg.payload.len());
        let b = body(&msg);
        assert_eq!(b["truncated"], json!(true));
        assert_eq!(b["payloadBytes"], json!(text.len()));
        let embedded = b["payload"].as_str().unwrap();
        assert!(text.starts_with(embedded.as_bytes()));

        let mut binary = vec![0xffu8; 10 * 1024 * 1024];
        binary[0] = b'{';
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(&binary), &err, MAX);
        assert!(msg.payload.len() <= MAX + 2048, "{}", msg.payload.len());
        let b = body(&msg);
        assert_eq!(b["truncated"], json!(true));
        let prefix = base64::engine::general_purpose::STANDARD
            .decode(b["payloadBase64"].as_str().unwrap())
            .unwrap();
        assert!(binary.starts_with(&prefix) && !prefix.is_empty());

        let cut = dead_letter("dlq", "in", 0, 1, None, Some("aé".as_bytes()), &err, 2);
        assert_eq!(body(&cut)["payload"], json!("a"));
        let none = dead_letter("dlq", "in", 0, 1, None, Some(b"abc"), &err, 0);
        assert_eq!(body(&none)["payload"], json!(""));
        assert_eq!(body(&none)["truncated"], json!(true));
    }

    #[test]
    fn json_string_prefix_matches_serde_json_escaping() {
        let s = "a\"\\\u{1}\n\u{7f}é😀";
        let full = serde_json::to_string(s).unwrap().len() - 2;
        assert_eq!(json_string_prefix(s, full), s);
        assert!(json_string_prefix(s, full - 1).len() < s.len());
    }

    #[test]
    fn hand_built_details_are_bounded_in_the_dead_letter_headers() {
        let err = DecodeError {
            reason: UnknownOrg,
            detail: format!("org {}\n", "x".repeat(5000)),
        };
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(b"{}"), &err, MAX);
        let detail = &msg.headers[1].1;
        assert!(detail.len() <= MAX_DETAIL_BYTES + 3);
        assert!(!detail.chars().any(char::is_control));
    }
}
