//! Group member counts kept by the triggers: the fold keeps every sum exact without waiting for a writer,
//! and `cohort reconcile` finds a count that no longer matches the memberships and resets it.

use cohort::reconcile::{self, Options};
use cohort::store::counts::{self, CountDrift};
use cohort::store::members;
use cohort_testkit::app::{Harness, ORG};
use cohort_testkit::counts::{check_member_counts, counted_members};
use cohort_testkit::db::connect;
use cohort_testkit::{within, TestDatabase, OPERATION_TIMEOUT};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// Inserts memberships of `group` for devices `d-<i>` (no device or group rows are needed: the
/// memberships table has no foreign keys).
async fn insert(
    conn: &mut PgConnection,
    group: Uuid,
    range: std::ops::Range<i32>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) \
         SELECT $1, 'd-' || i, 'manual' FROM generate_series($2, $3 - 1) AS i",
    )
    .bind(group)
    .bind(range.start)
    .bind(range.end)
    .execute(conn)
    .await?;
    Ok(())
}

/// A group's count rows: (shard, members), shard 0 first.
async fn rows(conn: &mut PgConnection, group: Uuid) -> anyhow::Result<Vec<(i32, i64)>> {
    Ok(sqlx::query_as(
        "SELECT shard, members FROM group_member_counts WHERE group_id = $1 ORDER BY shard",
    )
    .bind(group)
    .fetch_all(conn)
    .await?)
}

#[tokio::test]
async fn folding_keeps_every_sum_exact_and_skips_rows_a_writer_holds() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    cohort::store::migrate(db.pool()).await?;
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    // Two writers (two backends, so two shards per group).
    let mut one = connect(db.url()).await?;
    let mut two = connect(db.url()).await?;
    let mut folder = connect(db.url()).await?;
    insert(&mut one, a, 0..5).await?;
    insert(&mut two, a, 5..8).await?;
    insert(&mut two, b, 0..3).await?;
    sqlx::query("DELETE FROM device_group_memberships WHERE group_id = $1 AND device_id = 'd-0'")
        .bind(a)
        .execute(&mut one)
        .await?;
    let shards = rows(&mut folder, a).await?;
    assert_eq!(shards.len(), 2, "{shards:?}");
    assert!(shards.iter().all(|(shard, _)| *shard != 0), "{shards:?}");
    assert_eq!(counts::member_count(db.pool(), a).await?, 7);
    assert_eq!(counts::member_count(db.pool(), b).await?, 3);
    check_member_counts(db.pool()).await?;

    // The second writer is adding to b: its row of b is locked until it commits. The fold takes the
    // other rows and leaves that one, without waiting.
    let mut open = two.begin().await?;
    insert(&mut open, b, 3..5).await?;
    let folded = within(OPERATION_TIMEOUT, "fold beside a writer", async {
        Ok(counts::fold(&mut folder).await?)
    })
    .await?;
    assert_eq!(folded, Some(2));
    assert_eq!(rows(&mut folder, a).await?, [(0, 7)]);
    assert_eq!(counts::member_count(db.pool(), a).await?, 7);
    assert_eq!(counts::member_count(db.pool(), b).await?, 3);
    check_member_counts(db.pool()).await?;
    open.commit().await?;
    assert_eq!(counts::member_count(db.pool(), b).await?, 5);
    check_member_counts(db.pool()).await?;

    // The next fold takes it; the totals add up.
    assert_eq!(counts::fold(&mut folder).await?, Some(1));
    assert_eq!(rows(&mut folder, b).await?, [(0, 5)]);
    // Writes after a fold go to shard rows again, beside the total.
    sqlx::query("DELETE FROM device_group_memberships WHERE group_id = $1")
        .bind(a)
        .execute(&mut one)
        .await?;
    let after = rows(&mut folder, a).await?;
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], (0, 7));
    assert_eq!(after[1].1, -7);
    assert_eq!(counts::member_count(db.pool(), a).await?, 0);
    check_member_counts(db.pool()).await?;
    // A total of zero is dropped by the fold (an emptied or deleted group leaves no rows).
    assert_eq!(counts::fold(&mut folder).await?, Some(1));
    assert_eq!(rows(&mut folder, a).await?, Vec::<(i32, i64)>::new());
    assert_eq!(counts::member_count(db.pool(), a).await?, 0);
    check_member_counts(db.pool()).await?;

    // While another session holds the fold lock, a fold does nothing and says so.
    let mut holder = one.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(counts::FOLD_LOCK)
        .execute(&mut *holder)
        .await?;
    insert(&mut two, a, 0..2).await?;
    assert_eq!(counts::fold(&mut folder).await?, None);
    holder.rollback().await?;
    assert_eq!(counts::fold(&mut folder).await?, Some(1));
    assert_eq!(rows(&mut folder, a).await?, [(0, 2)]);
    check_member_counts(db.pool()).await?;

    // TRUNCATE empties the counts with the memberships.
    sqlx::query("TRUNCATE device_group_memberships")
        .execute(&mut two)
        .await?;
    assert_eq!(counts::member_count(db.pool(), a).await?, 0);
    assert_eq!(counts::member_count(db.pool(), b).await?, 0);
    check_member_counts(db.pool()).await?;

    // A membership's keys never change: an update that would move a member between counts is refused.
    insert(&mut one, a, 0..1).await?;
    let moved =
        sqlx::query("UPDATE device_group_memberships SET group_id = $1 WHERE group_id = $2")
            .bind(b)
            .bind(a)
            .execute(&mut one)
            .await;
    assert!(moved.is_err(), "{moved:?}");
    sqlx::query("UPDATE device_group_memberships SET is_pinned = true, added_by = 'dynamic_rule'")
        .execute(&mut one)
        .await?;
    check_member_counts(db.pool()).await?;
    drop((one, two, folder));
    db.cleanup().await
}

