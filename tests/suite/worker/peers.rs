//! Previews evaluated in the memory of every worker holding a partition: two workers split the partitions
//! and an API process without a worker (`cohort api`) answers previews from their memory, names exactly the
//! devices the group then holds, and stays complete and equal when a worker stops (its partitions read from
//! PostgreSQL until the other worker holds them); release dry runs count their impact the same way. Workers'
//! internal routes accept only their own token.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use cohort::store::api_keys;
use cohort::worker::SystemClock;
use cohort_testkit::app::{
    all_applied, metric, spawn_api, standard_groups, stream, Harness, RunningApi, LIMIT, ORG,
};
use cohort_testkit::http::Client;
use cohort_testkit::{eventually, Rng};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

/// Peer workers' answers to previews and to release impacts.
const EVALUATIONS_ANSWERED: &str =
    "cohort_api_peer_requests_total{outcome=\"answered\",route=\"evaluate\"}";
const IMPACTS_ANSWERED: &str =
    "cohort_api_peer_requests_total{outcome=\"answered\",route=\"impact\"}";

fn uptime_over(threshold: i64) -> Value {
    json!({"operator": "AND", "conditions": [
        {"field": "uptimeSeconds", "operator": "greaterThan", "value": threshold}]})
}

/// Two workers, each holding one of the two partitions, over `devices` devices with random attributes,
/// and an API process without a worker, with a client of it.
async fn two_workers_and_an_api(
    devices: usize,
    seed: u64,
) -> anyhow::Result<(Harness, RunningApi, Client)> {
    let mut h = Harness::start_with(Arc::new(SystemClock), |_| {}).await?;
    standard_groups(&h).await?;
    let mut rng = Rng::seeded(seed);
    let last = stream(&mut h, devices, devices, &mut rng).await?;
    all_applied(&h, &last).await?;
    h.add_worker().await?;
    h.all_partitions_owned(2).await?;
    let statuses: Vec<_> = h.workers.iter().map(|w| w.status.clone()).collect();
    eventually(LIMIT, "each worker holds one partition", || {
        let statuses = statuses.clone();
        async move {
            let each_one = statuses.iter().all(|s| s.partitions.load(SeqCst) == 1);
            Ok(each_one.then_some(()))
        }
    })
    .await?;
    let api = spawn_api(h.config.clone()).await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "peers").await?;
    let client = Client::new(api.addr, Some(&key));
    Ok((h, api, client))
}

/// The ids, count and source of a preview of devices with `uptimeSeconds > 400`.
async fn preview(client: &Client) -> anyhow::Result<(Vec<String>, u64, String)> {
    let answer = client
        .post(
            "/api/v1/groups/preview?limit=100",
            json!({"filterConditions": uptime_over(400)}),
        )
        .await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.body);
    let data = &answer.body["data"];
    let ids = data["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["id"].as_str().map(str::to_string))
        .collect();
    let from = data["evaluatedFrom"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((ids, data["totalCount"].as_u64().unwrap_or(u64::MAX), from))
}

/// Creates the group the preview previewed and checks that it holds exactly the previewed devices.
async fn the_group_holds(h: &Harness, ids: &[String], count: u64) -> anyhow::Result<uuid::Uuid> {
    let group = h.group("over-400", uptime_over(400)).await?;
    h.control_applied().await?;
    let members: Vec<String> = h.members(group).await?.into_iter().map(|m| m.0).collect();
    assert_eq!(members, ids);
    assert_eq!(members.len() as u64, count);
    Ok(group)
}

/// A release dry run through `client` to `group` answers the impact PostgreSQL alone answers, over some
/// devices.
async fn dry_run_is_the_databases(
    h: &Harness,
    client: &Client,
    group: uuid::Uuid,
) -> anyhow::Result<()> {
    use cohort::store::firmware::{preview, Proposal, ReleaseTarget};
    let answer = client
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2.0.0", "dryRun": true}),
        )
        .await?;
    anyhow::ensure!(answer.status == StatusCode::OK, "{}", answer.body);
    let proposal = Proposal::Release {
        health: Default::default(),
        target: ReleaseTarget::Group(group),
        version: "2.0.0".into(),
        stages: vec![10_000],
    };
    let stored = preview(h.pool(), ORG, &proposal, 20).await?;
    assert_eq!(answer.body["impact"], serde_json::to_value(&stored)?);
    assert!(stored.changed > 0);
    Ok(())
}

/// The id of one of the standard groups, by name.
async fn standard_group(h: &Harness, name: &str) -> anyhow::Result<uuid::Uuid> {
    Ok(
        sqlx::query_scalar("SELECT id FROM device_groups WHERE name = $1")
            .bind(name)
            .fetch_one(h.pool())
            .await?,
    )
}

