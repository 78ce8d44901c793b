//! Duplicate object keys in request bodies. JSON leaves their meaning open — serde_json keeps the last,
//! other parsers keep the first — so a client, a gateway and cohort could disagree about what a body says
//! (which `operator` a filter group has, say). The API refuses them anywhere in a body, as the event decoder
//! does (see [`crate::event`]).
//!
//! [`find_duplicate_key`] walks the document once before the typed parse, keeping only the keys of the
//! objects still open (one set per open object; nesting is bounded by serde_json's recursion limit) and
//! borrowing keys from the body where they need no unescaping, so its cost is linear in the body's size.
//! It stops at the first duplicate.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{bounded_path, snippet};

/// The longest prefix of a key quoted in a message or a path, in characters.
const KEY_CHARS: usize = 64;

/// A key that appears twice in one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The key (at most its first 64 characters).
    pub key: String,
    /// Where its second occurrence is: a JSON path such as `$.filterConditions.operator`.
    pub path: String,
}

impl DuplicateKey {
    /// What is wrong, without the place.
    pub fn message(&self) -> String {
        format!(
            "Duplicate key {:?}: each key may appear once per object",
            self.key
        )
    }
}

impl fmt::Display for DuplicateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Duplicate key {:?} at {}: each key may appear once per object",
            self.key, self.path
        )
    }
}

/// The first key repeated in an object anywhere in `body`, if any. A body that is not JSON (or nests deeper
/// than serde_json's recursion limit) gives `None` unless a duplicate comes before the error: the typed
/// parse reports the error.
pub fn find_duplicate_key(body: &[u8]) -> Option<DuplicateKey> {
    let found = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // An error is either the duplicate (noted in `found`) or a syntax error, which the typed parse reports.
    let _ = Walk {
        at: None,
        found: &found,
    }
    .deserialize(&mut deserializer);
    found.into_inner()
}

/// One step of the path from the root to the value being read.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The path to the value being read, as a chain of steps on the stack (nothing is built unless a
/// duplicate is found).
struct At<'a> {
    parent: Option<&'a At<'a>>,
    segment: Segment<'a>,
}

