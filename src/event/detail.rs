//! Detail strings of decoding failures: bounded ([`MAX_DETAIL_BYTES`]), quoting at most a short prefix of
//! any input value, and free of control characters, so they are safe in logs and Kafka headers.

use serde_json::Value;

/// Longest [`DecodeError::detail`](super::DecodeError::detail), in bytes (plus a closing `…` when cut).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// Most characters of an input value quoted in a detail.
pub(super) const SNIPPET_CHARS: usize = 64;

/// The JSON type of `value` as a detail names it (`null`, `an array`, …).
pub(super) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a wrong value: scalars quoted (cut to a prefix), containers by type.
pub(super) fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => snippet(s),
        Value::Number(n) => truncate(&n.to_string(), SNIPPET_CHARS),
        Value::Bool(b) => b.to_string(),
        other => json_type(other).to_string(),
    }
}

/// `s` quoted and escaped, cut to its first [`SNIPPET_CHARS`] characters.
pub(super) fn snippet(s: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if i == SNIPPET_CHARS {
            out.push('…');
            break;
        }
        match c {
            // `escape_debug` writes NUL as `\0`, which reads as octal before a digit.
            '\0' => out.push_str("\\u{0}"),
            c => out.extend(c.escape_debug()),
        }
    }
    out.push('"');
    out
}

/// `s` cut to at most `max` bytes at a character boundary, with `…` appended when cut.
pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or_default())
}

/// Escapes control characters (so details are safe in logs and headers) and bounds the length.
pub(super) fn bound_detail(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_DETAIL_BYTES + 3));
    for c in s.chars() {
        let before = out.len();
        if c == '\0' {
            out.push_str("\\u{0}");
        } else if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
        if out.len() > MAX_DETAIL_BYTES {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// Joins attribute errors with `; `, stopping (and saying how many are left out) before the detail bound.
pub(super) fn join_bounded(errors: &[String]) -> String {
    // Leaves room for the "; and N more" suffix.
    const BUDGET: usize = MAX_DETAIL_BYTES - 32;
    let mut out = String::new();
    let mut shown = 0;
    for error in errors {
        let sep = if out.is_empty() { 0 } else { 2 };
        if shown > 0 && out.len() + sep + error.len() > BUDGET {
            break;
        }
        if sep > 0 {
            out.push_str("; ");
        }
        out.push_str(error);
        shown += 1;
    }
    if shown < errors.len() {
        out.push_str(&format!("; and {} more", errors.len() - shown));
    }
    out
}
