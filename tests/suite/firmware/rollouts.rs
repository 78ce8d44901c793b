//! Rollouts at scale and through failures: a filter change moving a thousand devices, the relay killed
//! mid-stream, a release withdrawn.

use std::collections::{BTreeMap, BTreeSet};

use cohort::store::firmware::{Proposal, ReleaseTarget};
use cohort::store::{firmware, groups};
use cohort_testkit::app::{Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use serde_json::{json, Value};

use super::{devices_applied, settled, tags_filter, target_of};

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
