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

mod generators;
mod properties;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use cohort::event::{
    dead_letter, decode, encode, DeadLetterReason, EVENT_KEYS, MAX_DEVICE_ID_CHARS,
    MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS, MAX_REMOVED, REQUIRED_KEYS,
};
use cohort::rules::attrs::MAX_ATTRIBUTES;
use cohort::rules::Catalogue;
use cohort_testkit::schema::Schema;
use proptest::test_runner::Config;
use serde_json::{json, Value};

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

/// Rollout-target events as the worker builds them validate against the published schema, for every kind
/// of cause and target.
#[test]
fn rollout_target_events_match_their_schema() {
    use cohort::firmware::{rollout_event, Reason, Target};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = Schema::load(root.join("schemas/rollout-target.schema.json"));
    let group = uuid::Uuid::from_u128(7);
    let targets = [
        Target::none(),
        Target {
            release: None,
            version: Some("2.4.1".into()),
            reason: Reason::Group,
            group: Some(group),
        },
        Target {
            release: None,
            version: Some("17".into()),
            reason: Reason::Default,
            group: None,
        },
        Target {
            release: None,
            version: Some("3".into()),
            reason: Reason::Locked,
            group: None,
        },
        Target {
            release: None,
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
