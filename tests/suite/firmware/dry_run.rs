//! A dry run answers what the real request would: the same refusal, or the impact it would return — which
//! devices' targets change, and which of those devices would download firmware because their new target is
//! not the version they report running.

use std::collections::BTreeMap;

use cohort::store::api_keys;
use cohort::store::firmware::{self, Impact, Mode, Proposal, ReleaseTarget};
use cohort::store::groups::{self, NewGroup};
use cohort_testkit::app::{Harness, ORG};
use cohort_testkit::http::{Answer, Client};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{devices_applied, settled, tags_filter};

/// Enrols `device` with its first event: `attributes`, plus `extra` top-level fields (`development`,
/// `firmwareLock`).
pub(super) async fn enrol(
    h: &Harness,
    device: &str,
    attributes: Value,
    extra: Value,
) -> anyhow::Result<()> {
    let mut event = json!({"eventId": format!("{device}-1"), "orgId": ORG, "deviceId": device,
                           "sequence": 1, "attributes": attributes});
    if let (Some(event), Some(extra)) = (event.as_object_mut(), extra.as_object()) {
        event.extend(extra.clone());
    }
    h.produce(device, event.to_string()).await?;
    Ok(())
}

/// A client of the worker's API with a key of the org.
pub(super) async fn client(h: &Harness) -> anyhow::Result<Client> {
    let addr = h.http_address().await?;
    let (_, key) = api_keys::create(h.pool(), Some(ORG), "dry-run").await?;
    Ok(Client::new(addr, Some(&key)))
}

/// What the release endpoints write: release rows (live or withdrawn) and control-log entries.
pub(super) async fn written(h: &Harness) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM firmware_releases), \
                (SELECT count(*) FROM firmware_releases WHERE withdrawn_at IS NULL), \
                (SELECT count(*) FROM control_log)",
    )
    .fetch_one(h.pool())
    .await?)
}

pub(super) fn with_dry_run(body: &Value) -> Value {
    let mut body = body.clone();
    body["dry_run"] = json!(true);
    body
}

