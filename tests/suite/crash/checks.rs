//! The end-of-run checks: waiting until everything sent has been applied and published, then comparing
//! PostgreSQL and the rollout-target topic with the [`Model`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use cohort::rules::{compile, Attributes, Catalogue};
use cohort_testkit::ConsumedMessage;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::model::Model;

/// Where the input stands: the end (last offset + 1) of each input partition that received messages.
pub type Ends = BTreeMap<i32, i64>;

/// Input messages produced but not yet covered by a stored partition position.
pub async fn backlog(pool: &PgPool, topic: &str, ends: &Ends) -> anyhow::Result<i64> {
    let positions: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM partition_positions WHERE topic = $1")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    let positions: HashMap<i32, i64> = positions.into_iter().collect();
    Ok(ends
        .iter()
        .map(|(partition, end)| (end - positions.get(partition).copied().unwrap_or(0)).max(0))
        .sum())
}

/// What is still outstanding: input messages, control-log entries not applied by some partition, outbox
/// rows not published. All zero means the run has settled.
#[derive(Debug, PartialEq, Eq)]
pub struct Outstanding {
    pub input: i64,
    pub control: i64,
    pub outbox: i64,
}

impl Outstanding {
    pub fn settled(&self) -> bool {
        self.input == 0 && self.control == 0 && self.outbox == 0
    }
}

pub async fn outstanding(
    pool: &PgPool,
    topic: &str,
    partitions: i32,
    ends: &Ends,
) -> anyhow::Result<Outstanding> {
    let input = backlog(pool, topic, ends).await?;
    // A partition with no position row yet has applied nothing.
    let (rows, behind): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE control_position < (SELECT COALESCE(max(id), 0) FROM control_log)) \
         FROM partition_positions WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(pool)
    .await?;
    let control = behind + (i64::from(partitions) - rows).max(0);
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await?;
    Ok(Outstanding {
        input,
        control,
        outbox,
    })
}

/// Attributes in the form the worker stores them (numbers as floats, enums and datetimes normalised), so
/// the fold and the stored row compare equal when they mean the same.
fn canonical(
    attributes: &Map<String, Value>,
    catalogue: &Catalogue,
) -> anyhow::Result<Map<String, Value>> {
    Ok(Attributes::from_json(attributes, catalogue)
        .map_err(|e| anyhow::anyhow!("attributes do not parse: {e:?}"))?
        .to_json(catalogue))
}

