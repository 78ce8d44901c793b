//! `cohort bench` on a small fleet, in process: every phase runs, the oracle check passes, and each group
//! change of the group-changes phase settles with a `deviceCount` equal to what PostgreSQL holds.

use anyhow::Context as _;
use cohort::bench::{self, BenchOptions};
use cohort::synthetic::fleet::Mix;
use cohort_testkit::TestDatabase;

/// A run small enough for the suite: 3,000 devices in two orgs, 40 groups.
fn small(db: &TestDatabase) -> BenchOptions {
    BenchOptions {
        devices: 3_000,
        orgs: 2,
        groups: 40,
        events: 3_000,
        latency_seconds: 2,
        latency_warmup_seconds: 1,
        ceiling_events: 2_000,
        database_url: db.url().to_owned(),
        ..BenchOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_passes_its_check_and_each_group_change_settles_with_its_counts(
) -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let options = small(&db);
    let report = bench::run(&options).await?;
    assert!(report.correctness.ok(), "{:?}", report.correctness);
    let text = bench::render(&report);
    assert!(text.contains("group changes and reads"), "{text}");
    let changes = report.changes.as_ref().context("no group-changes phase")?;
    let events =
        options.events + report.latency.warmup_events + report.latency.events + changes.events;
    assert_eq!(report.correctness.records_committed, events as u64);

    // The org's 20 groups fit one page; one was read 50 times.
    assert_eq!((changes.listed, changes.org_groups), (20, 20));
    assert_eq!(changes.group_reads.requests, 50);

    // The group matches what the same filter previewed (no event changes `osType`): about 30% of the
    // org's 1,500 devices.
    let (create, edit, delete) = (&changes.create, &changes.edit, &changes.delete);
    assert_eq!(create.device_count, Some(create.memberships));
    assert_eq!(
        create.memberships as u64,
        changes.previews.one_field_matched
    );
    let share = create.memberships as f64 / changes.org_devices as f64;
    assert!((0.2..0.4).contains(&share), "{share}");
    // The edit keeps the hostnames ending in an even digit: about half.
    assert_eq!(edit.device_count, Some(edit.memberships));
    let kept = edit.memberships as f64 / create.memberships as f64;
    assert!((0.35..0.65).contains(&kept), "{kept}");
    // The deleted group is gone, with no members left.
    assert_eq!((delete.device_count, delete.memberships), (None, 0));
    assert!(create.control_id < edit.control_id && edit.control_id < delete.control_id);

    let p = &changes.previews;
    assert_eq!(
        p.concurrent_answered + p.concurrent_refused + p.concurrent_other,
        p.concurrent
    );
    assert!(p.concurrent_answered >= 1, "{p:?}");
    assert_eq!(p.concurrent_other, 0, "{p:?}");
    assert_eq!(changes.release_dry_run.examined, create.memberships as u64);

    // In PostgreSQL: the group is deleted and its log ends with every member removed.
    let (deleted, last_added): (bool, i64) = sqlx::query_as(
        "SELECT g.deleted_at IS NOT NULL, \
           (SELECT count(*) FROM (SELECT DISTINCT ON (device_id) action FROM group_membership_log \
              WHERE group_id = g.id ORDER BY device_id, id DESC) l WHERE action = 'added') \
         FROM device_groups g WHERE g.name = 'bench-changes'",
    )
    .fetch_one(db.pool())
    .await?;
    assert!(deleted);
    assert_eq!(last_added, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_run_writes_device_rows_and_almost_no_membership_changes() -> anyhow::Result<()>
{
    let db = TestDatabase::new().await?;
    let options = BenchOptions {
        latency_seconds: 1,
        mix: Mix::Heartbeat,
        rate: Some(500.0),
        skip_changes: true,
        ..small(&db)
    };
    let report = bench::run(&options).await?;
    assert!(report.correctness.ok(), "{:?}", report.correctness);
    let text = bench::render(&report);
    assert!(text.contains("heartbeat events"));
    assert!((400.0..600.0).contains(&report.latency.achieved_rate));
    // Heartbeats reach the devices in turn: as many events as devices have every one report, and the
    // memory then is reported against its goal.
    assert_eq!(report.throughput.devices_reported, options.devices);
    assert!(report.goals.memory_reported.is_some());
    assert!(text.contains("once every device has reported"), "{text}");
    // A heartbeat rewrites its device and changes a membership only where a growing uptime crosses a
    // threshold: a few seconds of growth cross almost none. (The ceiling's events share one instant, so
    // a device's second heartbeat in a run repeats its first and writes nothing: on 3,000 devices, many.)
    let ceiling = &report.ceiling;
    assert!(ceiling.device_rows_per_event > 0.5, "{ceiling:?}");
    assert!(ceiling.log_rows_per_event < 0.05, "{ceiling:?}");
    assert!(report.throughput.log_rows_per_event < Some(0.05));
    Ok(())
}
