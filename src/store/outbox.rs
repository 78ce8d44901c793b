//! The transactional `outbox` table: every statement on it, and the one conversion between an
//! [`outbox::Message`](Message) and its row.
//!
//! A row's columns are `topic`, `message_key`, `payload` and `headers`, a JSON object of the message's
//! headers (name → string, or `null` for a header without a value). The worker inserts rows in its batch
//! transaction ([`insert`], called by [`super::batch::commit`]); the relay ([`crate::relay`]) reads the
//! unpublished ones in id order ([`fetch_unpublished`]), marks what the broker acknowledged
//! ([`mark_published`]) and deletes what has been published long enough ([`delete_expired`]).
//!
//! The relay works on one dedicated connection that holds its publishing lease ([`try_take_lease`]), so
//! these functions take a connection rather than the pool.

use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};

use super::StoreError;
use crate::outbox::Message;

/// The NOTIFY channel a transaction that inserts outbox rows signals, at its commit.
pub const CHANNEL: &str = "cohort_outbox";

/// The session-level advisory lock whose holder is the one relay that publishes ("cohortrl" in ASCII; the
/// control log's append lock is "cohort", so they never collide).
pub const LEASE_KEY: i64 = 0x636f_686f_7274_726c;

/// A message read back from an unpublished row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpublished {
    /// The row id: the order in which rows were written, and the message's stable id on the wire.
    pub id: i64,
    /// The message as written.
    pub message: Message,
}

/// The `headers` column of `message`.
fn headers_column(message: &Message) -> Value {
    let map: Map<String, Value> = message
        .headers()
        .iter()
        .map(|h| {
            let value = h.value.as_deref().map_or(Value::Null, Value::from);
            (h.name.clone(), value)
        })
        .collect();
    Value::Object(map)
}

/// One stored row, as read.
#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: i64,
    topic: String,
    message_key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Value,
}

impl From<Row> for Unpublished {
    /// The message of a row. The `headers` object's entries become headers in name order: strings as
    /// they are, `null` as a header without a value, any other JSON value as its JSON text. A `headers`
    /// value that is not an object (cohort always writes one) gives no headers, with a warning.
    fn from(row: Row) -> Self {
        let mut message = Message::new(row.topic, row.message_key, row.payload);
        match row.headers {
            Value::Object(map) => {
                for (name, value) in map {
                    let value = match value {
                        Value::String(s) => Some(s),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    };
                    message = message.with_header(name, value);
                }
            }
            Value::Null => {}
            other => {
                tracing::warn!(id = row.id, headers = %other, "outbox headers are not a JSON object; sending none of them");
            }
        }
        Unpublished {
            id: row.id,
            message,
        }
    }
}

/// Inserts `messages` (in order, so their ids follow it) and signals [`CHANNEL`], within the caller's
/// transaction; the notification is delivered only if it commits. Writes nothing for no messages.
pub async fn insert(conn: &mut PgConnection, messages: &[Message]) -> Result<(), StoreError> {
    if messages.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (topic, message_key, payload, headers) \
         SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::jsonb[])",
    )
    .bind(
        messages
            .iter()
            .map(|m| m.topic.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.payload.as_slice())
            .collect::<Vec<_>>(),
    )
    .bind(messages.iter().map(headers_column).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    // The notification carries nothing: a missed one only delays publishing until the relay's next poll.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the publishing lease ([`LEASE_KEY`]) for this connection's session if no other session holds
/// it; whether this one holds it now.
pub async fn try_take_lease(conn: &mut PgConnection) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEASE_KEY)
        .fetch_one(conn)
        .await?)
}

/// The id of the newest row, published or not; `None` when the table is empty.
pub async fn newest_id(conn: &mut PgConnection) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(conn)
        .await?)
}

/// Up to `limit` unpublished rows with `id <= up_to`, in id order (served by the partial index
/// `outbox_unpublished_idx`).
pub async fn fetch_unpublished(
    conn: &mut PgConnection,
    up_to: i64,
    limit: usize,
) -> Result<Vec<Unpublished>, StoreError> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, topic, message_key, payload, headers FROM outbox \
         WHERE published_at IS NULL AND id <= $1 ORDER BY id LIMIT $2",
    )
    .bind(up_to)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Unpublished::from).collect())
}

/// Marks the rows `ids` published (those not marked already), returning how many it marked.
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE outbox SET published_at = now() \
         WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(conn)
    .await?
    .rows_affected())
}

