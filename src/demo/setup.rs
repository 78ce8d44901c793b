//! What the demo does around the stream: the set-up through the normal write paths, waiting for the worker,
//! and the poison messages.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, Producer as _};
use sqlx::PgPool;

use crate::firmware::Version;
use crate::rules::Catalogue;
use crate::store::control::LockChange;
use crate::store::firmware::{self, ReleaseTarget};
use crate::store::{api_keys, groups, members};
use crate::synthetic::broker;
use crate::synthetic::fleet::Fleet;
use crate::worker::Status;

/// What [`setup`] created.
pub struct Setup {
    pub static_groups: usize,
    pub org_key: String,
}

/// Static groups, releases, a lock and a development device per org, and API keys, all through the
/// normal write paths (the control log tells the worker).
pub async fn setup(pool: &PgPool, fleet: &Fleet) -> anyhow::Result<Setup> {
    let mut static_groups = 0;
    for o in 0..fleet.orgs {
        let org = Fleet::org_id(o);
        let devices: Vec<usize> = (0..fleet.devices)
            .filter(|&i| fleet.org_of(i) == o)
            .collect();
        let pilot = groups::create_group(
            pool,
            &Catalogue::default(),
            &groups::NewGroup {
                org_id: org.clone(),
                name: "pilot devices".into(),
                description: "Hand-picked devices that get new firmware first".into(),
                tags: vec!["pilot".into()],
                ..Default::default()
            },
        )
        .await?;
        static_groups += 1;
        let picked: Vec<String> = devices
            .iter()
            .take(25)
            .map(|&i| fleet.device_id(i))
            .collect();
        members::add_static(pool, &org, pilot.group_id, &picked, "cohort demo").await?;
        // The org default: the version most of its devices report (a default must be one some device
        // runs); a newer one to the pilot group; the newest to the first few dynamic groups.
        let running: Option<String> = sqlx::query_scalar(
            "SELECT attributes ->> 'firmwareVersion' FROM devices WHERE org_id = $1 \
             GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .bind(&org)
        .fetch_optional(pool)
        .await?
        .flatten();
        if let Some(version) = running.filter(|v| Version::parse(v).is_ok()) {
            firmware::release(pool, &org, ReleaseTarget::Default, &version, "cohort demo").await?;
        }
        firmware::release(
            pool,
            &org,
            ReleaseTarget::Group(pilot.group_id),
            "9.0.0",
            "cohort demo",
        )
        .await?;
        let dynamic: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM device_groups WHERE org_id = $1 AND type = 'dynamic' AND deleted_at IS NULL \
             ORDER BY name LIMIT 3",
        )
        .bind(&org)
        .fetch_all(pool)
        .await?;
        for (n, group) in dynamic.into_iter().enumerate() {
            let version = format!("8.{n}.0");
            firmware::release(
                pool,
                &org,
                ReleaseTarget::Group(group),
                &version,
                "cohort demo",
            )
            .await?;
        }
        if let (Some(&locked), Some(&dev)) = (devices.get(30), devices.get(31)) {
            members::set_device_settings(
                pool,
                &org,
                &fleet.device_id(locked),
                None,
                LockChange::Set("7.0.0".into()),
                "cohort demo",
            )
            .await?;
            members::set_device_settings(
                pool,
                &org,
                &fleet.device_id(dev),
                Some(true),
                LockChange::Unchanged,
                "cohort demo",
            )
            .await?;
        }
    }
    let (_, org_key) = api_keys::create(pool, Some(&Fleet::org_id(0)), "cohort demo").await?;
    Ok(Setup {
        static_groups,
        org_key,
    })
}

/// Waits until the worker owns every partition.
pub async fn wait_for(
    status: &Status,
    partitions: usize,
    running: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while status.partitions.load(Ordering::SeqCst) < partitions {
        if running.is_finished() {
            return match running.await {
                Ok(Err(e)) => Err(e.context("the worker stopped while starting")),
                _ => Err(anyhow::anyhow!("the worker stopped while starting")),
            };
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not start in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A few messages no worker can apply (they are dead-lettered, counted, and the stream goes on): broken
/// JSON, an unknown org, a wrong type, a device claimed by another org. Returns how many.
pub fn poison(
    producer: &rdkafka::producer::BaseProducer<broker::Counting>,
    topic: &str,
    fleet: &Fleet,
) -> anyhow::Result<usize> {
    let device = fleet.device_id(0);
    // Another existing org claiming the device (or, with one org, an org that does not exist).
    let foreign_org =
        Fleet::org_id((fleet.org_of(0) + 1) % (fleet.orgs + usize::from(fleet.orgs == 1)));
    let messages = [
        (
            device.clone(),
            "{\"eventId\": \"bad-1\", \"orgId\":".to_string(),
        ),
        (
            "stranger".to_string(),
            serde_json::json!({"eventId": "bad-2", "orgId": "no-such-org", "deviceId": "stranger",
                "sequence": 1, "attributes": {}})
            .to_string(),
        ),
        (
            device.clone(),
            serde_json::json!({"eventId": "bad-3", "orgId": Fleet::org_id(0), "deviceId": device,
                "sequence": 1, "attributes": {"uptimeSeconds": "soon"}})
            .to_string(),
        ),
        (
            device.clone(),
            serde_json::json!({"eventId": "bad-4", "orgId": foreign_org, "deviceId": device,
                "sequence": 1, "attributes": {}})
            .to_string(),
        ),
    ];
    for (key, payload) in &messages {
        producer
            .send(
                BaseRecord::to(topic)
                    .key(key.as_str())
                    .payload(payload.as_str()),
            )
            .map_err(|(e, _)| e)
            .context("failed to produce a poison message")?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("the poison messages were not delivered")?;
    Ok(messages.len())
}

/// Waits until the worker has applied every control-log entry up to `head` on each of the `partitions` of
/// `topic` (the set-up's static members, releases and settings), so that the seeded fleet, initial targets
/// included, is in place before the first event.
pub async fn wait_for_control(
    pool: &PgPool,
    topic: &str,
    partitions: usize,
    head: i64,
    running: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM partition_positions WHERE topic = $1 AND control_position >= $2",
        )
        .bind(topic)
        .bind(head)
        .fetch_one(pool)
        .await
        .context("failed to read the worker's positions")?;
        if applied >= partitions as i64 {
            return Ok(());
        }
        anyhow::ensure!(
            !running.is_finished(),
            "the worker stopped while applying the set-up"
        );
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not apply the set-up in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
