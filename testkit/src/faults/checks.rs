//! The checks every scenario ends with: the position audit (every `partition_positions` write, in lock
//! order), the oracle, every input applied once, the topics holding exactly the outbox, and Kafka's
//! advisory offsets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::Harness;
use crate::{blocking, eventually};

use super::load::{all_processed, Load};
use super::PATIENCE;

// ------------------------------------------------------------------------------------------------
// The position audit
// ------------------------------------------------------------------------------------------------

/// Records every update of `partition_positions` (in the updating transaction, so only committed ones
/// stay) in `fault_position_audit`, in the order they took the row's lock.
pub async fn install_position_audit(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE fault_position_audit (
             id bigserial PRIMARY KEY, topic text NOT NULL, partition integer NOT NULL,
             old_epoch bigint NOT NULL, new_epoch bigint NOT NULL,
             old_next bigint NOT NULL, new_next bigint NOT NULL,
             old_control bigint NOT NULL, new_control bigint NOT NULL);
         CREATE FUNCTION fault_audit_position() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO fault_position_audit
                 (topic, partition, old_epoch, new_epoch, old_next, new_next, old_control, new_control)
             VALUES (NEW.topic, NEW.partition, OLD.epoch, NEW.epoch, OLD.next_offset, NEW.next_offset,
                     OLD.control_position, NEW.control_position);
             RETURN NEW;
         END $$;
         CREATE TRIGGER fault_audit_position AFTER UPDATE ON partition_positions
             FOR EACH ROW EXECUTE FUNCTION fault_audit_position();",
    )
    .execute(pool)
    .await
    .context("failed to install the position audit")?;
    Ok(())
}

/// What the position audit saw.
#[derive(Debug, Default)]
pub struct PositionAudit {
    /// Claims after a partition's first (an epoch bump: a worker took the partition again; the first claim
    /// inserts the row, which the update trigger does not see).
    pub claims: usize,
    /// Batch commits (a position write).
    pub writes: usize,
    /// The highest epoch of any partition.
    pub max_epoch: i64,
}

/// Checks the audit trail: per partition, in lock order, a claim bumps the epoch by one and moves no
/// position; a batch writes under the current epoch only — never under a stale one, which would show
/// as a write after a later claim with the older epoch — and never moves a position backwards.
pub async fn check_positions(h: &Harness) -> anyhow::Result<PositionAudit> {
    type Row = (String, i32, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT topic, partition, old_epoch, new_epoch, old_next, new_next, old_control, new_control \
         FROM fault_position_audit ORDER BY id",
    )
    .fetch_all(h.pool())
    .await?;
    let mut audit = PositionAudit::default();
    let mut epochs: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, partition, old_epoch, new_epoch, old_next, new_next, old_ctl, new_ctl) in rows {
        let seen = epochs.entry((topic, partition)).or_insert(old_epoch);
        anyhow::ensure!(
            old_epoch == *seen,
            "partition {partition}: an update found epoch {old_epoch} after epoch {seen} had been set"
        );
        if new_epoch != old_epoch {
            anyhow::ensure!(
                new_epoch == old_epoch + 1 && new_next == old_next && new_ctl == old_ctl,
                "partition {partition}: a claim went {old_epoch}->{new_epoch} and moved the position \
                 {old_next}->{new_next}, {old_ctl}->{new_ctl}"
            );
            audit.claims += 1;
        } else {
            anyhow::ensure!(
                new_next >= old_next && new_ctl >= old_ctl,
                "partition {partition} epoch {old_epoch}: a batch moved the position backwards: \
                 offset {old_next}->{new_next}, control {old_ctl}->{new_ctl}"
            );
            audit.writes += 1;
        }
        *seen = new_epoch;
        audit.max_epoch = audit.max_epoch.max(new_epoch);
    }
    // The audit ends where the table is.
    let current: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, epoch FROM partition_positions WHERE topic = $1")
            .bind(&h.input)
            .fetch_all(h.pool())
            .await?;
    for (partition, epoch) in current {
        if let Some(seen) = epochs.get(&(h.input.clone(), partition)) {
            anyhow::ensure!(
                *seen == epoch,
                "partition {partition}: the audit ends at epoch {seen}, the table is at {epoch}"
            );
        }
    }
    Ok(audit)
}

