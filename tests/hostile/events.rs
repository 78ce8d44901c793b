//! The hostile-event corpus: every case is produced to the input topic of a running worker that holds a
//! few groups and devices in a known state. A case the input contract refuses must produce exactly one
//! dead letter with the expected reason (headers, body and metric); a case the contract accepts (at a
//! limit, or an absurd-looking but valid value) is applied to a device of its own; a stale or duplicate
//! event changes nothing. Afterwards a valid event on each partition is applied (the worker keeps
//! serving) and every stored row not touched by an accepted case is as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use cohort::event::{
    DeadLetterReason, HEADER_DETAIL, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
};
use cohort::store::firmware::{self, ReleaseTarget};
use cohort::store::groups::{self, NewGroup};
use cohort::store::members;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Map, Value};

use crate::snapshot::{self, Snapshot};
use crate::support::app::{metric, standard_groups, Harness, LIMIT, ORG};
use crate::support::{eventually, ConsumedMessage};

/// The second org: its devices are what an `org_mismatch` event of `acme` names, and the other way round.
const OTHER_ORG: &str = "globex";
/// The sequence every device of the known state was last written with.
const SEQ: i64 = 10;
/// `worker.max_event_bytes` in this test (the default).
const MAX_EVENT_BYTES: usize = 65_536;

use DeadLetterReason::*;

/// Where a case's message goes.
#[derive(Clone, Debug)]
enum Part {
    /// Chosen by the producer from the key (Kafka's murmur2, as cohort's producers do); partition 0 when
    /// the message has no key.
    ByKey,
    /// The partition that does not hold this (stored) device: an event reaching a device's non-owner.
    AwayFrom(&'static str),
}

/// What the contract says a case must lead to.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly one dead letter with this reason, whose detail contains this text.
    DeadLetter(DeadLetterReason, &'static str),
    /// Applied: the device exists afterwards with this sequence.
    Applied { device: String, sequence: i64 },
    /// Skipped with this outcome (`duplicate` or `stale`): no dead letter, nothing changes.
    Skipped(&'static str),
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    key: Option<Vec<u8>>,
    part: Part,
    payload: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Expect,
}

impl Case {
    fn new(
        name: impl Into<String>,
        key: Option<&[u8]>,
        payload: Option<Vec<u8>>,
        expect: Expect,
    ) -> Self {
        Self {
            name: name.into(),
            key: key.map(<[u8]>::to_vec),
            part: Part::ByKey,
            payload,
            headers: Vec::new(),
            expect,
        }
    }

    fn away_from(mut self, device: &'static str) -> Self {
        self.part = Part::AwayFrom(device);
        self
    }
}

/// A valid event of `acme` for `device` at `sequence` (an object to spoil).
fn base(device: &str, sequence: i64) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "eventId": format!("hostile-{device}-{sequence}"),
        "orgId": ORG,
        "deviceId": device,
        "sequence": sequence,
    }) else {
        unreachable!("a json object literal")
    };
    map
}

/// `base(device, sequence)` changed by `change`, encoded.
fn with(device: &str, sequence: i64, change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let mut event = base(device, sequence);
    change(&mut event);
    Value::Object(event).to_string().into_bytes()
}

/// A refused event keyed by its device (`dev-a`, a stored device of `acme`, unless said otherwise).
fn refused(name: &str, payload: Vec<u8>, reason: DeadLetterReason, detail: &'static str) -> Case {
    Case::new(
        name,
        Some(b"dev-a"),
        Some(payload),
        Expect::DeadLetter(reason, detail),
    )
}

/// An event refused for one key's value: `{..base(dev-a, 99), key: value}`.
fn refused_field(key: &str, value: Value, reason: DeadLetterReason, detail: &'static str) -> Case {
    let name = format!("{key} = {}", short(&value.to_string()));
    let payload = with("dev-a", 99, |e| {
        e.insert(key.to_string(), value);
    });
    refused(&name, payload, reason, detail)
}

/// An event refused for its attributes.
fn refused_attributes(name: &str, attributes: Value, detail: &'static str) -> Case {
    let payload = with("dev-a", 99, |e| {
        e.insert("attributes".into(), attributes);
    });
    refused(name, payload, InvalidAttributes, detail)
}

