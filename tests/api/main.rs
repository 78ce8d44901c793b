//! The REST API against real PostgreSQL: every route, its error cases, org isolation, keys, limits, and
//! (with a worker running) the end-to-end flows a user relies on.

#[path = "../support/mod.rs"]
mod support;

mod contract_breeze;
mod contract_device_groups;
mod contract_thingspace;
mod contract_worker;
mod demo;
mod e2e;
mod membership;
mod probe;

use cohort::config::Config;
use cohort::store::{api_keys, groups};
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use support::http::{Answer, Client};
use support::TestDatabase;

/// The API alone (no worker), with a system key and one key per org.
struct Api {
    db: TestDatabase,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    system: Client,
    acme: Client,
    other: Client,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let db = TestDatabase::new().await?;
        cohort::store::migrate(db.pool()).await?;
        groups::create_org(db.pool(), "acme", "Acme").await?;
        groups::create_org(db.pool(), "other", "Other").await?;
        let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
        config.database.url = db.url().to_string();
        config.http.listen = "127.0.0.1:0".parse()?;
        tweak(&mut config);
        let support::app::RunningApi { stop, task, addr } = support::app::spawn_api(config).await?;
        let (_, system) = api_keys::create(db.pool(), None, "system").await?;
        let (_, acme) = api_keys::create(db.pool(), Some("acme"), "acme").await?;
        let (_, other) = api_keys::create(db.pool(), Some("other"), "other").await?;
        Ok(Self {
            system: Client::new(addr, Some(&system)),
            acme: Client::new(addr, Some(&acme)),
            other: Client::new(addr, Some(&other)),
            db,
            stop: Some(stop),
            task,
        })
    }

    fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        self.db.cleanup().await
    }
}

/// Stores devices directly (as a worker would have), `(id, org, attributes)`.
async fn devices(pool: &PgPool, rows: &[(&str, &str, Value)]) -> anyhow::Result<()> {
    for (id, org, attributes) in rows {
        sqlx::query(
            "INSERT INTO devices (id, org_id, attributes, partition) VALUES ($1, $2, $3, 0)",
        )
        .bind(id)
        .bind(org)
        .bind(attributes)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn linux_filter() -> Value {
    json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]})
}

/// The string `field` of every element of the array `list`.
fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

fn expect(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "unexpected answer: {answer:?}");
}

