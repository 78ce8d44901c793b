//! Breeze's document where membership changes through the worker: a dynamic group filling from its filter
//! (`addedBy: dynamic_rule`), pins and unpins by the document's routes, and its advice to "switch the group
//! type to static" — and back.

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{expect, strings};
use cohort::store::api_keys;
use cohort_testkit::app::{Harness, ORG};
use cohort_testkit::http::Client;

async fn start() -> anyhow::Result<(Harness, Client)> {
    let h = Harness::start().await?;
    let addr = h.http_address().await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "contract").await?;
    Ok((h, Client::new(addr, Some(&key))))
}

/// The document's filter: Windows devices that are offline or not seen for a week.
fn windows_offline() -> Value {
    json!({
        "operator": "AND",
        "conditions": [
            { "field": "osType", "operator": "equals", "value": "windows" },
            {
                "operator": "OR",
                "conditions": [
                    { "field": "status", "operator": "equals", "value": "offline" },
                    { "field": "daysSinceLastSeen", "operator": "greaterThan", "value": 7 }
                ]
            }
        ]
    })
}

/// Sends each device's attributes and waits until all are applied.
async fn report(h: &mut Harness, devices: &[(&str, Value)]) -> anyhow::Result<()> {
    let mut last = Vec::new();
    for (device, attributes) in devices {
        last.push((
            device.to_string(),
            h.send(device, attributes.clone()).await?,
        ));
    }
    for (device, sequence) in &last {
        h.applied(device, *sequence).await?;
    }
    Ok(())
}

fn now_minus_days(days: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339()
}

#[tokio::test]
async fn a_dynamic_group_fills_from_its_filter_as_its_preview_said() -> anyhow::Result<()> {
    let (mut h, c) = start().await?;
    report(
        &mut h,
        &[
            (
                "w-off",
                json!({"osType": "windows", "status": "offline", "lastSeenAt": now_minus_days(0)}),
            ),
            (
                "w-old",
                json!({"osType": "windows", "status": "online", "lastSeenAt": now_minus_days(9)}),
            ),
            (
                "w-on",
                json!({"osType": "windows", "status": "online", "lastSeenAt": now_minus_days(0)}),
            ),
            (
                "l-off",
                json!({"osType": "linux", "status": "offline", "lastSeenAt": now_minus_days(0)}),
            ),
        ],
    )
    .await?;
    let created = c
        .post(
            "/api/v1/groups",
            json!({"orgId": ORG, "name": "Windows offline", "type": "dynamic",
                   "filterConditions": windows_offline()}),
        )
        .await?;
    expect(&created, StatusCode::CREATED);
    let id = created.body["id"].as_str().unwrap().to_string();
    let preview = c
        .send(
            Method::POST,
            &format!("/api/v1/groups/{id}/preview?limit=20"),
            None,
        )
        .await?;
    assert_eq!(preview.body["data"]["totalCount"], 2);
    assert_eq!(
        strings(&preview.body["data"]["devices"], "id"),
        ["w-off", "w-old"]
    );
    h.wait_members(Uuid::parse_str(&id)?, &[("w-off", false), ("w-old", false)])
        .await?;
    let members = c.get(&format!("/api/v1/groups/{id}/devices")).await?;
    for member in members.body["data"].as_array().unwrap() {
        assert_eq!(member["addedBy"], "dynamic_rule", "{member}");
    }
    let log = c
        .get(&format!("/api/v1/groups/{id}/membership-log"))
        .await?;
    assert_eq!(
        strings(&log.body["entries"], "reason"),
        ["filter_match", "filter_match"]
    );
    h.stop().await
}

#[tokio::test]
async fn a_pin_keeps_a_device_and_an_unpin_removes_it_when_it_no_longer_matches(
) -> anyhow::Result<()> {
    let (mut h, c) = start().await?;
    report(
        &mut h,
        &[
            ("w-off", json!({"osType": "windows", "status": "offline"})),
            (
                "w-on",
                json!({"osType": "windows", "status": "online", "lastSeenAt": now_minus_days(0)}),
            ),
        ],
    )
    .await?;
    let group = h.group("Windows offline", windows_offline()).await?;
    h.wait_members(group, &[("w-off", false)]).await?;
    // Pin a device that does not match: it joins, pinned.
    let pinned = c
        .send(
            Method::POST,
            &format!("/api/v1/groups/{group}/devices/w-on/pin"),
            None,
        )
        .await?;
    expect(&pinned, StatusCode::ACCEPTED);
    h.wait_members(group, &[("w-off", false), ("w-on", true)])
        .await?;
    // Pin a member, then make it stop matching: it stays.
    c.send(
        Method::POST,
        &format!("/api/v1/groups/{group}/devices/w-off/pin"),
        None,
    )
    .await?;
    h.wait_members(group, &[("w-off", true), ("w-on", true)])
        .await?;
    report(
        &mut h,
        &[(
            "w-off",
            json!({"status": "online", "lastSeenAt": now_minus_days(0)}),
        )],
    )
    .await?;
    h.wait_members(group, &[("w-off", true), ("w-on", true)])
        .await?;
    // Unpin: neither matches any more, so each leaves at once, reason unpinned.
    for device in ["w-off", "w-on"] {
        let unpinned = c
            .delete(&format!("/api/v1/groups/{group}/devices/{device}/pin"))
            .await?;
        expect(&unpinned, StatusCode::ACCEPTED);
    }
    h.wait_members(group, &[]).await?;
    let log = h.log(group).await?;
    let reasons: Vec<&str> = log.iter().map(|(_, _, r)| r.as_str()).collect();
    assert_eq!(reasons, ["filter_match", "pinned", "unpinned", "unpinned"]);
    h.stop().await
}