// ------------------------------------------------------------------------------------------------
// The checks every scenario ends with
// ------------------------------------------------------------------------------------------------

/// What a scenario's checks counted.
#[derive(Debug, Default)]
pub struct Figures {
    pub events: usize,
    pub poison: usize,
    pub rollouts: usize,
    pub rollout_copies: usize,
    pub dead_letters: usize,
    pub log_rows: i64,
    /// Relay deliveries to this harness's output and dead-letter topics that failed (and were retried).
    pub relay_failures: u64,
    pub positions: PositionAudit,
}

/// Waits for everything produced to be processed, then checks: the oracle (memberships, log alternation,
/// firmware targets), no input record applied twice, the rollout-target and dead-letter topics against
/// the outbox, and the position audit.
pub async fn settle_and_check(h: &Harness, load: &Load) -> anyhow::Result<Figures> {
    all_processed(h, load).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    check_applied_once(h).await?;
    let mut figures = check_published(h).await?;
    anyhow::ensure!(
        figures.dead_letters >= load.poison,
        "{} poison messages, {} dead letters",
        load.poison,
        figures.dead_letters
    );
    figures.events = load.events;
    figures.poison = load.poison;
    figures.log_rows = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    figures.positions = check_positions(h).await?;
    figures.relay_failures = [&h.config.kafka.output_topic, &h.dead_letters]
        .iter()
        .map(|t| {
            crate::app::metric(&format!(
                "cohort_relay_publish_failures_total{{topic=\"{t}\"}}"
            ))
        })
        .sum::<f64>() as u64;
    Ok(figures)
}

/// No input record changed a membership twice: log rows caused by events are unique per (group, device,
/// partition, offset).
pub async fn check_applied_once(h: &Harness) -> anyhow::Result<()> {
    let twice: Vec<(Uuid, String, Value, i64)> = sqlx::query_as(
        "SELECT group_id, device_id, cause, count(*) FROM group_membership_log \
         WHERE cause->>'type' = 'event' GROUP BY group_id, device_id, cause HAVING count(*) > 1",
    )
    .fetch_all(h.pool())
    .await?;
    anyhow::ensure!(
        twice.is_empty(),
        "input records applied more than once: {twice:?}"
    );
    Ok(())
}

