//! Firmware targeting end to end: releases, locks and development devices change resolved targets, and a
//! rollout-target event is emitted exactly when a device's resolved version changes — checked in the
//! outbox (written with the change) and on the topic (published by the relay).

mod dry_run;
mod progress;
mod releases;
mod retarget_cap;
mod rollouts;
mod stages;

use std::collections::{BTreeMap, BTreeSet};

use cohort::store::firmware;
use cohort::store::firmware::{Proposal, ReleaseTarget};
use cohort_testkit::app::{Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use serde_json::{json, Value};
use uuid::Uuid;

/// A rollout-target event as written to the outbox.
#[derive(Debug, Clone)]
struct Rollout {
    device: String,
    id: String,
    sequence: i64,
    from: Option<String>,
    to: Option<String>,
    reason: String,
    /// `data.release`: the release and stage that selected the device (`null` when none decided).
    release: Value,
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
                release: e["data"]["release"].clone(),
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
            health: Default::default(),
            target: ReleaseTarget::Group(prerelease),
            version: "2".into(),
            stages: vec![10_000],
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
