//! The decoder's fast path: a plain, valid event decoded straight from its JSON text into a
//! [`DeviceEvent`], without first building a generic JSON value of the whole message (its maps, and a
//! `String` for every key).
//!
//! It decodes only what it can decode exactly as the checked path ([`super::decode`]) would, and gives up
//! on anything else: an unknown or repeated key, a value of another type, a registration, a `removed`
//! list, an id or attribute the checked path would refuse, an attribute name given twice, an object where
//! a value should be, trailing text, a Kafka key that is not the device id. The checked path then decodes
//! the message and says what is wrong. So the two never disagree: an event this path decodes is the event
//! the checked path decodes, and every refusal, with its reason and detail, is the checked path's.
//! Attribute names are resolved (and new custom names interned) only once the envelope has passed, in the
//! checked path's order (by name), so giving up leaves the catalogue as the checked path alone would.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::contract::{
    in_field_order, valid_id, DeviceEvent, MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS,
    MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
};
use crate::rules::attrs::{parse_attribute, MAX_ATTRIBUTES};
use crate::rules::catalogue::Catalogue;
use crate::rules::time::parse_datetime;
use crate::rules::EpochMillis;

/// The event in `text`, when it is plain and valid; `None` leaves the message to the checked path.
pub(super) fn decode_plain(
    key: Option<&[u8]>,
    text: &str,
    catalogue: &Catalogue,
) -> Option<DeviceEvent> {
    let mut de = serde_json::Deserializer::from_str(text);
    let envelope = de.deserialize_map(EnvelopeVisitor).ok()?;
    de.end().ok()?;
    let device_id = envelope.device_id?;
    if key.is_some_and(|key| key != device_id.as_bytes()) {
        return None;
    }
    let mut attributes = envelope.attributes.unwrap_or_default();
    // The checked path reads attributes from a map ordered by name; a name given twice is refused there.
    attributes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if attributes.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return None;
    }
    let mut set = Vec::with_capacity(attributes.len());
    let mut removed = Vec::new();
    for (name, value) in &attributes {
        match parse_attribute(catalogue, name, value).ok()? {
            (field, Some(value)) => set.push((field, value)),
            (field, None) => removed.push(field),
        }
    }
    in_field_order(&mut set, &mut removed);
    Some(DeviceEvent {
        event_id: envelope.event_id?,
        org_id: envelope.org_id?,
        device_id,
        sequence: envelope.sequence?,
        set,
        removed,
        development: envelope.development,
        firmware_lock: envelope.firmware_lock,
        occurred_at: envelope.occurred_at,
        register: false,
    })
}

/// The envelope as read: each key at most once.
#[derive(Default)]
struct Envelope<'de> {
    event_id: Option<String>,
    org_id: Option<String>,
    device_id: Option<String>,
    sequence: Option<i64>,
    attributes: Option<Vec<(Cow<'de, str>, Value)>>,
    development: Option<bool>,
    firmware_lock: Option<Option<String>>,
    occurred_at: Option<EpochMillis>,
}

/// The keys this path decodes (`removed` and anything else make it give up).
#[derive(Clone, Copy)]
enum Key {
    EventId,
    OrgId,
    DeviceId,
    Sequence,
    Attributes,
    Development,
    FirmwareLock,
    OccurredAt,
    Register,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "eventId" => Key::EventId,
                    "orgId" => Key::OrgId,
                    "deviceId" => Key::DeviceId,
                    "sequence" => Key::Sequence,
                    "attributes" => Key::Attributes,
                    "development" => Key::Development,
                    "firmwareLock" => Key::FirmwareLock,
                    "occurredAt" => Key::OccurredAt,
                    "register" => Key::Register,
                    _ => return Err(give_up()),
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// The error that makes this path give up (its text is never shown: the checked path reports).
fn give_up<E: de::Error>() -> E {
    E::custom("left to the checked path")
}

/// A required id, as the checked path accepts it.
fn id<E: de::Error>(value: String, max_chars: usize) -> Result<String, E> {
    if valid_id(&value, max_chars) {
        Ok(value)
    } else {
        Err(give_up())
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope::default();
        let mut seen = 0u16;
        while let Some(key) = map.next_key::<Key>()? {
            let bit = 1u16 << key as u16;
            if seen & bit != 0 {
                return Err(give_up());
            }
            seen |= bit;
            match key {
                Key::EventId => {
                    envelope.event_id = Some(id(map.next_value()?, MAX_EVENT_ID_CHARS)?)
                }
                Key::OrgId => envelope.org_id = Some(id(map.next_value()?, MAX_ORG_ID_CHARS)?),
                Key::DeviceId => {
                    envelope.device_id = Some(id(map.next_value()?, MAX_DEVICE_ID_CHARS)?)
                }
                Key::Sequence => {
                    let sequence: i64 = map.next_value()?;
                    if sequence < 0 {
                        return Err(give_up());
                    }
                    envelope.sequence = Some(sequence);
                }
                Key::Attributes => envelope.attributes = Some(map.next_value_seed(Attributes)?),
                Key::Development => envelope.development = Some(map.next_value()?),
                Key::FirmwareLock => {
                    let lock = match map.next_value::<Option<String>>()? {
                        None => None,
                        Some(lock) => Some(id(lock, MAX_FIRMWARE_LOCK_CHARS)?),
                    };
                    envelope.firmware_lock = Some(lock);
                }
                Key::OccurredAt => {
                    let text: Cow<'de, str> = map.next_value_seed(Text)?;
                    envelope.occurred_at = Some(parse_datetime(&text).ok_or_else(give_up)?);
                }
                // A registration is rare: the checked path decodes it.
                Key::Register => {
                    if map.next_value::<bool>()? {
                        return Err(give_up());
                    }
                }
            }
        }
        Ok(envelope)
    }
}

/// A string, borrowed from the message when it has no escapes.
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// The `attributes` object: (name, value) pairs in the order given, at most [`MAX_ATTRIBUTES`], none of
/// whose values is or holds an object (no attribute takes one, and an object's own keys are not checked
/// for repeats here).
struct Attributes;

impl<'de> DeserializeSeed<'de> for Attributes {
    type Value = Vec<(Cow<'de, str>, Value)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Attributes {
    type Value = Vec<(Cow<'de, str>, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an attributes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut attributes = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
        while let Some(name) = map.next_key_seed(Text)? {
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(give_up());
            }
            let value: Value = map.next_value()?;
            let holds_object = match &value {
                Value::Object(_) => true,
                Value::Array(items) => items.iter().any(|item| !is_scalar(item)),
                _ => false,
            };
            if holds_object {
                return Err(give_up());
            }
            attributes.push((name, value));
        }
        Ok(attributes)
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Object(_) | Value::Array(_))
}

#[cfg(test)]
mod tests;
