use super::*;
use crate::rules::catalogue::Catalogue;
use crate::rules::filter::compile;
use serde_json::json;

fn filter(c: &Catalogue, conditions: serde_json::Value) -> CompiledFilter {
    compile(&json!({"operator": "AND", "conditions": conditions}), c).unwrap()
}

fn query(index: &FieldIndex<u32>, changes: &[FieldChange<'_>]) -> Vec<u32> {
    let mut out = Vec::new();
    index.candidates(changes, 0, &mut Scratch::default(), &mut out);
    out.sort();
    out
}

#[test]
fn only_groups_referencing_a_changed_field_are_candidates() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    index.upsert(
        1,
        &filter(
            &c,
            json!([{"field": "hostname", "operator": "contains", "value": "a"}]),
        ),
    );
    index.upsert(
        2,
        &filter(
            &c,
            json!([{"field": "uptimeSeconds", "operator": "greaterThan", "value": 1}]),
        ),
    );
    index.upsert(
        3,
        &filter(
            &c,
            json!([{"field": "daysSinceLastSeen", "operator": "greaterThan", "value": 1}]),
        ),
    );
    let host = c.resolve("hostname").unwrap();
    let seen = c.resolve("lastSeenAt").unwrap();
    let v = AttrValue::Str("a-host".into());
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: host,
                old: None,
                new: Some(&v)
            }]
        ),
        [1]
    );
    let t = AttrValue::Time(-10 * crate::rules::time::DAY_MS);
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: seen,
                old: None,
                new: Some(&t)
            }]
        ),
        [3]
    );
    let other = c.resolve("platform").unwrap();
    assert!(query(
        &index,
        &[FieldChange {
            field: other,
            old: None,
            new: Some(&v)
        }]
    )
    .is_empty());
    // A change that alters the truth of no condition is not a candidate.
    let w = AttrValue::Str("xyz".into());
    assert!(query(
        &index,
        &[FieldChange {
            field: host,
            old: None,
            new: Some(&w)
        }]
    )
    .is_empty());
    assert!(!index.references(other));
}

#[test]
fn equality_conditions_are_indexed_by_value() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    index.upsert(
        1,
        &filter(
            &c,
            json!([{"field": "status", "operator": "equals", "value": "online"}]),
        ),
    );
    index.upsert(
        2,
        &filter(
            &c,
            json!([{"field": "status", "operator": "notIn", "value": ["offline", "maintenance"]}]),
        ),
    );
    index.upsert(
        3,
        &filter(&c, json!([{"field": "status", "operator": "isNull"}])),
    );
    let status = c.resolve("status").unwrap();
    let (online, offline, decom) = (AttrValue::Enum(0), AttrValue::Enum(1), AttrValue::Enum(3));
    let change = |old, new| {
        [FieldChange {
            field: status,
            old,
            new,
        }]
    };
    // isNull (group 3) does not change truth between two present values.
    assert_eq!(
        query(&index, &change(Some(&online), Some(&offline))),
        [1, 2]
    );
    assert_eq!(query(&index, &change(Some(&offline), Some(&decom))), [2]);
    assert_eq!(query(&index, &change(None, Some(&decom))), [3]);
}

#[test]
fn a_field_with_any_non_equality_condition_is_checked_leaf_by_leaf() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    index.upsert(
        1,
        &filter(
            &c,
            json!([
                {"field": "uptimeSeconds", "operator": "equals", "value": 5},
                {"field": "uptimeSeconds", "operator": "lessThan", "value": 100}
            ]),
        ),
    );
    let keys = filter(
        &c,
        json!([{"field": "uptimeSeconds", "operator": "in", "value": [1, -0.0]}]),
    )
    .index_keys();
    assert_eq!(
        keys[0].1,
        FieldKeys::Values(vec![
            ValueKey::Num(0f64.to_bits()),
            ValueKey::Num(1f64.to_bits())
        ])
    );
    let up = c.resolve("uptimeSeconds").unwrap();
    let (a, b, far) = (
        AttrValue::Num(7.0),
        AttrValue::Num(8.0),
        AttrValue::Num(150.0),
    );
    let change = |old, new| {
        [FieldChange {
            field: up,
            old,
            new,
        }]
    };
    assert!(
        query(&index, &change(Some(&a), Some(&b))).is_empty(),
        "no condition changes truth"
    );
    assert_eq!(query(&index, &change(Some(&a), Some(&far))), [1]);
    assert_eq!(
        query(&index, &change(Some(&a), Some(&AttrValue::Num(5.0)))),
        [1]
    );
}

