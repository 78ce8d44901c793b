//! Firmware targeting end to end: releases, locks and development devices change resolved targets, and a
//! rollout-target event is emitted exactly when a device's resolved version changes — checked in the
//! outbox (written with the change) and on the topic (published by the relay).

#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use cohort::store::firmware::{self, Proposal, ReleaseTarget};
use cohort::store::groups;
use serde_json::{json, Value};
use support::app::{Harness, LIMIT, ORG};
use support::eventually;
use uuid::Uuid;

mod dry_run;

/// A rollout-target event as written to the outbox.
#[derive(Debug, Clone)]
struct Rollout {
    device: String,
    id: String,
    sequence: i64,
    from: Option<String>,
    to: Option<String>,
    reason: String,
}

async fn rollouts(h: &Harness) -> anyhow::Result<Vec<Rollout>> {
    let rows: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(&h.config.kafka.output_topic)
            .fetch_all(h.pool())
            .await?;
    rows.into_iter()
        .map(|(payload,)| {
            let e: Value = serde_json::from_slice(&payload)?;
            anyhow::ensure!(e["specversion"] == "1.0", "a CloudEvent: {e}");
            Ok(Rollout {
                device: e["subject"].as_str().unwrap_or_default().to_string(),
                id: e["id"].as_str().unwrap_or_default().to_string(),
                sequence: e["data"]["sequence"].as_i64().unwrap_or(-1),
                from: e["data"]["previous"]["version"]
                    .as_str()
                    .map(str::to_string),
                to: e["data"]["target"]["version"].as_str().map(str::to_string),
                reason: e["data"]["target"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect()
}

/// Waits until the outbox holds exactly `count` rollout events and the worker has applied every control
/// entry and input it was given (so no further event can still be on its way), then returns them.
async fn settled(h: &Harness, count: usize) -> anyhow::Result<Vec<Rollout>> {
    let pool = h.pool().clone();
    let topic = h.config.kafka.output_topic.clone();
    eventually(LIMIT, &format!("{count} rollout events and an idle worker"), || {
        let (pool, topic) = (pool.clone(), topic.clone());
        async move {
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
                .bind(&topic)
                .fetch_one(&pool)
                .await?;
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM partition_positions WHERE control_position < (SELECT COALESCE(max(id), 0) FROM control_log)",
            )
            .fetch_one(&pool)
            .await?;
            Ok((events as usize >= count && behind == 0).then_some(()))
        }
    })
    .await?;
    let all = rollouts(h).await?;
    anyhow::ensure!(
        all.len() == count,
        "expected exactly {count} rollout events, found {}",
        all.len()
    );
    Ok(all)
}

/// Waits until `n` devices have been stored with a sequence of at least `sequence`.
async fn devices_applied(h: &Harness, n: i64, sequence: i64) -> anyhow::Result<()> {
    let pool = h.pool().clone();
    eventually(LIMIT, "the devices are applied", || {
        let pool = pool.clone();
        async move {
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE sequence >= $1")
                .bind(sequence)
                .fetch_one(&pool)
                .await?;
            Ok((done >= n).then_some(()))
        }
    })
    .await
}

async fn target_of(
    h: &Harness,
    device: &str,
) -> anyhow::Result<(Option<String>, String, Option<Uuid>)> {
    Ok(sqlx::query_as(
        "SELECT target_version, target_reason, target_group FROM devices WHERE id = $1",
    )
    .bind(device)
    .fetch_one(h.pool())
    .await?)
}

fn tags_filter(tag: &str) -> Value {
    json!({"operator": "AND", "conditions": [{"field": "tags", "operator": "contains", "value": tag}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_to_a_prerelease_group_emits_one_event_per_affected_device_as_previewed(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let prerelease = h.group("prerelease", tags_filter("prerelease")).await?;
    // 5,000 devices running v1; 15 of them tagged prerelease, one of which is a development device and one
    // locked to v1.
    for i in 0..5000 {
        let device = format!("dev-{i:04}");
        let mut event = json!({"eventId": format!("e-{i}"), "orgId": ORG, "deviceId": device, "sequence": 1,
            "attributes": {"firmwareVersion": "1", "tags": if i < 15 { json!(["prerelease"]) } else { json!(["fleet"]) }}});
        if i == 0 {
            event["development"] = json!(true);
        }
        if i == 1 {
            event["firmwareLock"] = json!("1");
        }
        h.kafka
            .produce(&h.input, &device, event.to_string())
            .await?;
    }
    devices_applied(&h, 5000, 1).await?;
    // The locked device resolved to its lock (none → 1): one event so far.
    settled(&h, 1).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    // Everyone else but the development device: none → 1.
    let after_default = settled(&h, 1 + 4998).await?;
    assert!(after_default[1..]
        .iter()
        .all(|r| r.from.is_none() && r.to.as_deref() == Some("1") && r.reason == "default"));

    let impact = firmware::preview(
        h.pool(),
        ORG,
        &Proposal::Release {
            target: ReleaseTarget::Group(prerelease),
            version: "2".into(),
        },
        100,
    )
    .await?;
    assert_eq!(impact.examined, 15);
    assert_eq!(impact.changed, 13);
    assert_eq!(
        impact.transitions,
        BTreeMap::from([("1 -> 2".to_string(), 13)])
    );

    firmware::release(h.pool(), ORG, ReleaseTarget::Group(prerelease), "2", "ops").await?;
    let all = settled(&h, 1 + 4998 + 13).await?;
    let released: BTreeSet<String> = all[4999..].iter().map(|r| r.device.clone()).collect();
    let previewed: BTreeSet<String> = impact.sample.iter().map(|d| d.device_id.clone()).collect();
    assert_eq!(
        released, previewed,
        "the events go to exactly the previewed devices"
    );
    assert!(!released.contains("dev-0000") && !released.contains("dev-0001"));
    assert!(all[4999..].iter().all(|r| r.from.as_deref() == Some("1")
        && r.to.as_deref() == Some("2")
        && r.reason == "group"));
    assert_eq!(
        target_of(&h, "dev-0005").await?,
        (Some("2".into()), "group".into(), Some(prerelease))
    );
    assert_eq!(
        target_of(&h, "dev-0000").await?,
        (None, "development".into(), None)
    );
    assert_eq!(
        target_of(&h, "dev-0001").await?,
        (Some("1".into()), "locked".into(), None)
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_in_two_groups_gets_the_higher_release_and_falls_back_as_it_leaves(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let a = h.group("a", tags_filter("a")).await?;
    let b = h.group("b", tags_filter("b")).await?;
    let first = h
        .send("dev-1", json!({"tags": ["a", "b"], "firmwareVersion": "1"}))
        .await?;
    h.applied("dev-1", first).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(a), "3", "ops").await?;
    settled(&h, 1).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(b), "5", "ops").await?;
    settled(&h, 2).await?;
    // The default does not change a device a group release decides: no event.
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, 2).await?;
    h.send("dev-1", json!({"tags": ["a"]})).await?;
    settled(&h, 3).await?;
    h.send("dev-1", json!({"tags": []})).await?;
    let all = settled(&h, 4).await?;
    let path: Vec<(Option<&str>, Option<&str>, &str)> = all
        .iter()
        .map(|r| (r.from.as_deref(), r.to.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(
        path,
        vec![
            (None, Some("3"), "group"),
            (Some("3"), Some("5"), "group"),
            (Some("5"), Some("3"), "group"),
            (Some("3"), Some("1"), "default"),
        ]
    );
    assert_eq!(
        all.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_development_flags_emit_events_only_when_the_version_changes(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let first = h.send("dev-1", json!({"firmwareVersion": "1"})).await?;
    h.applied("dev-1", first).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, 1).await?;
    // Locked to the version it already targets: the reason changes, the version does not — no event.
    let send_flags = |h: &mut Harness, flags: Value| {
        h.sequence += 1;
        let mut event = json!({"eventId": format!("f-{}", h.sequence), "orgId": ORG, "deviceId": "dev-1", "sequence": h.sequence});
        for (k, v) in flags.as_object().cloned().unwrap_or_default() {
            event[k] = v;
        }
        (h.sequence, event.to_string())
    };
    let (seq, e) = send_flags(&mut h, json!({"firmwareLock": "1"}));
    h.kafka.produce(&h.input, "dev-1", e).await?;
    h.applied("dev-1", seq).await?;
    settled(&h, 1).await?;
    assert_eq!(target_of(&h, "dev-1").await?.1, "locked");
    for (flags, expected) in [
        (json!({"firmwareLock": "7"}), 2),
        (json!({"firmwareLock": null}), 3),
        (json!({"development": true}), 4),
        (json!({"development": false}), 5),
        (json!({"attributes": {"hostname": "renamed"}}), 5),
    ] {
        let (seq, e) = send_flags(&mut h, flags);
        h.kafka.produce(&h.input, "dev-1", e).await?;
        h.applied("dev-1", seq).await?;
        settled(&h, expected).await?;
    }
    let path: Vec<(Option<String>, Option<String>)> = rollouts(&h)
        .await?
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        path,
        vec![
            (None, s("1")),
            (s("1"), s("7")),
            (s("7"), s("1")),
            (s("1"), None),
            (None, s("1"))
        ]
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_change_moving_a_thousand_devices_into_a_released_group_emits_a_thousand_events(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let group = h
        .group("big", json!({"operator": "AND", "conditions": [{"field": "uptimeSeconds", "operator": "greaterThan", "value": 5000}]}))
        .await?;
    for i in 0..1000 {
        let device = format!("dev-{i:04}");
        let event = json!({"eventId": format!("e-{i}"), "orgId": ORG, "deviceId": device, "sequence": 1,
            "attributes": {"uptimeSeconds": i, "firmwareVersion": "1"}});
        h.kafka
            .produce(&h.input, &device, event.to_string())
            .await?;
    }
    devices_applied(&h, 1000, 1).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(group), "2", "ops").await?;
    settled(&h, 1000).await?;
    groups::update_filter(
        h.pool(),
        &h.catalogue,
        group,
        &json!({"operator": "AND", "conditions": [{"field": "uptimeSeconds", "operator": "greaterThanOrEquals", "value": 0}]}),
    )
    .await?;
    let all = settled(&h, 2000).await?;
    assert!(all[1000..]
        .iter()
        .all(|r| r.from.as_deref() == Some("1") && r.to.as_deref() == Some("2")));
    let moved: BTreeSet<&str> = all[1000..].iter().map(|r| r.device.as_str()).collect();
    assert_eq!(moved.len(), 1000, "one event per device");

    // The relay publishes them: every event reaches the topic, de-duplicated by id, in order per device.
    let topic = h.config.kafka.output_topic.clone();
    let published = h
        .kafka
        .consume_until(&topic, LIMIT, |m| m.len() >= 2000)
        .await?;
    let mut by_device: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for m in &published {
        let e: Value = serde_json::from_slice(m.payload.as_deref().unwrap_or_default())?;
        if ids.insert(e["id"].as_str().unwrap_or_default().to_string()) {
            by_device
                .entry(e["subject"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(e["data"]["sequence"].as_i64().unwrap_or(-1));
        }
    }
    assert_eq!(
        ids,
        all.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>()
    );
    assert!(
        by_device.values().all(|seqs| seqs == &[1, 2]),
        "per-device order holds"
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_mid_stream_loses_nothing_and_keeps_per_device_order(
) -> anyhow::Result<()> {
    use cohort::relay::Relay;
    let h = Harness::start_with(std::sync::Arc::new(cohort::worker::SystemClock), |config| {
        config.worker.embedded_relay = false;
        config.relay.batch_size = 20;
    })
    .await?;
    let half = h.group("half", tags_filter("half")).await?;
    for i in 0..600 {
        let device = format!("dev-{i:04}");
        let event = json!({"eventId": format!("e-{i}"), "orgId": ORG, "deviceId": device, "sequence": 1,
            "attributes": {"firmwareVersion": "1", "tags": if i % 2 == 0 { json!(["half"]) } else { json!([]) }}});
        h.kafka
            .produce(&h.input, &device, event.to_string())
            .await?;
    }
    devices_applied(&h, 600, 1).await?;
    let start_relay = || async {
        let relay = Relay::build(&h.config, h.kafka.bootstrap_servers(), h.pool().clone())?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(relay.run_until_stopped(async {
            let _ = stopped.await;
        }));
        anyhow::Ok((stop, task))
    };
    let (_stop, relay) = start_relay().await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    // Kill the relay once it has published some, but not all, of the 600 events.
    let pool = h.pool().clone();
    eventually(LIMIT, "the relay is part-way through", || {
        let pool = pool.clone();
        async move {
            let published: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
                    .fetch_one(&pool)
                    .await?;
            Ok((published > 0).then_some(()))
        }
    })
    .await?;
    relay.abort();
    let _ = relay.await;
    // More changes while no relay runs: they wait in the outbox. (All 600 default events are committed
    // first, so the group release is never coalesced with them.)
    settled(&h, 600).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(half), "2", "ops").await?;
    let all = settled(&h, 900).await?;
    let (stop, relay) = start_relay().await?;
    let topic = h.config.kafka.output_topic.clone();
    let published = h
        .kafka
        .consume_until(&topic, LIMIT, |messages| {
            let ids: BTreeSet<&[u8]> = messages.iter().filter_map(|m| m.header("ce_id")).collect();
            ids.len() >= 900
        })
        .await?;
    let _ = stop.send(());
    relay.await??;
    let mut kept: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for m in &published {
        let e: Value = serde_json::from_slice(m.payload.as_deref().unwrap_or_default())?;
        if ids.insert(e["id"].as_str().unwrap_or_default().to_string()) {
            kept.entry(e["subject"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(e["data"]["sequence"].as_i64().unwrap_or(-1));
        }
    }
    // Every committed change reached the topic; after de-duplication each id once, in order per device.
    assert_eq!(
        ids,
        all.iter().map(|r| r.id.clone()).collect::<BTreeSet<_>>()
    );
    for (device, sequences) in &kept {
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, &expected, "{device}");
    }
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_a_release_moves_its_devices_back_as_previewed() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let a = h.group("a", tags_filter("a")).await?;
    let first = h
        .send("dev-1", json!({"tags": ["a"], "firmwareVersion": "1"}))
        .await?;
    let second = h
        .send("dev-2", json!({"tags": [], "firmwareVersion": "1"}))
        .await?;
    h.applied("dev-1", first).await?;
    h.applied("dev-2", second).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, 2).await?; // both: none → 1
    let release = firmware::release(h.pool(), ORG, ReleaseTarget::Group(a), "3", "ops").await?;
    settled(&h, 3).await?; // dev-1: 1 → 3
    let impact = firmware::preview(
        h.pool(),
        ORG,
        &Proposal::Withdraw {
            release: release.id,
        },
        10,
    )
    .await?;
    assert_eq!((impact.examined, impact.changed), (1, 1));
    assert_eq!(
        impact.transitions,
        BTreeMap::from([("3 -> 1".to_string(), 1)])
    );
    firmware::withdraw(h.pool(), release.id).await?;
    let all = settled(&h, 4).await?;
    let last = all.last().expect("four events");
    assert_eq!(
        (
            last.device.as_str(),
            last.from.as_deref(),
            last.to.as_deref()
        ),
        ("dev-1", Some("3"), Some("1"))
    );
    assert_eq!(
        target_of(&h, "dev-1").await?,
        (Some("1".into()), "default".into(), None)
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_that_mix_version_kinds_or_default_to_an_unseen_version_are_refused(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let a = h.group("a", tags_filter("a")).await?;
    let first = h.send("dev-1", json!({"firmwareVersion": "2.4.1"})).await?;
    h.applied("dev-1", first).await?;
    let unseen = firmware::release(h.pool(), ORG, ReleaseTarget::Default, "2.5.0", "ops").await;
    assert!(
        matches!(unseen, Err(firmware::ReleaseError::NoDeviceRunsIt(_))),
        "{unseen:?}"
    );
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "2.4.1", "ops").await?;
    let mixed = firmware::release(h.pool(), ORG, ReleaseTarget::Group(a), "7", "ops").await;
    let message = mixed.expect_err("mixing kinds is refused").to_string();
    assert_eq!(
        message,
        "version \"7\" is integer, but this org's releases use semver versions"
    );
    let garbage = firmware::release(h.pool(), ORG, ReleaseTarget::Group(a), "banana", "ops").await;
    assert!(matches!(garbage, Err(firmware::ReleaseError::Version(_))));
    // A release to a group that is not the org's is refused too.
    let other = firmware::release(
        h.pool(),
        ORG,
        ReleaseTarget::Group(Uuid::new_v4()),
        "2.6.0",
        "ops",
    )
    .await;
    assert!(matches!(other, Err(firmware::ReleaseError::GroupNotFound)));
    // What devices run follows their reports: once dev-1 reports 2.5.0, that can be the default, and
    // 2.4.1, which no device runs any more, cannot.
    let upgraded = h.send("dev-1", json!({"firmwareVersion": "2.5.0"})).await?;
    h.applied("dev-1", upgraded).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "2.5.0", "ops").await?;
    let gone = firmware::release(h.pool(), ORG, ReleaseTarget::Default, "2.4.1", "ops").await;
    assert!(
        matches!(gone, Err(firmware::ReleaseError::NoDeviceRunsIt(_))),
        "{gone:?}"
    );
    h.stop().await
}

/// The cause of each rollout event, in outbox order.
async fn causes(h: &Harness) -> anyhow::Result<Vec<Value>> {
    let rows: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(&h.config.kafka.output_topic)
            .fetch_all(h.pool())
            .await?;
    rows.into_iter()
        .map(|(payload,)| {
            let e: Value = serde_json::from_slice(&payload)?;
            Ok(e["data"]["cause"].clone())
        })
        .collect()
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_to_a_static_group_follows_the_members_the_api_adds_and_removes(
) -> anyhow::Result<()> {
    use cohort::store::members;
    let mut h = Harness::start().await?;
    for device in ["dev-1", "dev-2", "dev-3"] {
        let seq = h.send(device, json!({"firmwareVersion": "1"})).await?;
        h.applied(device, seq).await?;
    }
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, 3).await?;
    let canary = h.static_group("canary").await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(canary), "2", "ops").await?;
    // No members yet: nothing changes.
    settled(&h, 3).await?;

    members::add_static(h.pool(), ORG, canary, &ids(&["dev-1", "dev-2"]), "alice").await?;
    let all = settled(&h, 5).await?;
    let moved: BTreeSet<&str> = all[3..].iter().map(|r| r.device.as_str()).collect();
    assert_eq!(moved, BTreeSet::from(["dev-1", "dev-2"]));
    assert!(all[3..]
        .iter()
        .all(|r| r.from.as_deref() == Some("1") && r.to.as_deref() == Some("2")));
    assert_eq!(
        target_of(&h, "dev-1").await?,
        (Some("2".into()), "group".into(), Some(canary))
    );
    let cause = &causes(&h).await?[4];
    assert_eq!(cause["type"], "control");
    assert_eq!(cause["kind"], "static_members");

    members::remove_static(h.pool(), ORG, canary, &ids(&["dev-1"]), "alice").await?;
    let all = settled(&h, 6).await?;
    assert_eq!(
        (
            all[5].device.as_str(),
            all[5].from.as_deref(),
            all[5].to.as_deref()
        ),
        ("dev-1", Some("2"), Some("1"))
    );
    assert_eq!(target_of(&h, "dev-1").await?.1, "default");
    // Withdrawing the group's release moves the remaining member back, as for a dynamic group.
    let release: Uuid = sqlx::query_scalar(
        "SELECT id FROM firmware_releases WHERE group_id = $1 AND withdrawn_at IS NULL",
    )
    .bind(canary)
    .fetch_one(h.pool())
    .await?;
    firmware::withdraw(h.pool(), release).await?;
    let all = settled(&h, 7).await?;
    assert_eq!(all[6].device, "dev-2");
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_settings_from_the_api_lock_and_flag_the_device_in_pipeline_order(
) -> anyhow::Result<()> {
    use cohort::store::control::LockChange;
    use cohort::store::members::{set_device_settings, MemberError};
    let mut h = Harness::start().await?;
    let seq = h.send("dev-1", json!({"firmwareVersion": "1"})).await?;
    h.applied("dev-1", seq).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, 1).await?;
    let settings = |development: Option<bool>, lock: LockChange| {
        set_device_settings(h.pool(), ORG, "dev-1", development, lock, "alice")
    };
    let stored = || async {
        anyhow::Ok(
            sqlx::query_as::<_, (bool, Option<String>)>(
                "SELECT is_development, firmware_lock FROM devices WHERE id = 'dev-1'",
            )
            .fetch_one(h.pool())
            .await?,
        )
    };

    let control_id = settings(None, LockChange::Set(" 7 ".into())).await?;
    let all = settled(&h, 2).await?;
    assert_eq!(
        (
            all[1].from.as_deref(),
            all[1].to.as_deref(),
            all[1].reason.as_str()
        ),
        (Some("1"), Some("7"), "locked")
    );
    assert_eq!(
        causes(&h).await?[1],
        json!({"type": "control", "controlId": control_id, "kind": "device_settings"})
    );
    assert_eq!(stored().await?, (false, Some("7".into())));
    settings(Some(true), LockChange::Unchanged).await?;
    settled(&h, 3).await?;
    assert_eq!(
        target_of(&h, "dev-1").await?,
        (None, "development".into(), None)
    );
    settings(Some(false), LockChange::Clear).await?;
    settled(&h, 4).await?;
    assert_eq!(stored().await?, (false, None));
    // Locking to the version it already targets changes the reason only: no event.
    settings(None, LockChange::Set("1".into())).await?;
    h.control_applied().await?;
    settled(&h, 4).await?;
    assert_eq!(target_of(&h, "dev-1").await?.1, "locked");
    // An input event applied after the API's entry wins, as the last one in pipeline order.
    let unlock = h.sequence + 1;
    let event = json!({"eventId": "unlock", "orgId": ORG, "deviceId": "dev-1", "sequence": unlock,
                       "firmwareLock": null});
    h.produce("dev-1", event.to_string()).await?;
    h.applied("dev-1", unlock).await?;
    assert_eq!(stored().await?, (false, None));
    assert_eq!(target_of(&h, "dev-1").await?.1, "default");
    let path: Vec<(Option<String>, Option<String>)> = rollouts(&h)
        .await?
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        path,
        vec![
            (None, s("1")),
            (s("1"), s("7")),
            (s("7"), None),
            (None, s("1"))
        ]
    );

    // Refusals: unknown devices (another org's included) and versions that are not versions.
    groups::create_org(h.pool(), "globex", "Globex").await?;
    let refused = set_device_settings(
        h.pool(),
        "globex",
        "dev-1",
        Some(true),
        LockChange::Unchanged,
        "a",
    )
    .await;
    assert!(
        matches!(refused, Err(MemberError::DeviceNotFound)),
        "{refused:?}"
    );
    let refused = set_device_settings(
        h.pool(),
        ORG,
        "ghost",
        Some(true),
        LockChange::Unchanged,
        "a",
    )
    .await;
    assert!(
        matches!(refused, Err(MemberError::DeviceNotFound)),
        "{refused:?}"
    );
    let refused = settings(None, LockChange::Set("not a version".into())).await;
    assert_eq!(
        refused.unwrap_err().to_string(),
        "invalid firmware lock: version \"not a version\" is neither a whole number nor a semantic version (MAJOR.MINOR.PATCH)"
    );
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}
