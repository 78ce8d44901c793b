//! Evaluating compiled filters: the hot path.
//!
//! [`CompiledFilter::evaluate`] walks the filter's flat layout (one allocation, nodes in written order),
//! short-circuits and does not allocate: attribute lookup guesses the position from the field id and
//! binary-searches only when the guess misses, case-insensitive ASCII comparisons work byte-wise, and the
//! rare non-ASCII `contains` lower-cases into a reused thread-local buffer.
//! [`CompiledFilter::evaluate_with`] evaluates a candidate given the truths the field index found.
//! Explanations ([`super::explain`]), time flips ([`super::flip`]) and the field index ([`super::index`])
//! evaluate leaves with the same functions.

mod known;

use std::cell::RefCell;

use super::attrs::{AttrValue, Attributes};
use super::compare::same_set;
use super::compiled::{norm, CompiledFilter, Leaf, Needle, Node, NumPred, Test};
use super::time::{EpochMillis, DAY_MS};
pub use known::LeafTruths;

impl CompiledFilter {
    /// Whether a device with these attributes matches at `now`.
    #[inline]
    pub fn evaluate(&self, attrs: &Attributes, now: EpochMillis) -> bool {
        eval_at(&self.nodes, 0, attrs, now)
    }

    /// Reads the first node of the filter's layout, so that a caller about to evaluate many filters (an
    /// event's candidates) can call this on each first: the reads do not depend on each other, so their
    /// cache misses overlap, where evaluating one filter after another waits for each in turn.
    #[inline]
    pub fn prefetch(&self) {
        std::hint::black_box(matches!(self.nodes.first(), Some(Node::Leaf(_))));
    }
}

/// The result of the node at `at` of a flat layout.
#[inline]
fn eval_at(nodes: &[Node], at: usize, attrs: &Attributes, now: EpochMillis) -> bool {
    match nodes.get(at) {
        Some(Node::Leaf(leaf)) => eval_leaf(leaf, attrs, now),
        Some(Node::All(extent)) => eval_group(nodes, at, extent.end as usize, false, attrs, now),
        Some(Node::Any(extent)) => eval_group(nodes, at, extent.end as usize, true, attrs, now),
        None => false,
    }
}

/// The result of the group at `at`, whose nodes end at `end`: an AND (`deciding` false) is false as soon
/// as a child is, an OR (`deciding` true) true as soon as a child is. Leaf children are evaluated in
/// place, group children by recursion, each followed by a jump past its nodes.
#[inline]
fn eval_group(
    nodes: &[Node],
    at: usize,
    end: usize,
    deciding: bool,
    attrs: &Attributes,
    now: EpochMillis,
) -> bool {
    let mut child = at + 1;
    while child < end {
        let (truth, next) = match nodes.get(child) {
            Some(Node::Leaf(leaf)) => (eval_leaf(leaf, attrs, now), child + 1),
            Some(Node::All(extent) | Node::Any(extent)) => {
                (eval_at(nodes, child, attrs, now), extent.end as usize)
            }
            None => break,
        };
        if truth == deciding {
            return deciding;
        }
        child = next;
    }
    !deciding
}

#[inline]
pub(crate) fn eval_leaf(leaf: &Leaf, attrs: &Attributes, now: EpochMillis) -> bool {
    test(&leaf.test, attrs.get(leaf.field), now) != leaf.negate
}

