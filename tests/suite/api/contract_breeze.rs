//! Breeze's device-groups document, request shape by request shape, as its examples write them: the
//! routes, bodies, field names and answers of `/api/v1/groups` and `/api/v1/devices/groups`. (Membership
//! that must change through the worker — dynamic groups filling, pins, a change of type — is in
//! `contract_worker`.)

use hyper::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{create_group, devices, expect, expect_error, strings, Api};

/// Three devices of acme with the attributes Breeze's member records show, and one of another org.
async fn fleet(api: &Api) -> anyhow::Result<()> {
    devices(
        api.pool(),
        &[
            (
                "d-1",
                "acme",
                json!({"hostname": "SRV-PROD-01", "displayName": "Production Server 1",
                "status": "online", "osType": "linux", "lastSeenAt": "2026-02-18T10:30:00.000Z"}),
            ),
            (
                "d-2",
                "acme",
                json!({"hostname": "SRV-PROD-02", "status": "offline", "osType": "windows"}),
            ),
            (
                "d-3",
                "acme",
                json!({"hostname": "KIOSK-1", "status": "online", "osType": "linux"}),
            ),
            (
                "d-4",
                "acme",
                json!({"hostname": "KIOSK-2", "status": "online", "osType": "linux"}),
            ),
            (
                "d-5",
                "acme",
                json!({"hostname": "KIOSK-3", "status": "online", "osType": "linux"}),
            ),
            (
                "x-1",
                "other",
                json!({"hostname": "THEIRS", "osType": "linux"}),
            ),
        ],
    )
    .await
}

#[tokio::test]
async fn breeze_creates_a_static_group_with_org_name_and_type() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let created = api
        .system
        .post(
            "/api/v1/groups",
            json!({"orgId": "acme", "name": "Executive Laptops", "type": "static"}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.body["type"], "static");
    assert_eq!(created.body["orgId"], "acme");
    assert_eq!(created.body["name"], "Executive Laptops");
    assert!(Uuid::parse_str(created.body["id"].as_str().unwrap()).is_ok());
    // Names are 1 to 255 characters.
    let long = api
        .acme
        .post(
            "/api/v1/groups",
            json!({"name": "x".repeat(256), "type": "static"}),
        )
        .await?;
    expect_error(&long, StatusCode::BAD_REQUEST, "bad_request");
    api.stop().await
}

#[tokio::test]
async fn breeze_adds_devices_and_answers_added_skipped_and_total() -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let group = create_group(&api.acme, json!({"name": "Lobby Kiosks", "type": "static"})).await?;
    let devices = format!("/api/v1/groups/{group}/devices");
    let first = api
        .acme
        .post(&devices, json!({"deviceIds": ["d-3", "d-4", "d-5"]}))
        .await?;
    expect(&first, StatusCode::OK);
    assert_eq!(
        first.body,
        json!({"data": {"added": 3, "skipped": 0, "total": 3}})
    );
    // The document's example: two added to a group of three.
    let answer = api
        .acme
        .post(&devices, json!({ "deviceIds": ["d-1", "d-2"] }))
        .await?;
    expect(&answer, StatusCode::OK);
    assert_eq!(
        answer.body,
        json!({"data": {"added": 2, "skipped": 0, "total": 5}})
    );
    // Duplicate memberships are silently skipped.
    let again = api
        .acme
        .post(&devices, json!({"deviceIds": ["d-1", "d-1"]}))
        .await?;
    assert_eq!(
        again.body,
        json!({"data": {"added": 0, "skipped": 1, "total": 5}})
    );
    // Cross-org (and unknown) devices are rejected, and nothing is added.
    let group2 = create_group(&api.acme, json!({"name": "Second", "type": "static"})).await?;
    let refused = api
        .acme
        .post(
            &format!("/api/v1/groups/{group2}/devices"),
            json!({"deviceIds": ["d-1", "x-1", "ghost"]}),
        )
        .await?;
    expect_error(&refused, StatusCode::BAD_REQUEST, "bad_request");
    let listed: Vec<&str> = refused.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["x-1", "ghost"]);
    let members = api
        .acme
        .get(&format!("/api/v1/groups/{group2}/devices"))
        .await?;
    assert_eq!(members.body["total"], 0, "{:?}", members.body);
    api.stop().await
}

