//! Groups through the API: created, listed, read, updated and deleted; invalid filters refused with every
//! error and its path; the hierarchy's rules; previews of the devices a filter matches.

use hyper::StatusCode;
use serde_json::{json, Value};

use super::{create_group, devices, expect, expect_error, linux_filter, strings, Api};

#[tokio::test]
async fn groups_are_created_listed_read_updated_and_deleted() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let c = &api.acme;
    let created = c
        .post(
            "/api/v1/groups",
            json!({"name": "Linux boxes", "description": "all linux", "tags": ["os", "prod"],
                   "filterConditions": linux_filter()}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    let g = &created.body;
    assert_eq!(g["type"], "dynamic");
    assert_eq!(g["orgId"], "acme");
    assert_eq!(g["filterFieldsUsed"], json!(["osType"]));
    assert_eq!(g["deviceCount"], 0);
    let id = g["id"].as_str().unwrap().to_string();
    let stat = create_group(c, json!({"name": "Hand picked", "tags": ["prod"]})).await?;

    // Names are unique per org (another org may reuse one).
    let dup = c
        .post("/api/v1/groups", json!({"name": "Linux boxes"}))
        .await?;
    expect_error(&dup, StatusCode::CONFLICT, "conflict");
    create_group(&api.other, json!({"name": "Linux boxes"})).await?;

    // Listing: pagination with total, filters.
    let all = c.get("/api/v1/groups?limit=1").await?;
    expect(&all, StatusCode::OK);
    assert_eq!(all.body["total"], 2);
    assert_eq!(all.body["groups"].as_array().unwrap().len(), 1);
    assert_eq!(all.body["limit"], 1);
    let second = c.get("/api/v1/groups?limit=1&offset=1").await?;
    assert_eq!(second.body["groups"][0]["name"], "Linux boxes");
    let dynamic = c.get("/api/v1/groups?type=dynamic").await?;
    assert_eq!(dynamic.body["total"], 1);
    let tagged = c.get("/api/v1/groups?tags=prod,os").await?;
    assert_eq!(tagged.body["total"], 1);
    let searched = c.get("/api/v1/groups?search=PICK").await?;
    assert_eq!(searched.body["groups"][0]["id"], json!(stat));
    let wildcard = c.get("/api/v1/groups?search=%25").await?;
    assert_eq!(wildcard.body["total"], 0, "search text is literal");
    for bad in [
        "limit=0",
        "limit=1001",
        "offset=-1",
        "type=weird",
        "limit=abc",
        "bogus=1",
    ] {
        let answer = c.get(&format!("/api/v1/groups?{bad}")).await?;
        expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }

    // The device-groups path serves the same groups, in its own (snake_case) words.
    let via_alias = c.get(&format!("/api/v1/device-groups/{id}")).await?;
    expect(&via_alias, StatusCode::OK);
    assert_eq!(via_alias.body["name"], "Linux boxes");
    assert_eq!(via_alias.body["group_type"], "dynamic");
    assert_eq!(via_alias.body["filter_fields_used"], json!(["osType"]));
    let listed = c.get("/api/v1/device-groups?limit=1").await?;
    expect(&listed, StatusCode::OK);
    assert_eq!(listed.body["total"], 2);
    assert_eq!(listed.body["groups"].as_array().unwrap().len(), 1);
    // The device-scoped path lists by page.
    let paged = c.get("/api/v1/devices/groups?page=2&limit=1").await?;
    expect(&paged, StatusCode::OK);
    assert_eq!(paged.body["data"][0]["name"], "Linux boxes");
    assert_eq!(
        paged.body["pagination"],
        json!({"page": 2, "limit": 1, "total": 2})
    );

    // PATCH changes only what it names; a new filter bumps the version and the derived fields.
    let patched = c
        .patch(
            &format!("/api/v1/groups/{id}"),
            json!({"description": "changed",
                   "filterConditions": {"operator": "OR", "conditions": [
                       {"field": "osType", "operator": "equals", "value": "linux"},
                       {"field": "tags", "operator": "hasAny", "value": ["edge"]}]}}),
        )
        .await?;
    expect(&patched, StatusCode::OK);
    assert_eq!(patched.body["name"], "Linux boxes");
    assert_eq!(patched.body["description"], "changed");
    assert_eq!(patched.body["version"], 2);
    assert_eq!(patched.body["filterFieldsUsed"], json!(["osType", "tags"]));
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM control_log WHERE kind = 'group_upserted' AND payload ->> 'group_id' = $1",
    )
    .bind(&id)
    .fetch_one(api.pool())
    .await?;
    assert_eq!(entries, 2, "created and changed: each announced to workers");
    // A descriptive change is not a definition change.
    let renamed = c
        .patch(&format!("/api/v1/groups/{id}"), json!({"name": "Linux"}))
        .await?;
    assert_eq!(renamed.body["version"], 2);

    // PUT replaces: what it leaves out is cleared.
    let put = c
        .put(
            &format!("/api/v1/groups/{id}"),
            json!({"name": "Linux only", "filterConditions": linux_filter()}),
        )
        .await?;
    expect(&put, StatusCode::OK);
    assert_eq!(put.body["description"], "");
    assert_eq!(put.body["tags"], json!([]));
    let put_without_filter = c
        .put(&format!("/api/v1/groups/{id}"), json!({"name": "x"}))
        .await?;
    expect_error(&put_without_filter, StatusCode::BAD_REQUEST, "bad_request");
    // A change of type: static with a filter, or dynamic without one, is refused.
    let static_with_filter = c
        .patch(
            &format!("/api/v1/groups/{id}"),
            json!({"type": "static", "filterConditions": linux_filter()}),
        )
        .await?;
    expect_error(&static_with_filter, StatusCode::BAD_REQUEST, "bad_request");
    let dynamic_without = c
        .patch(
            &format!("/api/v1/groups/{stat}"),
            json!({"type": "dynamic"}),
        )
        .await?;
    expect_error(&dynamic_without, StatusCode::BAD_REQUEST, "bad_request");
    let unchanged = c.get(&format!("/api/v1/groups/{id}")).await?;
    assert_eq!(unchanged.body["type"], "dynamic");
    assert_eq!(unchanged.body["version"], put.body["version"]);
    let filter_on_static = c
        .patch(
            &format!("/api/v1/groups/{stat}"),
            json!({"filterConditions": linux_filter()}),
        )
        .await?;
    expect_error(&filter_on_static, StatusCode::BAD_REQUEST, "bad_request");
    // `type` alone turns a dynamic group static (its filter goes), and back with a filter.
    let version = unchanged.body["version"].as_i64().unwrap();
    let turned = c
        .patch(&format!("/api/v1/groups/{id}"), json!({"type": "static"}))
        .await?;
    expect(&turned, StatusCode::OK);
    assert_eq!(turned.body["type"], "static");
    assert_eq!(turned.body["filterConditions"], Value::Null);
    assert_eq!(turned.body["filterFieldsUsed"], json!([]));
    assert_eq!(turned.body["version"], version + 1);
    let back = c
        .patch(
            &format!("/api/v1/groups/{id}"),
            json!({"type": "dynamic", "filterConditions": linux_filter()}),
        )
        .await?;
    expect(&back, StatusCode::OK);
    assert_eq!(back.body["type"], "dynamic");
    assert_eq!(back.body["filterFieldsUsed"], json!(["osType"]));
    assert_eq!(back.body["version"], version + 2);

    // Delete, then it is gone (and its name is free again).
    expect(
        &c.delete(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NO_CONTENT,
    );
    expect_error(
        &c.get(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        &c.delete(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    create_group(c, json!({"name": "Linux only"})).await?;
    api.stop().await
}

#[tokio::test]
async fn an_invalid_filter_is_refused_with_every_error_and_its_path() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let answer = api
        .acme
        .post(
            "/api/v1/groups",
            json!({"name": "bad", "filterConditions": {"operator": "AND", "conditions": [
                {"field": "nope", "operator": "equals", "value": 1},
                {"field": "uptimeSeconds", "operator": "startsWith", "value": "x"},
                {"operator": "OR", "conditions": []}]}}),
        )
        .await?;
    expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let details = answer.body["details"].as_array().unwrap();
    let messages = strings(&answer.body["details"], "message");
    assert!(messages.contains(&"Unknown field: nope"), "{messages:?}");
    assert!(
        messages.contains(&"Operator startsWith not valid for field uptimeSeconds"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"Group must have at least one condition"),
        "{messages:?}"
    );
    assert!(details
        .iter()
        .all(|d| d["path"].as_str().is_some_and(|p| p.starts_with('$'))));
    // Nothing was stored.
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM device_groups")
        .fetch_one(api.pool())
        .await?;
    assert_eq!(groups, 0);
    // A dynamic group needs a filter; a static one has none.
    let answer = api
        .acme
        .post("/api/v1/groups", json!({"name": "d", "type": "dynamic"}))
        .await?;
    expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let answer = api
        .acme
        .post(
            "/api/v1/groups",
            json!({"name": "s", "type": "static", "filterConditions": linux_filter()}),
        )
        .await?;
    expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    let answer = api
        .acme
        .post("/api/v1/groups", json!({"name": "   "}))
        .await?;
    expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    api.stop().await
}

#[tokio::test]
async fn the_hierarchy_refuses_cycles_foreign_parents_and_deleting_parents() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let c = &api.acme;
    let root = create_group(c, json!({"name": "root"})).await?;
    let child = create_group(c, json!({"name": "child", "parentId": root})).await?;
    let grandchild = create_group(c, json!({"name": "grandchild", "parentId": child})).await?;
    let children = c.get(&format!("/api/v1/groups?parentId={root}")).await?;
    assert_eq!(children.body["total"], 1);

    let cycle = c
        .patch(
            &format!("/api/v1/groups/{root}"),
            json!({"parentId": grandchild}),
        )
        .await?;
    expect_error(&cycle, StatusCode::BAD_REQUEST, "bad_request");
    let own = c
        .patch(&format!("/api/v1/groups/{root}"), json!({"parentId": root}))
        .await?;
    expect_error(&own, StatusCode::BAD_REQUEST, "bad_request");
    let foreign = create_group(&api.other, json!({"name": "theirs"})).await?;
    let cross = c
        .post("/api/v1/groups", json!({"name": "x", "parentId": foreign}))
        .await?;
    expect_error(&cross, StatusCode::BAD_REQUEST, "bad_request");

    let refused = c.delete(&format!("/api/v1/groups/{child}")).await?;
    expect_error(&refused, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        refused.body["message"],
        "Cannot delete group with child groups"
    );
    // Detaching the grandchild (null clears the parent) makes the delete possible.
    let detached = c
        .patch(
            &format!("/api/v1/groups/{grandchild}"),
            json!({"parentId": null}),
        )
        .await?;
    assert_eq!(detached.body["parentId"], Value::Null);
    expect(
        &c.delete(&format!("/api/v1/groups/{child}")).await?,
        StatusCode::NO_CONTENT,
    );
    api.stop().await
}

#[tokio::test]
async fn previews_count_and_sample_the_devices_a_filter_matches() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let mut rows = Vec::new();
    let ids: Vec<String> = (0..30).map(|i| format!("d-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let os = if i % 3 == 0 { "linux" } else { "windows" };
        let site = if i < 15 { "north" } else { "south" };
        rows.push((
            id.as_str(),
            "acme",
            json!({"osType": os, "siteId": site, "uptimeSeconds": i}),
        ));
    }
    rows.push(("foreign", "other", json!({"osType": "linux"})));
    devices(api.pool(), &rows).await?;
    let c = &api.acme;
    let answer = c
        .post(
            "/api/v1/groups/preview?limit=3",
            json!({"filterConditions": linux_filter()}),
        )
        .await?;
    expect(&answer, StatusCode::OK);
    let preview = &answer.body["data"];
    assert_eq!(preview["totalCount"], 10);
    assert_eq!(preview["examined"], 30);
    let sample = preview["devices"].as_array().unwrap();
    assert_eq!(sample.len(), 3);
    // Each device shows its id and the display fields only (null when it lacks them).
    assert_eq!(
        sample[0],
        json!({"id": "d-00", "hostname": null, "displayName": null, "osType": "linux",
               "status": null, "lastSeenAt": null})
    );
    assert!(preview["evaluatedAt"].as_str().unwrap().ends_with('Z'));

    // A saved group previews its own filter, within its site.
    let north = create_group(
        c,
        json!({"name": "north linux", "siteId": "north", "filterConditions": {"operator": "AND",
            "conditions": [{"field": "osType", "operator": "equals", "value": "linux"},
                           {"field": "uptimeSeconds", "operator": "greaterThan", "value": 3}]}}),
    )
    .await?;
    let saved = c
        .post(&format!("/api/v1/groups/{north}/preview"), json!({}))
        .await?;
    expect(&saved, StatusCode::OK);
    // linux in north (0..15, i % 3 == 0) with uptime > 3: 6, 9, 12.
    assert_eq!(saved.body["data"]["totalCount"], 3);
    assert_eq!(saved.body["data"]["examined"], 15);
    let sampled = strings(&saved.body["data"]["devices"], "id");
    assert_eq!(sampled, ["d-06", "d-09", "d-12"]);
    // With a body, a change not yet saved: another filter, another site, or both.
    let path = format!("/api/v1/groups/{north}/preview");
    let other_filter = c
        .post(&path, json!({"filterConditions": linux_filter()}))
        .await?;
    expect(&other_filter, StatusCode::OK);
    let sampled = strings(&other_filter.body["data"]["devices"], "id");
    assert_eq!(sampled, ["d-00", "d-03", "d-06", "d-09", "d-12"]);
    let other_site = c.post(&path, json!({"siteId": "south"})).await?;
    expect(&other_site, StatusCode::OK);
    let sampled = strings(&other_site.body["data"]["devices"], "id");
    assert_eq!(sampled, ["d-15", "d-18", "d-21", "d-24", "d-27"]);
    let both = c
        .post(
            &path,
            json!({"siteId": "south", "filterConditions": {"operator": "AND", "conditions": [
                {"field": "uptimeSeconds", "operator": "greaterThan", "value": 27}]}}),
        )
        .await?;
    assert_eq!(
        strings(&both.body["data"]["devices"], "id"),
        ["d-28", "d-29"]
    );
    let kept = c.get(&format!("/api/v1/groups/{north}")).await?;
    assert_eq!(kept.body["version"], 1, "a preview saves nothing");
    assert_eq!(kept.body["siteId"], "north");
    let bad_change = c
        .post(
            &path,
            json!({"filterConditions": {"operator": "XOR", "conditions": []}}),
        )
        .await?;
    expect_error(&bad_change, StatusCode::BAD_REQUEST, "bad_request");

    for bad in ["limit=0", "limit=101"] {
        let answer = c
            .post(&format!("/api/v1/groups/{north}/preview?{bad}"), json!({}))
            .await?;
        expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    let invalid = c
        .post(
            "/api/v1/groups/preview",
            json!({"filterConditions": {"operator": "AND", "conditions": [
            {"field": "hostname", "operator": "matches", "value": "(unclosed"}]}}),
        )
        .await?;
    expect_error(&invalid, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!invalid.body["details"].as_array().unwrap().is_empty());
    let stat = create_group(c, json!({"name": "static"})).await?;
    let answer = c
        .post(&format!("/api/v1/groups/{stat}/preview"), json!({}))
        .await?;
    expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    // A static group previews a filter before it is turned dynamic.
    let answer = c
        .post(
            &format!("/api/v1/groups/{stat}/preview"),
            json!({"filterConditions": linux_filter()}),
        )
        .await?;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body["data"]["totalCount"], 10);
    api.stop().await
}
