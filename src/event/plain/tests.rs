//! The fast path against the checked path: whatever it decodes, the checked path decodes the same; and it
//! does decode the plain events a fleet sends.

use proptest::prelude::*;
use serde_json::json;

use super::decode_plain;
use crate::event::decode::checked;
use crate::rules::catalogue::Catalogue;

/// Asserts that the fast path either gives up on `text` or agrees with the checked path; returns whether
/// it decoded it.
fn agrees(key: Option<&[u8]>, text: &str) -> bool {
    let fast = decode_plain(key, text, &Catalogue::default());
    let slow = checked(key, text, &Catalogue::default());
    if let Some(event) = &fast {
        assert_eq!(Ok(event), slow.as_ref(), "{text}");
    }
    fast.is_some()
}

#[test]
fn plain_events_take_the_fast_path_and_decode_as_the_checked_path_does() {
    let heartbeat = json!({"eventId": "bench-1", "orgId": "bench-org-0", "deviceId": "dev-1",
        "sequence": 7, "attributes": {"lastSeenAt": "2026-12-05T03:00:00.123Z", "uptimeSeconds": 3600}});
    let full = json!({"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 0,
        "attributes": {"status": "online", "osType": "linux", "tags": ["a", "b"], "custom.x": 1,
                       "custom.gone": null, "lastSeenAt": "2026-12-05T03:00:00Z"},
        "development": false, "firmwareLock": null, "occurredAt": "2026-12-05T03:00:00Z",
        "register": false});
    for event in [heartbeat, full] {
        let text = event.to_string();
        assert!(agrees(None, &text), "{text}");
        let key = event["deviceId"].as_str().unwrap().as_bytes();
        assert!(agrees(Some(key), &text), "{text}");
        assert!(!agrees(Some(b"another"), &text), "{text}");
    }
}

#[test]
fn what_the_checked_path_refuses_or_treats_specially_is_left_to_it() {
    let cases = [
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "bogus": 1}"#,
        r#"{"eventId": "e", "eventId": "f", "orgId": "o", "deviceId": "d", "sequence": 1}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": -0}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1.0}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 9223372036854775808}"#,
        r#"{"eventId": "", "orgId": "o", "deviceId": "d", "sequence": 1}"#,
        r#"{"eventId": "e\u0001", "orgId": "o", "deviceId": "d", "sequence": 1}"#,
        r#"{"orgId": "o", "deviceId": "d", "sequence": 1}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "register": true}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "removed": ["status"]}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "development": null}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "firmwareLock": 5}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "occurredAt": "soon"}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1, "attributes": null}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1,
            "attributes": {"status": "online", "status": "offline"}}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1,
            "attributes": {"tags": [{"a": 1, "a": 2}]}}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1,
            "attributes": {"uptimeSeconds": "5"}}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1,
            "attributes": {"noSuchField": 5}}"#,
        r#"{"eventId": "e", "orgId": "o", "deviceId": "d", "sequence": 1} trailing"#,
        r#"[1, 2]"#,
    ];
    for text in cases {
        assert!(!agrees(None, text), "{text}");
    }
}

/// One JSON value, from a pool that mixes what each key takes with what it must not.
fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""e-1""#,
        r#""d""#,
        r#""""#,
        r#""a\u0001b""#,
        r#""\u0065""#,
        r#""2026-12-05T03:00:00Z""#,
        "0",
        "42",
        "-1",
        "-0",
        "42.0",
        "1e3",
        "9223372036854775807",
        "9223372036854775808",
        "true",
        "false",
        "null",
        r#"["status"]"#,
        r#"[1]"#,
        "{}",
        r#"{"status": "online"}"#,
    ])
    .prop_map(str::to_owned)
}

/// An attributes object whose names and values come from small pools (names may repeat).
fn attributes() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "status",
        "osType",
        "uptimeSeconds",
        "lastSeenAt",
        "tags",
        "custom.x",
        "custom.y",
        "noSuchField",
    ]);
    let attribute_value = prop::sample::select(vec![
        r#""online""#,
        r#""linux""#,
        r#""nope""#,
        "5",
        "5.5",
        r#""5""#,
        "true",
        "null",
        r#""2026-12-05T03:00:00.5Z""#,
        r#"["a", "b"]"#,
        r#"[1]"#,
        r#"[{"a": 1, "a": 2}]"#,
        r#"{"a": 1}"#,
        r#""\u0000""#,
    ]);
    prop::collection::vec((name, attribute_value), 0..6).prop_map(|pairs| {
        let body: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name:?}: {value}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    })
}

/// An event's text: keys from the contract (and a few others), possibly repeated, with values of any kind.
fn event() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "eventId",
        "orgId",
        "deviceId",
        "sequence",
        "attributes",
        "development",
        "firmwareLock",
        "occurredAt",
        "register",
        "removed",
        "bogus",
    ]);
    let envelope = (
        prop::bool::ANY,
        prop::collection::vec((key, value(), attributes()), 0..4),
    );
    envelope.prop_map(|(complete, extra)| {
        let mut pairs: Vec<String> = Vec::new();
        if complete {
            pairs.extend([
                r#""eventId": "e-1""#.to_owned(),
                r#""orgId": "o""#.to_owned(),
                r#""deviceId": "d""#.to_owned(),
                r#""sequence": 3"#.to_owned(),
            ]);
        }
        for (key, value, attributes) in extra {
            let value = if key == "attributes" {
                attributes
            } else {
                value
            };
            pairs.push(format!("{key:?}: {value}"));
        }
        format!("{{{}}}", pairs.join(", "))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_fast_path_never_disagrees_with_the_checked_path(
        text in event(),
        key in prop::sample::select(vec![None, Some("d"), Some("x")]),
    ) {
        agrees(key.map(str::as_bytes), &text);
    }
}
