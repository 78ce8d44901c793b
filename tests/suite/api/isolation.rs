//! Org isolation (a key for one org reads and changes nothing of another) and the error shape of bad
//! requests.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::{create_group, delete_json, devices, expect, expect_error, linux_filter, Api};

#[tokio::test]
async fn a_key_for_one_org_can_read_and_change_nothing_of_another() -> anyhow::Result<()> {
    let api = Api::start().await?;
    devices(
        api.pool(),
        &[
            ("b-1", "other", json!({"osType": "linux"})),
            ("a-1", "acme", json!({"osType": "linux"})),
        ],
    )
    .await?;
    let theirs = create_group(
        &api.other,
        json!({"name": "theirs", "filterConditions": linux_filter()}),
    )
    .await?;
    let their_static = create_group(&api.other, json!({"name": "their static"})).await?;
    let before: Value = sqlx::query_scalar(
        "SELECT to_jsonb(g) - 'updated_at' FROM device_groups g WHERE id = $1::uuid",
    )
    .bind(&theirs)
    .fetch_one(api.pool())
    .await?;
    let a = &api.acme;
    let g = format!("/api/v1/groups/{theirs}");
    let s = format!("/api/v1/groups/{their_static}");
    let (dg, ds) = ("/api/v1/device-groups", "/api/v1/devices/groups");
    let attempts = vec![
        a.get(&g).await?,
        a.patch(&g, json!({"name": "mine now"})).await?,
        a.put(
            &g,
            json!({"name": "mine now", "filterConditions": linux_filter()}),
        )
        .await?,
        a.delete(&g).await?,
        a.post(&format!("{g}/preview"), json!({})).await?,
        a.post(
            &format!("{g}/preview"),
            json!({"filterConditions": linux_filter()}),
        )
        .await?,
        a.get(&format!("{g}/devices")).await?,
        a.get(&format!("{g}/membership-log")).await?,
        a.post(&format!("{g}/devices/b-1/pin"), json!({})).await?,
        a.delete(&format!("{g}/devices/b-1/pin")).await?,
        a.post(&format!("{s}/devices"), json!({"deviceIds": ["a-1"]}))
            .await?,
        a.delete(&format!("{s}/devices/b-1")).await?,
        // The same groups through the device-groups and device-scoped paths.
        a.get(&format!("{dg}/{theirs}")).await?,
        a.put(&format!("{dg}/{theirs}"), json!({"name": "mine now"}))
            .await?,
        a.delete(&format!("{dg}/{theirs}")).await?,
        a.get(&format!("{dg}/{theirs}/devices")).await?,
        a.get(&format!("{dg}/{theirs}/membership-log")).await?,
        a.post(&format!("{dg}/{theirs}/preview"), json!({})).await?,
        a.post(
            &format!("{dg}/{their_static}/devices"),
            json!({"device_ids": ["a-1"]}),
        )
        .await?,
        delete_json(
            a,
            &format!("{dg}/{their_static}/devices"),
            json!({"device_ids": ["b-1"]}),
        )
        .await?,
        a.post(&format!("{dg}/{their_static}/devices/a-1"), json!({}))
            .await?,
        a.delete(&format!("{dg}/{their_static}/devices/b-1"))
            .await?,
        a.get(&format!("{ds}/{theirs}")).await?,
        a.patch(&format!("{ds}/{theirs}"), json!({"name": "mine now"}))
            .await?,
        a.delete(&format!("{ds}/{theirs}")).await?,
        a.post(
            &format!("{ds}/{their_static}/members"),
            json!({"deviceIds": ["a-1"]}),
        )
        .await?,
        delete_json(
            a,
            &format!("{ds}/{their_static}/members"),
            json!({"deviceIds": ["b-1"]}),
        )
        .await?,
        a.get("/api/v1/devices/b-1").await?,
        a.put(
            "/api/v1/devices/b-1/firmware-lock",
            json!({"version": "1.0.0"}),
        )
        .await?,
        a.delete("/api/v1/devices/b-1/firmware-lock").await?,
        a.put("/api/v1/devices/b-1/development", json!({"enabled": true}))
            .await?,
        a.post(
            "/api/v1/releases",
            json!({"groupId": theirs, "version": "1.0.0"}),
        )
        .await?,
        a.post(
            "/api/v1/releases",
            json!({"orgId": "other", "default": true, "version": "1.0.0"}),
        )
        .await?,
        a.get("/api/v1/releases?orgId=other").await?,
        a.post(
            "/api/v1/groups",
            json!({"orgId": "other", "name": "planted"}),
        )
        .await?,
        a.post(
            "/api/v1/groups/preview",
            json!({"orgId": "other", "filterConditions": linux_filter()}),
        )
        .await?,
        a.get("/api/v1/groups?orgId=other").await?,
        a.post(
            "/api/v1/devices/import",
            json!({"orgId": "other", "deviceIds": ["x"]}),
        )
        .await?,
    ];
    for (i, answer) in attempts.iter().enumerate() {
        expect_error(answer, StatusCode::NOT_FOUND, "not_found");
        assert!(
            !answer.body.to_string().contains("b-1\""),
            "attempt {i} leaked: {answer:?}"
        );
    }
    // Listings show only the key's org.
    let listed = a.get("/api/v1/groups").await?;
    assert_eq!(listed.body["total"], 0);
    let listed = a.get("/api/v1/device-groups").await?;
    assert_eq!(listed.body["total"], 0);
    let listed = a.get("/api/v1/devices/groups").await?;
    assert_eq!(listed.body["pagination"]["total"], 0);
    let orgs = a.get("/api/v1/orgs").await?;
    assert_eq!(orgs.body["orgs"].as_array().unwrap().len(), 1);
    expect_error(
        &a.post("/api/v1/orgs", json!({"id": "new"})).await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Nothing of org B changed.
    let after: Value = sqlx::query_scalar(
        "SELECT to_jsonb(g) - 'updated_at' FROM device_groups g WHERE id = $1::uuid",
    )
    .bind(&theirs)
    .fetch_one(api.pool())
    .await?;
    assert_eq!(before, after);
    let control: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM control_log WHERE kind NOT IN ('org_created', 'group_upserted')",
    )
    .fetch_one(api.pool())
    .await?;
    assert_eq!(
        control, 0,
        "no pin, membership, release or device change was recorded"
    );
    let groups_of_other: i64 =
        sqlx::query_scalar("SELECT count(*) FROM device_groups WHERE org_id = 'other'")
            .fetch_one(api.pool())
            .await?;
    assert_eq!(groups_of_other, 2);
    // The system key sees both, and must name the org to create.
    let all = api.system.get("/api/v1/groups").await?;
    assert_eq!(all.body["total"], 2);
    let unnamed = api
        .system
        .post("/api/v1/groups", json!({"name": "x"}))
        .await?;
    expect_error(&unnamed, StatusCode::BAD_REQUEST, "bad_request");
    api.stop().await
}

