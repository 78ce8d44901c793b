//! The worker through what breaks a stream: killed mid-stream and restarted, a rebalance between two
//! workers, the database going away, two batches in flight conflicting on a device, a device arriving on
//! another partition (also while its old partition's batch is in flight).

use std::sync::Arc;
use std::time::Duration;

use cohort_testkit::app::{all_applied, metric, standard_groups, stream, Harness, LIMIT, ORG};
use cohort_testkit::{eventually, Rng};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_ends_in_the_oracle_state() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let mut rng = Rng::seeded(0x9E37_79B9_7F4A_7C15);
    stream(&mut h, 40, 300, &mut rng).await?;
    // Kill while it is still working through the stream, then start a fresh worker in the same group.
    h.kill_first();
    let last = stream(&mut h, 40, 300, &mut rng).await?;
    h.add_worker().await?;
    h.all_partitions_owned(2).await?;
    all_applied(&h, &last).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_with_a_rebalance_mid_stream_reach_the_same_result() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let mut rng = Rng::seeded(0xDEAD_BEEF_1234_5678);
    stream(&mut h, 50, 300, &mut rng).await?;
    h.add_worker().await?;
    let last = stream(&mut h, 50, 300, &mut rng).await?;
    h.all_partitions_owned(2).await?;
    all_applied(&h, &last).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    // Each partition's position was written under the epoch of its current owner only (older epochs were
    // fenced); both partitions have been claimed more than once.
    let epochs: Vec<i64> =
        sqlx::query_scalar("SELECT epoch FROM partition_positions ORDER BY partition")
            .fetch_all(h.pool())
            .await?;
    assert!(
        epochs.iter().any(|e| *e >= 2),
        "a rebalance happened: {epochs:?}"
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_mid_run_loses_nothing() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let mut rng = Rng::seeded(0x1234_5678_9ABC_DEF0);
    stream(&mut h, 30, 100, &mut rng).await?;
    // Refuse new connections to this test's database and cut the existing ones, for a while.
    let admin = sqlx::PgPool::connect(h.db.admin_url()).await?;
    let name = h.db.name().to_string();
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&admin)
    .await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(&admin)
        .await?;
    let last = stream(&mut h, 30, 100, &mut rng).await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage lasts a while (not a synchronisation)
    sqlx::query(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .execute(&admin)
        .await?;
    all_applied(&h, &last).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

/// A partition that is behind has its next batch computed while the one before it commits, on the state that
/// one leaves (batches of two events here, so that two events make the batch behind full). When
/// that commit meets a device conflict, both batches are put back and recomputed in order: each change is
/// logged once, and a device only the batch behind touched is written too (had it stayed as that batch left
/// it, its event would look like a duplicate on recomputing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_conflict_puts_back_both_batches_in_flight_and_recomputes_them(
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let mut h = Harness::start_with(Arc::new(cohort::worker::SystemClock), |config| {
        config.worker.batch_max_events = 2;
    })
    .await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    // dev-1, and a device on the same partition (keys hash to partitions deterministically).
    let candidates: Vec<String> = (2..18).map(|i| format!("dev-{i}")).collect();
    for id in std::iter::once("dev-1").chain(candidates.iter().map(String::as_str)) {
        let sequence = h.send(id, json!({"status": "online"})).await?;
        h.applied(id, sequence).await?;
    }
    let partition_of = |id: &str| {
        sqlx::query_scalar::<_, i32>("SELECT partition FROM devices WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(h.pool())
    };
    let home = partition_of("dev-1").await?;
    let mut other = None;
    for id in &candidates {
        if partition_of(id).await? == home {
            other = Some(id.clone());
            break;
        }
    }
    let other = other.expect("one of 16 devices shares dev-1's partition");
    // Hold dev-1's row: the next batch's commit waits for it.
    let mut blocker = h.pool().begin().await?;
    sqlx::query("SELECT 1 FROM devices WHERE id = 'dev-1' FOR UPDATE")
        .execute(&mut *blocker)
        .await?;
    // Each of those events came alone to a partition with nothing in flight: caught up.
    assert!(h.status.batches_caught_up.load(SeqCst) > 0);
    let batches = h.status.batches.load(SeqCst);
    let caught_up = h.status.batches_caught_up.load(SeqCst);
    let pipelined = h.status.batches_pipelined.load(SeqCst);
    h.send("dev-1", json!({"status": "offline"})).await?;
    super::a_batch_waits_on_a_lock(&h, "the batch's commit waits for the row").await?;
    // The batch behind it, full with these two.
    let other_off = h.send(&other, json!({"status": "offline"})).await?;
    let back = h.send("dev-1", json!({"status": "online"})).await?;
    let status = h.status.clone();
    eventually(LIMIT, "the next batch is computed behind it", || {
        let status = status.clone();
        async move { Ok((status.batches_pipelined.load(SeqCst) > pipelined).then_some(())) }
    })
    .await?;
    // The row changes under both: the waiting batch finds another version.
    sqlx::query("UPDATE devices SET version = version + 1 WHERE id = 'dev-1'")
        .execute(&mut *blocker)
        .await?;
    blocker.commit().await?;
    h.applied("dev-1", back).await?;
    h.applied(&other, other_off).await?;
    // The batch computed behind another (and full) was not a caught-up partition's.
    let committed = h.status.batches.load(SeqCst) - batches;
    assert!(
        committed > h.status.batches_caught_up.load(SeqCst) - caught_up,
        "{committed} batches committed, all counted as caught up"
    );
    let log = h.log(online).await?;
    let of = |device: &str| -> Vec<(String, String)> {
        log.iter()
            .filter(|(d, _, _)| d == device)
            .map(|(_, action, reason)| (action.clone(), reason.clone()))
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, r)| (a.to_string(), r.to_string()))
            .collect()
    };
    assert_eq!(
        of("dev-1"),
        pairs(&[
            ("added", "filter_match"),
            ("removed", "filter_unmatch"),
            ("added", "filter_match")
        ])
    );
    assert_eq!(
        of(&other),
        pairs(&[("added", "filter_match"), ("removed", "filter_unmatch")])
    );
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_arriving_on_another_partition_is_rehomed() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    let first = h.send("dev-1", json!({"status": "online"})).await?;
    h.applied("dev-1", first).await?;
    let home: i32 = sqlx::query_scalar("SELECT partition FROM devices WHERE id = 'dev-1'")
        .fetch_one(h.pool())
        .await?;
    let before = metric("cohort_worker_devices_rehomed_total");
    // A producer with another partitioner: the next event lands on the other partition.
    let moved = send_on(&mut h, 1 - home, "dev-1", json!({"status": "offline"})).await?;
    h.applied("dev-1", moved).await?;
    let now_home: i32 = sqlx::query_scalar("SELECT partition FROM devices WHERE id = 'dev-1'")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(now_home, 1 - home);
    h.wait_members(online, &[]).await?;
    assert!(metric("cohort_worker_devices_rehomed_total") >= before + 1.0);
    // The old home no longer holds it: a later event on the old partition is applied by re-homing back,
    // never by two owners at once (each write is guarded by the device's version).
    let back = h.send("dev-1", json!({"status": "online"})).await?;
    h.applied("dev-1", back).await?;
    h.wait_members(online, &[("dev-1", false)]).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_taken_over_while_its_old_partition_commits_is_recomputed_from_that_commit(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let status_is = |value: &str| json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": value}]});
    h.group("online", status_is("online")).await?;
    h.group("offline", status_is("offline")).await?;
    let maintenance = h.group("maintenance", status_is("maintenance")).await?;
    let first = h.send("dev-1", json!({"status": "online"})).await?;
    h.applied("dev-1", first).await?;
    let home: i32 = sqlx::query_scalar("SELECT partition FROM devices WHERE id = 'dev-1'")
        .fetch_one(h.pool())
        .await?;
    // The old partition's batch in flight: it holds its position row and adds a membership (with its
    // log row) that the device's stored memberships do not have yet.
    let mut old_owner = h.pool().begin().await?;
    sqlx::query("SELECT 1 FROM partition_positions WHERE topic = $1 AND partition = $2 FOR UPDATE")
        .bind(&h.input)
        .bind(home)
        .execute(&mut *old_owner)
        .await?;
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) \
         VALUES ($1, 'dev-1', 'dynamic_rule')",
    )
    .bind(maintenance)
    .execute(&mut *old_owner)
    .await?;
    sqlx::query(
        "INSERT INTO group_membership_log (group_id, device_id, action, reason, cause, group_version) \
         VALUES ($1, 'dev-1', 'added', 'filter_match', '{\"type\": \"test\"}', 1)",
    )
    .bind(maintenance)
    .execute(&mut *old_owner)
    .await?;
    // The device's next event arrives on the other partition, which takes it over: that batch waits for
    // the old partition's.
    let moved = send_on(&mut h, 1 - home, "dev-1", json!({"status": "offline"})).await?;
    super::a_statement_waits_on_a_lock(
        &h,
        "the taking-over batch waits for the old partition's",
        "%FROM partition_positions p%FOR SHARE%",
    )
    .await?;
    old_owner.commit().await?;
    // It then finds the memberships it read no longer stored, and recomputes from them: the membership
    // the old partition added is removed again, as the device does not match.
    h.applied("dev-1", moved).await?;
    h.wait_members(maintenance, &[]).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

/// Sends `attributes` for `device` on `partition`, whatever its key hashes to; returns its sequence.
async fn send_on(
    h: &mut Harness,
    partition: i32,
    device: &str,
    attributes: serde_json::Value,
) -> anyhow::Result<i64> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    h.sequence += 1;
    let event = json!({"eventId": format!("on-{partition}-{}", h.sequence), "orgId": ORG,
                       "deviceId": device, "sequence": h.sequence, "attributes": attributes})
    .to_string();
    producer
        .send(
            FutureRecord::to(&h.input)
                .key(device)
                .payload(&event)
                .partition(partition),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(h.sequence)
}
