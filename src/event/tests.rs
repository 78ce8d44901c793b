//! The input contract's unit tests: decoding, its failures and their details, and the wire form.

use serde_json::{json, Map, Value};

use super::*;
use crate::rules::attrs::{AttrValue, MAX_ATTRIBUTES};
use crate::rules::catalogue::Catalogue;
use crate::rules::time::parse_datetime;
use DeadLetterReason::*;

const MAX: usize = 65_536;

fn catalogue() -> Catalogue {
    Catalogue::default()
}

fn decode_value(value: &Value) -> Result<DeviceEvent, DecodeError> {
    decode(None, Some(value.to_string().as_bytes()), &catalogue(), MAX)
}

fn reason_of(payload: &[u8]) -> DeadLetterReason {
    decode(None, Some(payload), &catalogue(), MAX)
        .unwrap_err()
        .reason
}

fn base() -> Value {
    json!({"eventId": "e-1", "orgId": "acme", "deviceId": "gw-17", "sequence": 42})
}

fn with(key: &str, value: Value) -> Value {
    let mut event = base();
    event[key] = value;
    event
}

#[test]
fn the_documented_example_decodes() {
    let c = catalogue();
    let payload = br#"{ "eventId": "01J0", "orgId": "acme", "deviceId": "gw-17", "sequence": 42,
        "attributes": {"hostname": "gw-17", "tags": ["eu"], "custom.rack": "r1", "uptimeSeconds": null},
        "removed": ["displayName"], "development": false, "firmwareLock": "2.4.1",
        "occurredAt": "2024-06-15T11:00:00Z" }"#;
    let event = decode(Some(b"gw-17"), Some(payload), &c, MAX).unwrap();
    let field = |n: &str| c.resolve(n).unwrap();
    assert_eq!(event.event_id, "01J0");
    assert_eq!(event.org_id, "acme");
    assert_eq!(event.device_id, "gw-17");
    assert_eq!(event.sequence, 42);
    let mut set = vec![
        (field("hostname"), AttrValue::Str("gw-17".into())),
        (field("tags"), AttrValue::StrList(Box::new(["eu".into()]))),
        (field("custom.rack"), AttrValue::Str("r1".into())),
    ];
    set.sort_by_key(|(f, _)| *f);
    assert_eq!(event.set, set);
    let mut removed = vec![field("displayName"), field("uptimeSeconds")];
    removed.sort();
    assert_eq!(event.removed, removed);
    assert_eq!(event.development, Some(false));
    assert_eq!(event.firmware_lock, Some(Some("2.4.1".into())));
    assert_eq!(
        event.occurred_at,
        parse_datetime("2024-06-15T11:00:00.000Z")
    );
    let changed: Vec<_> = event.changed_fields().collect();
    assert_eq!(changed.len(), 5);
}

#[test]
fn an_event_without_changes_is_valid_and_is_not_a_registration() {
    let event = decode_value(&base()).unwrap();
    assert!(event.set.is_empty() && event.removed.is_empty());
    assert_eq!(event.development, None);
    assert_eq!(event.firmware_lock, None);
    assert_eq!(event.occurred_at, None);
    assert!(!event.register);
    assert_eq!(event.changed_fields().count(), 0);
    assert!(
        !decode_value(&with("register", json!(false)))
            .unwrap()
            .register
    );
}

#[test]
fn a_registration_carries_nothing_but_the_envelope() {
    let event = decode_value(&with("register", json!(true))).unwrap();
    assert!(event.register);
    let mut timed = with("register", json!(true));
    timed["occurredAt"] = json!("2024-06-15T11:00:00Z");
    assert!(decode_value(&timed).unwrap().register);
    for (key, value) in [
        ("attributes", json!({"hostname": "h"})),
        ("attributes", json!({})),
        ("removed", json!([])),
        ("development", json!(true)),
        ("firmwareLock", Value::Null),
    ] {
        let mut event = with("register", json!(true));
        event[key] = value;
        let err = decode_value(&event).unwrap_err();
        assert_eq!(err.reason, InvalidEvent, "{event}");
        assert_eq!(
            err.detail,
            format!(
                "a registration (register: true) cannot carry {key}: it only creates a device that does \
                 not exist yet; send changes in an event of their own"
            )
        );
    }
    let err = decode_value(&with("register", json!("yes"))).unwrap_err();
    assert_eq!(err.detail, "register must be a boolean, got \"yes\"");
}

