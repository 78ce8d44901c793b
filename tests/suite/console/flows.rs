//! What an operator does in the console: build a dynamic group while its preview counts, watch it fill,
//! read why a device matches; release firmware through the confirmation screen and withdraw it again.

use cohort_testkit::app::{LIMIT, ORG};
use cohort_testkit::eventually;
use cohort_testkit::http::Client as Api;
use fantoccini::elements::Element;
use fantoccini::Locator;
use serde_json::{json, Value};
use uuid::Uuid;

use super::Console;

/// Sends `n` devices, every third linux; returns the linux ones.
async fn fleet(console: &mut Console, n: usize) -> anyhow::Result<Vec<String>> {
    let mut last = Vec::new();
    let mut linux = Vec::new();
    for i in 0..n {
        let device = format!("dev-{i:02}");
        let os = if i % 3 == 0 { "linux" } else { "windows" };
        if os == "linux" {
            linux.push(device.clone());
        }
        let attributes = json!({"osType": os, "hostname": format!("host-{i:02}"), "status": "online",
            "uptimeSeconds": 1000 * i, "firmwareVersion": "1.0.0", "tags": ["edge"],
            "imei": format!("3548000000000{i:02}"),
            "custom.region": if i % 2 == 0 { "eu" } else { "us" }});
        let seq = console.h.send(&device, attributes).await?;
        last.push((device, seq));
    }
    for (device, seq) in &last {
        console.h.applied(device, *seq).await?;
    }
    Ok(linux)
}

/// Rollout-target events in the outbox: (device, new version).
async fn rollouts(console: &Console) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT message_key, payload FROM outbox WHERE topic = $1 ORDER BY id")
            .bind(&console.h.config.kafka.output_topic)
            .fetch_all(console.h.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(k, p)| {
            let event: Value = serde_json::from_slice(&p).unwrap_or(Value::Null);
            let version = event["data"]["target"]["version"]
                .as_str()
                .map(str::to_string);
            (String::from_utf8_lossy(&k).into_owned(), version)
        })
        .collect())
}

