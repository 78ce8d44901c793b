//! The field catalogue: which attributes filters may reference, and their types.
//!
//! Built-in fields describe a device fleet (hostname, status, osType, …). Two computed numbers,
//! `daysSinceLastSeen` and `daysSinceEnrolled`, are derived from datetimes at evaluation time. Free-form
//! `custom.<key>` fields are strings unless the deployment's configuration declares another type for them.
//!
//! Undeclared custom keys are interned on first sight (from a filter or a device) so that every field has a
//! dense [`FieldId`]; the number of distinct custom keys is capped ([`CatalogueConfig::max_custom_fields`]) so
//! hostile input cannot grow the table without bound.

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

/// Dense identifier of a catalogue field; stable for the life of the process (not persisted).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldId(pub(crate) u32);

impl FieldId {
    /// The raw index, for dense per-field tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The type of a field, which decides the operators and values a filter may use with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// A closed set of string values; device values and filter values are interned as indexes into it.
    Enum(Vec<Box<str>>),
    /// A UTC instant with millisecond precision.
    Datetime,
    StringArray,
}

impl FieldType {
    /// The name used in configuration, errors and the API.
    pub fn name(&self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Enum(_) => "enum",
            FieldType::Datetime => "datetime",
            FieldType::StringArray => "string_array",
        }
    }
}

/// A field whose value is computed at evaluation time rather than stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Computed {
    /// Whole days elapsed since the source datetime (floor of elapsed milliseconds / 86,400,000; negative for a
    /// future instant). Missing when the source is missing.
    DaysSince(FieldId),
}

/// One catalogue entry.
#[derive(Clone, Debug)]
pub struct FieldDef {
    /// The name filters and device documents use (`hostname`, `custom.rack`).
    pub name: Box<str>,
    /// The value type; a computed field is a number.
    pub ty: FieldType,
    /// Set for computed fields; filters on them depend on the source field and on time.
    pub computed: Option<Computed>,
    /// Shown by the API's field listing.
    pub description: Box<str>,
}

/// Types a deployment can declare for custom fields in its configuration.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclaredType {
    String,
    Number,
    Boolean,
    Enum,
    Datetime,
    StringArray,
}

/// A custom field declared in configuration (`[[catalogue.custom_fields]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldConfig {
    /// The key after `custom.`: `rack` declares `custom.rack`.
    pub key: String,
    /// The declared type.
    #[serde(rename = "type")]
    pub ty: DeclaredType,
    /// Allowed values; required for `enum`, refused otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Free text for the API's field listing.
    #[serde(default)]
    pub description: String,
}

/// The `[catalogue]` section of the configuration: how a deployment extends the built-in fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogueConfig {
    /// Custom fields with a declared type; undeclared `custom.<key>` fields are strings.
    pub custom_fields: Vec<CustomFieldConfig>,
    /// Extra allowed values for built-in enum fields, e.g. `status = ["retired"]`.
    pub extra_enum_values: HashMap<String, Vec<String>>,
    /// Upper bound on distinct custom keys (declared and seen), protecting memory from hostile input.
    pub max_custom_fields: usize,
}

impl Default for CatalogueConfig {
    fn default() -> Self {
        Self {
            custom_fields: Vec::new(),
            extra_enum_values: HashMap::new(),
            max_custom_fields: 10_000,
        }
    }
}

/// Why a catalogue configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogueError {
    #[error("custom field key {0:?} is invalid: use 1-128 characters from A-Z a-z 0-9 _ - .")]
    InvalidKey(String),
    #[error("custom field custom.{0} is declared twice")]
    Duplicate(String),
    #[error("custom field custom.{0} is an enum and needs at least one value")]
    EnumWithoutValues(String),
    #[error("custom field custom.{0} is not an enum and cannot list values")]
    ValuesOnNonEnum(String),
    #[error("enum field {field} lists the value {value:?} twice")]
    DuplicateEnumValue { field: String, value: String },
    #[error("enum field {field} has more than {max} values")]
    TooManyEnumValues { field: String, max: usize },
    #[error("extra_enum_values names {0}, which is not a built-in enum field")]
    NotABuiltInEnum(String),
    #[error("max_custom_fields ({max}) is smaller than the {declared} declared custom fields")]
    CapTooSmall { max: usize, declared: usize },
}

