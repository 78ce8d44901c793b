//! Value pools shared by the property tests' generators (`rules::gen`) and the fuzz checks
//! ([`crate::fuzz`]): strings chosen where case-insensitive and Unicode comparisons go wrong, so that
//! generated filters and devices meet the hard cases often; and the catalogue, day counts and instant
//! offsets both draw from.

use cohort::rules::catalogue::{CustomFieldConfig, DeclaredType};
use cohort::rules::{Catalogue, CatalogueConfig};

use super::reference::{DAY, RING};

/// The catalogue of the tests: built-ins plus `custom.cpu` (number), `custom.beta` (boolean),
/// `custom.ring` (enum) and `custom.installedAt` (datetime); the reference evaluator knows these kinds.
/// `custom.rack` and `custom.owner` stay undeclared (strings). A fresh one per call, because resolving an
/// undeclared `custom.<key>` interns it.
pub fn test_catalogue() -> Catalogue {
    let declare = |key: &str, ty: DeclaredType, values: &[&str]| CustomFieldConfig {
        key: key.to_string(),
        ty,
        values: values.iter().map(|v| v.to_string()).collect(),
        description: String::new(),
    };
    let config = CatalogueConfig {
        custom_fields: vec![
            declare("cpu", DeclaredType::Number, &[]),
            declare("beta", DeclaredType::Boolean, &[]),
            declare("ring", DeclaredType::Enum, RING),
            declare("installedAt", DeclaredType::Datetime, &[]),
        ],
        ..CatalogueConfig::default()
    };
    Catalogue::from_config(&config).expect("the test catalogue is valid")
}

/// Filter numbers for the computed day counts.
pub const DAY_COUNTS: &[f64] = &[-1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 7.0, 30.0, 31.0, 365.0];

/// Offsets from "now" (ms) where time conditions change truth: a minute, an hour, a day and the month and
/// year lengths, each exactly, one ms either side where it matters, and in both directions.
pub const INSTANT_DELTAS: &[i64] = &[
    0,
    1,
    -1,
    59_999,
    -59_999,
    60_000,
    -60_000,
    3_600_000,
    -3_600_000,
    DAY - 1,
    1 - DAY,
    DAY,
    -DAY,
    DAY + 1,
    -DAY - 1,
    7 * DAY,
    -7 * DAY,
    28 * DAY,
    -28 * DAY,
    30 * DAY,
    -30 * DAY,
    31 * DAY,
    -31 * DAY,
    365 * DAY,
    -365 * DAY,
];

pub const DEVICE_STRINGS: &[&str] = &[
    "web-01",
    "WEB-01",
    "web-02",
    "db-01",
    "Straße-7",
    "STRASSE-7",
    "ẞtraße",
    "Äpfel",
    "äpfel",
    "İstanbul",
    "istanbul",
    "\u{212A}elvin",
    "ΟΔΟΣ",
    "",
    " ",
];

pub const NEEDLES: &[&str] = &[
    "web",
    "WEB-0",
    "01",
    "-0",
    "ß",
    "SS",
    "straße",
    "STRASSE",
    "ä",
    "ÄPFEL",
    "i",
    "İ",
    "i\u{307}stan",
    "kelvin",
    "K",
    "σ",
    "ος",
    "",
    "zzz",
    "-",
    "-7",
    "EL",
    "BUL",
];

pub const REGEXES: &[&str] = &[
    "^web",
    "0[12]$",
    "(?i)^straße",
    "ß",
    "^$",
    "Ä|ä",
    "\\p{Lu}",
    ".",
    "^[a-z]+-\\d+$",
    "İ",
    "(?i)kelvin",
    "^\\s*$",
];
