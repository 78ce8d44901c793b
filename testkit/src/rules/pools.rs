//! Value pools shared by the property tests' generators (`rules::gen`) and the fuzz checks
//! ([`crate::fuzz`]): strings chosen where case-insensitive and Unicode comparisons go wrong, so that
//! generated filters and devices meet the hard cases often.

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
