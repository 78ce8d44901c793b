//! The rollout-target event: a CloudEvents 1.0 document in structured mode
//! (`schemas/rollout-target.schema.json`), its Kafka headers, and the outbox message that carries both.
//! Pure: no IO.
//!
//! The event's id is deterministic (a UUIDv5 of the device id and the device's rollout sequence), so a
//! re-sent event carries the same id; the headers repeat it as `ce_id`, with the spec version and type, so
//! a consumer can route on headers without parsing the value.

use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{Staging, Target};
use crate::outbox::Message;
use crate::rules::time::{format_millis, EpochMillis};

/// The namespace of rollout-event ids (UUIDv5 of the device id and its per-device sequence).
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x6b1c_9c0e_2f3a_4d5e_9a1b_7c2d_3e4f_5a6b);

/// The CloudEvents `type` of rollout-target events.
pub const EVENT_TYPE: &str = "io.cohort.rollout-target.changed";
/// The CloudEvents version the events follow (`specversion`).
pub const SPEC_VERSION: &str = "1.0";
/// The `content-type` header of a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// Header: the CloudEvents `specversion`.
pub const HEADER_SPEC_VERSION: &str = "ce_specversion";
/// Header: the event's id, as in the document.
pub const HEADER_ID: &str = "ce_id";
/// Header: the CloudEvents `type`, [`EVENT_TYPE`].
pub const HEADER_TYPE: &str = "ce_type";
/// Header: the value's media type, [`CONTENT_TYPE`].
pub const HEADER_CONTENT_TYPE: &str = "content-type";

/// The deterministic id of a device's `sequence`-th rollout event: a re-sent event has the same id.
pub fn event_id(device_id: &str, sequence: i64) -> Uuid {
    let mut name = Vec::with_capacity(device_id.len() + 21);
    name.extend_from_slice(device_id.as_bytes());
    name.push(0);
    name.extend_from_slice(sequence.to_string().as_bytes());
    Uuid::new_v5(&EVENT_NAMESPACE, &name)
}

/// A rollout-target event as a CloudEvents 1.0 JSON document: the document of [`RolloutTarget`], for any
/// serialisable `cause` and an already formatted `time`.
#[allow(clippy::too_many_arguments)]
pub fn rollout_event(
    org_id: &str,
    device_id: &str,
    sequence: i64,
    previous: &Target,
    current: &Target,
    cause: &(impl serde::Serialize + ?Sized),
    time: &str,
) -> Value {
    json!({
        "specversion": SPEC_VERSION,
        "id": event_id(device_id, sequence).to_string(),
        "source": format!("/cohort/orgs/{org_id}"),
        "type": EVENT_TYPE,
        "subject": device_id,
        "time": time,
        "datacontenttype": "application/json",
        "data": {
            "orgId": org_id,
            "deviceId": device_id,
            "sequence": sequence,
            "previous": previous.to_json(),
            "target": current.to_json(),
            "cause": cause,
        }
    })
}

/// A device's resolved firmware version changed: the event the OTA dispatcher acts on.
#[derive(Clone, Copy, Debug)]
pub struct RolloutTarget<'a> {
    /// The device's org (the event's `source`).
    pub org_id: &'a str,
    /// The device (the event's `subject`, and the Kafka key, so a device's events stay in order).
    pub device_id: &'a str,
    /// The device's rollout sequence: 1, 2, 3… without gaps; with the device, it decides the id.
    pub sequence: i64,
    /// The target before the change.
    pub previous: &'a Target,
    /// The target after it.
    pub target: &'a Target,
    /// The release whose stage selected the device for its new target, if one decided it.
    pub release: Option<Staging>,
    /// What caused the change: the JSON document also stored in the membership log.
    pub cause: &'a RawValue,
    /// When the change was computed (the event's `time`).
    pub at: EpochMillis,
}

impl RolloutTarget<'_> {
    /// The event's id.
    pub fn id(&self) -> Uuid {
        event_id(self.device_id, self.sequence)
    }

    /// The CloudEvents document.
    pub fn document(&self) -> Value {
        let mut document = rollout_event(
            self.org_id,
            self.device_id,
            self.sequence,
            self.previous,
            self.target,
            self.cause,
            &format_millis(self.at),
        );
        if let (Some(release), Some(data)) = (self.release, document.get_mut("data")) {
            data["release"] = json!({
                "id": release.release,
                "stage": release.stage,
                "percentage": f64::from(release.share) / 100.0,
            });
        }
        document
    }

    /// The outbox message publishing the event to `topic`: key the device id, value the document (compact
    /// JSON), and the CloudEvents headers.
    pub fn message(&self, topic: &str) -> Message {
        Message::new(
            topic,
            Some(self.device_id.as_bytes().to_vec()),
            self.document().to_string().into_bytes(),
        )
        .with_header(HEADER_SPEC_VERSION, Some(SPEC_VERSION.into()))
        .with_header(HEADER_ID, Some(self.id().to_string()))
        .with_header(HEADER_TYPE, Some(EVENT_TYPE.into()))
        .with_header(HEADER_CONTENT_TYPE, Some(CONTENT_TYPE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::Reason;

    #[test]
    fn event_ids_are_deterministic_per_device_and_sequence() {
        assert_eq!(event_id("dev-1", 3), event_id("dev-1", 3));
        assert_ne!(event_id("dev-1", 3), event_id("dev-1", 4));
        assert_ne!(event_id("dev-1", 3), event_id("dev-13", 0));
        let e = rollout_event(
            "acme",
            "dev-1",
            3,
            &Target::none(),
            &Target::none(),
            &json!({}),
            "2024-01-01T00:00:00.000Z",
        );
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["id"], event_id("dev-1", 3).to_string());
        assert_eq!(e["data"]["sequence"], 3);
    }

    #[test]
    fn the_message_carries_the_document_keyed_by_device_with_the_cloudevents_headers() {
        let cause =
            serde_json::value::to_raw_value(&json!({"type": "control", "controlId": 118})).unwrap();
        let previous = Target::none();
        let target = Target {
            release: None,
            version: Some("2".into()),
            reason: Reason::Group,
            group: Some(Uuid::from_u128(7)),
        };
        let event = RolloutTarget {
            org_id: "acme",
            device_id: "gw-17",
            sequence: 4,
            previous: &previous,
            target: &target,
            release: Some(Staging {
                state: crate::firmware::ReleaseState::Active,
                release: Uuid::from_u128(9),
                stage: 1,
                share: 2_500,
            }),
            cause: &cause,
            at: 1_718_452_800_000,
        };
        let message = event.message("rollout-targets");
        assert_eq!(message.topic, "rollout-targets");
        assert_eq!(message.key.as_deref(), Some(&b"gw-17"[..]));
        let id = event_id("gw-17", 4).to_string();
        let mut expected = rollout_event(
            "acme",
            "gw-17",
            4,
            &previous,
            &target,
            &json!({"type": "control", "controlId": 118}),
            "2024-06-15T12:00:00.000Z",
        );
        // The release whose stage selected the device, with the stage's share in percent.
        expected["data"]["release"] =
            json!({"id": Uuid::from_u128(9), "stage": 1, "percentage": 25.0});
        assert_eq!(message.payload, expected.to_string().into_bytes());
        assert_eq!(
            message.header_pairs(),
            [
                ("ce_id", Some(id.as_str())),
                ("ce_specversion", Some("1.0")),
                ("ce_type", Some("io.cohort.rollout-target.changed")),
                ("content-type", Some("application/cloudevents+json")),
            ]
        );
    }
}
