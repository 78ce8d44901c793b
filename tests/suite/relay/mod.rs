//! The outbox relay against real PostgreSQL and a Kafka-protocol broker: rows reach their topic exactly as
//! written and are marked published; nothing is lost while the broker is down; a relay crash between
//! delivery and marking only duplicates (same `cohort-outbox-id`); two relays publish each row once; the
//! worker's dead letters reach the dead-letter topic.

mod failover;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cohort::app::Application;
use cohort::config::Config;
use cohort::relay::{Relay, RelayError, RelayStatus, HEADER_OUTBOX_ID};
use cohort::store::groups;
use cohort::store::groups::NewGroup;
use cohort::worker::Status;
use cohort_testkit::{eventually, ConsumedMessage, TestDatabase, TestKafka};
use serde_json::{json, Value};
use sqlx::PgPool;

const LIMIT: Duration = Duration::from_secs(60);

/// A configuration pointing at the test's database and broker, with short waits.
fn config(db: &TestDatabase, kafka: &TestKafka) -> anyhow::Result<Config> {
    let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
    config.database.url = db.url().to_string();
    config.kafka.brokers = kafka.bootstrap_servers();
    config.relay.poll_interval_ms = 50;
    config.worker.retry_initial_backoff_ms = 50;
    config.worker.retry_max_backoff_ms = 500;
    // Deliveries to a broker that is down fail after 3 s instead of 30 s.
    config
        .kafka
        .properties
        .insert("message.timeout.ms".into(), "3000".into());
    config.http.listen = "127.0.0.1:0".parse()?;
    Ok(config)
}

async fn database() -> anyhow::Result<TestDatabase> {
    let db = TestDatabase::new().await?;
    cohort::store::migrate(db.pool()).await?;
    Ok(db)
}

/// Inserts one outbox row as the worker would, returning its id.
async fn insert(
    pool: &PgPool,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    headers: Value,
) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO outbox (topic, message_key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(topic)
    .bind(key.map(str::as_bytes))
    .bind(payload)
    .bind(headers)
    .fetch_one(pool)
    .await?)
}

/// Inserts `count` rows cycling over `keys`, payload `"<key>:<n>"`, returning `(id, key)` in id order.
async fn insert_many(
    pool: &PgPool,
    topic: &str,
    keys: &[&str],
    count: usize,
) -> anyhow::Result<Vec<(i64, String)>> {
    let mut rows = Vec::new();
    for n in 0..count {
        let key = keys[n % keys.len()];
        let id = insert(
            pool,
            topic,
            Some(key),
            format!("{key}:{n}").as_bytes(),
            json!({}),
        )
        .await?;
        rows.push((id, key.to_string()));
    }
    Ok(rows)
}

