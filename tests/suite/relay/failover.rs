//! The relay through failures: a broker outage while it runs, a crash between delivery and marking, and a
//! standby taking over from the active relay.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use cohort::relay::{Relay, RelayError};
use cohort_testkit::{eventually, ConsumedMessage, TestKafka};

use super::{
    all_published, config, database, deduplicate_in_order, insert_many, outbox_id, unpublished,
    Running, LIMIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_relay_retries_through_a_broker_outage_without_skipping_a_row(
) -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::mock(1)?;
    let topic = kafka.unique_topic("rollout-targets");
    kafka.create_topic(&topic, 2).await?;
    let pool = db.pool();
    let before = insert_many(pool, &topic, &["dev-a", "dev-b"], 4).await?;
    let relay = Running::start(Relay::build(
        &config(&db, &kafka)?,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?);
    all_published(pool).await?;

    kafka.mock_cluster().unwrap().broker_down(1)?;
    let during = insert_many(pool, &topic, &["dev-a", "dev-b", "dev-c"], 6).await?;
    let status = relay.status.clone();
    eventually(LIMIT, "a delivery fails while the broker is down", || {
        let status = status.clone();
        async move { Ok((status.failed.load(Ordering::SeqCst) > 0).then_some(())) }
    })
    .await?;
    assert_eq!(unpublished(pool).await?, 6, "nothing marked while down");

    kafka.mock_cluster().unwrap().broker_up(1)?;
    all_published(pool).await?;
    relay.stop().await?;
    let unique = deduplicate_in_order(&kafka.read_all(&topic).await?);
    let ids: HashSet<i64> = unique.iter().map(outbox_id).collect();
    let expected: HashSet<i64> = before.iter().chain(&during).map(|(id, _)| *id).collect();
    assert_eq!(ids, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_dies_between_delivery_and_marking_only_causes_duplicates_with_the_same_id(
) -> anyhow::Result<()> {
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("rollout-targets");
    kafka.create_topic(&topic, 2).await?;
    let pool = db.pool();
    let rows = insert_many(pool, &topic, &["dev-a", "dev-b", "dev-c"], 8).await?;
    let config = config(&db, &kafka)?;

    // Hold the rows' locks so the relay's UPDATE waits after every delivery succeeded; then kill it there.
    let mut blocker = pool.begin().await?;
    sqlx::query("SELECT id FROM outbox FOR UPDATE")
        .fetch_all(&mut *blocker)
        .await?;
    let first = Relay::build(&config, kafka.bootstrap_servers(), pool.clone())?;
    let task = tokio::spawn(async move { first.drain_once().await });
    kafka.consume_until(&topic, LIMIT, |m| m.len() >= 8).await?;
    let pid: i32 = eventually(LIMIT, "the relay waits to mark its rows", || async move {
        Ok(sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'cohort-relay' AND wait_event_type = 'Lock'",
        )
        .fetch_optional(pool)
        .await?)
    })
    .await?;
    task.abort();
    let _ = task.await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await?;
    assert!(killed);
    blocker.rollback().await?;
    assert_eq!(unpublished(pool).await?, 8, "the dead relay marked nothing");

    // A new relay takes the lease once the dead one's session is gone, and sends everything again.
    let second = Relay::build(&config, kafka.bootstrap_servers(), pool.clone())?;
    let second = &second;
    let resent = eventually(LIMIT, "the new relay publishes", || async move {
        match second.drain_once().await {
            Ok(n) => Ok(Some(n)),
            Err(RelayError::NotLeader) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    assert_eq!(resent, 8);
    assert_eq!(unpublished(pool).await?, 0);

    let read = kafka.read_all(&topic).await?;
    assert_eq!(read.len(), 16, "every row twice");
    let mut copies: HashMap<i64, Vec<&ConsumedMessage>> = HashMap::new();
    for m in &read {
        copies.entry(outbox_id(m)).or_default().push(m);
    }
    for (id, key) in &rows {
        let both = &copies[id];
        assert_eq!(both.len(), 2, "row {id}");
        assert_eq!(both[0].payload, both[1].payload, "row {id}");
        assert_eq!(both[0].key_str(), Some(key.as_str()));
        assert_eq!(both[0].partition, both[1].partition, "row {id}");
    }
    let unique = deduplicate_in_order(&read);
    assert_eq!(
        unique.iter().map(outbox_id).collect::<HashSet<_>>(),
        rows.iter().map(|(id, _)| *id).collect()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_row_once_in_order_and_the_standby_takes_over() -> anyhow::Result<()>
{
    let db = database().await?;
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("rollout-targets");
    kafka.create_topic(&topic, 3).await?;
    let pool = db.pool();
    let config = config(&db, &kafka)?;
    let a = Running::start(Relay::build(
        &config,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?);
    let b = Running::start(Relay::build(
        &config,
        kafka.bootstrap_servers(),
        pool.clone(),
    )?);

    let keys = ["dev-1", "dev-2", "dev-3", "dev-4", "dev-5"];
    let mut rows = Vec::new();
    for _ in 0..10 {
        // Ten transactions of ten rows, as worker batches would write them.
        let mut tx = pool.begin().await?;
        for n in 0..10 {
            let key = keys[n % keys.len()];
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (topic, message_key, payload) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(&topic)
            .bind(key.as_bytes())
            .bind(format!("{key}:{n}").as_bytes())
            .fetch_one(&mut *tx)
            .await?;
            rows.push(id);
        }
        sqlx::query("SELECT pg_notify('cohort_outbox', '')")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    all_published(pool).await?;
    let leaders = [&a, &b]
        .iter()
        .filter(|r| r.status.leader.load(Ordering::SeqCst))
        .count();
    assert_eq!(leaders, 1, "exactly one relay holds the lease");
    let delivered =
        a.status.delivered.load(Ordering::SeqCst) + b.status.delivered.load(Ordering::SeqCst);
    assert_eq!(delivered, 100, "no crash, so no row was sent twice");
    let read = kafka.read_all(&topic).await?;
    assert_eq!(read.len(), 100);
    let unique = deduplicate_in_order(&read);
    assert_eq!(unique.len(), 100);

    // Stop the leader: the standby takes the lease and publishes what comes next.
    let (leader, standby) = if a.status.leader.load(Ordering::SeqCst) {
        (a, b)
    } else {
        (b, a)
    };
    leader.stop().await?;
    let more = insert_many(pool, &topic, &keys, 10).await?;
    all_published(pool).await?;
    assert!(standby.status.leader.load(Ordering::SeqCst));
    let read = kafka.read_all(&topic).await?;
    assert_eq!(read.len(), 110);
    let ids: HashSet<i64> = deduplicate_in_order(&read).iter().map(outbox_id).collect();
    let expected: HashSet<i64> = rows
        .iter()
        .copied()
        .chain(more.iter().map(|(id, _)| *id))
        .collect();
    assert_eq!(ids, expected);
    standby.stop().await
}