async fn stop_api(api: RunningApi) -> anyhow::Result<()> {
    let _ = api.stop.send(());
    tokio::time::timeout(LIMIT, api.task).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_through_an_api_without_a_worker_is_evaluated_in_the_workers_memory(
) -> anyhow::Result<()> {
    let (h, api, client) = two_workers_and_an_api(90, 0x5EED_0101).await?;
    let answered_before = metric(EVALUATIONS_ANSWERED);
    let (ids, count, from) = preview(&client).await?;
    assert_eq!(from, "memory");
    assert!(count > 0 && count < 90, "{count}");
    // One call to each worker.
    assert!(metric(EVALUATIONS_ANSWERED) >= answered_before + 2.0);
    let group = the_group_holds(&h, &ids, count).await?;
    // A release's dry run counts the impact in the workers' memory too.
    let answered_before = metric(IMPACTS_ANSWERED);
    dry_run_is_the_databases(&h, &client, group).await?;
    dry_run_is_the_databases(&h, &client, standard_group(&h, "long-uptime").await?).await?;
    assert!(metric(IMPACTS_ANSWERED) >= answered_before + 4.0);
    stop_api(api).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_worker_stopped_a_preview_reads_its_partitions_from_the_database_and_is_unchanged(
) -> anyhow::Result<()> {
    let (mut h, api, client) = two_workers_and_an_api(90, 0x5EED_0102).await?;
    let (ids, count, from) = preview(&client).await?;
    assert_eq!(from, "memory");
    // Stop the worker holding partition 1, and hold that partition's position row so that the other
    // worker cannot take it over yet: the partition is then held by no worker.
    let owner: String = sqlx::query_scalar(
        "SELECT owner FROM partition_positions WHERE topic = $1 AND partition = 1",
    )
    .bind(&h.input)
    .fetch_one(h.pool())
    .await?;
    let address: String = sqlx::query_scalar("SELECT address FROM live_workers WHERE owner = $1")
        .bind(&owner)
        .fetch_one(h.pool())
        .await?;
    let mut stopped = None;
    for (i, worker) in h.workers.iter().enumerate() {
        if worker.http_address().await?.to_string() == address {
            stopped = Some(i);
        }
    }
    let stopped = stopped.expect("the owner of partition 1 is one of the workers");
    let mut blocker = h.pool().begin().await?;
    sqlx::query("SELECT 1 FROM partition_positions WHERE topic = $1 AND partition = 1 FOR UPDATE")
        .bind(&h.input)
        .execute(&mut *blocker)
        .await?;
    let mut worker = h.workers.remove(stopped);
    if let Some(stop) = worker.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(LIMIT, worker.task).await???;
    // A clean stop deletes the worker's registration.
    let registered: i64 = sqlx::query_scalar("SELECT count(*) FROM live_workers WHERE owner = $1")
        .bind(&owner)
        .fetch_one(h.pool())
        .await?;
    assert_eq!(registered, 0);
    // The other worker, assigned both partitions, has taken partition 0 again and waits for the row.
    super::a_statement_waits_on_a_lock(
        &h,
        "the other worker's claim waits for the held row",
        "INSERT INTO partition_positions%",
    )
    .await?;
    assert_eq!(
        preview(&client).await?,
        (ids.clone(), count, "mixed".into())
    );
    dry_run_is_the_databases(&h, &client, standard_group(&h, "long-uptime").await?).await?;
    // Once the other worker holds partition 1 too, every partition is in memory again.
    blocker.rollback().await?;
    let status = h.workers[0].status.clone();
    eventually(LIMIT, "the other worker holds both partitions", || {
        let status = status.clone();
        async move { Ok((status.partitions.load(SeqCst) == 2).then_some(())) }
    })
    .await?;
    assert_eq!(
        preview(&client).await?,
        (ids.clone(), count, "memory".into())
    );
    let group = the_group_holds(&h, &ids, count).await?;
    dry_run_is_the_databases(&h, &client, group).await?;
    stop_api(api).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_internal_route_answers_only_its_own_token() -> anyhow::Result<()> {
    let mut h = Harness::start_with(Arc::new(SystemClock), |config| {
        // The internal route is served whether or not the worker serves the API.
        config.worker.embedded_api = false;
    })
    .await?;
    let sequence = h.send("dev-1", json!({"uptimeSeconds": 500})).await?;
    h.applied("dev-1", sequence).await?;
    let address = h.http_address().await?;
    let token: String = sqlx::query_scalar("SELECT token FROM live_workers WHERE address = $1")
        .bind(address.to_string())
        .fetch_one(h.pool())
        .await?;
    assert_eq!(token.len(), 64);
    let body = json!({"org": ORG, "filterConditions": uptime_over(400), "now": 0, "limit": 10,
        "partitions": [0, 1, 7]});
    let path = "/internal/v1/evaluate";
    let other = "0".repeat(64);
    let lowercase = format!("bearer {token}");
    for (key, header) in [
        (None, None),
        (Some(other.as_str()), None),
        (Some(&token[..63]), None),
        (None, Some(lowercase.as_str())),
        (None, Some(token.as_str())),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("authorization", h)).into_iter().collect();
        let refused = Client::new(address, key)
            .send_with(
                Method::POST,
                path,
                Some(body.to_string().into_bytes()),
                &headers,
            )
            .await?;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "{key:?} {header:?}"
        );
        assert_eq!(refused.body["message"], "Unauthorized");
        assert_eq!(refused.body["details"], json!([]));
    }
    let answer = Client::new(address, Some(&token)).post(path, body).await?;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["partitions"], json!([0, 1]));
    assert_eq!(answer.body["matched"], 1);
    assert_eq!(answer.body["sample"][0]["id"], "dev-1");
    let impact = json!({"org": ORG, "releases": {"before": {"groups": {}},
        "after": {"groups": {}, "default": {"version": "2.0.0", "share": 10000}}}, "sample": 5, "partitions": [0, 1]});
    let refused = Client::new(address, Some(&other))
        .post("/internal/v1/impact", impact.clone())
        .await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let counted = Client::new(address, Some(&token))
        .post("/internal/v1/impact", impact)
        .await?;
    assert_eq!(counted.status, StatusCode::OK, "{}", counted.body);
    assert_eq!(counted.body["partitions"], json!([0, 1]));
    assert_eq!(counted.body["impact"]["changed"], 1);
    assert_eq!(counted.body["impact"]["sample"][0]["deviceId"], "dev-1");
    // Nothing else of the API is served by this worker.
    let groups = Client::new(address, Some(&token))
        .get("/api/v1/groups")
        .await?;
    assert_eq!(groups.status, StatusCode::NOT_FOUND);
    h.stop().await
}