/// Why a field name could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FieldLookupError {
    #[error("Unknown field: {0}")]
    Unknown(String),
    #[error("Too many distinct custom fields (maximum {0})")]
    CustomFieldCapReached(usize),
}

/// The prefix of free-form fields.
pub const CUSTOM_PREFIX: &str = "custom.";
/// The longest custom key (after the prefix).
pub const MAX_CUSTOM_KEY_LEN: usize = 128;
/// Enum values are interned as `u16`.
pub const MAX_ENUM_VALUES: usize = 1024;

const STATUS_VALUES: &[&str] = &["online", "offline", "maintenance", "decommissioned"];
const OS_TYPE_VALUES: &[&str] = &[
    "windows", "macos", "linux", "android", "ios", "rtos", "other",
];

/// Built-in stored fields, in `FieldId` order; the computed ones follow.
const BUILT_INS: &[(&str, BuiltInType, &str)] = &[
    ("hostname", BuiltInType::String, "The device's host name"),
    ("displayName", BuiltInType::String, "Human-friendly name"),
    (
        "status",
        BuiltInType::Enum(STATUS_VALUES),
        "Connectivity and lifecycle status",
    ),
    (
        "osType",
        BuiltInType::Enum(OS_TYPE_VALUES),
        "Operating system family",
    ),
    ("osVersion", BuiltInType::String, "Operating system version"),
    (
        "agentVersion",
        BuiltInType::String,
        "Version of the management agent",
    ),
    (
        "platform",
        BuiltInType::String,
        "Hardware platform or model",
    ),
    (
        "firmwareVersion",
        BuiltInType::String,
        "Firmware version the device reports running",
    ),
    (
        "uptimeSeconds",
        BuiltInType::Number,
        "Seconds since the last boot",
    ),
    (
        "enrolledAt",
        BuiltInType::Datetime,
        "When the device enrolled",
    ),
    (
        "lastSeenAt",
        BuiltInType::Datetime,
        "When the device last reported",
    ),
    ("tags", BuiltInType::StringArray, "Free-form labels"),
    (
        "siteId",
        BuiltInType::String,
        "The site the device belongs to; site-scoped groups only hold devices of their site",
    ),
    // Cellular identifiers as devices report them (formats are checked where the API looks devices up by
    // them, `crate::store::members::IdentifierKind`, not here: a report is stored as sent).
    (
        "imei",
        BuiltInType::String,
        "IMEI of the cellular modem (up to 15 decimal digits)",
    ),
    (
        "iccid",
        BuiltInType::String,
        "ICCID of the SIM card (up to 20 decimal digits)",
    ),
    (
        "esn",
        BuiltInType::String,
        "ESN of a CDMA device (11 decimal digits)",
    ),
    (
        "mdn",
        BuiltInType::String,
        "Mobile directory number (10 decimal digits)",
    ),
    (
        "meid",
        BuiltInType::String,
        "MEID of a CDMA device (14 hexadecimal characters)",
    ),
    (
        "msisdn",
        BuiltInType::String,
        "MSISDN of the subscription (11 decimal digits)",
    ),
];

#[derive(Copy, Clone)]
enum BuiltInType {
    String,
    Number,
    Enum(&'static [&'static str]),
    Datetime,
    StringArray,
}

/// The typed field table. Shared (behind an `Arc`) by every part that parses or evaluates attributes.
pub struct Catalogue {
    /// Fields known at start-up: built-ins, computed, declared custom fields.
    fixed: Vec<FieldDef>,
    fixed_by_name: HashMap<Box<str>, FieldId>,
    /// Undeclared custom fields interned at run time (always strings).
    dynamic: RwLock<DynamicFields>,
    max_custom_fields: usize,
    declared_custom: usize,
}

#[derive(Default)]
struct DynamicFields {
    names: Vec<Box<str>>,
    by_name: HashMap<Box<str>, FieldId>,
}

impl fmt::Debug for Catalogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalogue")
            .field("fixed_fields", &self.fixed.len())
            .field("max_custom_fields", &self.max_custom_fields)
            .finish()
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::from_config(&CatalogueConfig::default()).expect("the built-in catalogue is valid")
    }
}