/// The positive test on one attribute value (`None` = missing).
#[inline]
pub(crate) fn test(test: &Test, value: Option<&AttrValue>, now: EpochMillis) -> bool {
    use AttrValue as V;
    match (test, value) {
        (Test::IsNull, v) => v.is_none(),
        (Test::StrEmpty, None) | (Test::ListEmpty, None) => true,
        (Test::StrEmpty, Some(V::Str(s))) => s.is_empty(),
        (Test::ListEmpty, Some(V::StrList(items))) => items.is_empty(),
        (_, None) => false,
        (Test::StrEq(want), Some(V::Str(s))) => **want == **s,
        (Test::StrIn(set), Some(V::Str(s))) => set.binary_search_by(|x| (**x).cmp(&**s)).is_ok(),
        (Test::StrContains(n), Some(V::Str(s))) => contains_ci(s, n),
        (Test::StrStartsWith(n), Some(V::Str(s))) => starts_with_ci(s, n),
        (Test::StrEndsWith(n), Some(V::Str(s))) => ends_with_ci(s, n),
        (Test::StrMatches(re), Some(V::Str(s))) => re.is_match(s),
        (Test::EnumEq(want), Some(V::Enum(e))) => want == e,
        (Test::EnumIn(set), Some(V::Enum(e))) => set.binary_search(e).is_ok(),
        (Test::BoolEq(want), Some(V::Bool(b))) => want == b,
        (Test::Num(pred), Some(V::Num(x))) => num(pred, *x),
        (Test::DaysSince(pred), Some(V::Time(t))) => num(pred, days_since(*t, now) as f64),
        (Test::Before(at), Some(V::Time(t))) => *t < at.resolve(now),
        (Test::After(at), Some(V::Time(t))) => *t > at.resolve(now),
        (Test::TimeEq(want), Some(V::Time(t))) => want == t,
        (Test::TimeBetween(from, to), Some(V::Time(t))) => from <= t && t <= to,
        (Test::WithinLast(span), Some(V::Time(t))) => *t >= span.before(now),
        (Test::ListContains(n), Some(V::StrList(items))) => items.iter().any(|s| eq_ci(s, n)),
        (Test::ListHasAny(set), Some(V::StrList(items))) => items
            .iter()
            .any(|s| set.binary_search_by(|x| (**x).cmp(&**s)).is_ok()),
        (Test::ListHasAll(set), Some(V::StrList(items))) => {
            set.iter().all(|want| items.iter().any(|s| **s == **want))
        }
        (Test::ListEq(set), Some(V::StrList(items))) => same_set(items, set),
        // A value of another type than the test expects (a catalogue change since it was stored) never
        // satisfies a positive test.
        _ => false,
    }
}

#[inline]
pub(crate) fn num(pred: &NumPred, x: f64) -> bool {
    let x = norm(x);
    match pred {
        NumPred::Eq(c) => x == *c,
        NumPred::Gt(c) => x > *c,
        NumPred::Ge(c) => x >= *c,
        NumPred::Lt(c) => x < *c,
        NumPred::Le(c) => x <= *c,
        NumPred::Between(a, b) => *a <= x && x <= *b,
        NumPred::In(set) => set.binary_search_by(|c| c.total_cmp(&x)).is_ok(),
    }
}

/// Whole days from `t` to `now` (floored, negative when `t` is in the future).
#[inline]
pub fn days_since(t: EpochMillis, now: EpochMillis) -> i64 {
    now.saturating_sub(t).div_euclid(DAY_MS)
}

thread_local! {
    /// Reused buffer for lower-casing non-ASCII haystacks, so `contains` never allocates in steady state.
    static LOWER_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

fn contains_ci(hay: &str, needle: &Needle) -> bool {
    let n = needle.lower.as_bytes();
    if hay.is_ascii() && needle.lower.is_ascii() {
        let h = hay.as_bytes();
        if n.is_empty() {
            return true;
        }
        return h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    }
    LOWER_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.extend(hay.chars().flat_map(char::to_lowercase));
        buf.contains(&*needle.lower)
    })
}

fn starts_with_ci(hay: &str, needle: &Needle) -> bool {
    if hay.is_ascii() && needle.lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.lower.as_bytes());
        return h.len() >= n.len() && h[..n.len()].eq_ignore_ascii_case(n);
    }
    let mut hay = hay.chars().flat_map(char::to_lowercase);
    needle.lower.chars().all(|c| hay.next() == Some(c))
}

