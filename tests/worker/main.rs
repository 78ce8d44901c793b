//! The worker against real PostgreSQL and a Kafka-protocol broker: memberships follow attribute changes,
//! pins hold, bad input is dead-lettered, time-based conditions flip with no event.

#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use cohort::store::groups;
use cohort::worker::ManualClock;
use serde_json::{json, Value};
use support::app::{all_applied, metric, standard_groups, stream, Harness, LIMIT, ORG};
use support::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_change_makes_a_device_join_and_leave_a_dynamic_group() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    h.send("dev-1", json!({"status": "online", "hostname": "a"}))
        .await?;
    h.send("dev-2", json!({"status": "offline"})).await?;
    h.wait_members(online, &[("dev-1", false)]).await?;
    h.send("dev-1", json!({"status": "offline"})).await?;
    h.send("dev-2", json!({"status": "online"})).await?;
    h.wait_members(online, &[("dev-2", false)]).await?;
    // The devices may be on different partitions: order is defined per device only.
    let mut log = h.log(online).await?;
    log.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        log,
        vec![
            ("dev-1".into(), "added".into(), "filter_match".into()),
            ("dev-1".into(), "removed".into(), "filter_unmatch".into()),
            ("dev-2".into(), "added".into(), "filter_match".into()),
        ]
    );
    let cause: Value = sqlx::query_scalar(
        "SELECT cause FROM group_membership_log WHERE group_id = $1 AND device_id = 'dev-2'",
    )
    .bind(online)
    .fetch_one(h.pool())
    .await?;
    assert_eq!(cause["type"], "event");
    assert!(
        cause["offset"].is_i64() && cause["partition"].is_i64(),
        "{cause}"
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_a_field_no_group_references_evaluates_no_group() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    h.group("linux", json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]}))
        .await?;
    let first = h.send("dev-1", json!({"osType": "linux"})).await?;
    h.applied("dev-1", first).await?;
    let before = metric("cohort_worker_events_without_candidates_total");
    let evaluations_before = metric("cohort_worker_group_evaluations_total");
    let second = h.send("dev-1", json!({"platform": "rpi-4"})).await?;
    h.applied("dev-1", second).await?;
    assert!(metric("cohort_worker_events_without_candidates_total") >= before + 1.0);
    // Other tests in this binary may evaluate groups concurrently, so only the counter above is exact; the
    // stored state shows nothing changed.
    let _ = evaluations_before;
    let platform: Value = sqlx::query_scalar("SELECT attributes FROM devices WHERE id = 'dev-1'")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(platform["platform"], "rpi-4");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_duplicate_events_change_nothing() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    h.send_with_sequence("dev-1", 10, json!({"status": "online"}))
        .await?;
    h.applied("dev-1", 10).await?;
    h.send_with_sequence("dev-1", 10, json!({"status": "offline"}))
        .await?; // duplicate sequence
    h.send_with_sequence("dev-1", 5, json!({"status": "offline"}))
        .await?; // older
    h.send_with_sequence("dev-1", 11, json!({"hostname": "marker"}))
        .await?;
    h.applied("dev-1", 11).await?;
    assert_eq!(h.members(online).await?, vec![("dev-1".to_string(), false)]);
    assert_eq!(h.log(online).await?.len(), 1);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_the_worker_goes_on() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    h.kafka
        .produce(&h.input, "dev-9", "{ this is not json")
        .await?;
    h.kafka
        .produce(
            &h.input,
            "dev-9",
            json!({"eventId": "x", "orgId": "nobody", "deviceId": "dev-9", "sequence": 1})
                .to_string(),
        )
        .await?;
    h.send("dev-1", json!({"status": "online"})).await?;
    h.wait_members(online, &[("dev-1", false)]).await?;
    // The poison messages may sit on the other partition: wait until the stored positions cover all three
    // messages — their offsets advanced.
    let pool = h.pool().clone();
    eventually(LIMIT, "all three offsets are committed", || {
        let pool = pool.clone();
        async move {
            let next: Option<i64> =
                sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM partition_positions")
                    .fetch_one(&pool)
                    .await?;
            Ok((next == Some(3)).then_some(()))
        }
    })
    .await?;
    // Only dead letters are in the outbox (no release exists, so no rollout-target event).
    let rows: Vec<(String, Value)> =
        sqlx::query_as("SELECT topic, headers FROM outbox ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    let reasons: Vec<&str> = rows
        .iter()
        .map(|(topic, headers)| {
            assert_eq!(topic, &h.dead_letters);
            headers["cohort-dead-letter-reason"].as_str().unwrap_or("")
        })
        .collect();
    assert_eq!(reasons, ["malformed_json", "unknown_org"]);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_device_stays_when_it_stops_matching_and_leaves_once_unpinned(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let online = h
        .group("online", json!({"operator": "AND", "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}))
        .await?;
    h.send("dev-1", json!({"status": "online"})).await?;
    h.wait_members(online, &[("dev-1", false)]).await?;
    groups::set_pin(h.pool(), online, "dev-1", true, "alice").await?;
    h.wait_members(online, &[("dev-1", true)]).await?;
    h.send("dev-1", json!({"status": "offline"})).await?;
    let seq = h.send("dev-1", json!({"hostname": "marker"})).await?;
    h.applied("dev-1", seq).await?;
    assert_eq!(
        h.members(online).await?,
        vec![("dev-1".to_string(), true)],
        "pinned: it stays"
    );
    groups::set_pin(h.pool(), online, "dev-1", false, "alice").await?;
    h.wait_members(online, &[]).await?;
    assert_eq!(
        h.log(online).await?.last().cloned(),
        Some(("dev-1".into(), "removed".into(), "unpinned".into()))
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_within_last_condition_flips_with_no_event() -> anyhow::Result<()> {
    let start = cohort::rules::time::parse_datetime("2024-06-15T12:00:00Z").expect("valid");
    let clock = ManualClock::new(start);
    let mut h = Harness::start_with_clock(Arc::new(clock.clone())).await?;
    let recent = h
        .group(
            "seen-recently",
            json!({"operator": "AND", "conditions": [
                {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1, "unit": "hours"}}
            ]}),
        )
        .await?;
    h.send("dev-1", json!({"lastSeenAt": "2024-06-15T11:30:00Z"}))
        .await?;
    h.wait_members(recent, &[("dev-1", false)]).await?;
    // 30 minutes later it still holds; an hour and a half later it has expired, with no event.
    clock.set(start + 30 * 60_000);
    clock.set(start + 90 * 60_000);
    h.wait_members(recent, &[]).await?;
    let cause: Value = sqlx::query_scalar(
        "SELECT cause FROM group_membership_log WHERE group_id = $1 AND action = 'removed'",
    )
    .bind(recent)
    .fetch_one(h.pool())
    .await?;
    assert_eq!(cause["type"], "timer");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_change_moves_members_with_only_the_diff_logged() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let group = h
        .group("big", json!({"operator": "AND", "conditions": [{"field": "uptimeSeconds", "operator": "greaterThan", "value": 10}]}))
        .await?;
    // The devices spread over both partitions: wait for every one of them.
    let mut sent = Vec::new();
    for i in 0..30 {
        let device = format!("dev-{i:02}");
        let seq = h.send(&device, json!({"uptimeSeconds": i})).await?;
        sent.push((device, seq));
    }
    all_applied(&h, &sent).await?;
    let before = h.members(group).await?.len();
    assert_eq!(before, 19); // 11..=29
    let log_before = h.log(group).await?.len();
    groups::update_filter(
        h.pool(),
        &h.catalogue,
        group,
        &json!({"operator": "AND", "conditions": [{"field": "uptimeSeconds", "operator": "greaterThan", "value": 20}]}),
    )
    .await?;
    let expected: Vec<(String, bool)> = (21..30).map(|i| (format!("dev-{i:02}"), false)).collect();
    let expected: Vec<(&str, bool)> = expected.iter().map(|(d, p)| (d.as_str(), *p)).collect();
    h.wait_members(group, &expected).await?;
    let log = h.log(group).await?;
    let new_rows = &log[log_before..];
    assert_eq!(
        new_rows.len(),
        10,
        "only the 10 devices that left are logged: {new_rows:?}"
    );
    assert!(new_rows
        .iter()
        .all(|(_, action, reason)| action == "removed" && reason == "filter_unmatch"));
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_ends_in_the_oracle_state() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
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
    let mut rng = 0xDEAD_BEEF_1234_5678u64;
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
    let mut rng = 0x1234_5678_9ABC_DEF0u64;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_arriving_on_another_partition_is_rehomed() -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
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
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    h.sequence += 1;
    let event =
        json!({"eventId": "moved", "orgId": ORG, "deviceId": "dev-1", "sequence": h.sequence,
                       "attributes": {"status": "offline"}})
        .to_string();
    producer
        .send(
            FutureRecord::to(&h.input)
                .key("dev-1")
                .payload(&event)
                .partition(1 - home),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    h.applied("dev-1", h.sequence).await?;
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
