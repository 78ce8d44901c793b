//! A release's health over the API: created with a failure signal, halt thresholds and a soak time (and
//! refused when they cannot work), read one by one with its progress, paused and resumed (each a dry run
//! first; refused in the wrong state), and invisible to another org.

use hyper::StatusCode;
use serde_json::json;

use super::{expect, expect_error, fleet_group, Api};

#[tokio::test]
async fn a_release_is_created_with_its_health_shown_with_progress_paused_and_resumed(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    let c = &api.acme;
    let group = fleet_group(&api, "h", 10).await?;
    let failure = json!({"attribute": "custom.otaStatus", "value": "failed"});
    for (bad, says) in [
        (json!({"halt": {}}), "no threshold"),
        (
            json!({"halt": {"failures": 0}, "failure": failure}),
            "at least 1",
        ),
        (json!({"halt": {"revertRate": 1.5}}), "at most 1"),
        (json!({"halt": {"failures": 3}}), "no failure signal"),
        (
            json!({"failure": {"attribute": "nope.field", "value": "x"}}),
            "failure",
        ),
        (
            json!({"failure": {"attribute": "uptimeSeconds", "value": "x"}}),
            "failure",
        ),
        (
            json!({"failure": {"attribute": "status", "value": null}}),
            "null",
        ),
        (json!({"soakSeconds": 0}), "soakSeconds"),
        (
            json!({"halt": {"failures": 3, "bogus": 1}, "failure": failure}),
            "bogus",
        ),
    ] {
        let mut body = json!({"groupId": group, "version": "2"});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let refused = c.post("/api/v1/releases", body.clone()).await?;
        expect_error(&refused, StatusCode::BAD_REQUEST, "bad_request");
        let message = refused.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{body}: {message:?} should say {says:?}"
        );
    }
    let created = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2", "stages": [50, 100], "failure": failure,
                   "halt": {"failures": 3, "revertRate": 0.5, "rollback": true}, "soakSeconds": 3600}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    let release = &created.body["release"];
    let id = release["id"].as_str().unwrap().to_string();
    assert_eq!(release["state"], "active");
    assert_eq!(release["failure"], failure);
    assert_eq!(
        release["halt"],
        json!({"failures": 3, "revertRate": 0.5, "rollback": true})
    );
    assert_eq!(release["soakSeconds"], 3600);
    assert!(release["nextAdvanceAt"].is_string());
    // No worker runs here: nothing is counted yet.
    assert_eq!(
        release["progress"],
        json!({"targeted": 0, "running": 0, "previous": 0, "failed": 0, "reverted": 0, "complete": false})
    );
    let one = c.get(&format!("/api/v1/releases/{id}")).await?;
    expect(&one, StatusCode::OK);
    assert_eq!(one.body["id"], id.as_str());
    // Counts as the workers store them (in parts, summed).
    sqlx::query(
        "INSERT INTO release_progress (release_id, partition, targeted, running, failed, reverted) \
         VALUES ($1::uuid, 0, 6, 3, 1, 0), ($1::uuid, 1, 4, 2, 0, 1)",
    )
    .bind(&id)
    .execute(api.pool())
    .await?;
    let progress = c.get(&format!("/api/v1/releases/{id}/progress")).await?;
    expect(&progress, StatusCode::OK);
    assert_eq!(
        progress.body["progress"],
        json!({"targeted": 10, "running": 5, "previous": 3, "failed": 1, "reverted": 1, "complete": false})
    );
    assert_eq!(progress.body["state"], "active");
    assert_eq!(progress.body["percentage"], 50.0);

    // Pause: a dry run changes nothing; then paused, recorded, with no next advance; again is 409.
    let dry = c
        .post(
            &format!("/api/v1/releases/{id}/pause"),
            json!({"dryRun": true}),
        )
        .await?;
    expect(&dry, StatusCode::OK);
    // It writes nothing (that a pause retargets no device once workers hold the targets is checked
    // with a worker in the firmware suite).
    assert_eq!(dry.body["release"]["state"], "active");
    let state: String =
        sqlx::query_scalar("SELECT state FROM firmware_releases WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(api.pool())
            .await?;
    assert_eq!(state, "active");
    let paused = c
        .post(&format!("/api/v1/releases/{id}/pause"), json!({}))
        .await?;
    expect(&paused, StatusCode::OK);
    assert_eq!(paused.body["release"]["state"], "paused");
    assert_eq!(paused.body["release"]["halted"]["by"], "operator");
    assert!(paused.body["release"]["nextAdvanceAt"].is_null());
    let again = c
        .post(&format!("/api/v1/releases/{id}/pause"), json!({}))
        .await?;
    expect_error(&again, StatusCode::CONFLICT, "conflict");
    let advance = c
        .post(&format!("/api/v1/releases/{id}/advance"), json!({}))
        .await?;
    expect_error(&advance, StatusCode::CONFLICT, "conflict");
    // Resume: active again, the halt cleared; resuming an active release is 409.
    let resumed = c
        .post(&format!("/api/v1/releases/{id}/resume"), json!({}))
        .await?;
    expect(&resumed, StatusCode::OK);
    assert_eq!(resumed.body["release"]["state"], "active");
    assert!(resumed.body["release"]["halted"].is_null());
    let again = c
        .post(&format!("/api/v1/releases/{id}/resume"), json!({}))
        .await?;
    expect_error(&again, StatusCode::CONFLICT, "conflict");

    // Another org sees none of it.
    for path in [
        format!("/api/v1/releases/{id}"),
        format!("/api/v1/releases/{id}/progress"),
    ] {
        expect_error(
            &api.other.get(&path).await?,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let foreign = api
        .other
        .post(&format!("/api/v1/releases/{id}/pause"), json!({}))
        .await?;
    expect_error(&foreign, StatusCode::NOT_FOUND, "not_found");
    // Withdrawn: still readable, its progress says so.
    let withdrawn = c.delete(&format!("/api/v1/releases/{id}")).await?;
    expect(&withdrawn, StatusCode::OK);
    let progress = c.get(&format!("/api/v1/releases/{id}/progress")).await?;
    assert_eq!(progress.body["state"], "withdrawn");
    api.stop().await
}
