//! The outbox rows a batch writes in its transaction, for the relay to publish: rollout-target events
//! (CloudEvents, keyed by device) and dead letters (the original message, with the reason in headers).

use super::causes::Cause;
use super::work::Work;
use crate::event::{self, DecodeError};
use crate::firmware::{RolloutTarget, Target};
use crate::kafka::Decoded;

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
        let cause = self.document(cause);
        let event = RolloutTarget {
            org_id: org,
            device_id: id,
            sequence,
            previous,
            target,
            release: self
                .registry
                .deciding_release(org, target)
                .map(|r| r.staging),
            cause: &cause,
            at: self.ctx.now,
        };
        self.stats.rollouts += 1;
        self.outbox.push(event.message(self.ctx.output_topic));
    }

    /// Writes the dead letter of `record`, which can never be applied for `error`: the original key and
    /// payload, with the reason and the record's position.
    pub(super) fn dead_letter(&mut self, record: &Decoded, error: &DecodeError) {
        self.stats.dead_letters.push(error.reason);
        self.outbox.push(event::dead_letter(
            self.ctx.dead_letter_topic,
            self.ctx.input_topic,
            self.partition.id,
            record.offset,
            record.key.as_deref(),
            record.payload.as_deref(),
            error,
            self.ctx.max_event_bytes,
        ));
    }
}