fn ends_with_ci(hay: &str, needle: &Needle) -> bool {
    if hay.is_ascii() && needle.lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.lower.as_bytes());
        return h.len() >= n.len() && h[h.len() - n.len()..].eq_ignore_ascii_case(n);
    }
    let mut hay = hay.chars().rev().flat_map(|c| c.to_lowercase().rev());
    needle.lower.chars().rev().all(|c| hay.next() == Some(c))
}

fn eq_ci(s: &str, needle: &Needle) -> bool {
    if s.is_ascii() && needle.lower.is_ascii() {
        return s.eq_ignore_ascii_case(&needle.lower);
    }
    s.chars()
        .flat_map(char::to_lowercase)
        .eq(needle.lower.chars())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rules::catalogue::Catalogue;
    use crate::rules::filter::compile;
    use crate::rules::time::parse_datetime;
    use serde_json::{json, Value};

    pub(crate) fn t(s: &str) -> EpochMillis {
        parse_datetime(s).unwrap()
    }

    pub(crate) struct Case {
        pub(crate) catalogue: Catalogue,
    }

    impl Case {
        pub(crate) fn new() -> Self {
            Self {
                catalogue: Catalogue::default(),
            }
        }

        pub(crate) fn attrs(&self, doc: Value) -> Attributes {
            Attributes::from_json(doc.as_object().unwrap(), &self.catalogue).unwrap()
        }

        pub(crate) fn leaf(&self, field: &str, op: &str, value: Value) -> CompiledFilter {
            let cond = if value.is_null() {
                json!({"field": field, "operator": op})
            } else {
                json!({"field": field, "operator": op, "value": value})
            };
            compile(
                &json!({"operator": "AND", "conditions": [cond]}),
                &self.catalogue,
            )
            .unwrap_or_else(|e| panic!("{field} {op}: {e:?}"))
        }

        /// Evaluates `field op value` against each device document and returns the results.
        fn run(
            &self,
            field: &str,
            op: &str,
            value: Value,
            devices: &[Value],
            now: &str,
        ) -> Vec<bool> {
            let f = self.leaf(field, op, value);
            devices
                .iter()
                .map(|d| f.evaluate(&self.attrs(d.clone()), t(now)))
                .collect()
        }
    }

    pub(crate) const NOW: &str = "2024-06-15T12:00:00Z";

    #[test]
    fn string_operators() {
        let c = Case::new();
        let devices = [
            json!({"hostname": "Web-01"}),
            json!({"hostname": "db-01"}),
            json!({"hostname": ""}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("hostname", op, v, &devices, NOW);
        assert_eq!(r("equals", json!("Web-01")), [true, false, false, false]);
        assert_eq!(
            r("equals", json!("web-01")),
            [false, false, false, false],
            "equals is case-sensitive"
        );
        assert_eq!(r("notEquals", json!("Web-01")), [false, true, true, true]);
        assert_eq!(r("contains", json!("EB-0")), [true, false, false, false]);
        assert_eq!(r("notContains", json!("EB-0")), [false, true, true, true]);
        assert_eq!(r("startsWith", json!("WEB")), [true, false, false, false]);
        assert_eq!(r("endsWith", json!("-01")), [true, true, false, false]);
        assert_eq!(
            r("matches", json!("^[a-z]+-\\d+$")),
            [false, true, false, false]
        );
        assert_eq!(
            r("matches", json!("b-0")),
            [true, true, false, false],
            "unanchored"
        );
        assert_eq!(r("in", json!(["db-01", "x"])), [false, true, false, false]);
        assert_eq!(r("in", json!([])), [false, false, false, false]);
        assert_eq!(r("notIn", json!([])), [true, true, true, true]);
        assert_eq!(r("isEmpty", Value::Null), [false, false, true, true]);
        assert_eq!(r("isNotEmpty", Value::Null), [true, true, false, false]);
        assert_eq!(r("isNull", Value::Null), [false, false, false, true]);
        assert_eq!(r("isNotNull", Value::Null), [true, true, true, false]);
    }

    #[test]
    fn case_insensitive_operators_fold_non_ascii_text() {
        let c = Case::new();
        let devices = [
            json!({"displayName": "Straße ÄRGER"}),
            json!({"displayName": "ärger"}),
        ];
        let r = |op: &str, v: Value| c.run("displayName", op, v, &devices, NOW);
        assert_eq!(r("contains", json!("äRg")), [true, true]);
        assert_eq!(
            r("startsWith", json!("STRASSE")),
            [false, false],
            "no full case folding"
        );
        assert_eq!(r("startsWith", json!("STRAßE")), [true, false]);
        assert_eq!(r("endsWith", json!("ÄRGER")), [true, true]);
    }

    #[test]
    fn enum_number_and_boolean_operators() {
        let c = Case::new();
        let statuses = [
            json!({"status": "online"}),
            json!({"status": "offline"}),
            json!({}),
        ];
        assert_eq!(
            c.run("status", "equals", json!("online"), &statuses, NOW),
            [true, false, false]
        );
        assert_eq!(
            c.run(
                "status",
                "notIn",
                json!(["online", "maintenance"]),
                &statuses,
                NOW
            ),
            [false, true, true]
        );
        let numbers = [
            json!({"uptimeSeconds": 10}),
            json!({"uptimeSeconds": 10.5}),
            json!({"uptimeSeconds": -0.0}),
            json!({}),
        ];
        let n = |op: &str, v: Value| c.run("uptimeSeconds", op, v, &numbers, NOW);
        assert_eq!(
            n("equals", json!(10.0)),
            [true, false, false, false],
            "numbers compare numerically"
        );
        assert_eq!(
            n("equals", json!(0)),
            [false, false, true, false],
            "-0 equals 0"
        );
        assert_eq!(n("greaterThan", json!(10)), [false, true, false, false]);
        assert_eq!(
            n("greaterThanOrEquals", json!(10)),
            [true, true, false, false]
        );
        assert_eq!(n("lessThan", json!(10)), [false, false, true, false]);
        assert_eq!(n("lessThanOrEquals", json!(10)), [true, false, true, false]);
        assert_eq!(
            n("between", json!({"from": 10, "to": 10.5})),
            [true, true, false, false],
            "inclusive"
        );
        assert_eq!(n("in", json!([10.5, 0])), [false, true, true, false]);
        assert_eq!(n("notIn", json!([10.5, 0])), [true, false, false, true]);
        let cat = Catalogue::from_config(&crate::rules::catalogue::CatalogueConfig {
            custom_fields: vec![crate::rules::catalogue::CustomFieldConfig {
                key: "beta".into(),
                ty: crate::rules::catalogue::DeclaredType::Boolean,
                values: vec![],
                description: String::new(),
            }],
            ..Default::default()
        })
        .unwrap();
        let f = compile(
            &json!({"operator": "AND", "conditions": [{"field": "custom.beta", "operator": "notEquals", "value": true}]}),
            &cat,
        )
        .unwrap();
        let a = |d: Value| Attributes::from_json(d.as_object().unwrap(), &cat).unwrap();
        assert!(!f.evaluate(&a(json!({"custom.beta": true})), 0));
        assert!(f.evaluate(&a(json!({"custom.beta": false})), 0));
        assert!(f.evaluate(&a(json!({})), 0));
    }

    #[test]
    fn array_operators() {
        let c = Case::new();
        let devices = [
            json!({"tags": ["Prod", "eu"]}),
            json!({"tags": []}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("tags", op, v, &devices, NOW);
        assert_eq!(
            r("contains", json!("prod")),
            [true, false, false],
            "element equality ignoring case"
        );
        assert_eq!(
            r("contains", json!("pro")),
            [false, false, false],
            "not a substring"
        );
        assert_eq!(r("notContains", json!("prod")), [false, true, true]);
        assert_eq!(
            r("hasAny", json!(["prod", "eu"])),
            [true, false, false],
            "exact"
        );
        assert_eq!(r("hasAny", json!([])), [false, false, false]);
        assert_eq!(r("hasAll", json!(["Prod", "eu"])), [true, false, false]);
        assert_eq!(
            r("hasAll", json!([])),
            [true, true, false],
            "hasAll [] holds for any present array"
        );
        assert_eq!(
            r("isEmpty", Value::Null),
            [false, true, true],
            "a missing array is empty"
        );
        assert_eq!(r("isNotEmpty", Value::Null), [true, false, false]);
        assert_eq!(r("isNull", Value::Null), [false, false, true]);
    }

    #[test]
    fn datetime_operators() {
        let c = Case::new();
        let devices = [
            json!({"lastSeenAt": "2024-06-15T11:00:00Z"}),
            json!({"lastSeenAt": "2024-06-08T12:00:00Z"}),
            json!({"lastSeenAt": "2024-06-08T11:59:59.999Z"}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("lastSeenAt", op, v, &devices, NOW);
        let week = json!({"amount": 7, "unit": "days"});
        assert_eq!(
            r("withinLast", week.clone()),
            [true, true, false, false],
            "boundary is inclusive"
        );
        assert_eq!(r("notWithinLast", week.clone()), [false, false, true, true]);
        assert_eq!(
            r("before", week.clone()),
            [false, false, true, false],
            "strict"
        );
        assert_eq!(r("after", week), [true, false, false, false], "strict");
        assert_eq!(
            r("before", json!("2024-06-08T14:00:00+02:00")),
            [false, false, true, false],
            "offsets normalised"
        );
        assert_eq!(
            r(
                "between",
                json!({"from": "2024-06-08T12:00:00Z", "to": "2024-06-15T11:00:00Z"})
            ),
            [true, true, false, false]
        );
        assert_eq!(r("after", json!("now")), [false, false, false, false]);
        let future = [json!({"lastSeenAt": "2024-07-01T00:00:00Z"})];
        assert_eq!(
            c.run(
                "lastSeenAt",
                "before",
                json!({"amount": 1, "unit": "months", "direction": "fromNow"}),
                &future,
                NOW
            ),
            [true]
        );
    }

    #[test]
    fn within_last_months_are_calendar_months() {
        let c = Case::new();
        let devices = [
            json!({"lastSeenAt": "2024-02-29T10:00:00Z"}),
            json!({"lastSeenAt": "2024-02-29T09:59:59Z"}),
        ];
        let month = json!({"amount": 1, "unit": "months"});
        // One calendar month before 2024-03-31T10:00 is 2024-02-29T10:00 (clamped to the month's end).
        assert_eq!(
            c.run(
                "lastSeenAt",
                "withinLast",
                month,
                &devices,
                "2024-03-31T10:00:00Z"
            ),
            [true, false]
        );
    }

    #[test]
    fn days_since_is_computed_at_evaluation_time() {
        let c = Case::new();
        let devices = [json!({"lastSeenAt": "2024-06-10T13:00:00Z"}), json!({})];
        // 4 days and 23 hours ago: 4 whole days.
        assert_eq!(
            c.run("daysSinceLastSeen", "equals", json!(4), &devices, NOW),
            [true, false]
        );
        assert_eq!(
            c.run("daysSinceLastSeen", "greaterThan", json!(4), &devices, NOW),
            [false, false]
        );
        assert_eq!(
            c.run("daysSinceLastSeen", "isNull", Value::Null, &devices, NOW),
            [false, true]
        );
    }

    #[test]
    fn nested_groups_combine_with_and_or() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "OR", "conditions": [
                {"operator": "AND", "conditions": [
                    {"field": "status", "operator": "equals", "value": "online"},
                    {"field": "tags", "operator": "contains", "value": "prod"}
                ]},
                {"field": "osType", "operator": "equals", "value": "rtos"}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        let e = |d: Value| f.evaluate(&c.attrs(d), 0);
        assert!(e(json!({"status": "online", "tags": ["prod"]})));
        assert!(!e(json!({"status": "online", "tags": ["dev"]})));
        assert!(e(json!({"osType": "rtos"})));
    }
}
