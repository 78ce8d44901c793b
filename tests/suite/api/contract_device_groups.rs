//! The device-groups API document, request shape by request shape: `/api/v1/device-groups` in its own
//! snake_case words, its error table, and Breeze's camelCase fields accepted on the same path.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::{devices, expect, expect_error, strings, Api};

const BASE: &str = "/api/v1/device-groups";

async fn fleet(api: &Api) -> anyhow::Result<()> {
    devices(
        api.pool(),
        &[
            (
                "dev_abc123",
                "acme",
                json!({"hostname": "a", "osType": "ios"}),
            ),
            (
                "dev_def456",
                "acme",
                json!({"hostname": "b", "osType": "ios"}),
            ),
            (
                "dev_ghi789",
                "acme",
                json!({"hostname": "c", "osType": "android"}),
            ),
            ("dev_theirs", "other", json!({"hostname": "d"})),
        ],
    )
    .await
}

/// Creates a group as the document's example does and returns its id.
async fn beta_testers(api: &Api) -> anyhow::Result<String> {
    let created = api
        .system
        .post(
            BASE,
            json!({"org_id": "acme", "name": "iOS Beta Testers", "description": "Internal canary cohort",
                   "group_type": "static", "tags": ["ios", "canary"]}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    Ok(created.body["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn device_groups_are_created_and_listed_with_the_documented_fields() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let id = beta_testers(&api).await?;
    let listed = api.system.get(&format!("{BASE}?org_id=acme")).await?;
    expect(&listed, StatusCode::OK);
    let group = &listed.body["groups"][0];
    assert_eq!(group["id"], id.as_str());
    assert_eq!(group["org_id"], "acme");
    assert_eq!(group["name"], "iOS Beta Testers");
    assert_eq!(group["description"], "Internal canary cohort");
    assert_eq!(group["group_type"], "static");
    assert_eq!(group["tags"], json!(["ios", "canary"]));
    assert_eq!(group["device_count"], 0);
    assert!(group["created_at"].as_str().unwrap().contains('T'));
    // Pagination: limit defaults to 100 and is at most 1000; offset skips.
    assert_eq!(listed.body["total"], 1);
    assert_eq!(listed.body["limit"], 100);
    assert_eq!(listed.body["offset"], 0);
    let page = api.acme.get(&format!("{BASE}?limit=50&offset=1")).await?;
    assert_eq!(
        (page.body["limit"].clone(), page.body["offset"].clone()),
        (json!(50), json!(1))
    );
    assert_eq!(page.body["groups"], json!([]));
    expect_error(
        &api.acme.get(&format!("{BASE}?limit=1001")).await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    api.stop().await
}

#[tokio::test]
async fn a_device_group_is_retrieved_updated_and_deleted() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let id = beta_testers(&api).await?;
    let one = api.acme.get(&format!("{BASE}/{id}")).await?;
    expect(&one, StatusCode::OK);
    assert_eq!(one.body["group_type"], "static");
    // PUT updates the metadata it names; the rest is kept.
    let updated = api
        .acme
        .put(
            &format!("{BASE}/{id}"),
            json!({"name": "iOS Beta", "tags": ["ios"]}),
        )
        .await?;
    expect(&updated, StatusCode::OK);
    assert_eq!(updated.body["name"], "iOS Beta");
    assert_eq!(updated.body["tags"], json!(["ios"]));
    assert_eq!(updated.body["description"], "Internal canary cohort");
    expect(
        &api.acme.delete(&format!("{BASE}/{id}")).await?,
        StatusCode::NO_CONTENT,
    );
    expect_error(
        &api.acme.get(&format!("{BASE}/{id}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    api.stop().await
}

#[tokio::test]
async fn device_group_members_are_added_and_removed_one_by_one_and_in_batches() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    fleet(&api).await?;
    let id = beta_testers(&api).await?;
    let c = &api.acme;
    // One device by path.
    let one = c
        .send(
            Method::POST,
            &format!("{BASE}/{id}/devices/dev_ghi789"),
            None,
        )
        .await?;
    expect(&one, StatusCode::CREATED);
    assert_eq!(one.body["added"], json!(["dev_ghi789"]));
    let again = c
        .send(
            Method::POST,
            &format!("{BASE}/{id}/devices/dev_ghi789"),
            None,
        )
        .await?;
    expect(&again, StatusCode::OK);
    assert_eq!(again.body["skipped"], json!(["dev_ghi789"]));
    // A batch, with the actor label for the audit trail.
    let batch = c
        .post(
            &format!("{BASE}/{id}/devices"),
            json!({"device_ids": ["dev_abc123", "dev_def456"], "added_by": "release-bot"}),
        )
        .await?;
    expect(&batch, StatusCode::OK);
    assert_eq!(
        batch.body,
        json!({"group_id": id, "added": ["dev_abc123", "dev_def456"], "skipped": []})
    );
    let log = c
        .get(&format!("{BASE}/{id}/membership-log?limit=1"))
        .await?;
    assert!(
        log.body["entries"][0]["cause"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("release-bot ("),
        "{:?}",
        log.body
    );
    // Members, with limit and offset.
    let members = c
        .get(&format!("{BASE}/{id}/devices?limit=2&offset=1"))
        .await?;
    expect(&members, StatusCode::OK);
    assert_eq!(members.body["group_id"], id.as_str());
    assert_eq!(members.body["total"], 3);
    assert_eq!(
        strings(&members.body["devices"], "device_id"),
        ["dev_def456", "dev_ghi789"]
    );
    assert_eq!(members.body["devices"][0]["added_by"], "manual");
    assert!(members.body["devices"][0]["added_at"].is_string());
    // Remove one by path, then a batch.
    expect(
        &c.delete(&format!("{BASE}/{id}/devices/dev_ghi789")).await?,
        StatusCode::NO_CONTENT,
    );
    expect_error(
        &c.delete(&format!("{BASE}/{id}/devices/dev_ghi789")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let removed = c
        .send(
            Method::DELETE,
            &format!("{BASE}/{id}/devices"),
            Some(
                json!({"device_ids": ["dev_abc123", "dev_ghi789"]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await?;
    expect(&removed, StatusCode::OK);
    assert_eq!(
        removed.body,
        json!({"group_id": id, "removed": ["dev_abc123"], "skipped": ["dev_ghi789"]})
    );
    api.stop().await
}

#[tokio::test]
async fn device_groups_answer_the_error_table() -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let id = beta_testers(&api).await?;
    let c = &api.acme;
    // 400: invalid or missing request fields.
    expect_error(
        &c.post(BASE, json!({"description": "no name"})).await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    expect_error(
        &c.post(&format!("{BASE}/{id}/devices"), json!({"device_ids": []}))
            .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // 401: missing or invalid API key.
    expect_error(
        &c.with_key(None).get(BASE).await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // 404: a resource that does not exist, whatever the form of its id.
    for missing in ["grp_abc123", "00000000-0000-4000-8000-000000000000"] {
        for path in [
            format!("{BASE}/{missing}"),
            format!("{BASE}/{missing}/devices"),
        ] {
            expect_error(&c.get(&path).await?, StatusCode::NOT_FOUND, "not_found");
        }
    }
    expect_error(
        &c.send(
            Method::POST,
            &format!("{BASE}/{id}/devices/dev_nowhere"),
            None,
        )
        .await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // An unknown or another org's device in a batch: 400, every one listed, nothing added.
    let foreign = c
        .post(
            &format!("{BASE}/{id}/devices"),
            json!({"device_ids": ["dev_abc123", "dev_theirs"]}),
        )
        .await?;
    expect_error(&foreign, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(foreign.body["details"][0]["deviceId"], "dev_theirs");
    assert_eq!(
        c.get(&format!("{BASE}/{id}/devices")).await?.body["total"],
        0
    );
    // 409: the resource already exists.
    expect_error(
        &c.post(BASE, json!({"name": "iOS Beta Testers"})).await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    api.stop().await
}

#[tokio::test]
async fn device_groups_are_rate_limited_with_retry_after() -> anyhow::Result<()> {
    let api = Api::start_with(|config| {
        config.api.rate_limit_per_second = 1;
        config.api.rate_limit_burst = 2;
    })
    .await?;
    let mut limited = None;
    for _ in 0..5 {
        let answer = api.acme.get(BASE).await?;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the third request within a second is limited");
    expect_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.get("retry-after").is_some());
    api.stop().await
}

#[tokio::test]
async fn breeze_camel_case_fields_are_accepted_on_the_device_groups_path() -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let created = api
        .system
        .post(
            BASE,
            json!({"orgId": "acme", "name": "Linux", "type": "dynamic",
                   "filterConditions": {"operator": "AND", "conditions": [
                       {"field": "osType", "operator": "equals", "value": "ios"}]}}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    // Answers follow the device-groups API.
    assert_eq!(created.body["group_type"], "dynamic");
    assert_eq!(created.body["org_id"], "acme");
    assert_eq!(created.body["filter_fields_used"], json!(["osType"]));
    let id = created.body["id"].as_str().unwrap();
    let listed = api
        .system
        .get(&format!("{BASE}?orgId=acme&type=dynamic"))
        .await?;
    assert_eq!(listed.body["total"], 1);
    let preview = api
        .acme
        .send(Method::POST, &format!("{BASE}/{id}/preview"), None)
        .await?;
    expect(&preview, StatusCode::OK);
    assert_eq!(preview.body["data"]["totalCount"], 2);
    let static_group = api
        .acme
        .post(BASE, json!({"name": "Hand picked", "type": "static"}))
        .await?;
    let sid = static_group.body["id"].as_str().unwrap();
    let added = api
        .acme
        .post(
            &format!("{BASE}/{sid}/devices"),
            json!({"deviceIds": ["dev_abc123"], "addedBy": "ops"}),
        )
        .await?;
    expect(&added, StatusCode::OK);
    assert_eq!(added.body["added"], json!(["dev_abc123"]));
    api.stop().await
}
