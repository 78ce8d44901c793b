//! `cohort plan` and `cohort apply` against real PostgreSQL with the worker: a plan lists exactly the
//! devices that join and leave each group and whose firmware is retargeted; applying it yields exactly
//! those (the membership log and the rollout-target events after the apply are compared with the plan);
//! a plan whose live state moved is refused and changes nothing; the command line round trip works.

use std::collections::{BTreeMap, BTreeSet};

use cohort::plan::{self, FleetFile, PlanError};
use cohort::store::firmware::{self, ReleaseTarget};
use cohort::store::groups::{self, GroupPatch};
use cohort::store::members;
use cohort_testkit::app::{check_oracle, Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use serde_json::{json, Value};
use uuid::Uuid;

/// 12 devices: even ones linux, odd ones rtos; the first six online; all running 1.
async fn fleet(h: &mut Harness) -> anyhow::Result<Vec<String>> {
    let mut last = Vec::new();
    for i in 0..12 {
        let device = format!("dev-{i:02}");
        let attrs = json!({"osType": if i % 2 == 0 { "linux" } else { "rtos" },
            "status": if i < 6 { "online" } else { "offline" }, "firmwareVersion": "1"});
        last.push((device.clone(), h.send(&device, attrs).await?));
    }
    for (device, seq) in &last {
        h.applied(device, *seq).await?;
    }
    Ok(last.into_iter().map(|(d, _)| d).collect())
}

fn equals(field: &str, value: &str) -> Value {
    json!({"field": field, "operator": "equals", "value": value})
}

/// The live state: `online` (status = online), static `pilot` (dev-00, dev-01), default release 1.
async fn live(h: &Harness) -> anyhow::Result<(Uuid, Uuid)> {
    let online = h
        .group(
            "online",
            json!({"operator": "AND", "conditions": [equals("status", "online")]}),
        )
        .await?;
    let pilot = h.static_group("pilot").await?;
    let pair = vec!["dev-00".to_string(), "dev-01".to_string()];
    members::add_static(h.pool(), ORG, pilot, &pair, "ops").await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1", "ops").await?;
    h.control_applied().await?;
    Ok((online, pilot))
}

/// What the file asks for: `online` narrowed to linux devices; a new dynamic `rtos` group under it
/// released 2; `pilot` holding dev-01 and dev-02, released 3.
const FILE: &str = "
org: acme
groups:
  online:
    filter: {operator: AND, conditions: [{field: status, operator: equals, value: online},
                                         {field: osType, operator: equals, value: linux}]}
  rtos:
    parent: online
    filter: {operator: AND, conditions: [{field: osType, operator: equals, value: rtos}]}
  pilot:
    members: [dev-01, dev-02]
releases:
  rtos: {version: '2'}
  pilot: {version: '3'}
";

/// Rollout-target events in the outbox after `after` rows: (device, version).
async fn rollouts_after(
    h: &Harness,
    after: i64,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let rows: Vec<(Vec<u8>,)> =
        sqlx::query_as("SELECT payload FROM outbox WHERE topic = $1 AND id > $2 ORDER BY id")
            .bind(&h.config.kafka.output_topic)
            .bind(after)
            .fetch_all(h.pool())
            .await?;
    let mut out = BTreeMap::new();
    for (payload,) in rows {
        let e: Value = serde_json::from_slice(&payload)?;
        let device = e["subject"].as_str().unwrap_or_default().to_string();
        let to = e["data"]["target"]["version"].as_str().map(str::to_string);
        out.insert(device, to);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_lists_exact_moves_and_retargets_and_apply_yields_exactly_them() -> anyhow::Result<()>
{
    let mut h = Harness::start().await?;
    let devices = fleet(&mut h).await?;
    let (online, pilot) = live(&h).await?;
    h.wait_members(
        online,
        &[
            ("dev-00", false),
            ("dev-01", false),
            ("dev-02", false),
            ("dev-03", false),
            ("dev-04", false),
            ("dev-05", false),
        ],
    )
    .await?;
    let file = FleetFile::parse(FILE).map_err(anyhow::Error::msg)?;
    let planned = plan::plan(h.pool(), &h.catalogue, &file, &Default::default()).await?;

    // The plan, from the devices' attributes: online loses its rtos devices, rtos holds every rtos
    // device, pilot swaps dev-00 for dev-02.
    let rtos: Vec<String> = devices.iter().skip(1).step_by(2).cloned().collect();
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        planned.moves["online"].leaves,
        names(&["dev-01", "dev-03", "dev-05"])
    );
    assert!(planned.moves["online"].joins.is_empty());
    assert_eq!(planned.moves["rtos"].joins, rtos);
    assert_eq!(planned.moves["pilot"].joins, names(&["dev-02"]));
    assert_eq!(planned.moves["pilot"].leaves, names(&["dev-00"]));
    // Firmware: pilot's members run 3 (the highest), the other rtos devices 2, dev-00 goes back to 1.
    let expected: BTreeMap<String, Option<String>> = devices
        .iter()
        .filter_map(|d| {
            let to = match d.as_str() {
                "dev-01" | "dev-02" => "3",
                d if rtos.iter().any(|r| r == d) => "2",
                _ => return None,
            };
            Some((d.clone(), Some(to.to_string())))
        })
        .collect();
    let listed: BTreeMap<String, Option<String>> = planned
        .retargets
        .iter()
        .map(|r| (r.device.clone(), r.to.clone()))
        .collect();
    assert_eq!(listed, expected);
    assert!(planned
        .retargets
        .iter()
        .all(|r| r.from.as_deref() == Some("1")));
    let text = plan::render(&planned);
    assert!(
        text.contains("+ create dynamic group rtos under online"),
        "{text}"
    );
    assert!(text.contains("1 -> 3: 2"), "{text}");

    // Apply: the log rows and the rollout events that follow are exactly the plan's.
    let log_before: i64 =
        sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM group_membership_log")
            .fetch_one(h.pool())
            .await?;
    let outbox_before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM outbox")
        .fetch_one(h.pool())
        .await?;
    // A cap below the plan's retargets: the plan, reviewed and unchanged, confirms them.
    cohort::store::retarget_cap::set_retarget_cap(h.pool(), ORG, Some(1), "ops").await?;
    let over = firmware::Proposal::Release {
        target: ReleaseTarget::Group(pilot),
        version: "3".into(),
        stages: vec![10_000],
        health: Default::default(),
    };
    let unconfirmed = firmware::apply(h.pool(), ORG, &over, "ops", 0, firmware::Mode::Write).await;
    assert!(
        matches!(unconfirmed, Err(firmware::ReleaseError::CapExceeded(_))),
        "without the plan, the cap refuses: {unconfirmed:?}"
    );
    let applied = plan::apply::apply(h.pool(), &h.catalogue, &planned, "test").await?;
    assert_eq!(applied, planned.changes.len());
    h.control_applied().await?;
    let rtos_id = groups_by_name(&h).await?["rtos"];
    let pool = h.pool().clone();
    let want = expected.clone();
    let topic = h.config.kafka.output_topic.clone();
    eventually(LIMIT, "the plan's rollout events", || {
        let (pool, want, topic) = (pool.clone(), want.clone(), topic.clone());
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1 AND id > $2")
                    .bind(&topic)
                    .bind(outbox_before)
                    .fetch_one(&pool)
                    .await?;
            Ok((n as usize >= want.len()).then_some(()))
        }
    })
    .await?;
    h.control_applied().await?;
    assert_eq!(rollouts_after(&h, outbox_before).await?, expected);
    let log: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT group_id, device_id, action FROM group_membership_log WHERE id > $1 ORDER BY id",
    )
    .bind(log_before)
    .fetch_all(h.pool())
    .await?;
    let moved = |group: Uuid, action: &str| -> Vec<String> {
        let set: BTreeSet<String> = log
            .iter()
            .filter(|(g, _, a)| *g == group && a == action)
            .map(|(_, d, _)| d.clone())
            .collect();
        set.into_iter().collect()
    };
    for (name, id) in [("online", online), ("rtos", rtos_id), ("pilot", pilot)] {
        assert_eq!(
            moved(id, "added"),
            planned.moves[name].joins,
            "{name} joins"
        );
        assert_eq!(
            moved(id, "removed"),
            planned.moves[name].leaves,
            "{name} leaves"
        );
    }
    // Planning again finds nothing to do.
    let again = plan::plan(h.pool(), &h.catalogue, &file, &Default::default()).await?;
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    check_oracle(h.pool(), chrono::Utc::now().timestamp_millis()).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_whose_live_state_moved_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    fleet(&mut h).await?;
    let (online, _) = live(&h).await?;
    let file = FleetFile::parse(FILE).map_err(anyhow::Error::msg)?;
    let planned = plan::plan(h.pool(), &h.catalogue, &file, &Default::default()).await?;
    // Someone edits `online` meanwhile: the plan's impact no longer holds.
    let patch = GroupPatch {
        filter: Some(json!({"operator": "AND", "conditions": [equals("status", "offline")]})),
        ..GroupPatch::default()
    };
    groups::update_group(h.pool(), &h.catalogue, online, &patch).await?;
    let refused = plan::apply::apply(h.pool(), &h.catalogue, &planned, "test").await;
    assert!(matches!(refused, Err(PlanError::Stale)), "{refused:?}");
    assert!(
        !groups_by_name(&h).await?.contains_key("rtos"),
        "nothing applied"
    );
    // A file with problems is refused with each of them.
    let bad = FleetFile::parse("org: acme\nreleases:\n  nowhere: {version: '2'}\n").unwrap();
    let refused = plan::plan(h.pool(), &h.catalogue, &bad, &Default::default()).await;
    assert!(
        matches!(&refused, Err(PlanError::Invalid(p)) if p[0].contains("nowhere")),
        "{refused:?}"
    );
    h.stop().await
}