/// A case the contract accepts: applied to a fresh device `device` at `sequence`.
fn accepted(name: &str, device: &str, sequence: i64, payload: Vec<u8>) -> Case {
    Case::new(
        name,
        Some(device.as_bytes()),
        Some(payload),
        Expect::Applied {
            device: device.to_string(),
            sequence,
        },
    )
}

fn short(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A valid event padded with spaces to exactly `len` bytes.
fn padded(device: &str, sequence: i64, len: usize) -> Vec<u8> {
    let mut bytes = with(device, sequence, |_| {});
    bytes.pop(); // the closing brace
    assert!(bytes.len() < len);
    bytes.resize(len - 1, b' ');
    bytes.push(b'}');
    bytes
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The corpus. Every name is unique; see `docs/hostile-input.md` for the categories.
fn corpus() -> Vec<Case> {
    let valid = with("dev-a", 99, |_| {});
    let valid_text = String::from_utf8(valid.clone()).expect("ascii");
    let half = valid[..valid.len() / 2].to_vec();
    let seq_detail = "sequence must be an integer from 0 to 9223372036854775807";
    let occurred_detail = "occurredAt must be an RFC 3339 datetime from year 1 to 9999";
    let mut cases = vec![
        // -- empty and oversize values
        Case::new(
            "tombstone",
            Some(b"dev-a"),
            None,
            Expect::DeadLetter(EmptyPayload, "tombstone"),
        ),
        Case::new(
            "empty value",
            Some(b"dev-a"),
            Some(Vec::new()),
            Expect::DeadLetter(EmptyPayload, "empty"),
        ),
        refused(
            "one byte over worker.max_event_bytes",
            padded("dev-a", 99, MAX_EVENT_BYTES + 1),
            Oversize,
            "65537 bytes, more than the maximum of 65536",
        ),
        refused(
            "900 KB of JSON",
            padded("dev-a", 99, 900_000),
            Oversize,
            "900000 bytes",
        ),
        refused(
            "oversize and not UTF-8",
            vec![0xff; 70_000],
            Oversize,
            "70000 bytes",
        ),
        // -- malformed JSON
        refused(
            "truncated in the middle",
            half,
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "an opening brace only",
            b"{".to_vec(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "trailing garbage",
            format!("{valid_text}x").into_bytes(),
            MalformedJson,
            "trailing characters",
        ),
        refused(
            "two events back to back",
            format!("{valid_text}{valid_text}").into_bytes(),
            MalformedJson,
            "trailing characters",
        ),
        refused(
            "single quotes",
            b"{'eventId': 'e'}".to_vec(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "a NaN literal",
            valid_text.replace("99", "NaN").into_bytes(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "a comment",
            format!("// hello\n{valid_text}").into_bytes(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "a byte order mark",
            format!("\u{feff}{valid_text}").into_bytes(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "a lone surrogate escape",
            valid_text.replace("hostile-", "\\ud800").into_bytes(),
            MalformedJson,
            "not valid JSON",
        ),
        refused(
            "a number out of f64 range",
            valid_text.replace("99", "1e400").into_bytes(),
            MalformedJson,
            "out of range",
        ),
        refused(
            "nested 200 deep inside attributes",
            with_raw_attributes(&format!("{{\"custom.x\": {}}}", nested(200))),
            MalformedJson,
            "recursion limit",
        ),
        refused(
            "129 nested arrays",
            nested(129).into_bytes(),
            MalformedJson,
            "recursion limit",
        ),
        refused(
            "a raw control character in a string",
            valid_text.replace("hostile-", "ho\u{1}st").into_bytes(),
            MalformedJson,
            "control character",
        ),
        refused(
            "a raw NUL byte in a string",
            valid_text.replace("hostile-", "ho\u{0}st").into_bytes(),
            MalformedJson,
            "control character",
        ),
        // -- invalid UTF-8
        refused(
            "a 0xff 0xfe prefix",
            [&b"\xff\xfe"[..], &valid].concat(),
            MalformedJson,
            "not valid UTF-8 (at byte 0)",
        ),
        refused(
            "an overlong encoding",
            overlong(&valid_text),
            MalformedJson,
            "not valid UTF-8",
        ),
        refused(
            "a UTF-8-encoded surrogate",
            splice_bytes(&valid_text, b"\xed\xa0\x80"),
            MalformedJson,
            "not valid UTF-8",
        ),
        refused(
            "a multi-byte sequence cut at the end",
            [&valid[..], b"\xe2\x82"].concat(),
            MalformedJson,
            "not valid UTF-8",
        ),
        refused(
            "UTF-16 JSON",
            valid_text
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            MalformedJson,
            "not valid JSON",
        ),
        // -- JSON, but not an object
        refused(
            "null",
            b"null".to_vec(),
            InvalidEvent,
            "must be a JSON object, got null",
        ),
        refused(
            "a number",
            b"42".to_vec(),
            InvalidEvent,
            "must be a JSON object, got a number",
        ),
        refused(
            "a string",
            b"\"dev-a\"".to_vec(),
            InvalidEvent,
            "must be a JSON object, got a string",
        ),
        refused(
            "an array of events",
            format!("[{valid_text}]").into_bytes(),
            InvalidEvent,
            "must be a JSON object, got an array",
        ),
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
        // -- attributes
        refused_attributes(
            "an unknown field",
            json!({"colour": "red"}),
            "attributes.colour: Unknown field",
        ),
        refused_attributes(
            "a computed field",
            json!({"daysSinceLastSeen": 3}),
            "is computed and cannot be set",
        ),
        refused_attributes(
            "an enum value not allowed",
            json!({"status": "exploded"}),
            "attributes.status: Value \"exploded\" is not one of",
        ),
        refused_attributes(
            "a number as a string",
            json!({"uptimeSeconds": "900"}),
            "must be a number",
        ),
        refused_attributes(
            "a number as a boolean",
            json!({"uptimeSeconds": true}),
            "must be a number",
        ),
        refused_attributes(
            "a string as a number",
            json!({"hostname": 42}),
            "must be a string",
        ),
        refused_attributes(
            "a list as a string",
            json!({"tags": "prod"}),
            "must be an array of strings",
        ),
        refused_attributes(
            "a list of numbers",
            json!({"tags": [1]}),
            "must be an array of strings",
        ),
        refused_attributes(
            "a list of 257 items",
            json!({"tags": vec!["t"; 257]}),
            "too many items (maximum 256)",
        ),
        refused_attributes(
            "a string of 4097 bytes",
            json!({"hostname": "h".repeat(4097)}),
            "too long (maximum 4096 bytes)",
        ),
        refused_attributes(
            "513 attributes",
            Value::Object(
                (0..513)
                    .map(|i| (format!("custom.k{i}"), json!("v")))
                    .collect(),
            ),
            "attributes has 513 entries, more than the maximum of 512",
        ),
        refused_attributes(
            "a NUL in a string",
            json!({"hostname": "a\u{0}b"}),
            "attributes.hostname: ",
        ),
        refused_attributes(
            "a NUL in a list item",
            json!({"tags": ["ok", "a\u{0}"]}),
            "attributes.tags: ",
        ),
        refused_attributes(
            "a NUL in a custom string",
            json!({"custom.note": "\u{0}"}),
            "attributes.custom.note: ",
        ),
        refused_attributes(
            "an empty custom key",
            json!({"custom.": "x"}),
            "attributes.custom.: ",
        ),
        refused_attributes(
            "a custom key with a space",
            json!({"custom.a b": "x"}),
            "attributes.custom.a b: ",
        ),
        refused_attributes(
            "a custom key of 129 characters",
            json!({format!("custom.{}", "k".repeat(129)): "x"}),
            "attributes.custom.kkk",
        ),
        refused_attributes(
            "a field name with a NUL",
            json!({"hostname\u{0}": "x"}),
            "Unknown field",
        ),
        refused_attributes(
            "every attribute bad at once",
            json!({"status": "x", "tags": "eu", "bogus": 1, "daysSinceEnrolled": 2}),
            "attributes.bogus: ",
        ),
        // -- keys and headers
        Case::new(
            "a key that is another device",
            Some(b"dev-b"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(
                KeyMismatch,
                "the Kafka key \"dev-b\" is not the deviceId \"dev-a\"",
            ),
        ),
        Case::new(
            "an empty key",
            Some(b""),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "the Kafka key \"\""),
        ),
        Case::new(
            "a key in another case",
            Some(b"DEV-A"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "\"DEV-A\""),
        ),
        Case::new(
            "a key with a trailing space",
            Some(b"dev-a "),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "\"dev-a \""),
        ),
        Case::new(
            "a key that is not UTF-8",
            Some(b"\xff\xfe\x00"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "is not the deviceId"),
        ),
        Case::new(
            "no key and a malformed value",
            None,
            Some(b"{\"eventId\":".to_vec()),
            Expect::DeadLetter(MalformedJson, "not valid JSON"),
        ),
        Case {
            headers: vec![
                (HEADER_REASON, b"oversize".to_vec()),
                (HEADER_DETAIL, b"forged".to_vec()),
                ("orgId", b"globex".to_vec()),
            ],
            ..Case::new(
                "forged dead-letter and org headers",
                Some(b"dev-a"),
                Some(b"[".to_vec()),
                Expect::DeadLetter(MalformedJson, "not valid JSON"),
            )
        },
        // -- unknown and mismatched orgs
        Case::new(
            "an unknown org",
            Some(b"new-1"),
            Some(org_event("nope", "new-1", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org \"nope\""),
        ),
        Case::new(
            "the org in upper case",
            Some(b"new-2"),
            Some(org_event("ACME", "new-2", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org \"ACME\""),
        ),
        Case::new(
            "the org with a trailing space",
            Some(b"new-3"),
            Some(org_event("acme ", "new-3", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org"),
        ),
        Case::new(
            "the org with a zero-width space",
            Some(b"new-4"),
            Some(org_event("acme\u{200b}", "new-4", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org"),
        ),
        Case::new(
            "a registration in an unknown org",
            Some(b"new-5"),
            Some(registration("nope", "new-5")),
            Expect::DeadLetter(UnknownOrg, "unknown org \"nope\""),
        ),
        Case::new(
            "another org's event for a device",
            Some(b"dev-a"),
            Some(org_event(OTHER_ORG, "dev-a", 99)),
            Expect::DeadLetter(
                OrgMismatch,
                "device \"dev-a\" belongs to org \"acme\", not \"globex\"",
            ),
        ),
        Case::new(
            "an event for another org's device",
            Some(b"gx-1"),
            Some(org_event(ORG, "gx-1", 99)),
            Expect::DeadLetter(
                OrgMismatch,
                "device \"gx-1\" belongs to org \"globex\", not \"acme\"",
            ),
        ),
        Case::new(
            "another org's event for a device, on the partition that does not own it",
            None,
            Some(org_event(OTHER_ORG, "dev-a", 99)),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        )
        .away_from("dev-a"),
        Case::new(
            "another org's registration of a device",
            Some(b"dev-b"),
            Some(registration(OTHER_ORG, "dev-b")),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        ),
        Case::new(
            "another org's registration of a device, on the partition that does not own it",
            None,
            Some(registration(OTHER_ORG, "dev-b")),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        )
        .away_from("dev-b"),
        // -- stale and duplicate events change nothing
        Case::new(
            "a duplicate sequence with other attributes",
            Some(b"dev-c"),
            Some(with("dev-c", SEQ, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("duplicate"),
        ),
        Case::new(
            "a stale sequence",
            Some(b"dev-c"),
            Some(with("dev-c", 3, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("stale"),
        ),
        Case::new(
            "a stale sequence on the partition that does not own the device",
            None,
            Some(with("dev-c", 3, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("stale"),
        )
        .away_from("dev-c"),
        Case::new(
            "a registration of an existing device",
            Some(b"dev-c"),
            Some(registration(ORG, "dev-c")),
            Expect::Skipped("duplicate"),
        ),
        Case::new(
            "a registration of an existing device, on the partition that does not own it",
            None,
            Some(registration(ORG, "dev-c")),
            Expect::Skipped("duplicate"),
        )
        .away_from("dev-c"),
        // -- at the limits: accepted
        accepted(
            "exactly worker.max_event_bytes",
            "at-max-bytes",
            1,
            padded("at-max-bytes", 1, MAX_EVENT_BYTES),
        ),
        accepted(
            "attribute values at their limits",
            "attr-limits",
            1,
            with("attr-limits", 1, |e| {
                e.insert(
                    "attributes".into(),
                    json!({"hostname": "é".repeat(2048), "tags": vec!["t"; 256], "uptimeSeconds": 1.7976931348623157e308}),
                );
            }),
        ),
    ];
    let long_id = "d".repeat(256);
    let long_event = with(&long_id, 1, |e| {
        e.insert("eventId".into(), json!("e".repeat(128)));
    });
    cases.push(accepted(
        "a deviceId of 256 characters and an eventId of 128",
        &long_id,
        1,
        long_event,
    ));
    cases
}

fn org_event(org: &str, device: &str, sequence: i64) -> Vec<u8> {
    with(device, sequence, |e| {
        e.insert("orgId".into(), json!(org));
        e.insert("attributes".into(), json!({"status": "maintenance"}));
    })
}

fn registration(org: &str, device: &str) -> Vec<u8> {
    cohort::event::registration_event(org, device)
}

/// `base(dev-a, 99)` with `attributes` written as raw JSON text (for what `serde_json::Value` cannot hold).
fn with_raw_attributes(attributes: &str) -> Vec<u8> {
    let text = String::from_utf8(with("dev-a", 99, |_| {})).expect("ascii");
    format!("{},\"attributes\":{attributes}}}", &text[..text.len() - 1]).into_bytes()
}

/// The valid event's eventId with an overlong encoding of `/` in it.
fn overlong(valid: &str) -> Vec<u8> {
    splice_bytes(valid, b"\xc0\xaf")
}

/// `valid` with `bytes` in place of its `hostile-` eventId prefix.
fn splice_bytes(valid: &str, bytes: &[u8]) -> Vec<u8> {
    let at = valid.find("hostile-").expect("the event id prefix");
    [
        valid.as_bytes()[..at].to_vec(),
        bytes.to_vec(),
        valid.as_bytes()[at + "hostile-".len()..].to_vec(),
    ]
    .concat()
}

/// Produces one message as the case says; returns its (partition, offset).
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    partition: Option<i32>,
    payload: Option<&[u8]>,
    headers: &[(&str, Vec<u8>)],
) -> anyhow::Result<(i32, i64)> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value.as_slice()),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let delivery = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send(record, Duration::from_secs(10)),
    )
    .await
    .context("producing timed out")?
    .map_err(|(e, _)| anyhow::Error::new(e).context("producing failed"))?;
    Ok((delivery.partition, delivery.offset))
}

/// The stored partition of each device.
async fn partitions(h: &Harness) -> anyhow::Result<BTreeMap<String, i32>> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT id, partition FROM devices")
        .fetch_all(h.pool())
        .await?;
    Ok(rows.into_iter().collect())
}

/// Puts the worker in a known state: orgs `acme` and `globex`, dynamic groups in both, a static group with
/// a member, two releases (so devices have firmware targets), and devices at sequence [`SEQ`].
async fn known_state(h: &Harness, producer: &FutureProducer) -> anyhow::Result<()> {
    groups::create_org(h.pool(), OTHER_ORG, "Globex").await?;
    let acme_groups = standard_groups(h).await?;
    let hand_picked = h.static_group("hand-picked").await?;
    groups::create_group(
        h.pool(),
        &h.catalogue,
        &NewGroup {
            org_id: OTHER_ORG.into(),
            // Support's oracle evaluates every group for every device, whatever its org: this filter
            // matches no device of acme.
            name: "globex-land".into(),
            filter: Some(json!({"operator": "AND", "conditions": [
                {"field": "custom.region", "operator": "equals", "value": "globex-land"}]})),
            ..Default::default()
        },
    )
    .await?;
    h.control_applied().await?;
    let devices = [
        (
            ORG,
            "dev-a",
            json!({"status": "online", "osType": "linux", "uptimeSeconds": 900, "tags": ["prod"], "hostname": "a"}),
        ),
        (
            ORG,
            "dev-b",
            json!({"status": "offline", "osType": "rtos", "uptimeSeconds": 5}),
        ),
        (
            ORG,
            "dev-c",
            json!({"status": "online", "osType": "android", "tags": ["dev"], "firmwareVersion": "1.0.0"}),
        ),
        (
            OTHER_ORG,
            "gx-1",
            json!({"status": "online", "custom.region": "globex-land"}),
        ),
    ];
    for (org, device, attributes) in &devices {
        let payload = with(device, SEQ, |e| {
            e.insert("orgId".into(), json!(org));
            e.insert("attributes".into(), attributes.clone());
        });
        produce(
            producer,
            &h.input,
            Some(device.as_bytes()),
            None,
            Some(&payload),
            &[],
        )
        .await?;
    }
    for (_, device, _) in &devices {
        h.applied(device, SEQ).await?;
    }
    members::add_static(h.pool(), ORG, hand_picked, &["dev-a".to_string()], "test").await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1.0.0", "test").await?;
    firmware::release(
        h.pool(),
        ORG,
        ReleaseTarget::Group(acme_groups[0]),
        "2.0.0",
        "test",
    )
    .await?;
    h.control_applied().await?;
    // The workers apply memberships and targets asynchronously: wait until the stored state is what a
    // from-scratch computation gives.
    settled(h, "the known state settles").await?;
    let targets: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, target_version FROM devices ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    anyhow::ensure!(
        targets
            .iter()
            .any(|(d, v)| d == "dev-a" && v.as_deref() == Some("2.0.0")),
        "the known state has firmware targets: {targets:?}"
    );
    Ok(())
}

/// Waits until the stored memberships, log and targets agree with the oracle, and the outbox is drained.
async fn settled(h: &Harness, what: &str) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let last = &last;
    let waited = eventually(LIMIT, what, || async move {
        let oracle = h.check_oracle(h.clock.now()).await;
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(h.pool())
                .await?;
        *last.lock().expect("not poisoned") =
            format!("oracle {oracle:?}, {unpublished} unpublished");
        Ok((oracle.is_ok() && unpublished == 0).then_some(()))
    })
    .await;
    waited.with_context(|| last.lock().expect("not poisoned").clone())
}

fn header_text<'a>(message: &'a ConsumedMessage, name: &str) -> Option<&'a str> {
    message
        .header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Checks one dead letter against the case that caused it.
fn check_dead_letter(
    case: &Case,
    message: &ConsumedMessage,
    input: &str,
    (partition, offset): (i32, i64),
    reason: DeadLetterReason,
    detail: &str,
) -> Result<(), String> {
    let mut problems = Vec::new();
    let reasons: Vec<_> = message
        .headers
        .iter()
        .filter(|(n, _)| n == HEADER_REASON)
        .collect();
    if reasons.len() != 1 {
        problems.push(format!("{} reason headers", reasons.len()));
    }
    if header_text(message, HEADER_REASON) != Some(reason.as_str()) {
        problems.push(format!(
            "reason header {:?}",
            header_text(message, HEADER_REASON)
        ));
    }
    let header_detail = header_text(message, HEADER_DETAIL).unwrap_or_default();
    if !header_detail.contains(detail) {
        problems.push(format!("detail header {header_detail:?} lacks {detail:?}"));
    }
    if header_detail.chars().any(char::is_control) || header_detail.len() > 1025 + 3 {
        problems.push("the detail has control characters or is too long".into());
    }
    if header_text(message, HEADER_SOURCE_TOPIC) != Some(input)
        || header_text(message, HEADER_SOURCE_PARTITION) != Some(&partition.to_string())
        || header_text(message, HEADER_SOURCE_OFFSET) != Some(&offset.to_string())
    {
        problems.push("source headers".into());
    }
    if message.key != case.key {
        problems.push(format!("key {:?}, expected {:?}", message.key, case.key));
    }
    let body: Value = match message.payload.as_deref().map(serde_json::from_slice) {
        Some(Ok(body)) => body,
        other => return Err(format!("the body is not JSON: {other:?}")),
    };
    let original = case.payload.as_deref().unwrap_or_default();
    let allowed: BTreeSet<&str> = [
        "reason",
        "detail",
        "source",
        "payload",
        "payloadBase64",
        "payloadBytes",
        "truncated",
    ]
    .into();
    let keys_ok = body
        .as_object()
        .is_some_and(|o| o.keys().all(|k| allowed.contains(k.as_str())));
    if !keys_ok
        || body["reason"] != json!(reason.as_str())
        || body["detail"] != json!(header_detail)
        || body["source"] != json!({"topic": input, "partition": partition, "offset": offset})
        || body["payloadBytes"] != json!(original.len())
    {
        problems.push(format!("body {}", short(&body.to_string())));
    }
    let truncated = original.len() > MAX_EVENT_BYTES;
    if body["truncated"] != json!(truncated) {
        problems.push(format!("truncated is {}", body["truncated"]));
    }
    match (case.payload.as_deref(), std::str::from_utf8(original)) {
        (None, _) => {
            if body["payload"] != Value::Null || body.get("payloadBase64").is_some() {
                problems.push("a tombstone's dead letter has a payload".into());
            }
        }
        (Some(_), Ok(text)) => {
            let embedded = body["payload"].as_str().unwrap_or_default();
            let ok = if truncated {
                text.starts_with(embedded) && embedded.len() <= MAX_EVENT_BYTES
            } else {
                embedded == text
            };
            if !ok || body.get("payloadBase64").is_some() {
                problems.push("the embedded payload is not the original".into());
            }
        }
        (Some(_), Err(_)) => {
            use base64::Engine as _;
            let decoded = body["payloadBase64"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            let ok = if truncated {
                original.starts_with(&decoded) && !decoded.is_empty()
            } else {
                decoded == original
            };
            if !ok || body["payload"] != Value::Null {
                problems.push("the base64 payload is not the original".into());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn dead_letter_metric(reason: DeadLetterReason) -> f64 {
    metric(&format!(
        "cohort_worker_dead_letters_total{{reason=\"{}\"}}",
        reason.as_str()
    ))
}

fn outcome_metric(outcome: &str) -> f64 {
    metric(&format!(
        "cohort_worker_events_total{{outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn every_hostile_event_is_dead_lettered_or_applied_as_the_contract_says_and_nothing_else_changes(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    known_state(&h, &producer).await?;
    let homes = partitions(&h).await?;
    let before = Snapshot::take(h.pool()).await?;
    let cases = corpus();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    let metrics_before: BTreeMap<&str, f64> = DeadLetterReason::ALL
        .iter()
        .map(|r| (r.as_str(), dead_letter_metric(*r)))
        .chain(["duplicate", "stale"].map(|o| (o, outcome_metric(o))))
        .collect();

    // Produce the corpus.
    let mut produced: BTreeMap<(i32, i64), &Case> = BTreeMap::new();
    for case in &cases {
        let partition = match &case.part {
            Part::ByKey => case.key.is_none().then_some(0),
            Part::AwayFrom(device) => Some(1 - homes[*device]),
        };
        let at = produce(
            &producer,
            &h.input,
            case.key.as_deref(),
            partition,
            case.payload.as_deref(),
            &case.headers,
        )
        .await
        .with_context(|| format!("producing case {:?}", case.name))?;
        produced.insert(at, case);
    }

    // Then a valid event on each partition (for new devices: no key, so the partition is chosen here),
    // and one that moves a stored device into a group.
    let mut touched: BTreeSet<String> = cases
        .iter()
        .filter_map(|c| match &c.expect {
            Expect::Applied { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect();
    for partition in [0, 1] {
        let device = format!("after-{partition}");
        let payload = with(&device, 1, |e| {
            e.insert(
                "attributes".into(),
                json!({"status": "online", "osType": "linux"}),
            );
        });
        produce(
            &producer,
            &h.input,
            None,
            Some(partition),
            Some(&payload),
            &[],
        )
        .await?;
        touched.insert(device);
    }
    let moved = with("dev-b", SEQ + 1, |e| {
        e.insert(
            "attributes".into(),
            json!({"status": "online", "osType": "linux"}),
        );
    });
    produce(&producer, &h.input, Some(b"dev-b"), None, Some(&moved), &[]).await?;
    touched.insert("dev-b".into());
    h.applied("after-0", 1).await?;
    h.applied("after-1", 1).await?;
    h.applied("dev-b", SEQ + 1).await?;
    for &at in produced.keys() {
        h.processed(at).await?;
    }
    settled(&h, "the corpus and the valid events settle").await?;

    // Exactly one dead letter per refused case, as the case expects.
    let expected_dead: usize = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::DeadLetter(..)))
        .count();
    let dead = h.kafka.read_all(&h.dead_letters).await?;
    let mut by_source: BTreeMap<(i32, i64), Vec<&ConsumedMessage>> = BTreeMap::new();
    for message in &dead {
        let source = (
            header_text(message, HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            header_text(message, HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        );
        match source {
            (Some(p), Some(o)) => by_source.entry((p, o)).or_default().push(message),
            _ => anyhow::bail!("a dead letter without its source: {message:?}"),
        }
    }
    let mut failures = Vec::new();
    for (&at, case) in &produced {
        let letters = by_source.remove(&at).unwrap_or_default();
        match &case.expect {
            Expect::DeadLetter(reason, detail) => match letters.as_slice() {
                [one] => {
                    if let Err(problem) =
                        check_dead_letter(case, one, &h.input, at, *reason, detail)
                    {
                        failures.push(format!("{}: {problem}", case.name));
                    }
                }
                other => failures.push(format!(
                    "{}: {} dead letters, expected one ({})",
                    case.name,
                    other.len(),
                    reason
                )),
            },
            Expect::Applied { device, sequence } => {
                if !letters.is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered ({:?}), expected it applied",
                        case.name,
                        header_text(letters[0], HEADER_DETAIL)
                    ));
                }
                let stored: Option<(String, i64)> =
                    sqlx::query_as("SELECT org_id, sequence FROM devices WHERE id = $1")
                        .bind(device)
                        .fetch_optional(h.pool())
                        .await?;
                if stored != Some((ORG.to_string(), *sequence)) {
                    failures.push(format!("{}: stored as {stored:?}", case.name));
                }
            }
            Expect::Skipped(_) => {
                if !letters.is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered ({:?}), expected it skipped",
                        case.name,
                        header_text(letters[0], HEADER_DETAIL)
                    ));
                }
            }
        }
    }
    anyhow::ensure!(
        by_source.is_empty(),
        "dead letters of messages no case sent: {by_source:?}"
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(dead.len(), expected_dead);

    // The dead-letter counter rose by reason, and the skipped events were counted as such.
    let mut expected_counts: BTreeMap<&str, f64> = BTreeMap::new();
    for case in &cases {
        match &case.expect {
            Expect::DeadLetter(reason, _) => {
                *expected_counts.entry(reason.as_str()).or_default() += 1.0
            }
            Expect::Skipped(outcome) => *expected_counts.entry(outcome).or_default() += 1.0,
            Expect::Applied { .. } => {}
        }
    }
    let metrics_before = &metrics_before;
    let expected_counts = &expected_counts;
    eventually(
        Duration::from_secs(10),
        "the metrics count every case",
        || async move {
            let now: BTreeMap<&str, f64> = DeadLetterReason::ALL
                .iter()
                .map(|r| (r.as_str(), dead_letter_metric(*r)))
                .chain(["duplicate", "stale"].map(|o| (o, outcome_metric(o))))
                .collect();
            let rose: BTreeMap<&str, f64> = now
                .iter()
                .map(|(k, v)| (*k, v - metrics_before[k]))
                .filter(|(_, d)| *d != 0.0)
                .collect();
            Ok((rose == *expected_counts).then_some(()))
        },
    )
    .await
    .with_context(|| format!("expected the counters to rise by {expected_counts:?}"))?;

    // Nothing stored changed but what the accepted events did.
    let after = Snapshot::take(h.pool()).await?;
    let dead_topic = h.dead_letters.clone();
    let touched_keys: BTreeSet<String> = touched
        .iter()
        .map(|d| format!("\\x{}", hex(d.as_bytes())))
        .collect();
    before.assert_unchanged(&after, |table, row| {
        let device = match table {
            "devices" => snapshot::text(row, "id"),
            "outbox" => {
                // Dead letters were checked above; rollout events of touched devices may be new.
                if snapshot::text(row, "topic") == Some(dead_topic.as_str()) {
                    return true;
                }
                return snapshot::text(row, "message_key")
                    .is_some_and(|k| touched_keys.contains(k));
            }
            _ => snapshot::text(row, "device_id"),
        };
        device.is_some_and(|d| touched.contains(d))
    })?;
    let positions: BTreeMap<String, i32> = partitions(&h).await?;
    for (device, home) in &homes {
        anyhow::ensure!(
            positions.get(device) == Some(home),
            "device {device} moved from partition {home} to {:?}",
            positions.get(device)
        );
    }
    // dev-b left prod-or-rtos for online-linux, whose release it now targets.
    let dev_b: (i64, Option<String>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM device_group_memberships WHERE device_id = 'dev-b'), \
         (SELECT target_version FROM devices WHERE id = 'dev-b')",
    )
    .fetch_one(h.pool())
    .await?;
    anyhow::ensure!(
        dev_b == (1, Some("2.0.0".to_string())),
        "dev-b after its valid event: {dev_b:?}"
    );
    h.stop().await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
