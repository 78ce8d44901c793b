//! Releases the API refuses, releases to static groups, and device settings from the API.

use std::collections::BTreeSet;

use cohort::store::firmware::ReleaseTarget;
use cohort::store::{firmware, groups};
use cohort_testkit::app::{Harness, ORG};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{rollouts, settled, tags_filter, target_of};

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

pub(super) fn ids(list: &[&str]) -> Vec<String> {
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