#[tokio::test]
async fn breeze_lists_members_with_their_device_fields_at_the_top() -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let group = create_group(&api.acme, json!({"name": "Servers", "type": "static"})).await?;
    api.acme
        .post(
            &format!("/api/v1/groups/{group}/devices"),
            json!({"deviceIds": ["d-1", "d-2", "d-3"]}),
        )
        .await?;
    let answer = api
        .acme
        .get(&format!("/api/v1/groups/{group}/devices?limit=2"))
        .await?;
    expect(&answer, StatusCode::OK);
    let first = &answer.body["data"][0];
    for field in [
        "deviceId",
        "hostname",
        "displayName",
        "status",
        "osType",
        "isPinned",
        "addedAt",
        "addedBy",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
    assert_eq!(first["deviceId"], "d-1");
    assert_eq!(first["hostname"], "SRV-PROD-01");
    assert_eq!(first["displayName"], "Production Server 1");
    assert_eq!(first["status"], "online");
    assert_eq!(first["osType"], "linux");
    assert_eq!(first["isPinned"], false);
    assert_eq!(first["addedBy"], "manual");
    assert!(first["addedAt"].as_str().is_some());
    // displayName is optional: null when the device has none.
    assert_eq!(answer.body["data"][1]["displayName"], Value::Null);
    // Cursor paging, an addition.
    assert_eq!(answer.body["total"], 3);
    assert_eq!(answer.body["nextAfter"], "d-2");
    let rest = api
        .acme
        .get(&format!("/api/v1/groups/{group}/devices?after=d-2"))
        .await?;
    assert_eq!(strings(&rest.body["data"], "deviceId"), ["d-3"]);
    api.stop().await
}

#[tokio::test]
async fn breeze_removes_one_device_by_path_and_many_through_the_device_scoped_route(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let group = create_group(&api.acme, json!({"name": "Kiosks", "type": "static"})).await?;
    // Batch add through the device-scoped route.
    let added = api
        .acme
        .post(
            &format!("/api/v1/devices/groups/{group}/members"),
            json!({ "deviceIds": ["d-1", "d-2", "d-3", "d-4"] }),
        )
        .await?;
    expect(&added, StatusCode::OK);
    assert_eq!(added.body["data"]["added"], 4);
    // One by path.
    let removed = api
        .acme
        .delete(&format!("/api/v1/groups/{group}/devices/d-4"))
        .await?;
    expect(&removed, StatusCode::OK);
    assert_eq!(removed.body["data"]["total"], 3);
    let gone = api
        .acme
        .delete(&format!("/api/v1/groups/{group}/devices/d-4"))
        .await?;
    expect_error(&gone, StatusCode::NOT_FOUND, "not_found");
    // Many through the device-scoped route (a DELETE with a body).
    let bulk = api
        .acme
        .send(
            hyper::Method::DELETE,
            &format!("/api/v1/devices/groups/{group}/members"),
            Some(
                json!({ "deviceIds": ["d-1", "d-2"] })
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await?;
    expect(&bulk, StatusCode::OK);
    assert_eq!(
        bulk.body,
        json!({"data": {"removed": 2, "skipped": 0, "total": 1}})
    );
    let left = api
        .acme
        .get(&format!("/api/v1/groups/{group}/devices"))
        .await?;
    assert_eq!(strings(&left.body["data"], "deviceId"), ["d-3"]);
    // The membership log records each change with reason manual.
    let log = api
        .acme
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?limit=50&offset=0"
        ))
        .await?;
    assert_eq!(
        strings(&log.body["entries"], "action"),
        ["removed", "removed", "removed", "added", "added", "added", "added"]
    );
    api.stop().await
}

