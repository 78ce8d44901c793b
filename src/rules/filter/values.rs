//! The typed values of conditions: strings and lists of them, enum values, numbers and numeric predicates,
//! absolute instants, spans and times relative to now, regular expressions. Each reader records an error
//! with its path (through the validator's [`Ctx`]) and answers `None` when the value is not acceptable.

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::super::compiled::{norm, NumPred, Operator, TimeRef};
use super::super::time::{parse_datetime, EpochMillis, Span, Unit};
use super::{
    short, Ctx, MAX_LIST_VALUES, MAX_REGEX_BYTES, MAX_REGEX_COMPILED_BYTES, MAX_VALUE_BYTES,
};

impl Ctx<'_> {
    pub(super) fn string(&mut self, v: &Value, path: &str, field: &str) -> Option<Box<str>> {
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
    pub(super) fn string_set(
        &mut self,
        v: &Value,
        path: &str,
        field: &str,
    ) -> Option<Box<[Box<str>]>> {
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
    pub(super) fn instant(&mut self, v: &Value, path: &str, field: &str) -> Option<EpochMillis> {
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

    pub(super) fn enum_value(
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

    pub(super) fn list<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        field: &str,
    ) -> Option<&'v Vec<Value>> {
        match v {
            Value::Array(items) if items.len() <= MAX_LIST_VALUES => Some(items),
            Value::Array(_) => self.fail(
                path,
                format!("List has too many values (maximum {MAX_LIST_VALUES})"),
            ),
            _ => self.fail(path, format!("Value for field {field} must be a list")),
        }
    }

    pub(super) fn number(&mut self, v: &Value, path: &str, field: &str) -> Option<f64> {
        match v.as_f64().filter(|n| n.is_finite()) {
            Some(n) => Some(norm(n)),
            None => self.fail(path, format!("Value for field {field} must be a number")),
        }
    }

    pub(super) fn num_pred(
        &mut self,
        op: Operator,
        v: &Value,
        path: &str,
        field: &str,
    ) -> Option<NumPred> {
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

    pub(super) fn range<'v>(&mut self, v: &'v Value, path: &str) -> Option<(&'v Value, &'v Value)> {
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

    pub(super) fn span(&mut self, v: &Value, path: &str, positive_amount: bool) -> Option<Span> {
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

    pub(super) fn time_ref(&mut self, v: &Value, path: &str, field: &str) -> Option<TimeRef> {
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

    pub(super) fn regex(&mut self, v: &Value, path: &str) -> Option<Regex> {
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

pub(super) fn sorted_strings(mut items: Vec<Box<str>>) -> Box<[Box<str>]> {
    items.sort_unstable();
    items.dedup();
    items.into_boxed_slice()
}
