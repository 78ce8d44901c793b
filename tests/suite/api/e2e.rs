//! End to end with a worker running: the API's writes reach the worker through the control log (and the
//! input topic for imports), and what the API previews is what the worker then does.

use std::collections::BTreeSet;

use cohort::store::api_keys;
use cohort_testkit::app::{Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use cohort_testkit::http::Client;
use hyper::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn ids(values: &Value, key: &str) -> BTreeSet<String> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[key].as_str().unwrap().to_string())
        .collect()
}

async fn wait_member_set(
    h: &Harness,
    group: Uuid,
    expected: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let expected: Vec<(&str, bool)> = expected.iter().map(|d| (d.as_str(), false)).collect();
    h.wait_members(group, &expected).await
}

/// Rollout events in the outbox for the output topic: (device, payload).
async fn rollouts(h: &Harness) -> anyhow::Result<Vec<(String, Value)>> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT message_key, payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(&h.config.kafka.output_topic)
            .fetch_all(h.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(k, p)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                serde_json::from_slice(&p).unwrap_or(Value::Null),
            )
        })
        .collect())
}

#[tokio::test]
async fn a_group_created_over_http_fills_as_previewed_and_releases_yield_the_previewed_events(
) -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    let addr = h.http_address().await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "e2e").await?;
    let c = Client::new(addr, Some(&key));

    // A fleet: 24 devices, every third linux, half of them in the edge tier.
    let mut last = Vec::new();
    for i in 0..24 {
        let device = format!("dev-{i:02}");
        let os = if i % 3 == 0 { "linux" } else { "windows" };
        let tags = if i % 2 == 0 {
            json!(["edge"])
        } else {
            json!(["core"])
        };
        let seq = h
            .send(
                &device,
                json!({"osType": os, "tags": tags, "firmwareVersion": "1.0.0"}),
            )
            .await?;
        last.push((device, seq));
    }
    for (device, seq) in &last {
        h.applied(device, *seq).await?;
    }

    // Preview first: it names the devices the group will hold.
    let filter = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"}]});
    let preview = c
        .post(
            "/api/v1/groups/preview?limit=100",
            json!({"filterConditions": filter}),
        )
        .await?;
    assert_eq!(preview.status, StatusCode::OK, "{preview:?}");
    let previewed = ids(&preview.body["data"]["devices"], "id");
    assert_eq!(preview.body["data"]["totalCount"], 8);
    assert_eq!(previewed.len(), 8);

    let created = c
        .post(
            "/api/v1/groups",
            json!({"name": "linux", "filterConditions": filter}),
        )
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let group: Uuid = created.body["id"].as_str().unwrap().parse()?;
    wait_member_set(&h, group, &previewed).await?;
    let log = c
        .get(&format!("/api/v1/groups/{group}/membership-log?limit=500"))
        .await?;
    let entries = log.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    assert!(entries
        .iter()
        .all(|e| e["reason"] == "filter_match" && e["action"] == "added"));
    assert_eq!(ids(&log.body["entries"], "deviceId"), previewed);
    let members = c.get(&format!("/api/v1/groups/{group}/devices")).await?;
    assert_eq!(members.body["total"], 8);
    assert_eq!(ids(&members.body["data"], "deviceId"), previewed);
    // Previewing the saved group says the same.
    let saved = c
        .post(
            &format!("/api/v1/groups/{group}/preview?limit=100"),
            json!({}),
        )
        .await?;
    assert_eq!(ids(&saved.body["data"]["devices"], "id"), previewed);

    // Editing the filter moves exactly the diff: linux AND edge keeps 4, drops 4, adds none.
    let narrower = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"},
        {"field": "tags", "operator": "hasAny", "value": ["edge"]}]});
    let preview = c
        .post(
            "/api/v1/groups/preview?limit=100",
            json!({"filterConditions": narrower}),
        )
        .await?;
    let expected = ids(&preview.body["data"]["devices"], "id");
    assert_eq!(expected.len(), 4);
    // So does the group's preview of the change before it is saved.
    let unsaved = c
        .post(
            &format!("/api/v1/groups/{group}/preview?limit=100"),
            json!({"filterConditions": narrower}),
        )
        .await?;
    assert_eq!(ids(&unsaved.body["data"]["devices"], "id"), expected);
    let patched = c
        .patch(
            &format!("/api/v1/groups/{group}"),
            json!({"filterConditions": narrower}),
        )
        .await?;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    wait_member_set(&h, group, &expected).await?;
    let log = h.log(group).await?;
    let after_edit = &log[8..];
    assert_eq!(after_edit.len(), 4, "only the diff is logged: {log:?}");
    assert!(after_edit
        .iter()
        .all(|(d, a, r)| a == "removed" && r == "filter_unmatch" && !expected.contains(d)));

    // Release to the group: the dry run's impact is what the real release then emits.
    let dry = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2.0.0", "dry_run": true}),
        )
        .await?;
    assert_eq!(dry.status, StatusCode::OK, "{dry:?}");
    assert_eq!(dry.body["impact"]["changed"], 4);
    let impacted = ids(&dry.body["impact"]["sample"], "deviceId");
    assert_eq!(impacted, expected);
    let before = rollouts(&h).await?.len();
    let real = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2.0.0"}),
        )
        .await?;
    assert_eq!(real.status, StatusCode::CREATED, "{real:?}");
    let pool = h.pool().clone();
    let topic = h.config.kafka.output_topic.clone();
    eventually(LIMIT, "the rollout events are written", || {
        let (pool, topic) = (pool.clone(), topic.clone());
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
                .bind(&topic)
                .fetch_one(&pool)
                .await?;
            Ok((n as usize >= before + 4).then_some(()))
        }
    })
    .await?;
    let events = rollouts(&h).await?;
    let emitted: BTreeSet<String> = events[before..].iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(emitted, impacted);
    assert_eq!(events.len(), before + 4, "one event per changed device");
    for (_, event) in &events[before..] {
        assert_eq!(event["data"]["target"]["version"], "2.0.0", "{event}");
    }
    // The device view agrees.
    let some = impacted.iter().next().unwrap();
    let view = c.get(&format!("/api/v1/devices/{some}")).await?;
    assert_eq!(view.body["firmware"]["targetVersion"], "2.0.0");
    assert_eq!(view.body["firmware"]["reason"], "group");
    h.stop().await
}

