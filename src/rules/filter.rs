//! Filters: the JSON tree operators write, its validation, and its compilation.
//!
//! A filter is `{"operator": "AND"|"OR", "conditions": [...]}` whose conditions are groups of the same shape
//! or leaves `{"field", "operator", "value"}`. [`compile`] validates the whole tree, reporting every error at
//! once with its JSON path, and produces a [`CompiledFilter`] (see [`super::compiled`]): fields resolved to
//! ids, values typed, enum values interned, regexes and case-folded needles prepared, each negative operator
//! turned into its positive with a negation flag (so `notX = ¬X` holds by construction).
//!
//! Operators by field type (each negative is allowed exactly where its positive is):
//!
//! | type | operators |
//! |---|---|
//! | string | equals, notEquals, contains, notContains, startsWith, endsWith, matches, in, notIn, isEmpty, isNotEmpty, isNull, isNotNull |
//! | enum | equals, notEquals, in, notIn, isNull, isNotNull |
//! | number (and the computed daysSince… fields) | equals, notEquals, greaterThan, greaterThanOrEquals, lessThan, lessThanOrEquals, between, in, notIn, isNull, isNotNull |
//! | boolean | equals, notEquals, isNull, isNotNull |
//! | datetime | equals, notEquals, greaterThan, greaterThanOrEquals, lessThan, lessThanOrEquals, before, after, between, withinLast, notWithinLast, isNull, isNotNull |
//! | string_array | equals, notEquals, contains, notContains, hasAny, hasAll, isEmpty, isNotEmpty, isNull, isNotNull |
//!
//! Values: `before`/`after` take an RFC 3339 datetime, `"now"`, or a span relative to now
//! `{"amount": n, "unit": u, "direction": "ago"|"fromNow"}` (direction defaults to `ago`, amount ≥ 0);
//! `between` takes `{"from", "to"}` (numbers, or absolute datetimes); `withinLast` takes
//! `{"amount": n > 0, "unit": "minutes"|"hours"|"days"|"weeks"|"months"}`. On a datetime, `equals` and the
//! four comparisons take an absolute RFC 3339 datetime; on a string array, `equals` takes a list of strings
//! and compares sets (see [`super::compare`]).
//!
//! Limits (see the constants): depth, total conditions, list lengths, string lengths, regex size.
//!
//! Reporting is bounded too: validation stops once it has found more than [`MAX_ERRORS`] errors (a filter
//! of 250 lists of 1,000 bad values costs a hundred errors, not 250,000), and an untrusted string quoted in
//! a message or a path (an unknown key, field or operator) is cut to its first [`QUOTED_CHARS`] characters.
//!
//! This file walks the tree (groups, conditions, the test each operator compiles to) and collects the
//! errors; `filter::values` reads the typed values conditions take (strings, lists, numbers, instants, spans,
//! regexes).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::catalogue::{Catalogue, FieldId, FieldLookupError, FieldType};
use super::compiled::{CompiledFilter, Leaf, LeafMeta, Needle, Operator, Test, TimeRef, Tree};

mod values;

use values::sorted_strings;

/// Deepest nesting of groups; the root group is depth 1.
pub const MAX_DEPTH: usize = 10;
/// Most leaf conditions in one filter.
pub const MAX_CONDITIONS: usize = 256;
/// Most values in one `in`, `notIn`, `hasAny` or `hasAll` list.
pub const MAX_LIST_VALUES: usize = 1000;
/// Longest string value in a filter, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest `matches` pattern, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;
/// Largest compiled regex program, in bytes.
pub const MAX_REGEX_COMPILED_BYTES: usize = 1 << 20;
/// Validation stops once it has found more than this many errors: [`compile`] returns at most
/// `MAX_ERRORS + 1`, and `MAX_ERRORS + 1` means "and maybe more".
pub const MAX_ERRORS: usize = 100;
/// The longest prefix of an untrusted string quoted in an error's message or path, in characters.
pub const QUOTED_CHARS: usize = 64;

/// One validation problem: where (a JSON path such as `$.conditions[1].value`) and what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

/// A group's boolean connective.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Logic {
    And,
    Or,
}

