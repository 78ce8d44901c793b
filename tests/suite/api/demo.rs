//! `cohort demo`, run as a user runs it (the real binary), against a fresh database: its summary keeps the
//! seeded fleet apart from what the stream's events caused, its numbers agree with what is in PostgreSQL
//! afterwards, and running it again against the same database starts afresh.

use std::collections::BTreeMap;

use cohort_testkit::TestDatabase;
use serde_json::Value;

/// Runs the demo on a small fleet as fast as it goes against `url`; returns its standard output and the
/// summary's JSON.
async fn demo(url: &str, events: usize) -> anyhow::Result<(String, Value)> {
    let url = url.to_string();
    let output = cohort_testkit::blocking(
        std::time::Duration::from_secs(600),
        "the demo runs",
        move || {
            Ok(std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
                .args(["demo", "--devices", "1000", "--orgs", "2", "--groups", "12"])
                .args(["--events", &events.to_string(), "--rate", "0"])
                .args(["--listen", "127.0.0.1:0", "--json"])
                // Only what the demo needs: no COHORT_* setting of the caller's reaches it.
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("DATABASE_URL", &url)
                .output()?)
        },
    )
    .await?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("summary"), "{stdout}");
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    Ok((stdout, summary))
}

fn map(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
        .collect()
}

fn sum(v: &Value) -> i64 {
    map(v).values().sum()
}

#[tokio::test]
async fn the_demo_summary_agrees_with_postgresql() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let (stdout, summary) = demo(db.url(), 1500).await?;
    let pool = db.pool();
    let (fleet, stream) = (&summary["fleet"], &summary["stream"]);

    // Membership changes: the stream's are those its events caused; the set-up's (the static groups'
    // members) are the fleet's.
    let changes = |causes: &'static str| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT reason, count(*) FROM group_membership_log \
             WHERE coalesce(cause ->> 'type', '') = ANY (string_to_array($1, ',')) GROUP BY 1",
        )
        .bind(causes)
        .fetch_all(pool)
    };
    let by_events: BTreeMap<String, i64> = changes("event").await?.into_iter().collect();
    assert_eq!(map(&stream["membershipChanges"]), by_events);
    assert!(
        by_events.get("filter_match").copied().unwrap_or(0) > 0,
        "{by_events:?}"
    );
    assert!(!by_events.contains_key("manual"), "{by_events:?}");
    let by_setup: BTreeMap<String, i64> = changes("control,api,").await?.into_iter().collect();
    assert_eq!(map(&fleet["membershipChanges"]), by_setup);
    assert!(
        by_setup.get("manual").copied().unwrap_or(0) > 0,
        "{by_setup:?}"
    );
    assert!(sum(&fleet["memberships"]) > 0, "{fleet}");

    // Rollout events: the initial targets (the set-up's releases) are the fleet's, not the stream's.
    let rollouts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'rollout-targets'")
            .fetch_one(pool)
            .await?;
    let caused_by_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'rollout-targets' \
         AND convert_from(payload, 'UTF8')::jsonb -> 'data' -> 'cause' ->> 'type' = 'event'",
    )
    .fetch_one(pool)
    .await?;
    let initial = sum(&fleet["initialTargets"]);
    assert!(initial > 0, "{fleet}");
    assert_eq!(sum(&stream["rolloutEvents"]), caused_by_events);
    assert_eq!(
        initial + caused_by_events + sum(&summary["timers"]["rolloutEvents"]),
        rollouts
    );
    let targets: i64 = sqlx::query_scalar("SELECT sum(target_sequence)::int8 FROM devices")
        .fetch_one(pool)
        .await?;
    assert_eq!(
        targets, rollouts,
        "one rollout event per resolved-firmware change"
    );
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'device-attribute-changes.dead-letter'",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(dead, 4);
    assert_eq!(sum(&stream["deadLetters"]), dead);
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(pool)
        .await?;
    assert_eq!(devices, 1000);
    assert_eq!(fleet["devices"], 1000);
    // Every group's maintained member count is exact, though the seeding's bulk load skips the triggers
    // that keep the counts.
    cohort_testkit::counts::check_member_counts(pool).await?;
    assert_eq!(stream["events"], 1500);
    // Every event was applied: positions cover every message produced.
    let next: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::int8 FROM partition_positions WHERE topic = 'device-attribute-changes'",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(next, 1504);
    // The throughput is what the worker committed over the stream's wall time; no rate was asked for.
    assert_eq!(stream["recordsCommitted"], 1504);
    assert_eq!(stream["requestedRate"], Value::Null);
    let seconds = stream["seconds"].as_f64().unwrap();
    let rate = stream["eventsPerSecond"].as_f64().unwrap();
    assert!(seconds > 0.0);
    assert!((rate * seconds - 1504.0).abs() < 1e-6, "{stream}");
    // The API's address is printed while it is up, never after: the summary names none.
    let (before, after) = stdout.split_once("\nsummary\n").expect("a summary");
    assert!(before.contains("http://127.0.0.1:"), "{before}");
    assert!(!after.contains("http://"), "{after}");
    db.cleanup().await
}

#[tokio::test]
async fn the_demo_runs_again_against_the_same_database() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    demo(db.url(), 100).await?;
    // A second run, as the walkthrough's `demo --serve` after a first demo: it empties the earlier demo's
    // data and starts afresh, with no flag.
    let (_, summary) = demo(db.url(), 60).await?;
    assert_eq!(summary["stream"]["events"], 60);
    let pool = db.pool();
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(pool)
        .await?;
    assert_eq!(devices, 1000);
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'device-attribute-changes.dead-letter'",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(dead, 4, "only this run's poison messages");
    let next: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::int8 FROM partition_positions WHERE topic = 'device-attribute-changes'",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(next, 64);
    db.cleanup().await
}