#[tokio::test]
async fn imported_devices_join_static_groups_and_follow_their_releases() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let addr = h.http_address().await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "e2e").await?;
    let c = Client::new(addr, Some(&key));
    let imported = c
        .post(
            "/api/v1/devices/import",
            json!({"deviceIds": ["new-1", "new-2", "new-1"]}),
        )
        .await?;
    assert_eq!(imported.status, StatusCode::ACCEPTED, "{imported:?}");
    assert_eq!(imported.body["registered"], json!(["new-1", "new-2"]));
    let pool = h.pool().clone();
    eventually(LIMIT, "the owning workers create the devices", || {
        let pool = pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM devices WHERE id IN ('new-1', 'new-2')")
                    .fetch_one(&pool)
                    .await?;
            Ok((n == 2).then_some(()))
        }
    })
    .await?;
    let again = c
        .post("/api/v1/devices/import", json!({"deviceIds": ["new-1"]}))
        .await?;
    assert_eq!(again.body["existing"], json!(["new-1"]));

    let group = c.post("/api/v1/groups", json!({"name": "pilot"})).await?;
    let group: Uuid = group.body["id"].as_str().unwrap().parse()?;
    let added = c
        .post(
            &format!("/api/v1/device-groups/{group}/devices"),
            json!({"device_ids": ["new-1"]}),
        )
        .await?;
    assert_eq!(added.body["added"], json!(["new-1"]), "{added:?}");
    // Released at once: the impact counts the member just added even if the worker has not applied the
    // addition yet (that partition is then counted from PostgreSQL).
    let released = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "5.0.0"}),
        )
        .await?;
    assert_eq!(released.status, StatusCode::CREATED, "{released:?}");
    assert_eq!(released.body["impact"]["changed"], 1);
    eventually(
        LIMIT,
        "the worker resolves the static member's firmware",
        || {
            let pool = pool.clone();
            async move {
                let v: Option<String> =
                    sqlx::query_scalar("SELECT target_version FROM devices WHERE id = 'new-1'")
                        .fetch_one(&pool)
                        .await?;
                Ok((v.as_deref() == Some("5.0.0")).then_some(()))
            }
        },
    )
    .await?;
    // Removing it from the group re-resolves it to no target.
    let removed = c
        .delete(&format!("/api/v1/groups/{group}/devices/new-1"))
        .await?;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    assert_eq!(
        removed.body,
        json!({"data": {"removed": 1, "skipped": 0, "total": 0}})
    );
    eventually(LIMIT, "the worker re-resolves after removal", || {
        let pool = pool.clone();
        async move {
            let v: Option<String> =
                sqlx::query_scalar("SELECT target_version FROM devices WHERE id = 'new-1'")
                    .fetch_one(&pool)
                    .await?;
            Ok(v.is_none().then_some(()))
        }
    })
    .await?;
    h.stop().await
}