#[tokio::test]
async fn a_group_built_in_the_console_previews_as_the_api_fills_and_explains_its_members(
) -> anyhow::Result<()> {
    let mut console = Console::start().await?;
    let linux = fleet(&mut console, 12).await?;
    let api = Api::new(console.addr, Some(&console.key));
    // A small hierarchy for the tree.
    let lab = api
        .post(
            "/api/v1/groups",
            json!({"name": "lab", "type": "static", "tags": ["bench"]}),
        )
        .await?;
    let lab = lab.body["id"].as_str().unwrap().to_string();
    let child = api
        .post(
            "/api/v1/groups",
            json!({"name": "lab gateways", "parentId": lab, "filterConditions":
                {"operator": "AND", "conditions": [{"field": "hostname", "operator": "startsWith", "value": "host-0"}]}}),
        )
        .await?;
    assert_eq!(child.status, 201, "{child:?}");

    console.goto("/console/groups").await?;
    // Not signed in: the sign-in page.
    console.wait_text("h1", "Sign in").await?;
    console.shot("sign-in").await?;
    console.sign_in().await?;
    console.wait_text("#group-total", "2 groups").await?;
    let nested = console
        .text(&format!("li[data-group='{lab}'] ul li a"))
        .await?;
    assert_eq!(nested, "lab gateways");
    console.shot("groups").await?;

    // The builder: one condition on an enum field, chosen from its values.
    console.goto("/console/groups/new").await?;
    let c = console.c();
    c.find(Locator::Id("name"))
        .await?
        .send_keys("linux fleet")
        .await?;
    c.find(Locator::Id("add-condition")).await?.click().await?;
    c.find(Locator::Css(".bcond select.field"))
        .await?
        .select_by_value("osType")
        .await?;
    c.find(Locator::Css(".bcond select.operator"))
        .await?
        .select_by_value("equals")
        .await?;
    c.find(Locator::Css(".bcond select.value-a"))
        .await?
        .select_by_value("linux")
        .await?;
    let filter = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"}]});
    let preview = api
        .post(
            "/api/v1/groups/preview",
            json!({"filterConditions": filter}),
        )
        .await?;
    let expected = preview.body["data"]["totalCount"].as_u64().unwrap();
    assert_eq!(expected, linux.len() as u64);
    console
        .wait_text("#preview-count", &expected.to_string())
        .await?;
    console.wait_text("#preview-examined", "12").await?;

    // A value of the wrong type is flagged as it is typed, and nothing is previewed until it is fixed.
    c.find(Locator::Id("add-condition")).await?.click().await?;
    let second = || async {
        let rows = c.find_all(Locator::Css("#builder .bcond")).await?;
        anyhow::ensure!(
            rows.len() == 2,
            "expected two conditions, found {}",
            rows.len()
        );
        anyhow::Ok(rows[1].clone())
    };
    pick(&second().await?, "select.field", "uptimeSeconds").await?;
    pick(&second().await?, "select.operator", "greaterThan").await?;
    type_in(&second().await?, "input.value-a", "abc").await?;
    console
        .wait_text(
            "#builder .bcond + .bcond .problem",
            "the value must be a number",
        )
        .await?;
    console.wait_text("#preview-count", "—").await?;
    console.shot("builder-invalid").await?;
    let value = second().await?.find(Locator::Css("input.value-a")).await?;
    value.clear().await?;
    value.send_keys("5000").await?;
    let narrower = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"},
        {"field": "uptimeSeconds", "operator": "greaterThan", "value": 5000}]});
    assert_eq!(preview_agrees(&api, &console, narrower).await?, 2);
    console.shot("builder").await?;
    remove_condition(&second().await?, &console, &expected.to_string()).await?;

    // A condition on a custom field the catalogue does not declare: a string, keyed as typed.
    c.find(Locator::Id("add-condition")).await?.click().await?;
    pick(&second().await?, "select.field", "custom:new").await?;
    type_in(&second().await?, "input.custom-key", "region").await?;
    type_in(&second().await?, "input.value-a", "eu").await?;
    let regional = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"},
        {"field": "custom.region", "operator": "equals", "value": "eu"}]});
    assert_eq!(preview_agrees(&api, &console, regional).await?, 2);
    remove_condition(&second().await?, &console, &expected.to_string()).await?;

    // Saved, it fills as the worker evaluates it.
    c.find(Locator::Id("save-group")).await?.click().await?;
    console.wait_text("#group-name", "linux fleet").await?;
    let url = c.current_url().await?;
    let group: Uuid = url.path().rsplit('/').next().unwrap().parse()?;
    let path = format!("/console/groups/{group}");
    console
        .reload_until(&path, "#device-count", &expected.to_string())
        .await?;
    let rows = c.find_all(Locator::Css("#members tbody tr")).await?;
    let mut shown = Vec::new();
    for row in rows {
        shown.push(row.attr("data-device").await?.unwrap_or_default());
    }
    assert_eq!(shown, linux);
    let reasons = c.find_all(Locator::Css("#log td.reason")).await?;
    assert_eq!(reasons.len(), linux.len());
    for r in reasons {
        assert_eq!(r.text().await?, "filter_match");
    }
    console.wait_text("#filter .cond em", "equals").await?;
    console.shot("group").await?;

    // Pin a device that does not match: it joins, and says so.
    c.find(Locator::Id("pin-device"))
        .await?
        .send_keys("dev-01")
        .await?;
    c.find(Locator::Id("pin")).await?.click().await?;
    console
        .reload_until(&path, "#device-count", &(expected + 1).to_string())
        .await?;
    console.shot("group-pinned").await?;
    c.find(Locator::Css("tr[data-device='dev-01'] button"))
        .await?
        .click()
        .await?;
    console
        .wait_text(
            "#notice",
            "Unpinned dev-01: the worker applies it in order with the device's events",
        )
        .await?;
    console
        .reload_until(&path, "#device-count", &expected.to_string())
        .await?;
    let log: Vec<(String, String, String)> = console.h.log(group).await?;
    assert!(
        log.contains(&("dev-01".into(), "added".into(), "pinned".into())),
        "{log:?}"
    );
    assert!(
        log.contains(&("dev-01".into(), "removed".into(), "unpinned".into())),
        "{log:?}"
    );

    // Edited, the builder starts from the saved filter and previews it.
    c.find(Locator::Id("edit-group")).await?.click().await?;
    console
        .wait_text("#preview-count", &(expected).to_string())
        .await?;
    let field = c.find(Locator::Css("#builder .bcond select.field")).await?;
    assert_eq!(field.prop("value").await?.as_deref(), Some("osType"));
    console.shot("builder-edit").await?;
    console.goto(&path).await?;

    // A member's page says why it matches, condition by condition.
    c.find(Locator::Css("#members tbody tr a"))
        .await?
        .click()
        .await?;
    console.wait_text("#device-id", &linux[0]).await?;
    let section = format!("section.explain[data-group='{group}']");
    console
        .wait_text(&format!("{section} .verdict"), "matches")
        .await?;
    let reason = console.text(&format!("{section} .cond")).await?;
    assert!(
        reason.contains("osType") && reason.contains("linux"),
        "{reason}"
    );
    console.shot("device").await?;
    // And a device that does not match, why not.
    console.goto("/console/devices/dev-01").await?;
    console
        .wait_text(&format!("{section} .verdict"), "does not match")
        .await?;

    // A static group takes devices by id and by cellular identifier, and gives them back.
    console.goto(&format!("/console/groups/{lab}")).await?;
    c.find(Locator::Id("device-ids"))
        .await?
        .send_keys("dev-01\ndev-02")
        .await?;
    c.find(Locator::Id("identifiers"))
        .await?
        .send_keys("IMEI:354800000000004")
        .await?;
    c.find(Locator::Id("add-members")).await?.click().await?;
    console
        .wait_text("#notice", "Added 3 devices, 0 skipped; 3 members now")
        .await?;
    console.wait_text("#device-count", "3").await?;
    let lab_id: Uuid = lab.parse()?;
    let members: Vec<String> = console
        .h
        .members(lab_id)
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(members, ["dev-01", "dev-02", "dev-04"]);
    console.shot("group-static").await?;
    c.find(Locator::Id("device-ids"))
        .await?
        .send_keys("dev-02")
        .await?;
    c.find(Locator::Id("remove-members")).await?.click().await?;
    console
        .wait_text("#notice", "Removed 1 device, 0 skipped; 2 members now")
        .await?;
    // An identifier no device reports refuses the batch, saying which.
    c.find(Locator::Id("identifiers"))
        .await?
        .send_keys("imei:999")
        .await?;
    c.find(Locator::Id("add-members")).await?.click().await?;
    let problem = console.text("#problem").await?;
    assert!(problem.contains("not found"), "{problem}");
    assert_eq!(console.h.members(lab_id).await?.len(), 2);

    console.finish().await
}