/// The unpublished rows: how many, and the age of the oldest in seconds (0 when there are none).
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, f64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*), \
           COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
         FROM outbox WHERE published_at IS NULL",
    )
    .fetch_one(conn)
    .await?)
}

/// Deletes up to `limit` rows published more than `retention_hours` ago, oldest id first, returning how
/// many it deleted.
pub async fn delete_expired(
    conn: &mut PgConnection,
    retention_hours: f64,
    limit: i64,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "WITH expired AS ( \
           SELECT id FROM outbox \
           WHERE published_at < now() - $1 * interval '1 hour' \
           ORDER BY id LIMIT $2) \
         DELETE FROM outbox o USING expired WHERE o.id = expired.id",
    )
    .bind(retention_hours)
    .bind(limit)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Rollout events on `topic` by cause type and target reason, for reports (`cohort demo`'s summary).
pub async fn rollouts_by_cause(
    pool: &PgPool,
    topic: &str,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT coalesce(e -> 'data' -> 'cause' ->> 'type', ''), \
                coalesce(e -> 'data' -> 'target' ->> 'reason', 'none'), count(*) \
         FROM (SELECT convert_from(payload, 'UTF8')::jsonb AS e FROM outbox WHERE topic = $1) rollouts \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?)
}

/// Messages on `topic` by the value of their `header` (`unknown` without it), for reports.
pub async fn count_by_header(
    pool: &PgPool,
    topic: &str,
    header: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT coalesce(headers ->> $2, 'unknown'), count(*) FROM outbox WHERE topic = $1 \
         GROUP BY 1 ORDER BY 1",
    )
    .bind(topic)
    .bind(header)
    .fetch_all(pool)
    .await?)
}

/// Messages written for `topic`, published or not.
pub async fn count(pool: &PgPool, topic: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
            .bind(topic)
            .fetch_one(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{dead_letter, DeadLetterReason, DecodeError};
    use crate::firmware::{Reason, RolloutTarget, Target};
    use serde_json::json;

    /// The row `message` is stored as, read back: its columns, with `headers` through the text PostgreSQL
    /// returns for the `jsonb` value (which keeps one value per key).
    fn stored(id: i64, message: &Message) -> Unpublished {
        let text = headers_column(message).to_string();
        Unpublished::from(Row {
            id,
            topic: message.topic.clone(),
            message_key: message.key.clone(),
            payload: message.payload.clone(),
            headers: serde_json::from_str(&text).unwrap(),
        })
    }

    #[test]
    fn a_rollout_event_and_a_dead_letter_come_back_from_their_rows_unchanged() {
        let cause = serde_json::value::to_raw_value(&json!({"type": "timer", "at": "t"})).unwrap();
        let rollout = RolloutTarget {
            org_id: "acme",
            device_id: "gw-17",
            sequence: 4,
            previous: &Target::none(),
            target: &Target {
                release: None,
                version: Some("2.4.1".into()),
                reason: Reason::Default,
                group: None,
            },
            release: None,
            cause: &cause,
            at: 1_718_452_800_000,
        }
        .message("rollout-targets");
        let error = DecodeError::new(DeadLetterReason::InvalidEvent, "sequence \"x\"\n");
        let letter = dead_letter("dlq", "in", 3, 99, Some(b"k"), Some(b"\xff{"), &error, 1024);
        for (id, message) in [(1, rollout), (2, letter)] {
            assert!(!message.headers().is_empty());
            assert_eq!(stored(id, &message), Unpublished { id, message });
        }
    }

    #[test]
    fn stored_headers_read_as_strings_null_or_json_text_in_name_order() {
        let read = |headers: Value| {
            Unpublished::from(Row {
                id: 1,
                topic: "t".into(),
                message_key: None,
                payload: Vec::new(),
                headers,
            })
            .message
        };
        let message = read(json!({"z": "last", "empty": null, "number": 7, "list": [1]}));
        assert_eq!(
            message.header_pairs(),
            [
                ("empty", None),
                ("list", Some("[1]")),
                ("number", Some("7")),
                ("z", Some("last")),
            ]
        );
        assert!(read(json!([1, 2])).headers().is_empty());
        assert!(read(Value::Null).headers().is_empty());
    }

    #[test]
    fn the_headers_column_is_an_object_of_strings_and_nulls() {
        let message = Message::new("t", None, Vec::new())
            .with_header("ce_id", Some("1".into()))
            .with_header("empty", None);
        assert_eq!(
            headers_column(&message),
            json!({"ce_id": "1", "empty": null})
        );
        assert_eq!(
            headers_column(&Message::new("t", None, Vec::new())),
            json!({})
        );
    }
}