async fn groups_by_name(h: &Harness) -> anyhow::Result<BTreeMap<String, Uuid>> {
    let rows: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT name, id FROM device_groups WHERE deleted_at IS NULL")
            .fetch_all(h.pool())
            .await?;
    Ok(rows.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_apply_on_the_command_line_and_a_second_apply_is_stale() -> anyhow::Result<()> {
    let mut h = Harness::start().await?;
    fleet(&mut h).await?;
    live(&h).await?;
    let dir = std::env::temp_dir().join(format!("cohort-plan-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let (file, saved) = (dir.join("fleet.yaml"), dir.join("plan.json"));
    std::fs::write(&file, FILE)?;
    let cohort = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
            .env_clear()
            .envs(cohort_testkit::child::inherited())
            .env("COHORT_DATABASE_URL", &h.config.database.url)
            .args(args)
            .output()
    };
    let planned = cohort(&[
        "plan".as_ref(),
        "-f".as_ref(),
        file.as_os_str(),
        "--out".as_ref(),
        saved.as_os_str(),
    ])?;
    let stdout = String::from_utf8_lossy(&planned.stdout);
    assert!(
        planned.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&planned.stderr)
    );
    assert!(
        stdout.contains("plan for org acme: 6 change(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("apply it with: cohort apply --plan"),
        "{stdout}"
    );
    let applied = cohort(&["apply".as_ref(), "--plan".as_ref(), saved.as_os_str()])?;
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert!(
        stdout.contains("applied 6 change(s) to org acme"),
        "{stdout}"
    );
    assert!(groups_by_name(&h).await?.contains_key("rtos"));
    // The same plan again: the groups it creates exist now, so the live state moved.
    let again = cohort(&["apply".as_ref(), "--plan".as_ref(), saved.as_os_str()])?;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("the live state moved since the plan was made"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir)?;
    h.stop().await
}

#[test]
fn the_example_fleet_file_meets_its_schema_and_the_parser() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = cohort_testkit::schema::Schema::load(root.join("schemas/fleet.schema.json"));
    let text = std::fs::read_to_string(root.join("docs/examples/fleet.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(schema.errors(&doc), Vec::<String>::new());
    let file = FleetFile::parse(&text).unwrap();
    assert_eq!(
        file.check(&cohort::rules::Catalogue::default()),
        Vec::<String>::new()
    );
    // What the schema refuses, the parser refuses too.
    for bad in [
        json!({"groups": {}}),
        json!({"org": "acme", "extra": 1}),
        json!({"org": "acme", "groups": {"g": {"members": [""]}}}),
        json!({"org": "acme", "releases": {"g": {"stages": [10]}}}),
        json!({"org": "acme", "groups": {"g": {"filter": {"operator": "AND", "conditions": []}, "typo": 1}}}),
    ] {
        assert!(!schema.errors(&bad).is_empty(), "the schema takes {bad}");
        let parsed = FleetFile::parse(&bad.to_string());
        let refused = match parsed {
            Err(_) => true,
            Ok(file) => !file.check(&cohort::rules::Catalogue::default()).is_empty(),
        };
        assert!(refused, "the parser takes {bad}");
    }
}