impl Logic {
    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            Logic::And => "AND",
            Logic::Or => "OR",
        }
    }
}

/// Validates and compiles a filter, returning every validation error at once (up to `MAX_ERRORS + 1`:
/// finding more than [`MAX_ERRORS`] stops the check).
pub fn compile(
    filter: &Value,
    catalogue: &Catalogue,
) -> Result<CompiledFilter, Vec<ValidationError>> {
    let mut ctx = Ctx {
        catalogue,
        errors: Vec::new(),
        conditions: 0,
        fields: BTreeSet::new(),
        time_dependent: false,
    };
    let root = match filter.as_object() {
        Some(obj) if obj.contains_key("field") => {
            ctx.error(
                "$",
                "The filter must be a group: {\"operator\": \"AND\"|\"OR\", \"conditions\": [...]}",
            );
            None
        }
        _ => ctx.node(filter, "$".to_string(), 1),
    };
    if ctx.conditions > MAX_CONDITIONS && !ctx.full() {
        ctx.error(
            "$",
            format!("Filter has too many conditions (maximum {MAX_CONDITIONS})"),
        );
    }
    match root {
        Some(root) if ctx.errors.is_empty() => {
            let fields_used: Vec<FieldId> = ctx.fields.into_iter().collect();
            let mut field_names: Vec<String> = fields_used
                .iter()
                .map(|f| catalogue.name(*f).into_string())
                .collect();
            field_names.sort();
            Ok(CompiledFilter::new(
                root,
                fields_used,
                field_names,
                ctx.time_dependent,
                filter.clone(),
            ))
        }
        _ => Err(ctx.errors),
    }
}

/// Validates a filter, returning every error (empty when it is valid; at most `MAX_ERRORS + 1`).
pub fn validate(filter: &Value, catalogue: &Catalogue) -> Vec<ValidationError> {
    compile(filter, catalogue).err().unwrap_or_default()
}

struct Ctx<'a> {
    catalogue: &'a Catalogue,
    errors: Vec<ValidationError>,
    conditions: usize,
    fields: BTreeSet<FieldId>,
    time_dependent: bool,
}

