//! Cases in the envelope: missing, wrong-typed, oversize and unknown keys.

use serde_json::{json, Value};

use cohort::event::DeadLetterReason::*;

use super::{refused, refused_field, valid_event_text, with, with_raw_attributes, Case};

/// The envelope: missing, wrong-typed, oversize and unknown keys.
pub(super) fn cases() -> Vec<Case> {
    let valid_text = valid_event_text();
    vec![
        // -- the envelope
        refused(
            "no eventId",
            with("dev-a", 99, |e| {
                e.remove("eventId");
            }),
            InvalidEvent,
            "missing required key eventId",
        ),
        refused(
            "no sequence",
            with("dev-a", 99, |e| {
                e.remove("sequence");
            }),
            InvalidEvent,
            "missing required key sequence",
        ),
        refused_field(
            "eventId",
            json!(7),
            InvalidEvent,
            "eventId must be a string",
        ),
        refused_field("orgId", Value::Null, InvalidEvent, "orgId must be a string"),
        refused_field(
            "deviceId",
            json!(["dev-a"]),
            InvalidEvent,
            "deviceId must be a string",
        ),
        refused_field(
            "deviceId",
            json!(""),
            InvalidEvent,
            "deviceId must be a string of 1 to 256 characters",
        ),
        refused_field(
            "deviceId",
            json!("d".repeat(257)),
            InvalidEvent,
            "deviceId must be a string of 1 to 256 characters",
        ),
        refused_field(
            "eventId",
            json!("e".repeat(129)),
            InvalidEvent,
            "eventId must be a string of 1 to 128 characters",
        ),
        refused_field(
            "orgId",
            json!("o".repeat(129)),
            InvalidEvent,
            "orgId must be a string of 1 to 128 characters",
        ),
        refused_field(
            "deviceId",
            json!("dev\u{0}a"),
            InvalidEvent,
            "without control characters, got \"dev\\u{0}a\"",
        ),
        refused_field(
            "deviceId",
            json!("dev\na"),
            InvalidEvent,
            "without control characters",
        ),
        refused_field(
            "orgId",
            json!("acme\u{85}"),
            InvalidEvent,
            "without control characters",
        ),
        refused_field(
            "colour",
            json!("red"),
            InvalidEvent,
            "unknown key \"colour\"",
        ),
        refused_field(
            "__proto__",
            json!({}),
            InvalidEvent,
            "unknown key \"__proto__\"",
        ),
        refused_field(
            "EventId",
            json!("e"),
            InvalidEvent,
            "unknown key \"EventId\"",
        ),
        refused(
            "orgId twice (acme, then globex)",
            valid_text
                .replacen(
                    "\"orgId\":\"acme\"",
                    "\"orgId\":\"acme\",\"orgId\":\"globex\"",
                    1,
                )
                .into_bytes(),
            InvalidEvent,
            "duplicate key \"orgId\"",
        ),
        refused(
            "an attribute twice",
            with_raw_attributes("{\"hostname\": \"a\", \"hostname\": \"b\"}"),
            InvalidEvent,
            "duplicate key \"hostname\"",
        ),
        refused_field(
            "attributes",
            json!(["hostname", "a"]),
            InvalidEvent,
            "attributes must be an object, got an array",
        ),
        refused_field(
            "attributes",
            json!("hostname=a"),
            InvalidEvent,
            "attributes must be an object, got a string",
        ),
        refused_field(
            "removed",
            json!("tags"),
            InvalidEvent,
            "removed must be an array",
        ),
        refused_field(
            "removed",
            json!([1]),
            InvalidEvent,
            "removed[0] must be a field name",
        ),
        refused_field(
            "removed",
            json!(vec!["tags"; 513]),
            InvalidEvent,
            "removed has 513 entries, more than the maximum of 512",
        ),
        refused_field(
            "removed",
            json!(["colour"]),
            InvalidEvent,
            "removed[0]: Unknown field",
        ),
        refused_field(
            "removed",
            json!(["daysSinceLastSeen"]),
            InvalidEvent,
            "is computed and cannot be removed",
        ),
        refused(
            "a field both set and removed",
            with("dev-a", 99, |e| {
                e.insert("attributes".into(), json!({"hostname": "h"}));
                e.insert("removed".into(), json!(["hostname"]));
            }),
            InvalidEvent,
            "both set in attributes and listed in removed",
        ),
        refused_field(
            "development",
            json!("yes"),
            InvalidEvent,
            "development must be a boolean",
        ),
        refused_field(
            "development",
            Value::Null,
            InvalidEvent,
            "development must be a boolean",
        ),
        refused_field(
            "firmwareLock",
            json!(5),
            InvalidEvent,
            "firmwareLock must be null or a string",
        ),
        refused_field(
            "firmwareLock",
            json!(""),
            InvalidEvent,
            "firmwareLock must be null or a string",
        ),
        refused_field(
            "firmwareLock",
            json!("1".repeat(129)),
            InvalidEvent,
            "firmwareLock must be null or a string of 1 to 128",
        ),
        refused_field(
            "register",
            json!("true"),
            InvalidEvent,
            "register must be a boolean",
        ),
        refused(
            "a registration carrying attributes",
            with("dev-a", 99, |e| {
                e.insert("register".into(), json!(true));
                e.insert("attributes".into(), json!({"hostname": "h"}));
            }),
            InvalidEvent,
            "a registration (register: true) cannot carry attributes",
        ),
    ]
}