#[tokio::test]
async fn bad_requests_get_the_error_shape_never_a_500() -> anyhow::Result<()> {
    let api = Api::start_with(|c| c.api.max_body_bytes = 4096).await?;
    let c = &api.acme;
    let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
        (Some(b"{not json".to_vec()), "malformed"),
        (Some(b"{\"name\": \"x\"".to_vec()), "truncated"),
        (
            Some(vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
            "invalid utf-8",
        ),
        (Some(br#"{"name": 42}"#.to_vec()), "wrong type"),
        (
            Some(br#"{"name": "x", "colour": "red"}"#.to_vec()),
            "unknown field",
        ),
        (Some(b"[]".to_vec()), "not an object"),
        (
            Some(format!("{}{}", "[".repeat(3000), "]".repeat(3000)).into_bytes()),
            "too large",
        ),
        (
            Some(format!("{{\"name\": \"{}\"}}", "a".repeat(8000)).into_bytes()),
            "over the body limit",
        ),
        (None, "no body"),
    ];
    for (body, what) in cases {
        let answer = c.send(Method::POST, "/api/v1/groups", body).await?;
        assert!(answer.status.is_client_error(), "{what}: {answer:?}");
        assert_eq!(answer.error(), "bad_request", "{what}: {answer:?}");
        assert!(answer.body["message"].is_string(), "{what}");
    }
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(8000));
    let answer = c
        .send(Method::POST, "/api/v1/groups", Some(huge.into_bytes()))
        .await?;
    expect(&answer, StatusCode::PAYLOAD_TOO_LARGE);
    let long_name = c
        .post("/api/v1/groups", json!({"name": "n".repeat(300)}))
        .await?;
    expect_error(&long_name, StatusCode::BAD_REQUEST, "bad_request");
    // Path tricks and bad ids.
    for path in [
        "/api/v1/groups/not-a-uuid",
        "/api/v1/groups/%2e%2e%2f%2e%2e",
        "/api/v1/groups/'%20OR%201=1--",
    ] {
        let answer = c.get(path).await?;
        assert!(answer.status.is_client_error(), "{path}: {answer:?}");
        assert!(!answer.error().is_empty(), "{path}: {answer:?}");
    }
    // A group id that is not a UUID names no group, on every group path.
    for path in [
        "/api/v1/groups/not-a-uuid",
        "/api/v1/groups/grp_abc123",
        "/api/v1/groups/grp_abc123/devices",
        "/api/v1/device-groups/grp_abc123",
        "/api/v1/devices/groups/grp_abc123",
    ] {
        let answer = c.get(path).await?;
        expect_error(&answer, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(answer.body["message"], "Group not found", "{path}");
    }
    let sql = c
        .get("/api/v1/groups?search=%27%3B%20DROP%20TABLE%20device_groups%3B--")
        .await?;
    expect(&sql, StatusCode::OK);
    expect_error(
        &c.get("/api/v1/nothing-here").await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let wrong_method = c.send(Method::PUT, "/api/v1/groups", None).await?;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.error(), "bad_request");
    // Still serving, nothing stored.
    expect(&c.get("/api/v1/groups").await?, StatusCode::OK);
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM device_groups")
        .fetch_one(api.pool())
        .await?;
    assert_eq!(groups, 0);
    api.stop().await
}