#[test]
fn registration_events_decode_as_registrations_with_fresh_ids() {
    let c = catalogue();
    let payload = registration_event("acme", "gw-17");
    let event = decode(Some(b"gw-17"), Some(&payload), &c, MAX).unwrap();
    assert!(event.register);
    assert_eq!(
        (event.org_id.as_str(), event.device_id.as_str()),
        ("acme", "gw-17")
    );
    assert_eq!(event.sequence, 0);
    assert!(uuid::Uuid::parse_str(&event.event_id).is_ok());
    let other = decode(None, Some(&registration_event("acme", "gw-17")), &c, MAX).unwrap();
    assert_ne!(other.event_id, event.event_id);
    let again = decode(None, Some(&encode(&event.to_json(&c))), &c, MAX).unwrap();
    assert_eq!(again, event);
}

#[test]
fn a_null_firmware_lock_clears_it_and_an_absent_one_leaves_it() {
    let event = decode_value(&with("firmwareLock", Value::Null)).unwrap();
    assert_eq!(event.firmware_lock, Some(None));
    assert_eq!(decode_value(&base()).unwrap().firmware_lock, None);
}

#[test]
fn encoding_then_decoding_gives_the_same_event() {
    let c = catalogue();
    let mut json = DeviceEventJson::new("e-9", "acme", "dev-1", i64::MAX);
    json.attributes = serde_json::from_value(json!({
        "hostname": "h", "status": "online", "uptimeSeconds": 12.5, "lastSeenAt": "2024-01-01T00:00:00+02:00",
        "tags": ["a", "b"], "custom.rack": 12, "osVersion": null
    }))
    .unwrap();
    json.removed = vec!["displayName".into(), "displayName".into()];
    json.development = Some(true);
    json.firmware_lock = Some(None);
    json.occurred_at = Some("2024-06-15T11:00:00.123456Z".into());
    let event = decode(Some(b"dev-1"), Some(&encode(&json)), &c, MAX).unwrap();
    assert_eq!(event.set.len(), 6);
    assert_eq!(event.removed.len(), 2);
    assert_eq!(event.firmware_lock, Some(None));
    let again = decode(None, Some(&encode(&event.to_json(&c))), &c, MAX).unwrap();
    assert_eq!(again, event);
}

#[test]
fn encode_writes_only_the_contract_keys() {
    let mut json = DeviceEventJson::new("e", "o", "d", 1);
    json.attributes.insert("hostname".into(), json!("h"));
    json.removed.push("tags".into());
    json.development = Some(false);
    json.firmware_lock = Some(Some("1.0".into()));
    json.occurred_at = Some("2024-01-01T00:00:00Z".into());
    let value: Value = serde_json::from_slice(&encode(&json)).unwrap();
    let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    // Every key but `register`, which cannot come with changes.
    let mut expected: Vec<_> = EVENT_KEYS
        .iter()
        .filter(|k| **k != "register")
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    let minimal: Value =
        serde_json::from_slice(&encode(&DeviceEventJson::new("e", "o", "d", 1))).unwrap();
    assert_eq!(minimal.as_object().unwrap().len(), REQUIRED_KEYS.len());
    let mut registration = DeviceEventJson::new("e", "o", "d", 1);
    registration.register = true;
    let value: Value = serde_json::from_slice(&encode(&registration)).unwrap();
    assert_eq!(value["register"], json!(true));
    assert_eq!(value.as_object().unwrap().len(), REQUIRED_KEYS.len() + 1);
}

