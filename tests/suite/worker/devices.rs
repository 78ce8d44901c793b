//! Devices and static members: members written once by the API, registrations, cellular identifiers,
//! site-scoped static groups.

use std::time::Duration;

use cohort::store::groups;
use cohort_testkit::app::{all_applied, metric, standard_groups, stream, Harness, ORG};
use cohort_testkit::Rng;
use serde_json::{json, Value};

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_are_written_once_by_the_api_and_replaying_them_changes_nothing(
) -> anyhow::Result<()> {
    use cohort::store::members::{self, MemberError};
    let mut h = Harness::start().await?;
    standard_groups(&h).await?;
    let fleet = h.static_group("fleet").await?;
    let mut rng = Rng::seeded(0x5EED_0F57_A71C);
    let last = stream(&mut h, 8, 40, &mut rng).await?;
    all_applied(&h, &last).await?;
    // A device of another org is as unknown as one that does not exist.
    groups::create_org(h.pool(), "globex", "Globex").await?;
    let gx = json!({"eventId": "gx", "orgId": "globex", "deviceId": "gx-1", "sequence": 1});
    h.produce("gx-1", gx.to_string()).await?;
    h.applied("gx-1", 1).await?;
    h.control_applied().await?;
    let before: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM control_log")
        .fetch_one(h.pool())
        .await?;

    let added = members::add_static(
        h.pool(),
        ORG,
        fleet,
        &ids(&["dev-1", "dev-2", "dev-1", "ghost", "gx-1"]),
        "alice",
    )
    .await?;
    assert_eq!(added.changed, ids(&["dev-1", "dev-2"]));
    assert!(added.skipped.is_empty());
    assert_eq!(added.not_found, ids(&["ghost", "gx-1"]));
    let again =
        members::add_static(h.pool(), ORG, fleet, &ids(&["dev-2", "dev-3"]), "alice").await?;
    assert_eq!(
        (again.changed, again.skipped),
        (ids(&["dev-3"]), ids(&["dev-2"]))
    );
    let removed = members::remove_static(
        h.pool(),
        ORG,
        fleet,
        &ids(&["dev-1", "dev-4", "ghost"]),
        "bob",
    )
    .await?;
    assert_eq!(
        (removed.changed, removed.skipped, removed.not_found),
        (ids(&["dev-1"]), ids(&["dev-4"]), ids(&["ghost"]))
    );
    // Refusals: a dynamic group, another org's group, an unknown group.
    let dynamic: uuid::Uuid = sqlx::query_scalar(
        "SELECT id FROM device_groups WHERE type = 'dynamic' ORDER BY name LIMIT 1",
    )
    .fetch_one(h.pool())
    .await?;
    let refused = members::add_static(h.pool(), ORG, dynamic, &ids(&["dev-1"]), "a").await;
    assert!(
        matches!(refused, Err(MemberError::DynamicGroup)),
        "{refused:?}"
    );
    let refused = members::remove_static(h.pool(), ORG, dynamic, &ids(&["dev-1"]), "a").await;
    assert_eq!(
        refused.unwrap_err().to_string(),
        "Cannot manually remove devices from a dynamic group"
    );
    let refused = members::add_static(h.pool(), "globex", fleet, &ids(&["gx-1"]), "a").await;
    assert!(matches!(refused, Err(MemberError::GroupNotFound)));
    let refused =
        members::add_static(h.pool(), ORG, uuid::Uuid::new_v4(), &ids(&["dev-1"]), "a").await;
    assert!(matches!(refused, Err(MemberError::GroupNotFound)));

    let expected_log = vec![
        (
            "dev-1".to_string(),
            "added".to_string(),
            "manual".to_string(),
        ),
        ("dev-2".into(), "added".into(), "manual".into()),
        ("dev-3".into(), "added".into(), "manual".into()),
        ("dev-1".into(), "removed".into(), "manual".into()),
    ];
    h.control_applied().await?;
    assert_eq!(h.log(fleet).await?, expected_log);
    assert_eq!(
        h.members(fleet).await?,
        vec![("dev-2".into(), false), ("dev-3".into(), false)]
    );
    let cause: Value = sqlx::query_scalar(
        "SELECT cause FROM group_membership_log WHERE group_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(fleet)
    .fetch_one(h.pool())
    .await?;
    assert_eq!(cause, json!({"type": "api", "actor": "bob"}));
    let entries: Vec<(String, Value)> =
        sqlx::query_as("SELECT kind, payload FROM control_log WHERE id > $1 ORDER BY id")
            .bind(before)
            .fetch_all(h.pool())
            .await?;
    assert_eq!(
        entries.len(),
        3,
        "one entry per call that changed something"
    );
    assert!(entries.iter().all(|(kind, _)| kind == "static_members"));
    assert_eq!(entries[2].1["removed"], json!(["dev-1"]));
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;

    // More changes while no worker runs, and the partitions' positions put back before all of them (as if
    // the worker had crashed before committing any): the next worker loads memberships that already
    // include every change, then replays the entries.
    h.stop_workers().await?;
    members::add_static(h.pool(), ORG, fleet, &ids(&["dev-5", "dev-1"]), "carol").await?;
    members::remove_static(h.pool(), ORG, fleet, &ids(&["dev-5"]), "carol").await?;
    sqlx::query("UPDATE partition_positions SET control_position = $1")
        .bind(before)
        .execute(h.pool())
        .await?;
    let writes_before: i64 = sqlx::query_scalar("SELECT sum(version)::int8 FROM devices")
        .fetch_one(h.pool())
        .await?;
    let log_before: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    h.add_worker().await?;
    h.all_partitions_owned(2).await?;
    h.control_applied().await?;
    let log_after: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(log_after, log_before, "the replay wrote no log row");
    let writes_after: i64 = sqlx::query_scalar("SELECT sum(version)::int8 FROM devices")
        .fetch_one(h.pool())
        .await?;
    assert_eq!(writes_after, writes_before, "the replay wrote no device");
    assert_eq!(
        h.members(fleet).await?,
        vec![
            ("dev-1".into(), false),
            ("dev-2".into(), false),
            ("dev-3".into(), false)
        ]
    );
    // The worker's memory follows: a filter-driven event for a static member leaves it where it is, and a
    // release to the group reaches exactly its members (dev-1 re-added while no worker ran, not dev-5).
    let seq = h.send("dev-2", json!({"status": "offline"})).await?;
    h.applied("dev-2", seq).await?;
    cohort::store::firmware::release(
        h.pool(),
        ORG,
        cohort::store::firmware::ReleaseTarget::Group(fleet),
        "2",
        "ops",
    )
    .await?;
    h.control_applied().await?;
    let targeted: Vec<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE target_version = '2' ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    assert_eq!(targeted, ids(&["dev-1", "dev-2", "dev-3"]));
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_creates_a_missing_device_and_leaves_an_existing_one_alone(
) -> anyhow::Result<()> {
    use cohort::event::registration_event;
    use cohort::store::members;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut h = Harness::start().await?;
    let unnamed = h
        .group(
            "unnamed",
            json!({"operator": "AND", "conditions": [{"field": "hostname", "operator": "isNull"}]}),
        )
        .await?;
    let fleet = h.static_group("fleet").await?;

    // A new device: created with no attributes, evaluated against every dynamic group.
    let at = h
        .produce("imported-1", registration_event(ORG, "imported-1"))
        .await?;
    h.processed(at).await?;
    let (attributes, sequence): (Value, i64) =
        sqlx::query_as("SELECT attributes, sequence FROM devices WHERE id = 'imported-1'")
            .fetch_one(h.pool())
            .await?;
    assert_eq!((attributes, sequence), (json!({}), -1));
    h.wait_members(unnamed, &[("imported-1", false)]).await?;
    // It can be added to a static group at once, and registering it again changes nothing.
    let added = members::add_static(h.pool(), ORG, fleet, &ids(&["imported-1"]), "ops").await?;
    assert_eq!(added.changed, ids(&["imported-1"]));
    let duplicates = metric("cohort_worker_events_total{outcome=\"duplicate\"}");
    let again = h
        .produce("imported-1", registration_event(ORG, "imported-1"))
        .await?;
    h.processed(again).await?;
    assert!(metric("cohort_worker_events_total{outcome=\"duplicate\"}") >= duplicates + 1.0);
    // Its first real event applies, whatever its sequence.
    h.send_with_sequence("imported-1", 0, json!({"hostname": "imported"}))
        .await?;
    h.applied("imported-1", 0).await?;
    h.wait_members(unnamed, &[]).await?;

    // An existing device: a registration on its own partition, and one on the other partition (which
    // would re-home an ordinary event), write nothing at all.
    let seq = h
        .send("dev-1", json!({"hostname": "one", "status": "online"}))
        .await?;
    h.applied("dev-1", seq).await?;
    type Row = (i32, i64, i64, Value);
    let read = || async {
        anyhow::Ok(
            sqlx::query_as::<_, Row>(
                "SELECT partition, sequence, version, attributes FROM devices WHERE id = 'dev-1'",
            )
            .fetch_one(h.pool())
            .await?,
        )
    };
    let before = read().await?;
    let home = h.produce("dev-1", registration_event(ORG, "dev-1")).await?;
    h.processed(home).await?;
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    let payload = registration_event(ORG, "dev-1");
    let elsewhere = producer
        .send(
            FutureRecord::to(&h.input)
                .key("dev-1")
                .payload(&payload)
                .partition(1 - before.0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    h.processed((elsewhere.partition, elsewhere.offset)).await?;
    assert_eq!(read().await?, before);
    // A registration naming another org is an org mismatch, like any event.
    groups::create_org(h.pool(), "globex", "Globex").await?;
    h.control_applied().await?;
    let mismatch = h
        .produce("dev-1", registration_event("globex", "dev-1"))
        .await?;
    h.processed(mismatch).await?;
    let reasons: Vec<Value> = sqlx::query_scalar(
        "SELECT headers -> 'cohort-dead-letter-reason' FROM outbox WHERE topic = $1",
    )
    .bind(&h.dead_letters)
    .fetch_all(h.pool())
    .await?;
    assert_eq!(reasons, vec![json!("org_mismatch")]);
    assert_eq!(read().await?, before);
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_found_by_their_cellular_identifiers_within_their_org() -> anyhow::Result<()> {
    use cohort::store::members::{resolve_identifiers, IdentifierKind::*};
    let mut h = Harness::start().await?;
    let one = h
        .send(
            "dev-1",
            json!({"imei": "356938035643809", "iccid": "89014103211118510720", "meid": "a0000000002329"}),
        )
        .await?;
    let two = h
        .send(
            "dev-2",
            json!({"msisdn": "15551234567", "esn": "12345678901", "mdn": "5551234567"}),
        )
        .await?;
    h.applied("dev-1", one).await?;
    h.applied("dev-2", two).await?;
    groups::create_org(h.pool(), "globex", "Globex").await?;
    h.control_applied().await?;
    let gx = json!({"eventId": "gx", "orgId": "globex", "deviceId": "gx-1", "sequence": 1,
                    "attributes": {"imei": "356938035643809"}});
    h.produce("gx-1", gx.to_string()).await?;
    h.applied("gx-1", 1).await?;

    let s = |v: &str| v.to_string();
    let query = vec![
        (Imei, s("356938035643809")),
        (Meid, s("A0000000002329")),
        (Msisdn, s("15551234567")),
        (Imei, s("111111111111111")),
        (Esn, s("12345678901")),
        (Mdn, s("5551234567")),
        (Iccid, s("89014103211118510720")),
        // Another kind's value never matches: an MDN is not an MSISDN.
        (Msisdn, s("5551234567")),
        (Imei, s("356938035643809")),
    ];
    let found = resolve_identifiers(h.pool(), ORG, &query).await?;
    let d = |v: &str| Some(v.to_string());
    assert_eq!(
        found,
        vec![
            d("dev-1"),
            d("dev-1"),
            d("dev-2"),
            None,
            d("dev-2"),
            d("dev-2"),
            d("dev-1"),
            None,
            d("dev-1")
        ]
    );
    assert_eq!(
        resolve_identifiers(h.pool(), "globex", &query[..1]).await?,
        vec![d("gx-1")]
    );
    assert!(resolve_identifiers(h.pool(), ORG, &[]).await?.is_empty());

    // A SIM swap: the old ICCID no longer finds the device, the new one does; a removed MEID is gone.
    let swap = h
        .send(
            "dev-1",
            json!({"iccid": "89014103211118510721", "meid": null}),
        )
        .await?;
    h.applied("dev-1", swap).await?;
    let found = resolve_identifiers(
        h.pool(),
        ORG,
        &[
            (Iccid, s("89014103211118510720")),
            (Iccid, s("89014103211118510721")),
            (Meid, s("a0000000002329")),
            (Imei, s("356938035643809")),
        ],
    )
    .await?;
    assert_eq!(found, vec![None, d("dev-1"), None, d("dev-1")]);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_scoped_static_group_only_receives_devices_of_its_site() -> anyhow::Result<()> {
    use cohort::store::members;
    let mut h = Harness::start().await?;
    let berlin = groups::create_group(
        h.pool(),
        &h.catalogue,
        &groups::NewGroup {
            org_id: ORG.into(),
            name: "berlin-lab".into(),
            site_id: Some("berlin".into()),
            ..Default::default()
        },
    )
    .await?
    .group_id;
    for (device, site) in [("dev-1", json!("berlin")), ("dev-2", json!("paris"))] {
        let seq = h.send(device, json!({ "siteId": site })).await?;
        h.applied(device, seq).await?;
    }
    let seq = h.send("dev-3", json!({"hostname": "no-site"})).await?;
    h.applied("dev-3", seq).await?;
    let change = members::add_static(
        h.pool(),
        ORG,
        berlin,
        &ids(&["dev-1", "dev-2", "dev-3"]),
        "ops",
    )
    .await?;
    assert_eq!(change.changed, ids(&["dev-1"]));
    assert_eq!(change.wrong_site, ids(&["dev-2", "dev-3"]));
    assert!(change.skipped.is_empty() && change.not_found.is_empty());
    h.control_applied().await?;
    assert_eq!(h.members(berlin).await?, vec![("dev-1".into(), false)]);
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    h.stop().await
}