fn options() -> Options {
    Options {
        org: Some(ORG.into()),
        examples: 50,
        settle: std::time::Duration::from_millis(200),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reports_a_drifted_member_count_and_repair_resets_it() -> anyhow::Result<()>
{
    let mut h = Harness::start().await?;
    let linux = h
        .group(
            "linux",
            json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]}),
        )
        .await?;
    let picked = h.static_group("picked").await?;
    let mut last = Vec::new();
    for i in 0..4 {
        let device = format!("k-{i}");
        let os = if i % 2 == 0 { "linux" } else { "windows" };
        last.push((
            device.clone(),
            h.send(&device, json!({"osType": os})).await?,
        ));
    }
    for (device, seq) in &last {
        h.applied(device, *seq).await?;
    }
    h.wait_members(linux, &[("k-0", false), ("k-2", false)])
        .await?;
    members::add_static(h.pool(), ORG, picked, &["k-1".into(), "k-3".into()], "test").await?;
    h.control_applied().await?;

    let clean = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert!(!clean.has_drift(), "{}", reconcile::render(&clean));
    assert_eq!(clean.groups_counted, 2);
    assert!(clean.wrong_counts.is_empty());

    // Count rows no writer made: one group counts 5 too many, the other 1 too few.
    sqlx::query(
        "INSERT INTO group_member_counts (group_id, shard, members) VALUES ($1, -1, 5), ($2, -1, -1)",
    )
    .bind(linux)
    .bind(picked)
    .execute(h.pool())
    .await?;
    assert!(check_member_counts(h.pool()).await.is_err());
    let drift = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert!(drift.has_drift());
    let mut wrong = drift.wrong_counts.clone();
    wrong.sort_by_key(|d| d.group_id);
    let mut expected = vec![
        CountDrift {
            org_id: ORG.into(),
            group_id: linux,
            maintained: 7,
            actual: 2,
        },
        CountDrift {
            org_id: ORG.into(),
            group_id: picked,
            maintained: 1,
            actual: 2,
        },
    ];
    expected.sort_by_key(|d| d.group_id);
    assert_eq!(wrong, expected);
    // Memberships and targets are as the rules say: only the counts drifted.
    assert_eq!(
        drift.missing_memberships + drift.extra_memberships + drift.wrong_targets,
        0
    );
    let text = reconcile::render(&drift);
    assert!(
        text.contains("DRIFT in the member count of 2 group(s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("group={linux} maintained=7 actual=2")),
        "{text}"
    );

    let repair = reconcile::repair(h.pool(), &drift, "test").await?;
    assert_eq!(repair.counts_reset, 2);
    assert!(repair.entries.is_empty());
    let repaired = reconcile::check(h.pool(), &h.catalogue, &options()).await?;
    assert!(!repaired.has_drift(), "{}", reconcile::render(&repaired));
    check_member_counts(h.pool()).await?;
    assert_eq!(counts::member_count(h.pool(), linux).await?, 2);
    assert_eq!(counts::member_count(h.pool(), picked).await?, 2);

    // And counting goes on from the repaired total.
    let seq = h.send("k-1", json!({"osType": "linux"})).await?;
    h.applied("k-1", seq).await?;
    h.wait_members(linux, &[("k-0", false), ("k-1", false), ("k-2", false)])
        .await?;
    assert_eq!(counted_members(h.pool(), linux).await?, 3);
    assert_eq!(counts::member_count(h.pool(), linux).await?, 3);
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}