/// (a, part 1) Every device's stored attributes, sequence, development flag and lock equal the fold of the
/// events sent (and the API settings made); no device exists that was never sent.
pub async fn check_devices(
    pool: &PgPool,
    model: &Model,
    catalogue: &Catalogue,
) -> anyhow::Result<usize> {
    type Row = (String, Value, i64, bool, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, attributes, sequence, is_development, firmware_lock FROM devices WHERE org_id = $1",
    )
    .bind(super::model::ORG)
    .fetch_all(pool)
    .await?;
    let mut stored: HashMap<String, Row> = rows.into_iter().map(|r| (r.0.clone(), r)).collect();
    let mut differences = Vec::new();
    let mut checked = 0;
    for (index, device) in model.devices.iter().enumerate() {
        let id = Model::device_id(index);
        let Some((_, attributes, sequence, development, lock)) = stored.remove(&id) else {
            if device.applied > 0 {
                differences.push(format!(
                    "{id}: not stored, expected sequence {}",
                    device.applied
                ));
            }
            continue;
        };
        checked += 1;
        let attributes = attributes
            .as_object()
            .with_context(|| format!("{id}: stored attributes are not an object"))?;
        let expected = canonical(&device.attributes, catalogue)?;
        let actual = canonical(attributes, catalogue)?;
        if sequence != device.applied || expected != actual {
            differences.push(format!(
                "{id}: stored sequence {sequence} {actual:?}, the fold gives sequence {} {expected:?}",
                device.applied
            ));
        }
        // Devices whose settings nobody changes must still have the defaults.
        if (development, lock.as_deref()) != (device.development, device.lock.as_deref()) {
            differences.push(format!(
                "{id} ({:?}): stored development={development} lock={lock:?}, expected development={} lock={:?}",
                Model::settings_by(index),
                device.development,
                device.lock
            ));
        }
    }
    differences.extend(
        stored
            .keys()
            .map(|id| format!("{id}: stored but never sent")),
    );
    anyhow::ensure!(
        differences.is_empty(),
        "{} device(s) differ from the fold of the events sent, e.g.:\n{}",
        differences.len(),
        differences
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(checked)
}

/// (a, part 2) Memberships as the model says, with pins: a live dynamic group holds exactly the devices
/// whose folded attributes match its filter plus its pinned devices, pinned exactly where the model pinned;
/// a static group exactly the members the API reported adding and not removing; a deleted group nothing.
pub async fn check_memberships(
    pool: &PgPool,
    model: &Model,
    catalogue: &Catalogue,
    now: i64,
) -> anyhow::Result<usize> {
    let groups: Vec<(Uuid, String, Option<Value>, bool)> = sqlx::query_as(
        "SELECT id, type, filter_conditions, deleted_at IS NOT NULL FROM device_groups WHERE org_id = $1",
    )
    .bind(super::model::ORG)
    .fetch_all(pool)
    .await?;
    let live_dynamic: BTreeSet<Uuid> = groups
        .iter()
        .filter(|(_, kind, _, deleted)| kind == "dynamic" && !deleted)
        .map(|(id, ..)| *id)
        .collect();
    anyhow::ensure!(
        live_dynamic == model.dynamic,
        "live dynamic groups {live_dynamic:?} differ from the model's {:?}",
        model.dynamic
    );
    let devices: Vec<(String, Attributes)> = model
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.applied > 0)
        .map(|(index, d)| {
            let attributes = Attributes::from_json(&d.attributes, catalogue)
                .map_err(|e| anyhow::anyhow!("the fold does not parse: {e:?}"))?;
            Ok((Model::device_id(index), attributes))
        })
        .collect::<anyhow::Result<_>>()?;
    // (group, device) → pinned
    let mut expected: BTreeMap<(Uuid, String), bool> = BTreeMap::new();
    for (group, _, filter, deleted) in &groups {
        if *deleted {
            continue;
        }
        match filter {
            Some(filter) => {
                let compiled = compile(filter, catalogue).map_err(|e| anyhow::anyhow!("{e:?}"))?;
                for (id, attributes) in &devices {
                    if compiled.evaluate(attributes, now) {
                        expected.insert((*group, id.clone()), false);
                    }
                }
            }
            None => {
                for id in model.statics.get(group).into_iter().flatten() {
                    expected.insert((*group, id.clone()), false);
                }
            }
        }
    }
    for pin in &model.pins {
        expected.insert(pin.clone(), true);
    }
    let rows: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT m.group_id, m.device_id, m.is_pinned FROM device_group_memberships m \
         JOIN device_groups g ON g.id = m.group_id WHERE g.org_id = $1",
    )
    .bind(super::model::ORG)
    .fetch_all(pool)
    .await?;
    let stored: BTreeMap<(Uuid, String), bool> =
        rows.into_iter().map(|(g, d, p)| ((g, d), p)).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, _)| !stored.contains_key(*k))
        .collect();
    let extra: Vec<_> = stored
        .iter()
        .filter(|(k, _)| !expected.contains_key(*k))
        .collect();
    let pin_differs: Vec<_> = expected
        .iter()
        .filter(|(k, pinned)| stored.get(*k).is_some_and(|p| p != *pinned))
        .collect();
    anyhow::ensure!(
        missing.is_empty() && extra.is_empty() && pin_differs.is_empty(),
        "memberships differ from the model: {} missing {:?}, {} extra {:?}, {} with the wrong pin {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>(),
        pin_differs.len(),
        pin_differs.iter().take(10).collect::<Vec<_>>()
    );
    Ok(stored.len())
}

