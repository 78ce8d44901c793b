//! An org's retarget cap: a change that would retarget more devices than the cap is refused (409, with its
//! impact) unless it carries the token of a dry run made moments before for the same change with the same
//! impact; a change under the cap needs none.

use std::time::{SystemTime, UNIX_EPOCH};

use cohort::firmware::confirm::{self, Confirmable};
use cohort::store::retarget_cap;
use cohort_testkit::app::{metric, Harness, ORG};
use cohort_testkit::http::{Answer, Client};
use hyper::Method;
use serde_json::{json, Value};

use super::dry_run::{client, enrol, with_dry_run, written};
use super::{devices_applied, settled, tags_filter};

const CONFIRM: &str = "cohort-confirm";

/// Enrols `n` devices running version 1, tagged `tag`, numbered from `first`.
async fn fleet(h: &Harness, tag: &str, first: usize, n: usize) -> anyhow::Result<()> {
    for i in first..first + n {
        let attributes = json!({"firmwareVersion": "1", "tags": [tag]});
        enrol(h, &format!("{tag}-{i:02}"), attributes, json!({})).await?;
    }
    Ok(())
}

async fn set_cap(c: &Client, cap: Value) -> anyhow::Result<Answer> {
    c.patch(
        &format!("/api/v1/orgs/{ORG}/settings"),
        json!({ "retargetCap": cap }),
    )
    .await
}

/// `method path` with a JSON body (or none) and the token in `Cohort-Confirm`.
async fn confirmed(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    token: &str,
) -> anyhow::Result<Answer> {
    let body = body.map(|b| b.to_string().into_bytes());
    c.send_with(method, path, body, &[(CONFIRM, token)]).await
}

/// Asserts a refusal for the cap: 409 `retarget_cap_exceeded` with the cap and the impact, its message
/// containing `says`.
fn assert_capped(answer: &Answer, cap: i64, changed: i64, says: &str) {
    assert_eq!(answer.status, 409, "{answer:?}");
    assert_eq!(answer.error(), "retarget_cap_exceeded", "{answer:?}");
    assert_eq!(answer.body["cap"], cap, "{answer:?}");
    assert_eq!(answer.body["impact"]["changed"], changed, "{answer:?}");
    let message = answer.body["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message:?} should say {says:?}");
    assert!(
        answer.body["impact"]["sample"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.len() <= 20),
        "the impact lists a bounded sample: {answer:?}"
    );
}

