//! The dead-letter message: what the worker writes to the outbox for a message it can never apply
//! (`schemas/dead-letter.schema.json`).

use base64::Engine as _;
use serde_json::{Map, Value};

use super::contract::DecodeError;
use super::detail::bound_detail;
use crate::outbox::Message;

/// Header: the [`DeadLetterReason`](super::DeadLetterReason) of a dead letter, as
/// [`DeadLetterReason::as_str`](super::DeadLetterReason::as_str).
pub const HEADER_REASON: &str = "cohort-dead-letter-reason";
/// Header: the [`DecodeError::detail`] of a dead letter.
pub const HEADER_DETAIL: &str = "cohort-dead-letter-detail";
/// Header: the topic the dead-lettered message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "cohort-source-topic";
/// Header: its partition, in decimal.
pub const HEADER_SOURCE_PARTITION: &str = "cohort-source-partition";
/// Header: its offset, in decimal.
pub const HEADER_SOURCE_OFFSET: &str = "cohort-source-offset";

/// Builds the outbox message dead-lettering a message that failed with `error`, read from
/// `source_topic`/`partition` at `offset`. Total: every input gets one, whatever its size or bytes.
///
/// The body (`schemas/dead-letter.schema.json`) embeds the original value as a string when it is UTF-8,
/// else as `payloadBase64`. The embedded form is cut to a prefix whose encoding (JSON string escapes or
/// base64) takes at most `max_bytes` (pass `worker.max_event_bytes`), and `truncated` says whether it was
/// cut; `payloadBytes` is the original length. The whole value is then at most `max_bytes` plus a few KiB
/// (the detail and the source), which must fit the dead-letter topic's `max.message.bytes`.
// Eight plain values the worker has at hand when it dead-letters; a parameter struct would only move
// the same list.
#[allow(clippy::too_many_arguments)]
pub fn dead_letter(
    dlq_topic: &str,
    source_topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    error: &DecodeError,
    max_bytes: usize,
) -> Message {
    // A detail built without `DecodeError::new` is bounded here too: it goes into a header.
    let detail = bound_detail(&error.detail);
    let mut body = Map::new();
    body.insert("reason".into(), error.reason.as_str().into());
    body.insert("detail".into(), detail.clone().into());
    body.insert(
        "source".into(),
        serde_json::json!({ "topic": source_topic, "partition": partition, "offset": offset }),
    );
    let original = payload.unwrap_or_default();
    let truncated = match payload.map(std::str::from_utf8) {
        None => {
            body.insert("payload".into(), Value::Null);
            false
        }
        Some(Ok(text)) => {
            let prefix = json_string_prefix(text, max_bytes);
            body.insert("payload".into(), prefix.into());
            prefix.len() < text.len()
        }
        Some(Err(_)) => {
            // Whole 3-byte groups, so the base64 text is at most `max_bytes`.
            let raw_max = max_bytes / 4 * 3;
            let prefix = original.get(..raw_max).unwrap_or(original);
            body.insert("payload".into(), Value::Null);
            body.insert(
                "payloadBase64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(prefix)
                    .into(),
            );
            prefix.len() < original.len()
        }
    };
    body.insert("payloadBytes".into(), original.len().into());
    body.insert("truncated".into(), truncated.into());
    Message::new(
        dlq_topic,
        key.map(<[u8]>::to_vec),
        // `Value`'s `Display` cannot fail.
        Value::Object(body).to_string().into_bytes(),
    )
    .with_header(HEADER_REASON, Some(error.reason.as_str().into()))
    .with_header(HEADER_DETAIL, Some(detail))
    .with_header(HEADER_SOURCE_TOPIC, Some(source_topic.into()))
    .with_header(HEADER_SOURCE_PARTITION, Some(partition.to_string()))
    .with_header(HEADER_SOURCE_OFFSET, Some(offset.to_string()))
}

