//! One relay round: read a batch of unpublished rows, produce it in waves, mark what the broker
//! acknowledged. See the [module docs](super) for why it is produced in waves.

use std::sync::atomic::Ordering;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::time::Instant;

use super::waves::Waves;
use super::{bounded, Relay, RelayError, State, HEADER_OUTBOX_ID};
use crate::metrics as m;
use crate::outbox::Message;
use crate::store::outbox::{self as store, Unpublished};

/// The outcome of a round.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Rows read.
    pub(super) read: usize,
    /// Ids delivered (and then marked), in id order per key.
    pub(super) delivered: Vec<i64>,
    /// Deliveries that failed.
    failed: usize,
    /// Rows not produced because an earlier row of their key failed.
    held_back: usize,
    /// The first delivery error.
    error: Option<KafkaError>,
}

impl Round {
    /// The round's failure as an error, if a delivery failed; `delivered` is the total to report.
    pub(super) fn failure(&self, delivered: usize) -> Option<RelayError> {
        self.error.clone().map(|error| RelayError::Undelivered {
            delivered,
            failed: self.failed,
            held_back: self.held_back,
            error,
        })
    }
}

impl Relay {
    /// Reads one batch of unpublished rows with `id <= up_to`, produces it in waves and marks what was
    /// delivered.
    pub(super) async fn round(&self, state: &mut State, up_to: i64) -> Result<Round, RelayError> {
        let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
        let result = bounded(
            "read the outbox",
            store::fetch_unpublished(conn, up_to, self.settings.batch_size),
        )
        .await;
        let rows = self.check(state, result)?;
        let mut round = Round {
            read: rows.len(),
            ..Round::default()
        };
        if rows.is_empty() {
            self.status.rounds.fetch_add(1, Ordering::Relaxed);
            return Ok(round);
        }
        let mut waves = Waves::new(&rows);
        while let Some(wave) = waves.next_wave() {
            let mut in_flight = Vec::with_capacity(wave.len());
            for index in wave {
                let row = &rows[index];
                let message = &row.message;
                let record = FutureRecord::<[u8], [u8]>::to(&message.topic)
                    .payload(&message.payload)
                    .headers(kafka_headers(row.id, message));
                let record = match &message.key {
                    Some(key) => record.key(key.as_slice()),
                    None => record,
                };
                match state.producer.send_result(record) {
                    Ok(delivery) => in_flight.push((index, delivery)),
                    Err((error, _)) => {
                        self.failed(&mut round, &mut waves, row, index, error);
                    }
                }
            }
            // Every report of this wave arrives before the next wave is produced (see the module docs).
            let deadline = Instant::now() + self.settings.delivery_wait;
            for (index, delivery) in in_flight {
                let row = &rows[index];
                let error = match tokio::time::timeout_at(deadline, delivery).await {
                    Ok(Ok(Ok(_))) => {
                        round.delivered.push(row.id);
                        self.status.delivered.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(m::RELAY_MESSAGES_RELAYED, "topic" => row.message.topic.clone())
                            .increment(1);
                        continue;
                    }
                    Ok(Ok(Err((error, _)))) => error,
                    Ok(Err(_canceled)) => KafkaError::Canceled,
                    Err(_elapsed) => {
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                    }
                };
                self.failed(&mut round, &mut waves, row, index, error);
            }
        }
        round.held_back = waves.held_back;

        if round.failed > 0 {
            if let Some((code, reason)) = state.producer.client().fatal_error() {
                tracing::error!(?code, %reason, "the producer hit a fatal error; creating a new one");
                match self.producer_config.create() {
                    Ok(producer) => state.producer = producer,
                    Err(e) => tracing::error!(error = %e, "cannot re-create the producer"),
                }
            }
        }
        if !round.delivered.is_empty() {
            let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
            let result = bounded(
                "mark rows published",
                store::mark_published(conn, &round.delivered),
            )
            .await;
            self.check(state, result)?;
        }
        self.status.rounds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            first_id = rows[0].id,
            read = round.read,
            delivered = round.delivered.len(),
            failed = round.failed,
            held_back = round.held_back,
            "relay round done"
        );
        Ok(round)
    }

    fn failed(
        &self,
        round: &mut Round,
        waves: &mut Waves,
        row: &Unpublished,
        index: usize,
        error: KafkaError,
    ) {
        let topic = &row.message.topic;
        tracing::debug!(id = row.id, topic = %topic, error = %error, "outbox message not delivered");
        waves.failed(index);
        round.failed += 1;
        round.error.get_or_insert(error);
        self.status.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RELAY_PUBLISH_FAILURES, "topic" => topic.clone()).increment(1);
    }
}

/// The Kafka headers of a row: its message's headers, then [`HEADER_OUTBOX_ID`].
fn kafka_headers(id: i64, message: &Message) -> OwnedHeaders {
    let pairs = header_pairs(id, message);
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    headers
}

/// The header names and values of a row, in order: the message's headers (in name order; a header named
/// [`HEADER_OUTBOX_ID`] is replaced by the relay's), then the outbox id in decimal.
pub(super) fn header_pairs(id: i64, message: &Message) -> Vec<(&str, Option<Vec<u8>>)> {
    let mut pairs: Vec<(&str, Option<Vec<u8>>)> = message
        .headers()
        .iter()
        .filter(|h| h.name != HEADER_OUTBOX_ID)
        .map(|h| {
            (
                h.name.as_str(),
                h.value.as_ref().map(|v| v.as_bytes().to_vec()),
            )
        })
        .collect();
    pairs.push((HEADER_OUTBOX_ID, Some(id.to_string().into_bytes())));
    pairs
}
