//! Typed device attributes: the values filters evaluate against.
//!
//! A device document is a JSON object keyed by catalogue field names (`custom.<key>` for custom fields).
//! Parsing is strict: a value of the wrong type for its field is an error naming the field. Two deliberate
//! leniencies, both lossless: `null` means "absent", and an *undeclared* custom field (a string field) also
//! accepts a JSON number or boolean, stored as its JSON text, because custom fields come from heterogeneous
//! agents and `custom.rack equals "12"` should match a device that reported `12`.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::catalogue::{Catalogue, FieldId, FieldLookupError, FieldType};
use super::time::{format_millis, parse_datetime, EpochMillis};

/// Longest string attribute value, in bytes.
pub const MAX_STRING_BYTES: usize = 4096;
/// Most elements of an array attribute.
pub const MAX_ARRAY_ITEMS: usize = 256;
/// Most attributes one device document may carry.
pub const MAX_ATTRIBUTES: usize = 512;

/// A string attribute value: up to 24 bytes inline (ids, versions, sites, tags, hostnames — most values
/// a device reports), longer ones on the heap. A device is copied for every batch that touches it, so an
/// inline string makes that copy, and dropping the state it replaced, free of allocation.
pub type AttrStr = compact_str::CompactString;

/// One typed attribute value, 24 bytes (the tag lives in the inline string's spare byte values).
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(AttrStr),
    /// Always finite (JSON cannot carry NaN or infinities).
    Num(f64),
    Bool(bool),
    /// Index into the field's allowed values.
    Enum(u16),
    /// UTC instant, milliseconds since the Unix epoch.
    Time(EpochMillis),
    StrList(Box<[AttrStr]>),
}

const _: () = assert!(std::mem::size_of::<AttrValue>() == 24);

/// A device's attributes, sorted by field for lookup by position guess and binary search, with no
/// allocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes {
    entries: Vec<(FieldId, AttrValue)>,
}

/// An attribute that failed to parse: the field name (as given) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeError {
    pub field: String,
    pub message: String,
}

impl Attributes {
    /// An empty attribute set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `field`, if present.
    #[inline]
    pub fn get(&self, field: FieldId) -> Option<&AttrValue> {
        match self.position(field) {
            Ok(i) => self.entries.get(i).map(|(_, v)| v),
            Err(_) => None,
        }
    }

    /// Where `field` is (`Ok`) or would be inserted (`Err`), as a binary search says.
    ///
    /// Field ids are dense (the catalogue numbers fields as it learns them) and devices of one fleet
    /// report mostly the same fields, so a device's ids are often consecutive: the position is first
    /// guessed by interpolating between the first and the last id, which finds it with one probe when
    /// they are, instead of a binary search's eight or so over 200 attributes (each probe a cache miss on
    /// a device not seen lately). When the guess misses, the search continues on the side of it where the
    /// field lies.
    #[inline]
    fn position(&self, field: FieldId) -> Result<usize, usize> {
        let entries = &self.entries;
        let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else {
            return Err(0);
        };
        if field < *first {
            return Err(0);
        }
        if field > *last {
            return Err(entries.len());
        }
        let span = u64::from(last.0 - first.0).max(1);
        let offset = u64::from(field.0 - first.0) * (entries.len() as u64 - 1) / span;
        let guess = usize::try_from(offset).unwrap_or(0).min(entries.len() - 1);
        let at = entries[guess].0;
        let by_field = |(f, _): &(FieldId, AttrValue)| *f;
        if at == field {
            Ok(guess)
        } else if at < field {
            let rest = &entries[guess + 1..];
            rest.binary_search_by_key(&field, by_field)
                .map(|i| i + guess + 1)
                .map_err(|i| i + guess + 1)
        } else {
            entries[..guess].binary_search_by_key(&field, by_field)
        }
    }

