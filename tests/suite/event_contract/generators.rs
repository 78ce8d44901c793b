//! Generators of valid events (every key and attribute kind, at and near the limits) and of byte-level and
//! JSON-level edits that may break them.

use std::collections::BTreeSet;

use cohort::event::{
    DeviceEventJson, MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS,
    MAX_ORG_ID_CHARS,
};
use cohort::rules::time::{format_millis, MAX_MILLIS, MIN_MILLIS};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Characters allowed in ids: anything but control characters.
const ID_CHARS: &str = "[^\\p{Cc}]";

fn id(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("{ID_CHARS}{{1,12}}")).unwrap(),
        1 => proptest::string::string_regex(&format!("{ID_CHARS}{{{max}}}")).unwrap(),
        2 => "[a-z0-9-]{1,12}",
    ]
}

pub(super) fn text() -> impl Strategy<Value = String> {
    // Control characters are fine inside attribute values (JSON escapes them), all but U+0000, which
    // PostgreSQL cannot store and the decoder refuses.
    proptest::string::string_regex("[^\\x00]{0,16}").unwrap()
}

fn datetime() -> impl Strategy<Value = String> {
    (MIN_MILLIS..=MAX_MILLIS).prop_map(format_millis)
}

/// An attribute as sent, and the value `to_json` gives back for it.
pub(super) fn attribute(name: &'static str) -> BoxedStrategy<(Value, Value)> {
    let same = |v: Value| (v.clone(), v);
    match name {
        "hostname" | "displayName" | "osVersion" | "siteId" | "firmwareVersion" => {
            text().prop_map(move |s| same(json!(s))).boxed()
        }
        "status" => {
            prop::sample::select(vec!["online", "offline", "maintenance", "decommissioned"])
                .prop_map(move |s| same(json!(s)))
                .boxed()
        }
        "osType" => prop::sample::select(vec!["linux", "rtos", "other"])
            .prop_map(move |s| same(json!(s)))
            .boxed(),
        "uptimeSeconds" => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(move |f| same(json!(f)))
            .boxed(),
        "lastSeenAt" | "enrolledAt" => datetime().prop_map(move |s| same(json!(s))).boxed(),
        "tags" => prop::collection::vec(text(), 0..4)
            .prop_map(move |v| same(json!(v)))
            .boxed(),
        // An undeclared custom field: a string, or a number or boolean stored as its JSON text.
        _ => prop_oneof![
            text().prop_map(|s| (json!(s), json!(s))),
            any::<i64>().prop_map(|n| (json!(n), json!(n.to_string()))),
            any::<bool>().prop_map(|b| (json!(b), json!(b.to_string()))),
        ]
        .boxed(),
    }
}

const FIELDS: [&str; 13] = [
    "hostname",
    "displayName",
    "status",
    "osType",
    "osVersion",
    "siteId",
    "firmwareVersion",
    "uptimeSeconds",
    "lastSeenAt",
    "enrolledAt",
    "tags",
    "custom.rack",
    "custom.cooled",
];

/// What happens to one field in a generated event.
#[derive(Clone, Debug)]
enum Change {
    Untouched,
    Set(Value, Value),
    Null,
    Removed,
    NullAndRemoved,
}

fn change(name: &'static str) -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => Just(Change::Untouched),
        4 => attribute(name).prop_map(|(sent, back)| Change::Set(sent, back)),
        1 => Just(Change::Null),
        1 => Just(Change::Removed),
        1 => Just(Change::NullAndRemoved),
    ]
}

/// A valid event, with the attributes `to_json` should give back and the names it should remove.
#[derive(Clone, Debug)]
pub(super) struct Valid {
    pub(super) json: DeviceEventJson,
    pub(super) expected_set: Map<String, Value>,
    pub(super) expected_removed: BTreeSet<String>,
}

pub(super) fn valid_event() -> impl Strategy<Value = Valid> {
    let changes: Vec<_> = FIELDS.iter().map(|name| change(name)).collect();
    (
        id(MAX_EVENT_ID_CHARS),
        id(MAX_ORG_ID_CHARS),
        id(MAX_DEVICE_ID_CHARS),
        prop_oneof![Just(0i64), Just(i64::MAX), 0..=i64::MAX],
        changes,
        any::<Option<bool>>(),
        prop::option::of(prop::option::of(id(MAX_FIRMWARE_LOCK_CHARS))),
        prop::option::of(datetime()),
    )
        .prop_map(
            |(event_id, org_id, device_id, sequence, changes, development, lock, at)| {
                let mut json = DeviceEventJson::new(event_id, org_id, device_id, sequence);
                json.development = development;
                json.firmware_lock = lock;
                json.occurred_at = at;
                let mut expected_set = Map::new();
                let mut expected_removed = BTreeSet::new();
                for (name, change) in FIELDS.iter().zip(changes) {
                    let name = name.to_string();
                    match change {
                        Change::Untouched => {}
                        Change::Set(sent, back) => {
                            json.attributes.insert(name.clone(), sent);
                            expected_set.insert(name, back);
                        }
                        Change::Null => {
                            json.attributes.insert(name.clone(), Value::Null);
                            expected_removed.insert(name);
                        }
                        Change::Removed => {
                            json.removed.push(name.clone());
                            expected_removed.insert(name);
                        }
                        Change::NullAndRemoved => {
                            json.attributes.insert(name.clone(), Value::Null);
                            json.removed.push(name.clone());
                            expected_removed.insert(name);
                        }
                    }
                }
                Valid {
                    json,
                    expected_set,
                    expected_removed,
                }
            },
        )
}

pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::from),
        prop::sample::select(vec![
            "hostname",
            "daysSinceLastSeen",
            "custom.x",
            "online",
            "2024-06-15T11:00:00Z",
            "+275760-09-13T00:00:00Z",
            "",
            "\u{0}",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["hostname", "tags", "custom.r", "x", "status"])
                    .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A byte-level edit of an encoded event.
#[derive(Clone, Debug)]
pub(super) enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, &'static str),
}

pub(super) fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "null",
        "-1",
        "1e300",
        "\u{0}",
        "\u{ff}",
        "\"sequence\":",
        "\"orgId\":\"x\",",
        "\\u0000",
        "\\ud800",
    ]);
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<usize>().prop_map(Edit::Delete),
            any::<usize>().prop_map(Edit::Truncate),
            (any::<usize>(), token).prop_map(|(i, t)| Edit::Splice(i, t)),
        ],
        1..4,
    )
}

pub(super) fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let n = bytes.len();
        let at = |i: usize| if n == 0 { 0 } else { i % (n + 1) };
        match *edit {
            Edit::Flip(i, b) if n > 0 => bytes[i % n] = b,
            Edit::Flip(..) => {}
            Edit::Insert(i, b) => bytes.insert(at(i), b),
            Edit::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Delete(_) => {}
            Edit::Truncate(i) => bytes.truncate(at(i)),
            Edit::Splice(i, token) => {
                let at = at(i);
                bytes.splice(at..at, token.bytes());
            }
        }
    }
    bytes
}
