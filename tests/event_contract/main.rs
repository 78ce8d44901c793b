//! The `device-attribute-changes` contract (`cohort::event`) against its published files in `schemas/`.
//!
//! - Every example in `schemas/examples/device-attribute-changes/` decodes, or fails with the reason in its
//!   name; every reason `decode` can produce has an example; the schema accepts the valid examples and
//!   refuses the invalid events it can express.
//! - The schema lists exactly the keys and limits the decoder uses, and the dead-letter schema lists
//!   exactly the reasons and describes every dead letter `dead_letter` builds.
//! - Properties: `decode` never panics (arbitrary bytes, byte-level and JSON-level mutations of valid
//!   events); whatever it accepts, the schema accepts too; a valid encoded event always decodes, to what
//!   was sent; every failure makes a dead letter the dead-letter schema accepts.

mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use cohort::event::{
    dead_letter, decode, encode, DeadLetterReason, DecodeError, DeviceEventJson, EVENT_KEYS,
    MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
    MAX_REMOVED, REQUIRED_KEYS,
};
use cohort::rules::attrs::MAX_ATTRIBUTES;
use cohort::rules::time::{format_millis, MAX_MILLIS, MIN_MILLIS};
use cohort::rules::Catalogue;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};

use schema::Schema;

/// The value size limit the examples are decoded with (see `schemas/README.md`).
const EXAMPLES_MAX_BYTES: usize = 4096;
/// The limit used elsewhere: the configuration's default `worker.max_event_bytes`.
const MAX_BYTES: usize = 65_536;

/// The reasons `decode` decides; the org checks belong to the worker.
const DECODE_REASONS: [DeadLetterReason; 6] = [
    DeadLetterReason::EmptyPayload,
    DeadLetterReason::Oversize,
    DeadLetterReason::MalformedJson,
    DeadLetterReason::InvalidEvent,
    DeadLetterReason::InvalidAttributes,
    DeadLetterReason::KeyMismatch,
];

/// Invalid events whose fault is beyond what JSON Schema (or this schema) expresses; each is named in the
/// schema's description. The examples test checks that the schema does accept each of these, so the list
/// stays exact.
const BEYOND_SCHEMA: &[&str] = &[
    "invalid-invalid_event-absurd-occurred-at.json", // `format` is an annotation
    "invalid-invalid_event-computed-removed-field.json", // the catalogue decides
    "invalid-invalid_event-duplicate-key.json",      // a parsed document cannot show it
    "invalid-invalid_event-sequence-with-fraction.json", // 42.0 is a JSON Schema integer
    "invalid-invalid_event-set-and-removed.json",
    "invalid-invalid_event-unknown-removed-field.json",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn event_schema() -> Schema {
    Schema::load(repo().join("schemas/device-attribute-changes.schema.json"))
}

fn dead_letter_schema() -> Schema {
    Schema::load(repo().join("schemas/dead-letter.schema.json"))
}

fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        ..Config::default()
    }
}

struct Example {
    name: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn examples() -> Vec<Example> {
    let dir = repo().join("schemas/examples/device-attribute-changes");
    let mut examples = Vec::new();
    let mut keys = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let key_path = path.with_extension("key");
                let key = key_path.exists().then(|| std::fs::read(&key_path).unwrap());
                examples.push(Example {
                    name,
                    key,
                    payload: std::fs::read(&path).unwrap(),
                });
            }
            Some("key") => {
                keys.insert(path.with_extension("json"));
            }
            _ => panic!("unexpected file {name} among the examples (only .json and .key)"),
        }
    }
    for key in keys {
        assert!(
            key.exists(),
            "{} has no example it is the key of",
            key.display()
        );
    }
    examples.sort_by(|a, b| a.name.cmp(&b.name));
    examples
}

/// The reason in an example's name, `None` for a valid one.
fn expected_reason(name: &str) -> Option<DeadLetterReason> {
    if name.starts_with("valid-") {
        return None;
    }
    let rest = name
        .strip_prefix("invalid-")
        .unwrap_or_else(|| panic!("{name} is neither valid-… nor invalid-…"));
    let reason = rest.split('-').next().unwrap();
    Some(DeadLetterReason::parse(reason).unwrap_or_else(|| panic!("{name}: no reason {reason:?}")))
}

