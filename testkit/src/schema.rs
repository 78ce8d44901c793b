//! A small JSON Schema (draft 2020-12) checker for the keywords cohort's schemas use, so the suite can
//! check examples and generated events against the published files without a heavy dependency.
//!
//! It refuses (panics on) any keyword it does not implement, so a schema cannot grow a constraint this
//! checker silently ignores. Annotation keywords (`description`, `format`, …) are ignored, as JSON Schema
//! does by default.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use serde_json::{Map, Value};

const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "format",
    "contentEncoding",
];

pub struct Schema {
    pub root: Value,
    patterns: RefCell<HashMap<String, Regex>>,
}

impl Schema {
    pub fn load(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
        let root = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        Self {
            root,
            patterns: RefCell::new(HashMap::new()),
        }
    }

    /// Every violation, as `path: message`; empty when `instance` is valid.
    pub fn errors(&self, instance: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(&self.root, instance, "$", &mut errors);
        errors
    }

    fn check(&self, schema: &Value, instance: &Value, path: &str, errors: &mut Vec<String>) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{path}: no value is allowed here"));
                return;
            }
            Value::Object(schema) => schema,
            other => panic!("a schema must be an object or a boolean, got {other}"),
        };
        for (keyword, arg) in schema {
            if ANNOTATIONS.contains(&keyword.as_str()) {
                continue;
            }
            let mut fail = |message: String| errors.push(format!("{path}: {message}"));
            match keyword.as_str() {
                "$ref" => {
                    let target = self.resolve(arg.as_str().expect("$ref is a string"));
                    self.check(target, instance, path, errors);
                }
                "type" => {
                    let types: Vec<&str> = match arg {
                        Value::String(t) => vec![t],
                        Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                        other => panic!("bad type {other}"),
                    };
                    if !types.iter().any(|t| has_type(instance, t)) {
                        fail(format!("{instance} is not of type {arg}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().unwrap().contains(instance) {
                        fail(format!("{instance} is not one of {arg}"));
                    }
                }
                "minLength" | "maxLength" => {
                    if let Value::String(s) = instance {
                        let n = s.chars().count() as u64;
                        let bound = arg.as_u64().unwrap();
                        if (keyword == "minLength" && n < bound)
                            || (keyword == "maxLength" && n > bound)
                        {
                            fail(format!("length {n} breaks {keyword} {bound}"));
                        }
                    }
                }
                "pattern" => {
                    if let Value::String(s) = instance {
                        let pattern = arg.as_str().unwrap();
                        let mut cache = self.patterns.borrow_mut();
                        let re = cache
                            .entry(pattern.to_string())
                            .or_insert_with(|| Regex::new(pattern).expect("pattern compiles"));
                        if !re.is_match(s) {
                            fail(format!("{s:?} does not match {pattern}"));
                        }
                    }
                }
                "minimum" | "maximum" => {
                    if let Value::Number(n) = instance {
                        let below = compare(n, arg.as_number().unwrap());
                        let bad = if keyword == "minimum" {
                            below == std::cmp::Ordering::Less
                        } else {
                            below == std::cmp::Ordering::Greater
                        };
                        if bad {
                            fail(format!("{n} breaks {keyword} {arg}"));
                        }
                    }
                }
                "maxItems" => {
                    if let Value::Array(items) = instance {
                        if items.len() as u64 > arg.as_u64().unwrap() {
                            fail(format!("{} items break maxItems {arg}", items.len()));
                        }
                    }
                }
                "maxProperties" => {
                    if let Value::Object(map) = instance {
                        if map.len() as u64 > arg.as_u64().unwrap() {
                            fail(format!(
                                "{} properties break maxProperties {arg}",
                                map.len()
                            ));
                        }
                    }
                }
                "required" => {
                    if let Value::Object(map) = instance {
                        for key in arg.as_array().unwrap() {
                            let key = key.as_str().unwrap();
                            if !map.contains_key(key) {
                                fail(format!("missing required property {key}"));
                            }
                        }
                    }
                }
                "items" => {
                    if let Value::Array(items) = instance {
                        for (i, item) in items.iter().enumerate() {
                            self.check(arg, item, &format!("{path}[{i}]"), errors);
                        }
                    }
                }
                "properties" => {
                    if let Value::Object(map) = instance {
                        for (key, sub) in arg.as_object().unwrap() {
                            if let Some(value) = map.get(key) {
                                self.check(sub, value, &format!("{path}.{key}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Value::Object(map) = instance {
                        let declared = schema
                            .get("properties")
                            .and_then(Value::as_object)
                            .cloned()
                            .unwrap_or_else(Map::new);
                        for (key, value) in map {
                            if !declared.contains_key(key) {
                                self.check(arg, value, &format!("{path}.{key}"), errors);
                            }
                        }
                    }
                }
                "const" => {
                    if instance != arg {
                        fail(format!("must be {arg}"));
                    }
                }
                "oneOf" => {
                    let matching = arg
                        .as_array()
                        .expect("oneOf is an array")
                        .iter()
                        .filter(|sub| {
                            let mut sub_errors = Vec::new();
                            self.check(sub, instance, path, &mut sub_errors);
                            sub_errors.is_empty()
                        })
                        .count();
                    if matching != 1 {
                        fail(format!(
                            "must match exactly one of the oneOf schemas, matches {matching}"
                        ));
                    }
                }
                other => panic!("the checker does not implement the keyword {other:?}"),
            }
        }
    }

    fn resolve(&self, reference: &str) -> &Value {
        let name = reference
            .strip_prefix("#/$defs/")
            .unwrap_or_else(|| panic!("only #/$defs/ references are supported, got {reference}"));
        &self.root["$defs"][name]
    }
}

/// JSON Schema's types: `integer` is any number with a zero fractional part (so `42.0` and `1e300` are
/// integers here, although cohort's decoder wants integer syntax).
fn has_type(instance: &Value, ty: &str) -> bool {
    match ty {
        "null" => instance.is_null(),
        "boolean" => instance.is_boolean(),
        "string" => instance.is_string(),
        "array" => instance.is_array(),
        "object" => instance.is_object(),
        "number" => instance.is_number(),
        "integer" => match instance {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        other => panic!("unknown type {other}"),
    }
}

fn compare(a: &serde_json::Number, b: &serde_json::Number) -> std::cmp::Ordering {
    fn exact(n: &serde_json::Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (exact(a), exact(b)) {
        (Some(a), Some(b)) => a.cmp(&b),
        _ => a
            .as_f64()
            .unwrap()
            .partial_cmp(&b.as_f64().unwrap())
            .unwrap(),
    }
}
