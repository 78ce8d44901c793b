//! Parsing, lookup, and JSON rendering of device attributes.

use super::*;
use serde_json::json;

fn parse(doc: Value) -> Result<Attributes, Vec<AttributeError>> {
    Attributes::from_json(doc.as_object().unwrap(), &Catalogue::default())
}

/// Merges `patch` into `doc` as PostgreSQL's `jsonb ||` does, dropping `null`s if `strip`.
fn merged(doc: &Value, patch: &Value, strip: bool) -> Value {
    let mut out = doc.as_object().unwrap().clone();
    for (k, v) in patch.as_object().unwrap() {
        out.insert(k.clone(), v.clone());
    }
    if strip {
        out.retain(|_, v| !v.is_null());
    }
    Value::Object(out)
}

#[test]
fn a_patch_holds_only_what_changed_and_merges_into_the_new_document() {
    let c = Catalogue::default();
    let parse = |doc: Value| Attributes::from_json(doc.as_object().unwrap(), &c);
    let before = parse(
        json!({"lastSeenAt": "2026-01-01T00:00:00.000Z", "uptimeSeconds": 5,
        "custom.rack": "a", "tags": ["x"]}),
    )
    .unwrap();
    let cases = [
        (
            json!({"lastSeenAt": "2026-01-01T00:01:00.000Z", "uptimeSeconds": 5,
            "custom.rack": "a", "tags": ["x"]}),
            json!({"lastSeenAt": "2026-01-01T00:01:00.000Z"}),
            false,
        ),
        (
            json!({"uptimeSeconds": 65, "custom.rack": "a", "tags": ["x"], "custom.zone": "b"}),
            json!({"lastSeenAt": null, "uptimeSeconds": 65.0, "custom.zone": "b"}),
            true,
        ),
        (
            json!({}),
            json!({"lastSeenAt": null, "uptimeSeconds": null, "custom.rack": null,
            "tags": null}),
            true,
        ),
        (
            json!({"lastSeenAt": "2026-01-01T00:00:00.000Z", "uptimeSeconds": 5,
            "custom.rack": "a", "tags": ["x"]}),
            json!({}),
            false,
        ),
    ];
    for (after, expected, removes) in cases {
        let after = parse(after).unwrap();
        let mut out = Vec::new();
        assert_eq!(after.write_json_patch(&before, &c, &mut out), removes);
        let patch: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(patch, expected);
        let doc = Value::Object(before.to_json(&c));
        assert_eq!(
            merged(&doc, &patch, removes),
            Value::Object(after.to_json(&c))
        );
    }
}

#[test]
fn lookups_find_every_field_whether_ids_are_consecutive_or_not() {
    // Consecutive ids, ids with gaps, clusters far apart, and a single one.
    let layouts: [Vec<u32>; 4] = [
        (10..210).collect(),
        (0..200).map(|i| i * 3 + i % 7).collect(),
        (0..20).chain(5000..5030).chain(90_000..90_005).collect(),
        vec![42],
    ];
    for ids in layouts {
        let mut attrs = Attributes::new();
        for id in &ids {
            attrs.set(FieldId(*id), AttrValue::Num(f64::from(*id)));
        }
        let max = ids.iter().max().copied().unwrap_or(0);
        for probe in (0..max + 3).chain([90_002, u32::MAX]) {
            let expected = ids
                .contains(&probe)
                .then(|| AttrValue::Num(f64::from(probe)));
            assert_eq!(attrs.get(FieldId(probe)), expected.as_ref(), "id {probe}");
        }
        // Inserting and removing through the same search keeps the order.
        for probe in [1, max / 2 + 1, max + 1] {
            let had = attrs.get(FieldId(probe)).cloned();
            attrs.set(FieldId(probe), AttrValue::Bool(true));
            assert_eq!(attrs.get(FieldId(probe)), Some(&AttrValue::Bool(true)));
            let fields: Vec<FieldId> = attrs.iter().map(|(f, _)| f).collect();
            assert!(fields.windows(2).all(|w| w[0] < w[1]), "sorted");
            assert_eq!(attrs.remove(FieldId(probe)), Some(AttrValue::Bool(true)));
            if let Some(v) = had {
                attrs.set(FieldId(probe), v);
            }
        }
        assert_eq!(attrs.len(), ids.len());
    }
}

#[test]
fn a_device_document_parses_and_renders_back() {
    let c = Catalogue::default();
    let doc = json!({
        "hostname": "web-01", "status": "online", "uptimeSeconds": 12.5,
        "lastSeenAt": "2024-03-01T12:00:00+02:00", "tags": ["a", "b"], "custom.rack": 12
    });
    let attrs = Attributes::from_json(doc.as_object().unwrap(), &c).unwrap();
    let back = attrs.to_json(&c);
    assert_eq!(back["lastSeenAt"], json!("2024-03-01T10:00:00.000Z"));
    assert_eq!(back["custom.rack"], json!("12"));
    assert_eq!(back["status"], json!("online"));
    assert_eq!(back["tags"], json!(["a", "b"]));
}

#[test]
fn written_json_is_the_rendered_document() {
    let c = Catalogue::default();
    let doc = json!({
        "hostname": "we\"b-01\n\u{1}é", "status": "online", "uptimeSeconds": 12.5,
        "lastSeenAt": "2024-03-01T12:00:00+02:00", "tags": ["a", "b\\"], "custom.rack": 12
    });
    let attrs = Attributes::from_json(doc.as_object().unwrap(), &c).unwrap();
    let mut out = Vec::new();
    attrs.write_json(&c, &mut out);
    let written: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(written, Value::Object(attrs.to_json(&c)));
    let mut empty = Vec::new();
    Attributes::new().write_json(&c, &mut empty);
    assert_eq!(empty, b"{}");
}

#[test]
fn every_bad_attribute_is_reported() {
    let errors = parse(json!({
        "hostname": 5, "status": "rebooting", "lastSeenAt": "yesterday", "nope": 1,
        "daysSinceLastSeen": 3, "tags": ["a", 1]
    }))
    .unwrap_err();
    let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "daysSinceLastSeen",
            "hostname",
            "lastSeenAt",
            "nope",
            "status",
            "tags"
        ]
    );
    assert!(errors.iter().any(|e| e.message == "Unknown field: nope"));
}

#[test]
fn a_nul_character_is_refused_in_strings_and_list_items() {
    let errors = parse(json!({
        "hostname": "a\u{0}b", "tags": ["ok", "\u{0}"], "custom.note": "\u{0}", "displayName": "fine"
    }))
    .unwrap_err();
    let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["custom.note", "hostname", "tags"]);
    assert!(errors.iter().all(|e| e.message.contains("U+0000")));
}

#[test]
fn null_means_absent() {
    let attrs = parse(json!({"hostname": null})).unwrap();
    assert!(attrs.is_empty());
}

#[test]
fn set_and_remove_keep_lookup_sorted() {
    let c = Catalogue::default();
    let mut attrs = Attributes::new();
    let tags = c.resolve("tags").unwrap();
    let host = c.resolve("hostname").unwrap();
    attrs.set(tags, AttrValue::StrList(Box::new([])));
    attrs.set(host, AttrValue::Str("x".into()));
    assert_eq!(attrs.get(host), Some(&AttrValue::Str("x".into())));
    assert_eq!(attrs.remove(tags), Some(AttrValue::StrList(Box::new([]))));
    assert_eq!(attrs.get(tags), None);
}
