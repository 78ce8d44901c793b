//! Staged releases over the API: stages given as percentages, shown on the release and on each device's
//! view, advanced one stage at a time (a dry run first, counting the devices the next stage adds; over the
//! org's retarget cap, confirmed with the dry run's token), refused past the last one or with stages that
//! are not increasing percentages.

use hyper::{Method, StatusCode};
use serde_json::json;

use super::{expect, expect_error, fleet_group, Api};

#[tokio::test]
async fn a_release_in_stages_is_created_shown_and_advanced_stage_by_stage() -> anyhow::Result<()> {
    // A hundred device views and more in a burst: above the default rate limit per key.
    let api = Api::start_with(|c| c.api.rate_limit_burst = 1_000).await?;
    let c = &api.acme;
    let group = fleet_group(&api, "s", 100).await?;
    for bad in [
        json!({"stages": [50, 10]}),
        json!({"stages": [0, 100]}),
        json!({"stages": [12.345]}),
        json!({"stages": [10], "percentage": 10}),
        json!({"percentage": 101}),
    ] {
        let mut body = json!({"groupId": group, "version": "2"});
        body.as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let refused = c.post("/api/v1/releases", body).await?;
        expect_error(&refused, StatusCode::BAD_REQUEST, "bad_request");
    }
    let dry = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2", "stages": [10, 50, 100], "dryRun": true}),
        )
        .await?;
    expect(&dry, StatusCode::OK);
    let first = dry.body["impact"]["changed"].as_u64().unwrap();
    assert!(first > 0 && first < 40, "about a tenth of 100: {first}");
    let created = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2", "stages": [10, 50, 100]}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.body["impact"], dry.body["impact"]);
    let release = &created.body["release"];
    assert_eq!(release["stages"], json!([10.0, 50.0, 100.0]));
    assert_eq!(
        (release["stage"].clone(), release["percentage"].clone()),
        (json!(0), json!(10.0))
    );
    let id = release["id"].as_str().unwrap().to_string();
    // Each device's view says whether the stage selects it, and why; together, the dry run's count.
    let mut selected = 0;
    for i in 0..100 {
        let view = c.get(&format!("/api/v1/devices/s-{i:03}")).await?;
        expect(&view, StatusCode::OK);
        let releases = view.body["firmware"]["releases"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(releases.len(), 1);
        let r = &releases[0];
        assert_eq!(
            (r["releaseId"].as_str(), r["percentage"].as_f64()),
            (Some(id.as_str()), Some(10.0))
        );
        let below = r["position"].as_f64().unwrap() < 10.0;
        assert_eq!(r["selected"], below);
        assert!(r["why"]
            .as_str()
            .unwrap()
            .starts_with(if below { "selected" } else { "not yet" }));
        selected += u64::from(below);
    }
    assert_eq!(selected, first);
    let path = format!("/api/v1/releases/{id}/advance");
    let dry = c.post(&path, json!({"dryRun": true})).await?;
    expect(&dry, StatusCode::OK);
    assert_eq!(dry.body["release"]["stage"], 1);
    let second = dry.body["impact"]["changed"].as_u64().unwrap();
    assert!(second > 0, "50% adds devices");
    let listed = c.get("/api/v1/releases").await?;
    assert_eq!(
        listed.body["releases"][0]["stage"], 0,
        "a dry run writes nothing"
    );
    let advanced = c.post(&path, json!({})).await?;
    expect(&advanced, StatusCode::OK);
    assert_eq!(advanced.body["release"]["stage"], 1);
    assert_eq!(advanced.body["release"]["percentage"], 50.0);
    assert_eq!(advanced.body["impact"]["changed"].as_u64(), Some(second));
    // An advance that retargets more devices than the org's cap needs its dry run's token.
    let cap = c
        .patch("/api/v1/orgs/acme/settings", json!({"retargetCap": 1}))
        .await?;
    expect(&cap, StatusCode::OK);
    let capped = c.post(&path, json!({"stage": 2})).await?;
    expect_error(&capped, StatusCode::CONFLICT, "retarget_cap_exceeded");
    let dry = c.post(&path, json!({"stage": 2, "dryRun": true})).await?;
    expect(&dry, StatusCode::OK);
    let token = dry.body["confirmationToken"].as_str().unwrap().to_string();
    let body = json!({"stage": 2}).to_string().into_bytes();
    let last = c
        .send_with(
            Method::POST,
            &path,
            Some(body),
            &[("cohort-confirm", &token)],
        )
        .await?;
    expect(&last, StatusCode::OK);
    assert_eq!(
        first + second + last.body["impact"]["changed"].as_u64().unwrap(),
        100,
        "the stages together select the whole group, each device once"
    );
    let past = c.post(&path, json!({})).await?;
    expect_error(&past, StatusCode::BAD_REQUEST, "bad_request");
    // Another org's key sees no such release.
    let foreign = api.other.post(&path, json!({})).await?;
    expect_error(&foreign, StatusCode::NOT_FOUND, "not_found");
    api.stop().await
}