    /// Sets `field`, returning the previous value.
    pub fn set(&mut self, field: FieldId, value: AttrValue) -> Option<AttrValue> {
        match self.position(field) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                // Exactly one more: a device's attributes live as long as the device, and the doubling
                // `insert` would do left half the vector unused in every device that gained a field.
                self.entries.reserve_exact(1);
                self.entries.insert(i, (field, value));
                None
            }
        }
    }

    /// Removes `field`, returning the previous value.
    pub fn remove(&mut self, field: FieldId) -> Option<AttrValue> {
        match self.position(field) {
            Ok(i) => Some(self.entries.remove(i).1),
            Err(_) => None,
        }
    }

    /// All attributes in field order.
    pub fn iter(&self) -> impl Iterator<Item = (FieldId, &AttrValue)> {
        self.entries.iter().map(|(f, v)| (*f, v))
    }

    /// Number of attributes present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no attribute is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Releases spare capacity; called after loading so resident memory per device stays small.
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Parses a device document, reporting every bad attribute at once.
    pub fn from_json(
        doc: &Map<String, Value>,
        catalogue: &Catalogue,
    ) -> Result<Self, Vec<AttributeError>> {
        let mut errors = Vec::new();
        if doc.len() > MAX_ATTRIBUTES {
            errors.push(AttributeError {
                field: String::new(),
                message: format!("Too many attributes (maximum {MAX_ATTRIBUTES})"),
            });
            return Err(errors);
        }
        let mut attrs = Attributes::new();
        for (name, value) in doc {
            match parse_attribute(catalogue, name, value) {
                Ok((_, None)) => {}
                Ok((field, Some(v))) => {
                    attrs.set(field, v);
                }
                Err(message) => errors.push(AttributeError {
                    field: name.clone(),
                    message,
                }),
            }
        }
        if errors.is_empty() {
            attrs.shrink_to_fit();
            Ok(attrs)
        } else {
            Err(errors)
        }
    }

    /// Parses a stored device document leniently: an attribute that no longer parses (the catalogue changed
    /// since it was stored) is skipped and reported to `skipped(field, message)`, the rest are kept. The
    /// worker and the API's previews both read stored devices this way, so they agree.
    pub fn from_stored_json(
        doc: &Map<String, Value>,
        catalogue: &Catalogue,
        mut skipped: impl FnMut(&str, &str),
    ) -> Self {
        let mut attrs = Attributes::new();
        for (name, value) in doc {
            match parse_attribute(catalogue, name, value) {
                Ok((field, Some(v))) => {
                    attrs.set(field, v);
                }
                Ok((_, None)) => {}
                Err(message) => skipped(name, &message),
            }
        }
        attrs.shrink_to_fit();
        attrs
    }

    /// Writes the attributes as a device document's JSON text, as [`Attributes::to_json`] renders them
    /// (keys in field order rather than by name: the stored `jsonb` orders keys itself). The worker stores
    /// every touched device's attributes this way, without building a `Value` tree.
    pub fn write_json(&self, catalogue: &Catalogue, out: &mut Vec<u8>) {
        // Serializing to a Vec cannot fail: names and values are strings, numbers and booleans.
        let _ = serde_json::to_writer(out, &DocumentJson(self, catalogue));
    }

    /// Writes what changed from `before` to `self` as a JSON object to merge into the stored document
    /// `before` renders (`jsonb ||`): every attribute that is new or different, and `null` for every one
    /// removed. Returns whether it holds a removal, for which the merged document must drop its `null`s
    /// (`jsonb_strip_nulls`). A heartbeat changes one or two of a device's attributes, so this is a few
    /// dozen bytes where the whole document is hundreds.
    pub fn write_json_patch(
        &self,
        before: &Attributes,
        catalogue: &Catalogue,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut entries: Vec<(FieldId, Option<&AttrValue>)> = Vec::new();
        let (mut old, mut new) = (
            before.entries.iter().peekable(),
            self.entries.iter().peekable(),
        );
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((f, _)), None) => {
                    entries.push((*f, None));
                    old.next();
                }
                (None, Some((f, v))) => {
                    entries.push((*f, Some(v)));
                    new.next();
                }
                (Some((fo, vo)), Some((fn_, vn))) => {
                    if fo < fn_ {
                        entries.push((*fo, None));
                        old.next();
                    } else if fn_ < fo {
                        entries.push((*fn_, Some(vn)));
                        new.next();
                    } else {
                        if vo != vn {
                            entries.push((*fn_, Some(vn)));
                        }
                        old.next();
                        new.next();
                    }
                }
            }
        }
        write_json_changes(&entries, catalogue, out)
    }

    /// Renders the attributes back to a device document (datetimes as RFC 3339 UTC with milliseconds).
    pub fn to_json(&self, catalogue: &Catalogue) -> Map<String, Value> {
        self.iter()
            .map(|(f, v)| {
                (
                    catalogue.name(f).into_string(),
                    value_to_json(catalogue, f, v),
                )
            })
            .collect()
    }
}

