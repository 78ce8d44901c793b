//! Driving the worker through the corpus: the known state it starts from, producing a case as it says,
//! and waiting until everything produced is applied and published.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use cohort::store::firmware::ReleaseTarget;
use cohort::store::groups::NewGroup;
use cohort::store::{firmware, groups, members};
use cohort_testkit::app::{standard_groups, Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use super::{with, OTHER_ORG, SEQ};

/// Produces one message as the case says; returns its (partition, offset).
pub(super) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    partition: Option<i32>,
    payload: Option<&[u8]>,
    headers: &[(&str, Vec<u8>)],
) -> anyhow::Result<(i32, i64)> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(value.as_slice()),
        });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let delivery = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send(record, Duration::from_secs(10)),
    )
    .await
    .context("producing timed out")?
    .map_err(|(e, _)| anyhow::Error::new(e).context("producing failed"))?;
    Ok((delivery.partition, delivery.offset))
}

/// The stored partition of each device.
pub(super) async fn partitions(h: &Harness) -> anyhow::Result<BTreeMap<String, i32>> {
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT id, partition FROM devices")
        .fetch_all(h.pool())
        .await?;
    Ok(rows.into_iter().collect())
}

/// Puts the worker in a known state: orgs `acme` and `globex`, dynamic groups in both, a static group with
/// a member, two releases (so devices have firmware targets), and devices at sequence [`SEQ`].
pub(super) async fn known_state(h: &Harness, producer: &FutureProducer) -> anyhow::Result<()> {
    groups::create_org(h.pool(), OTHER_ORG, "Globex").await?;
    let acme_groups = standard_groups(h).await?;
    let hand_picked = h.static_group("hand-picked").await?;
    groups::create_group(
        h.pool(),
        &h.catalogue,
        &NewGroup {
            org_id: OTHER_ORG.into(),
            // Support's oracle evaluates every group for every device, whatever its org: this filter
            // matches no device of acme.
            name: "globex-land".into(),
            filter: Some(json!({"operator": "AND", "conditions": [
                {"field": "custom.region", "operator": "equals", "value": "globex-land"}]})),
            ..Default::default()
        },
    )
    .await?;
    h.control_applied().await?;
    let devices = [
        (
            ORG,
            "dev-a",
            json!({"status": "online", "osType": "linux", "uptimeSeconds": 900, "tags": ["prod"], "hostname": "a"}),
        ),
        (
            ORG,
            "dev-b",
            json!({"status": "offline", "osType": "rtos", "uptimeSeconds": 5}),
        ),
        (
            ORG,
            "dev-c",
            json!({"status": "online", "osType": "android", "tags": ["dev"], "firmwareVersion": "1.0.0"}),
        ),
        (
            OTHER_ORG,
            "gx-1",
            json!({"status": "online", "custom.region": "globex-land"}),
        ),
    ];
    for (org, device, attributes) in &devices {
        let payload = with(device, SEQ, |e| {
            e.insert("orgId".into(), json!(org));
            e.insert("attributes".into(), attributes.clone());
        });
        produce(
            producer,
            &h.input,
            Some(device.as_bytes()),
            None,
            Some(&payload),
            &[],
        )
        .await?;
    }
    for (_, device, _) in &devices {
        h.applied(device, SEQ).await?;
    }
    members::add_static(h.pool(), ORG, hand_picked, &["dev-a".to_string()], "test").await?;
    firmware::release(h.pool(), ORG, ReleaseTarget::Default, "1.0.0", "test").await?;
    firmware::release(
        h.pool(),
        ORG,
        ReleaseTarget::Group(acme_groups[0]),
        "2.0.0",
        "test",
    )
    .await?;
    h.control_applied().await?;
    // The workers apply memberships and targets asynchronously: wait until the stored state is what a
    // from-scratch computation gives.
    settled(h, "the known state settles").await?;
    let targets: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, target_version FROM devices ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    anyhow::ensure!(
        targets
            .iter()
            .any(|(d, v)| d == "dev-a" && v.as_deref() == Some("2.0.0")),
        "the known state has firmware targets: {targets:?}"
    );
    Ok(())
}

/// Waits until the stored memberships, log and targets agree with the oracle, and the outbox is drained.
pub(super) async fn settled(h: &Harness, what: &str) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let last = &last;
    let waited = eventually(LIMIT, what, || async move {
        let oracle = h.check_oracle(h.clock.now()).await;
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(h.pool())
                .await?;
        *last.lock().expect("not poisoned") =
            format!("oracle {oracle:?}, {unpublished} unpublished");
        Ok((oracle.is_ok() && unpublished == 0).then_some(()))
    })
    .await;
    waited.with_context(|| last.lock().expect("not poisoned").clone())
}
