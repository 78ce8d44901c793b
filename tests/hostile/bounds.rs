//! Answers are bounded whatever the request, and duplicate keys are refused in every body.
//!
//! - A request holding hundreds of thousands of mistakes (250 `in` conditions of 1,000 bad enum values, a
//!   batch of 10,000 bad device ids) answers 400 with at most 100 details plus one saying there are more,
//!   every detail an object with a `message`, and the whole answer under [`ANSWER_LIMIT`].
//! - A duplicate object key — at the top level, inside `filterConditions`, inside a condition, inside a
//!   batch — answers 400 naming the key and where it is, and writes nothing.

use serde_json::{json, Value};

use crate::api::Api;
use crate::raw::{self, Reply, Request};

/// The largest answer the mistake-heavy requests below may get. The documented worst case for any error
/// answer is `cohort::api::error::MAX_ERROR_BODY_BYTES` (about 625 KiB, every character escaped at its
/// widest); these answers are about 15 KB.
const ANSWER_LIMIT: usize = 64 * 1024;
/// `api.max_body_bytes` (the default).
const MAX_BODY: usize = 1 << 20;

async fn send(api: &Api, method: &'static str, path: &str, body: impl Into<Vec<u8>>) -> Reply {
    let request = Request::new(method, path.as_bytes().to_vec())
        .header("authorization", &format!("Bearer {}", api.acme))
        .json(body);
    raw::send(api.addr, &request)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// 250 conditions `status in [1,000 × "x"]`: 250,000 bad values in just under 1 MiB.
fn mistakes() -> Value {
    let values = vec![json!("x"); 1000];
    let leaves: Vec<Value> = (0..250)
        .map(|_| json!({"field": "status", "operator": "in", "value": values}))
        .collect();
    json!({"operator": "AND", "conditions": leaves})
}

/// Checks a refusal full of mistakes: 400, the error shape, 100 details and one saying there are more,
/// each an object with a message, under [`ANSWER_LIMIT`]. Returns the details.
fn capped(what: &str, reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 400, "{what}: {}", reply.describe());
    assert!(
        reply.body.len() < ANSWER_LIMIT,
        "{what}: a {} byte answer",
        reply.body.len()
    );
    let body = reply.json();
    assert_eq!(body["error"], "bad_request", "{what}");
    let details = body["details"].as_array().cloned().unwrap_or_default();
    assert_eq!(details.len(), 101, "{what}: {}", reply.describe());
    for detail in &details {
        assert!(
            detail.is_object() && detail["message"].is_string(),
            "{what}: {detail}"
        );
    }
    assert_eq!(
        details[100],
        json!({"message": "More problems were found; only the first 100 are listed"}),
        "{what}"
    );
    details
}

#[tokio::test]
async fn a_request_full_of_mistakes_gets_a_bounded_answer() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let filter = mistakes();

    let preview = json!({"filterConditions": filter}).to_string();
    assert!(preview.len() < MAX_BODY, "{} bytes", preview.len());
    let reply = send(&api, "POST", "/api/v1/groups/preview", preview).await;
    let details = capped("preview", &reply);
    assert_eq!(details[0]["path"], "$.conditions[0].value[0]");
    let message = reply.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("(and at least 100 more problems; details lists the first 100)"),
        "{message}"
    );

    let create = json!({"name": "mistakes", "filterConditions": filter}).to_string();
    capped(
        "create",
        &send(&api, "POST", "/api/v1/groups", create).await,
    );

    // A batch of 10,000 bad device ids, and an import of as many.
    let group = send(
        &api,
        "POST",
        "/api/v1/groups",
        json!({"name": "s"}).to_string(),
    )
    .await;
    assert_eq!(group.status, 201, "{}", group.describe());
    let id = group.json()["id"].as_str().unwrap_or_default().to_string();
    let bad_ids = json!({"deviceIds": vec![""; 10_000]}).to_string();
    let details = capped(
        "batch",
        &send(
            &api,
            "POST",
            &format!("/api/v1/groups/{id}/devices"),
            bad_ids.clone(),
        )
        .await,
    );
    assert_eq!(details[99]["path"], "deviceIds[99]");
    capped(
        "import",
        &send(&api, "POST", "/api/v1/devices/import", bad_ids).await,
    );

    // A few mistakes are each listed, with nothing added.
    let few = json!({"name": "few", "filterConditions": {"operator": "AND", "conditions": [
        {"field": "status", "operator": "in", "value": ["x", "y"]}]}});
    let reply = send(&api, "POST", "/api/v1/groups", few.to_string()).await;
    assert_eq!(reply.status, 400, "{}", reply.describe());
    assert_eq!(reply.json()["details"].as_array().map(Vec::len), Some(2));

    // Descriptive problems are objects too, each with its field's path.
    let reply = send(
        &api,
        "POST",
        "/api/v1/groups",
        json!({"name": " ", "tags": [""]}).to_string(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.describe());
    assert_eq!(
        reply.json()["details"],
        json!([
            {"path": "name", "message": "name must not be empty"},
            {"path": "tags[0]", "message": "each tag must be 1 to 64 characters"},
        ])
    );
    api.stop().await
}

