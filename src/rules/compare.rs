//! Equality on every type, and order on datetimes: the semantics `equals`/`notEquals` and the four
//! comparisons have beyond strings, enums, numbers and booleans.
//!
//! - **Datetimes** are compared as instants with millisecond precision, the precision they are stored with:
//!   `2024-06-15T12:00:00+02:00` equals `2024-06-15T10:00:00Z`, and digits below the millisecond are
//!   truncated on both sides. `equals`, `greaterThan`, `greaterThanOrEquals`, `lessThan` and
//!   `lessThanOrEquals` take an absolute RFC 3339 datetime, like `between`; times relative to now are for
//!   `before`, `after` and `withinLast` (`lessThan 30 days` would read as "less than 30 days ago", the
//!   opposite of "earlier than 30 days ago"). So none of them changes truth with time alone.
//! - **String arrays** are equal when they hold the same set of strings: order and repeats are ignored
//!   (tags are labels, and agents report them in no particular order), and strings compare exactly and
//!   case-sensitively, like `equals` on a string and like `hasAll`: `equals [a, b]` is `hasAll [a, b]` and
//!   no other element. `equals []` holds for a present, empty array (a missing one is not equal to anything,
//!   as for every positive operator; `isEmpty` is the test that counts it as empty).
//!
//! As everywhere, `notEquals` is the exact complement of `equals`, so it holds for a device without the
//! attribute.

use chrono::DateTime;
use serde_json::Value;

use super::time::{format_millis, parse_datetime};

/// Whether `items` (in any order, with repeats) hold exactly the strings of `set` (sorted, de-duplicated).
/// Does not allocate.
#[inline]
pub(crate) fn same_set(items: &[impl std::ops::Deref<Target = str>], set: &[Box<str>]) -> bool {
    // Each of the set's strings needs an item, so fewer items than strings cannot be equal.
    items.len() >= set.len()
        && items
            .iter()
            .all(|s| set.binary_search_by(|x| (**x).cmp(&**s)).is_ok())
        && set.iter().all(|want| items.iter().any(|s| **s == **want))
}