/// The longest prefix of `s` (at a character boundary) whose JSON string escaping, as serde_json writes
/// it, takes at most `max_bytes`.
fn json_string_prefix(s: &str, max_bytes: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' | '\\' | '\u{08}' | '\u{0c}' | '\n' | '\r' | '\t' => 2,
            c if c < ' ' => 6,
            c => c.len_utf8(),
        };
        if used + escaped > max_bytes {
            return s.get(..i).unwrap_or_default();
        }
        used += escaped;
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{decode, DeadLetterReason::*, MAX_DETAIL_BYTES};
    use crate::rules::catalogue::Catalogue;

    const MAX: usize = 65_536;

    fn catalogue() -> Catalogue {
        Catalogue::default()
    }

    fn body(message: &Message) -> Value {
        serde_json::from_slice(&message.payload).unwrap()
    }

    #[test]
    fn a_dead_letter_carries_the_reason_source_and_original() {
        let payload = br#"{"eventId": 1}"#;
        let err = decode(Some(b"k"), Some(payload), &catalogue(), MAX).unwrap_err();
        let msg = dead_letter("dlq", "in", 3, 99, Some(b"k"), Some(payload), &err, MAX);
        assert_eq!(msg.topic, "dlq");
        assert_eq!(msg.key.as_deref(), Some(&b"k"[..]));
        // In name order, as they are stored and published.
        assert_eq!(
            msg.header_pairs(),
            [
                ("cohort-dead-letter-detail", Some(err.detail.as_str())),
                ("cohort-dead-letter-reason", Some("invalid_event")),
                ("cohort-source-offset", Some("99")),
                ("cohort-source-partition", Some("3")),
                ("cohort-source-topic", Some("in")),
            ]
        );
        assert_eq!(
            body(&msg),
            json!({
                "reason": "invalid_event", "detail": err.detail,
                "source": {"topic": "in", "partition": 3, "offset": 99},
                "payload": r#"{"eventId": 1}"#, "payloadBytes": 14, "truncated": false
            })
        );
        let tombstone = dead_letter("dlq", "in", 0, 0, None, None, &err, MAX);
        assert_eq!(body(&tombstone)["payload"], Value::Null);
        assert_eq!(tombstone.key, None);
    }

    #[test]
    fn a_non_utf8_original_round_trips_through_base64() {
        let payload = b"{\"eventId\":\"\xff\xfe\"}\x00";
        let err = decode(None, Some(payload), &catalogue(), MAX).unwrap_err();
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(payload), &err, MAX);
        let body = body(&msg);
        assert_eq!(body["payload"], Value::Null);
        assert_eq!(body["truncated"], json!(false));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body["payloadBase64"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, payload);
    }

    #[test]
    fn a_huge_original_is_cut_to_max_bytes_in_the_dead_letter() {
        let c = catalogue();
        let mut text = vec![b'\x01'; 10 * 1024 * 1024];
        text.extend_from_slice("é".as_bytes());
        let err = decode(None, Some(&text), &c, MAX).unwrap_err();
        assert_eq!(err.reason, Oversize);
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(&text), &err, MAX);
        assert!(msg.payload.len() <= MAX + 2048, "{}", msg.payload.len());
        let b = body(&msg);
        assert_eq!(b["truncated"], json!(true));
        assert_eq!(b["payloadBytes"], json!(text.len()));
        let embedded = b["payload"].as_str().unwrap();
        assert!(text.starts_with(embedded.as_bytes()));

        let mut binary = vec![0xffu8; 10 * 1024 * 1024];
        binary[0] = b'{';
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(&binary), &err, MAX);
        assert!(msg.payload.len() <= MAX + 2048, "{}", msg.payload.len());
        let b = body(&msg);
        assert_eq!(b["truncated"], json!(true));
        let prefix = base64::engine::general_purpose::STANDARD
            .decode(b["payloadBase64"].as_str().unwrap())
            .unwrap();
        assert!(binary.starts_with(&prefix) && !prefix.is_empty());

        let cut = dead_letter("dlq", "in", 0, 1, None, Some("aé".as_bytes()), &err, 2);
        assert_eq!(body(&cut)["payload"], json!("a"));
        let none = dead_letter("dlq", "in", 0, 1, None, Some(b"abc"), &err, 0);
        assert_eq!(body(&none)["payload"], json!(""));
        assert_eq!(body(&none)["truncated"], json!(true));
    }

    #[test]
    fn json_string_prefix_matches_serde_json_escaping() {
        let s = "a\"\\\u{1}\n\u{7f}é😀";
        let full = serde_json::to_string(s).unwrap().len() - 2;
        assert_eq!(json_string_prefix(s, full), s);
        assert!(json_string_prefix(s, full - 1).len() < s.len());
    }

    #[test]
    fn hand_built_details_are_bounded_in_the_dead_letter_headers() {
        let err = DecodeError {
            reason: UnknownOrg,
            detail: format!("org {}\n", "x".repeat(5000)),
        };
        let msg = dead_letter("dlq", "in", 0, 1, None, Some(b"{}"), &err, MAX);
        let detail = msg.header_value(HEADER_DETAIL).unwrap();
        assert!(detail.len() <= MAX_DETAIL_BYTES + 3);
        assert!(!detail.chars().any(char::is_control));
    }
}