/// The path as written (`$.a[1].b`); a path longer than [`super::MAX_DETAIL_PATH_BYTES`] keeps its end, the part
/// nearest the duplicate (`$…[0][0].b`).
fn render(at: Option<&At<'_>>) -> String {
    let mut segments = Vec::new();
    let mut cursor = at;
    while let Some(step) = cursor {
        segments.push(&step.segment);
        cursor = step.parent;
    }
    let mut path = String::from("$");
    for segment in segments.into_iter().rev() {
        match segment {
            Segment::Key(key) => {
                path.push('.');
                path.push_str(&snippet(key, KEY_CHARS));
            }
            Segment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    bounded_path(path)
}

/// Reads any value, checking every object in it.
struct Walk<'a, 'p> {
    at: Option<&'p At<'p>>,
    found: &'a RefCell<Option<DuplicateKey>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            let here = At {
                parent: self.at,
                segment: Segment::Index(index),
            };
            let item = Walk {
                at: Some(&here),
                found: self.found,
            };
            if seq.next_element_seed(item)?.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let here = At {
                parent: self.at,
                segment: Segment::Key(&key),
            };
            if keys.contains(key.as_ref()) {
                *self.found.borrow_mut() = Some(DuplicateKey {
                    key: snippet(&key, KEY_CHARS).into_owned(),
                    path: render(Some(&here)),
                });
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walk {
                at: Some(&here),
                found: self.found,
            })?;
            keys.insert(key);
        }
        Ok(())
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::MAX_DETAIL_PATH_BYTES;

    fn dup(body: &str) -> Option<(String, String)> {
        find_duplicate_key(body.as_bytes()).map(|d| (d.key, d.path))
    }

    fn found(key: &str, path: &str) -> Option<(String, String)> {
        Some((key.to_string(), path.to_string()))
    }

    #[test]
    fn documents_without_repeated_keys_pass() {
        for body in [
            r#"{}"#,
            r#"[]"#,
            r#"null"#,
            r#"1.5e300"#,
            r#""a""#,
            r#"{"a": 1, "b": {"a": 1, "b": [{"a": 1}, {"a": 2}]}, "c": [[{"a": 1, "A": 2}]]}"#,
            r#"{"a": {"a": {"a": {}}}}"#,
            r#"[{"x": 1}, {"x": 1}]"#,
            r#"{"é": 1, "e\u0301": 2}"#,
        ] {
            assert_eq!(dup(body), None, "{body}");
        }
    }

    #[test]
    fn a_repeated_key_is_found_at_any_depth_with_its_path() {
        assert_eq!(
            dup(r#"{"name": "a", "name": "b"}"#),
            found("name", "$.name")
        );
        assert_eq!(
            dup(r#"{"filterConditions": {"operator": "AND", "conditions": [], "operator": "OR"}}"#),
            found("operator", "$.filterConditions.operator")
        );
        assert_eq!(
            dup(
                r#"{"f": {"conditions": [{"field": "x"}, {"field": "a", "value": 1, "field": "b"}]}}"#
            ),
            found("field", "$.f.conditions[1].field")
        );
        assert_eq!(
            dup(r#"[[], [0, {"a": 1, "a": 1}]]"#),
            found("a", "$[1][1].a")
        );
    }

    #[test]
    fn keys_are_compared_after_unescaping() {
        assert_eq!(dup(r#"{"ab": 1, "a\u0062": 2}"#), found("ab", "$.ab"));
        assert_eq!(dup(r#"{"a\"b": 1, "a\"b": 2}"#), found("a\"b", "$.a\"b"));
    }

    #[test]
    fn the_first_duplicate_wins_over_a_later_syntax_error() {
        assert_eq!(dup(r#"{"a": 1, "a": 2, "#), found("a", "$.a"));
        assert_eq!(dup(r#"{"a": 1, "b": "#), None);
        assert_eq!(dup("not json"), None);
        assert_eq!(dup(""), None);
    }

    #[test]
    fn deep_nesting_stops_at_the_recursion_limit_without_overflowing() {
        let deep = "[".repeat(100_000);
        assert_eq!(dup(&deep), None);
        let deep_objects = r#"{"a":"#.repeat(100_000);
        assert_eq!(dup(&deep_objects), None);
        // Within the limit, a duplicate deep down is found, with its whole path.
        let nested = |depth| {
            format!(
                "{}{{\"k\": 1, \"k\": 2}}{}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let (key, path) = dup(&nested(50)).expect("found");
        assert_eq!(key, "k");
        assert_eq!(path, format!("${}.k", "[0]".repeat(50)));
        // A path too long to give whole keeps its end, nearest the duplicate.
        let (_, path) = dup(&nested(120)).expect("found");
        assert!(path.len() <= MAX_DETAIL_PATH_BYTES, "{path}");
        assert!(
            path.starts_with("$…") && path.ends_with("[0][0].k"),
            "{path}"
        );
    }

    #[test]
    fn long_keys_are_quoted_and_placed_briefly() {
        let key = "k".repeat(100_000);
        let body = format!(r#"{{"{key}": {{"{key}": 1, "{key}": 2}}}}"#);
        let found = find_duplicate_key(body.as_bytes()).expect("found");
        assert_eq!(found.key.chars().count(), KEY_CHARS + 1, "{found:?}");
        assert!(found.path.len() <= MAX_DETAIL_PATH_BYTES, "{found:?}");
        assert!(found.to_string().len() < 400, "{found}");
    }

    #[test]
    fn many_distinct_keys_pass_and_a_late_repeat_is_found() {
        let keys: Vec<String> = (0..50_000).map(|i| format!("\"k{i}\": {i}")).collect();
        let body = format!("{{{}}}", keys.join(","));
        assert_eq!(dup(&body), None);
        let body = format!("{{{}, \"k7\": 0}}", keys.join(","));
        assert_eq!(dup(&body), found("k7", "$.k7"));
    }
}
