//! Staged releases end to end: a stage selects exactly the devices a stable hash of the release (its
//! target and version) and the device puts below its share — recomputed here from the documented
//! formula — and advancing adds only new devices, one rollout-target event each, naming the release and
//! its stage.

use std::collections::BTreeSet;

use cohort::store::firmware::{self, Mode, Proposal, ReleaseError, ReleaseTarget};
use cohort_testkit::app::{check_oracle, Harness, ORG};
use serde_json::json;
use uuid::Uuid;

use super::{devices_applied, settled, tags_filter, Rollout};

/// The documented bucket: FNV-1a 64 over the group id's bytes, the version's, a zero byte and the device
/// id's, mixed by SplitMix64's finalizer, modulo 10,000.
pub(super) fn bucket(group: Uuid, version: &str, device: &str) -> u16 {
    let mut bytes = group.as_bytes().to_vec();
    bytes.extend_from_slice(version.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(device.as_bytes());
    let mut h: u64 = 14695981039346656037;
    for b in &bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(1099511628211);
    }
    let mut z = h.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    ((z ^ (z >> 31)) % 10_000) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_release_selects_the_hashed_share_and_each_stage_adds_only_new_devices(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let group = h.group("fleet", tags_filter("fleet")).await?;
    let devices: Vec<String> = (0..600).map(|i| format!("dev-{i:03}")).collect();
    for (i, device) in devices.iter().enumerate() {
        let event = json!({"eventId": format!("e-{i}"), "orgId": ORG, "deviceId": device, "sequence": 1,
            "attributes": {"firmwareVersion": "1", "tags": ["fleet"]}});
        h.kafka.produce(&h.input, device, event.to_string()).await?;
    }
    devices_applied(&h, devices.len() as i64, 1).await?;
    let selected = |share: u16| -> BTreeSet<String> {
        devices
            .iter()
            .filter(|d| bucket(group, "2", d) < share)
            .cloned()
            .collect()
    };
    let (ten, half) = (selected(1_000), selected(5_000));
    assert!(!ten.is_empty() && ten.len() < half.len() && half.len() < devices.len());

    // 10%, then 50%, then everyone: each stage's dry run counts exactly the devices it adds.
    let release = Proposal::Release {
        health: Default::default(),
        target: ReleaseTarget::Group(group),
        version: "2".into(),
        stages: vec![1_000, 5_000, 10_000],
    };
    let dry = firmware::apply(h.pool(), ORG, &release, "ops", 1_000, Mode::DryRun).await?;
    assert_eq!(dry.impact.changed, ten.len());
    let applied = firmware::apply(h.pool(), ORG, &release, "ops", 0, Mode::Write).await?;
    let id = applied.release.expect("written").id;
    let first = settled(&h, ten.len()).await?;
    let devices_of = |events: &[Rollout]| -> BTreeSet<String> {
        events.iter().map(|r| r.device.clone()).collect()
    };
    assert_eq!(
        devices_of(&first),
        ten,
        "the 10% stage selects the hashed set"
    );
    for r in &first {
        assert_eq!(r.release, json!({"id": id, "stage": 0, "percentage": 10.0}));
    }

    let advance = Proposal::Advance {
        release: id,
        stage: None,
    };
    let dry = firmware::apply(h.pool(), ORG, &advance, "ops", 1_000, Mode::DryRun).await?;
    assert_eq!(dry.impact.changed, half.len() - ten.len());
    firmware::apply(h.pool(), ORG, &advance, "ops", 0, Mode::Write).await?;
    let second = settled(&h, half.len()).await?.split_off(ten.len());
    let added: BTreeSet<String> = half.difference(&ten).cloned().collect();
    assert_eq!(second.len(), added.len(), "one event per device added");
    assert_eq!(devices_of(&second), added, "50% adds only new devices");
    assert!(second
        .iter()
        .all(|r| r.release == json!({"id": id, "stage": 1, "percentage": 50.0})));

    let last = Proposal::Advance {
        release: id,
        stage: Some(2),
    };
    firmware::apply(h.pool(), ORG, &last, "ops", 0, Mode::Write).await?;
    let all = settled(&h, devices.len()).await?;
    let everyone: BTreeSet<String> = all.iter().map(|r| r.device.clone()).collect();
    assert_eq!(everyone.len(), devices.len(), "each device once");
    let refused = firmware::apply(h.pool(), ORG, &advance, "ops", 0, Mode::Write).await;
    assert!(
        matches!(refused, Err(ReleaseError::Stage(_))),
        "no stage after the last"
    );
    // Stored targets agree with resolution from scratch (stages included).
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_a_stage_does_not_select_keep_the_release_behind_it() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let group = h.group("fleet", tags_filter("fleet")).await?;
    let devices: Vec<String> = (0..200).map(|i| format!("dev-{i:03}")).collect();
    for (i, device) in devices.iter().enumerate() {
        let event = json!({"eventId": format!("e-{i}"), "orgId": ORG, "deviceId": device, "sequence": 1,
            "attributes": {"firmwareVersion": "1", "tags": ["fleet"]}});
        h.kafka.produce(&h.input, device, event.to_string()).await?;
    }
    devices_applied(&h, devices.len() as i64, 1).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, devices.len()).await?;
    // A quarter of the group moves to 2; the others stay on the default, with no event.
    let release = Proposal::Release {
        health: Default::default(),
        target: ReleaseTarget::Group(group),
        version: "2".into(),
        stages: vec![2_500, 10_000],
    };
    firmware::apply(h.pool(), ORG, &release, "ops", 0, Mode::Write).await?;
    let quarter: BTreeSet<String> = devices
        .iter()
        .filter(|d| bucket(group, "2", d) < 2_500)
        .cloned()
        .collect();
    let all = settled(&h, devices.len() + quarter.len()).await?;
    let moved: BTreeSet<String> = all[devices.len()..]
        .iter()
        .filter(|r| r.from.as_deref() == Some("1") && r.to.as_deref() == Some("2"))
        .map(|r| r.device.clone())
        .collect();
    assert_eq!(moved, quarter);
    let stayed: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT id, target_version, target_reason FROM devices WHERE NOT (id = ANY($1)) ORDER BY id",
    )
    .bind(quarter.iter().cloned().collect::<Vec<_>>())
    .fetch_all(h.pool())
    .await?;
    assert_eq!(stayed.len(), devices.len() - quarter.len());
    assert!(stayed
        .iter()
        .all(|(_, v, reason)| v.as_deref() == Some("1") && reason == "default"));
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}
