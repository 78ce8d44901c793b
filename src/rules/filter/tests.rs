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