/// The error shape every failure shares.
fn expect_error(answer: &Answer, status: StatusCode, code: &str) {
    expect(answer, status);
    assert_eq!(answer.error(), code, "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
    assert!(answer.body["details"].is_array(), "{answer:?}");
}

/// A DELETE with a JSON body (the batch removals).
async fn delete_json(client: &Client, path: &str, body: Value) -> anyhow::Result<Answer> {
    client
        .send(Method::DELETE, path, Some(body.to_string().into_bytes()))
        .await
}

async fn create_group(client: &Client, body: Value) -> anyhow::Result<String> {
    let answer = client.post("/api/v1/groups", body).await?;
    expect(&answer, StatusCode::CREATED);
    Ok(answer.body["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let anonymous = api.acme.with_key(None);
    expect_error(
        &anonymous.get("/api/v1/groups").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    for bad in ["nonsense", "cohort_000000000000_wrong", "cohort_zz"] {
        let answer = api.acme.with_key(Some(bad)).get("/api/v1/groups").await?;
        expect_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A key that was valid stops working when revoked.
    let (info, key) = api_keys::create(api.pool(), Some("acme"), "temp").await?;
    let temp = api.acme.with_key(Some(&key));
    expect(&temp.get("/api/v1/groups").await?, StatusCode::OK);
    assert!(api_keys::revoke(api.pool(), &info.prefix).await?);
    expect_error(
        &temp.get("/api/v1/groups").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Only the digest is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT digest FROM api_keys WHERE id = $1")
        .bind(info.id)
        .fetch_one(api.pool())
        .await?;
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key[7..]));
    api.stop().await
}

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

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() -> anyhow::Result<()> {
    let api = Api::start_with(|c| {
        c.api.rate_limit_per_second = 1;
        c.api.rate_limit_burst = 3;
    })
    .await?;
    for _ in 0..3 {
        expect(&api.acme.get("/api/v1/groups").await?, StatusCode::OK);
    }
    let limited = api.acme.get("/api/v1/groups").await?;
    expect_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = limited.headers["retry-after"].to_str()?.parse()?;
    assert!(retry >= 1);
    // Another key has its own budget.
    expect(&api.other.get("/api/v1/groups").await?, StatusCode::OK);
    api.stop().await
}

#[tokio::test]
async fn the_served_openapi_document_is_the_checked_in_one() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let served = api.acme.with_key(None).get("/api/v1/openapi.json").await?;
    expect(&served, StatusCode::OK);
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/openapi.json"
    ))?)?;
    assert_eq!(
        served.body, checked_in,
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
    let paths = checked_in["paths"].as_object().unwrap();
    for path in [
        "/api/v1/groups",
        "/api/v1/groups/{id}/devices",
        "/api/v1/device-groups/{group_id}/devices",
        "/api/v1/devices/groups/{id}/members",
        "/api/v1/groups/{id}/membership-log",
        "/api/v1/releases",
        "/api/v1/devices/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(
        !paths
            .keys()
            .any(|p| p == "/api/v1/groups/{id}/members"
                || p.starts_with("/api/v1/groups/{id}/members/")),
        "the members dialect is gone"
    );
    // Operation ids are unique.
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate operation ids: {ids:?}");
    api.stop().await
}

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

#[tokio::test]
async fn orgs_are_created_by_system_keys() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let created = api
        .system
        .post("/api/v1/orgs", json!({"id": "initech", "name": "Initech"}))
        .await?;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.body["id"], "initech");
    expect_error(
        &api.system
            .post("/api/v1/orgs", json!({"id": "initech"}))
            .await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_error(
        &api.system
            .post("/api/v1/orgs", json!({"id": "bad id!"}))
            .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let listed = api.system.get("/api/v1/orgs").await?;
    assert_eq!(listed.body["orgs"].as_array().unwrap().len(), 3);
    let group = api
        .system
        .post("/api/v1/groups", json!({"orgId": "initech", "name": "all"}))
        .await?;
    expect(&group, StatusCode::CREATED);
    let missing = api
        .system
        .post("/api/v1/groups", json!({"orgId": "nobody", "name": "all"}))
        .await?;
    expect_error(&missing, StatusCode::NOT_FOUND, "not_found");
    api.stop().await
}

/// Runs the binary with `args`, given the database's URL (`COHORT_DATABASE_URL`) and none of this
/// process's other `COHORT_*` variables, which it would refuse.
fn cohort(db_url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .env_clear()
        .envs(support::child::inherited())
        .env("COHORT_DATABASE_URL", db_url)
        .output()?)
}

#[tokio::test]
async fn a_key_created_by_the_command_line_works_until_revoked() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let url = api.db.url().to_string();
    let created = support::blocking(support::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || {
            cohort(
                &url,
                &["api-key", "create", "--org", "newco", "--name", "ci"],
            )
        }
    })
    .await?;
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout)?.trim().to_string();
    assert!(key.starts_with("cohort_"), "{key}");
    let client = api.acme.with_key(Some(&key));
    let orgs = client.get("/api/v1/orgs").await?;
    assert_eq!(
        orgs.body["orgs"][0]["id"], "newco",
        "the org was created with the key"
    );
    let listed = support::blocking(support::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || cohort(&url, &["api-key", "list"])
    })
    .await?;
    let listing = String::from_utf8(listed.stdout)?;
    assert!(listing.contains("newco"), "{listing}");
    assert!(
        !listing.contains(&key[20..]),
        "the listing never shows a key"
    );
    let prefix = key[7..19].to_string();
    let revoked = support::blocking(support::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || cohort(&url, &["api-key", "revoke", &prefix])
    })
    .await?;
    assert!(revoked.status.success(), "{revoked:?}");
    expect_error(
        &client.get("/api/v1/orgs").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let again = support::blocking(support::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || cohort(&url, &["api-key", "revoke", "000000000000"])
    })
    .await?;
    assert!(!again.status.success(), "revoking an unknown key fails");
    let missing_scope = cohort(&url, &["api-key", "create"])?;
    assert!(!missing_scope.status.success());
    api.stop().await
}
