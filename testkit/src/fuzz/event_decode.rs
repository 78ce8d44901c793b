//! `event_decode`: bytes → a Kafka key, a value and a size limit → `cohort::event::decode`, whose result
//! must satisfy the contract of `src/event/` and `schemas/`.

use base64::Engine as _;
use cohort::event::{
    dead_letter, decode, encode, DeadLetterReason, DecodeError, DeviceEvent, MAX_DETAIL_BYTES,
    MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
    MAX_REMOVED,
};
use cohort::rules::attrs::MAX_ATTRIBUTES;
use cohort::rules::time::{MAX_MILLIS, MIN_MILLIS};
use cohort::rules::Catalogue;
use serde_json::Value;

use crate::schema::Schema;

use super::repo_root;

// =========================================================================================================
// event_decode

/// The size limits `event_decode` decodes with, chosen by the input's second byte: the configuration's
/// default `worker.max_event_bytes`, the examples' limit, a tiny one, and a large one.
const MAX_BYTES_CHOICES: [usize; 4] = [65_536, 4_096, 64, 1 << 20];

/// How an `event_decode` input is laid out:
/// - byte 0 (mod 4) says what the Kafka key is: `0` none, `1` the `deviceId` of the payload (when it has
///   one; so that accepted events are common), `2` the bytes up to the first `\n` of the rest (which is
///   then the payload), `3` none, and the message is a tombstone (no value);
/// - byte 1 (mod 4) chooses the size limit from `MAX_BYTES_CHOICES`;
/// - the rest is the message value.
///
/// ASCII digits make readable seeds: `10{"eventId": …}` is an event keyed by its device, limit 65,536.
pub struct EventInput<'a> {
    pub key: Option<Vec<u8>>,
    pub payload: Option<&'a [u8]>,
    pub max_bytes: usize,
}

impl<'a> EventInput<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&mode, rest) = data.split_first()?;
        let (&limit, rest) = rest.split_first()?;
        let max_bytes = MAX_BYTES_CHOICES[usize::from(limit % 4)];
        Some(match mode % 4 {
            0 => Self {
                key: None,
                payload: Some(rest),
                max_bytes,
            },
            1 => {
                let key = serde_json::from_slice::<Value>(rest)
                    .ok()
                    .and_then(|v| v.get("deviceId")?.as_str().map(|s| s.as_bytes().to_vec()));
                Self {
                    key,
                    payload: Some(rest),
                    max_bytes,
                }
            }
            2 => {
                let (key, payload) = match rest.iter().position(|b| *b == b'\n') {
                    Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
                    None => (Vec::new(), rest),
                };
                Self {
                    key: Some(key),
                    payload: Some(payload),
                    max_bytes,
                }
            }
            _ => Self {
                key: None,
                payload: None,
                max_bytes,
            },
        })
    }
}

thread_local! {
    // `Schema` caches its patterns in a `RefCell`, so each thread loads its own.
    static EVENT_SCHEMA: Schema =
        Schema::load(repo_root().join("schemas/device-attribute-changes.schema.json"));
    static DEAD_LETTER_SCHEMA: Schema =
        Schema::load(repo_root().join("schemas/dead-letter.schema.json"));
}

fn event_schema_errors(value: &Value) -> Vec<String> {
    EVENT_SCHEMA.with(|schema| schema.errors(value))
}

fn dead_letter_schema_errors(value: &Value) -> Vec<String> {
    DEAD_LETTER_SCHEMA.with(|schema| schema.errors(value))
}

fn valid_id(s: &str, max_chars: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max_chars && !s.chars().any(char::is_control)
}

/// Fuzz target `event_decode`: see [`EventInput`] for the layout.
pub fn check_event_decode(data: &[u8]) {
    let Some(input) = EventInput::parse(data) else {
        return;
    };
    let catalogue = Catalogue::default();
    let key = input.key.as_deref();
    let result = decode(key, input.payload, &catalogue, input.max_bytes);
    // Decoding is deterministic, also once the event's custom fields are interned.
    assert_eq!(
        decode(key, input.payload, &catalogue, input.max_bytes),
        result,
        "decode is not deterministic"
    );
    match result {
        Ok(event) => accepted_event(&event, key, input.payload, input.max_bytes, &catalogue),
        Err(error) => refused_event(&error, key, input.payload, input.max_bytes, &catalogue),
    }
}