fn token_of(answer: &Answer) -> String {
    answer.body["confirmationToken"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_over_the_cap_needs_the_token_of_a_dry_run_with_the_same_impact(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let group = h.group("fleet", tags_filter("fleet")).await?;
    fleet(&h, "fleet", 0, 12).await?;
    devices_applied(&h, 12, 1).await?;
    let capped = set_cap(&c, json!(5)).await?;
    assert_eq!(capped.status, 200, "{capped:?}");
    assert_eq!(capped.body["retargetCap"], 5);
    let nothing = written(&h).await?;
    let refusals = |reason: &str| {
        metric(&format!(
            "cohort_api_retarget_cap_refusals_total{{reason=\"{reason}\"}}"
        ))
    };
    let counted = [
        refusals("unconfirmed"),
        refusals("expired"),
        refusals("mismatch"),
    ];

    // Without a token: refused with the impact, and nothing is written.
    let body = json!({"groupId": group, "version": "2"});
    let refused = c.post("/api/v1/releases", body.clone()).await?;
    assert_capped(&refused, 5, 12, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"none -> 2": 12})
    );
    assert_eq!(written(&h).await?, nothing);

    // The dry run answers the impact and a token.
    let dry = c.post("/api/v1/releases", with_dry_run(&body)).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["impact"], refused.body["impact"]);
    let token = token_of(&dry);
    assert!(!token.is_empty(), "{dry:?}");

    // A forged token, one whose expiry was edited, and one for another change are refused.
    let (expiry, mac) = token.split_once('.').unwrap_or_default();
    let later = format!("{}.{mac}", expiry.parse::<i64>()? + 3600);
    let other = c
        .post(
            "/api/v1/releases",
            with_dry_run(&json!({"groupId": group, "version": "3"})),
        )
        .await?;
    for bad in [
        "9999999999.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "not a token",
        &later,
        &token_of(&other),
    ] {
        let answer = confirmed(&c, Method::POST, "/api/v1/releases", Some(&body), bad).await?;
        assert_capped(&answer, 5, 12, "does not confirm this change");
    }
    // A token signed right but already expired (as the clock will see it five minutes on).
    let secret = retarget_cap::confirmation_secret(h.pool()).await?;
    let transitions = [("none -> 2".to_string(), 12)].into_iter().collect();
    let expired = confirm::mint(
        &secret,
        &Confirmable {
            org_id: ORG,
            change: &format!("release group {group} 2 stages [10000]"),
            changed: 12,
            transitions: &transitions,
        },
        unix_now() - 1,
    );
    let answer = confirmed(&c, Method::POST, "/api/v1/releases", Some(&body), &expired).await?;
    assert_capped(&answer, 5, 12, "expired");
    assert_eq!(written(&h).await?, nothing, "no refusal writes anything");
    // Each refusal is counted by its reason (other tests may count too: at least these).
    assert!(refusals("unconfirmed") >= counted[0] + 1.0);
    assert!(refusals("expired") >= counted[1] + 1.0);
    assert!(refusals("mismatch") >= counted[2] + 4.0);

    // A device joins the group after the dry run: its token no longer confirms the release.
    fleet(&h, "fleet", 12, 1).await?;
    devices_applied(&h, 13, 1).await?;
    let grown = confirmed(&c, Method::POST, "/api/v1/releases", Some(&body), &token).await?;
    assert_capped(&grown, 5, 13, "impact changed since the dry run");
    assert_eq!(written(&h).await?, nothing);

    // A fresh dry run's token makes it, with the impact it showed.
    let dry = c.post("/api/v1/releases", with_dry_run(&body)).await?;
    let made = confirmed(
        &c,
        Method::POST,
        "/api/v1/releases",
        Some(&body),
        &token_of(&dry),
    )
    .await?;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(made.body["impact"], dry.body["impact"]);
    assert_eq!(made.body["impact"]["changed"], 13);
    assert!(made.body.get("confirmationToken").is_none(), "{made:?}");
    settled(&h, 13).await?;

    // Withdrawing it retargets the same 13 devices: capped alike.
    let release = made.body["release"]["id"].as_str().unwrap_or_default();
    let path = format!("/api/v1/releases/{release}");
    let refused = c.delete(&path).await?;
    assert_capped(&refused, 5, 13, "Confirmation needed");
    let dry = c.delete(&format!("{path}?dryRun=true")).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["impact"]["transitions"], json!({"2 -> none": 13}));
    // A release's token does not confirm the withdrawal.
    let answer = confirmed(&c, Method::DELETE, &path, None, &token).await?;
    assert_capped(&answer, 5, 13, "does not confirm this change");
    let withdrawn = confirmed(&c, Method::DELETE, &path, None, &token_of(&dry)).await?;
    assert_eq!(withdrawn.status, 200, "{withdrawn:?}");
    assert!(withdrawn.body["release"]["withdrawnAt"].is_string());
    settled(&h, 26).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_deletion_that_would_retarget_devices_is_capped_like_a_release(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let released = h.group("released", tags_filter("released")).await?;
    let plain = h.group("plain", tags_filter("plain")).await?;
    fleet(&h, "released", 0, 8).await?;
    fleet(&h, "plain", 0, 8).await?;
    devices_applied(&h, 16, 1).await?;
    let made = c
        .post(
            "/api/v1/releases",
            json!({"groupId": released, "version": "2"}),
        )
        .await?;
    assert_eq!(made.status, 201, "{made:?}");
    settled(&h, 8).await?;
    assert_eq!(set_cap(&c, json!(3)).await?.status, 200);

    // Deleting the group that carries the release would move its 8 members off it: capped, on every
    // family's route, and nothing is written.
    let nothing = written(&h).await?;
    let path = format!("/api/v1/groups/{released}");
    let refused = c.delete(&path).await?;
    assert_capped(&refused, 3, 8, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"2 -> none": 8})
    );
    for other in [
        format!("/api/v1/device-groups/{released}"),
        format!("/api/v1/devices/groups/{released}"),
    ] {
        let refused = c.delete(&other).await?;
        assert_capped(&refused, 3, 8, "Confirmation needed");
    }
    // The dry run answers the impact the deletion would have, and writes nothing.
    let dry = c.delete(&format!("{path}?dryRun=true")).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["dryRun"], true);
    assert_eq!(dry.body["impact"], refused.body["impact"]);
    assert_eq!(written(&h).await?, nothing);
    let deleted = confirmed(&c, Method::DELETE, &path, None, &token_of(&dry)).await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(c.get(&path).await?.status, 404);
    settled(&h, 16).await?;

    // A group that carries no release retargets no device: deleting it is never capped.
    let dry = c
        .delete(&format!("/api/v1/groups/{plain}?dryRun=true"))
        .await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["impact"]["changed"], 0);
    assert!(dry.body.get("confirmationToken").is_none(), "{dry:?}");
    let deleted = c.delete(&format!("/api/v1/groups/{plain}")).await?;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_under_the_cap_needs_no_token() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let group = h.group("fleet", tags_filter("fleet")).await?;
    fleet(&h, "fleet", 0, 6).await?;
    devices_applied(&h, 6, 1).await?;
    let settings = format!("/api/v1/orgs/{ORG}/settings");

    // No cap until one is set.
    let none = c.get(&settings).await?;
    assert_eq!(none.status, 200, "{none:?}");
    assert_eq!(none.body["retargetCap"], Value::Null);
    // A cap is a whole number of devices from 0 to 10,000,000, or null.
    for bad in [json!(-1), json!(10_000_001), json!(2.5), json!("6")] {
        let refused = set_cap(&c, bad.clone()).await?;
        assert_eq!(refused.status, 400, "{bad}: {refused:?}");
    }
    let unknown = c
        .patch(&settings, json!({"retargetCap": 6, "other": 1}))
        .await?;
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert_eq!(
        c.get("/api/v1/orgs/globex/settings").await?.status,
        404,
        "another org's settings are not found"
    );
    let set = set_cap(&c, json!(6)).await?;
    assert_eq!(set.body["retargetCap"], 6, "{set:?}");
    assert!(set.body["updatedBy"]
        .as_str()
        .is_some_and(|a| a.starts_with("api-key:")));

    // Exactly the cap: no token asked, none answered.
    let body = json!({"groupId": group, "version": "2"});
    let dry = c.post("/api/v1/releases", with_dry_run(&body)).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["impact"]["changed"], 6);
    assert!(dry.body.get("confirmationToken").is_none(), "{dry:?}");
    let made = c.post("/api/v1/releases", body).await?;
    assert_eq!(made.status, 201, "{made:?}");
    settled(&h, 6).await?;

    // A cap of 0 asks for confirmation of any retarget, but not of a change that retargets none:
    // releasing the same version again.
    assert_eq!(set_cap(&c, json!(0)).await?.status, 200);
    let again = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "2"}),
        )
        .await?;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body["impact"]["changed"], 0);
    // And null lifts the cap.
    assert_eq!(
        set_cap(&c, Value::Null).await?.body["retargetCap"],
        Value::Null
    );
    let lifted = c
        .post(
            "/api/v1/releases",
            json!({"groupId": group, "version": "3"}),
        )
        .await?;
    assert_eq!(lifted.status, 201, "{lifted:?}");
    settled(&h, 12).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_edit_that_would_retarget_devices_is_capped_like_a_release() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let canary = h.group("canary", tags_filter("canary")).await?;
    for i in 0..10 {
        let tags = if i < 2 {
            json!(["fleet", "canary"])
        } else {
            json!(["fleet"])
        };
        let attributes = json!({"firmwareVersion": "1", "tags": tags});
        enrol(&h, &format!("dev-{i:02}"), attributes, json!({})).await?;
    }
    devices_applied(&h, 10, 1).await?;
    h.wait_members(canary, &[("dev-00", false), ("dev-01", false)])
        .await?;
    let made = c
        .post(
            "/api/v1/releases",
            json!({"groupId": canary, "version": "2"}),
        )
        .await?;
    assert_eq!(made.status, 201, "{made:?}");
    settled(&h, 2).await?;
    assert_eq!(set_cap(&c, json!(3)).await?.status, 200);

    // Widening the canary's filter to the whole fleet would bring 8 devices onto its release.
    let nothing = written(&h).await?;
    let path = format!("/api/v1/groups/{canary}");
    let widen = json!({"filterConditions": tags_filter("fleet")});
    let refused = c.patch(&path, widen.clone()).await?;
    assert_capped(&refused, 3, 8, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"none -> 2": 8})
    );
    assert_eq!(refused.body["impact"]["examined"], 10);
    let mut dry_body = widen.clone();
    dry_body["dryRun"] = json!(true);
    let dry = c.patch(&path, dry_body).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["dryRun"], true);
    assert_eq!(dry.body["impact"], refused.body["impact"]);
    assert_eq!(written(&h).await?, nothing, "neither writes anything");
    assert_eq!(c.get(&path).await?.body["version"], 1);
    let widening = token_of(&dry);
    let widened = confirmed(&c, Method::PATCH, &path, Some(&widen), &widening).await?;
    assert_eq!(widened.status, 200, "{widened:?}");
    assert_eq!(widened.body["version"], 2);
    settled(&h, 10).await?;

    // Narrowing it back, on the device-groups route, would take 8 off it: capped alike there.
    let other = format!("/api/v1/device-groups/{canary}");
    let narrow = json!({"filter_conditions": tags_filter("canary")});
    let refused = c.patch(&other, narrow.clone()).await?;
    assert_capped(&refused, 3, 8, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"2 -> none": 8})
    );
    let mut dry_body = narrow.clone();
    dry_body["dry_run"] = json!(true);
    let dry = c.patch(&other, dry_body).await?;
    // The widening's token confirms no other change.
    let stale = confirmed(&c, Method::PATCH, &other, Some(&narrow), &widening).await?;
    assert_capped(&stale, 3, 8, "does not confirm this change");
    let narrowed = confirmed(&c, Method::PATCH, &other, Some(&narrow), &token_of(&dry)).await?;
    assert_eq!(narrowed.status, 200, "{narrowed:?}");
    assert_eq!(narrowed.body["id"], json!(canary), "{narrowed:?}");
    assert_eq!(narrowed.body["version"], 3, "{narrowed:?}");
    settled(&h, 18).await?;

    // Changes that move no device onto or off the release need no token: a new name, and turning the
    // group static (its members stay).
    let renamed = c.patch(&path, json!({"name": "canaries"})).await?;
    assert_eq!(renamed.status, 200, "{renamed:?}");
    let fixed = c.patch(&path, json!({"type": "static"})).await?;
    assert_eq!(fixed.status, 200, "{fixed:?}");
    assert_eq!(fixed.body["deviceCount"], 2, "{fixed:?}");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_batch_onto_a_released_group_is_capped_like_a_release() -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let pilot = h.static_group("pilot").await?;
    fleet(&h, "fleet", 0, 8).await?;
    devices_applied(&h, 8, 1).await?;
    let made = c
        .post(
            "/api/v1/releases",
            json!({"groupId": pilot, "version": "2"}),
        )
        .await?;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(set_cap(&c, json!(3)).await?.status, 200);
    let ids: Vec<String> = (0..8).map(|i| format!("fleet-{i:02}")).collect();

    // Adding all 8 would put them on the pilot's release: refused, and nothing is written.
    let nothing = written(&h).await?;
    let path = format!("/api/v1/groups/{pilot}/devices");
    let body = json!({ "deviceIds": ids });
    let refused = c.post(&path, body.clone()).await?;
    assert_capped(&refused, 3, 8, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"none -> 2": 8})
    );
    let dry = c
        .post(&path, json!({ "deviceIds": ids, "dryRun": true }))
        .await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(dry.body["impact"], refused.body["impact"]);
    assert_eq!(written(&h).await?, nothing, "neither writes anything");
    assert!(h.members(pilot).await?.is_empty());
    let added = confirmed(&c, Method::POST, &path, Some(&body), &token_of(&dry)).await?;
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(added.body["data"]["added"], 8, "{added:?}");
    settled(&h, 8).await?;

    // Removing two is under the cap: no token.
    let bulk = format!("/api/v1/devices/groups/{pilot}/members");
    let two = json!({"deviceIds": ["fleet-00", "fleet-01"]});
    let removed = c
        .send(Method::DELETE, &bulk, Some(two.to_string().into_bytes()))
        .await?;
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(removed.body["data"]["removed"], 2, "{removed:?}");
    settled(&h, 10).await?;

    // Removing the other six, on the device-groups route, is capped there too.
    let batch = format!("/api/v1/device-groups/{pilot}/devices");
    let six = json!({ "device_ids": &ids[2..] });
    let refused = c
        .send(Method::DELETE, &batch, Some(six.to_string().into_bytes()))
        .await?;
    assert_capped(&refused, 3, 6, "Confirmation needed");
    assert_eq!(
        refused.body["impact"]["transitions"],
        json!({"2 -> none": 6})
    );
    let mut dry_six = six.clone();
    dry_six["dry_run"] = json!(true);
    let dry = c
        .send(
            Method::DELETE,
            &batch,
            Some(dry_six.to_string().into_bytes()),
        )
        .await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    let removed = confirmed(&c, Method::DELETE, &batch, Some(&six), &token_of(&dry)).await?;
    assert_eq!(removed.status, 200, "{removed:?}");
    assert_eq!(removed.body["removed"].as_array().map(Vec::len), Some(6));
    settled(&h, 16).await?;

    // With a cap of 0, even one device needs confirmation.
    assert_eq!(set_cap(&c, json!(0)).await?.status, 200);
    let one = format!("/api/v1/device-groups/{pilot}/devices/fleet-00");
    let refused = c.send(Method::POST, &one, None).await?;
    assert_capped(&refused, 0, 1, "Confirmation needed");
    let dry = c
        .send(Method::POST, &format!("{one}?dry_run=true"), None)
        .await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    let added = confirmed(&c, Method::POST, &one, None, &token_of(&dry)).await?;
    assert_eq!(added.status, 201, "{added:?}");
    settled(&h, 17).await?;
    h.stop().await
}
