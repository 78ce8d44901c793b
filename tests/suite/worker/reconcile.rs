//! `cohort reconcile`: finds drift between PostgreSQL and the rules, ignores a consistent store, and repairs
//! through the owning worker's normal path while the worker runs.

use cohort::reconcile::{self, Options};
use cohort::store::firmware::{self, ReleaseTarget};
use cohort_testkit::app::{Harness, ORG};
use serde_json::json;

fn options() -> Options {
    Options {
        org: Some(ORG.into()),
        examples: 50,
        settle: std::time::Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reports_drift_and_repairs_it_through_the_workers() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let linux = h
        .group(
            "linux",
            json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]}),
        )
        .await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Group(linux), "2.0.0", "test").await?;
    let mut last = Vec::new();
    for i in 0..10 {
        let device = format!("r-{i}");
        let os = if i % 2 == 0 { "linux" } else { "windows" };
        last.push((
            device.clone(),
            h.send(&device, json!({"osType": os})).await?,
        ));
    }
    for (device, seq) in &last {
        h.applied(device, *seq).await?;
    }
    h.control_applied().await?;
    h.wait_members(
        linux,
        &[
            ("r-0", false),
            ("r-2", false),
            ("r-4", false),
            ("r-6", false),
            ("r-8", false),
        ],
    )
    .await?;

    // What the workers wrote is what the rules say.
    let clean = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert!(!clean.has_drift(), "{}", reconcile::render(&clean));
    assert_eq!(clean.devices_checked, 10);
    assert_eq!(clean.dynamic_groups, 1);

    // Break the store behind the worker's back: a lost membership, a stray one, a wrong target.
    sqlx::query("DELETE FROM device_group_memberships WHERE device_id = 'r-2'")
        .execute(h.pool())
        .await?;
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) VALUES ($1, 'r-3', 'dynamic_rule')",
    )
    .bind(linux)
    .execute(h.pool())
    .await?;
    sqlx::query("UPDATE devices SET target_version = '9.9.9' WHERE id = 'r-4'")
        .execute(h.pool())
        .await?;
    let drift = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert_eq!(
        drift.missing_memberships,
        1,
        "{}",
        reconcile::render(&drift)
    );
    assert_eq!(drift.extra_memberships, 1);
    // r-2 and r-3 resolve differently from what is stored too, and r-4's target is wrong.
    assert_eq!(drift.wrong_targets, 3);
    let mut drifted = drift.drifted[0].1.clone();
    drifted.sort();
    assert_eq!(drifted, ["r-2", "r-3", "r-4"]);
    assert!(drift
        .examples
        .iter()
        .any(|d| d.device_id == "r-2" && d.kind == "missing_membership"));

    // Repair: the owning worker re-reads the devices and writes the difference, with log rows.
    let repair = reconcile::repair(h.pool(), &drift, "test").await?;
    assert_eq!(repair.entries.len(), 1);
    // Every change went through the memberships' triggers: no count drifted.
    assert_eq!(repair.counts_reset, 0);
    h.control_applied().await?;
    let repaired = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert!(!repaired.has_drift(), "{}", reconcile::render(&repaired));
    h.wait_members(
        linux,
        &[
            ("r-0", false),
            ("r-2", false),
            ("r-4", false),
            ("r-6", false),
            ("r-8", false),
        ],
    )
    .await?;
    let logged: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT device_id, action, reason FROM group_membership_log \
         WHERE cause ->> 'kind' = 'reevaluate' ORDER BY device_id",
    )
    .fetch_all(h.pool())
    .await?;
    assert_eq!(
        logged,
        [
            (
                "r-2".to_string(),
                "added".to_string(),
                "filter_match".to_string()
            ),
            (
                "r-3".to_string(),
                "removed".to_string(),
                "filter_unmatch".to_string()
            ),
        ]
    );
    let targets: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, target_version FROM devices WHERE id IN ('r-2', 'r-3', 'r-4') ORDER BY id",
    )
    .fetch_all(h.pool())
    .await?;
    assert_eq!(
        targets,
        [
            ("r-2".to_string(), Some("2.0.0".to_string())),
            ("r-3".to_string(), None),
            ("r-4".to_string(), Some("2.0.0".to_string())),
        ]
    );
    // And the worker goes on from the repaired state.
    let seq = h.send("r-2", json!({"osType": "windows"})).await?;
    h.applied("r-2", seq).await?;
    h.wait_members(
        linux,
        &[
            ("r-0", false),
            ("r-4", false),
            ("r-6", false),
            ("r-8", false),
        ],
    )
    .await?;
    h.stop().await
}
