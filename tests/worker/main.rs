//! The worker against real PostgreSQL and a Kafka-protocol broker: memberships follow attribute changes,
//! pins hold, bad input is dead-lettered, time-based conditions flip with no event.

#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod reconcile;

use std::sync::atomic::Ordering;
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

/// A flip instant is when a result *may* change. Here the first one changes nothing (one side of an OR
/// expires as the other starts to hold), and the device must still leave at the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_that_changes_nothing_still_leads_to_the_next_one() -> anyhow::Result<()> {
    let start = cohort::rules::time::parse_datetime("2024-06-15T12:00:00Z").expect("valid");
    let clock = ManualClock::new(start);
    let mut h = Harness::start_with_clock(Arc::new(clock.clone())).await?;
    let hours = |n: i64| json!({"amount": n, "unit": "hours"});
    let group = h
        .group(
            "active",
            json!({"operator": "AND", "conditions": [
                {"operator": "OR", "conditions": [
                    {"field": "lastSeenAt", "operator": "withinLast", "value": hours(1)},
                    {"field": "enrolledAt", "operator": "before", "value": hours(1)}
                ]},
                {"field": "lastSeenAt", "operator": "withinLast", "value": hours(5)}
            ]}),
        )
        .await?;
    // Seen now, enrolled half an hour ago: the OR holds by its first side until 13:00, by its second from
    // 12:30; the whole holds until 17:00. The earliest flip the device has is 13:00, and nothing changes then.
    h.send(
        "dev-1",
        json!({"lastSeenAt": "2024-06-15T12:00:00Z", "enrolledAt": "2024-06-15T11:30:00Z"}),
    )
    .await?;
    h.wait_members(group, &[("dev-1", false)]).await?;
    let status = h.status.clone();
    let evaluated = |n: u64| {
        let status = status.clone();
        move || {
            let status = status.clone();
            async move { Ok((status.timer_evaluations.load(Ordering::SeqCst) >= n).then_some(())) }
        }
    };
    clock.set(start + 2 * 3_600_000);
    eventually(LIMIT, "the 13:00 flip is evaluated", evaluated(1)).await?;
    assert_eq!(h.members(group).await?, vec![("dev-1".to_string(), false)]);
    clock.set(start + 6 * 3_600_000);
    h.wait_members(group, &[]).await?;
    let log = h.log(group).await?;
    assert_eq!(
        log.last().cloned(),
        Some(("dev-1".into(), "removed".into(), "filter_unmatch".into()))
    );
    h.check_oracle(start + 6 * 3_600_000).await?;
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
    let pool = h.pool().clone();
    eventually(LIMIT, "the batch's commit waits for the row", || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await?;
            Ok((waiting > 0).then_some(()))
        }
    })
    .await?;
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

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_are_written_once_by_the_api_and_replaying_them_changes_nothing(
) -> anyhow::Result<()> {
    use cohort::store::members::{self, MemberError};
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let fleet = h.static_group("fleet").await?;
    let mut rng = 0x5EED_0F57_A71C_u64;
    let last = stream(&mut h, 8, 40, &mut rng).await?;
    all_applied(&h, &last).await?;
    // A device of another org is as unknown as one that does not exist.
    groups::create_org(h.pool(), "globex", "Globex").await?;
    let gx = json!({"eventId": "gx", "orgId": "globex", "deviceId": "gx-1", "sequence": 1});
    h.produce("gx-1", gx.to_string()).await?;
    h.applied("gx-1", 1).await?;
    h.control_applied().await?;
    let before: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM control_log")
        .fetch_one(h.pool())
        .await?;

    let added = members::add_static(
        h.pool(),
        ORG,
        fleet,
        &ids(&["dev-1", "dev-2", "dev-1", "ghost", "gx-1"]),
        "alice",
    )
    .await?;
    assert_eq!(added.changed, ids(&["dev-1", "dev-2"]));
    assert!(added.skipped.is_empty());
    assert_eq!(added.not_found, ids(&["ghost", "gx-1"]));
    let again =
        members::add_static(h.pool(), ORG, fleet, &ids(&["dev-2", "dev-3"]), "alice").await?;
    assert_eq!(
        (again.changed, again.skipped),
        (ids(&["dev-3"]), ids(&["dev-2"]))
    );
    let removed = members::remove_static(
        h.pool(),
        ORG,
        fleet,
        &ids(&["dev-1", "dev-4", "ghost"]),
        "bob",
    )
    .await?;
    assert_eq!(
        (removed.changed, removed.skipped, removed.not_found),
        (ids(&["dev-1"]), ids(&["dev-4"]), ids(&["ghost"]))
    );
    // Refusals: a dynamic group, another org's group, an unknown group.
    let dynamic: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM device_groups WHERE type = 'dynamic' ORDER BY name LIMIT 1",
    )
    .fetch_one(h.pool())
    .await?;
    let refused = members::add_static(h.pool(), ORG, dynamic, &ids(&["dev-1"]), "a").await;
    assert!(
        matches!(refused, Err(MemberError::DynamicGroup)),
        "{refused:?}"
    );
    let refused = members::remove_static(h.pool(), ORG, dynamic, &ids(&["dev-1"]), "a").await;
    assert_eq!(
        refused.unwrap_err().to_string(),
        "Cannot manually remove devices from a dynamic group"
    );
    let refused = members::add_static(h.pool(), "globex", fleet, &ids(&["gx-1"]), "a").await;
    assert!(matches!(refused, Err(MemberError::GroupNotFound)));
    let refused =
        members::add_static(h.pool(), ORG, uuid::Uuid::new_v4(), &ids(&["dev-1"]), "a").await;
    assert!(matches!(refused, Err(MemberError::GroupNotFound)));

    let expected_log = vec![
        (
            "dev-1".to_string(),
            "added".to_string(),
            "manual".to_string(),
        ),
        ("dev-2".into(), "added".into(), "manual".into()),
        ("dev-3".into(), "added".into(), "manual".into()),
        ("dev-1".into(), "removed".into(), "manual".into()),
    ];
    h.control_applied().await?;
    assert_eq!(h.log(fleet).await?, expected_log);
    assert_eq!(
        h.members(fleet).await?,
        vec![("dev-2".into(), false), ("dev-3".into(), false)]
    );
    let cause: Value = sqlx::query_scalar(
        "SELECT cause FROM group_membership_log WHERE group_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(fleet)
    .fetch_one(h.pool())
    .await?;
    assert_eq!(cause, json!({"type": "api", "actor": "bob"}));
    let entries: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, payload FROM control_log WHERE id > $1 ORDER BY id")
            .bind(before)
            .fetch_all(h.pool())
            .await?;
    assert_eq!(
        entries.len(),
        3,
        "one entry per call that changed something"
    );
    assert!(entries.iter().all(|(kind, _)| kind == "static_members"));
    assert_eq!(entries[2].1["removed"], json!(["dev-1"]));
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;

    // More changes while no worker runs, and the partitions' positions put back before all of them (as if
    // the worker had crashed before committing any): the next worker loads memberships that already
    // include every change, then replays the entries.
    h.stop_workers().await?;
    members::add_static(h.pool(), ORG, fleet, &ids(&["dev-5", "dev-1"]), "carol").await?;
    members::remove_static(h.pool(), ORG, fleet, &ids(&["dev-5"]), "carol").await?;
    sqlx::query("UPDATE partition_positions SET control_position = $1")
        .bind(before)
        .execute(h.pool())
        .await?;
    let writes_before: i64 = sqlx::query_scalar("SELECT sum(version)::int8 FROM devices")
        .fetch_one(h.pool())
        .await?;
    let log_before: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    h.add_worker().await?;
    h.all_partitions_owned(2).await?;
    h.control_applied().await?;
    let log_after: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(log_after, log_before, "the replay wrote no log row");
    let writes_after: i64 = sqlx::query_scalar("SELECT sum(version)::int8 FROM devices")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(writes_after, writes_before, "the replay wrote no device");
    assert_eq!(
        h.members(fleet).await?,
        vec![
            ("dev-1".into(), false),
            ("dev-2".into(), false),
            ("dev-3".into(), false)
        ]
    );
    // The worker's memory follows: a filter-driven event for a static member leaves it where it is, and a
    // release to the group reaches exactly its members (dev-1 re-added while no worker ran, not dev-5).
    let seq = h.send("dev-2", json!({"status": "offline"})).await?;
    h.applied("dev-2", seq).await?;
    cohort::store::firmware::release(
        h.pool(),
        ORG,
        cohort::store::firmware::ReleaseTarget::Group(fleet),
        "2",
        "ops",
    )
    .await?;
    h.control_applied().await?;
    let targeted: Vec<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE target_version = '2' ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    assert_eq!(targeted, ids(&["dev-1", "dev-2", "dev-3"]));
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_creates_a_missing_device_and_leaves_an_existing_one_alone(
) -> anyhow::Result<()> {
    use cohort::event::registration_event;
    use cohort::store::members;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut h = Harness::start().await?;
    let unnamed = h
        .group(
            "unnamed",
            json!({"operator": "AND", "conditions": [{"field": "hostname", "operator": "isNull"}]}),
        )
        .await?;
    let fleet = h.static_group("fleet").await?;

    // A new device: created with no attributes, evaluated against every dynamic group.
    let at = h
        .produce("imported-1", registration_event(ORG, "imported-1"))
        .await?;
    h.processed(at).await?;
    let (attributes, sequence): (Value, i64) =
        sqlx::query_as("SELECT attributes, sequence FROM devices WHERE id = 'imported-1'")
            .fetch_one(h.pool())
            .await?;
    assert_eq!((attributes, sequence), (json!({}), -1));
    h.wait_members(unnamed, &[("imported-1", false)]).await?;
    // It can be added to a static group at once, and registering it again changes nothing.
    let added = members::add_static(h.pool(), ORG, fleet, &ids(&["imported-1"]), "ops").await?;
    assert_eq!(added.changed, ids(&["imported-1"]));
    let duplicates = metric("cohort_worker_events_total{outcome=\"duplicate\"}");
    let again = h
        .produce("imported-1", registration_event(ORG, "imported-1"))
        .await?;
    h.processed(again).await?;
    assert!(metric("cohort_worker_events_total{outcome=\"duplicate\"}") >= duplicates + 1.0);
    // Its first real event applies, whatever its sequence.
    h.send_with_sequence("imported-1", 0, json!({"hostname": "imported"}))
        .await?;
    h.applied("imported-1", 0).await?;
    h.wait_members(unnamed, &[]).await?;

    // An existing device: a registration on its own partition, and one on the other partition (which
    // would re-home an ordinary event), write nothing at all.
    let seq = h
        .send("dev-1", json!({"hostname": "one", "status": "online"}))
        .await?;
    h.applied("dev-1", seq).await?;
    type Row = (i32, i64, i64, Value);
    let read = || async {
        anyhow::Ok(
            sqlx::query_as::<_, Row>(
                "SELECT partition, sequence, version, attributes FROM devices WHERE id = 'dev-1'",
            )
            .fetch_one(h.pool())
            .await?,
        )
    };
    let before = read().await?;
    let home = h.produce("dev-1", registration_event(ORG, "dev-1")).await?;
    h.processed(home).await?;
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    let payload = registration_event(ORG, "dev-1");
    let elsewhere = producer
        .send(
            FutureRecord::to(&h.input)
                .key("dev-1")
                .payload(&payload)
                .partition(1 - before.0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    h.processed((elsewhere.partition, elsewhere.offset)).await?;
    assert_eq!(read().await?, before);
    // A registration naming another org is an org mismatch, like any event.
    groups::create_org(h.pool(), "globex", "Globex").await?;
    h.control_applied().await?;
    let mismatch = h
        .produce("dev-1", registration_event("globex", "dev-1"))
        .await?;
    h.processed(mismatch).await?;
    let reasons: Vec<Value> = sqlx::query_scalar(
        "SELECT headers -> 'cohort-dead-letter-reason' FROM outbox WHERE topic = $1",
    )
    .bind(&h.dead_letters)
    .fetch_all(h.pool())
    .await?;
    assert_eq!(reasons, vec![json!("org_mismatch")]);
    assert_eq!(read().await?, before);
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_found_by_their_cellular_identifiers_within_their_org() -> anyhow::Result<()> {
    use cohort::store::members::{resolve_identifiers, IdentifierKind::*};
    let mut h = Harness::start().await?;
    let one = h
        .send(
            "dev-1",
            json!({"imei": "356938035643809", "iccid": "89014103211118510720", "meid": "a0000000002329"}),
        )
        .await?;
    let two = h
        .send(
            "dev-2",
            json!({"msisdn": "15551234567", "esn": "12345678901", "mdn": "5551234567"}),
        )
        .await?;
    h.applied("dev-1", one).await?;
    h.applied("dev-2", two).await?;
    groups::create_org(h.pool(), "globex", "Globex").await?;
    h.control_applied().await?;
    let gx = json!({"eventId": "gx", "orgId": "globex", "deviceId": "gx-1", "sequence": 1,
                    "attributes": {"imei": "356938035643809"}});
    h.produce("gx-1", gx.to_string()).await?;
    h.applied("gx-1", 1).await?;

    let s = |v: &str| v.to_string();
    let query = vec![
        (Imei, s("356938035643809")),
        (Meid, s("A0000000002329")),
        (Msisdn, s("15551234567")),
        (Imei, s("111111111111111")),
        (Esn, s("12345678901")),
        (Mdn, s("5551234567")),
        (Iccid, s("89014103211118510720")),
        // Another kind's value never matches: an MDN is not an MSISDN.
        (Msisdn, s("5551234567")),
        (Imei, s("356938035643809")),
    ];
    let found = resolve_identifiers(h.pool(), ORG, &query).await?;
    let d = |v: &str| Some(v.to_string());
    assert_eq!(
        found,
        vec![
            d("dev-1"),
            d("dev-1"),
            d("dev-2"),
            None,
            d("dev-2"),
            d("dev-2"),
            d("dev-1"),
            None,
            d("dev-1")
        ]
    );
    assert_eq!(
        resolve_identifiers(h.pool(), "globex", &query[..1]).await?,
        vec![d("gx-1")]
    );
    assert!(resolve_identifiers(h.pool(), ORG, &[]).await?.is_empty());

    // A SIM swap: the old ICCID no longer finds the device, the new one does; a removed MEID is gone.
    let swap = h
        .send(
            "dev-1",
            json!({"iccid": "89014103211118510721", "meid": null}),
        )
        .await?;
    h.applied("dev-1", swap).await?;
    let found = resolve_identifiers(
        h.pool(),
        ORG,
        &[
            (Iccid, s("89014103211118510720")),
            (Iccid, s("89014103211118510721")),
            (Meid, s("a0000000002329")),
            (Imei, s("356938035643809")),
        ],
    )
    .await?;
    assert_eq!(found, vec![None, d("dev-1"), None, d("dev-1")]);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_scoped_static_group_only_receives_devices_of_its_site() -> anyhow::Result<()> {
    use cohort::store::members;
    let mut h = Harness::start().await?;
    let berlin = groups::create_group(
        h.pool(),
        &h.catalogue,
        &groups::NewGroup {
            org_id: ORG.into(),
            name: "berlin-lab".into(),
            site_id: Some("berlin".into()),
            ..Default::default()
        },
    )
    .await?
    .group_id;
    for (device, site) in [("dev-1", json!("berlin")), ("dev-2", json!("paris"))] {
        let seq = h.send(device, json!({ "siteId": site })).await?;
        h.applied(device, seq).await?;
    }
    let seq = h.send("dev-3", json!({"hostname": "no-site"})).await?;
    h.applied("dev-3", seq).await?;
    let change = members::add_static(
        h.pool(),
        ORG,
        berlin,
        &ids(&["dev-1", "dev-2", "dev-3"]),
        "ops",
    )
    .await?;
    assert_eq!(change.changed, ids(&["dev-1"]));
    assert_eq!(change.wrong_site, ids(&["dev-2", "dev-3"]));
    assert!(change.skipped.is_empty() && change.not_found.is_empty());
    h.control_applied().await?;
    assert_eq!(h.members(berlin).await?, vec![("dev-1".into(), false)]);
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test]
async fn sessions_ask_for_wal_compression_and_a_role_that_may_not_set_it_still_connects(
) -> anyhow::Result<()> {
    use cohort::config::{DatabaseConfig, WalCompression};
    use sqlx::postgres::PgConnectOptions;

    let db = support::db::TestDatabase::new().await?;
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(db.pool())
            .await?;
    let server: String = sqlx::query_scalar("SHOW wal_compression")
        .fetch_one(db.pool())
        .await?;

    // The worker's pool, as `database.wal_compression` configures it.
    for (setting, expected) in [(WalCompression::Lz4, "lz4"), (WalCompression::Off, "off")] {
        let config = DatabaseConfig {
            url: db.url().to_owned(),
            wal_compression: setting,
            ..DatabaseConfig::default()
        };
        let pool = cohort::store::connect_lazy(&config)?;
        let session: String = sqlx::query_scalar("SHOW wal_compression")
            .fetch_one(&pool)
            .await?;
        if superuser {
            assert_eq!(session, expected);
        }
        pool.close().await;
    }
    let config = DatabaseConfig {
        url: db.url().to_owned(),
        wal_compression: WalCompression::Server,
        ..DatabaseConfig::default()
    };
    let pool = cohort::store::connect_lazy(&config)?;
    let session: String = sqlx::query_scalar("SHOW wal_compression")
        .fetch_one(&pool)
        .await?;
    assert_eq!(session, server, "`server` leaves the setting alone");
    pool.close().await;

    // A role without the right: refused, warned about, and the connection works with the server's setting.
    if superuser {
        let role = format!("cohort_test_role_{}", support::random_suffix());
        let password = support::random_suffix();
        sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            .execute(db.pool())
            .await?;
        let options: PgConnectOptions = db.url().parse()?;
        let result = async {
            let pool = cohort::store::pool_options(WalCompression::Lz4)
                .max_connections(1)
                .connect_with(options.username(&role).password(&password))
                .await?;
            let session: String = sqlx::query_scalar("SHOW wal_compression")
                .fetch_one(&pool)
                .await?;
            let answer: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
            pool.close().await;
            anyhow::Ok((session, answer))
        }
        .await;
        sqlx::raw_sql(&format!("DROP ROLE {role}"))
            .execute(db.pool())
            .await?;
        let (session, answer) = result?;
        assert_eq!(session, server);
        assert_eq!(answer, 1);
    }
    db.cleanup().await
}

#[tokio::test]
async fn a_caught_up_batch_sets_backend_flush_after_for_its_own_transaction_only_and_survives_a_refusal(
) -> anyhow::Result<()> {
    use cohort::store::batch::{commit, BatchWrite};

    let db = support::db::TestDatabase::new().await?;
    cohort::store::migrate(db.pool()).await?;
    sqlx::query("INSERT INTO partition_positions (topic, partition) VALUES ('input', 0)")
        .execute(db.pool())
        .await?;
    // One connection, so the statement after the batch runs on the session the batch used.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await?;
    let batch = |next_offset, flush_after_kb| BatchWrite {
        topic: "input".into(),
        partition: 0,
        epoch: 0,
        next_offset,
        flush_after_kb,
        ..BatchWrite::default()
    };
    let show = || sqlx::query_scalar::<_, String>("SHOW backend_flush_after").fetch_one(&pool);
    let before = show().await?;
    assert_ne!(before, "64kB");
    commit(&pool, &batch(1, Some(64))).await?;
    assert_eq!(
        show().await?,
        before,
        "the setting ends with the batch's transaction"
    );
    // The setting is really sent: a value PostgreSQL refuses is noticed. The batch is written without it
    // (a refusal must not stop the worker), and later batches no longer ask.
    assert!(!cohort::store::batch::flush_after_refused());
    commit(&pool, &batch(2, Some(4096))).await?;
    assert!(cohort::store::batch::flush_after_refused());
    let stored = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT next_offset FROM partition_positions WHERE topic = 'input' AND partition = 0",
        )
        .fetch_one(&pool)
    };
    assert_eq!(stored().await?, 2);
    assert_eq!(show().await?, before);
    commit(&pool, &batch(3, Some(4096))).await?;
    assert_eq!(stored().await?, 3);
    pool.close().await;
    db.cleanup().await
}