#[tokio::test]
async fn switching_a_dynamic_group_to_static_keeps_its_members_and_back_writes_only_the_diff(
) -> anyhow::Result<()> {
    let (mut h, c) = start().await?;
    report(
        &mut h,
        &[
            ("w-1", json!({"osType": "windows", "status": "offline"})),
            ("w-2", json!({"osType": "windows", "status": "offline"})),
            ("l-1", json!({"osType": "linux", "status": "offline"})),
        ],
    )
    .await?;
    let group = h.group("Windows offline", windows_offline()).await?;
    h.wait_members(group, &[("w-1", false), ("w-2", false)])
        .await?;
    c.send(
        Method::POST,
        &format!("/api/v1/groups/{group}/devices/w-2/pin"),
        None,
    )
    .await?;
    h.wait_members(group, &[("w-1", false), ("w-2", true)])
        .await?;

    // "Use pinning instead or switch the group type to static."
    let refused = c
        .post(
            &format!("/api/v1/groups/{group}/devices"),
            json!({"deviceIds": ["l-1"]}),
        )
        .await?;
    assert_eq!(
        refused.body["message"],
        "Cannot manually add devices to a dynamic group"
    );
    let switched = c
        .patch(
            &format!("/api/v1/groups/{group}"),
            json!({"type": "static"}),
        )
        .await?;
    expect(&switched, StatusCode::OK);
    assert_eq!(switched.body["type"], "static");
    assert_eq!(switched.body["filterConditions"], Value::Null);
    assert_eq!(switched.body["deviceCount"], 2);
    let members = c.get(&format!("/api/v1/groups/{group}/devices")).await?;
    for member in members.body["data"].as_array().unwrap() {
        assert_eq!(
            (member["addedBy"].clone(), member["isPinned"].clone()),
            (json!("manual"), json!(false))
        );
    }
    // Each member's conversion is logged.
    let log = c
        .get(&format!("/api/v1/groups/{group}/membership-log?limit=2"))
        .await?;
    for entry in log.body["entries"].as_array().unwrap() {
        assert_eq!(
            (entry["action"].as_str(), entry["reason"].as_str()),
            (Some("added"), Some("manual"))
        );
        assert_eq!(entry["cause"]["change"], "type_static");
    }
    // Now a static group: attribute changes no longer move it, and devices are added by hand.
    h.control_applied().await?;
    report(&mut h, &[("w-1", json!({"osType": "linux"}))]).await?;
    let added = c
        .post(
            &format!("/api/v1/groups/{group}/devices"),
            json!({"deviceIds": ["l-1"]}),
        )
        .await?;
    assert_eq!(
        added.body,
        json!({"data": {"added": 1, "skipped": 0, "total": 3}})
    );
    h.control_applied().await?;
    h.wait_members(group, &[("l-1", false), ("w-1", false), ("w-2", false)])
        .await?;
    let rows_before = h.log(group).await?.len();

    // Back to dynamic: only the diff is written. w-2 matches and stays (no log row); w-1 (now linux) and
    // l-1 do not, and leave.
    let back = c
        .patch(
            &format!("/api/v1/groups/{group}"),
            json!({"type": "dynamic", "filterConditions": windows_offline()}),
        )
        .await?;
    expect(&back, StatusCode::OK);
    assert_eq!(back.body["type"], "dynamic");
    h.control_applied().await?;
    h.wait_members(group, &[("w-2", false)]).await?;
    let log = h.log(group).await?;
    // Devices of different partitions are written in either order.
    let mut changes: Vec<(String, String, String)> = log[rows_before..].to_vec();
    changes.sort();
    assert_eq!(
        changes,
        [
            (
                "l-1".to_string(),
                "removed".to_string(),
                "filter_unmatch".to_string()
            ),
            (
                "w-1".to_string(),
                "removed".to_string(),
                "filter_unmatch".to_string()
            ),
        ]
    );
    // Turning static with a filter, or dynamic without one, is refused.
    let bad = c
        .patch(
            &format!("/api/v1/groups/{group}"),
            json!({"type": "static", "filterConditions": windows_offline()}),
        )
        .await?;
    expect(&bad, StatusCode::BAD_REQUEST);
    h.stop().await
}