async fn unpublished(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

/// Waits until no row is unpublished.
async fn all_published(pool: &PgPool) -> anyhow::Result<()> {
    let pool = pool.clone();
    eventually(LIMIT, "every outbox row is published", || {
        let pool = pool.clone();
        async move { Ok((unpublished(&pool).await? == 0).then_some(())) }
    })
    .await
}

fn outbox_id(message: &ConsumedMessage) -> i64 {
    let header = message
        .header(HEADER_OUTBOX_ID)
        .expect("every relayed message carries its outbox id");
    std::str::from_utf8(header)
        .expect("utf-8")
        .parse()
        .expect("a decimal id")
}

/// Keeps the first copy of each outbox id, in the order read (per partition, offset order), and checks
/// that every key's ids then ascend: the consumer's view the relay promises.
fn deduplicate_in_order(messages: &[ConsumedMessage]) -> Vec<ConsumedMessage> {
    let mut by_partition: Vec<&ConsumedMessage> = messages.iter().collect();
    by_partition.sort_by_key(|m| (m.partition, m.offset));
    let mut seen = HashSet::new();
    let unique: Vec<ConsumedMessage> = by_partition
        .into_iter()
        .filter(|m| seen.insert(outbox_id(m)))
        .cloned()
        .collect();
    let mut last: HashMap<Vec<u8>, i64> = HashMap::new();
    for m in &unique {
        if let Some(key) = &m.key {
            let id = outbox_id(m);
            if let Some(previous) = last.insert(key.clone(), id) {
                assert!(
                    previous < id,
                    "key {:?}: id {id} came after {previous}",
                    m.key_str()
                );
            }
        }
    }
    unique
}

/// Kafka's default partitioner (Java's `Utils.murmur2`), which the relay must match.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

fn metric(name_and_labels: &str) -> f64 {
    let rendered = cohort::metrics::install().render();
    rendered
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A relay running in a task, and how to stop it.
struct Running {
    status: Arc<RelayStatus>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(relay: Relay) -> Self {
        let status = relay.status();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            status,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, self.task).await???;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_reach_their_topic_exactly_as_written_and_are_marked_published(
) -> anyhow::Result<()> {
    cohort::metrics::install();
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("rollout-targets");
    let other = kafka.unique_topic("dead-letters");
    kafka.create_topic(&topic, 3).await?;
    kafka.create_topic(&other, 1).await?;
    let pool = db.pool();

    let binary = [0u8, 159, 146, 150, 255];
    let mut expected = Vec::new();
    for (topic, key, payload, headers) in [
        (&topic, Some("dev-1"), &b"one"[..], json!({"kind": "first"})),
        (&topic, Some("dev-2"), &b"two"[..], json!({})),
        (
            &topic,
            Some("dev-1"),
            &binary[..],
            json!({"kind": "binary", "empty": null}),
        ),
        (
            &other,
            Some("dev-1"),
            &b"elsewhere"[..],
            json!({"cohort-dead-letter-reason": "malformed_json"}),
        ),
        (&topic, None, &b"keyless"[..], json!({})),
        (&topic, Some("dev-3"), &b"three"[..], json!({})),
        (&topic, Some("dev-1"), &b"last"[..], json!({"kind": "last"})),
    ] {
        let id = insert(pool, topic, key, payload, headers.clone()).await?;
        expected.push((id, topic.clone(), key, payload.to_vec(), headers));
    }

    let relay = Relay::build(
        &config(&db, &kafka)?,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?;
    assert_eq!(relay.drain_once().await?, expected.len());
    assert!(relay.status().leader.load(Ordering::SeqCst));
    assert_eq!(unpublished(pool).await?, 0, "every row is marked published");
    assert_eq!(relay.drain_once().await?, 0, "nothing is published twice");

    let main = kafka.read_all(&topic).await?;
    let mut read = main.clone();
    read.extend(kafka.read_all(&other).await?);
    assert_eq!(read.len(), expected.len());
    let by_id: HashMap<i64, &ConsumedMessage> = read.iter().map(|m| (outbox_id(m), m)).collect();
    for (id, row_topic, key, payload, headers) in &expected {
        let message = by_id[id];
        assert_eq!(message.key.as_deref(), key.map(str::as_bytes), "row {id}");
        assert_eq!(message.payload.as_deref(), Some(&payload[..]), "row {id}");
        let mut want: Vec<(String, Option<Vec<u8>>)> = headers
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().map(|s| s.as_bytes().to_vec())))
            .collect();
        want.push((HEADER_OUTBOX_ID.into(), Some(id.to_string().into_bytes())));
        assert_eq!(message.headers, want, "row {id}");
        if let (Some(key), true) = (key, row_topic == &topic) {
            assert_eq!(
                message.partition,
                java_partition(key.as_bytes(), 3),
                "row {id}: a key lands where Kafka's default (murmur2) partitioner puts it"
            );
        }
    }
    let mut dev1: Vec<&ConsumedMessage> = main
        .iter()
        .filter(|m| m.key_str() == Some("dev-1"))
        .collect();
    dev1.sort_by_key(|m| m.offset);
    assert_eq!(
        dev1.iter().map(|m| outbox_id(m)).collect::<Vec<_>>(),
        [expected[0].0, expected[2].0, expected[6].0],
        "dev-1 in id order"
    );
    deduplicate_in_order(&main);
    assert_eq!(
        metric(&format!(
            "cohort_relay_messages_relayed_total{{topic=\"{topic}\"}}"
        )),
        6.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_nothing_is_marked_or_lost_and_everything_arrives_once_it_is_back(
) -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::mock(1)?;
    let topic = kafka.unique_topic("rollout-targets");
    kafka.create_topic(&topic, 2).await?;
    let pool = db.pool();
    let rows = insert_many(pool, &topic, &["dev-a", "dev-b", "dev-c"], 9).await?;
    let relay = Relay::build(
        &config(&db, &kafka)?,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?;

    kafka.mock_cluster().unwrap().broker_down(1)?;
    match relay.drain_once().await {
        Err(RelayError::Undelivered {
            delivered,
            failed,
            held_back,
            ..
        }) => {
            assert_eq!(delivered, 0);
            assert_eq!(failed, 3, "one row per key was tried");
            assert_eq!(held_back, 6, "the later rows of each key waited behind it");
        }
        other => panic!("expected undelivered messages, got {other:?}"),
    }
    assert_eq!(unpublished(pool).await?, 9, "nothing marked, nothing lost");

    kafka.mock_cluster().unwrap().broker_up(1)?;
    let relay = &relay;
    eventually(
        LIMIT,
        "the relay publishes once the broker is back",
        || async move {
            match relay.drain_once().await {
                Ok(_) => Ok(Some(())),
                Err(e) if e.is_transient() => Ok(None),
                Err(e) => Err(e.into()),
            }
        },
    )
    .await?;
    assert_eq!(unpublished(pool).await?, 0);
    let unique = deduplicate_in_order(&kafka.read_all(&topic).await?);
    let ids: HashSet<i64> = unique.iter().map(outbox_id).collect();
    assert_eq!(ids, rows.iter().map(|(id, _)| *id).collect());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_wakes_the_relay_before_its_poll_interval() -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("rollout-targets");
    kafka.create_topic(&topic, 1).await?;
    let pool = db.pool();
    let mut config = config(&db, &kafka)?;
    // Far longer than the test's limit: only a notification can make the relay look again.
    config.relay.poll_interval_ms = 3_600_000;
    let relay = Running::start(Relay::build(
        &config,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?);
    let status = relay.status.clone();
    eventually(LIMIT, "the relay has done its first round", || {
        let status = status.clone();
        async move { Ok((status.rounds.load(Ordering::SeqCst) > 0).then_some(())) }
    })
    .await?;
    insert(pool, &topic, Some("dev-1"), b"woken", json!({})).await?;
    // Notify until it is published: the relay starts listening only after its first (empty) round.
    eventually(LIMIT, "the notified row is published", || async move {
        sqlx::query("SELECT pg_notify('cohort_outbox', '')")
            .execute(pool)
            .await?;
        Ok((unpublished(pool).await? == 0).then_some(()))
    })
    .await?;
    relay.stop().await?;
    let read = kafka.read_all(&topic).await?;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].payload_str(), Some("woken"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_older_than_the_retention_period_are_deleted() -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let pool = db.pool();
    let old_published = insert(pool, "t", Some("k"), b"old", json!({})).await?;
    let recent_published = insert(pool, "t", Some("k"), b"recent", json!({})).await?;
    let old_unpublished = insert(pool, "t", Some("k"), b"waiting", json!({})).await?;
    sqlx::query(
        "UPDATE outbox SET created_at = now() - interval '30 hours', \
           published_at = CASE WHEN id = $1 THEN now() - interval '25 hours' END \
         WHERE id IN ($1, $2)",
    )
    .bind(old_published)
    .bind(old_unpublished)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE outbox SET published_at = now() - interval '23 hours' WHERE id = $1")
        .bind(recent_published)
        .execute(pool)
        .await?;

    let mut config = config(&db, &kafka)?;
    config.relay.retention_hours = 24;
    let relay = Relay::build(&config, kafka.bootstrap_servers(), pool.clone())?;
    assert_eq!(relay.expire_published().await?, 1);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await?;
    assert_eq!(
        left,
        [recent_published, old_unpublished],
        "an unpublished row is never deleted, however old"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_dead_letters_reach_the_dead_letter_topic_through_the_embedded_relay(
) -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let input = kafka.unique_topic("device-attribute-changes");
    let dead_letters = format!("{input}.dead-letter");
    kafka.create_topic(&input, 2).await?;
    kafka.create_topic(&dead_letters, 1).await?;
    groups::create_org(db.pool(), "acme", "Acme").await?;
    groups::create_group(
        db.pool(),
        &cohort::rules::Catalogue::default(),
        &NewGroup {
            org_id: "acme".into(),
            name: "online".into(),
            filter: Some(json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]})),
            ..Default::default()
        },
    )
    .await?;
    let mut config = config(&db, &kafka)?;
    config.kafka.input_topic = input.clone();
    config.kafka.dead_letter_topic = dead_letters.clone();
    config.kafka.output_topic = format!("{input}.rollout-targets");
    config.kafka.group_id = format!("cohort-{}", cohort_testkit::random_suffix());
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "3000".into());
    config
        .kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    config.worker.batch_max_wait_ms = 5;
    assert!(
        config.worker.embedded_relay,
        "the worker runs the relay by default"
    );
    let app = Application::build(config).await?;
    let status: Arc<Status> = app.status();
    let relay_status = app.relay_status().expect("an embedded relay");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    eventually(LIMIT, "the worker owns its partitions", || {
        let status = status.clone();
        async move { Ok((status.partitions.load(Ordering::SeqCst) == 2).then_some(())) }
    })
    .await?;

    kafka.produce(&input, "dev-9", "{ this is not json").await?;
    let read = kafka
        .consume_until(&dead_letters, LIMIT, |m| !m.is_empty())
        .await?;
    let letter = &read[0];
    assert_eq!(letter.key_str(), Some("dev-9"));
    let envelope: Value = serde_json::from_slice(letter.payload.as_deref().unwrap_or_default())?;
    assert_eq!(envelope["payload"], "{ this is not json");
    assert_eq!(envelope["reason"], "malformed_json");
    assert_eq!(
        letter.header("cohort-dead-letter-reason"),
        Some(&b"malformed_json"[..])
    );
    assert_eq!(letter.header("cohort-source-topic"), Some(input.as_bytes()));
    let id = outbox_id(letter);
    all_published(db.pool()).await?;
    let stored: i64 = sqlx::query_scalar("SELECT id FROM outbox WHERE published_at IS NOT NULL")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(stored, id);
    assert!(relay_status.leader.load(Ordering::SeqCst));

    let _ = stop.send(());
    tokio::time::timeout(LIMIT, running).await???;
    assert!(
        !relay_status.leader.load(Ordering::SeqCst),
        "the lease is released on shutdown"
    );
    Ok(())
}
