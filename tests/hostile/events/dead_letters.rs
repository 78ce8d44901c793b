//! What a dead letter must be: its headers, its body (the dead-letter contract) and the original
//! payload it carries.

use std::collections::BTreeSet;

use cohort::event::{
    DeadLetterReason, HEADER_DETAIL, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
};
use cohort_testkit::ConsumedMessage;
use serde_json::{json, Value};

use super::{short, Case, MAX_EVENT_BYTES};

pub(super) fn header_text<'a>(message: &'a ConsumedMessage, name: &str) -> Option<&'a str> {
    message
        .header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Checks one dead letter against the case that caused it.
pub(super) fn check_dead_letter(
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