#[tokio::test]
async fn breeze_membership_log_entries_carry_every_documented_field_with_its_type(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let group = create_group(&api.acme, json!({"name": "Audited", "type": "static"})).await?;
    api.acme
        .post(
            &format!("/api/v1/groups/{group}/devices"),
            json!({"deviceIds": ["d-1", "d-2"]}),
        )
        .await?;
    api.acme
        .delete(&format!("/api/v1/groups/{group}/devices/d-2"))
        .await?;
    let log = api
        .acme
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?limit=50&offset=0"
        ))
        .await?;
    expect(&log, StatusCode::OK);
    let entries = log.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    for entry in entries {
        assert!(
            Uuid::parse_str(entry["id"].as_str().unwrap()).is_ok(),
            "{entry}"
        );
        assert_eq!(entry["groupId"], group.as_str());
        assert!(entry["deviceId"].is_string());
        assert!(entry["hostname"].is_string());
        assert!(entry.get("displayName").is_some());
        assert!(["added", "removed"].contains(&entry["action"].as_str().unwrap()));
        assert_eq!(entry["reason"], "manual");
        assert!(chrono::DateTime::parse_from_rfc3339(entry["createdAt"].as_str().unwrap()).is_ok());
    }
    // The optional filters: deviceId and action.
    let filtered = api
        .acme
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?deviceId=d-2&action=removed"
        ))
        .await?;
    assert_eq!(strings(&filtered.body["entries"], "deviceId"), ["d-2"]);
    // An entry's id is a cursor for the next, older page.
    let newest = entries[0]["id"].as_str().unwrap();
    let older = api
        .acme
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?before={newest}"
        ))
        .await?;
    assert_eq!(older.body["entries"].as_array().unwrap().len(), 2);
    api.stop().await
}

#[tokio::test]
async fn breeze_previews_a_saved_filter_with_total_count_devices_and_evaluated_at(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let filter = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"},
        {"operator": "OR", "conditions": [
            {"field": "status", "operator": "equals", "value": "online"},
            {"field": "daysSinceLastSeen", "operator": "greaterThan", "value": 7}]}]});
    let group = create_group(
        &api.acme,
        json!({"name": "Linux online", "filterConditions": filter}),
    )
    .await?;
    // The document's request: no body, a limit.
    let answer = api
        .acme
        .send(
            hyper::Method::POST,
            &format!("/api/v1/groups/{group}/preview?limit=20"),
            None,
        )
        .await?;
    expect(&answer, StatusCode::OK);
    let data = &answer.body["data"];
    assert_eq!(data["totalCount"], 4);
    let first = &data["devices"][0];
    assert_eq!(
        first,
        &json!({"id": "d-1", "hostname": "SRV-PROD-01", "displayName": "Production Server 1",
                "osType": "linux", "status": "online", "lastSeenAt": "2026-02-18T10:30:00.000Z"})
    );
    assert!(data["evaluatedAt"].as_str().unwrap().ends_with('Z'));
    // limit is 1 to 100, default 10.
    let small = api
        .acme
        .send(
            hyper::Method::POST,
            &format!("/api/v1/groups/{group}/preview?limit=1"),
            None,
        )
        .await?;
    assert_eq!(small.body["data"]["devices"].as_array().unwrap().len(), 1);
    let over = api
        .acme
        .send(
            hyper::Method::POST,
            &format!("/api/v1/groups/{group}/preview?limit=101"),
            None,
        )
        .await?;
    expect_error(&over, StatusCode::BAD_REQUEST, "bad_request");
    // Before saving filter changes: the changed filter, previewed on the saved group.
    let changed = api
        .acme
        .post(
            &format!("/api/v1/groups/{group}/preview"),
            json!({"filterConditions": {"operator": "AND", "conditions": [
                {"field": "osType", "operator": "equals", "value": "windows"}]}}),
        )
        .await?;
    assert_eq!(changed.body["data"]["totalCount"], 1);
    api.stop().await
}

#[tokio::test]
async fn breeze_lists_groups_by_site_type_parent_and_search() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let c = &api.acme;
    let all = create_group(c, json!({"name": "All Servers", "type": "static"})).await?;
    create_group(
        c,
        json!({"name": "Windows Servers", "parentId": all, "siteId": "hq",
        "filterConditions": {"operator": "AND", "conditions": [
            {"field": "osType", "operator": "equals", "value": "windows"}]}}),
    )
    .await?;
    create_group(
        c,
        json!({"name": "Linux Servers", "parentId": all, "type": "static"}),
    )
    .await?;
    let by = |query: String| async move { c.get(&format!("/api/v1/groups?{query}")).await };
    assert_eq!(by("type=dynamic".into()).await?.body["total"], 1);
    assert_eq!(by("siteId=hq".into()).await?.body["total"], 1);
    assert_eq!(by(format!("parentId={all}")).await?.body["total"], 2);
    let found = by("search=linux".into()).await?;
    assert_eq!(strings(&found.body["groups"], "name"), ["Linux Servers"]);
    api.stop().await
}

