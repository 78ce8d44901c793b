//! The worker against real PostgreSQL and a Kafka-protocol broker: memberships follow attribute changes,
//! pins hold, bad input is dead-lettered, time-based conditions flip with no event.

mod changes;
mod counts;
mod devices;
mod peers;
mod reconcile;
mod recovery;
mod sessions;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohort::store::groups;
use cohort::worker::ManualClock;
use cohort_testkit::app::{all_applied, metric, Harness, LIMIT};
use cohort_testkit::eventually;
use serde_json::{json, Value};

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

/// Waits until some session of this test's database waits on a lock: a batch blocked by a row the test
/// holds (`what` names it in the failure).
async fn a_batch_waits_on_a_lock(h: &Harness, what: &str) -> anyhow::Result<()> {
    a_statement_waits_on_a_lock(h, what, "%").await
}

/// Waits until a statement whose text is `LIKE pattern` waits for a lock.
async fn a_statement_waits_on_a_lock(h: &Harness, what: &str, pattern: &str) -> anyhow::Result<()> {
    let pool = h.pool().clone();
    eventually(LIMIT, what, || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1",
            )
            .bind(pattern)
            .fetch_one(&pool)
            .await?;
            Ok((waiting > 0).then_some(()))
        }
    })
    .await
}