#[tokio::test]
async fn a_duplicate_key_anywhere_in_a_body_is_refused() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let group = send(
        &api,
        "POST",
        "/api/v1/groups",
        json!({"name": "s"}).to_string(),
    )
    .await;
    assert_eq!(group.status, 201, "{}", group.describe());
    let id = group.json()["id"].as_str().unwrap_or_default().to_string();
    let members = format!("/api/v1/groups/{id}/devices");
    let patch = format!("/api/v1/groups/{id}");
    let cases: Vec<(&str, &str, &str, &str, &str)> = vec![
        (
            "top level",
            "POST",
            "/api/v1/groups",
            r#"{"name": "a", "name": "b"}"#,
            "$.name",
        ),
        (
            "filterConditions",
            "POST",
            "/api/v1/groups",
            r#"{"name": "d", "filterConditions": {"operator": "AND", "operator": "OR",
                "conditions": [{"field": "status", "operator": "equals", "value": "online"}]}}"#,
            "$.filterConditions.operator",
        ),
        (
            "a condition",
            "POST",
            "/api/v1/groups",
            r#"{"name": "d", "filterConditions": {"operator": "AND", "conditions": [
                {"field": "osType", "operator": "equals", "value": "linux"},
                {"field": "status", "operator": "equals", "value": "online", "value": "offline"}]}}"#,
            "$.filterConditions.conditions[1].value",
        ),
        (
            "a preview",
            "POST",
            "/api/v1/groups/preview",
            r#"{"filterConditions": {"operator": "OR", "conditions": [
                {"field": "status", "field": "osType", "operator": "isNull"}]}}"#,
            "$.filterConditions.conditions[0].field",
        ),
        (
            "a patch",
            "PATCH",
            &patch,
            r#"{"description": "x", "description": "y"}"#,
            "$.description",
        ),
        (
            "a batch",
            "POST",
            &members,
            r#"{"deviceIds": ["dev-1"], "deviceIds": ["dev-2"]}"#,
            "$.deviceIds",
        ),
        (
            "inside a batch's identifier",
            "POST",
            &members,
            r#"{"identifiers": [{"kind": "imei", "kind": "iccid", "identifier": "1"}]}"#,
            "$.identifiers[0].kind",
        ),
    ];
    for (what, method, path, body, at) in cases {
        let reply = send(&api, method, path, body).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.describe());
        let answer = reply.json();
        let key = at.rsplit('.').next().unwrap_or_default();
        let key = key.split('[').next().unwrap_or_default();
        assert_eq!(
            answer["message"],
            format!("Duplicate key {key:?} at {at}: each key may appear once per object"),
            "{what}"
        );
        assert_eq!(answer["details"][0]["path"], at, "{what}");
    }
    // ThingSpace's creation refuses it too, in ThingSpace's shape.
    let reply = send(
        &api,
        "POST",
        "/api/m2m/v1/groups",
        r#"{"accountName": "acme", "groupName": "t", "groupName": "u"}"#,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.describe());
    let message = reply.json()["errorMessage"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("Duplicate key \"groupName\" at $.groupName"),
        "{message}"
    );

    // Nothing was written: the one group made above is the only one.
    let list = raw::send(
        api.addr,
        &Request::new("GET", b"/api/v1/groups".to_vec())
            .header("authorization", &format!("Bearer {}", api.acme)),
    )
    .await?;
    assert_eq!(list.json()["total"], json!(1), "{}", list.describe());
    api.stop().await
}
