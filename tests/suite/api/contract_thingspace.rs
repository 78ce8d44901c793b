//! ThingSpace's "Create Device Group" request, as its document writes it, where a ThingSpace client sends
//! it (`/api/m2m/v1/groups`) and on `/api/v1/groups`.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::{devices, expect, Api};
use cohort::store::api_keys;

/// The document's example body (with its `"identifier", "…"` typo written as JSON means it).
fn nv_tanks(kind: &str) -> Value {
    json!({
        "accountName": "acme",
        "groupName": "NV tanks",
        "groupDescription": "Nevada tank level monitors",
        "devicesToAdd": [
            {"kind": kind, "identifier": "990003420535537"},
            {"kind": kind, "identifier": "990005373420535"},
            {"kind": kind, "identifier": "990003420537355"}
        ]
    })
}

async fn tanks(api: &Api) -> anyhow::Result<()> {
    devices(
        api.pool(),
        &[
            ("tank-1", "acme", json!({"imei": "990003420535537"})),
            ("tank-2", "acme", json!({"imei": "990005373420535"})),
            ("tank-3", "acme", json!({"imei": "990003420537355"})),
            ("tank-x", "other", json!({"imei": "990000000000001"})),
        ],
    )
    .await
}

/// The members of the org's group named `name`.
async fn members_of(api: &Api, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT m.device_id FROM device_group_memberships m JOIN device_groups g ON g.id = m.group_id \
         WHERE g.name = $1 AND g.deleted_at IS NULL ORDER BY m.device_id",
    )
    .bind(name)
    .fetch_all(api.pool())
    .await?)
}

fn expect_failure(answer: &cohort_testkit::http::Answer, status: StatusCode) {
    expect(answer, status);
    assert!(
        answer.body["errorCode"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{answer:?}"
    );
    assert!(
        answer.body["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
    assert!(answer.body.get("error").is_none(), "{answer:?}");
}

#[tokio::test]
async fn thingspace_creates_a_group_with_devices_by_imei_at_its_own_path() -> anyhow::Result<()> {
    let api = Api::start().await?;
    tanks(&api).await?;
    let answer = api
        .acme
        .post("/api/m2m/v1/groups", nv_tanks("imei"))
        .await?;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"success": true}));
    assert_eq!(
        members_of(&api, "NV tanks").await?,
        ["tank-1", "tank-2", "tank-3"]
    );
    let group = api.acme.get("/api/v1/groups?search=NV").await?;
    assert_eq!(
        group.body["groups"][0]["description"],
        "Nevada tank level monitors"
    );
    assert_eq!(group.body["groups"][0]["type"], "static");
    // The name is unique within the account.
    let again = api
        .acme
        .post("/api/m2m/v1/groups", nv_tanks("imei"))
        .await?;
    expect_failure(&again, StatusCode::BAD_REQUEST);
    api.stop().await
}

#[tokio::test]
async fn thingspace_identifier_kinds_are_read_in_any_case_on_the_groups_path() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    tanks(&api).await?;
    let answer = api.acme.post("/api/v1/groups", nv_tanks("IMEI")).await?;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"success": true}));
    assert_eq!(
        members_of(&api, "NV tanks").await?,
        ["tank-1", "tank-2", "tank-3"]
    );
    // Zero devices is a valid request too.
    let empty = api
        .acme
        .post(
            "/api/m2m/v1/groups",
            json!({"accountName": "acme", "groupName": "Empty"}),
        )
        .await?;
    assert_eq!(empty.body, json!({"success": true}));
    api.stop().await
}

#[tokio::test]
async fn thingspace_failures_answer_error_code_and_message_and_change_nothing() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    tanks(&api).await?;
    // An identifier no device of the account reports (here: another org's device).
    let mut body = nv_tanks("imei");
    body["devicesToAdd"][1]["identifier"] = json!("990000000000001");
    let unknown = api.acme.post("/api/m2m/v1/groups", body).await?;
    expect_failure(&unknown, StatusCode::BAD_REQUEST);
    // A malformed identifier, an unknown kind, a missing name.
    let mut malformed = nv_tanks("imei");
    malformed["devicesToAdd"][0]["identifier"] = json!("12ab");
    let mut kind = nv_tanks("imei");
    kind["devicesToAdd"][0]["kind"] = json!("serial");
    for body in [malformed, kind, json!({"accountName": "acme"})] {
        let answer = api.acme.post("/api/m2m/v1/groups", body).await?;
        expect_failure(&answer, StatusCode::BAD_REQUEST);
    }
    // Another account than the key's.
    let mut elsewhere = nv_tanks("imei");
    elsewhere["accountName"] = json!("other");
    expect_failure(
        &api.acme.post("/api/m2m/v1/groups", elsewhere).await?,
        StatusCode::BAD_REQUEST,
    );
    assert!(members_of(&api, "NV tanks").await?.is_empty());
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM device_groups")
        .fetch_one(api.pool())
        .await?;
    assert_eq!(groups, 0, "no group was left behind");
    // A missing key: ThingSpace's shape, with the status that says so.
    let anonymous = api
        .acme
        .with_key(None)
        .post("/api/m2m/v1/groups", nv_tanks("imei"))
        .await?;
    expect_failure(&anonymous, StatusCode::UNAUTHORIZED);
    api.stop().await
}

#[tokio::test]
async fn thingspace_session_token_header_carries_the_key() -> anyhow::Result<()> {
    let api = Api::start().await?;
    tanks(&api).await?;
    let (_, key) = api_keys::create(api.pool(), Some("acme"), "thingspace").await?;
    let client = api.acme.with_key(None);
    let answer = client
        .send_with(
            Method::POST,
            "/api/m2m/v1/groups",
            Some(nv_tanks("imei").to_string().into_bytes()),
            &[
                ("authorization", "Bearer some-oauth-token"),
                ("VZ-M2M-Token", &key),
            ],
        )
        .await?;
    expect(&answer, StatusCode::OK);
    assert_eq!(answer.body, json!({"success": true}));
    api.stop().await
}
