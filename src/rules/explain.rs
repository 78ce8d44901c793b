//! Explanations: why a device does or does not match a filter.
//!
//! [`CompiledFilter::explain`] evaluates every leaf (no short-circuit) and says, for each condition, the
//! device's value and a sentence for people; its result is always [`CompiledFilter::evaluate`]'s.

use serde::Serialize;
use serde_json::Value;

use super::attrs::{value_to_json, AttrValue, Attributes};
use super::catalogue::Catalogue;
use super::compare::normalised;
use super::compiled::{CompiledFilter, Leaf, LeafMeta, Node, NodeRef, Test, TimeRef};
use super::eval::{days_since, eval_leaf};
use super::time::{format_millis, EpochMillis};

impl CompiledFilter {
    /// Evaluates every condition and says why the device does or does not match.
    pub fn explain(
        &self,
        attrs: &Attributes,
        now: EpochMillis,
        catalogue: &Catalogue,
    ) -> Explanation {
        let root = explain_node(self.root(), &self.meta, attrs, now, catalogue, "$");
        Explanation {
            matches: root.result(),
            evaluated_at: format_millis(now),
            root,
        }
    }
}

/// Why a device does or does not match a filter.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The filter's result.
    pub matches: bool,
    /// The `now` used for time-based conditions (RFC 3339, UTC).
    pub evaluated_at: String,
    /// The evaluated tree.
    pub root: ExplainNode,
}

/// One node of an explanation.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExplainNode {
    Group {
        path: String,
        operator: &'static str,
        result: bool,
        conditions: Vec<ExplainNode>,
    },
    Condition {
        path: String,
        field: String,
        operator: &'static str,
        value: Value,
        /// The device's value (for a computed field, the computed number); `null` when missing.
        actual: Value,
        result: bool,
        /// A sentence for people.
        reason: String,
    },
}

impl ExplainNode {
    /// The node's result.
    pub fn result(&self) -> bool {
        match self {
            ExplainNode::Group { result, .. } | ExplainNode::Condition { result, .. } => *result,
        }
    }
}

fn explain_node(
    node: NodeRef<'_>,
    metas: &[LeafMeta],
    attrs: &Attributes,
    now: EpochMillis,
    catalogue: &Catalogue,
    path: &str,
) -> ExplainNode {
    match node.node() {
        Node::All(_) | Node::Any(_) => {
            let and = matches!(node.node(), Node::All(_));
            // Paths of children come from their own metadata (leaves) or are derived by position (groups).
            let conditions: Vec<ExplainNode> = node
                .children()
                .enumerate()
                .map(|(i, c)| {
                    let path = format!("{path}.conditions[{i}]");
                    explain_node(c, metas, attrs, now, catalogue, &path)
                })
                .collect();
            let result = if and {
                conditions.iter().all(ExplainNode::result)
            } else {
                conditions.iter().any(ExplainNode::result)
            };
            ExplainNode::Group {
                path: path.to_string(),
                operator: if and { "AND" } else { "OR" },
                result,
                conditions,
            }
        }
        Node::Leaf(leaf) => explain_leaf(
            leaf,
            &metas[usize::from(leaf.number)],
            attrs,
            now,
            catalogue,
        ),
    }
}

