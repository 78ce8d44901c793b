//! What the scenarios produce through faults: attribute-change events (and the odd poison message) over a
//! fixed set of devices, and group edits and firmware releases mixed into the stream.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use cohort::store::firmware::ReleaseTarget;
use cohort::store::{firmware, groups};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::app::{random_attributes, standard_groups, Harness, ORG};
use crate::{eventually, random_suffix, within, Rng};

use super::PATIENCE;

// ------------------------------------------------------------------------------------------------
// Load: events produced through faults
// ------------------------------------------------------------------------------------------------

/// Produces attribute-change events (and the odd poison message) over a fixed set of devices, all of a
/// burst in flight at once, with a producer patient enough to wait out a broker outage. Remembers the
/// last sequence of each device and the last offset of each partition.
pub struct Load {
    producer: FutureProducer,
    topic: String,
    /// Draws the attributes; seeded by the scenario ([`Rng::seeded`]).
    rng: Rng,
    devices: usize,
    /// The last sequence used (one counter over all devices, so each device's sequences ascend).
    sequence: i64,
    /// The last sequence produced per device.
    pub last: BTreeMap<String, i64>,
    /// The highest offset delivered per input partition.
    pub ends: BTreeMap<i32, i64>,
    /// Events produced.
    pub events: usize,
    /// Poison messages produced (each must become a dead letter).
    pub poison: usize,
}

impl Load {
    /// A load over `devices` devices, its attributes drawn from [`Rng::seeded`]`(seed)`.
    pub fn new(h: &Harness, devices: usize, seed: u64) -> anyhow::Result<Self> {
        let producer = h
            .kafka
            .producer_config()
            .set("message.timeout.ms", "90000")
            .set("enable.idempotence", "true")
            .create()
            .context("failed to create the load producer")?;
        Ok(Self {
            producer,
            topic: h.input.clone(),
            rng: Rng::seeded(seed),
            devices,
            sequence: 0,
            last: BTreeMap::new(),
            ends: BTreeMap::new(),
            events: 0,
            poison: 0,
        })
    }

    /// Produces `count` events with random attributes, round-robin over the devices, and waits for every
    /// delivery (through broker outages, up to the producer's 90 s).
    pub async fn burst(&mut self, count: usize) -> anyhow::Result<()> {
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let device = format!("dev-{}", (self.events + i) % self.devices);
            self.sequence += 1;
            let event = json!({
                "eventId": format!("{device}-{}-{}", self.sequence, random_suffix()),
                "orgId": ORG,
                "deviceId": device,
                "sequence": self.sequence,
                "attributes": random_attributes(&mut self.rng),
            });
            self.last.insert(device.clone(), self.sequence);
            messages.push((device, event.to_string()));
        }
        self.events += count;
        self.send(messages).await
    }

    /// Produces one malformed message, which the worker must dead-letter.
    pub async fn poison(&mut self) -> anyhow::Result<()> {
        self.poison += 1;
        let key = format!("dev-{}", self.poison % self.devices);
        self.send(vec![(key, format!("{{ poison {}", self.poison))])
            .await
    }

    async fn send(&mut self, messages: Vec<(String, String)>) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for (key, payload) in &messages {
            let record = FutureRecord::to(&self.topic).key(key).payload(payload);
            // `send` waits for room in the queue (never full at these volumes) and then for delivery.
            deliveries.push(self.producer.send(
                record,
                rdkafka::util::Timeout::After(Duration::from_secs(30)),
            ));
        }
        let results = within(
            Duration::from_secs(120),
            "deliver a burst of events",
            async { Ok(futures_util::future::join_all(deliveries).await) },
        )
        .await?;
        for result in results {
            let delivery = result
                .map_err(|(e, _)| e)
                .context("an event was not delivered")?;
            let end = self.ends.entry(delivery.partition).or_insert(-1);
            *end = (*end).max(delivery.offset);
        }
        Ok(())
    }
}

