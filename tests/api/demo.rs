//! `cohort demo`, run as a user runs it (the real binary), against a fresh database: its summary shows
//! membership changes and rollout events, and the numbers agree with what is in PostgreSQL afterwards.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{self, TestDatabase};

#[tokio::test]
async fn the_demo_summary_agrees_with_postgresql() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let url = db.url().to_string();
    let output = support::blocking(
        std::time::Duration::from_secs(600),
        "the demo runs",
        move || {
            Ok(std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
                .args([
                    "demo",
                    "--devices",
                    "1000",
                    "--orgs",
                    "2",
                    "--groups",
                    "12",
                    "--events",
                    "1500",
                    "--rate",
                    "0",
                    "--listen",
                    "127.0.0.1:0",
                    "--json",
                ])
                .env("DATABASE_URL", &url)
                .env_remove("COHORT_DATABASE_URL")
                .env_remove("COHORT_KAFKA_BROKERS")
                .env_remove("COHORT_CONFIG")
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
    let pool = db.pool();

    let map = |v: &Value| -> BTreeMap<String, i64> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
            .collect()
    };
    let changes: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT reason, count(*) FROM group_membership_log GROUP BY 1",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    assert_eq!(map(&summary["membershipChanges"]), changes);
    assert!(
        changes.get("filter_match").copied().unwrap_or(0) > 0,
        "{changes:?}"
    );
    assert!(
        changes.get("manual").copied().unwrap_or(0) > 0,
        "{changes:?}"
    );
    let rollouts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = 'rollout-targets'")
            .fetch_one(pool)
            .await?;
    assert!(rollouts > 0);
    assert_eq!(
        map(&summary["rolloutEvents"]).values().sum::<i64>(),
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
    assert_eq!(map(&summary["deadLetters"]).values().sum::<i64>(), dead);
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(pool)
        .await?;
    assert_eq!(devices, 1000);
    assert_eq!(summary["events"], 1500);
    // Every event was applied: positions cover every message produced.
    let next: i64 = sqlx::query_scalar(
        "SELECT sum(next_offset)::int8 FROM partition_positions WHERE topic = 'device-attribute-changes'",
    )
    .fetch_one(pool)
    .await?;
    assert_eq!(next, 1504);
    db.cleanup().await
}