/// Checks the syntax of a custom key (the part after `custom.`).
pub fn valid_custom_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_CUSTOM_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Catalogue {
    /// Builds the catalogue from built-ins plus the deployment's configuration.
    pub fn from_config(config: &CatalogueConfig) -> Result<Self, CatalogueError> {
        let mut fixed = Vec::new();
        for (name, ty, description) in BUILT_INS {
            let ty = match ty {
                BuiltInType::String => FieldType::String,
                BuiltInType::Number => FieldType::Number,
                BuiltInType::Datetime => FieldType::Datetime,
                BuiltInType::StringArray => FieldType::StringArray,
                BuiltInType::Enum(values) => {
                    let mut all: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                    if let Some(extra) = config.extra_enum_values.get(*name) {
                        all.extend(extra.iter().cloned());
                    }
                    FieldType::Enum(enum_values(name, all)?)
                }
            };
            fixed.push(FieldDef {
                name: (*name).into(),
                ty,
                computed: None,
                description: (*description).into(),
            });
        }
        for name in config.extra_enum_values.keys() {
            let is_enum = fixed
                .iter()
                .any(|f| &*f.name == name.as_str() && matches!(f.ty, FieldType::Enum(_)));
            if !is_enum {
                return Err(CatalogueError::NotABuiltInEnum(name.clone()));
            }
        }
        let id_of = |fixed: &[FieldDef], name: &str| {
            FieldId(
                fixed
                    .iter()
                    .position(|f| &*f.name == name)
                    .expect("built-in exists") as u32,
            )
        };
        let last_seen = id_of(&fixed, "lastSeenAt");
        let enrolled = id_of(&fixed, "enrolledAt");
        fixed.push(FieldDef {
            name: "daysSinceLastSeen".into(),
            ty: FieldType::Number,
            computed: Some(Computed::DaysSince(last_seen)),
            description: "Whole days since lastSeenAt, computed at evaluation time".into(),
        });
        fixed.push(FieldDef {
            name: "daysSinceEnrolled".into(),
            ty: FieldType::Number,
            computed: Some(Computed::DaysSince(enrolled)),
            description: "Whole days since enrolledAt, computed at evaluation time".into(),
        });
        let mut seen = std::collections::HashSet::new();
        for custom in &config.custom_fields {
            if !valid_custom_key(&custom.key) {
                return Err(CatalogueError::InvalidKey(custom.key.clone()));
            }
            if !seen.insert(custom.key.clone()) {
                return Err(CatalogueError::Duplicate(custom.key.clone()));
            }
            let ty = match custom.ty {
                DeclaredType::Enum => {
                    if custom.values.is_empty() {
                        return Err(CatalogueError::EnumWithoutValues(custom.key.clone()));
                    }
                    FieldType::Enum(enum_values(
                        &format!("{CUSTOM_PREFIX}{}", custom.key),
                        custom.values.clone(),
                    )?)
                }
                other => {
                    if !custom.values.is_empty() {
                        return Err(CatalogueError::ValuesOnNonEnum(custom.key.clone()));
                    }
                    match other {
                        DeclaredType::String => FieldType::String,
                        DeclaredType::Number => FieldType::Number,
                        DeclaredType::Boolean => FieldType::Boolean,
                        DeclaredType::Datetime => FieldType::Datetime,
                        DeclaredType::StringArray => FieldType::StringArray,
                        DeclaredType::Enum => unreachable!("handled above"),
                    }
                }
            };
            fixed.push(FieldDef {
                name: format!("{CUSTOM_PREFIX}{}", custom.key).into(),
                ty,
                computed: None,
                description: custom.description.clone().into(),
            });
        }
        if config.max_custom_fields < config.custom_fields.len() {
            return Err(CatalogueError::CapTooSmall {
                max: config.max_custom_fields,
                declared: config.custom_fields.len(),
            });
        }
        let fixed_by_name = fixed
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), FieldId(i as u32)))
            .collect();
        Ok(Self {
            fixed,
            fixed_by_name,
            dynamic: RwLock::new(DynamicFields::default()),
            max_custom_fields: config.max_custom_fields,
            declared_custom: config.custom_fields.len(),
        })
    }

    /// Resolves a field name, interning an undeclared `custom.<key>` as a string field.
    pub fn resolve(&self, name: &str) -> Result<FieldId, FieldLookupError> {
        if let Some(id) = self.fixed_by_name.get(name) {
            return Ok(*id);
        }
        let Some(key) = name.strip_prefix(CUSTOM_PREFIX) else {
            return Err(FieldLookupError::Unknown(name.to_string()));
        };
        if !valid_custom_key(key) {
            return Err(FieldLookupError::Unknown(name.to_string()));
        }
        if let Some(id) = self.read_dynamic().by_name.get(name) {
            return Ok(*id);
        }
        let mut dynamic = self.dynamic.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = dynamic.by_name.get(name) {
            return Ok(*id);
        }
        if self.declared_custom + dynamic.names.len() >= self.max_custom_fields {
            return Err(FieldLookupError::CustomFieldCapReached(
                self.max_custom_fields,
            ));
        }
        let id = FieldId((self.fixed.len() + dynamic.names.len()) as u32);
        dynamic.names.push(name.into());
        dynamic.by_name.insert(name.into(), id);
        Ok(id)
    }

    /// Resolves a name without interning; `None` for names never seen.
    pub fn lookup(&self, name: &str) -> Option<FieldId> {
        self.fixed_by_name
            .get(name)
            .copied()
            .or_else(|| self.read_dynamic().by_name.get(name).copied())
    }

    /// The field's type. Interned custom fields are strings.
    pub fn field_type(&self, id: FieldId) -> FieldType {
        match self.fixed.get(id.index()) {
            Some(def) => def.ty.clone(),
            None => FieldType::String,
        }
    }

    /// Whether `id` is a computed field, and from what.
    pub fn computed(&self, id: FieldId) -> Option<Computed> {
        self.fixed.get(id.index()).and_then(|d| d.computed)
    }

    /// The field's name, for explanations and JSON output.
    pub fn name(&self, id: FieldId) -> Box<str> {
        self.with_name(id, |name| name.into())
    }

    /// Calls `f` with the field's name, without copying it.
    pub fn with_name<R>(&self, id: FieldId, f: impl FnOnce(&str) -> R) -> R {
        match self.fixed.get(id.index()) {
            Some(def) => f(&def.name),
            None => {
                let dynamic = self.read_dynamic();
                match dynamic.names.get(id.index() - self.fixed.len()) {
                    Some(name) => f(name),
                    None => f(&format!("<field {}>", id.0)),
                }
            }
        }
    }

    /// The allowed values of an enum field (empty for other types).
    pub fn enum_values(&self, id: FieldId) -> &[Box<str>] {
        match self.fixed.get(id.index()).map(|d| &d.ty) {
            Some(FieldType::Enum(values)) => values,
            _ => &[],
        }
    }

    /// The fields known at start-up (built-in, computed and declared), for the API's field listing.
    pub fn fixed_fields(&self) -> impl Iterator<Item = (FieldId, &FieldDef)> {
        self.fixed
            .iter()
            .enumerate()
            .map(|(i, d)| (FieldId(i as u32), d))
    }

    /// Looks up a field of the fixed table by name, for callers that need a built-in's id.
    pub fn builtin(&self, name: &str) -> Option<FieldId> {
        self.fixed_by_name.get(name).copied()
    }

    fn read_dynamic(&self) -> std::sync::RwLockReadGuard<'_, DynamicFields> {
        // A panic while holding the lock cannot leave the table inconsistent (push then insert), so a
        // poisoned lock is still safe to read.
        self.dynamic.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn enum_values(field: &str, values: Vec<String>) -> Result<Vec<Box<str>>, CatalogueError> {
    if values.len() > MAX_ENUM_VALUES {
        return Err(CatalogueError::TooManyEnumValues {
            field: field.to_string(),
            max: MAX_ENUM_VALUES,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for v in &values {
        if !seen.insert(v.as_str()) {
            return Err(CatalogueError::DuplicateEnumValue {
                field: field.to_string(),
                value: v.clone(),
            });
        }
    }
    Ok(values.into_iter().map(String::into_boxed_str).collect())
}

#[cfg(test)]
mod tests;
