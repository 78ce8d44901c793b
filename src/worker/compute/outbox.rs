//! The outbox rows a batch writes in its transaction, for the relay to publish: rollout-target events
//! (CloudEvents, keyed by device) and dead letters (the original message, with the reason in headers).

use serde_json::{json, Value};

use super::causes::Cause;
use super::work::Work;
use crate::event::{self, DecodeError};
use crate::firmware::Target;
use crate::kafka::Decoded;
use crate::rules::time::format_millis;
use crate::store::batch::OutboxRow;

impl Work<'_> {
    /// Writes a rollout-target event for device `id` of `org`, whose target moved from `previous` to
    /// `target`: its `sequence`-th.
    pub(super) fn rollout(
        &mut self,
        org: &str,
        id: &str,
        sequence: i64,
        previous: &Target,
        target: &Target,
        cause: &Cause,
    ) {
        let now = self.ctx.now;
        let event = crate::firmware::rollout_event(
            org,
            id,
            sequence,
            previous,
            target,
            cause,
            &format_millis(now),
        );
        self.stats.rollouts += 1;
        self.outbox.push(OutboxRow {
            topic: self.ctx.output_topic.to_string(),
            key: Some(id.as_bytes().to_vec()),
            payload: event.to_string().into_bytes(),
            headers: json!({
                "ce_specversion": "1.0",
                "ce_id": crate::firmware::event_id(id, sequence).to_string(),
                "ce_type": crate::firmware::EVENT_TYPE,
                "content-type": "application/cloudevents+json",
            }),
        });
    }

    /// Writes the dead letter of `record`, which can never be applied for `error`: the original key and
    /// payload, with the reason and the record's position.
    pub(super) fn dead_letter(&mut self, record: &Decoded, error: &DecodeError) {
        self.stats.dead_letters.push(error.reason);
        let message = event::dead_letter(
            self.ctx.dead_letter_topic,
            self.ctx.input_topic,
            self.partition.id,
            record.offset,
            record.key.as_deref(),
            record.payload.as_deref(),
            error,
            self.ctx.max_event_bytes,
        );
        let headers: serde_json::Map<String, Value> = message
            .headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        self.outbox.push(OutboxRow {
            topic: message.topic,
            key: message.key,
            payload: message.payload,
            headers: Value::Object(headers),
        });
    }
}
