//! Group changes applied in chunks: a change that concerns many devices is written over several batches,
//! each also taking the partition's events, writing only the diff, never rewriting a device row whose
//! columns did not change — and it ends in the oracle state whatever happens in the middle: a crash, a
//! rebalance, or another edit of the same group.

use std::sync::Arc;

use cohort::store::groups;
use cohort::worker::SystemClock;
use cohort_testkit::app::{all_applied, standard_groups, stream, Harness, LIMIT};
use cohort_testkit::{eventually, Rng};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// Changes one batch's chunk of a group change writes in these tests: tiny, so that a change of a few
/// dozen members takes many batches.
const CHUNK: usize = 4;

fn uptime_over(threshold: i64) -> Value {
    json!({"operator": "AND", "conditions": [
        {"field": "uptimeSeconds", "operator": "greaterThan", "value": threshold}]})
}

/// A harness with small group-change chunks and `devices` devices with random attributes.
async fn fleet(devices: usize, seed: u64) -> anyhow::Result<(Harness, Rng)> {
    let mut h = Harness::start_with(Arc::new(SystemClock), |config| {
        config.worker.change_chunk_rows = CHUNK;
    })
    .await?;
    standard_groups(&h).await?;
    let mut rng = Rng::seeded(seed);
    let last = stream(&mut h, devices, devices, &mut rng).await?;
    all_applied(&h, &last).await?;
    Ok((h, rng))
}

/// How many transactions wrote the group's log rows that `kind` control entries caused.
async fn transactions(pool: &PgPool, group: Uuid) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM group_membership_log \
         WHERE group_id = $1 AND cause->>'type' = 'control'",
    )
    .bind(group)
    .fetch_one(pool)
    .await?)
}

/// Holds the membership of one device the filter `uptimeSeconds > threshold` matches in `group` (a
/// membership inserted and not committed), so that the chunk of a change adding it waits for the key;
/// returns the open transaction.
async fn block_a_joiner(
    h: &Harness,
    group: Uuid,
    threshold: i64,
) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let joiner: String = sqlx::query_scalar(
        "SELECT id FROM devices WHERE (attributes->>'uptimeSeconds')::float8 > $1::float8 ORDER BY id LIMIT 1",
    )
    .bind(threshold)
    .fetch_one(h.pool())
    .await?;
    let mut blocker = h.pool().begin().await?;
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) VALUES ($1, $2, 'manual')",
    )
    .bind(group)
    .bind(&joiner)
    .execute(&mut *blocker)
    .await?;
    Ok(blocker)
}

/// A group that matches nothing yet, its (empty) change applied.
async fn an_empty_group(h: &Harness) -> anyhow::Result<Uuid> {
    let group = h.group("busy", uptime_over(1_000_000)).await?;
    h.control_applied().await?;
    Ok(group)
}

/// A group whose filter was edited to match `uptimeSeconds > 300`, the change held in the middle by a
/// joining member's key.
async fn a_change_under_way(
    h: &Harness,
) -> anyhow::Result<(Uuid, sqlx::Transaction<'static, sqlx::Postgres>)> {
    let group = an_empty_group(h).await?;
    let blocker = block_a_joiner(h, group, 300).await?;
    groups::update_filter(h.pool(), &h.catalogue, group, &uptime_over(300)).await?;
    super::a_batch_waits_on_a_lock(h, "a chunk of the change waits for the held key").await?;
    Ok((group, blocker))
}

