//! Cases that break the message itself: empty and oversize values, malformed JSON, invalid UTF-8, and
//! JSON that is not an object.

use cohort::event::DeadLetterReason::*;

use super::{
    nested, overlong, padded, refused, splice_bytes, valid_event, valid_event_text,
    with_raw_attributes, Case, Expect, MAX_EVENT_BYTES,
};

/// Empty and oversize values, malformed JSON, invalid UTF-8, and JSON that is not an object.
pub(super) fn cases() -> Vec<Case> {
    let valid = valid_event();
    let valid_text = valid_event_text();
    let half = valid[..valid.len() / 2].to_vec();
    vec![
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
    ]
}