/// Resolves and parses one attribute. `Ok((field, None))` means the value was `null` (absent).
pub fn parse_attribute(
    catalogue: &Catalogue,
    name: &str,
    value: &Value,
) -> Result<(FieldId, Option<AttrValue>), String> {
    let field = catalogue.resolve(name).map_err(|e| match e {
        FieldLookupError::Unknown(f) => format!("Unknown field: {f}"),
        other => other.to_string(),
    })?;
    if catalogue.computed(field).is_some() {
        return Err(format!("Field {name} is computed and cannot be set"));
    }
    if value.is_null() {
        return Ok((field, None));
    }
    let declared = catalogue.builtin(name).is_some();
    parse_value(catalogue, field, name, value, declared).map(|v| (field, Some(v)))
}

fn parse_value(
    catalogue: &Catalogue,
    field: FieldId,
    name: &str,
    value: &Value,
    declared: bool,
) -> Result<AttrValue, String> {
    match catalogue.field_type(field) {
        FieldType::String => match value {
            Value::String(s) => checked_string(name, s).map(AttrValue::Str),
            // Undeclared custom fields take scalars as their JSON text (see module docs).
            Value::Number(n) if !declared => Ok(AttrValue::Str(n.to_string().into())),
            Value::Bool(b) if !declared => Ok(AttrValue::Str(b.to_string().into())),
            _ => Err(format!("Value for field {name} must be a string")),
        },
        FieldType::Number => value
            .as_f64()
            .filter(|n| n.is_finite())
            .map(AttrValue::Num)
            .ok_or_else(|| format!("Value for field {name} must be a number")),
        FieldType::Boolean => value
            .as_bool()
            .map(AttrValue::Bool)
            .ok_or_else(|| format!("Value for field {name} must be a boolean")),
        FieldType::Enum(values) => {
            let s = value
                .as_str()
                .ok_or_else(|| format!("Value for field {name} must be a string"))?;
            values
                .iter()
                .position(|v| &**v == s)
                .map(|i| AttrValue::Enum(i as u16))
                .ok_or_else(|| {
                    format!(
                        "Value {s:?} is not one of the allowed values for field {name}: {}",
                        values.join(", ")
                    )
                })
        }
        FieldType::Datetime => {
            let s = value.as_str().ok_or_else(|| {
                format!("Value for field {name} must be an RFC 3339 datetime string")
            })?;
            parse_datetime(s).map(AttrValue::Time).ok_or_else(|| {
                format!("Value for field {name} must be an RFC 3339 datetime string, got {s:?}")
            })
        }
        FieldType::StringArray => {
            let items = value
                .as_array()
                .ok_or_else(|| format!("Value for field {name} must be an array of strings"))?;
            if items.len() > MAX_ARRAY_ITEMS {
                return Err(format!(
                    "Value for field {name} has too many items (maximum {MAX_ARRAY_ITEMS})"
                ));
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => checked_string(name, s),
                    _ => Err(format!(
                        "Value for field {name} must be an array of strings"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| AttrValue::StrList(v.into_boxed_slice()))
        }
    }
}

fn checked_string(name: &str, s: &str) -> Result<AttrStr, String> {
    if s.len() > MAX_STRING_BYTES {
        Err(format!(
            "Value for field {name} is too long (maximum {MAX_STRING_BYTES} bytes)"
        ))
    } else if s.contains('\0') {
        // Device documents are stored as jsonb, which cannot hold U+0000: accepting one here would make
        // every write of the device fail, and the worker retry its batch forever.
        Err(format!(
            "Value for field {name} contains U+0000 (NUL), which cannot be stored"
        ))
    } else {
        Ok(s.into())
    }
}

/// Renders one attribute value as JSON.
pub fn value_to_json(catalogue: &Catalogue, field: FieldId, value: &AttrValue) -> Value {
    serde_json::to_value(ValueJson(catalogue, field, value)).unwrap_or(Value::Null)
}

/// An attribute value as a device document holds it: the one mapping behind [`value_to_json`] and
/// [`Attributes::write_json`]. Datetimes as RFC 3339 UTC with milliseconds; an enum as its value's name; a
/// number that JSON cannot hold, or an enum index out of range, as `null`.
struct ValueJson<'a>(&'a Catalogue, FieldId, &'a AttrValue);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ValueJson(catalogue, field, value) = *self;
        match value {
            AttrValue::Str(s) => serializer.serialize_str(s),
            AttrValue::Num(n) => match serde_json::Number::from_f64(*n) {
                Some(n) => n.serialize(serializer),
                None => serializer.serialize_unit(),
            },
            AttrValue::Bool(b) => serializer.serialize_bool(*b),
            AttrValue::Enum(i) => match catalogue.enum_values(field).get(*i as usize) {
                Some(s) => serializer.serialize_str(s),
                None => serializer.serialize_unit(),
            },
            AttrValue::Time(ms) => serializer.serialize_str(&format_millis(*ms)),
            AttrValue::StrList(items) => serializer.collect_seq(items.iter().map(|s| &**s)),
        }
    }
}

