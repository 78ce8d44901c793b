//! Member counts as the API shows them — a group's `deviceCount` (read alone and in the listing), the
//! members page's `total`, a static change's `total` — equal `count(*)` of the group's memberships after
//! every kind of membership write: static batches, a dynamic group turned static, the worker filling a
//! group and emptying a deleted one.

use cohort_testkit::app::{Harness, ORG};
use cohort_testkit::counts::{check_member_counts, counted_members};
use cohort_testkit::http::Client;
use hyper::StatusCode;
use serde_json::json;
use uuid::Uuid;

use super::{create_group, delete_json, devices, expect, linux_filter, Api};

/// Asserts that the group has `expected` members by `count(*)`, and that every count the API shows for it
/// says the same; then that every group's maintained count is exact.
async fn expect_count(
    c: &Client,
    pool: &sqlx::PgPool,
    group: &str,
    expected: i64,
) -> anyhow::Result<()> {
    let counted = counted_members(pool, group.parse::<Uuid>()?).await?;
    assert_eq!(counted, expected, "count(*) of {group}");
    let read = c.get(&format!("/api/v1/groups/{group}")).await?;
    expect(&read, StatusCode::OK);
    assert_eq!(read.body["deviceCount"], json!(counted), "{read:?}");
    let listed = c.get("/api/v1/groups?limit=100").await?;
    expect(&listed, StatusCode::OK);
    let entry = listed.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == json!(group))
        .expect("the group is listed");
    assert_eq!(entry["deviceCount"], json!(counted), "{entry}");
    let page = c.get(&format!("/api/v1/groups/{group}/devices")).await?;
    expect(&page, StatusCode::OK);
    assert_eq!(page.body["total"], json!(counted), "{:?}", page.body);
    check_member_counts(pool).await
}

#[tokio::test]
async fn counts_follow_static_batches_and_a_change_to_static() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let fleet: Vec<(String, &str, serde_json::Value)> = (0..8)
        .map(|i| (format!("c-{i}"), "acme", json!({"osType": "linux"})))
        .collect();
    let rows: Vec<(&str, &str, serde_json::Value)> = fleet
        .iter()
        .map(|(id, org, attributes)| (id.as_str(), *org, attributes.clone()))
        .collect();
    devices(api.pool(), &rows).await?;
    let c = &api.acme;
    let group = create_group(c, json!({"name": "counted", "type": "static"})).await?;
    let base = format!("/api/v1/groups/{group}/devices");
    // Batch removals are a DELETE with a body, on the device-scoped route.
    let members = format!("/api/v1/devices/groups/{group}/members");
    expect_count(c, api.pool(), &group, 0).await?;

    let added = c
        .post(
            &base,
            json!({"deviceIds": ["c-0", "c-1", "c-2", "c-3", "c-4"]}),
        )
        .await?;
    expect(&added, StatusCode::OK);
    assert_eq!(added.body["data"]["total"], 5);
    expect_count(c, api.pool(), &group, 5).await?;

    // Members already there are skipped and not counted twice.
    let again = c
        .post(&base, json!({"deviceIds": ["c-3", "c-4", "c-5"]}))
        .await?;
    assert_eq!(again.body["data"]["total"], 6);
    expect_count(c, api.pool(), &group, 6).await?;

    // A refused batch (an unknown device) changes nothing.
    let refused = c
        .post(&base, json!({"deviceIds": ["c-6", "ghost"]}))
        .await?;
    expect(&refused, StatusCode::BAD_REQUEST);
    expect_count(c, api.pool(), &group, 6).await?;

    let removed = delete_json(c, &members, json!({"deviceIds": ["c-0", "c-1", "c-7"]})).await?;
    expect(&removed, StatusCode::OK);
    assert_eq!(removed.body["data"]["total"], 4);
    expect_count(c, api.pool(), &group, 4).await?;
    let one = c.delete(&format!("{base}/c-2")).await?;
    expect(&one, StatusCode::OK);
    expect_count(c, api.pool(), &group, 3).await?;

    // A dynamic group's members (written as a worker writes them), then the group turned static: the
    // members stay, converted to manual ones, and so does the count.
    let dynamic = create_group(
        c,
        json!({"name": "linux", "filterConditions": linux_filter()}),
    )
    .await?;
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) \
         SELECT $1::uuid, id, 'dynamic_rule' FROM devices WHERE org_id = 'acme'",
    )
    .bind(&dynamic)
    .execute(api.pool())
    .await?;
    expect_count(c, api.pool(), &dynamic, 8).await?;
    let switched = c
        .patch(
            &format!("/api/v1/groups/{dynamic}"),
            json!({"type": "static"}),
        )
        .await?;
    expect(&switched, StatusCode::OK);
    assert_eq!(switched.body["deviceCount"], 8);
    expect_count(c, api.pool(), &dynamic, 8).await?;
    let emptied = delete_json(
        c,
        &format!("/api/v1/devices/groups/{dynamic}/members"),
        json!({"deviceIds": (0..8).map(|i| format!("c-{i}")).collect::<Vec<_>>()}),
    )
    .await?;
    assert_eq!(emptied.body["data"]["total"], 0);
    expect_count(c, api.pool(), &dynamic, 0).await?;
    expect_count(c, api.pool(), &group, 3).await?;
    api.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_follow_the_worker_filling_a_group_and_emptying_a_deleted_one() -> anyhow::Result<()>
{
    let mut h = Harness::start().await?;
    let addr = h.http_address().await?;
    let (_, key) = cohort::store::api_keys::create(h.pool(), Some(ORG), "counts").await?;
    let c = Client::new(addr, Some(&key));
    let mut last = Vec::new();
    for i in 0..6 {
        let device = format!("w-{i}");
        let os = if i % 3 == 0 { "windows" } else { "linux" };
        last.push((
            device.clone(),
            h.send(&device, json!({"osType": os})).await?,
        ));
    }
    for (device, seq) in &last {
        h.applied(device, *seq).await?;
    }
    let group = h.group("linux", linux_filter()).await?;
    h.wait_members(
        group,
        &[
            ("w-1", false),
            ("w-2", false),
            ("w-4", false),
            ("w-5", false),
        ],
    )
    .await?;
    let id = group.to_string();
    expect_count(&c, h.pool(), &id, 4).await?;

    // A device leaves as its attributes change.
    let seq = h.send("w-1", json!({"osType": "windows"})).await?;
    h.applied("w-1", seq).await?;
    h.wait_members(group, &[("w-2", false), ("w-4", false), ("w-5", false)])
        .await?;
    expect_count(&c, h.pool(), &id, 3).await?;

    // Deleted: the group is gone from the API, and as the workers remove its memberships its
    // maintained count follows them to zero.
    expect(
        &c.delete(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NO_CONTENT,
    );
    h.control_applied().await?;
    h.wait_members(group, &[]).await?;
    expect(
        &c.get(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(counted_members(h.pool(), group).await?, 0);
    assert_eq!(
        cohort::store::counts::member_count(h.pool(), group).await?,
        0
    );
    check_member_counts(h.pool()).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}
