//! Filters: the JSON tree operators write, its validation, and its compiled form.
//!
//! A filter is `{"operator": "AND"|"OR", "conditions": [...]}` whose conditions are groups of the same shape
//! or leaves `{"field", "operator", "value"}`. [`compile`] validates the whole tree, reporting every error at
//! once with its JSON path, and produces a [`CompiledFilter`]: fields resolved to ids, values typed, enum
//! values interned, regexes and case-folded needles prepared, each negative operator turned into its
//! positive with a negation flag (so `notX = ¬X` holds by construction).
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

use std::collections::BTreeSet;

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::catalogue::{Catalogue, FieldId, FieldLookupError, FieldType};
use super::time::{parse_datetime, EpochMillis, Span, Unit};

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

/// Every leaf operator of the language.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanOrEquals,
    LessThan,
    LessThanOrEquals,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    Matches,
    In,
    NotIn,
    HasAny,
    HasAll,
    IsEmpty,
    IsNotEmpty,
    IsNull,
    IsNotNull,
    Before,
    After,
    Between,
    WithinLast,
    NotWithinLast,
}

impl Operator {
    /// All operators, in the order of the seed table.
    pub const ALL: [Operator; 24] = [
        Operator::Equals,
        Operator::NotEquals,
        Operator::GreaterThan,
        Operator::GreaterThanOrEquals,
        Operator::LessThan,
        Operator::LessThanOrEquals,
        Operator::Contains,
        Operator::NotContains,
        Operator::StartsWith,
        Operator::EndsWith,
        Operator::Matches,
        Operator::In,
        Operator::NotIn,
        Operator::HasAny,
        Operator::HasAll,
        Operator::IsEmpty,
        Operator::IsNotEmpty,
        Operator::IsNull,
        Operator::IsNotNull,
        Operator::Before,
        Operator::After,
        Operator::Between,
        Operator::WithinLast,
        Operator::NotWithinLast,
    ];

    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::NotEquals => "notEquals",
            Operator::GreaterThan => "greaterThan",
            Operator::GreaterThanOrEquals => "greaterThanOrEquals",
            Operator::LessThan => "lessThan",
            Operator::LessThanOrEquals => "lessThanOrEquals",
            Operator::Contains => "contains",
            Operator::NotContains => "notContains",
            Operator::StartsWith => "startsWith",
            Operator::EndsWith => "endsWith",
            Operator::Matches => "matches",
            Operator::In => "in",
            Operator::NotIn => "notIn",
            Operator::HasAny => "hasAny",
            Operator::HasAll => "hasAll",
            Operator::IsEmpty => "isEmpty",
            Operator::IsNotEmpty => "isNotEmpty",
            Operator::IsNull => "isNull",
            Operator::IsNotNull => "isNotNull",
            Operator::Before => "before",
            Operator::After => "after",
            Operator::Between => "between",
            Operator::WithinLast => "withinLast",
            Operator::NotWithinLast => "notWithinLast",
        }
    }

    /// Parses the JSON spelling (case-sensitive).
    pub fn parse(s: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.name() == s)
    }

    /// The positive operator this one is the complement of, and whether it is negated.
    pub fn positive(self) -> (Operator, bool) {
        match self {
            Operator::NotEquals => (Operator::Equals, true),
            Operator::NotContains => (Operator::Contains, true),
            Operator::NotIn => (Operator::In, true),
            Operator::IsNotEmpty => (Operator::IsEmpty, true),
            Operator::IsNotNull => (Operator::IsNull, true),
            Operator::NotWithinLast => (Operator::WithinLast, true),
            op => (op, false),
        }
    }

    /// Whether the operator takes no value.
    pub fn is_unary(self) -> bool {
        matches!(self.positive().0, Operator::IsEmpty | Operator::IsNull)
    }

    /// Whether this operator may be used on a field of type `ty`.
    pub fn allowed_on(self, ty: &FieldType) -> bool {
        use Operator::*;
        let positive = self.positive().0;
        match ty {
            FieldType::String => matches!(
                positive,
                Equals | Contains | StartsWith | EndsWith | Matches | In | IsEmpty | IsNull
            ),
            FieldType::Enum(_) => matches!(positive, Equals | In | IsNull),
            FieldType::Number => matches!(
                positive,
                Equals
                    | GreaterThan
                    | GreaterThanOrEquals
                    | LessThan
                    | LessThanOrEquals
                    | Between
                    | In
                    | IsNull
            ),
            FieldType::Boolean => matches!(positive, Equals | IsNull),
            FieldType::Datetime => matches!(
                positive,
                Equals
                    | GreaterThan
                    | GreaterThanOrEquals
                    | LessThan
                    | LessThanOrEquals
                    | Before
                    | After
                    | Between
                    | WithinLast
                    | IsNull
            ),
            FieldType::StringArray => {
                matches!(
                    positive,
                    Equals | Contains | HasAny | HasAll | IsEmpty | IsNull
                )
            }
        }
    }
}