fn explain_leaf(
    leaf: &Leaf,
    meta: &LeafMeta,
    attrs: &Attributes,
    now: EpochMillis,
    catalogue: &Catalogue,
) -> ExplainNode {
    let value = attrs.get(leaf.field);
    let result = eval_leaf(leaf, attrs, now);
    let op = meta.operator.name();
    let (actual, reason) = match (&leaf.test, value) {
        (_, None) => {
            let source = catalogue.name(leaf.field);
            let what = if *source == *meta.field_name {
                format!("{} is missing", meta.field_name)
            } else {
                format!("{} is missing (computed from {source})", meta.field_name)
            };
            (Value::Null, format!("{what}, so {op} is {result}"))
        }
        (Test::DaysSince(_), Some(AttrValue::Time(t))) => {
            let days = days_since(*t, now);
            (
                Value::from(days),
                format!(
                    "{} is {days} ({} was {}), so {op} {} is {result}",
                    meta.field_name,
                    catalogue.name(leaf.field),
                    format_millis(*t),
                    describe_value(&meta.value)
                ),
            )
        }
        (test, Some(v)) => {
            let actual = value_to_json(catalogue, leaf.field, v);
            let detail = match test {
                Test::Before(at) | Test::After(at) if !matches!(at, TimeRef::At(_)) => {
                    format!(
                        " (that is {} at evaluation)",
                        format_millis(at.resolve(now))
                    )
                }
                Test::WithinLast(span) => format!(" (since {})", format_millis(span.before(now))),
                Test::TimeEq(_) | Test::Before(_) | Test::After(_) => normalised(&meta.value),
                Test::ListEq(_) => " (in any order, repeats ignored)".to_string(),
                Test::StrContains(_)
                | Test::StrStartsWith(_)
                | Test::StrEndsWith(_)
                | Test::ListContains(_) => " (ignoring case)".to_string(),
                _ => String::new(),
            };
            let reason = if matches!(leaf.test, Test::IsNull | Test::StrEmpty | Test::ListEmpty) {
                format!("{} is {actual}, so {op} is {result}", meta.field_name)
            } else {
                format!(
                    "{} is {actual}, so {op} {}{detail} is {result}",
                    meta.field_name,
                    describe_value(&meta.value)
                )
            };
            (actual, reason)
        }
    };
    ExplainNode::Condition {
        path: meta.path.clone(),
        field: meta.field_name.clone(),
        operator: op,
        value: meta.value.clone(),
        actual,
        result,
        reason,
    }
}

/// A filter value as a person would write it: `7 days`, `3 months from now`, `from 1 to 5`; other values
/// as JSON.
fn describe_value(value: &Value) -> String {
    let Some(obj) = value.as_object() else {
        return value.to_string();
    };
    if let (Some(amount), Some(unit)) = (obj.get("amount"), obj.get("unit").and_then(Value::as_str))
    {
        let direction = match obj.get("direction").and_then(Value::as_str) {
            Some("fromNow") => " from now",
            Some(_) => " ago",
            None => "",
        };
        return format!("{amount} {unit}{direction}");
    }
    if let (Some(from), Some(to)) = (obj.get("from"), obj.get("to")) {
        return format!("from {from} to {to}");
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::eval::tests::{t, Case, NOW};
    use crate::rules::filter::compile;
    use serde_json::json;

    #[test]
    fn explanations_say_why() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "AND", "conditions": [
                {"field": "hostname", "operator": "startsWith", "value": "web"},
                {"field": "daysSinceLastSeen", "operator": "lessThan", "value": 3},
                {"field": "custom.rack", "operator": "equals", "value": "r1"}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        let attrs = c.attrs(json!({"hostname": "WEB-9", "lastSeenAt": "2024-06-14T00:00:00Z"}));
        let ex = f.explain(&attrs, t(NOW), &c.catalogue);
        assert!(!ex.matches);
        assert_eq!(ex.matches, f.evaluate(&attrs, t(NOW)));
        let ExplainNode::Group { conditions, .. } = &ex.root else {
            panic!("root is a group")
        };
        let reasons: Vec<(String, bool)> = conditions
            .iter()
            .map(|n| match n {
                ExplainNode::Condition { reason, result, .. } => (reason.clone(), *result),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            reasons[0],
            (
                "hostname is \"WEB-9\", so startsWith \"web\" (ignoring case) is true".into(),
                true
            )
        );
        assert_eq!(
            reasons[1],
            (
                "daysSinceLastSeen is 1 (lastSeenAt was 2024-06-14T00:00:00.000Z), so lessThan 3 is true".into(),
                true
            )
        );
        assert_eq!(
            reasons[2],
            ("custom.rack is missing, so equals is false".into(), false)
        );
        let json = serde_json::to_value(&ex).unwrap();
        assert_eq!(json["root"]["conditions"][2]["path"], "$.conditions[2]");
        assert_eq!(json["root"]["kind"], "group");
    }
}
