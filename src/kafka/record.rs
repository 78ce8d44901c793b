//! The input record: one message of the input topic as the poller receives it ([`Record`]), and as the
//! pipeline takes it, decoded once against the input contract ([`Decoded`]).
//!
//! A record is decoded once, when the pipeline accepts it; everything after works on the decoded event,
//! its offset and its timestamp. The raw key and payload stay with it for one reader only: a dead letter
//! carries the original message, and a batch can still dead-letter an event that decoded (its org is
//! unknown, or is not its device's).

use crate::event::{self, DecodeError, DeviceEvent};
use crate::rules::{Catalogue, EpochMillis};

/// One input message, owned (so no librdkafka message outlives its consumer).
#[derive(Clone, Debug)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The message's Kafka timestamp (produce time), for latency metrics.
    pub timestamp: Option<EpochMillis>,
}

impl Record {
    /// Decodes the message ([`event::decode`]): the event, or why it can never be applied.
    pub fn decode(self, catalogue: &Catalogue, max_event_bytes: usize) -> Decoded {
        let event = event::decode(
            self.key.as_deref(),
            self.payload.as_deref(),
            catalogue,
            max_event_bytes,
        );
        Decoded {
            offset: self.offset,
            timestamp: self.timestamp,
            event,
            key: self.key,
            payload: self.payload,
        }
    }
}

/// An input message decoded: what a batch computes from.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub offset: i64,
    /// The message's Kafka timestamp (produce time), for latency metrics.
    pub timestamp: Option<EpochMillis>,
    /// The event, or why the message can never be applied (a dead letter).
    pub event: Result<DeviceEvent, DecodeError>,
    /// The message's key as received, for its dead letter.
    pub key: Option<Vec<u8>>,
    /// The message's payload as received, for its dead letter.
    pub payload: Option<Vec<u8>>,
}