fn accepted_event(
    event: &DeviceEvent,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    max_bytes: usize,
    c: &Catalogue,
) {
    let payload = payload.expect("a tombstone is never accepted");
    assert!(!payload.is_empty() && payload.len() <= max_bytes);
    assert!(
        valid_id(&event.event_id, MAX_EVENT_ID_CHARS),
        "eventId {:?}",
        event.event_id
    );
    assert!(
        valid_id(&event.org_id, MAX_ORG_ID_CHARS),
        "orgId {:?}",
        event.org_id
    );
    assert!(
        valid_id(&event.device_id, MAX_DEVICE_ID_CHARS),
        "deviceId {:?}",
        event.device_id
    );
    assert!(event.sequence >= 0, "sequence {}", event.sequence);
    if let Some(key) = key {
        assert_eq!(key, event.device_id.as_bytes(), "accepted with another key");
    }
    if let Some(Some(lock)) = &event.firmware_lock {
        assert!(
            valid_id(lock, MAX_FIRMWARE_LOCK_CHARS),
            "firmwareLock {lock:?}"
        );
    }
    if let Some(t) = event.occurred_at {
        assert!((MIN_MILLIS..=MAX_MILLIS).contains(&t), "occurredAt {t}");
    }
    // Canonical form: `set` strictly sorted by field, `removed` strictly sorted, no field in both, no
    // computed field in either.
    assert!(
        event.set.windows(2).all(|w| w[0].0 < w[1].0),
        "set is not sorted and unique"
    );
    assert!(
        event.removed.windows(2).all(|w| w[0] < w[1]),
        "removed is not sorted and unique"
    );
    for (field, _) in &event.set {
        assert!(
            event.removed.binary_search(field).is_err(),
            "a field both set and removed"
        );
    }
    for field in event.changed_fields() {
        assert!(c.computed(field).is_none(), "a computed field changes");
    }
    assert!(event.set.len() <= MAX_ATTRIBUTES);
    assert!(event.removed.len() <= MAX_REMOVED + MAX_ATTRIBUTES);
    if event.register {
        assert!(
            event.set.is_empty()
                && event.removed.is_empty()
                && event.development.is_none()
                && event.firmware_lock.is_none(),
            "a registration carries changes"
        );
    }
    // Whatever the decoder accepts, the published schema accepts.
    let value: Value = serde_json::from_slice(payload).expect("an accepted event is JSON");
    let errors = event_schema_errors(&value);
    assert!(errors.is_empty(), "accepted but schema-invalid: {errors:?}");
    // Re-encoding gives an event the schema accepts and that decodes to the same event.
    let again = encode(&event.to_json(c));
    let errors = event_schema_errors(&serde_json::from_slice(&again).expect("encode gives JSON"));
    assert!(
        errors.is_empty(),
        "re-encoded but schema-invalid: {errors:?}"
    );
    let decoded = decode(
        Some(event.device_id.as_bytes()),
        Some(&again),
        c,
        usize::MAX,
    );
    assert_eq!(
        decoded.as_ref(),
        Ok(event),
        "the re-encoded event decodes differently"
    );
}

fn refused_event(
    error: &DecodeError,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    max_bytes: usize,
    c: &Catalogue,
) {
    use DeadLetterReason::*;
    assert!(
        matches!(
            error.reason,
            EmptyPayload
                | Oversize
                | MalformedJson
                | InvalidEvent
                | InvalidAttributes
                | KeyMismatch
        ),
        "decode decided {:?}, a worker reason",
        error.reason
    );
    assert!(!error.detail.is_empty(), "no detail for {:?}", error.reason);
    assert!(
        error.detail.len() <= MAX_DETAIL_BYTES + '…'.len_utf8(),
        "detail of {} bytes",
        error.detail.len()
    );
    assert!(
        !error.detail.chars().any(char::is_control),
        "control character in {:?}",
        error.detail
    );

    // The reason follows the documented order of checks.
    let expected_early = match payload {
        None | Some([]) => Some(EmptyPayload),
        Some(p) if p.len() > max_bytes => Some(Oversize),
        Some(p) if serde_json::from_slice::<Value>(p).is_err() => Some(MalformedJson),
        Some(_) => None,
    };
    match expected_early {
        Some(reason) => assert_eq!(error.reason, reason, "{}", error.detail),
        None => assert!(
            matches!(error.reason, InvalidEvent | InvalidAttributes | KeyMismatch),
            "{:?} for well-formed JSON within the limit: {}",
            error.reason,
            error.detail
        ),
    }
    // The key is checked last: without a key, a key mismatch decodes, and any other failure stays.
    let keyless = decode(None, payload, c, max_bytes);
    if error.reason == KeyMismatch {
        let event = keyless.expect("a key mismatch decodes without the key");
        assert!(key.is_some_and(|k| k != event.device_id.as_bytes()));
    } else {
        assert_eq!(
            keyless.as_ref().err(),
            Some(error),
            "the key changed a non-key failure"
        );
    }

    // Every failure makes a dead letter the schema accepts, that keeps (a bounded prefix of) the value.
    let message = dead_letter("dlq", "in", 1, 2, key, payload, error, max_bytes);
    assert_eq!(message.key.as_deref(), key);
    assert_eq!(
        message.header_value("cohort-dead-letter-reason"),
        Some(error.reason.as_str())
    );
    assert!(
        message.payload.len() <= max_bytes.saturating_add(8192),
        "a dead letter of {} bytes for a limit of {max_bytes}",
        message.payload.len()
    );
    let body: Value = serde_json::from_slice(&message.payload).expect("a dead letter is JSON");
    let errors = dead_letter_schema_errors(&body);
    assert!(
        errors.is_empty(),
        "dead letter is schema-invalid: {errors:?}"
    );
    let original = payload.unwrap_or_default();
    assert_eq!(body["payloadBytes"].as_u64(), Some(original.len() as u64));
    let kept: Vec<u8> = match (&body["payload"], body.get("payloadBase64")) {
        (Value::String(s), None) => s.as_bytes().to_vec(),
        (Value::Null, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("payloadBase64 is base64"),
        (Value::Null, None) => {
            assert!(
                payload.is_none(),
                "a value went missing from its dead letter"
            );
            Vec::new()
        }
        other => panic!("dead letter payload fields {other:?}"),
    };
    assert!(
        original.starts_with(&kept),
        "the dead letter's payload is not a prefix of the value"
    );
    assert_eq!(
        body["truncated"].as_bool(),
        Some(kept.len() < original.len())
    );
}