#[test]
fn replacing_and_removing_groups_updates_the_index() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    let host = c.resolve("hostname").unwrap();
    let up = c.resolve("uptimeSeconds").unwrap();
    index.upsert(
        7,
        &filter(
            &c,
            json!([{"field": "hostname", "operator": "equals", "value": "a"}]),
        ),
    );
    index.upsert(
        7,
        &filter(
            &c,
            json!([{"field": "uptimeSeconds", "operator": "greaterThan", "value": 1}]),
        ),
    );
    let a = AttrValue::Str("a".into());
    let n = AttrValue::Num(2.0);
    assert!(query(
        &index,
        &[FieldChange {
            field: host,
            old: None,
            new: Some(&a)
        }]
    )
    .is_empty());
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: up,
                old: None,
                new: Some(&n)
            }]
        ),
        [7]
    );
    index.remove(7);
    assert!(index.is_empty());
    assert!(!index.references(up));
    index.upsert(
        8,
        &filter(
            &c,
            json!([{"field": "hostname", "operator": "equals", "value": "a"}]),
        ),
    );
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: host,
                old: Some(&a),
                new: None
            }]
        ),
        [8]
    );
}

#[test]
fn a_group_matching_several_changed_fields_is_returned_once() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    index.upsert(
        1,
        &filter(
            &c,
            json!([
                {"field": "hostname", "operator": "in", "value": ["a", "b"]},
                {"field": "platform", "operator": "contains", "value": "x"}
            ]),
        ),
    );
    let host = c.resolve("hostname").unwrap();
    let platform = c.resolve("platform").unwrap();
    let (a, b) = (AttrValue::Str("a".into()), AttrValue::Str("b".into()));
    let changes = [
        FieldChange {
            field: host,
            old: Some(&a),
            new: Some(&b),
        },
        FieldChange {
            field: platform,
            old: None,
            new: Some(&a),
        },
    ];
    assert_eq!(query(&index, &changes), [1]);
}

#[test]
fn shared_regexes_are_matched_together_and_survive_removals() {
    let c = Catalogue::default();
    let host = c.resolve("hostname").unwrap();
    let mut index = FieldIndex::new();
    let regex = |pattern: &str| {
        filter(
            &c,
            json!([{"field": "hostname", "operator": "matches", "value": pattern}]),
        )
    };
    index.upsert(1, &regex("^a"));
    index.upsert(2, &regex("^a"));
    index.upsert(3, &regex("b$"));
    index.upsert(
        4,
        &filter(
            &c,
            json!([{"field": "hostname", "operator": "contains", "value": "X"}]),
        ),
    );
    let s = |v: &str| AttrValue::Str(v.into());
    let change = |index: &FieldIndex<u32>, old: &AttrValue, new: &AttrValue| {
        query(
            index,
            &[FieldChange {
                field: host,
                old: Some(old),
                new: Some(new),
            }],
        )
    };
    assert_eq!(change(&index, &s("ax"), &s("zz")), [1, 2, 4]);
    assert_eq!(change(&index, &s("ab"), &s("zb")), [1, 2]);
    assert_eq!(change(&index, &s("ab"), &s("a")), [3]);
    index.remove(1);
    assert_eq!(change(&index, &s("ax"), &s("zz")), [2, 4]);
    index.remove(3);
    assert!(change(&index, &s("ab"), &s("a")).is_empty());
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: host,
                old: Some(&s("ab")),
                new: Some(&AttrValue::Num(1.0)),
            }]
        ),
        [2],
        "a value of another type matches no regex"
    );
}

#[test]
fn each_condition_on_a_field_is_found_by_its_own_structure() {
    let c = Catalogue::default();
    let up = c.resolve("uptimeSeconds").unwrap();
    let mut index = FieldIndex::new();
    index.upsert(
        1,
        &filter(
            &c,
            json!([
                {"field": "uptimeSeconds", "operator": "in", "value": [5]},
                {"field": "uptimeSeconds", "operator": "greaterThan", "value": 10}
            ]),
        ),
    );
    index.upsert(
        2,
        &filter(
            &c,
            json!([{"field": "uptimeSeconds", "operator": "between", "value": {"from": 2, "to": 4}}]),
        ),
    );
    let n = AttrValue::Num;
    let change = |old: f64, new: f64| {
        query(
            &index,
            &[FieldChange {
                field: up,
                old: Some(&n(old)),
                new: Some(&n(new)),
            }],
        )
    };
    assert_eq!(change(1.0, 5.0), [1], "by value");
    assert_eq!(change(1.0, 3.0), [2], "into the interval");
    assert_eq!(change(4.0, 4.5), [2], "past its inclusive end");
    assert_eq!(change(10.0, 11.0), [1], "past the threshold");
    assert!(change(1.0, 9.0).is_empty(), "across both ends: unchanged");
    assert!(change(11.0, 99.0).is_empty());
    assert_eq!(
        query(
            &index,
            &[FieldChange {
                field: up,
                old: None,
                new: Some(&n(3.0)),
            }]
        ),
        [2]
    );
}