/// At most the first [`QUOTED_CHARS`] characters of an untrusted string, with `…` when cut.
fn short(s: &str) -> String {
    match s.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

impl Ctx<'_> {
    /// Records an error, unless more than [`MAX_ERRORS`] are already recorded.
    fn error(&mut self, path: &str, message: impl Into<String>) {
        if self.full() {
            return;
        }
        self.errors.push(ValidationError {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Whether more than [`MAX_ERRORS`] errors are recorded: the check stops (every loop over the filter's
    /// parts tests this first, so nothing more is looked at or formatted).
    fn full(&self) -> bool {
        self.errors.len() > MAX_ERRORS
    }

    fn node(&mut self, v: &Value, path: String, depth: usize) -> Option<Tree> {
        if self.full() {
            return None;
        }
        let Some(obj) = v.as_object() else {
            self.error(&path, "Expected an object: a group or a condition");
            return None;
        };
        if obj.contains_key("field") {
            self.condition(obj, path)
        } else {
            self.group(obj, path, depth)
        }
    }

    fn unknown_keys(&mut self, obj: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for key in obj.keys() {
            if self.full() {
                return;
            }
            if !allowed.contains(&key.as_str()) {
                let key = short(key);
                self.error(&format!("{path}.{key}"), format!("Unknown key: {key}"));
            }
        }
    }

    fn group(&mut self, obj: &Map<String, Value>, path: String, depth: usize) -> Option<Tree> {
        self.unknown_keys(obj, &path, &["operator", "conditions"]);
        let logic = match obj.get("operator").and_then(Value::as_str) {
            Some("AND") => Some(Logic::And),
            Some("OR") => Some(Logic::Or),
            _ => {
                self.error(
                    &format!("{path}.operator"),
                    "Group operator must be \"AND\" or \"OR\"",
                );
                None
            }
        };
        if depth > MAX_DEPTH {
            self.error(
                &path,
                format!("Filter is nested too deeply (maximum depth {MAX_DEPTH})"),
            );
            return None;
        }
        let conditions = match obj.get("conditions") {
            Some(Value::Array(items)) => items,
            Some(_) => {
                self.error(&format!("{path}.conditions"), "Conditions must be an array");
                return None;
            }
            None => {
                self.error(&path, "Group must have at least one condition");
                return None;
            }
        };
        if conditions.is_empty() {
            self.error(&path, "Group must have at least one condition");
            return None;
        }
        let mut children = Vec::with_capacity(conditions.len());
        for (i, child) in conditions.iter().enumerate() {
            if self.full() {
                return None;
            }
            if let Some(node) = self.node(child, format!("{path}.conditions[{i}]"), depth + 1) {
                children.push(node);
            }
        }
        match logic? {
            Logic::And => Some(Tree::All(children)),
            Logic::Or => Some(Tree::Any(children)),
        }
    }

    fn condition(&mut self, obj: &Map<String, Value>, path: String) -> Option<Tree> {
        self.conditions += 1;
        self.unknown_keys(obj, &path, &["field", "operator", "value"]);
        let field_path = format!("{path}.field");
        let field = match obj.get("field") {
            Some(Value::String(name)) => match self.catalogue.resolve(name) {
                Ok(id) => Some((id, name.as_str())),
                Err(FieldLookupError::Unknown(_)) => {
                    self.error(&field_path, format!("Unknown field: {}", short(name)));
                    None
                }
                Err(e) => {
                    self.error(&field_path, e.to_string());
                    None
                }
            },
            _ => {
                self.error(&field_path, "Field must be a string");
                None
            }
        };
        let op_path = format!("{path}.operator");
        let operator = match obj.get("operator") {
            Some(Value::String(name)) => match Operator::parse(name) {
                Some(op) => Some(op),
                None => {
                    self.error(&op_path, format!("Unknown operator: {}", short(name)));
                    None
                }
            },
            _ => {
                self.error(&op_path, "Operator must be a string");
                None
            }
        };
        let ((field, field_name), operator) = (field?, operator?);
        let ty = self.catalogue.field_type(field);
        if !operator.allowed_on(&ty) {
            self.error(
                &op_path,
                format!(
                    "Operator {} not valid for field {field_name}",
                    operator.name()
                ),
            );
            return None;
        }
        let value_path = format!("{path}.value");
        let value = obj.get("value").filter(|v| !v.is_null());
        let (positive, negate) = operator.positive();
        if operator.is_unary() {
            if value.is_some() {
                self.error(
                    &value_path,
                    format!("Operator {} takes no value", operator.name()),
                );
                return None;
            }
        } else if value.is_none() {
            self.error(
                &value_path,
                format!("Operator {} requires a value", operator.name()),
            );
            return None;
        }
        let computed = self.catalogue.computed(field);
        let (field, test) = match computed {
            Some(super::catalogue::Computed::DaysSince(source)) => {
                let test = match positive {
                    Operator::IsNull => Test::IsNull,
                    _ => {
                        self.time_dependent = true;
                        Test::DaysSince(self.num_pred(positive, value?, &value_path, field_name)?)
                    }
                };
                (source, test)
            }
            None => (
                field,
                self.test(positive, &ty, value, &value_path, field_name)?,
            ),
        };
        self.fields.insert(field);
        Some(Tree::Leaf(
            Leaf {
                field,
                negate,
                // Numbered when the tree is laid out.
                number: 0,
                test,
            },
            LeafMeta {
                path,
                field_name: field_name.to_string(),
                operator,
                value: value.cloned().unwrap_or(Value::Null),
            },
        ))
    }

    fn test(
        &mut self,
        positive: Operator,
        ty: &FieldType,
        value: Option<&Value>,
        path: &str,
        field: &str,
    ) -> Option<Test> {
        use Operator::*;
        let test = match (positive, ty) {
            (IsNull, _) => Test::IsNull,
            (IsEmpty, FieldType::StringArray) => Test::ListEmpty,
            (IsEmpty, _) => Test::StrEmpty,
            (Equals, FieldType::String) => Test::StrEq((*self.string(value?, path, field)?).into()),
            (Equals, FieldType::Enum(values)) => {
                Test::EnumEq(self.enum_value(value?, path, field, values)?)
            }
            (Equals, FieldType::Boolean) => match value? {
                Value::Bool(b) => Test::BoolEq(*b),
                _ => return self.fail(path, format!("Value for field {field} must be a boolean")),
            },
            (In, FieldType::String) => {
                let items = self.list(value?, path, field)?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if self.full() {
                        return None;
                    }
                    out.push(self.string(item, &format!("{path}[{i}]"), field));
                }
                Test::StrIn(sorted_strings(out.into_iter().collect::<Option<Vec<_>>>()?))
            }
            (In, FieldType::Enum(values)) => {
                let items = self.list(value?, path, field)?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if self.full() {
                        return None;
                    }
                    out.push(self.enum_value(item, &format!("{path}[{i}]"), field, values));
                }
                let mut out = out.into_iter().collect::<Option<Vec<_>>>()?;
                out.sort_unstable();
                out.dedup();
                Test::EnumIn(out.into_boxed_slice())
            }
            (Contains, FieldType::String) => {
                Test::StrContains(Needle::new(&self.string(value?, path, field)?))
            }
            (StartsWith, _) => Test::StrStartsWith(Needle::new(&self.string(value?, path, field)?)),
            (EndsWith, _) => Test::StrEndsWith(Needle::new(&self.string(value?, path, field)?)),
            (Matches, _) => Test::StrMatches(Box::new(self.regex(value?, path)?)),
            (Contains, FieldType::StringArray) => {
                Test::ListContains(Needle::new(&self.string(value?, path, field)?))
            }
            (Equals, FieldType::StringArray) => Test::ListEq(self.string_set(value?, path, field)?),
            (HasAny, _) => Test::ListHasAny(self.string_set(value?, path, field)?),
            (HasAll, _) => Test::ListHasAll(self.string_set(value?, path, field)?),
            (Equals, FieldType::Datetime) => Test::TimeEq(self.instant(value?, path, field)?),
            // Instants are whole milliseconds, so `>= t` is `> t − 1` and `<= t` is `< t + 1` (t is within
            // the supported range, so neither overflows).
            (GreaterThan, FieldType::Datetime) => {
                Test::After(TimeRef::At(self.instant(value?, path, field)?))
            }
            (GreaterThanOrEquals, FieldType::Datetime) => {
                Test::After(TimeRef::At(self.instant(value?, path, field)? - 1))
            }
            (LessThan, FieldType::Datetime) => {
                Test::Before(TimeRef::At(self.instant(value?, path, field)?))
            }
            (LessThanOrEquals, FieldType::Datetime) => {
                Test::Before(TimeRef::At(self.instant(value?, path, field)? + 1))
            }
            (_, FieldType::Number) => Test::Num(self.num_pred(positive, value?, path, field)?),
            (Before | After, _) => {
                let at = self.time_ref(value?, path, field)?;
                if !matches!(at, TimeRef::At(_)) {
                    self.time_dependent = true;
                }
                if positive == Before {
                    Test::Before(at)
                } else {
                    Test::After(at)
                }
            }
            (Between, FieldType::Datetime) => {
                let (from, to) = self.range(value?, path)?;
                let from = self.instant(from, &format!("{path}.from"), field);
                let to = self.instant(to, &format!("{path}.to"), field);
                let (from, to) = (from?, to?);
                if from > to {
                    return self.fail(path, "between: from must not be greater than to");
                }
                Test::TimeBetween(from, to)
            }
            (WithinLast, _) => {
                self.time_dependent = true;
                Test::WithinLast(self.span(value?, path, true)?)
            }
            (op, ty) => {
                // allowed_on() admitted the pair, so every combination is handled above.
                return self.fail(
                    path,
                    format!(
                        "Operator {} not valid for field {field} of type {}",
                        op.name(),
                        ty.name()
                    ),
                );
            }
        };
        Some(test)
    }

    fn fail<T>(&mut self, path: &str, message: impl Into<String>) -> Option<T> {
        self.error(path, message);
        None
    }
}

#[cfg(test)]
mod bounds_tests;

#[cfg(test)]
mod tests;
