//! Cases in the attributes: wrong-typed, oversize, too many, deeply nested.

use serde_json::{json, Value};

use super::{refused_attributes, Case};

/// Attributes: wrong-typed, oversize, too many, deeply nested.
pub(super) fn cases() -> Vec<Case> {
    vec![
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
    ]
}