#[test]
fn a_missing_or_empty_value_is_an_empty_payload() {
    let c = catalogue();
    assert_eq!(
        decode(None, None, &c, MAX).unwrap_err().reason,
        EmptyPayload
    );
    assert_eq!(reason_of(b""), EmptyPayload);
    // Whitespace is a value, just not JSON.
    assert_eq!(reason_of(b"  "), MalformedJson);
}

#[test]
fn size_is_checked_before_parsing() {
    let c = catalogue();
    let payload = vec![b'{'; 10 * 1024 * 1024];
    let err = decode(None, Some(&payload), &c, MAX).unwrap_err();
    assert_eq!(err.reason, Oversize);
    assert_eq!(
        err.detail,
        "the message value is 10485760 bytes, more than the maximum of 65536"
    );
    let exact = base().to_string();
    assert!(decode(None, Some(exact.as_bytes()), &c, exact.len()).is_ok());
    assert_eq!(
        decode(None, Some(exact.as_bytes()), &c, exact.len() - 1)
            .unwrap_err()
            .reason,
        Oversize
    );
}

#[test]
fn hostile_json_is_malformed_not_a_panic() {
    let deep = format!(
        r#"{{"eventId":"e","orgId":"o","deviceId":"d","sequence":1,"attributes":{{"custom.x":{}{}}}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    assert_eq!(reason_of(deep.as_bytes()), MalformedJson);
    let deep_objects = format!("{}{}", r#"{"a":"#.repeat(1000), "}".repeat(1000));
    assert_eq!(reason_of(deep_objects.as_bytes()), MalformedJson);
    let err = decode(None, Some(b"{\"eventId\":\"\xff\"}"), &catalogue(), MAX).unwrap_err();
    assert_eq!(err.reason, MalformedJson);
    assert!(err.detail.contains("not valid UTF-8 (at byte 12)"), "{err}");
    assert_eq!(reason_of(br#"{"eventId":"e""#), MalformedJson);
    assert_eq!(reason_of(br#"{"eventId":"e"} {}"#), MalformedJson);
    assert_eq!(reason_of(br#"{'eventId':'e'}"#), MalformedJson);
    assert_eq!(reason_of(br#"{"sequence": 1e400}"#), MalformedJson);
}

#[test]
fn a_sequence_must_be_a_non_negative_64_bit_integer() {
    for bad in [
        json!(1e300),
        json!(-1),
        json!(42.0),
        json!("42"),
        Value::Null,
    ] {
        let err = decode_value(&with("sequence", bad.clone())).unwrap_err();
        assert_eq!(err.reason, InvalidEvent, "{bad}");
        assert!(
            err.detail
                .starts_with("sequence must be an integer from 0 to 9223372036854775807, got "),
            "{err}"
        );
    }
    let too_large = br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":9223372036854775808}"#;
    assert_eq!(reason_of(too_large), InvalidEvent);
    let max = br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":9223372036854775807}"#;
    assert_eq!(
        decode(None, Some(max), &catalogue(), MAX).unwrap().sequence,
        i64::MAX
    );
    assert_eq!(
        decode_value(&with("sequence", json!(0))).unwrap().sequence,
        0
    );
}

#[test]
fn ids_are_bounded_and_free_of_control_characters() {
    let err = decode_value(&with("deviceId", json!("gw\u{0}17"))).unwrap_err();
    assert_eq!(err.reason, InvalidEvent);
    assert_eq!(
        err.detail,
        r#"deviceId must be a string of 1 to 256 characters without control characters, got "gw\u{0}17""#
    );
    assert_eq!(
        decode_value(&with("orgId", json!(""))).unwrap_err().reason,
        InvalidEvent
    );
    assert_eq!(
        decode_value(&with("eventId", json!(7))).unwrap_err().reason,
        InvalidEvent
    );
    assert_eq!(
        decode_value(&with("orgId", json!("\u{85}")))
            .unwrap_err()
            .reason,
        InvalidEvent
    );
    // Limits count characters, not bytes.
    let device = "é".repeat(MAX_DEVICE_ID_CHARS);
    assert_eq!(
        decode_value(&with("deviceId", json!(device)))
            .unwrap()
            .device_id,
        device
    );
    let err = decode_value(&with("deviceId", json!(format!("{device}x")))).unwrap_err();
    assert_eq!(err.reason, InvalidEvent);
    assert!(err.detail.len() < 300, "only a prefix is quoted: {err}");
    let long_event = "e".repeat(MAX_EVENT_ID_CHARS + 1);
    assert_eq!(
        decode_value(&with("eventId", json!(long_event)))
            .unwrap_err()
            .reason,
        InvalidEvent
    );
    let missing = json!({"eventId": "e", "orgId": "o", "sequence": 1});
    assert_eq!(
        decode_value(&missing).unwrap_err().detail,
        "missing required key deviceId"
    );
}

#[test]
fn envelope_type_errors_name_the_key() {
    let cases = [
        (
            json!([1, 2]),
            "the event must be a JSON object, got an array",
        ),
        (with("colour", json!(1)), "unknown key \"colour\""),
        (
            with("development", json!("yes")),
            "development must be a boolean",
        ),
        (
            with("development", Value::Null),
            "development must be a boolean",
        ),
        (
            with("firmwareLock", json!("")),
            "firmwareLock must be null or a string",
        ),
        (
            with("firmwareLock", json!(2)),
            "firmwareLock must be null or a string",
        ),
        (
            with("attributes", json!([])),
            "attributes must be an object, got an array",
        ),
        (
            with("attributes", Value::Null),
            "attributes must be an object, got null",
        ),
        (with("removed", json!("tags")), "removed must be an array"),
        (
            with("removed", json!([1])),
            "removed[0] must be a field name",
        ),
        (
            with("removed", json!(["nope"])),
            "removed[0]: Unknown field: nope",
        ),
        (
            with("removed", json!(["daysSinceLastSeen"])),
            "removed[0]: field \"daysSinceLastSeen\" is computed",
        ),
        (
            with("occurredAt", json!("yesterday")),
            "occurredAt must be an RFC 3339",
        ),
    ];
    for (event, expected) in cases {
        let err = decode_value(&event).unwrap_err();
        assert_eq!(err.reason, InvalidEvent, "{event}");
        assert!(err.detail.starts_with(expected), "{err} for {event}");
    }
    let too_many = with("removed", json!(vec!["tags"; MAX_REMOVED + 1]));
    assert_eq!(decode_value(&too_many).unwrap_err().reason, InvalidEvent);
    let many = with("removed", json!(vec!["tags"; MAX_REMOVED]));
    assert_eq!(decode_value(&many).unwrap().removed.len(), 1);
}

#[test]
fn occurred_at_outside_years_1_to_9999_is_refused() {
    for bad in [
        "+275760-09-13T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "2024-13-01T00:00:00Z",
    ] {
        let err = decode_value(&with("occurredAt", json!(bad))).unwrap_err();
        assert_eq!(err.reason, InvalidEvent, "{bad}");
    }
    let ok = decode_value(&with("occurredAt", json!("2024-06-15T13:00:00+02:00"))).unwrap();
    assert_eq!(ok.occurred_at, parse_datetime("2024-06-15T11:00:00Z"));
}

#[test]
fn a_field_both_set_and_removed_is_refused_but_null_and_removed_agree() {
    let mut event = with("attributes", json!({"hostname": "h"}));
    event["removed"] = json!(["hostname"]);
    let err = decode_value(&event).unwrap_err();
    assert_eq!(err.reason, InvalidEvent);
    assert_eq!(
        err.detail,
        "\"hostname\" is both set in attributes and listed in removed"
    );
    event["attributes"] = json!({"hostname": null});
    let ok = decode_value(&event).unwrap();
    assert_eq!(ok.removed, vec![catalogue().resolve("hostname").unwrap()]);
}

#[test]
fn duplicate_keys_are_refused_anywhere() {
    let top = br#"{"eventId":"e","orgId":"acme","orgId":"other","deviceId":"d","sequence":1}"#;
    let err = decode(None, Some(top), &catalogue(), MAX).unwrap_err();
    assert_eq!(err.reason, InvalidEvent);
    assert!(err.detail.starts_with("duplicate key \"orgId\""), "{err}");
    let nested = br#"{"eventId":"e","orgId":"o","deviceId":"d","sequence":1,
        "attributes":{"hostname":"a","hostname":"b"}}"#;
    assert_eq!(reason_of(nested), InvalidEvent);
    // A syntax error later in the message still makes it malformed.
    let both = br#"{"eventId":"e","eventId":"e","orgId":"#;
    assert_eq!(reason_of(both), MalformedJson);
}

#[test]
fn every_bad_attribute_is_named() {
    let event = with(
        "attributes",
        json!({"status": "x", "tags": "eu", "hostname": "ok", "daysSinceEnrolled": 1, "bogus": 1}),
    );
    let err = decode_value(&event).unwrap_err();
    assert_eq!(err.reason, InvalidAttributes);
    for name in ["status", "tags", "daysSinceEnrolled", "bogus"] {
        assert!(
            err.detail.contains(&format!("attributes.{name}: ")),
            "{err}"
        );
    }
    assert!(err
        .detail
        .contains("attributes.status: Value \"x\" is not one of"));
    assert!(!err.detail.contains("attributes.hostname"));
    let too_many: Map<String, Value> = (0..=MAX_ATTRIBUTES)
        .map(|i| (format!("custom.k{i}"), json!("v")))
        .collect();
    let err = decode_value(&with("attributes", Value::Object(too_many))).unwrap_err();
    assert_eq!(err.reason, InvalidAttributes);
}

#[test]
fn attribute_errors_are_bounded_and_quote_only_prefixes() {
    let huge = "x".repeat(20_000);
    let attributes: Map<String, Value> = (0..100)
        .map(|i| (format!("bad{i}{huge}"), json!(huge)))
        .chain([("status".to_string(), json!(huge))])
        .collect();
    let err = decode(
        None,
        Some(
            with("attributes", Value::Object(attributes))
                .to_string()
                .as_bytes(),
        ),
        &catalogue(),
        usize::MAX,
    )
    .unwrap_err();
    assert_eq!(err.reason, InvalidAttributes);
    assert!(
        err.detail.len() <= MAX_DETAIL_BYTES + 3,
        "{}",
        err.detail.len()
    );
    assert!(err.detail.ends_with("more"), "{err}");
    let err = decode_value(&with("attributes", json!({"bad\nname": 1}))).unwrap_err();
    assert!(!err.detail.chars().any(char::is_control), "{err}");
}

#[test]
fn the_key_must_be_the_device_id_when_present() {
    let payload = base().to_string();
    let c = catalogue();
    assert!(decode(None, Some(payload.as_bytes()), &c, MAX).is_ok());
    assert!(decode(Some(b"gw-17"), Some(payload.as_bytes()), &c, MAX).is_ok());
    let err = decode(Some(b"gw-18"), Some(payload.as_bytes()), &c, MAX).unwrap_err();
    assert_eq!(err.reason, KeyMismatch);
    assert_eq!(
        err.detail,
        "the Kafka key \"gw-18\" is not the deviceId \"gw-17\""
    );
    assert_eq!(
        decode(Some(b""), Some(payload.as_bytes()), &c, MAX)
            .unwrap_err()
            .reason,
        KeyMismatch
    );
    let err = decode(Some(b"\xff\x00"), Some(payload.as_bytes()), &c, MAX).unwrap_err();
    assert!(!err.detail.chars().any(char::is_control), "{err}");
}

#[test]
fn reasons_have_distinct_snake_case_names() {
    let names: Vec<_> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), DeadLetterReason::ALL.len());
    for reason in DeadLetterReason::ALL {
        assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        assert_eq!(reason.to_string(), reason.as_str());
    }
    let err = DecodeError::new(InvalidEvent, "sequence must be …");
    assert_eq!(err.to_string(), "invalid_event: sequence must be …");
}
