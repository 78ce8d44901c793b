//! Properties of `decode`: it never panics; whatever it accepts the schema accepts; a valid encoded event
//! decodes to what was sent; every failure makes a dead letter the dead-letter schema accepts.

use std::collections::{BTreeMap, BTreeSet};

use cohort::event::{dead_letter, decode, encode, DecodeError, EVENT_KEYS};
use cohort::rules::time::format_millis;
use cohort::rules::Catalogue;
use cohort_testkit::schema::Schema;
use proptest::prelude::*;
use serde_json::Value;

use super::generators::{apply, edits, json_value, valid_event};
use super::{config, dead_letter_schema, event_schema, DECODE_REASONS, MAX_BYTES};

/// What every decode outcome must satisfy: an accepted event is schema-valid and round-trips; a refused
/// one makes a schema-valid dead letter.
fn check_outcome(
    catalogue: &Catalogue,
    key: Option<&[u8]>,
    payload: &[u8],
    result: Result<cohort::event::DeviceEvent, DecodeError>,
    event_schema: &Schema,
    dead_letter_schema: &Schema,
) -> Result<(), TestCaseError> {
    match result {
        Ok(event) => {
            let value: Value = serde_json::from_slice(payload).unwrap();
            let errors = event_schema.errors(&value);
            prop_assert!(errors.is_empty(), "accepted but schema-invalid: {errors:?}");
            let again = decode(
                None,
                Some(&encode(&event.to_json(catalogue))),
                catalogue,
                MAX_BYTES,
            );
            prop_assert_eq!(again.as_ref(), Ok(&event));
        }
        Err(error) => {
            prop_assert!(DECODE_REASONS.contains(&error.reason), "{:?}", error.reason);
            prop_assert!(!error.detail.chars().any(char::is_control));
            let message = dead_letter("dlq", "in", 1, 2, key, Some(payload), &error, MAX_BYTES);
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            let errors = dead_letter_schema.errors(&body);
            prop_assert!(errors.is_empty(), "{errors:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let catalogue = Catalogue::default();
        let result = decode(key.as_deref(), Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, key.as_deref(), &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn decode_never_panics_on_byte_edits_of_a_valid_event(valid in valid_event(), edits in edits()) {
        let catalogue = Catalogue::default();
        let payload = apply(encode(&valid.json), &edits);
        let key = Some(valid.json.device_id.as_bytes());
        let result = decode(key, Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, key, &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn decode_never_panics_on_json_edits_of_a_valid_event(
        valid in valid_event(),
        key in prop::sample::select(EVENT_KEYS.iter().copied().chain(["colour"]).collect::<Vec<_>>()),
        replacement in prop::option::of(json_value()),
    ) {
        let catalogue = Catalogue::default();
        let mut value = serde_json::to_value(&valid.json).unwrap();
        let object = value.as_object_mut().unwrap();
        match replacement {
            Some(v) => { object.insert(key.to_string(), v); }
            None => { object.remove(key); }
        }
        let payload = value.to_string().into_bytes();
        let result = decode(None, Some(&payload), &catalogue, MAX_BYTES);
        check_outcome(&catalogue, None, &payload, result, &event_schema(), &dead_letter_schema())?;
    }

    #[test]
    fn a_valid_encoded_event_always_decodes_to_what_was_sent(valid in valid_event()) {
        let catalogue = Catalogue::default();
        let payload = encode(&valid.json);
        let sent: Value = serde_json::from_slice(&payload).unwrap();
        let errors = event_schema().errors(&sent);
        prop_assert!(errors.is_empty(), "{errors:?}");
        let event = decode(Some(valid.json.device_id.as_bytes()), Some(&payload), &catalogue, MAX_BYTES)
            .map_err(|e| TestCaseError::fail(format!("{e} for {}", String::from_utf8_lossy(&payload))))?;
        prop_assert_eq!(&event.event_id, &valid.json.event_id);
        prop_assert_eq!(&event.org_id, &valid.json.org_id);
        prop_assert_eq!(&event.device_id, &valid.json.device_id);
        prop_assert_eq!(event.sequence, valid.json.sequence);
        prop_assert_eq!(event.development, valid.json.development);
        prop_assert_eq!(&event.firmware_lock, &valid.json.firmware_lock);
        prop_assert_eq!(event.occurred_at.map(format_millis), valid.json.occurred_at.clone());
        let back = event.to_json(&catalogue);
        let set: BTreeMap<_, _> = back.attributes.into_iter().collect();
        let expected: BTreeMap<_, _> = valid.expected_set.into_iter().collect();
        prop_assert_eq!(set, expected);
        let removed: BTreeSet<_> = back.removed.into_iter().collect();
        prop_assert_eq!(removed, valid.expected_removed);
        prop_assert_eq!(event.changed_fields().count(), event.set.len() + event.removed.len());
        let again = decode(None, Some(&encode(&event.to_json(&catalogue))), &catalogue, MAX_BYTES);
        prop_assert_eq!(again.as_ref(), Ok(&event));
    }
}