/// Sends the dry run, then the real request: both are refused alike — same status, same error body — and
/// neither writes anything. Returns the real request's answer.
async fn refused_alike(
    h: &Harness,
    what: &str,
    dry: impl std::future::Future<Output = anyhow::Result<Answer>>,
    real: impl std::future::Future<Output = anyhow::Result<Answer>>,
) -> anyhow::Result<Answer> {
    let before = written(h).await?;
    let dry = dry.await?;
    let real = real.await?;
    assert!(
        real.status.is_client_error(),
        "{what}: the real request is refused: {real:?}"
    );
    assert_eq!(
        (dry.status, &dry.body),
        (real.status, &real.body),
        "{what}: the dry run answers the real request's refusal"
    );
    assert_eq!(written(h).await?, before, "{what}: nothing is written");
    Ok(real)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_is_refused_exactly_as_the_real_request_and_writes_nothing() -> anyhow::Result<()>
{
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let fleet = h.group("fleet", tags_filter("fleet")).await?;
    for i in 0..12 {
        let attributes = json!({"firmwareVersion": "1", "tags": ["fleet"]});
        enrol(&h, &format!("dev-{i:02}"), attributes, json!({})).await?;
    }
    devices_applied(&h, 12, 1).await?;
    let nothing = written(&h).await?;

    // Version 2 cannot become the default: no device runs it. The dry run says so, as the release does.
    let body = json!({"default": true, "version": "2"});
    let real = refused_alike(
        &h,
        "default nobody runs",
        c.post("/api/v1/releases", with_dry_run(&body)),
        c.post("/api/v1/releases", body.clone()),
    )
    .await?;
    assert_eq!(real.status, 400);
    assert_eq!(real.error(), "bad_request");
    assert_eq!(
        real.body["message"],
        "version \"2\" cannot become the org default: no device of the org reports running it (release it to a group first)"
    );
    assert_eq!(written(&h).await?, nothing);

    // Every other refusal of a release, before the org has any.
    let gone = h.group("gone", tags_filter("gone")).await?;
    groups::delete_group(h.pool(), gone).await?;
    groups::create_org(h.pool(), "globex", "Globex").await?;
    let foreign = NewGroup {
        org_id: "globex".into(),
        name: "theirs".into(),
        filter: Some(tags_filter("fleet")),
        ..Default::default()
    };
    let foreign = groups::create_group(h.pool(), &h.catalogue, &foreign)
        .await?
        .group_id;
    let refusals = [
        (
            "unknown group",
            json!({"groupId": Uuid::new_v4(), "version": "2"}),
        ),
        ("deleted group", json!({"groupId": gone, "version": "2"})),
        (
            "another org's group",
            json!({"groupId": foreign, "version": "2"}),
        ),
        (
            "not a version",
            json!({"groupId": fleet, "version": "banana"}),
        ),
        ("empty version", json!({"groupId": fleet, "version": " "})),
        (
            "not a version, as default",
            json!({"default": true, "version": "latest"}),
        ),
        (
            "both targets",
            json!({"default": true, "groupId": fleet, "version": "2"}),
        ),
        ("no target", json!({"version": "2"})),
        (
            "another org",
            json!({"orgId": "globex", "default": true, "version": "1"}),
        ),
    ];
    for (what, body) in &refusals {
        let dry = c.post("/api/v1/releases", with_dry_run(body));
        refused_alike(&h, what, dry, c.post("/api/v1/releases", body.clone())).await?;
    }

    // Once the org releases integers, a semantic version is refused; and so is withdrawing a release that
    // is not live, or not there.
    let default = c
        .post("/api/v1/releases", json!({"default": true, "version": "1"}))
        .await?;
    assert_eq!(default.status, 201, "{default:?}");
    let canary = c
        .post(
            "/api/v1/releases",
            json!({"groupId": fleet, "version": "3"}),
        )
        .await?;
    assert_eq!(canary.status, 201, "{canary:?}");
    let canary = canary.body["release"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let withdrawn = c.delete(&format!("/api/v1/releases/{canary}")).await?;
    assert_eq!(withdrawn.status, 200, "{withdrawn:?}");
    let mixed = json!({"groupId": fleet, "version": "2.0.0"});
    let dry = c.post("/api/v1/releases", with_dry_run(&mixed));
    let real = refused_alike(
        &h,
        "mixed kinds",
        dry,
        c.post("/api/v1/releases", mixed.clone()),
    )
    .await?;
    assert_eq!(
        real.body["message"],
        "version \"2.0.0\" is semver, but this org's releases use integer versions"
    );
    let dry = c.post("/api/v1/releases", with_dry_run(&body));
    refused_alike(
        &h,
        "default nobody runs, again",
        dry,
        c.post("/api/v1/releases", body.clone()),
    )
    .await?;
    for (what, id) in [
        ("withdrawn release", canary.clone()),
        ("unknown release", Uuid::new_v4().to_string()),
    ] {
        let (dry, real) = (
            format!("/api/v1/releases/{id}?dryRun=true"),
            format!("/api/v1/releases/{id}"),
        );
        let real = refused_alike(&h, what, c.delete(&dry), c.delete(&real)).await?;
        assert_eq!(real.status, 404, "{what}");
    }
    // The store's own preview refuses alike.
    let refused = firmware::preview(
        h.pool(),
        ORG,
        &Proposal::Release {
            health: Default::default(),
            target: ReleaseTarget::Default,
            version: "2".into(),
            stages: vec![10_000],
        },
        5,
    )
    .await;
    assert!(
        matches!(refused, Err(firmware::ReleaseError::NoDeviceRunsIt(_))),
        "{refused:?}"
    );
    let refused = firmware::preview(
        h.pool(),
        ORG,
        &Proposal::Withdraw {
            release: canary.parse()?,
        },
        5,
    )
    .await;
    assert!(
        matches!(refused, Err(firmware::ReleaseError::NotFound)),
        "{refused:?}"
    );
    // The default 1 (none → 1), the canary 3 (1 → 3) and its withdrawal (3 → 1), for each device.
    settled(&h, 3 * 12).await?;
    h.stop().await
}

/// Releases through [`firmware::apply`]: the dry run's impact, then the write's, which must be the same.
async fn release(h: &Harness, target: ReleaseTarget, version: &str) -> anyhow::Result<Impact> {
    let proposal = Proposal::Release {
        health: Default::default(),
        target,
        version: version.into(),
        stages: vec![10_000],
    };
    let dry = firmware::apply(h.pool(), ORG, &proposal, "ops", 100, Mode::DryRun).await?;
    assert_eq!(dry.release, None, "a dry run creates no release");
    let real = firmware::apply(h.pool(), ORG, &proposal, "ops", 100, Mode::Write).await?;
    assert!(real.release.is_some());
    assert_eq!(
        real.impact, dry.impact,
        "the release returns the impact its dry run answered"
    );
    Ok(real.impact)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_released_the_version_it_runs_changes_targets_but_impacts_no_device(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let all = h.group("all", tags_filter("fleet")).await?;
    for i in 0..20 {
        let attributes = json!({"firmwareVersion": "1", "tags": ["fleet"]});
        enrol(&h, &format!("dev-{i:02}"), attributes, json!({})).await?;
    }
    devices_applied(&h, 20, 1).await?;

    // Every target changes (none → 1), but every device already runs 1: nothing to download.
    let impact = release(&h, ReleaseTarget::Default, "1").await?;
    assert_eq!(
        (impact.examined, impact.changed, impact.impacted),
        (20, 20, 0)
    );
    assert_eq!(impact.transitions, counts(&[("none -> 1", 20)]));
    assert!(impact.downloads.is_empty(), "{:?}", impact.downloads);
    assert!(impact.sample.iter().all(|d| !d.impacted));
    settled(&h, 20).await?;

    // Version 2 to all of them: every target changes, and every device downloads it.
    let impact = release(&h, ReleaseTarget::Group(all), "2").await?;
    assert_eq!(
        (impact.examined, impact.changed, impact.impacted),
        (20, 20, 20)
    );
    assert_eq!(impact.transitions, counts(&[("1 -> 2", 20)]));
    assert_eq!(impact.downloads, counts(&[("1 -> 2", 20)]));
    assert!(impact
        .sample
        .iter()
        .all(|d| d.impacted && d.running.as_deref() == Some("1")));
    settled(&h, 40).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_counts_as_impacted_only_the_devices_not_running_their_new_target(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let c = client(&h).await?;
    let fleet = h.group("fleet", tags_filter("fleet")).await?;
    // 9 devices run 2 and one reports it as 02, 5 report no version, 20 run 1, and one development device
    // and one locked to 1 (both running 1).
    for i in 0..37 {
        let (running, extra) = match i {
            0..=8 => (Some("2"), json!({})),
            9 => (Some("02"), json!({})),
            10..=14 => (None, json!({})),
            15..=34 => (Some("1"), json!({})),
            35 => (Some("1"), json!({"development": true})),
            _ => (Some("1"), json!({"firmwareLock": "1"})),
        };
        let mut attributes = json!({"tags": ["fleet"]});
        if let Some(running) = running {
            attributes["firmwareVersion"] = json!(running);
        }
        enrol(&h, &format!("dev-{i:02}"), attributes, extra).await?;
    }
    devices_applied(&h, 37, 1).await?;
    settled(&h, 1).await?; // the locked device: none → 1

    // The default 1 over HTTP: 35 targets change (not the development device, nor the locked one, which
    // already targets 1); the 10 devices running 2 would download 1, and so would the 5 that report none.
    let body = json!({"default": true, "version": "1"});
    let dry = c.post("/api/v1/releases", with_dry_run(&body)).await?;
    assert_eq!(dry.status, 200, "{dry:?}");
    let impact = &dry.body["impact"];
    assert_eq!(
        (&impact["examined"], &impact["changed"], &impact["impacted"]),
        (&json!(37), &json!(35), &json!(15))
    );
    assert_eq!(impact["transitions"], json!({"none -> 1": 35}));
    assert_eq!(
        impact["downloads"],
        json!({"2 -> 1": 9, "02 -> 1": 1, "unreported -> 1": 5})
    );
    let sample = impact["sample"].as_array().cloned().unwrap_or_default();
    let listed: Vec<(&str, Option<&str>, bool)> = sample
        .iter()
        .map(|d| {
            (
                d["deviceId"].as_str().unwrap_or_default(),
                d["running"].as_str(),
                d["impacted"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed.len(),
        20,
        "the API lists the first 20 changed devices"
    );
    assert_eq!(listed[0], ("dev-00", Some("2"), true));
    assert_eq!(listed[9], ("dev-09", Some("02"), true));
    assert_eq!(listed[10], ("dev-10", None, true));
    assert_eq!(listed[19], ("dev-19", Some("1"), false));
    let real = c.post("/api/v1/releases", body).await?;
    assert_eq!(real.status, 201, "{real:?}");
    assert_eq!(real.body["dryRun"], false);
    assert_eq!(real.body["impact"], dry.body["impact"]);
    settled(&h, 1 + 35).await?;

    // Version 2 to the fleet: the same 35 targets change (1 → 2); the 20 running 1 and the 5 that report
    // none download it, the 10 running 2 (02 included) do not.
    let impact = release(&h, ReleaseTarget::Group(fleet), "2").await?;
    assert_eq!(
        (impact.examined, impact.changed, impact.impacted),
        (37, 35, 25)
    );
    assert_eq!(impact.transitions, counts(&[("1 -> 2", 35)]));
    assert_eq!(
        impact.downloads,
        counts(&[("1 -> 2", 20), ("unreported -> 2", 5)])
    );
    settled(&h, 1 + 35 + 35).await?;

    // Withdrawing it: back to 1 for the same 35; now the devices running 2 and those reporting none
    // would download.
    let live: Uuid = sqlx::query_scalar(
        "SELECT id FROM firmware_releases WHERE group_id = $1 AND withdrawn_at IS NULL",
    )
    .bind(fleet)
    .fetch_one(h.pool())
    .await?;
    let proposal = Proposal::Withdraw { release: live };
    let dry = firmware::apply(h.pool(), ORG, &proposal, "ops", 100, Mode::DryRun).await?;
    assert_eq!(dry.release.as_ref().map(|r| r.id), Some(live));
    let real = firmware::apply(h.pool(), ORG, &proposal, "ops", 100, Mode::Write).await?;
    assert_eq!(real.impact, dry.impact);
    assert_eq!((real.impact.changed, real.impact.impacted), (35, 15));
    assert_eq!(
        real.impact.downloads,
        counts(&[("2 -> 1", 9), ("02 -> 1", 1), ("unreported -> 1", 5)])
    );
    settled(&h, 1 + 35 * 3).await?;
    h.stop().await
}