/// A validated, compiled filter: evaluate it with [`CompiledFilter::evaluate`].
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    pub(crate) root: Node,
    /// Stored fields the result depends on (a computed field counts as its source), sorted.
    fields_used: Vec<FieldId>,
    /// The same, as names, sorted: what is stored as `filter_fields_used`.
    field_names: Vec<String>,
    /// Whether the result can change with time alone (relative datetimes, daysSince…).
    time_dependent: bool,
    /// The leaves whose truth can change with time alone (see [`crate::rules::FlipTable`]).
    pub(crate) time_leaves: Box<[Leaf]>,
    /// The filter as written (validated, so it has exactly the accepted shape).
    source: Value,
}

/// A node of the compiled tree.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Leaf(Leaf),
}

/// A compiled leaf: the field, the positive test, and whether the result is negated.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub(crate) field: FieldId,
    pub(crate) negate: bool,
    pub(crate) test: Test,
    /// Only read by explanations, so kept out of line.
    pub(crate) meta: Box<LeafMeta>,
}

/// What an explanation shows about a leaf.
#[derive(Clone, Debug)]
pub(crate) struct LeafMeta {
    pub(crate) path: String,
    pub(crate) field_name: String,
    pub(crate) operator: Operator,
    pub(crate) value: Value,
}

/// A positive test on one attribute value. A test on a missing attribute is false, except `IsNull` and the
/// `…Empty` tests.
#[derive(Clone, Debug)]
pub(crate) enum Test {
    StrEq(Box<str>),
    /// Sorted and de-duplicated, for binary search.
    StrIn(Box<[Box<str>]>),
    StrContains(Needle),
    StrStartsWith(Needle),
    StrEndsWith(Needle),
    StrMatches(Regex),
    /// Missing or `""`.
    StrEmpty,
    EnumEq(u16),
    /// Sorted and de-duplicated.
    EnumIn(Box<[u16]>),
    BoolEq(bool),
    Num(NumPred),
    /// A computed `daysSince…` number; the leaf's field is the source datetime.
    DaysSince(NumPred),
    Before(TimeRef),
    After(TimeRef),
    /// The same instant (millisecond precision).
    TimeEq(EpochMillis),
    /// Inclusive at both ends.
    TimeBetween(EpochMillis, EpochMillis),
    WithinLast(Span),
    /// Some element equals the needle ignoring case.
    ListContains(Needle),
    /// Sorted and de-duplicated.
    ListHasAny(Box<[Box<str>]>),
    /// Sorted and de-duplicated.
    ListHasAll(Box<[Box<str>]>),
    /// The same set of strings: sorted and de-duplicated; order and repeats in the array are ignored.
    ListEq(Box<[Box<str>]>),
    /// Missing or `[]`.
    ListEmpty,
    IsNull,
}

/// A numeric predicate. Constants are finite and `-0.0` is normalised to `0.0`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NumPred {
    Eq(f64),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    /// Inclusive at both ends; `from <= to`.
    Between(f64, f64),
    /// Sorted (total order) and de-duplicated.
    In(Box<[f64]>),
}

/// The instant a `before`/`after` condition compares with.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum TimeRef {
    At(EpochMillis),
    Ago(Span),
    FromNow(Span),
}

