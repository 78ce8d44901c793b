//! [`decode`]: one message of the input topic to a [`DeviceEvent`], or the [`DecodeError`] that makes it a
//! dead letter.

use serde_json::{Map, Value};

use super::contract::{
    in_field_order, invalid, valid_id, DeadLetterReason, DecodeError, DeviceEvent, EVENT_KEYS,
    MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
    MAX_REMOVED, NOT_WITH_REGISTER,
};
use super::detail::{describe, join_bounded, json_type, snippet, truncate, SNIPPET_CHARS};
use super::plain::decode_plain;
use super::strict_json::parse_json;
use crate::rules::attrs::{parse_attribute, MAX_ATTRIBUTES};
use crate::rules::catalogue::Catalogue;
use crate::rules::time::parse_datetime;

/// Longest single attribute error within an `InvalidAttributes` detail, in bytes.
const MAX_ATTRIBUTE_ERROR_BYTES: usize = 256;

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
    // Most events are plain and valid: decoded straight from the text. Anything else is decoded, and
    // refused with its reason, by the checked path below (see `super::plain`).
    match decode_plain(key, text, catalogue) {
        Some(event) => Ok(event),
        None => checked(key, text, catalogue),
    }
}

/// Decodes the JSON text of a message with every check of the contract, in order (see the module
/// documentation of [`crate::event`]).
pub(super) fn checked(
    key: Option<&[u8]>,
    text: &str,
    catalogue: &Catalogue,
) -> Result<DeviceEvent, DecodeError> {
    use DeadLetterReason::*;
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

    in_field_order(&mut set, &mut removed);
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
