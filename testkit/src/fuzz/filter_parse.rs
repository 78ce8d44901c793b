//! `filter_parse`: bytes → JSON → `validate`/`compile` with the default catalogue, and with the property
//! tests' catalogue, where the reference evaluator then has to agree.

use cohort::rules::attrs::parse_attribute;
use cohort::rules::{Attributes, Catalogue};
use serde_json::{json, Map, Value};

use crate::rules::reference::FIELDS;

use super::eval::in_fresh_thread;
use super::{agrees_with_reference, checked_compile, evaluation_is_consistent, ms, test_catalogue};

// =========================================================================================================
// filter_parse

/// Instants `filter_parse` evaluates at.
const PARSE_NOWS: &[&str] = &["2024-02-29T23:59:59.999Z", "2024-06-15T08:30:00.250Z"];

/// A device with every field of the property tests' catalogue set, valid for both catalogues and for the
/// reference evaluator.
fn full_device() -> Map<String, Value> {
    json!({
        "hostname": "web-01",
        "displayName": "Straße-7",
        "status": "online",
        "osType": "linux",
        "osVersion": "6.1",
        "agentVersion": "2.4.1",
        "platform": "rpi-4",
        "firmwareVersion": "2.4.1",
        "uptimeSeconds": 86400,
        "enrolledAt": "2023-01-10T09:30:00Z",
        "lastSeenAt": "2024-06-13T11:00:00+02:00",
        "tags": ["prod", "Edge", "ÄRGER"],
        "siteId": "",
        "custom.cpu": 2.5,
        "custom.beta": true,
        "custom.ring": "canary",
        "custom.installedAt": "2024-02-29T12:00:00Z",
        "custom.rack": "r1",
        "custom.owner": 12
    })
    .as_object()
    .cloned()
    .unwrap_or_default()
}

/// A device made of the filter's own values (where they are valid attribute values), so that equality and
/// membership conditions of an arbitrary filter can come out true.
fn device_from_filter(filter: &Value, c: &Catalogue, out: &mut Map<String, Value>) {
    let Some(node) = filter.as_object() else {
        return;
    };
    if let Some(Value::Array(children)) = node.get("conditions") {
        for child in children {
            device_from_filter(child, c, out);
        }
    }
    let (Some(Value::String(field)), Some(value)) = (node.get("field"), node.get("value")) else {
        return;
    };
    let mut candidates = vec![value.clone()];
    match value {
        Value::Array(items) => candidates.extend(items.iter().take(4).cloned()),
        Value::Object(range) => candidates.extend(range.get("from").cloned()),
        _ => {}
    }
    for candidate in candidates {
        if out.len() < 64
            && !out.contains_key(field)
            && matches!(parse_attribute(c, field, &candidate), Ok((_, Some(_))))
        {
            out.insert(field.clone(), candidate);
        }
    }
}

fn parse_device(device: &Map<String, Value>, c: &Catalogue) -> Attributes {
    Attributes::from_json(device, c)
        .unwrap_or_else(|e| panic!("harness: device {device:?} does not parse: {e:?}"))
}

/// Whether the reference evaluator knows every field the filter mentions.
fn reference_knows(filter: &Value) -> bool {
    let Some(node) = filter.as_object() else {
        return false;
    };
    match node.get("field") {
        Some(Value::String(field)) => {
            field.starts_with("custom.") || FIELDS.iter().any(|(name, _)| name == field)
        }
        Some(_) => false,
        None => node
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().all(reference_knows)),
    }
}

/// Fuzz target `filter_parse`: arbitrary bytes, parsed as JSON, as a filter.
pub fn check_filter_parse(data: &[u8]) {
    let Ok(filter) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let nows: Vec<i64> = PARSE_NOWS.iter().map(|s| ms(s)).collect();

    // The default catalogue, as the API validates with.
    let c = Catalogue::default();
    if let Some(f) = checked_compile(&filter, &c) {
        let mut own = Map::new();
        device_from_filter(&filter, &c, &mut own);
        let devices = [Map::new(), full_device_for(&c), own];
        for device in &devices {
            let attrs = parse_device(device, &c);
            for &now in &nows {
                evaluation_is_consistent(&filter, &f, &attrs, now, &c);
            }
        }
    }

    // The property tests' catalogue, where the reference evaluator says what a valid filter means.
    let c = test_catalogue();
    if let Some(f) = checked_compile(&filter, &c) {
        if !reference_knows(&filter) {
            return;
        }
        let mut own = Map::new();
        device_from_filter(&filter, &c, &mut own);
        let devices = [Map::new(), full_device(), own];
        in_fresh_thread(|| {
            for device in &devices {
                let attrs = parse_device(device, &c);
                for &now in &nows {
                    agrees_with_reference(&filter, &f, &attrs, device, now, &c);
                    evaluation_is_consistent(&filter, &f, &attrs, now, &c);
                }
            }
        });
    }
}

/// [`full_device`] without the attributes the catalogue `c` does not accept (the default catalogue has
/// no declared custom fields, so `custom.cpu` is an undeclared string there and `2.5` is its text).
fn full_device_for(c: &Catalogue) -> Map<String, Value> {
    full_device()
        .into_iter()
        .filter(|(k, v)| parse_attribute(c, k, v).is_ok())
        .collect()
}