/// The live releases (those of live groups, and the default) are the ones the model released and did not
/// withdraw, so the targets the oracle resolves from them rest on what the test did.
pub async fn check_releases(pool: &PgPool, model: &Model) -> anyhow::Result<usize> {
    let live: BTreeSet<Uuid> = sqlx::query_scalar(
        "SELECT r.id FROM firmware_releases r LEFT JOIN device_groups g ON g.id = r.group_id \
         WHERE r.withdrawn_at IS NULL AND (r.group_id IS NULL OR g.deleted_at IS NULL)",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let expected: BTreeSet<Uuid> = model.releases.values().copied().collect();
    anyhow::ensure!(
        live == expected,
        "live releases {live:?} differ from the model's {expected:?}"
    );
    Ok(live.len())
}

/// Every release's progress counts equal a recount of its devices' standings, and every device's standing
/// is what it reports (reconcile's check, which also finds no other drift); returns how many releases
/// were halted by a threshold.
pub async fn check_progress(pool: &PgPool, catalogue: &Catalogue) -> anyhow::Result<i64> {
    let drift = cohort::store::firmware::progress::drift(pool, None).await?;
    anyhow::ensure!(drift.is_empty(), "release progress drifted: {drift:?}");
    let options = cohort::reconcile::Options {
        org: None,
        examples: 10,
        settle: std::time::Duration::from_millis(100),
    };
    let report = cohort::reconcile::check(pool, catalogue, &options).await?;
    anyhow::ensure!(
        !report.has_drift(),
        "{}",
        cohort::reconcile::render(&report)
    );
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM firmware_releases WHERE halted ->> 'by' = 'threshold'",
    )
    .fetch_one(pool)
    .await?)
}

/// (b) No two membership-log rows with the same group, device, action and cause; returns the row count.
pub async fn check_log(pool: &PgPool) -> anyhow::Result<i64> {
    let duplicates: Vec<(Uuid, String, String, Value, i64)> = sqlx::query_as(
        "SELECT group_id, device_id, action, cause, count(*) FROM group_membership_log \
         GROUP BY group_id, device_id, action, cause HAVING count(*) > 1 LIMIT 20",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        duplicates.is_empty(),
        "duplicate membership-log rows (group, device, action, cause, copies): {duplicates:?}"
    );
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
            .fetch_one(pool)
            .await?,
    )
}

/// One rollout-target event, as written to the outbox or read from the topic.
#[derive(Debug, Clone, PartialEq)]
struct Rollout {
    id: String,
    device: String,
    sequence: i64,
    previous: Option<String>,
    target: Option<String>,
    payload: Vec<u8>,
}

fn parse_rollout(payload: &[u8]) -> anyhow::Result<Rollout> {
    let event: Value = serde_json::from_slice(payload).context("a rollout event is not JSON")?;
    let text = |v: &Value| v.as_str().map(str::to_owned);
    Ok(Rollout {
        id: text(&event["id"]).context("a rollout event without an id")?,
        device: text(&event["subject"]).context("a rollout event without a subject")?,
        sequence: event["data"]["sequence"]
            .as_i64()
            .context("a rollout event without data.sequence")?,
        previous: text(&event["data"]["previous"]["version"]),
        target: text(&event["data"]["target"]["version"]),
        payload: payload.to_vec(),
    })
}

/// Figures from [`check_rollouts`].
#[derive(Debug)]
pub struct RolloutFigures {
    /// Distinct events (= resolved-version changes recorded in PostgreSQL).
    pub events: usize,
    /// Messages on the topic, copies included.
    pub messages: usize,
    /// Devices with at least one event.
    pub devices: usize,
}

