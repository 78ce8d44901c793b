//! Strict JSON parsing: a [`Value`] like serde_json's own, except that a duplicate object key anywhere
//! is refused. JSON leaves a duplicate's meaning open — serde_json keeps the last, other parsers keep the
//! first — so a producer, a gateway and cohort could otherwise disagree about an event's ids.

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::contract::{invalid, DeadLetterReason, DecodeError};
use super::detail::snippet;

/// Parses JSON into a [`Value`], refusing duplicate object keys. Syntax errors (including nesting deeper
/// than serde_json's recursion limit, which still applies to this visitor) are `MalformedJson`; a
/// duplicate key in otherwise well-formed JSON is `InvalidEvent`.
pub(super) fn parse_json(text: &str) -> Result<Value, DecodeError> {
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
