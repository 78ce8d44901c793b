//! Cases with absurd sequences and timestamps.

use serde_json::{json, Value};

use cohort::event::DeadLetterReason::*;

use super::{accepted, refused, refused_attributes, refused_field, valid_event_text, with, Case};

/// Absurd sequences and timestamps.
pub(super) fn cases() -> Vec<Case> {
    let valid_text = valid_event_text();
    let seq_detail = "sequence must be an integer from 0 to 9223372036854775807";
    let occurred_detail = "occurredAt must be an RFC 3339 datetime from year 1 to 9999";
    vec![
        // -- absurd sequences
        refused_field("sequence", json!(-1), InvalidEvent, seq_detail),
        refused_field("sequence", json!(i64::MIN), InvalidEvent, seq_detail),
        refused(
            "sequence = i64::MAX + 1",
            valid_text.replace("99", "9223372036854775808").into_bytes(),
            InvalidEvent,
            seq_detail,
        ),
        refused_field("sequence", json!(u64::MAX), InvalidEvent, seq_detail),
        refused_field("sequence", json!(1.5), InvalidEvent, seq_detail),
        refused(
            "sequence = 42.0",
            valid_text.replace("99", "42.0").into_bytes(),
            InvalidEvent,
            seq_detail,
        ),
        refused_field("sequence", json!(1e300), InvalidEvent, seq_detail),
        refused_field("sequence", json!(-1e300), InvalidEvent, seq_detail),
        refused_field("sequence", json!("42"), InvalidEvent, seq_detail),
        refused_field("sequence", json!(true), InvalidEvent, seq_detail),
        refused_field("sequence", Value::Null, InvalidEvent, seq_detail),
        accepted(
            "sequence = i64::MAX",
            "seq-max",
            i64::MAX,
            with("seq-max", i64::MAX, |_| {}),
        ),
        accepted("sequence = 0", "seq-zero", 0, with("seq-zero", 0, |_| {})),
        // -- absurd timestamps
        refused_field(
            "occurredAt",
            json!("0000-01-01T00:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("10000-01-01T00:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("+275760-09-13T00:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("-0001-01-01T00:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field("occurredAt", json!(-1), InvalidEvent, occurred_detail),
        refused_field(
            "occurredAt",
            json!(1_718_456_400_000_i64),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("1718456400"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("2024-02-30T00:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("2024-06-15T25:00:00Z"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("2024-06-15"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("2024-06-15T13:00:00"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field(
            "occurredAt",
            json!("2024-06-15T13:00:00+24:00"),
            InvalidEvent,
            occurred_detail,
        ),
        refused_field("occurredAt", json!(""), InvalidEvent, occurred_detail),
        refused_field("occurredAt", Value::Null, InvalidEvent, occurred_detail),
        accepted(
            "occurredAt = year 1",
            "occurred-min",
            1,
            with("occurred-min", 1, |e| {
                e.insert("occurredAt".into(), json!("0001-01-01T00:00:00Z"));
            }),
        ),
        accepted(
            "occurredAt = the last millisecond of year 9999",
            "occurred-max",
            1,
            with("occurred-max", 1, |e| {
                e.insert("occurredAt".into(), json!("9999-12-31T23:59:59.999Z"));
            }),
        ),
        accepted(
            "occurredAt before 1970",
            "occurred-pre-epoch",
            1,
            with("occurred-pre-epoch", 1, |e| {
                e.insert("occurredAt".into(), json!("1969-12-31T23:59:59-12:00"));
            }),
        ),
        refused_attributes(
            "lastSeenAt = year 0",
            json!({"lastSeenAt": "0000-01-01T00:00:00Z"}),
            "attributes.lastSeenAt: ",
        ),
        refused_attributes(
            "lastSeenAt = a number",
            json!({"lastSeenAt": 0}),
            "attributes.lastSeenAt: ",
        ),
        refused_attributes(
            "enrolledAt = year 99999",
            json!({"enrolledAt": "99999-01-01T00:00:00Z"}),
            "attributes.enrolledAt: ",
        ),
    ]
}