/// (c) The resolved-firmware changes recorded in PostgreSQL — the rollout rows of the outbox, written in
/// the same transaction as each change and numbered per device by `devices.target_sequence` — form, for
/// every device, an unbroken chain `1..=target_sequence` whose versions link up (each event's previous
/// version is the one before's target, each one a real change) and end at the stored target. `messages`,
/// the topic read from offset 0, de-duplicated by event id, holds exactly those events (byte for byte: none
/// missing, none extra), and per device their first copies come in sequence order.
pub async fn check_rollouts(
    pool: &PgPool,
    topic: &str,
    messages: &[ConsumedMessage],
) -> anyhow::Result<RolloutFigures> {
    let rows: Vec<(Option<Vec<u8>>, Vec<u8>)> =
        sqlx::query_as("SELECT message_key, payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    let mut recorded: BTreeMap<String, Vec<Rollout>> = BTreeMap::new();
    for (key, payload) in &rows {
        let event = parse_rollout(payload)?;
        anyhow::ensure!(
            key.as_deref() == Some(event.device.as_bytes()),
            "outbox row of {} has key {key:?}",
            event.device
        );
        recorded
            .entry(event.device.clone())
            .or_default()
            .push(event);
    }
    let targets: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, target_version, target_sequence FROM devices")
            .fetch_all(pool)
            .await?;
    let mut problems = Vec::new();
    for (device, version, target_sequence) in &targets {
        let events = recorded.get(device).map(Vec::as_slice).unwrap_or(&[]);
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
        let expected: Vec<i64> = (1..=*target_sequence).collect();
        if sequences != expected {
            problems.push(format!(
                "{device}: outbox sequences {sequences:?}, target_sequence {target_sequence}"
            ));
            continue;
        }
        let mut before: Option<String> = None;
        for event in events {
            let id = cohort::firmware::event_id(device, event.sequence).to_string();
            if event.id != id || event.previous != before || event.previous == event.target {
                problems.push(format!(
                    "{device}: event {} ({}) goes {:?} -> {:?} after {before:?} (id expected {id})",
                    event.sequence, event.id, event.previous, event.target
                ));
            }
            before = event.target.clone();
        }
        if before != *version {
            problems.push(format!(
                "{device}: the last event targets {before:?}, the device stores {version:?}"
            ));
        }
    }
    let devices: BTreeSet<&String> = targets.iter().map(|(d, ..)| d).collect();
    problems.extend(
        recorded
            .keys()
            .filter(|d| !devices.contains(d))
            .map(|d| format!("{d}: rollout events for a device that does not exist")),
    );
    anyhow::ensure!(
        problems.is_empty(),
        "{} problem(s) with the recorded rollout events, e.g.:\n{}",
        problems.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    let by_id: HashMap<&str, &Rollout> = recorded
        .values()
        .flatten()
        .map(|e| (e.id.as_str(), e))
        .collect();
    let mut first: HashMap<String, Rollout> = HashMap::new();
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for message in messages {
        let payload = message
            .payload
            .as_deref()
            .context("a tombstone on the rollout topic")?;
        let event = parse_rollout(payload)?;
        anyhow::ensure!(
            message.header("ce_id") == Some(event.id.as_bytes())
                && message.key.as_deref() == Some(event.device.as_bytes()),
            "message at {}/{} has header ce_id {:?} and key {:?} for event {} of {}",
            message.partition,
            message.offset,
            message.header("ce_id").map(String::from_utf8_lossy),
            message.key_str(),
            event.id,
            event.device
        );
        if let Some(seen) = first.get(&event.id) {
            anyhow::ensure!(
                seen.payload == event.payload,
                "two copies of event {} differ",
                event.id
            );
            continue;
        }
        let Some(recorded) = by_id.get(event.id.as_str()) else {
            anyhow::bail!(
                "event {} (sequence {} of {}) is on the topic but recorded nowhere in PostgreSQL",
                event.id,
                event.sequence,
                event.device
            );
        };
        anyhow::ensure!(
            recorded.payload == event.payload,
            "event {} on the topic differs from its outbox row",
            event.id
        );
        order
            .entry(event.device.clone())
            .or_default()
            .push(event.sequence);
        first.insert(event.id.clone(), event);
    }
    let missing: Vec<&&str> = by_id
        .keys()
        .filter(|id| !first.contains_key(**id))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "{} recorded rollout event(s) never reached the topic, e.g. {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    for (device, sequences) in &order {
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        anyhow::ensure!(
            sequences == &expected,
            "{device}: rollout events on the topic in the order {sequences:?}"
        );
    }
    Ok(RolloutFigures {
        events: by_id.len(),
        messages: messages.len(),
        devices: order.len(),
    })
}

/// No input was dead-lettered: every event the test sends is valid.
pub async fn check_no_dead_letters(pool: &PgPool, topic: &str) -> anyhow::Result<()> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
        .bind(topic)
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(count == 0, "{count} valid events were dead-lettered");
    Ok(())
}

/// How long the end-of-run wait may take before the run counts as stuck.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(300);