impl TimeRef {
    /// The instant referred to at `now`.
    #[inline]
    pub(crate) fn resolve(self, now: EpochMillis) -> EpochMillis {
        match self {
            TimeRef::At(t) => t,
            TimeRef::Ago(span) => span.before(now),
            TimeRef::FromNow(span) => span.after(now),
        }
    }
}

/// A case-insensitive needle, lower-cased once at compile time (char-wise simple lower-casing, the same
/// mapping as `char::to_lowercase`).
#[derive(Clone, Debug)]
pub(crate) struct Needle {
    pub(crate) lower: Box<str>,
}

impl Needle {
    fn new(s: &str) -> Self {
        Self {
            lower: lower_chars(s).into(),
        }
    }
}

/// Char-wise lower-casing, used for every case-insensitive comparison (and by the reference evaluator).
pub fn lower_chars(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// Normalises `-0.0` to `0.0` so that equal numbers have equal bits.
#[inline]
pub(crate) fn norm(x: f64) -> f64 {
    x + 0.0
}

impl CompiledFilter {
    /// Stored fields the result depends on, sorted.
    pub fn fields_used(&self) -> &[FieldId] {
        &self.fields_used
    }

    /// Field names the result depends on, sorted: the group's `filter_fields_used`.
    pub fn field_names(&self) -> &[String] {
        &self.field_names
    }

    /// The stored attributes evaluation reads: the fields used, with each computed field replaced by its
    /// source (`daysSinceLastSeen` reads `lastSeenAt`). A reader that loads only these loses nothing.
    pub fn stored_field_names(&self, catalogue: &Catalogue) -> Vec<String> {
        let mut names: Vec<String> = self
            .fields_used()
            .iter()
            .map(|&id| match catalogue.computed(id) {
                Some(super::catalogue::Computed::DaysSince(source)) => {
                    catalogue.name(source).into()
                }
                None => catalogue.name(id).into(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether the result can change with no attribute change.
    pub fn is_time_dependent(&self) -> bool {
        self.time_dependent
    }

    /// The filter as written.
    pub fn source(&self) -> &Value {
        &self.source
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
            let mut time_leaves = Vec::new();
            super::eval::collect_time_leaves(&root, &mut time_leaves);
            Ok(CompiledFilter {
                root,
                fields_used,
                field_names,
                time_dependent: ctx.time_dependent,
                time_leaves: time_leaves.into(),
                source: filter.clone(),
            })
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

    fn node(&mut self, v: &Value, path: String, depth: usize) -> Option<Node> {
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

    fn group(&mut self, obj: &Map<String, Value>, path: String, depth: usize) -> Option<Node> {
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
        let children = children.into_boxed_slice();
        match logic? {
            Logic::And => Some(Node::All(children)),
            Logic::Or => Some(Node::Any(children)),
        }
    }

    fn condition(&mut self, obj: &Map<String, Value>, path: String) -> Option<Node> {
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
        Some(Node::Leaf(Leaf {
            field,
            negate,
            test,
            meta: Box::new(LeafMeta {
                path,
                field_name: field_name.to_string(),
                operator,
                value: value.cloned().unwrap_or(Value::Null),
            }),
        }))
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
            (Equals, FieldType::String) => Test::StrEq(self.string(value?, path, field)?),
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
            (Matches, _) => Test::StrMatches(self.regex(value?, path)?),
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

    fn string(&mut self, v: &Value, path: &str, field: &str) -> Option<Box<str>> {
        match v {
            Value::String(s) if s.len() <= MAX_VALUE_BYTES => Some(s.as_str().into()),
            Value::String(_) => self.fail(
                path,
                format!("Value is too long (maximum {MAX_VALUE_BYTES} bytes)"),
            ),
            _ => self.fail(path, format!("Value for field {field} must be a string")),
        }
    }

    /// A list of strings, sorted and de-duplicated.
    fn string_set(&mut self, v: &Value, path: &str, field: &str) -> Option<Box<[Box<str>]>> {
        let items = self.list(v, path, field)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if self.full() {
                return None;
            }
            out.push(self.string(item, &format!("{path}[{i}]"), field));
        }
        Some(sorted_strings(out.into_iter().collect::<Option<Vec<_>>>()?))
    }

    /// An absolute instant: the value of `between`'s ends, and of `equals` and the comparisons on a
    /// datetime. Times relative to now are refused here: they are what `before`, `after` and `withinLast`
    /// are for (`lessThan 30 days` would read as "less than 30 days ago", the opposite of "earlier than").
    fn instant(&mut self, v: &Value, path: &str, field: &str) -> Option<EpochMillis> {
        if let Some(t) = v.as_str().and_then(parse_datetime) {
            return Some(t);
        }
        let relative = v.is_object() || v.as_str() == Some("now");
        let hint = if relative {
            " (times relative to now are for before, after and withinLast)"
        } else {
            ""
        };
        self.fail(
            path,
            format!("Value for field {field} must be an RFC 3339 datetime string{hint}"),
        )
    }

    fn enum_value(
        &mut self,
        v: &Value,
        path: &str,
        field: &str,
        values: &[Box<str>],
    ) -> Option<u16> {
        let s = self.string(v, path, field)?;
        match values.iter().position(|allowed| **allowed == *s) {
            Some(i) => Some(i as u16),
            None => self.fail(
                path,
                format!(
                    "Value {:?} is not one of the allowed values for field {field}: {}",
                    short(&s),
                    allowed_list(values)
                ),
            ),
        }
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str, field: &str) -> Option<&'v Vec<Value>> {
        match v {
            Value::Array(items) if items.len() <= MAX_LIST_VALUES => Some(items),
            Value::Array(_) => self.fail(
                path,
                format!("List has too many values (maximum {MAX_LIST_VALUES})"),
            ),
            _ => self.fail(path, format!("Value for field {field} must be a list")),
        }
    }

    fn number(&mut self, v: &Value, path: &str, field: &str) -> Option<f64> {
        match v.as_f64().filter(|n| n.is_finite()) {
            Some(n) => Some(norm(n)),
            None => self.fail(path, format!("Value for field {field} must be a number")),
        }
    }

    fn num_pred(&mut self, op: Operator, v: &Value, path: &str, field: &str) -> Option<NumPred> {
        Some(match op {
            Operator::Equals => NumPred::Eq(self.number(v, path, field)?),
            Operator::GreaterThan => NumPred::Gt(self.number(v, path, field)?),
            Operator::GreaterThanOrEquals => NumPred::Ge(self.number(v, path, field)?),
            Operator::LessThan => NumPred::Lt(self.number(v, path, field)?),
            Operator::LessThanOrEquals => NumPred::Le(self.number(v, path, field)?),
            Operator::Between => {
                let (from, to) = self.range(v, path)?;
                let from = self.number(from, &format!("{path}.from"), field);
                let to = self.number(to, &format!("{path}.to"), field);
                let (from, to) = (from?, to?);
                if from > to {
                    return self.fail(path, "between: from must not be greater than to");
                }
                NumPred::Between(from, to)
            }
            Operator::In => {
                let items = self.list(v, path, field)?;
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if self.full() {
                        return None;
                    }
                    out.push(self.number(item, &format!("{path}[{i}]"), field));
                }
                let mut out = out.into_iter().collect::<Option<Vec<f64>>>()?;
                out.sort_by(f64::total_cmp);
                out.dedup();
                NumPred::In(out.into_boxed_slice())
            }
            other => {
                return self.fail(
                    path,
                    format!("Operator {} not valid for field {field}", other.name()),
                )
            }
        })
    }

    fn range<'v>(&mut self, v: &'v Value, path: &str) -> Option<(&'v Value, &'v Value)> {
        let obj = match v.as_object() {
            Some(obj) => obj,
            None => return self.fail(path, "between takes an object {\"from\": …, \"to\": …}"),
        };
        self.unknown_keys(obj, path, &["from", "to"]);
        match (obj.get("from"), obj.get("to")) {
            (Some(from), Some(to)) => Some((from, to)),
            _ => self.fail(path, "between takes an object {\"from\": …, \"to\": …}"),
        }
    }

    fn span(&mut self, v: &Value, path: &str, positive_amount: bool) -> Option<Span> {
        let shape = if positive_amount {
            "withinLast takes {\"amount\": a positive whole number, \"unit\": \"minutes\"|\"hours\"|\"days\"|\"weeks\"|\"months\"}"
        } else {
            "A relative time takes {\"amount\": a whole number, \"unit\": \"minutes\"|\"hours\"|\"days\"|\"weeks\"|\"months\", \"direction\": \"ago\"|\"fromNow\"}"
        };
        let Some(obj) = v.as_object() else {
            return self.fail(path, shape);
        };
        let allowed: &[&str] = if positive_amount {
            &["amount", "unit"]
        } else {
            &["amount", "unit", "direction"]
        };
        self.unknown_keys(obj, path, allowed);
        let unit = match obj
            .get("unit")
            .and_then(Value::as_str)
            .and_then(Unit::parse)
        {
            Some(unit) => unit,
            None => {
                return self.fail(
                    &format!("{path}.unit"),
                    "Unit must be one of minutes, hours, days, weeks, months",
                )
            }
        };
        let amount = match obj.get("amount").and_then(Value::as_u64) {
            Some(0) if positive_amount => {
                return self.fail(&format!("{path}.amount"), "Amount must be greater than 0")
            }
            Some(n) if n <= u64::from(unit.max_amount()) => n as u32,
            Some(_) => {
                return self.fail(
                    &format!("{path}.amount"),
                    format!(
                        "Amount must be at most {} {} (about 100 years)",
                        unit.max_amount(),
                        unit.name()
                    ),
                )
            }
            None => return self.fail(&format!("{path}.amount"), "Amount must be a whole number"),
        };
        Some(Span { amount, unit })
    }

    fn time_ref(&mut self, v: &Value, path: &str, field: &str) -> Option<TimeRef> {
        match v {
            Value::String(s) if s == "now" => Some(TimeRef::Ago(Span {
                amount: 0,
                unit: Unit::Minutes,
            })),
            Value::String(s) => match parse_datetime(s) {
                Some(t) => Some(TimeRef::At(t)),
                None => self.fail(
                    path,
                    format!("Value for field {field} must be an RFC 3339 datetime, \"now\", or a relative time"),
                ),
            },
            Value::Object(obj) => {
                let direction = obj.get("direction");
                let span = self.span(v, path, false)?;
                match direction.map(|d| d.as_str()) {
                    None | Some(Some("ago")) => Some(TimeRef::Ago(span)),
                    Some(Some("fromNow")) => Some(TimeRef::FromNow(span)),
                    Some(_) => self.fail(&format!("{path}.direction"), "Direction must be \"ago\" or \"fromNow\""),
                }
            }
            _ => self.fail(
                path,
                format!("Value for field {field} must be an RFC 3339 datetime, \"now\", or a relative time"),
            ),
        }
    }

    fn regex(&mut self, v: &Value, path: &str) -> Option<Regex> {
        let Some(pattern) = v.as_str() else {
            return self.fail(path, "A regular expression must be a string");
        };
        if pattern.len() > MAX_REGEX_BYTES {
            return self.fail(
                path,
                format!("Regular expression is too long (maximum {MAX_REGEX_BYTES} bytes)"),
            );
        }
        match RegexBuilder::new(pattern)
            .size_limit(MAX_REGEX_COMPILED_BYTES)
            .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
            .build()
        {
            Ok(re) => Some(re),
            Err(regex::Error::CompiledTooBig(_)) => self.fail(
                path,
                format!("Regular expression is too large once compiled (maximum {MAX_REGEX_COMPILED_BYTES} bytes)"),
            ),
            Err(e) => self.fail(path, regex_error(&e.to_string())),
        }
    }
}

/// A regex syntax error as a message: the whole of regex's report (the pattern, a caret under the
/// problem, then what it is) when short, otherwise only what it is, so that a long pattern cannot push the
/// explanation past a reader's (or an answer's) length limit.
fn regex_error(report: &str) -> String {
    const SHORT: usize = 400;
    let what = if report.len() <= SHORT {
        report
    } else {
        report
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(report)
    };
    let mut end = what.len().min(SHORT);
    while !what.is_char_boundary(end) {
        end -= 1;
    }
    format!("Invalid regular expression: {}", &what[..end])
}

/// The allowed values of an enum field, as a message lists them: the first few, then how many more.
fn allowed_list(values: &[Box<str>]) -> String {
    const LISTED: usize = 20;
    let mut out = values
        .iter()
        .take(LISTED)
        .map(|v| short(v))
        .collect::<Vec<_>>()
        .join(", ");
    if values.len() > LISTED {
        out.push_str(&format!(" (and {} more)", values.len() - LISTED));
    }
    out
}

fn sorted_strings(mut items: Vec<Box<str>>) -> Box<[Box<str>]> {
    items.sort_unstable();
    items.dedup();
    items.into_boxed_slice()
}

#[cfg(test)]
mod bounds_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(filter: Value) -> Vec<(String, String)> {
        validate(&filter, &Catalogue::default())
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect()
    }

    fn e(path: &str, message: &str) -> (String, String) {
        (path.to_string(), message.to_string())
    }

    #[test]
    fn the_design_messages_are_used_with_paths() {
        assert_eq!(
            errors(json!({"operator": "AND", "conditions": [
                {"field": "hostnam", "operator": "equals", "value": "x"},
                {"field": "hostname", "operator": "greaterThan", "value": 3},
                {"operator": "OR", "conditions": []}
            ]})),
            vec![
                e("$.conditions[0].field", "Unknown field: hostnam"),
                e(
                    "$.conditions[1].operator",
                    "Operator greaterThan not valid for field hostname"
                ),
                e("$.conditions[2]", "Group must have at least one condition"),
            ]
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let found = errors(json!({"operator": "XOR", "conditions": [
            {"field": "status", "operator": "equals", "value": "rebooting"},
            {"field": "uptimeSeconds", "operator": "between", "value": {"from": 10, "to": 1}},
            {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 0, "unit": "days"}},
            {"field": "hostname", "operator": "matches", "value": "(unclosed"},
            {"field": "tags", "operator": "hasAny", "value": "not-a-list"},
            {"field": "uptimeSeconds", "operator": "isNull", "value": 1},
            {"field": "hostname", "operator": "equals"},
            {"field": "hostname", "operator": "like", "value": "x", "extra": 1}
        ]}));
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.operator",
                "$.conditions[0].value",
                "$.conditions[1].value",
                "$.conditions[2].value.amount",
                "$.conditions[3].value",
                "$.conditions[4].value",
                "$.conditions[5].value",
                "$.conditions[6].value",
                "$.conditions[7].extra",
                "$.conditions[7].operator",
            ]
        );
        assert!(found[1]
            .1
            .contains("not one of the allowed values for field status"));
        assert_eq!(found[2].1, "between: from must not be greater than to");
        assert!(found[4].1.starts_with("Invalid regular expression"));
        assert_eq!(found[9].1, "Unknown operator: like");
    }

    #[test]
    fn limits_are_enforced() {
        let mut deep = json!({"field": "hostname", "operator": "isNull"});
        for _ in 0..MAX_DEPTH {
            deep = json!({"operator": "AND", "conditions": [deep]});
        }
        assert!(
            errors(deep.clone()).is_empty(),
            "depth {MAX_DEPTH} is allowed"
        );
        let deeper = json!({"operator": "AND", "conditions": [deep]});
        assert_eq!(
            errors(deeper)[0].1,
            format!("Filter is nested too deeply (maximum depth {MAX_DEPTH})")
        );
        let many: Vec<Value> = (0..=MAX_CONDITIONS)
            .map(|_| json!({"field": "hostname", "operator": "isNull"}))
            .collect();
        assert_eq!(
            errors(json!({"operator": "OR", "conditions": many})),
            vec![e(
                "$",
                &format!("Filter has too many conditions (maximum {MAX_CONDITIONS})")
            )]
        );
        let list: Vec<Value> = (0..=MAX_LIST_VALUES)
            .map(|i| json!(i.to_string()))
            .collect();
        assert_eq!(
            errors(json!({"operator": "OR", "conditions": [{"field": "hostname", "operator": "in", "value": list}]}))[0].1,
            format!("List has too many values (maximum {MAX_LIST_VALUES})")
        );
        let long_regex = "a".repeat(MAX_REGEX_BYTES + 1);
        assert!(
            errors(json!({"operator": "OR", "conditions": [{"field": "hostname", "operator": "matches", "value": long_regex}]}))[0]
                .1
                .starts_with("Regular expression is too long")
        );
        let huge = "\\w{1000}\\w{1000}\\w{1000}";
        assert!(
            errors(json!({"operator": "OR", "conditions": [{"field": "hostname", "operator": "matches", "value": huge}]}))[0]
                .1
                .starts_with("Regular expression is too large")
        );
    }

    #[test]
    fn a_bare_condition_or_non_object_is_not_a_filter() {
        assert_eq!(
            errors(json!({"field": "hostname", "operator": "isNull"})).len(),
            1
        );
        assert_eq!(
            errors(json!([1])),
            vec![e("$", "Expected an object: a group or a condition")]
        );
    }

    #[test]
    fn operators_are_allowed_only_on_their_types() {
        let c = Catalogue::default();
        let cases = [
            ("status", "contains"),
            ("uptimeSeconds", "startsWith"),
            ("lastSeenAt", "contains"),
            ("lastSeenAt", "in"),
            ("tags", "greaterThan"),
            ("tags", "in"),
            ("hostname", "withinLast"),
            ("hostname", "hasAll"),
            ("daysSinceLastSeen", "before"),
        ];
        for (field, op) in cases {
            let found = errors(
                json!({"operator": "AND", "conditions": [{"field": field, "operator": op, "value": "x"}]}),
            );
            assert_eq!(
                found,
                vec![e(
                    "$.conditions[0].operator",
                    &format!("Operator {op} not valid for field {field}")
                )],
                "{field} {op}"
            );
        }
        // And every operator is valid on at least one type.
        for op in Operator::ALL {
            let types = [
                FieldType::String,
                FieldType::Number,
                FieldType::Boolean,
                FieldType::Enum(vec!["a".into()]),
                FieldType::Datetime,
                FieldType::StringArray,
            ];
            assert!(types.iter().any(|t| op.allowed_on(t)), "{op:?}");
        }
        drop(c);
    }

    #[test]
    fn fields_used_counts_computed_fields_as_their_source() {
        let c = Catalogue::default();
        let f = compile(
            &json!({"operator": "OR", "conditions": [
                {"field": "daysSinceLastSeen", "operator": "greaterThan", "value": 7},
                {"operator": "AND", "conditions": [
                    {"field": "status", "operator": "equals", "value": "online"},
                    {"field": "custom.rack", "operator": "equals", "value": "r1"}
                ]}
            ]}),
            &c,
        )
        .unwrap();
        assert_eq!(f.field_names(), ["custom.rack", "lastSeenAt", "status"]);
        assert!(f.is_time_dependent());
    }

    #[test]
    fn relative_times_accept_now_ago_and_from_now() {
        let ok = |value: Value| {
            errors(
                json!({"operator": "AND", "conditions": [{"field": "lastSeenAt", "operator": "before", "value": value}]}),
            )
        };
        assert!(ok(json!("now")).is_empty());
        assert!(ok(json!({"amount": 3, "unit": "days"})).is_empty());
        assert!(ok(json!({"amount": 0, "unit": "months", "direction": "fromNow"})).is_empty());
        assert!(ok(json!("2024-01-01T00:00:00Z")).is_empty());
        assert_eq!(
            ok(json!({"amount": 3, "unit": "fortnights"}))[0].0,
            "$.conditions[0].value.unit"
        );
        assert_eq!(
            ok(json!({"amount": 3, "unit": "days", "direction": "up"}))[0].0,
            "$.conditions[0].value.direction"
        );
        assert_eq!(
            ok(json!({"amount": -3, "unit": "days"}))[0].0,
            "$.conditions[0].value.amount"
        );
        assert_eq!(
            ok(json!({"amount": 1201, "unit": "months"}))[0].0,
            "$.conditions[0].value.amount"
        );
    }
}
