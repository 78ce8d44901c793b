//! Record in: the pipeline takes a polled record, checks that it belongs to its partition's current
//! assignment, decodes it — once, against the input contract ([`crate::kafka::record`]) — and buffers it
//! until its partition's batch is flushed ([`super::flush`]).

use std::time::Instant;

use super::pipeline::{Buffer, Pipeline};
use crate::kafka::Polled;
use crate::metrics as m;
use crate::rules::EpochMillis;

impl Pipeline {
    /// Decodes and buffers a polled record of the current assignment; `taken` is when the pipeline took it
    /// (monotonic, and wall-clock milliseconds).
    pub(super) fn accept(&mut self, polled: Polled, (now, wall): (Instant, EpochMillis)) {
        let owned = self.partitions.contains_key(&polled.partition);
        let current = self.generations.get(&polled.partition).copied();
        let revoked = self.revoked.get(&polled.partition).copied();
        match disposition(owned, current, revoked, polled.generation) {
            Disposition::Accept => {
                let buffer = self
                    .buffers
                    .entry(polled.partition)
                    .or_insert_with(|| Buffer {
                        records: Vec::new(),
                        accepted: Vec::new(),
                        first_at: None,
                    });
                buffer.first_at.get_or_insert(now);
                if let Some(ts) = polled.record.timestamp {
                    self.status
                        .stages
                        .delivery
                        .record((wall - ts).max(0) as u64);
                }
                let record = polled.record.decode(
                    self.registry.catalogue(),
                    self.config.worker.max_event_bytes,
                );
                buffer.records.push(record);
                buffer.accepted.push(now);
            }
            Disposition::Stale => {
                // Polled under an older assignment (still in the channel when the partition was revoked or
                // re-assigned): whoever owns the partition now re-reads it from the stored position.
                metrics::counter!(m::RECORDS_DROPPED, "why" => "stale_generation").increment(1);
            }
            Disposition::NotOwned => {
                metrics::counter!(m::RECORDS_DROPPED, "why" => "not_owned").increment(1);
                tracing::error!(
                    partition = polled.partition,
                    offset = polled.record.offset,
                    "record from a partition this worker does not own"
                );
            }
        }
    }
}

/// What to do with a polled record.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Polled under the partition's current assignment: process it.
    Accept,
    /// Polled under an older assignment: drop it quietly (the current owner re-reads it).
    Stale,
    /// From a partition this worker neither owns nor owned when the record was polled: an error.
    NotOwned,
}

/// Classifies a record polled under `generation`, given whether the worker owns the partition, the
/// generation of its current assignment, and the one it had when last revoked. Records polled before a
/// revoke can still be in the channel when it is handled; they are stale, not an error (under rebalances
/// they came by the thousand, each logged as an error).
fn disposition(
    owned: bool,
    current: Option<u64>,
    revoked: Option<u64>,
    generation: u64,
) -> Disposition {
    if owned {
        if current == Some(generation) {
            Disposition::Accept
        } else {
            Disposition::Stale
        }
    } else if revoked.is_some_and(|revoked| generation <= revoked) {
        Disposition::Stale
    } else {
        Disposition::NotOwned
    }
}

#[cfg(test)]
mod tests {
    use super::{disposition, Disposition};

    #[test]
    fn a_record_of_the_current_assignment_is_accepted() {
        assert_eq!(disposition(true, Some(3), None, 3), Disposition::Accept);
        assert_eq!(disposition(true, Some(5), Some(3), 5), Disposition::Accept);
    }

    #[test]
    fn a_record_polled_before_its_partition_was_revoked_or_reassigned_is_stale_not_an_error() {
        // Revoked at generation 3, not owned now: a record polled under 3 (or earlier) is stale.
        assert_eq!(disposition(false, None, Some(3), 3), Disposition::Stale);
        assert_eq!(disposition(false, None, Some(3), 2), Disposition::Stale);
        // Owned again under 5: a record of 3 is stale too.
        assert_eq!(disposition(true, Some(5), Some(3), 3), Disposition::Stale);
    }

    #[test]
    fn a_record_of_a_partition_not_owned_when_it_was_polled_is_an_error() {
        assert_eq!(disposition(false, None, None, 1), Disposition::NotOwned);
        assert_eq!(disposition(false, None, Some(3), 4), Disposition::NotOwned);
    }
}
