//! Previews against what groups hold: once the run has settled and its processes have stopped, a worker in
//! this process takes every partition, and each live dynamic group's preview — evaluated in that worker's
//! memory — must name exactly the group's stored members.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cohort::config::Config;
use cohort::store::api_keys;
use cohort::worker::SystemClock;
use cohort_testkit::app::{spawn_worker, LIMIT};
use cohort_testkit::eventually;
use cohort_testkit::http::Client;
use sqlx::PgPool;

use super::model::{Model, ORG};

/// Checks every live dynamic group's preview; returns how many were checked.
pub async fn check_previews(
    env: &BTreeMap<String, String>,
    pool: &PgPool,
    model: &Model,
    partitions: usize,
) -> anyhow::Result<usize> {
    let mut config = Config::load_from(None, env.clone())?;
    config.http.listen = "127.0.0.1:0".parse()?;
    config.worker.embedded_relay = false;
    config.worker.embedded_api = true;
    // A consumer group of its own: it takes every partition at once, with no wait for the stopped
    // members' sessions (positions come from PostgreSQL; Kafka's committed offsets are never read).
    config.kafka.group_id = format!("{}-previews", config.kafka.group_id);
    let worker = spawn_worker(&config, Arc::new(SystemClock)).await?;
    let status = worker.status.clone();
    eventually(LIMIT, "the checking worker holds every partition", || {
        let status = status.clone();
        async move { Ok((status.partitions.load(Ordering::SeqCst) == partitions).then_some(())) }
    })
    .await?;
    let addr = worker.http_address().await?;
    let (_, key) = api_keys::create(pool, Some(ORG), "crash-previews").await?;
    let client = Client::new(addr, Some(&key));
    for group in &model.dynamic {
        let answer = client
            .post(
                &format!("/api/v1/groups/{group}/preview?limit=100"),
                serde_json::json!({}),
            )
            .await?;
        let data = &answer.body["data"];
        anyhow::ensure!(
            data["evaluatedFrom"] == "memory",
            "group {group}'s preview: {}",
            answer.body
        );
        let mut sample: Vec<String> = data["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_str().map(str::to_string))
            .collect();
        sample.sort();
        let mut members: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM device_group_memberships WHERE group_id = $1 AND NOT is_pinned",
        )
        .bind(group)
        .fetch_all(pool)
        .await?;
        members.sort();
        anyhow::ensure!(
            data["totalCount"].as_u64() == Some(members.len() as u64),
            "group {group}: the preview counts {}, the group holds {}",
            data["totalCount"],
            members.len()
        );
        members.truncate(100);
        anyhow::ensure!(
            sample == members,
            "group {group}: the preview names {sample:?}, the group holds {members:?}"
        );
    }
    if let Some(stop) = worker.stop {
        let _ = stop.send(());
    }
    worker.task.await??;
    Ok(model.dynamic.len())
}