/// Waits until the relay has published every outbox row, then reads the rollout-target and dead-letter
/// topics and checks, after de-duplication by `cohort-outbox-id`: exactly the outbox's rows are there,
/// with their keys and payloads; each device's rollout events are numbered 1, 2, 3… in partition order
/// with no gap, and the last one is the target PostgreSQL stores for the device.
pub async fn check_published(h: &Harness) -> anyhow::Result<Figures> {
    let pool = h.pool().clone();
    eventually(PATIENCE, "the relay publishes every outbox row", || {
        let pool = pool.clone();
        async move {
            let unpublished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await?;
            Ok((unpublished == 0).then_some(()))
        }
    })
    .await?;
    type Row = (i64, String, Option<Vec<u8>>, Vec<u8>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, topic, message_key, payload FROM outbox ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    let mut figures = Figures::default();
    let output = h.config.kafka.output_topic.clone();
    for topic in [output.clone(), h.dead_letters.clone()] {
        let expected: BTreeMap<i64, (Option<Vec<u8>>, Vec<u8>)> = rows
            .iter()
            .filter(|(_, t, ..)| *t == topic)
            .map(|(id, _, key, payload)| (*id, (key.clone(), payload.clone())))
            .collect();
        let wanted: BTreeSet<i64> = expected.keys().copied().collect();
        let mut messages = h
            .kafka
            .consume_until(&topic, PATIENCE, move |messages| {
                let seen: BTreeSet<i64> = messages.iter().filter_map(outbox_id).collect();
                wanted.is_subset(&seen)
            })
            .await
            .with_context(|| format!("reading {topic}"))?;
        messages.sort_by_key(|m| (m.partition, m.offset));
        let mut first = BTreeSet::new();
        let mut by_device: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for message in &messages {
            let id = outbox_id(message).context("a relayed message without its outbox id")?;
            let (key, payload) = expected.get(&id).with_context(|| {
                format!("{topic}: message with outbox id {id} is in no outbox row")
            })?;
            anyhow::ensure!(
                message.key.as_ref() == key.as_ref() && message.payload.as_ref() == Some(payload),
                "{topic}: outbox row {id} was published with another key or payload"
            );
            if !first.insert(id) || topic != output {
                continue;
            }
            let event: Value = serde_json::from_slice(payload)?;
            let device = event["subject"].as_str().unwrap_or_default().to_string();
            by_device.entry(device).or_default().push(event);
        }
        anyhow::ensure!(first.len() == expected.len(), "{topic}: rows missing");
        if topic == output {
            figures.rollouts = first.len();
            figures.rollout_copies = messages.len();
            check_rollouts(h, &by_device).await?;
        } else {
            figures.dead_letters = first.len();
        }
    }
    Ok(figures)
}

fn outbox_id(message: &crate::ConsumedMessage) -> Option<i64> {
    std::str::from_utf8(message.header(cohort::relay::HEADER_OUTBOX_ID)?)
        .ok()?
        .parse()
        .ok()
}

/// Each device's de-duplicated rollout events are numbered 1..=n in order, and the last names the stored
/// target (and n is the stored target sequence).
async fn check_rollouts(
    h: &Harness,
    by_device: &BTreeMap<String, Vec<Value>>,
) -> anyhow::Result<()> {
    let stored: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, target_version, target_sequence FROM devices")
            .fetch_all(h.pool())
            .await?;
    for (device, version, sequence) in stored {
        let events = by_device.get(&device).map(Vec::as_slice).unwrap_or(&[]);
        let numbers: Vec<i64> = events
            .iter()
            .map(|e| e["data"]["sequence"].as_i64().unwrap_or(-1))
            .collect();
        let expected: Vec<i64> = (1..=sequence).collect();
        anyhow::ensure!(
            numbers == expected,
            "device {device}: rollout events numbered {numbers:?} on the topic, {sequence} stored"
        );
        if let Some(last) = events.last() {
            let published = last["data"]["target"]["version"].as_str();
            anyhow::ensure!(
                published == version.as_deref(),
                "device {device}: the last rollout event targets {published:?}, PostgreSQL {version:?}"
            );
        } else {
            anyhow::ensure!(
                version.is_none(),
                "device {device} targets {version:?} with no rollout event"
            );
        }
    }
    let known: BTreeSet<&String> = by_device.keys().collect();
    let devices: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM devices")
        .fetch_all(h.pool())
        .await?
        .into_iter()
        .collect();
    for device in known {
        anyhow::ensure!(
            devices.contains(device),
            "rollout events for {device}, which is not stored"
        );
    }
    Ok(())
}

/// Kafka's committed offsets for the worker's group (advisory, for lag dashboards) equal the positions
/// PostgreSQL holds, eventually. Read with an OffsetFetch that does not join the group.
pub async fn advisory_offsets_match(h: &Harness) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let config = h.kafka.consumer_config(&h.config.kafka.group_id);
    let topic = h.input.clone();
    let pool = h.pool().clone();
    let positions: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM partition_positions WHERE topic = $1 ORDER BY partition",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await?;
    let wanted: BTreeMap<i32, i64> = positions.into_iter().collect();
    let last = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let seen = last.clone();
    let result = eventually(
        Duration::from_secs(30),
        "kafka's committed offsets reach the stored positions",
        || {
            let (config, topic, wanted, seen) =
                (config.clone(), topic.clone(), wanted.clone(), seen.clone());
            async move {
                let partitions: Vec<i32> = wanted.keys().copied().collect();
                let committed = blocking(
                    Duration::from_secs(20),
                    "fetch committed offsets",
                    move || {
                        let consumer: BaseConsumer = config.create()?;
                        let mut tpl = TopicPartitionList::new();
                        for partition in &partitions {
                            tpl.add_partition(&topic, *partition);
                        }
                        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
                        Ok(committed
                            .elements()
                            .iter()
                            .map(|e| {
                                let offset = match e.offset() {
                                    Offset::Offset(o) => o,
                                    _ => -1,
                                };
                                (e.partition(), offset)
                            })
                            .collect::<BTreeMap<i32, i64>>())
                    },
                )
                .await?;
                let done = committed == wanted;
                if let Ok(mut s) = seen.lock() {
                    *s = committed;
                }
                Ok(done.then_some(()))
            }
        },
    )
    .await;
    result.with_context(|| {
        format!(
            "stored positions {wanted:?}, last committed in kafka {:?}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}