#[test]
fn every_example_decodes_or_fails_with_the_reason_in_its_name() {
    let catalogue = Catalogue::default();
    let schema = event_schema();
    let examples = examples();
    let mut seen = BTreeSet::new();
    let mut valid = 0;
    for example in &examples {
        let result = decode(
            example.key.as_deref(),
            Some(&example.payload),
            &catalogue,
            EXAMPLES_MAX_BYTES,
        );
        let parsed: Option<Value> = serde_json::from_slice(&example.payload).ok();
        match (expected_reason(&example.name), result) {
            (None, Ok(event)) => {
                valid += 1;
                let errors = schema.errors(parsed.as_ref().unwrap());
                assert!(errors.is_empty(), "{}: {errors:?}", example.name);
                // The example means what it says once re-encoded.
                let again = decode(
                    None,
                    Some(&encode(&event.to_json(&catalogue))),
                    &catalogue,
                    MAX_BYTES,
                )
                .unwrap();
                assert_eq!(again, event, "{}", example.name);
            }
            (None, Err(e)) => panic!("{} should decode: {e}", example.name),
            (Some(reason), Ok(_)) => panic!("{} decoded, expected {reason}", example.name),
            (Some(reason), Err(e)) => {
                assert_eq!(e.reason, reason, "{}: {e}", example.name);
                seen.insert(reason.as_str());
                if reason == DeadLetterReason::InvalidEvent {
                    let errors = schema.errors(parsed.as_ref().unwrap());
                    let beyond = BEYOND_SCHEMA.contains(&example.name.as_str());
                    assert_eq!(
                        errors.is_empty(),
                        beyond,
                        "{}: the schema should {} it ({errors:?})",
                        example.name,
                        if beyond { "accept" } else { "refuse" }
                    );
                }
            }
        }
    }
    assert!(valid >= 3, "too few valid examples");
    let wanted: BTreeSet<_> = DECODE_REASONS.iter().map(|r| r.as_str()).collect();
    assert_eq!(seen, wanted, "every reason decode produces has an example");
    for name in BEYOND_SCHEMA {
        assert!(
            examples.iter().any(|e| e.name == *name),
            "{name} is listed but missing"
        );
    }
}

