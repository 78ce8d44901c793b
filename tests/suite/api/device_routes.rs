//! Devices and releases through the API: pins, locks and the development flag recorded for the owning
//! worker, the device view's explanations, and releases previewed, created, listed and withdrawn.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{create_group, devices, expect, expect_error, linux_filter, Api};

#[tokio::test]
async fn pins_locks_and_the_development_flag_are_recorded_for_the_owning_worker(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    devices(api.pool(), &[("p-1", "acme", json!({"osType": "linux"}))]).await?;
    let c = &api.acme;
    let group = create_group(
        c,
        json!({"name": "dyn", "filterConditions": linux_filter()}),
    )
    .await?;
    let pinned = c
        .post(
            &format!("/api/v1/groups/{group}/devices/p-1/pin"),
            json!({}),
        )
        .await?;
    expect(&pinned, StatusCode::ACCEPTED);
    assert!(pinned.body["controlId"].as_i64().is_some());
    expect(
        &c.delete(&format!("/api/v1/groups/{group}/devices/p-1/pin"))
            .await?,
        StatusCode::ACCEPTED,
    );
    expect_error(
        &c.post(
            &format!("/api/v1/groups/{group}/devices/ghost/pin"),
            json!({}),
        )
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect(
        &c.put(
            "/api/v1/devices/p-1/firmware-lock",
            json!({"version": "2.1.0"}),
        )
        .await?,
        StatusCode::ACCEPTED,
    );
    expect_error(
        &c.put(
            "/api/v1/devices/p-1/firmware-lock",
            json!({"version": "not a version!"}),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    expect(
        &c.delete("/api/v1/devices/p-1/firmware-lock").await?,
        StatusCode::ACCEPTED,
    );
    expect(
        &c.put("/api/v1/devices/p-1/development", json!({"enabled": true}))
            .await?,
        StatusCode::ACCEPTED,
    );
    expect_error(
        &c.put("/api/v1/devices/p-1/development", json!({"enabled": "yes"}))
            .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM control_log WHERE kind NOT IN ('org_created', 'group_upserted') ORDER BY id",
    )
    .fetch_all(api.pool())
    .await?;
    assert_eq!(
        kinds,
        [
            "pinned",
            "unpinned",
            "device_settings",
            "device_settings",
            "device_settings"
        ]
    );
    api.stop().await
}

#[tokio::test]
async fn the_device_view_explains_each_dynamic_group() -> anyhow::Result<()> {
    let api = Api::start().await?;
    devices(
        api.pool(),
        &[(
            "v-1",
            "acme",
            json!({"osType": "linux", "hostname": "web-1", "siteId": "north"}),
        )],
    )
    .await?;
    let c = &api.acme;
    let linux = create_group(
        c,
        json!({"name": "linux", "filterConditions": linux_filter()}),
    )
    .await?;
    let south = create_group(
        c,
        json!({"name": "south linux", "siteId": "south", "filterConditions": linux_filter()}),
    )
    .await?;
    create_group(
        c,
        json!({"name": "windows", "filterConditions": {"operator": "AND", "conditions": [
            {"field": "osType", "operator": "equals", "value": "windows"}]}}),
    )
    .await?;
    let view = c.get("/api/v1/devices/v-1").await?;
    expect(&view, StatusCode::OK);
    let b = &view.body;
    assert_eq!(b["orgId"], "acme");
    assert_eq!(b["attributes"]["hostname"], "web-1");
    assert_eq!(b["firmware"]["reason"], "none");
    let groups = b["dynamicGroups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    let by_name = |n: &str| groups.iter().find(|g| g["name"] == n).unwrap().clone();
    assert_eq!(by_name("linux")["matches"], true);
    assert_eq!(by_name("linux")["groupId"], json!(linux));
    assert_eq!(by_name("windows")["matches"], false);
    let explanation = by_name("windows")["explanation"].to_string();
    assert!(explanation.contains("osType"), "{explanation}");
    let scoped = by_name("south linux");
    assert_eq!(scoped["groupId"], json!(south));
    assert_eq!(scoped["matches"], false);
    assert!(scoped["siteMismatch"].as_str().unwrap().contains("south"));
    expect_error(
        &c.get("/api/v1/devices/ghost").await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    api.stop().await
}

#[tokio::test]
async fn releases_are_previewed_with_dry_run_created_listed_and_withdrawn() -> anyhow::Result<()> {
    let api = Api::start().await?;
    devices(
        api.pool(),
        &[
            ("r-1", "acme", json!({"firmwareVersion": "1.0.0"})),
            ("r-2", "acme", json!({"firmwareVersion": "1.0.0"})),
        ],
    )
    .await?;
    let c = &api.acme;
    let group = create_group(c, json!({"name": "canary"})).await?;
    // Memberships as a worker would hold them.
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) VALUES ($1::uuid, 'r-1', 'manual')",
    )
    .bind(&group)
    .execute(api.pool())
    .await?;
    let dry = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "1.1.0", "dry_run": true}),
        )
        .await?;
    expect(&dry, StatusCode::OK);
    assert_eq!(dry.body["dryRun"], true);
    assert_eq!(dry.body["impact"]["changed"], 1);
    assert_eq!(dry.body["impact"]["sample"][0]["deviceId"], "r-1");
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM firmware_releases")
        .fetch_one(api.pool())
        .await?;
    assert_eq!(none, 0, "a dry run writes nothing");
    let real = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "1.1.0"}),
        )
        .await?;
    expect(&real, StatusCode::CREATED);
    assert_eq!(real.body["impact"], dry.body["impact"]);
    let release = real.body["release"]["id"].as_str().unwrap().to_string();
    let default = c
        .post(
            "/api/v1/releases",
            json!({"default": true, "version": "1.0.0"}),
        )
        .await?;
    expect(&default, StatusCode::CREATED);
    assert_eq!(
        default.body["impact"]["changed"], 1,
        "r-2 gets the default; r-1 keeps the group's"
    );
    let mixed = c
        .post("/api/v1/releases", json!({"default": true, "version": "7"}))
        .await?;
    expect_error(&mixed, StatusCode::BAD_REQUEST, "bad_request");
    let neither = c
        .post("/api/v1/releases", json!({"version": "1.2.0"}))
        .await?;
    expect_error(&neither, StatusCode::BAD_REQUEST, "bad_request");
    let listed = c.get("/api/v1/releases").await?;
    assert_eq!(listed.body["releases"].as_array().unwrap().len(), 2);
    let withdraw_dry = c
        .delete(&format!("/api/v1/releases/{release}?dryRun=true"))
        .await?;
    expect(&withdraw_dry, StatusCode::OK);
    assert_eq!(withdraw_dry.body["impact"]["changed"], 1);
    assert_eq!(withdraw_dry.body["release"]["withdrawnAt"], Value::Null);
    let withdrawn = c.delete(&format!("/api/v1/releases/{release}")).await?;
    expect(&withdrawn, StatusCode::OK);
    assert!(withdrawn.body["release"]["withdrawnAt"].is_string());
    expect_error(
        &c.delete(&format!("/api/v1/releases/{release}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let history = c.get("/api/v1/releases?includeWithdrawn=true").await?;
    assert_eq!(history.body["releases"].as_array().unwrap().len(), 2);
    api.stop().await
}