#[tokio::test]
async fn a_release_is_made_from_its_confirmation_screen_and_emits_its_rollout_events(
) -> anyhow::Result<()> {
    let mut console = Console::start().await?;
    let linux = fleet(&mut console, 9).await?;
    let group = console
        .h
        .group(
            "linux",
            json!({"operator": "AND", "conditions": [
                {"field": "osType", "operator": "equals", "value": "linux"}]}),
        )
        .await?;
    let members: Vec<(&str, bool)> = linux.iter().map(|d| (d.as_str(), false)).collect();
    console.h.wait_members(group, &members).await?;
    // A cap below the release's impact: the confirmation carries the dry run's token.
    let api = Api::new(console.addr, Some(&console.key));
    let capped = api
        .patch(
            &format!("/api/v1/orgs/{ORG}/settings"),
            json!({"retargetCap": 1}),
        )
        .await?;
    assert_eq!(capped.status, 200, "{capped:?}");

    console.sign_in().await?;
    console.goto("/console/releases/new").await?;
    let c = console.c().clone();
    c.find(Locator::Id("target"))
        .await?
        .select_by_value(&group.to_string())
        .await?;
    c.find(Locator::Id("version"))
        .await?
        .send_keys("2.0.0")
        .await?;
    // Watched: devices reporting custom.otaStatus = failed count as failed; three of them halt it.
    c.find(Locator::Id("failure-attribute"))
        .await?
        .send_keys("custom.otaStatus")
        .await?;
    c.find(Locator::Id("failure-value"))
        .await?
        .send_keys("failed")
        .await?;
    c.find(Locator::Id("halt-failures"))
        .await?
        .send_keys("3")
        .await?;
    console.shot("release-new").await?;
    c.find(Locator::Id("dry-run")).await?.click().await?;
    console
        .wait_text("#confirm-failure", "custom.otaStatus = \"failed\"")
        .await?;
    console
        .wait_text("#confirm-halt", "after 3 failures (and pauses)")
        .await?;
    console.wait_text("#confirm-version", "2.0.0").await?;
    console.wait_text("#confirm-target", "linux").await?;
    console
        .wait_text("#changed", &linux.len().to_string())
        .await?;
    console
        .wait_text("#impacted", &linux.len().to_string())
        .await?;
    let token = c
        .find(Locator::Css("#confirm-form input[name=token]"))
        .await?
        .attr("value")
        .await?
        .unwrap_or_default();
    assert!(
        !token.is_empty(),
        "over the cap, the dry run answers a token"
    );
    let sample = c.find_all(Locator::Css("#sample tbody tr")).await?;
    assert_eq!(sample.len(), linux.len());
    assert!(
        rollouts(&console).await?.is_empty(),
        "a dry run emits nothing"
    );
    console.shot("release-confirm").await?;
    c.find(Locator::Id("confirm")).await?.click().await?;
    console.wait_text("#done", "Released").await?;
    console.shot("release-done").await?;

    let n = linux.len();
    let watched = &console;
    eventually(LIMIT, "a rollout event per device", || async move {
        let events = rollouts(watched).await?;
        Ok((events.len() == n).then_some(()))
    })
    .await?;
    let events = rollouts(&console).await?;
    let mut devices: Vec<String> = events.iter().map(|(d, _)| d.clone()).collect();
    devices.sort();
    assert_eq!(devices, linux);
    assert!(
        events.iter().all(|(_, v)| v.as_deref() == Some("2.0.0")),
        "{events:?}"
    );

    console.goto("/console/releases").await?;
    console
        .wait_text("#release-list td.version", "2.0.0")
        .await?;
    console
        .wait_text("#release-list td.percentage", "100%")
        .await?;
    // Progress, from what the devices report: one of them reports running the release.
    let n_text = format!("0 of {n} running");
    console
        .reload_until("/console/releases", "#release-list span.running", &n_text)
        .await?;
    let event = json!({"eventId": "reports-2", "orgId": ORG, "deviceId": &linux[0], "sequence": 1_000,
        "attributes": {"firmwareVersion": "2.0.0"}});
    let h = &console.h;
    h.kafka
        .produce(&h.input, &linux[0], event.to_string())
        .await?;
    h.applied(&linux[0], 1_000).await?;
    let one = format!("1 of {n} running");
    console
        .reload_until("/console/releases", "#release-list span.running", &one)
        .await?;
    let listed = api.get("/api/v1/releases").await?;
    let id = listed.body["releases"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let release = api.get(&format!("/api/v1/releases/{id}")).await?;
    assert_eq!(
        release.body["failure"],
        json!({"attribute": "custom.otaStatus", "value": "failed"})
    );
    assert_eq!(
        release.body["halt"],
        json!({"failures": 3, "rollback": false})
    );
    let progress = api.get(&format!("/api/v1/releases/{id}/progress")).await?;
    assert_eq!(progress.body["progress"]["targeted"], n);
    assert_eq!(progress.body["progress"]["running"], 1);
    console.shot("releases").await?;
    // A device's page shows its new target and the release that decided it.
    console
        .reload_until(
            &format!("/console/devices/{}", linux[0]),
            "#target-version",
            "2.0.0",
        )
        .await?;
    console.wait_text("#target-reason", "group").await?;

    // Paused and resumed from the list, each through its confirmation screen: no device moves.
    console.goto("/console/releases").await?;
    c.find(Locator::Css("a.pause")).await?.click().await?;
    console.wait_text("#changed", "0").await?;
    console.shot("pause-confirm").await?;
    c.find(Locator::Id("confirm")).await?.click().await?;
    console.wait_text("#done", "Paused").await?;
    console
        .wait_text("#release-list td.state", "paused\nhalted by operator")
        .await?;
    console.goto("/console/releases").await?;
    c.find(Locator::Css("a.resume")).await?.click().await?;
    console.wait_text("#changed", "0").await?;
    c.find(Locator::Id("confirm")).await?.click().await?;
    console.wait_text("#done", "Resumed").await?;
    console
        .wait_text("#release-list td.state", "active")
        .await?;
    assert_eq!(
        rollouts(&console).await?.len(),
        n,
        "pausing and resuming move no device"
    );

    // Withdrawn the same way: the confirmation screen, then every device back to no target.
    console.goto("/console/releases").await?;
    c.find(Locator::Css("a.withdraw")).await?.click().await?;
    console
        .wait_text("#changed", &linux.len().to_string())
        .await?;
    console.shot("withdraw-confirm").await?;
    c.find(Locator::Id("confirm")).await?.click().await?;
    console.wait_text("#done", "Withdrawn").await?;
    eventually(LIMIT, "a second rollout event per device", || async move {
        let events = rollouts(watched).await?;
        Ok((events.len() == 2 * n).then_some(()))
    })
    .await?;
    let events = rollouts(&console).await?;
    assert!(events[n..].iter().all(|(_, v)| v.is_none()), "{events:?}");
    // The list shows live releases, and withdrawn ones when asked.
    console.goto("/console/releases").await?;
    assert!(c
        .find_all(Locator::Css("#release-list tbody tr"))
        .await?
        .is_empty());
    c.find(Locator::Id("with-withdrawn")).await?.click().await?;
    let state = console.text("#release-list tbody tr td.state").await?;
    assert!(state.starts_with("withdrawn"), "{state}");

    console.finish().await
}

/// Chooses `value` in the select `css` within `element`.
async fn pick(element: &Element, css: &str, value: &str) -> anyhow::Result<()> {
    element
        .find(Locator::Css(css))
        .await?
        .select_by_value(value)
        .await?;
    Ok(())
}

/// Types `text` into the input `css` within `element`.
async fn type_in(element: &Element, css: &str, text: &str) -> anyhow::Result<()> {
    element
        .find(Locator::Css(css))
        .await?
        .send_keys(text)
        .await?;
    Ok(())
}

/// The API's preview count of `filter`, once the builder's live preview shows the same.
async fn preview_agrees(api: &Api, console: &Console, filter: Value) -> anyhow::Result<u64> {
    let preview = api
        .post(
            "/api/v1/groups/preview",
            json!({"filterConditions": filter}),
        )
        .await?;
    let count = preview.body["data"]["totalCount"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no count: {preview:?}"))?;
    console
        .wait_text("#preview-count", &count.to_string())
        .await?;
    Ok(count)
}

/// Removes the builder's condition `row` and waits for the preview to count `expected` again.
async fn remove_condition(row: &Element, console: &Console, expected: &str) -> anyhow::Result<()> {
    row.find(Locator::Css("button.remove"))
        .await?
        .click()
        .await?;
    console.wait_text("#preview-count", expected).await
}
