//! Static membership through every family of routes (Breeze's counts, the device-groups API's ids, one
//! device by path), batches that are all or nothing, the members page, and the membership log.

use cohort_testkit::http::Client;
use hyper::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{create_group, delete_json, devices, expect, expect_error, linux_filter, strings, Api};

/// The members of a group, by id (every page).
async fn member_ids(c: &Client, group: &str) -> anyhow::Result<Vec<String>> {
    let page = c.get(&format!("/api/v1/groups/{group}/devices")).await?;
    expect(&page, StatusCode::OK);
    Ok(strings(&page.body["data"], "deviceId")
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// A refused batch: 400 in the error shape, saying nothing changed, listing each device refused.
fn expect_refused(answer: &cohort_testkit::http::Answer, details: Value) {
    expect_error(answer, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .starts_with("Devices not found in the group's organization"),
        "{answer:?}"
    );
    assert_eq!(answer.body["details"], details, "{answer:?}");
}

#[tokio::test]
async fn static_membership_adds_and_removes_by_id_and_by_cellular_identifier() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    devices(
        api.pool(),
        &[
            (
                "m-1",
                "acme",
                json!({"hostname": "one", "displayName": "One", "imei": "490154203237518"}),
            ),
            (
                "m-2",
                "acme",
                json!({"hostname": "two", "iccid": "89014103211118510720"}),
            ),
            (
                "m-3",
                "acme",
                json!({"hostname": "three", "meid": "A0000000002329"}),
            ),
            (
                "b-1",
                "other",
                json!({"hostname": "theirs", "imei": "111111111111111"}),
            ),
        ],
    )
    .await?;
    let c = &api.acme;
    let group = create_group(c, json!({"name": "picked"})).await?;
    let base = format!("/api/v1/groups/{group}/devices");
    let snake = format!("/api/v1/device-groups/{group}/devices");

    // One device by path: 201 when added, 200 when it already is a member, 404 for another org's.
    let one = c.post(&format!("{snake}/m-1"), json!({})).await?;
    expect(&one, StatusCode::CREATED);
    assert_eq!(
        one.body,
        json!({"group_id": group, "added": ["m-1"], "skipped": []})
    );
    let again = c.post(&format!("{snake}/m-1"), json!({})).await?;
    expect(&again, StatusCode::OK);
    assert_eq!(again.body["skipped"], json!(["m-1"]));
    expect_error(
        &c.post(&format!("{snake}/b-1"), json!({})).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Breeze's batch answers counts: a member already is skipped.
    let counted = c.post(&base, json!({"deviceIds": ["m-1"]})).await?;
    expect(&counted, StatusCode::OK);
    assert_eq!(
        counted.body,
        json!({"data": {"added": 0, "skipped": 1, "total": 1}})
    );

    // A batch naming anything unknown in the org is refused whole, each listed; nothing is written.
    let identifiers = json!([{"kind": "iccid", "identifier": "89014103211118510720"},
                             {"kind": "meid", "identifier": "a0000000002329"}]);
    let mut foreign = identifiers.as_array().unwrap().clone();
    foreign.push(json!({"kind": "imei", "identifier": "111111111111111"}));
    let unknown_identifier = c
        .post(
            &base,
            json!({"device_ids": ["m-1"], "added_by": "ops@acme", "identifiers": foreign}),
        )
        .await?;
    expect_error(&unknown_identifier, StatusCode::BAD_REQUEST, "bad_request");
    let details = unknown_identifier.body["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{unknown_identifier:?}");
    assert_eq!(details[0]["path"], "identifiers[2]");
    assert!(
        details[0]["message"]
            .as_str()
            .unwrap()
            .contains("111111111111111"),
        "{details:?}"
    );
    let unknown_ids = c
        .post(
            &base,
            json!({"deviceIds": ["m-1", "nope", "b-1"], "identifiers": identifiers}),
        )
        .await?;
    let not_found = "Device not found in the group's organization";
    expect_refused(
        &unknown_ids,
        json!([{"deviceId": "nope", "message": not_found},
               {"deviceId": "b-1", "message": not_found}]),
    );
    let via_snake = c
        .post(&snake, json!({"device_ids": ["m-2", "nope"]}))
        .await?;
    expect_refused(
        &via_snake,
        json!([{"deviceId": "nope", "message": not_found}]),
    );
    assert_eq!(member_ids(c, &group).await?, ["m-1"]);

    // By id and by cellular identifier (any case), with who made the change.
    let batch = c
        .post(
            &snake,
            json!({"device_ids": ["m-1"], "added_by": "ops@acme", "identifiers": identifiers}),
        )
        .await?;
    expect(&batch, StatusCode::OK);
    assert_eq!(
        batch.body,
        json!({"group_id": group, "added": ["m-2", "m-3"], "skipped": ["m-1"]})
    );
    let invalid = c
        .post(
            &base,
            json!({"identifiers": [{"kind": "esn", "identifier": "123"},
                                   {"kind": "mdn", "identifier": "12345678901"},
                                   {"kind": "msisdn", "identifier": "1234567890a"},
                                   {"kind": "imei", "identifier": "1234567890123456"}]}),
        )
        .await?;
    expect_error(&invalid, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(invalid.body["details"].as_array().unwrap().len(), 4);
    let unknown_kind = c
        .post(
            &base,
            json!({"identifiers": [{"kind": "mac", "identifier": "x"}]}),
        )
        .await?;
    expect_error(&unknown_kind, StatusCode::BAD_REQUEST, "bad_request");
    let empty = c.post(&base, json!({})).await?;
    expect_error(&empty, StatusCode::BAD_REQUEST, "bad_request");

    // The members page, with the device's key attributes as fields of the record (null when absent).
    let members = c.get(&format!("{base}?limit=2")).await?;
    expect(&members, StatusCode::OK);
    assert_eq!(members.body["total"], 3);
    let first = members.body["data"][0].as_object().unwrap();
    assert!(first["addedAt"].is_string(), "{first:?}");
    let mut shown = first.clone();
    shown.remove("addedAt");
    assert_eq!(
        Value::Object(shown),
        json!({"deviceId": "m-1", "hostname": "one", "displayName": "One", "status": null,
               "osType": null, "isPinned": false, "addedBy": "manual", "platform": null,
               "firmwareVersion": null, "siteId": null, "lastSeenAt": null})
    );
    // The next page by cursor: a full page names its last device; the last page names none.
    assert_eq!(members.body["nextAfter"], "m-2");
    let rest = c.get(&format!("{base}?limit=2&after=m-2")).await?;
    expect(&rest, StatusCode::OK);
    assert_eq!(strings(&rest.body["data"], "deviceId"), ["m-3"]);
    assert!(rest.body.get("nextAfter").is_none(), "{:?}", rest.body);
    assert_eq!(rest.body["total"], 3);
    // The same page in the device-groups API's words.
    let listed = c.get(&format!("{snake}?limit=2")).await?;
    expect(&listed, StatusCode::OK);
    assert_eq!(listed.body["group_id"], json!(group));
    assert_eq!(
        strings(&listed.body["devices"], "device_id"),
        ["m-1", "m-2"]
    );
    assert_eq!(listed.body["devices"][0]["display_name"], "One");
    assert_eq!(listed.body["next_after"], "m-2");
    assert_eq!(listed.body["total"], 3);

    // Removal, one and a batch.
    let removed_one = c.delete(&format!("{base}/m-1")).await?;
    expect(&removed_one, StatusCode::OK);
    assert_eq!(
        removed_one.body,
        json!({"data": {"removed": 1, "skipped": 0, "total": 2}})
    );
    expect_error(
        &c.delete(&format!("{base}/m-1")).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let scoped = format!("/api/v1/devices/groups/{group}/members");
    let refused = delete_json(c, &scoped, json!({"deviceIds": ["m-2", "nope"]})).await?;
    expect_refused(
        &refused,
        json!([{"deviceId": "nope", "message": not_found}]),
    );
    let not_member = delete_json(c, &scoped, json!({"deviceIds": ["m-1"]})).await?;
    expect(&not_member, StatusCode::OK);
    assert_eq!(
        not_member.body,
        json!({"data": {"removed": 0, "skipped": 1, "total": 2}})
    );
    assert_eq!(member_ids(c, &group).await?, ["m-2", "m-3"]);
    let removed = delete_json(c, &snake, json!({"device_ids": ["m-2", "m-1"]})).await?;
    expect(&removed, StatusCode::OK);
    assert_eq!(
        removed.body,
        json!({"group_id": group, "removed": ["m-2"], "skipped": ["m-1"]})
    );
    assert_eq!(member_ids(c, &group).await?, ["m-3"]);

    check_log(c, &group).await?;

    // Dynamic groups refuse manual membership; static ones refuse pins.
    let dynamic = create_group(
        c,
        json!({"name": "dyn", "filterConditions": linux_filter()}),
    )
    .await?;
    let refused = c
        .post(
            &format!("/api/v1/groups/{dynamic}/devices"),
            json!({"deviceIds": ["m-1"]}),
        )
        .await?;
    expect_error(&refused, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        refused.body["message"],
        "Cannot manually add devices to a dynamic group"
    );
    let refused = delete_json(
        c,
        &format!("/api/v1/device-groups/{dynamic}/devices"),
        json!({"device_ids": ["m-1"]}),
    )
    .await?;
    expect_error(&refused, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        refused.body["message"],
        "Cannot manually remove devices from a dynamic group"
    );
    let pin_static = c.post(&format!("{base}/m-3/pin"), json!({})).await?;
    expect_error(&pin_static, StatusCode::BAD_REQUEST, "bad_request");
    api.stop().await
}

/// The log of the group above: every change with reason manual, the device's names and the actor; ids
/// are UUIDs, newest first, and page by cursor.
async fn check_log(c: &Client, group: &str) -> anyhow::Result<()> {
    let log = c
        .get(&format!("/api/v1/groups/{group}/membership-log"))
        .await?;
    expect(&log, StatusCode::OK);
    let entries = log.body["entries"].as_array().unwrap();
    let summary: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("m-2", "removed"),
        ("m-1", "removed"),
        ("m-3", "added"),
        ("m-2", "added"),
        ("m-1", "added"),
    ];
    assert_eq!(summary.len(), expected.len(), "{summary:?}");
    for ((device, action, reason), (d, a)) in summary.iter().zip(expected) {
        assert_eq!((*device, *action, *reason), (d, a, "manual"));
    }
    assert!(entries.iter().all(|e| e["groupId"] == json!(group)));
    assert_eq!(entries[4]["hostname"], "one");
    assert_eq!(entries[4]["displayName"], "One");
    assert!(
        entries[2]["cause"].to_string().contains("ops@acme"),
        "{:?}",
        entries[2]
    );
    // Each id is a UUID naming the entry's number: newest first, the numbers decrease.
    let all: Vec<String> = strings(&log.body["entries"], "id")
        .into_iter()
        .map(str::to_string)
        .collect();
    let numbers: Vec<i64> = all
        .iter()
        .map(|id| cohort::api::log::entry_number(&id.parse::<Uuid>().unwrap()).unwrap())
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] > w[1]), "{numbers:?}");
    let filtered = c
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?deviceId=m-2&action=added"
        ))
        .await?;
    assert_eq!(filtered.body["entries"].as_array().unwrap().len(), 1);
    let paged = c
        .get(&format!(
            "/api/v1/groups/{group}/membership-log?limit=2&offset=4"
        ))
        .await?;
    assert_eq!(paged.body["entries"].as_array().unwrap().len(), 1);
    // Pages by cursor: each full page names the next one's `before` (an entry id); together they are the
    // whole log.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = c
            .get(&format!(
                "/api/v1/groups/{group}/membership-log?limit=2{cursor}"
            ))
            .await?;
        expect(&page, StatusCode::OK);
        let ids = strings(&page.body["entries"], "id");
        walked.extend(ids.iter().map(|id| id.to_string()));
        match page.body.get("nextBefore").and_then(|v| v.as_str()) {
            Some(next) => {
                assert_eq!(Some(&next), ids.last(), "the cursor is the last entry's id");
                cursor = format!("&before={next}");
            }
            None => break,
        }
        assert!(walked.len() <= all.len(), "{walked:?}");
    }
    assert_eq!(walked, all);
    // `before` takes the entry's id or its number.
    for before in [all[0].clone(), numbers[0].to_string()] {
        let older = c
            .get(&format!(
                "/api/v1/groups/{group}/membership-log?deviceId=m-2&before={before}"
            ))
            .await?;
        assert_eq!(
            strings(&older.body["entries"], "action"),
            ["added"],
            "m-2's entries before its removal"
        );
    }
    let not_an_entry = format!("before={}", Uuid::new_v4());
    for bad in [
        "limit=0",
        "limit=501",
        "action=moved",
        "offset=-2",
        "before=0",
        "before=x",
        not_an_entry.as_str(),
    ] {
        let answer = c
            .get(&format!("/api/v1/groups/{group}/membership-log?{bad}"))
            .await?;
        expect_error(&answer, StatusCode::BAD_REQUEST, "bad_request");
    }
    Ok(())
}