#[test]
fn the_schema_lists_exactly_the_keys_and_limits_the_decoder_uses() {
    let schema = event_schema().root;
    let properties = schema["properties"].as_object().unwrap();
    let keys: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
    assert_eq!(keys, EVENT_KEYS.into_iter().collect());
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(required, REQUIRED_KEYS.into_iter().collect());
    assert_eq!(schema["additionalProperties"], json!(false));
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    for (key, value) in properties {
        assert!(
            value["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{key} has no description"
        );
    }

    let id_limit = |key: &str| {
        let p = &properties[key];
        let p = match p["$ref"].as_str() {
            Some(r) => &schema["$defs"][r.strip_prefix("#/$defs/").unwrap()],
            None => p,
        };
        (
            p["minLength"].as_u64(),
            p["maxLength"].as_u64().unwrap() as usize,
        )
    };
    assert_eq!(id_limit("eventId"), (Some(1), MAX_EVENT_ID_CHARS));
    assert_eq!(id_limit("orgId"), (Some(1), MAX_ORG_ID_CHARS));
    assert_eq!(id_limit("deviceId"), (Some(1), MAX_DEVICE_ID_CHARS));
    assert_eq!(id_limit("firmwareLock"), (Some(1), MAX_FIRMWARE_LOCK_CHARS));
    assert_eq!(properties["sequence"]["minimum"], json!(0));
    assert_eq!(properties["sequence"]["maximum"], json!(i64::MAX));
    assert_eq!(properties["removed"]["maxItems"], json!(MAX_REMOVED));
    assert_eq!(
        properties["attributes"]["maxProperties"],
        json!(MAX_ATTRIBUTES)
    );
    assert_eq!(
        properties["firmwareLock"]["type"],
        json!(["string", "null"])
    );
}

#[test]
fn the_decoder_refuses_exactly_the_keys_the_schema_does_not_list() {
    let catalogue = Catalogue::default();
    let base = json!({"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1});
    for key in ["colour", "EventId", "event_id", "attributes ", ""] {
        let mut event = base.clone();
        event[key] = json!(1);
        let err = decode(
            None,
            Some(event.to_string().as_bytes()),
            &catalogue,
            MAX_BYTES,
        )
        .unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::InvalidEvent, "{key:?}");
        assert!(!event_schema().errors(&event).is_empty(), "{key:?}");
    }
    for key in REQUIRED_KEYS {
        let mut event = base.clone();
        event.as_object_mut().unwrap().remove(key);
        let err = decode(
            None,
            Some(event.to_string().as_bytes()),
            &catalogue,
            MAX_BYTES,
        )
        .unwrap_err();
        assert_eq!(err.detail, format!("missing required key {key}"));
    }
}

#[test]
fn the_dead_letter_schema_lists_every_reason() {
    let schema = dead_letter_schema().root;
    let reasons: Vec<&str> = schema["properties"]["reason"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let all: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(reasons, all);
}

#[test]
fn every_example_failure_makes_a_dead_letter_the_schema_accepts() {
    let catalogue = Catalogue::default();
    let schema = dead_letter_schema();
    for example in examples() {
        let Err(error) = decode(
            example.key.as_deref(),
            Some(&example.payload),
            &catalogue,
            EXAMPLES_MAX_BYTES,
        ) else {
            continue;
        };
        let message = dead_letter(
            "cohort-dead-letters",
            "device-attribute-changes",
            2,
            1234,
            example.key.as_deref(),
            Some(&example.payload),
            &error,
            EXAMPLES_MAX_BYTES,
        );
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        let errors = schema.errors(&body);
        assert!(errors.is_empty(), "{}: {errors:?}", example.name);
        assert_eq!(body["reason"], error.reason.as_str());
        assert_eq!(message.key, example.key);
        // What was embedded is the original (or a prefix of it).
        let embedded = match body["payload"].as_str() {
            Some(text) => text.as_bytes().to_vec(),
            None => base64::engine::general_purpose::STANDARD
                .decode(body["payloadBase64"].as_str().unwrap())
                .unwrap(),
        };
        assert!(example.payload.starts_with(&embedded), "{}", example.name);
        assert_eq!(
            body["truncated"],
            json!(embedded.len() < example.payload.len()),
            "{}",
            example.name
        );
    }
}

#[test]
fn a_non_utf8_example_comes_back_byte_for_byte_from_its_dead_letter() {
    let catalogue = Catalogue::default();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/examples/device-attribute-changes/invalid-malformed_json-not-utf8.json");
    let payload = std::fs::read(path).unwrap();
    assert!(std::str::from_utf8(&payload).is_err());
    let error = decode(Some(b"gw-17"), Some(&payload), &catalogue, MAX_BYTES).unwrap_err();
    let message = dead_letter(
        "dlq",
        "in",
        0,
        7,
        Some(b"gw-17"),
        Some(&payload),
        &error,
        MAX_BYTES,
    );
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["payload"], Value::Null);
    assert_eq!(body["truncated"], json!(false));
    assert_eq!(body["payloadBytes"], json!(payload.len()));
    let back = base64::engine::general_purpose::STANDARD
        .decode(body["payloadBase64"].as_str().unwrap())
        .unwrap();
    assert_eq!(back, payload);
}

#[test]
fn hostile_inputs_are_classified_and_dead_lettered() {
    let catalogue = Catalogue::default();
    let schema = dead_letter_schema();
    let base = r#"{"eventId":"e","orgId":"o","deviceId":"d","#;
    let deep = format!(
        r#"{base}"sequence":1,"attributes":{{"custom.x":{}1{}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let ten_mib = format!(
        r#"{base}"sequence":1,"attributes":{{"hostname":"{}"}}}}"#,
        "a".repeat(10 * 1024 * 1024)
    );
    let cases: Vec<(Vec<u8>, DeadLetterReason)> = vec![
        (deep.into_bytes(), DeadLetterReason::MalformedJson),
        (ten_mib.into_bytes(), DeadLetterReason::Oversize),
        (
            b"{\"eventId\":\"\xc3\x28\"}".to_vec(),
            DeadLetterReason::MalformedJson,
        ),
        (
            format!(r#"{base}"sequence":1e300}}"#).into_bytes(),
            DeadLetterReason::InvalidEvent,
        ),
        (
            format!(r#"{base}"sequence":-1}}"#).into_bytes(),
            DeadLetterReason::InvalidEvent,
        ),
        (
            format!(r#"{base}"sequence":9223372036854775808}}"#).into_bytes(),
            DeadLetterReason::InvalidEvent,
        ),
        (
            format!(r#"{base}"sequence":1,"sequence":2}}"#).into_bytes(),
            DeadLetterReason::InvalidEvent,
        ),
        (
            br#"{"eventId":"e","orgId":"o","deviceId":"d\u0000","sequence":1}"#.to_vec(),
            DeadLetterReason::InvalidEvent,
        ),
        (
            format!(r#"{base}"sequence":1,"occurredAt":"+275760-09-13T00:00:00Z"}}"#).into_bytes(),
            DeadLetterReason::InvalidEvent,
        ),
    ];
    for (payload, reason) in cases {
        let prefix = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
        let error = decode(Some(b"d"), Some(&payload), &catalogue, MAX_BYTES).unwrap_err();
        assert_eq!(error.reason, reason, "{prefix}: {error}");
        assert!(error.detail.len() <= 1100, "{prefix}");
        let message = dead_letter(
            "dlq",
            "in",
            0,
            1,
            Some(b"d"),
            Some(&payload),
            &error,
            MAX_BYTES,
        );
        assert!(message.payload.len() <= MAX_BYTES + 2048, "{prefix}");
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert!(schema.errors(&body).is_empty(), "{prefix}");
    }
}

#[test]
fn duplicate_keys_are_refused_rather_than_resolved_last_wins() {
    // serde_json alone would keep the last `orgId` ("globex"); a first-wins parser upstream would see
    // "acme". Refusing the event keeps every reader in agreement.
    let catalogue = Catalogue::default();
    let payload = br#"{"eventId":"e","orgId":"acme","deviceId":"d","sequence":1,"orgId":"globex"}"#;
    let last_wins: Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(last_wins["orgId"], "globex");
    let error = decode(None, Some(payload), &catalogue, MAX_BYTES).unwrap_err();
    assert_eq!(error.reason, DeadLetterReason::InvalidEvent);
    assert!(
        error.detail.starts_with("duplicate key \"orgId\""),
        "{error}"
    );
}

// ---- generators ----

/// Characters allowed in ids: anything but control characters.
const ID_CHARS: &str = "[^\\p{Cc}]";

fn id(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("{ID_CHARS}{{1,12}}")).unwrap(),
        1 => proptest::string::string_regex(&format!("{ID_CHARS}{{{max}}}")).unwrap(),
        2 => "[a-z0-9-]{1,12}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    // Control characters are fine inside attribute values (JSON escapes them), all but U+0000, which
    // PostgreSQL cannot store and the decoder refuses.
    proptest::string::string_regex("[^\\x00]{0,16}").unwrap()
}

fn datetime() -> impl Strategy<Value = String> {
    (MIN_MILLIS..=MAX_MILLIS).prop_map(format_millis)
}

/// An attribute as sent, and the value `to_json` gives back for it.
fn attribute(name: &'static str) -> BoxedStrategy<(Value, Value)> {
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
struct Valid {
    json: DeviceEventJson,
    expected_set: Map<String, Value>,
    expected_removed: BTreeSet<String>,
}

fn valid_event() -> impl Strategy<Value = Valid> {
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

fn json_value() -> impl Strategy<Value = Value> {
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
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, &'static str),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
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

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
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

/// What every decode outcome must satisfy: an accepted event is schema-valid and round-trips; a refused
/// one makes a schema-valid dead letter.
fn check_outcome(
    catalogue: &Catalogue,
    key: Option<&[u8]>,
    payload: &[u8],
    result: Result<cohort::event::DeviceEvent, DecodeError>,
    event_schema: &Schema,
    dead_letter_schema: &Schema,
) -> Result<(), TestCaseError> {
    match result {
        Ok(event) => {
            let value: Value = serde_json::from_slice(payload).unwrap();
            let errors = event_schema.errors(&value);
            prop_assert!(errors.is_empty(), "accepted but schema-invalid: {errors:?}");
            let again = decode(
                None,
                Some(&encode(&event.to_json(catalogue))),
                catalogue,
                MAX_BYTES,
            );
            prop_assert_eq!(again.as_ref(), Ok(&event));
        }
        Err(error) => {
            prop_assert!(DECODE_REASONS.contains(&error.reason), "{:?}", error.reason);
            prop_assert!(!error.detail.chars().any(char::is_control));
            let message = dead_letter("dlq", "in", 1, 2, key, Some(payload), &error, MAX_BYTES);
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            let errors = dead_letter_schema.errors(&body);
            prop_assert!(errors.is_empty(), "{errors:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let catalogue = Catalogue::default();
        let result = decode(key.as_deref(), Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, key.as_deref(), &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn decode_never_panics_on_byte_edits_of_a_valid_event(valid in valid_event(), edits in edits()) {
        let catalogue = Catalogue::default();
        let payload = apply(encode(&valid.json), &edits);
        let key = Some(valid.json.device_id.as_bytes());
        let result = decode(key, Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, key, &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn decode_never_panics_on_json_edits_of_a_valid_event(
        valid in valid_event(),
        key in prop::sample::select(EVENT_KEYS.iter().copied().chain(["colour"]).collect::<Vec<_>>()),
        replacement in prop::option::of(json_value()),
    ) {
        let catalogue = Catalogue::default();
        let mut value = serde_json::to_value(&valid.json).unwrap();
        let object = value.as_object_mut().unwrap();
        match replacement {
            Some(v) => { object.insert(key.to_string(), v); }
            None => { object.remove(key); }
        }
        let payload = value.to_string().into_bytes();
        let result = decode(None, Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, None, &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn a_valid_encoded_event_always_decodes_to_what_was_sent(valid in valid_event()) {
        let catalogue = Catalogue::default();
        let payload = encode(&valid.json);
        let sent: Value = serde_json::from_slice(&payload).unwrap();
        let errors = event_schema().errors(&sent);
        prop_assert!(errors.is_empty(), "{errors:?}");
        let event = decode(Some(valid.json.device_id.as_bytes()), Some(&payload), &catalogue, MAX_BYTES)
            .map_err(|e| TestCaseError::fail(format!("{e} for {}", String::from_utf8_lossy(&payload))))?;
        prop_assert_eq!(&event.event_id, &valid.json.event_id);
        prop_assert_eq!(&event.org_id, &valid.json.org_id);
        prop_assert_eq!(&event.device_id, &valid.json.device_id);
        prop_assert_eq!(event.sequence, valid.json.sequence);
        prop_assert_eq!(event.development, valid.json.development);
        prop_assert_eq!(&event.firmware_lock, &valid.json.firmware_lock);
        prop_assert_eq!(event.occurred_at.map(format_millis), valid.json.occurred_at.clone());
        let back = event.to_json(&catalogue);
        let set: BTreeMap<_, _> = back.attributes.into_iter().collect();
        let expected: BTreeMap<_, _> = valid.expected_set.into_iter().collect();
        prop_assert_eq!(set, expected);
        let removed: BTreeSet<_> = back.removed.into_iter().collect();
        prop_assert_eq!(removed, valid.expected_removed);
        prop_assert_eq!(event.changed_fields().count(), event.set.len() + event.removed.len());
        let again = decode(None, Some(&encode(&event.to_json(&catalogue))), &catalogue, MAX_BYTES);
        prop_assert_eq!(again.as_ref(), Ok(&event));
    }
}

/// Rollout-target events as the worker builds them validate against the published schema, for every kind
/// of cause and target.
#[test]
fn rollout_target_events_match_their_schema() {
    use cohort::firmware::{rollout_event, Reason, Target};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = schema::Schema::load(root.join("schemas/rollout-target.schema.json"));
    let group = uuid::Uuid::from_u128(7);
    let targets = [
        Target::none(),
        Target {
            version: Some("2.4.1".into()),
            reason: Reason::Group,
            group: Some(group),
        },
        Target {
            version: Some("17".into()),
            reason: Reason::Default,
            group: None,
        },
        Target {
            version: Some("3".into()),
            reason: Reason::Locked,
            group: None,
        },
        Target {
            version: None,
            reason: Reason::Development,
            group: None,
        },
    ];
    let causes = [
        json!({"type": "event", "eventId": "e-1", "partition": 3, "offset": 42}),
        json!({"type": "control", "controlId": 9, "kind": "release_changed"}),
        json!({"type": "timer", "at": "2024-06-15T12:00:00.000Z"}),
    ];
    for (i, previous) in targets.iter().enumerate() {
        for cause in &causes {
            let current = &targets[(i + 1) % targets.len()];
            let event = rollout_event(
                "acme",
                "gw-17",
                i as i64 + 1,
                previous,
                current,
                cause,
                "2024-06-15T12:00:00.000Z",
            );
            let errors = schema.errors(&event);
            assert!(errors.is_empty(), "{event}: {errors:?}");
        }
    }
    let bad = json!({"specversion": "0.3"});
    assert!(
        !schema.errors(&bad).is_empty(),
        "the checker rejects a non-event"
    );
}