#[tokio::test]
async fn breeze_device_scoped_routes_list_by_page_and_create_update_delete() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let base = "/api/v1/devices/groups";
    let created = api
        .system
        .post(
            base,
            json!({"orgId": "acme", "name": "Scoped", "type": "static"}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_string();
    for name in ["B", "C"] {
        create_group(&api.acme, json!({"name": name, "type": "static"})).await?;
    }
    let page = api
        .system
        .get(&format!("{base}?orgId=acme&page=2&limit=2"))
        .await?;
    expect(&page, StatusCode::OK);
    assert_eq!(strings(&page.body["data"], "name"), ["Scoped"]);
    assert_eq!(
        page.body["pagination"],
        json!({"page": 2, "limit": 2, "total": 3})
    );
    let patched = api
        .acme
        .patch(&format!("{base}/{id}"), json!({"name": "Scoped, renamed"}))
        .await?;
    expect(&patched, StatusCode::OK);
    assert_eq!(patched.body["name"], "Scoped, renamed");
    expect(
        &api.acme.delete(&format!("{base}/{id}")).await?,
        StatusCode::NO_CONTENT,
    );
    expect_error(
        &api.acme.get(&format!("/api/v1/groups/{id}")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    api.stop().await
}

#[tokio::test]
async fn breeze_refusals_say_what_the_document_says() -> anyhow::Result<()> {
    let api = Api::start().await?;
    fleet(&api).await?;
    let c = &api.acme;
    let dynamic = create_group(
        c,
        json!({"name": "Dyn", "filterConditions": {"operator": "AND",
        "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]}}),
    )
    .await?;
    let manual = c
        .post(
            &format!("/api/v1/groups/{dynamic}/devices"),
            json!({"deviceIds": ["d-1"]}),
        )
        .await?;
    expect_error(&manual, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        manual.body["message"],
        "Cannot manually add devices to a dynamic group"
    );
    let parent = create_group(c, json!({"name": "Parent", "type": "static"})).await?;
    create_group(
        c,
        json!({"name": "Child", "type": "static", "parentId": parent}),
    )
    .await?;
    let delete = c.delete(&format!("/api/v1/groups/{parent}")).await?;
    expect_error(&delete, StatusCode::CONFLICT, "conflict");
    assert_eq!(
        delete.body["message"],
        "Cannot delete group with child groups"
    );
    let filter = |conditions: Value| json!({"name": "Bad", "filterConditions": {"operator": "AND", "conditions": conditions}});
    let unknown = c
        .post(
            "/api/v1/groups",
            filter(json!([{"field": "nope", "operator": "equals", "value": 1}])),
        )
        .await?;
    assert!(
        unknown.body["message"]
            .as_str()
            .unwrap()
            .contains("Unknown field"),
        "{:?}",
        unknown.body
    );
    let operator = c
        .post(
            "/api/v1/groups",
            filter(json!([{"field": "status", "operator": "greaterThan", "value": "online"}])),
        )
        .await?;
    assert!(
        operator.body["message"]
            .as_str()
            .unwrap()
            .contains("not valid for field"),
        "{:?}",
        operator.body
    );
    let empty = c.post("/api/v1/groups", filter(json!([]))).await?;
    assert!(
        empty.body["message"]
            .as_str()
            .unwrap()
            .contains("Group must have at least one condition"),
        "{:?}",
        empty.body
    );
    // A group cannot be its own parent.
    let own = c
        .patch(
            &format!("/api/v1/groups/{parent}"),
            json!({"parentId": parent}),
        )
        .await?;
    expect_error(&own, StatusCode::BAD_REQUEST, "bad_request");
    api.stop().await
}
