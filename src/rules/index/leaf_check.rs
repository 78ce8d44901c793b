use super::*;
use crate::rules::catalogue::Catalogue;
use crate::rules::filter::compile;
use serde_json::json;

#[test]
fn a_change_that_flips_no_condition_is_not_a_candidate() {
    let c = Catalogue::default();
    let mut index = FieldIndex::new();
    let f = compile(
        &json!({"operator": "AND", "conditions": [{"field": "uptimeSeconds", "operator": "greaterThan", "value": 50}]}),
        &c,
    )
    .unwrap();
    index.upsert(1u32, &f);
    let up = c.resolve("uptimeSeconds").unwrap();
    let (a, b, z) = (
        AttrValue::Num(10.0),
        AttrValue::Num(20.0),
        AttrValue::Num(70.0),
    );
    let mut out = Vec::new();
    index.candidates(
        &[FieldChange {
            field: up,
            old: Some(&a),
            new: Some(&b),
        }],
        0,
        &mut Scratch::default(),
        &mut out,
    );
    assert!(out.is_empty());
    index.candidates(
        &[FieldChange {
            field: up,
            old: Some(&a),
            new: Some(&z),
        }],
        0,
        &mut Scratch::default(),
        &mut out,
    );
    assert_eq!(out, [1]);
}
