//! Rollout progress end to end: what devices report moves their release's counts (targeted, running,
//! previous, failed, reverted), a halt threshold reached by the Nth failure pauses (or rolls back) the
//! release with that failure as the cause, a paused release selects no further device, resume and
//! withdraw act on it, a stage advances by itself after its soak time, and every count agrees with a
//! recount from scratch.

use cohort::firmware::progress::{Counts, FailureSignal, Thresholds};
use cohort::store::firmware::{self, Health, Mode, Proposal, ReleaseTarget};
use cohort_testkit::app::{check_oracle, Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use serde_json::{json, Value};
use uuid::Uuid;

use super::stages::bucket;
use super::{devices_applied, settled, tags_filter};

/// Sends device `device`'s event number `sequence` with `attributes`.
async fn report(h: &Harness, device: &str, sequence: i64, attributes: Value) -> anyhow::Result<()> {
    let event = json!({"eventId": format!("{device}-{sequence}"), "orgId": ORG, "deviceId": device,
        "sequence": sequence, "attributes": attributes});
    h.kafka.produce(&h.input, device, event.to_string()).await?;
    Ok(())
}

/// `n` devices of the "fleet" group, running `1`.
async fn fleet(h: &Harness, n: usize) -> anyhow::Result<(Uuid, Vec<String>)> {
    let group = h.group("fleet", tags_filter("fleet")).await?;
    let devices: Vec<String> = (0..n).map(|i| format!("dev-{i:02}")).collect();
    for device in &devices {
        report(
            h,
            device,
            1,
            json!({"firmwareVersion": "1", "tags": ["fleet"]}),
        )
        .await?;
    }
    devices_applied(h, n as i64, 1).await?;
    Ok((group, devices))
}

fn failure() -> FailureSignal {
    FailureSignal {
        attribute: "custom.otaStatus".into(),
        value: json!("failed"),
    }
}

/// Releases `2` to `group`, watched as `health` says; its id.
async fn release(
    h: &Harness,
    group: Uuid,
    stages: Vec<u16>,
    health: Health,
) -> anyhow::Result<Uuid> {
    let proposal = Proposal::Release {
        target: ReleaseTarget::Group(group),
        version: "2".into(),
        stages,
        health,
    };
    let applied = firmware::apply(h.pool(), ORG, &proposal, "ops", 0, Mode::Write).await?;
    Ok(applied.release.expect("written").id)
}

/// Waits until the release's counts are `want` (the worker applies events in the background).
async fn counts_reach(h: &Harness, release: Uuid, want: Counts) -> anyhow::Result<()> {
    let pool = h.pool().clone();
    eventually(LIMIT, &format!("progress {want:?}"), || {
        let pool = pool.clone();
        async move {
            let now = firmware::progress::counts(&pool, release).await?;
            Ok((now == want).then_some(()))
        }
    })
    .await
}

fn counts(targeted: i64, running: i64, failed: i64, reverted: i64) -> Counts {
    Counts {
        targeted,
        running,
        failed,
        reverted,
    }
}

/// The release's state and why it was halted.
async fn state_of(h: &Harness, release: Uuid) -> anyhow::Result<(String, Option<Value>)> {
    Ok(
        sqlx::query_as("SELECT state, halted FROM firmware_releases WHERE id = $1")
            .bind(release)
            .fetch_one(h.pool())
            .await?,
    )
}

/// Progress counts and standings agree with a recount from scratch.
async fn no_drift(h: &Harness) -> anyhow::Result<()> {
    let drift = firmware::progress::drift(h.pool(), None).await?;
    anyhow::ensure!(drift.is_empty(), "progress drifted: {drift:?}");
    let report = cohort::reconcile::check(
        h.pool(),
        &h.catalogue,
        &cohort::reconcile::Options {
            org: None,
            examples: 10,
            settle: std::time::Duration::from_millis(200),
        },
    )
    .await?;
    anyhow::ensure!(
        !report.has_drift(),
        "{}",
        cohort::reconcile::render(&report)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_devices_report_moves_their_release_progress() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (group, devices) = fleet(&h, 6).await?;
    let health = Health {
        failure: Some(failure()),
        ..Health::default()
    };
    let id = release(&h, group, vec![10_000], health).await?;
    settled(&h, devices.len()).await?;
    counts_reach(&h, id, counts(6, 0, 0, 0)).await?;

    // Four update; one of them then goes back to 1; one reports failure; one reports nothing new.
    for device in &devices[..4] {
        report(&h, device, 2, json!({"firmwareVersion": "02"})).await?;
    }
    report(&h, &devices[4], 2, json!({"custom.otaStatus": "failed"})).await?;
    counts_reach(&h, id, counts(6, 4, 1, 0)).await?;
    report(&h, &devices[3], 3, json!({"firmwareVersion": "1"})).await?;
    counts_reach(&h, id, counts(6, 3, 1, 1)).await?;
    no_drift(&h).await?;

    // A device whose stored standing is reverted stays so across a re-read, until it runs 2 again.
    report(&h, &devices[3], 4, json!({"firmwareVersion": "2"})).await?;
    report(
        &h,
        &devices[4],
        3,
        json!({"firmwareVersion": "2", "custom.otaStatus": "ok"}),
    )
    .await?;
    report(&h, &devices[5], 2, json!({"firmwareVersion": "2"})).await?;
    counts_reach(&h, id, counts(6, 6, 0, 0)).await?;
    let view: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE target_standing = 'running'), count(*) FILTER (WHERE target_reached) \
         FROM devices WHERE target_release = $1",
    )
    .bind(id)
    .fetch_one(h.pool())
    .await?;
    assert_eq!(view, (6, 6));
    assert!(firmware::progress::counts(h.pool(), id).await?.complete());

    // Leaving the group leaves the release's counts; withdrawing it leaves nothing counted.
    report(&h, &devices[0], 3, json!({"tags": ["other"]})).await?;
    counts_reach(&h, id, counts(5, 5, 0, 0)).await?;
    let withdraw = Proposal::Withdraw { release: id };
    firmware::apply(h.pool(), ORG, &withdraw, "ops", 0, Mode::Write).await?;
    counts_reach(&h, id, counts(0, 0, 0, 0)).await?;
    no_drift(&h).await?;
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nth_failure_pauses_the_release_and_it_selects_no_further_device() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let (group, devices) = fleet(&h, 8).await?;
    let health = Health {
        failure: Some(failure()),
        halt: Some(Thresholds {
            failures: Some(3),
            ..Thresholds::default()
        }),
        soak_seconds: None,
    };
    let id = release(&h, group, vec![10_000], health).await?;
    settled(&h, devices.len()).await?;
    for (n, device) in devices[..2].iter().enumerate() {
        report(&h, device, 2, json!({"custom.otaStatus": "failed"})).await?;
        counts_reach(&h, id, counts(8, 0, n as i64 + 1, 0)).await?;
        assert_eq!(state_of(&h, id).await?.0, "active");
    }
    // The third failure reaches the threshold: the release is paused, and that event is the cause.
    report(&h, &devices[2], 2, json!({"custom.otaStatus": "failed"})).await?;
    let pool = h.pool().clone();
    eventually(LIMIT, "the release paused", || {
        let pool = pool.clone();
        async move {
            let state: String =
                sqlx::query_scalar("SELECT state FROM firmware_releases WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await?;
            Ok((state == "paused").then_some(()))
        }
    })
    .await?;
    let (_, halted) = state_of(&h, id).await?;
    let halted = halted.expect("why it halted");
    assert_eq!(halted["by"], "threshold");
    assert_eq!(halted["threshold"]["threshold"], "failures");
    assert_eq!(halted["counts"]["failed"], 3);
    assert_eq!(halted["deviceId"], devices[2].as_str());
    assert_eq!(halted["cause"]["type"], "event");
    assert_eq!(halted["cause"]["eventId"], format!("{}-2", devices[2]));

    // Paused: devices it targets keep it (no event); a device joining the group is not selected.
    report(
        &h,
        "dev-new",
        1,
        json!({"firmwareVersion": "1", "tags": ["fleet"]}),
    )
    .await?;
    devices_applied(&h, 9, 1).await?;
    settled(&h, devices.len()).await?;
    let target: Option<String> =
        sqlx::query_scalar("SELECT target_version FROM devices WHERE id = 'dev-new'")
            .fetch_one(h.pool())
            .await?;
    assert_eq!(target, None, "a paused release selects no further device");
    assert_eq!(firmware::progress::counts(h.pool(), id).await?.targeted, 8);
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;

    // Resume: its dry run counts the one device it adds, which then gets one event.
    let resume = Proposal::Resume { release: id };
    let dry = firmware::apply(h.pool(), ORG, &resume, "ops", 10, Mode::DryRun).await?;
    assert_eq!(dry.impact.changed, 1);
    firmware::apply(h.pool(), ORG, &resume, "ops", 0, Mode::Write).await?;
    let all = settled(&h, devices.len() + 1).await?;
    assert_eq!(all.last().map(|r| r.device.as_str()), Some("dev-new"));
    assert_eq!(state_of(&h, id).await?, ("active".to_string(), None));
    // Pausing by hand retargets nothing and is recorded; pausing again is refused.
    let pause = Proposal::Pause { release: id };
    let dry = firmware::apply(h.pool(), ORG, &pause, "ops", 10, Mode::DryRun).await?;
    assert_eq!(dry.impact.changed, 0);
    firmware::apply(h.pool(), ORG, &pause, "ops", 0, Mode::Write).await?;
    let (state, halted) = state_of(&h, id).await?;
    assert_eq!(
        (state.as_str(), &halted.expect("why")["by"]),
        ("paused", &json!("operator"))
    );
    let again = firmware::apply(h.pool(), ORG, &pause, "ops", 0, Mode::Write).await;
    assert!(matches!(again, Err(firmware::ReleaseError::State(_))));
    // Withdrawn while paused: every device it targets resolves as if it never existed.
    let withdraw = Proposal::Withdraw { release: id };
    firmware::apply(h.pool(), ORG, &withdraw, "ops", 0, Mode::Write).await?;
    settled(&h, 2 * (devices.len() + 1)).await?;
    no_drift(&h).await?;
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_with_rollback_moves_every_device_back_with_one_event_each() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (group, devices) = fleet(&h, 6).await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    settled(&h, devices.len()).await?;
    let health = Health {
        failure: None,
        halt: Some(Thresholds {
            revert_rate: Some(0.3),
            rollback: true,
            ..Thresholds::default()
        }),
        soak_seconds: None,
    };
    let id = release(&h, group, vec![10_000], health).await?;
    settled(&h, 2 * devices.len()).await?;
    for device in &devices {
        report(&h, device, 2, json!({"firmwareVersion": "2"})).await?;
    }
    counts_reach(&h, id, counts(6, 6, 0, 0)).await?;
    // One revert in six is below 30%; the second reaches it and rolls the release back.
    report(&h, &devices[0], 3, json!({"firmwareVersion": "1"})).await?;
    counts_reach(&h, id, counts(6, 5, 0, 1)).await?;
    report(&h, &devices[1], 3, json!({"firmwareVersion": "1"})).await?;
    let back = settled(&h, 3 * devices.len()).await?;
    let rolled: Vec<_> = back[2 * devices.len()..].iter().collect();
    assert!(rolled
        .iter()
        .all(|r| r.from.as_deref() == Some("2") && r.to.as_deref() == Some("1")));
    let (state, halted) = state_of(&h, id).await?;
    assert_eq!(state, "rolled_back");
    let halted = halted.expect("why");
    assert_eq!(halted["threshold"]["threshold"], "revertRate");
    assert_eq!(halted["deviceId"], devices[1].as_str());
    counts_reach(&h, id, counts(0, 0, 0, 0)).await?;
    no_drift(&h).await?;
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_advances_by_itself_after_its_soak_time_while_healthy() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let (group, devices) = fleet(&h, 40).await?;
    let health = Health {
        soak_seconds: Some(1),
        ..Health::default()
    };
    let id = release(&h, group, vec![2_500, 10_000], health).await?;
    // The watch advances it once its first stage has run a second: every device ends on 2, once each.
    let all = settled(&h, devices.len()).await?;
    let first: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|r| r.release["stage"] == 0)
        .map(|r| r.device.as_str())
        .collect();
    let quarter: std::collections::BTreeSet<&str> = devices
        .iter()
        .filter(|d| bucket(group, "2", d) < 2_500)
        .map(String::as_str)
        .collect();
    assert_eq!(first, quarter, "the first stage selected its quarter");
    let stage: i32 = sqlx::query_scalar("SELECT stage FROM firmware_releases WHERE id = $1")
        .bind(id)
        .fetch_one(h.pool())
        .await?;
    assert_eq!(stage, 1);
    let second = all.iter().filter(|r| r.release["stage"] == 1).count();
    assert_eq!(
        second,
        devices.len() - quarter.len(),
        "the rest came with the advance"
    );
    counts_reach(&h, id, counts(40, 0, 0, 0)).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_drifted_progress_and_standings_and_repair_mends_both() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let (group, devices) = fleet(&h, 5).await?;
    let health = Health {
        failure: Some(failure()),
        ..Health::default()
    };
    let id = release(&h, group, vec![10_000], health).await?;
    settled(&h, devices.len()).await?;
    report(&h, &devices[0], 2, json!({"firmwareVersion": "2"})).await?;
    counts_reach(&h, id, counts(5, 1, 0, 0)).await?;
    no_drift(&h).await?;
    // A count and a device's standing drift behind the workers' backs.
    sqlx::query(
        "UPDATE release_progress SET targeted = targeted + 7 WHERE release_id = $1 \
         AND partition = (SELECT min(partition) FROM release_progress WHERE release_id = $1)",
    )
    .bind(id)
    .execute(h.pool())
    .await?;
    sqlx::query("UPDATE devices SET target_standing = 'failed' WHERE id = $1")
        .bind(&devices[1])
        .execute(h.pool())
        .await?;
    let options = cohort::reconcile::Options {
        org: None,
        examples: 10,
        settle: std::time::Duration::from_millis(100),
    };
    let drift = cohort::reconcile::check(h.pool(), &h.catalogue, &options).await?;
    assert_eq!(drift.wrong_standings, 1);
    assert_eq!(drift.wrong_progress.len(), 1);
    assert_eq!(drift.wrong_progress[0].release_id, id);
    assert_eq!(drift.wrong_progress[0].stored.targeted, 12);
    // The stored standing counts one failure that the device does not report.
    assert_eq!(drift.wrong_progress[0].counted, counts(5, 1, 1, 0));
    let text = cohort::reconcile::render(&drift);
    assert!(
        text.contains("DRIFT in the progress counts of 1 release(s)"),
        "{text}"
    );
    let repair = cohort::reconcile::repair(h.pool(), &drift, "test").await?;
    assert_eq!(repair.progress_reset, 1);
    assert_eq!(
        repair.entries.len(),
        1,
        "the drifted device is re-evaluated"
    );
    // The worker stands the device again, moving the reset counts back to the truth.
    counts_reach(&h, id, counts(5, 1, 0, 0)).await?;
    let pool = h.pool().clone();
    eventually(LIMIT, "no drift after the repair", || {
        let pool = pool.clone();
        async move {
            let drift = firmware::progress::drift(&pool, None).await?;
            let standing: Option<String> =
                sqlx::query_scalar("SELECT target_standing FROM devices WHERE id = 'dev-01'")
                    .fetch_one(&pool)
                    .await?;
            Ok((drift.is_empty() && standing.as_deref() == Some("previous")).then_some(()))
        }
    })
    .await?;
    no_drift(&h).await?;
    h.stop().await
}