/// Writes attribute changes — (field, value now, or `None` for removed) — as a JSON object to merge into
/// the stored document (see [`Attributes::write_json_patch`]). Returns whether it holds a removal.
pub fn write_json_changes(
    changes: &[(FieldId, Option<&AttrValue>)],
    catalogue: &Catalogue,
    out: &mut Vec<u8>,
) -> bool {
    let removes = changes.iter().any(|(_, v)| v.is_none());
    // Serializing to a Vec cannot fail: names and values are strings, numbers and booleans.
    let _ = serde_json::to_writer(out, &PatchJson(changes, catalogue));
    removes
}

/// A patch: changed attributes, and `null` for removed ones.
struct PatchJson<'a>(&'a [(FieldId, Option<&'a AttrValue>)], &'a Catalogue);

impl Serialize for PatchJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let PatchJson(entries, catalogue) = *self;
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (field, value) in entries {
            catalogue.with_name(*field, |name| match value {
                Some(value) => map.serialize_entry(name, &ValueJson(catalogue, *field, value)),
                None => map.serialize_entry(name, &()),
            })?;
        }
        map.end()
    }
}

/// The whole document, in field order.
struct DocumentJson<'a>(&'a Attributes, &'a Catalogue);

impl Serialize for DocumentJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let DocumentJson(attrs, catalogue) = *self;
        let mut map = serializer.serialize_map(Some(attrs.len()))?;
        for (field, value) in attrs.iter() {
            catalogue.with_name(field, |name| {
                map.serialize_entry(name, &ValueJson(catalogue, field, value))
            })?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests;