/// Waits until every change is applied, then checks the oracle, and that the group's change logged each
/// device once; stops the harness.
async fn applied_once(h: Harness, group: Uuid) -> anyhow::Result<()> {
    h.control_applied().await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    let twice: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT device_id FROM group_membership_log WHERE group_id = $1 \
         GROUP BY device_id, action HAVING count(*) > 1) t",
    )
    .bind(group)
    .fetch_one(h.pool())
    .await?;
    anyhow::ensure!(twice == 0, "{twice} devices were logged twice");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_change_is_written_in_chunks_beside_events_without_rewriting_devices(
) -> anyhow::Result<()> {
    let (mut h, mut rng) = fleet(120, 0x5EED_0001).await?;
    let versions = |pool: PgPool| async move {
        sqlx::query_as::<_, (String, i64)>("SELECT id, version FROM devices ORDER BY id")
            .fetch_all(&pool)
            .await
    };
    let before = versions(h.pool().clone()).await?;
    let group = h.group("busy", uptime_over(300)).await?;
    // Events for other devices while the change is applied.
    let mut others = Vec::new();
    for i in 0..40 {
        let device = format!("new-{i}");
        let sequence = h
            .send(&device, json!({"uptimeSeconds": rng.below(1000)}))
            .await?;
        others.push((device, sequence));
    }
    all_applied(&h, &others).await?;
    h.control_applied().await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM device_group_memberships WHERE group_id = $1")
            .bind(group)
            .fetch_one(h.pool())
            .await?;
    let from_change: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM group_membership_log WHERE group_id = $1 AND cause->>'type' = 'control'",
    )
    .bind(group)
    .fetch_one(h.pool())
    .await?;
    assert!(
        from_change > 2 * CHUNK as i64,
        "{from_change} devices joined"
    );
    // No transaction wrote more than a chunk of the change.
    let chunks = transactions(h.pool(), group).await?;
    assert!(
        chunks * CHUNK as i64 >= from_change,
        "{from_change} changes in {chunks} transactions"
    );
    assert!(members >= from_change);
    // The devices the change made members of were not rewritten: their versions did not move.
    let after = versions(h.pool().clone()).await?;
    let after: std::collections::HashMap<String, i64> = after.into_iter().collect();
    for (id, version) in &before {
        assert_eq!(after.get(id), Some(version), "device {id} was rewritten");
    }
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_in_the_middle_of_a_chunked_change_resumes_it() -> anyhow::Result<()> {
    let (mut h, _) = fleet(100, 0x5EED_0002).await?;
    let (group, blocker) = a_change_under_way(&h).await?;
    h.kill_first();
    blocker.rollback().await?;
    h.add_worker().await?;
    h.all_partitions_owned(2).await?;
    applied_once(h, group).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_in_the_middle_of_a_chunked_change_loses_and_repeats_nothing(
) -> anyhow::Result<()> {
    let (mut h, mut rng) = fleet(100, 0x5EED_0003).await?;
    let (group, blocker) = a_change_under_way(&h).await?;
    h.add_worker().await?;
    blocker.rollback().await?;
    let last = stream(&mut h, 100, 100, &mut rng).await?;
    h.all_partitions_owned(2).await?;
    all_applied(&h, &last).await?;
    applied_once(h, group).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_edit_while_the_previous_one_is_applied_ends_in_the_newest_filter(
) -> anyhow::Result<()> {
    let (h, _) = fleet(100, 0x5EED_0004).await?;
    let group = an_empty_group(&h).await?;
    let blocker = block_a_joiner(&h, group, 600).await?;
    groups::update_filter(h.pool(), &h.catalogue, group, &uptime_over(300)).await?;
    super::a_batch_waits_on_a_lock(&h, "a chunk of the change waits for the held key").await?;
    groups::update_filter(h.pool(), &h.catalogue, group, &uptime_over(600)).await?;
    groups::update_filter(h.pool(), &h.catalogue, group, &uptime_over(500)).await?;
    blocker.rollback().await?;
    h.control_applied().await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    let members: Vec<Value> = sqlx::query_scalar(
        "SELECT d.attributes->'uptimeSeconds' FROM device_group_memberships m \
         JOIN devices d ON d.id = m.device_id WHERE m.group_id = $1",
    )
    .bind(group)
    .fetch_all(h.pool())
    .await?;
    assert!(!members.is_empty());
    assert!(members.iter().all(|u| u.as_f64() > Some(500.0)));
    h.stop().await
}

/// The ids and count a preview answered, and where it evaluated.
fn preview_of(answer: &Value) -> (Vec<String>, u64, String) {
    let data = &answer["data"];
    let ids = data["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let from = data["evaluatedFrom"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (ids, data["totalCount"].as_u64().unwrap_or(u64::MAX), from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_from_one_or_two_workers_memory_names_exactly_the_devices_the_group_then_holds(
) -> anyhow::Result<()> {
    use cohort::store::api_keys;
    use cohort_testkit::app::ORG;
    use cohort_testkit::http::Client;
    use std::sync::atomic::Ordering::SeqCst;

    let (mut h, _) = fleet(90, 0x5EED_0005).await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "preview").await?;
    let client = Client::new(h.http_address().await?, Some(&key));
    let body = json!({"filterConditions": uptime_over(400)});
    let memory = client
        .post("/api/v1/groups/preview?limit=100", body.clone())
        .await?;
    let (ids, count, from) = preview_of(&memory.body);
    assert_eq!(from, "memory", "{}", memory.body);
    assert!(count > 0 && count < 90, "{count}");
    // A second worker: the first then holds one partition, and asks the second for the other.
    // The first worker gives its partition up before the second has loaded (and claimed) it, so wait for
    // the first to hold one, then for the two to hold both.
    h.add_worker().await?;
    let status = h.status.clone();
    eventually(LIMIT, "the first worker holds one partition", || {
        let status = status.clone();
        async move { Ok((status.partitions.load(SeqCst) == 1).then_some(())) }
    })
    .await?;
    h.all_partitions_owned(2).await?;
    let both = client
        .post("/api/v1/groups/preview?limit=100", body)
        .await?;
    assert_eq!(
        preview_of(&both.body),
        (ids.clone(), count, "memory".to_string())
    );
    let group = h.group("busy", uptime_over(400)).await?;
    h.control_applied().await?;
    let members: Vec<String> = h.members(group).await?.into_iter().map(|m| m.0).collect();
    assert_eq!(members, ids);
    assert_eq!(members.len() as u64, count);
    // A release's dry run, counted in memory for the partition held and from PostgreSQL for the other,
    // answers what the database alone answers.
    let dry = client
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2.0.0", "dryRun": true}),
        )
        .await?;
    let proposal = cohort::store::firmware::Proposal::Release {
        health: Default::default(),
        target: cohort::store::firmware::ReleaseTarget::Group(group),
        version: "2.0.0".into(),
        stages: vec![10_000],
    };
    let stored = cohort::store::firmware::preview(h.pool(), ORG, &proposal, 20).await?;
    assert_eq!(dry.body["impact"], serde_json::to_value(&stored)?);
    assert_eq!(stored.changed as u64, count);
    // So does a staged release's: the memory and the database select the same devices for its stage.
    let dry = client
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2.0.0", "stages": [30, 100], "dryRun": true}),
        )
        .await?;
    let proposal = cohort::store::firmware::Proposal::Release {
        health: Default::default(),
        target: cohort::store::firmware::ReleaseTarget::Group(group),
        version: "2.0.0".into(),
        stages: vec![3_000, 10_000],
    };
    let stored = cohort::store::firmware::preview(h.pool(), ORG, &proposal, 20).await?;
    assert_eq!(dry.body["impact"], serde_json::to_value(&stored)?);
    assert!(
        (stored.changed as u64) < count,
        "a stage of 30% selects fewer"
    );
    h.stop().await
}