/// Waits until every input record produced so far is behind its partition's stored position (applied,
/// skipped or dead-lettered: processed), then until every device's last event is applied and every
/// control-log entry is applied.
pub async fn all_processed(h: &Harness, load: &Load) -> anyhow::Result<()> {
    let pool = h.pool().clone();
    let topic = h.input.clone();
    let ends = load.ends.clone();
    eventually(PATIENCE, "every input record is processed", || {
        let (pool, topic, ends) = (pool.clone(), topic.clone(), ends.clone());
        async move {
            let positions: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM partition_positions WHERE topic = $1",
            )
            .bind(&topic)
            .fetch_all(&pool)
            .await?;
            let positions: HashMap<i32, i64> = positions.into_iter().collect();
            Ok(ends
                .iter()
                .all(|(p, end)| positions.get(p).is_some_and(|next| next > end))
                .then_some(()))
        }
    })
    .await?;
    let pool = h.pool().clone();
    let last: Vec<(String, i64)> = load.last.iter().map(|(d, s)| (d.clone(), *s)).collect();
    eventually(PATIENCE, "every device's last event is applied", || {
        let (pool, last) = (pool.clone(), last.clone());
        async move {
            let stored: Vec<(String, i64)> = sqlx::query_as("SELECT id, sequence FROM devices")
                .fetch_all(&pool)
                .await?;
            let stored: HashMap<String, i64> = stored.into_iter().collect();
            Ok(last
                .iter()
                .all(|(d, s)| stored.get(d).is_some_and(|x| x >= s))
                .then_some(()))
        }
    })
    .await?;
    let pool = h.pool().clone();
    eventually(PATIENCE, "every control entry is applied", || {
        let pool = pool.clone();
        async move {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM partition_positions \
                 WHERE control_position < (SELECT COALESCE(max(id), 0) FROM control_log)",
            )
            .fetch_one(&pool)
            .await?;
            Ok((behind == 0).then_some(()))
        }
    })
    .await
}

// ------------------------------------------------------------------------------------------------
// Group edits and firmware releases
// ------------------------------------------------------------------------------------------------

/// The control-plane changes mixed into a stream: filter edits, a new group, a deletion, a pin and an
/// unpin, and firmware releases to groups (so devices moving between groups change their targets and
/// rollout-target events flow). [`Edits::next`] applies the next one; the first is a release.
pub struct Edits {
    groups: Vec<Uuid>,
    extra: Option<Uuid>,
    step: usize,
    /// Edits applied so far.
    pub applied: usize,
}

impl Edits {
    /// Creates the standard groups (see [`standard_groups`]).
    pub async fn new(h: &Harness) -> anyhow::Result<Self> {
        Ok(Self {
            groups: standard_groups(h).await?,
            extra: None,
            step: 0,
            applied: 0,
        })
    }

    /// Applies the next `n` edits.
    pub async fn several(&mut self, h: &Harness, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.next(h).await?;
        }
        Ok(())
    }

    /// Applies the next edit (cycling through releases once the structural edits are done).
    pub async fn next(&mut self, h: &Harness) -> anyhow::Result<()> {
        let pool = h.pool();
        let step = self.step;
        self.step += 1;
        match step {
            0 => release(pool, self.groups[2], "2").await?,
            1 => {
                groups::set_pin(pool, self.groups[1], "dev-3", true, "faults").await?;
            }
            2 => {
                groups::update_filter(
                    pool,
                    &h.catalogue,
                    self.groups[0],
                    &json!({"operator": "AND", "conditions": [
                        {"field": "status", "operator": "equals", "value": "online"},
                        {"field": "osType", "operator": "in", "value": ["linux", "android"]}]}),
                )
                .await?;
            }
            // (The oracle does not model a pin that outlives the stream: unpinned right away.)
            3 => {
                groups::set_pin(pool, self.groups[1], "dev-3", false, "faults").await?;
            }
            4 => {
                let group = h
                    .group(
                        "maintenance",
                        json!({"operator": "AND", "conditions": [
                            {"field": "status", "operator": "equals", "value": "maintenance"}]}),
                    )
                    .await?;
                self.extra = Some(group);
                release(pool, group, "3").await?;
            }
            5 => groups::delete_group(pool, self.groups[0]).await?,
            6 => release(pool, self.groups[1], "4").await?,
            7 => {
                let group = self.extra.context("the maintenance group exists")?;
                groups::update_filter(
                    pool,
                    &h.catalogue,
                    group,
                    &json!({"operator": "OR", "conditions": [
                        {"field": "status", "operator": "equals", "value": "maintenance"},
                        {"field": "uptimeSeconds", "operator": "lessThan", "value": 100}]}),
                )
                .await?;
            }
            n => {
                // Alternate two versions on the prod-or-rtos group: each moves its members' targets.
                let version = if n % 2 == 0 { "5" } else { "6" };
                release(pool, self.groups[2], version).await?;
            }
        }
        self.applied += 1;
        Ok(())
    }
}

async fn release(pool: &PgPool, group: Uuid, version: &str) -> anyhow::Result<()> {
    firmware::release(pool, ORG, ReleaseTarget::Group(group), version, "faults")
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("release {version} to {group}: {e}"))
}