/// For an explanation: ` (that is <UTC instant>)` when a filter's datetime names its instant otherwise than
/// the device's value is shown (an offset other than UTC, or digits below the millisecond, which are
/// truncated), so that the comparison reads at a glance; otherwise nothing.
pub(crate) fn normalised(value: &Value) -> String {
    let Some(written) = value.as_str() else {
        return String::new();
    };
    let (Ok(dt), Some(t)) = (
        DateTime::parse_from_rfc3339(written),
        parse_datetime(written),
    ) else {
        return String::new();
    };
    if dt.offset().local_minus_utc() == 0 && dt.timestamp_subsec_nanos() % 1_000_000 == 0 {
        return String::new();
    }
    format!(" (that is {})", format_millis(t))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::rules::index::{FieldChange, FieldKeys, Scratch, ValueKey};
    use crate::rules::time::parse_datetime;
    use crate::rules::{
        compile, validate, AttrValue, Attributes, Catalogue, CompiledFilter, ExplainNode,
        FieldIndex, FlipTable,
    };

    const NOW: &str = "2024-06-15T12:00:00Z";

    fn t(s: &str) -> i64 {
        parse_datetime(s).unwrap()
    }

    fn leaf(c: &Catalogue, field: &str, op: &str, value: Value) -> CompiledFilter {
        compile(
            &json!({"operator": "AND", "conditions": [{"field": field, "operator": op, "value": value}]}),
            c,
        )
        .unwrap_or_else(|e| panic!("{field} {op}: {e:?}"))
    }

    fn attrs(c: &Catalogue, doc: &Value) -> Attributes {
        Attributes::from_json(doc.as_object().unwrap(), c).unwrap()
    }

    /// `field op value` on each device, at [`NOW`].
    fn run(field: &str, op: &str, value: Value, devices: &[Value]) -> Vec<bool> {
        let c = Catalogue::default();
        let f = leaf(&c, field, op, value);
        devices
            .iter()
            .map(|d| f.evaluate(&attrs(&c, d), t(NOW)))
            .collect()
    }

    fn complement(results: &[bool]) -> Vec<bool> {
        results.iter().map(|r| !r).collect()
    }

    fn errors(field: &str, op: &str, value: Value) -> Vec<(String, String)> {
        validate(
            &json!({"operator": "AND", "conditions": [{"field": field, "operator": op, "value": value}]}),
            &Catalogue::default(),
        )
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
    }

    #[test]
    fn a_datetime_equals_the_same_instant_whatever_its_offset() {
        let devices = [
            json!({"lastSeenAt": "2024-06-15T10:00:00Z"}),
            json!({"lastSeenAt": "2024-06-15T12:00:00+02:00"}),
            json!({"lastSeenAt": "2024-06-15T10:00:00.000900Z"}),
            json!({"lastSeenAt": "2024-06-15T10:00:00.001Z"}),
            json!({"lastSeenAt": "2024-06-15T09:59:59.999Z"}),
            json!({}),
        ];
        let equal = [true, true, true, false, false, false];
        for written in [
            "2024-06-15T12:00:00+02:00",
            "2024-06-15T10:00:00Z",
            "2024-06-15T05:00:00.000499-05:00",
        ] {
            assert_eq!(
                run("lastSeenAt", "equals", json!(written), &devices),
                equal,
                "{written}"
            );
            assert_eq!(
                run("lastSeenAt", "notEquals", json!(written), &devices),
                complement(&equal),
                "notEquals is the complement, true for a missing attribute"
            );
        }
    }

    #[test]
    fn datetime_comparisons_are_exact_to_the_millisecond() {
        let devices = [
            json!({"enrolledAt": "2024-06-15T09:59:59.999Z"}),
            json!({"enrolledAt": "2024-06-15T12:00:00+02:00"}),
            json!({"enrolledAt": "2024-06-15T10:00:00.001Z"}),
            json!({}),
        ];
        let at = json!("2024-06-15T10:00:00Z");
        let r = |op: &str| run("enrolledAt", op, at.clone(), &devices);
        assert_eq!(r("greaterThan"), [false, false, true, false]);
        assert_eq!(r("greaterThanOrEquals"), [false, true, true, false]);
        assert_eq!(r("lessThan"), [true, false, false, false]);
        assert_eq!(r("lessThanOrEquals"), [true, true, false, false]);
        assert_eq!(r("after"), r("greaterThan"), "greaterThan is after");
        assert_eq!(r("before"), r("lessThan"), "lessThan is before");
        // At the ends of the supported range.
        let first = [json!({"enrolledAt": "0001-01-01T00:00:00Z"})];
        let last = [json!({"enrolledAt": "9999-12-31T23:59:59.999Z"})];
        let min = json!("0001-01-01T00:00:00Z");
        let max = json!("9999-12-31T23:59:59.999Z");
        assert_eq!(
            run("enrolledAt", "greaterThanOrEquals", min.clone(), &first),
            [true]
        );
        assert_eq!(run("enrolledAt", "lessThan", min, &first), [false]);
        assert_eq!(
            run("enrolledAt", "lessThanOrEquals", max.clone(), &last),
            [true]
        );
        assert_eq!(run("enrolledAt", "greaterThan", max, &last), [false]);
    }

    #[test]
    fn datetime_equality_and_comparisons_take_absolute_instants_only() {
        let relative = "Value for field lastSeenAt must be an RFC 3339 datetime string (times relative to now are for before, after and withinLast)";
        for op in [
            "equals",
            "notEquals",
            "greaterThan",
            "greaterThanOrEquals",
            "lessThan",
            "lessThanOrEquals",
        ] {
            assert!(errors("lastSeenAt", op, json!("2024-01-01T00:00:00+05:30")).is_empty());
            for value in [json!("now"), json!({"amount": 3, "unit": "days"})] {
                assert_eq!(
                    errors("lastSeenAt", op, value),
                    [("$.conditions[0].value".to_string(), relative.to_string())],
                    "{op}"
                );
            }
            for value in [
                json!("2024-01-01"),
                json!(1_718_000_000_000i64),
                json!(true),
            ] {
                assert_eq!(
                    errors("lastSeenAt", op, value.clone()),
                    [(
                        "$.conditions[0].value".to_string(),
                        "Value for field lastSeenAt must be an RFC 3339 datetime string"
                            .to_string()
                    )],
                    "{op} {value}"
                );
            }
        }
        assert_eq!(
            errors(
                "lastSeenAt",
                "between",
                json!({"from": "now", "to": "2024-01-01T00:00:00Z"})
            )[0],
            (
                "$.conditions[0].value.from".to_string(),
                relative.to_string()
            )
        );
    }

    #[test]
    fn string_arrays_are_equal_as_sets_of_exact_strings() {
        let devices = [
            json!({"tags": ["prod", "eu"]}),
            json!({"tags": ["eu", "prod", "prod"]}),
            json!({"tags": ["Prod", "eu"]}),
            json!({"tags": ["prod"]}),
            json!({"tags": ["prod", "eu", "canary"]}),
            json!({"tags": []}),
            json!({}),
        ];
        let r = |op: &str, value: Value| run("tags", op, value, &devices);
        let equal = [true, true, false, false, false, false, false];
        assert_eq!(r("equals", json!(["eu", "prod"])), equal);
        assert_eq!(
            r("equals", json!(["prod", "eu", "eu"])),
            equal,
            "repeats in the value are ignored too"
        );
        assert_eq!(r("notEquals", json!(["eu", "prod"])), complement(&equal));
        assert_eq!(
            r("equals", json!([])),
            [false, false, false, false, false, true, false],
            "a missing array equals nothing"
        );
        assert_eq!(
            r("notEquals", json!([])),
            [true, true, true, true, true, false, true]
        );
        assert_eq!(
            errors("tags", "equals", json!("prod")),
            [(
                "$.conditions[0].value".to_string(),
                "Value for field tags must be a list".to_string()
            )]
        );
        assert_eq!(
            errors("tags", "equals", json!(["prod", 3]))[0].0,
            "$.conditions[0].value[1]"
        );
    }

    fn reasons(f: &CompiledFilter, doc: &Value) -> Vec<(String, bool)> {
        let c = Catalogue::default();
        let ex = f.explain(&attrs(&c, doc), t(NOW), &c);
        let ExplainNode::Group { conditions, .. } = ex.root else {
            panic!("the root is a group")
        };
        conditions
            .into_iter()
            .map(|n| match n {
                ExplainNode::Condition { reason, result, .. } => (reason, result),
                ExplainNode::Group { .. } => panic!("a leaf"),
            })
            .collect()
    }

    #[test]
    fn explanations_show_instants_in_utc_and_sets_as_sets() {
        let c = Catalogue::default();
        let f = compile(
            &json!({"operator": "AND", "conditions": [
                {"field": "lastSeenAt", "operator": "greaterThan", "value": "2024-06-15T11:00:00+02:00"},
                {"field": "lastSeenAt", "operator": "equals", "value": "2024-06-15T10:00:00.000Z"},
                {"field": "enrolledAt", "operator": "lessThanOrEquals", "value": "2024-01-01T00:00:00Z"},
                {"field": "enrolledAt", "operator": "after", "value": "2023-01-01T00:00:00.0005+00:00"},
                {"field": "tags", "operator": "equals", "value": ["eu", "prod"]},
                {"field": "tags", "operator": "notEquals", "value": ["eu"]}
            ]}),
            &c,
        )
        .unwrap();
        let doc = json!({
            "lastSeenAt": "2024-06-15T10:00:00Z",
            "enrolledAt": "2023-05-01T00:00:00Z",
            "tags": ["prod", "eu"]
        });
        assert_eq!(
            reasons(&f, &doc),
            [
                ("lastSeenAt is \"2024-06-15T10:00:00.000Z\", so greaterThan \"2024-06-15T11:00:00+02:00\" (that is 2024-06-15T09:00:00.000Z) is true".to_string(), true),
                ("lastSeenAt is \"2024-06-15T10:00:00.000Z\", so equals \"2024-06-15T10:00:00.000Z\" is true".to_string(), true),
                ("enrolledAt is \"2023-05-01T00:00:00.000Z\", so lessThanOrEquals \"2024-01-01T00:00:00Z\" is true".to_string(), true),
                ("enrolledAt is \"2023-05-01T00:00:00.000Z\", so after \"2023-01-01T00:00:00.0005+00:00\" (that is 2023-01-01T00:00:00.000Z) is true".to_string(), true),
                ("tags is [\"prod\",\"eu\"], so equals [\"eu\",\"prod\"] (in any order, repeats ignored) is true".to_string(), true),
                ("tags is [\"prod\",\"eu\"], so notEquals [\"eu\"] (in any order, repeats ignored) is true".to_string(), true),
            ]
        );
    }

    #[test]
    fn datetime_equality_is_indexed_by_value_and_array_equality_by_truth() {
        let c = Catalogue::default();
        let seen = c.resolve("lastSeenAt").unwrap();
        let tags = c.resolve("tags").unwrap();
        let at = t("2024-06-15T10:00:00Z");
        let mut index = FieldIndex::new();
        index.upsert(
            1u32,
            &leaf(
                &c,
                "lastSeenAt",
                "equals",
                json!("2024-06-15T12:00:00+02:00"),
            ),
        );
        index.upsert(
            2,
            &leaf(&c, "lastSeenAt", "notEquals", json!("2024-06-16T10:00:00Z")),
        );
        index.upsert(3, &leaf(&c, "tags", "equals", json!(["prod", "eu"])));
        index.upsert(
            4,
            &leaf(
                &c,
                "lastSeenAt",
                "greaterThan",
                json!("2024-06-15T10:00:00Z"),
            ),
        );
        assert_eq!(
            leaf(
                &c,
                "lastSeenAt",
                "equals",
                json!("2024-06-15T12:00:00+02:00")
            )
            .index_keys(),
            [(seen, FieldKeys::Values(vec![ValueKey::Time(at)]))]
        );
        let query = |field, old: Option<&AttrValue>, new: Option<&AttrValue>| {
            let mut out = Vec::new();
            index.candidates(
                &[FieldChange { field, old, new }],
                t(NOW),
                &mut Scratch::default(),
                &mut out,
            );
            out.sort();
            out
        };
        let (before, on, after) = (
            AttrValue::Time(at - 1),
            AttrValue::Time(at),
            AttrValue::Time(at + 1),
        );
        let later = AttrValue::Time(at + 5);
        assert_eq!(query(seen, Some(&before), Some(&on)), [1]);
        assert_eq!(query(seen, Some(&on), Some(&after)), [1, 4]);
        assert!(
            query(seen, Some(&after), Some(&later)).is_empty(),
            "no condition changes truth"
        );
        assert_eq!(query(seen, None, Some(&later)), [4], "notEquals stays true");
        let named = AttrValue::Time(t("2024-06-16T10:00:00Z"));
        assert_eq!(query(seen, None, Some(&named)), [2, 4]);
        let list = |items: &[&str]| AttrValue::StrList(items.iter().map(|s| (*s).into()).collect());
        let (a, b, other) = (
            list(&["prod", "eu"]),
            list(&["eu", "prod", "eu"]),
            list(&["eu"]),
        );
        assert!(
            query(tags, Some(&a), Some(&b)).is_empty(),
            "a reordered array is the same set"
        );
        assert_eq!(query(tags, Some(&b), Some(&other)), [3]);
        assert!(query(tags, None, Some(&other)).is_empty());
    }

    #[test]
    fn comparisons_with_absolute_instants_never_flip_with_time() {
        let c = Catalogue::default();
        let filters: Vec<CompiledFilter> = [
            ("equals", json!("2024-06-15T12:00:00Z")),
            ("greaterThan", json!("2024-06-15T12:00:00Z")),
            ("greaterThanOrEquals", json!("2024-06-15T12:00:00Z")),
            ("lessThan", json!("2024-06-16T00:00:00Z")),
            ("lessThanOrEquals", json!("2024-06-16T00:00:00Z")),
        ]
        .into_iter()
        .map(|(op, v)| leaf(&c, "lastSeenAt", op, v))
        .collect();
        let device = attrs(&c, &json!({"lastSeenAt": NOW}));
        for f in &filters {
            assert!(!f.is_time_dependent(), "{}", f.source());
            assert_eq!(f.next_flip(&device, t(NOW)), None);
            assert_eq!(f.field_names(), ["lastSeenAt"]);
        }
        assert!(FlipTable::new(&filters).is_empty());
    }
}
