//! An in-process cohort (worker and embedded relay) against the test database and broker, with helpers to
//! drive it (groups, events) and observe it (memberships, the log, an oracle computed from scratch).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cohort::app::Application;
use cohort::config::Config;
use cohort::rules::Catalogue;
use cohort::store::groups::{self, NewGroup};
use cohort::worker::{Clock, Status, SystemClock};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{eventually, Rng, TestDatabase, TestKafka};

pub const LIMIT: Duration = Duration::from_secs(60);
pub const ORG: &str = "acme";

/// A running worker and what the test needs to drive and observe it.
pub struct Harness {
    pub db: TestDatabase,
    pub kafka: TestKafka,
    pub input: String,
    pub dead_letters: String,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub workers: Vec<RunningWorker>,
    pub status: Arc<Status>,
    pub catalogue: Catalogue,
    pub sequence: i64,
}

/// One worker process (in-process): how to stop it gracefully, or kill it.
pub struct RunningWorker {
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub status: Arc<Status>,
    /// Where its HTTP listener (API, metrics) bound, once it has.
    pub address: tokio::sync::watch::Receiver<Option<std::net::SocketAddr>>,
}

/// An API alone (`cohort api`, in process), serving `config` until `stop` is sent or dropped.
pub struct RunningApi {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where it bound.
    pub addr: std::net::SocketAddr,
}

/// Starts the API with `config` and waits until it has bound its listener.
pub async fn spawn_api(config: Config) -> anyhow::Result<RunningApi> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, address) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(cohort::app::run_api(
        config,
        async {
            let _ = stopped.await;
        },
        Some(bound),
    ));
    let addr = crate::within(LIMIT, "the api binds", async { Ok(address.await?) }).await?;
    Ok(RunningApi { stop, task, addr })
}

pub async fn spawn_worker(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<RunningWorker> {
    let app = Application::build_with_clock(config.clone(), clock).await?;
    let status = app.status();
    let address = app.http_address();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Ok(RunningWorker {
        stop: Some(stop),
        task,
        status,
        address,
    })
}

impl RunningWorker {
    /// Its HTTP address (API, metrics), waiting for it to bind.
    pub async fn http_address(&self) -> anyhow::Result<std::net::SocketAddr> {
        let mut address = self.address.clone();
        let bound = crate::within(LIMIT, "the http listener binds", async {
            address
                .wait_for(Option::is_some)
                .await
                .map(|a| a.expect("waited for Some"))
                .map_err(anyhow::Error::from)
        })
        .await?;
        Ok(bound)
    }
}

impl Harness {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_clock(Arc::new(SystemClock)).await
    }

    pub async fn start_with_clock(clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        Self::start_with(clock, |_| {}).await
    }

    /// Starts with the test configuration adjusted by `tweak` (before the worker starts).
    pub async fn start_with(
        clock: Arc<dyn Clock>,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        let db = TestDatabase::new().await?;
        let kafka = TestKafka::new().await?;
        let input = kafka.unique_topic("device-attribute-changes");
        let dead_letters = format!("{input}.dead-letter");
        kafka.create_topic(&input, 2).await?;
        kafka.create_topic(&dead_letters, 1).await?;
        cohort::store::migrate(db.pool()).await?;
        groups::create_org(db.pool(), ORG, "Acme").await?;
        let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
        config.database.url = db.url().to_string();
        config.kafka.brokers = kafka.bootstrap_servers();
        config.kafka.input_topic = input.clone();
        config.kafka.dead_letter_topic = dead_letters.clone();
        config.kafka.output_topic = format!("{input}.rollout-targets");
        config.kafka.group_id = format!("cohort-{}", crate::random_suffix());
        config
            .kafka
            .properties
            .insert("session.timeout.ms".into(), "3000".into());
        config
            .kafka
            .properties
            .insert("heartbeat.interval.ms".into(), "500".into());
        config.worker.batch_max_wait_ms = 5;
        config.http.listen = "127.0.0.1:0".parse()?;
        tweak(&mut config);
        let harness = Self::with_worker(db, kafka, input, dead_letters, config, clock).await?;
        // Wait until the worker owns both partitions, so produced events are consumed by it.
        harness.all_partitions_owned(2).await?;
        Ok(harness)
    }

    /// The first worker's HTTP address (its API), waiting for it to bind.
    pub async fn http_address(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.workers[0].http_address().await
    }

    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    pub async fn group(&self, name: &str, filter: Value) -> anyhow::Result<Uuid> {
        let group = NewGroup {
            org_id: ORG.into(),
            name: name.into(),
            filter: Some(filter),
            ..Default::default()
        };
        Ok(groups::create_group(self.pool(), &self.catalogue, &group)
            .await?
            .group_id)
    }

    /// Creates a static group (members are added and removed through `cohort::store::members`).
    pub async fn static_group(&self, name: &str) -> anyhow::Result<Uuid> {
        let group = NewGroup {
            org_id: ORG.into(),
            name: name.into(),
            filter: None,
            ..Default::default()
        };
        Ok(groups::create_group(self.pool(), &self.catalogue, &group)
            .await?
            .group_id)
    }

    /// Produces `payload` as the value of a message keyed by `device`; returns its (partition, offset).
    pub async fn produce(
        &self,
        device: &str,
        payload: impl AsRef<[u8]>,
    ) -> anyhow::Result<(i32, i64)> {
        self.kafka.produce(&self.input, device, payload).await
    }

    /// Waits until the worker has committed the input message at (`partition`, `offset`).
    pub async fn processed(&self, (partition, offset): (i32, i64)) -> anyhow::Result<()> {
        let pool = self.pool().clone();
        let topic = self.input.clone();
        eventually(LIMIT, "the message is processed", || {
            let (pool, topic) = (pool.clone(), topic.clone());
            async move {
                let next: Option<i64> = sqlx::query_scalar(
                    "SELECT next_offset FROM partition_positions WHERE topic = $1 AND partition = $2",
                )
                .bind(&topic)
                .bind(partition)
                .fetch_optional(&pool)
                .await?;
                Ok(next.filter(|n| *n > offset).map(|_| ()))
            }
        })
        .await
    }

    /// Waits until every partition has applied every control-log entry appended so far.
    pub async fn control_applied(&self) -> anyhow::Result<()> {
        let pool = self.pool().clone();
        eventually(LIMIT, "every control entry is applied", || {
            let pool = pool.clone();
            async move {
                let behind: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM partition_positions \
                     WHERE control_position < (SELECT COALESCE(max(id), 0) FROM control_log)",
                )
                .fetch_one(&pool)
                .await?;
                Ok((behind == 0).then_some(()))
            }
        })
        .await
    }

    /// Produces an event for `device` with the next sequence number.
    pub async fn send(&mut self, device: &str, attributes: Value) -> anyhow::Result<i64> {
        self.sequence += 1;
        let sequence = self.sequence;
        self.send_with_sequence(device, sequence, attributes)
            .await?;
        Ok(sequence)
    }

    pub async fn send_with_sequence(
        &self,
        device: &str,
        sequence: i64,
        attributes: Value,
    ) -> anyhow::Result<()> {
        let event = json!({
            "eventId": format!("{device}-{sequence}-{}", crate::random_suffix()),
            "orgId": ORG,
            "deviceId": device,
            "sequence": sequence,
            "attributes": attributes,
        });
        self.kafka
            .produce(&self.input, device, event.to_string())
            .await?;
        Ok(())
    }

    /// Waits until the device's applied sequence reaches `sequence`.
    pub async fn applied(&self, device: &str, sequence: i64) -> anyhow::Result<()> {
        let pool = self.pool().clone();
        let device = device.to_string();
        eventually(LIMIT, "the event is applied", || {
            let (pool, device) = (pool.clone(), device.clone());
            async move {
                let seq: Option<i64> =
                    sqlx::query_scalar("SELECT sequence FROM devices WHERE id = $1")
                        .bind(&device)
                        .fetch_optional(&pool)
                        .await?;
                Ok(seq.filter(|s| *s >= sequence).map(|_| ()))
            }
        })
        .await
    }

    pub async fn members(&self, group: Uuid) -> anyhow::Result<Vec<(String, bool)>> {
        Ok(sqlx::query_as(
            "SELECT device_id, is_pinned FROM device_group_memberships WHERE group_id = $1 ORDER BY device_id",
        )
        .bind(group)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn log(&self, group: Uuid) -> anyhow::Result<Vec<(String, String, String)>> {
        Ok(sqlx::query_as(
            "SELECT device_id, action, reason FROM group_membership_log WHERE group_id = $1 ORDER BY id",
        )
        .bind(group)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn wait_members(&self, group: Uuid, expected: &[(&str, bool)]) -> anyhow::Result<()> {
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(d, p)| (d.to_string(), *p)).collect();
        let mut last = Vec::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        while tokio::time::Instant::now() < deadline {
            last = self.members(group).await?;
            if last == expected {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("members of {group}: expected {expected:?}, last seen {last:?}")
    }

    /// Stops every worker gracefully.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop_workers().await
    }

    /// Stops every worker gracefully, keeping the database and topics (start another with
    /// [`Harness::add_worker`]).
    pub async fn stop_workers(&mut self) -> anyhow::Result<()> {
        for mut worker in self.workers.drain(..) {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(LIMIT, worker.task).await???;
        }
        Ok(())
    }

    /// Kills the first worker with no graceful shutdown (its in-flight transaction is abandoned).
    pub fn kill_first(&mut self) {
        let worker = self.workers.remove(0);
        worker.task.abort();
    }

    /// Starts another worker in the same consumer group; returns its index.
    pub async fn add_worker(&mut self) -> anyhow::Result<usize> {
        let worker = spawn_worker(&self.config, self.clock.clone()).await?;
        self.workers.push(worker);
        Ok(self.workers.len() - 1)
    }

    /// A harness of one worker, started in-process on `config`, over `db` and `kafka`.
    pub async fn with_worker(
        db: TestDatabase,
        kafka: TestKafka,
        input: String,
        dead_letters: String,
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let worker = spawn_worker(&config, clock.clone()).await?;
        let status = worker.status.clone();
        Ok(Self {
            db,
            kafka,
            input,
            dead_letters,
            config,
            clock,
            workers: vec![worker],
            status,
            catalogue: Catalogue::default(),
            sequence: 0,
        })
    }

    /// Waits until the running workers together own every partition.
    pub async fn all_partitions_owned(&self, partitions: usize) -> anyhow::Result<()> {
        let statuses: Vec<Arc<Status>> = self.workers.iter().map(|w| w.status.clone()).collect();
        eventually(LIMIT, "the partitions are owned", || {
            let statuses = statuses.clone();
            async move {
                let owned: usize = statuses
                    .iter()
                    .map(|s| s.partitions.load(std::sync::atomic::Ordering::SeqCst))
                    .sum();
                Ok((owned == partitions).then_some(()))
            }
        })
        .await
    }

    /// [`check_oracle_with`] on this harness's database and catalogue.
    pub async fn check_oracle(&self, now: i64) -> anyhow::Result<()> {
        check_oracle_with(self.pool(), &self.catalogue, now).await
    }
}

/// Compares stored memberships with an oracle computed from scratch from the stored attributes, and
/// checks the log: per (group, device), actions alternate (no duplicate row) and the last one agrees
/// with the membership. Static groups' memberships (the API's) must be manual and unpinned, and every
/// device's stored firmware target must be what resolution gives from the stored memberships (static
/// ones included) and releases — which the workers can only achieve if their memory holds them too — and
/// that every group's maintained member count is its `count(*)` ([`crate::counts`]). Filters are compiled
/// with the default catalogue (the one every harness uses).
pub async fn check_oracle(pool: &PgPool, now: i64) -> anyhow::Result<()> {
    check_oracle_with(pool, &Catalogue::default(), now).await
}

/// [`check_oracle`] with the catalogue the groups' filters were written for.
pub async fn check_oracle_with(
    pool: &PgPool,
    catalogue: &Catalogue,
    now: i64,
) -> anyhow::Result<()> {
    let groups: Vec<(Uuid, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT id, org_id, site_id, filter_conditions FROM device_groups \
         WHERE type = 'dynamic' AND deleted_at IS NULL",
    )
    .fetch_all(pool)
    .await?;
    let devices: Vec<(String, String, Value)> =
        sqlx::query_as("SELECT id, org_id, attributes FROM devices")
            .fetch_all(pool)
            .await?;
    let mut expected = BTreeSet::new();
    for (group, group_org, site, filter) in &groups {
        let compiled =
            cohort::rules::compile(filter, catalogue).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (device, device_org, attributes) in &devices {
            // A group only ever holds devices of its org, and a site-scoped one only of its site.
            if device_org != group_org {
                continue;
            }
            if let Some(site) = site {
                if attributes.get("siteId").and_then(Value::as_str) != Some(site.as_str()) {
                    continue;
                }
            }
            let attrs = cohort::rules::Attributes::from_json(
                attributes
                    .as_object()
                    .expect("stored attributes are an object"),
                catalogue,
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if compiled.evaluate(&attrs, now) {
                expected.insert((*group, device.clone()));
            }
        }
    }
    // (group, device, pinned, added_by, the group is a live static group)
    let rows: Vec<(Uuid, String, bool, String, bool)> = sqlx::query_as(
        "SELECT m.group_id, m.device_id, m.is_pinned, m.added_by, \
           (g.type = 'static' AND g.deleted_at IS NULL) \
         FROM device_group_memberships m JOIN device_groups g ON g.id = m.group_id",
    )
    .fetch_all(pool)
    .await?;
    let all: BTreeSet<(Uuid, String)> = rows.iter().map(|(g, d, ..)| (*g, d.clone())).collect();
    let stored: BTreeSet<(Uuid, String)> = rows
        .iter()
        .filter(|(_, _, pinned, _, is_static)| !pinned && !is_static)
        .map(|(g, d, ..)| (*g, d.clone()))
        .collect();
    for (group, device, pinned, added_by, is_static) in &rows {
        anyhow::ensure!(
            !is_static || (!pinned && added_by == "manual"),
            "static membership of {device} in {group} is pinned={pinned}, added by {added_by}"
        );
    }
    // A pinned membership stays whatever the filter says.
    let pinned: BTreeSet<(Uuid, String)> = rows
        .iter()
        .filter(|(_, _, pinned, _, is_static)| *pinned && !is_static)
        .map(|(g, d, ..)| (*g, d.clone()))
        .collect();
    let missing: Vec<_> = expected
        .difference(&stored)
        .filter(|m| !pinned.contains(*m))
        .collect();
    let extra: Vec<_> = stored.difference(&expected).collect();
    anyhow::ensure!(
        missing.is_empty() && extra.is_empty(),
        "memberships differ from the oracle: missing {missing:?}, extra {extra:?}"
    );
    let log: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT group_id, device_id, action FROM group_membership_log ORDER BY id")
            .fetch_all(pool)
            .await?;
    let mut last: HashMap<(Uuid, String), String> = HashMap::new();
    for (group, device, action) in log {
        let previous = last.insert((group, device.clone()), action.clone());
        anyhow::ensure!(
            previous.as_deref() != Some(action.as_str()),
            "duplicate log row: {action} twice for {device} in {group}"
        );
    }
    for ((group, device), action) in &last {
        let member = all.contains(&(*group, device.clone()));
        anyhow::ensure!(
            (action == "added") == member,
            "log and membership disagree for {device} in {group}"
        );
    }
    for (group, device) in &all {
        anyhow::ensure!(
            last.get(&(*group, device.clone())).map(String::as_str) == Some("added"),
            "membership of {device} in {group} has no log row adding it"
        );
    }
    crate::counts::check_member_counts(pool).await?;
    check_targets(pool, &all).await
}

/// Every device's stored target equals the resolution from stored memberships and live releases.
async fn check_targets(
    pool: &PgPool,
    memberships: &BTreeSet<(Uuid, String)>,
) -> anyhow::Result<()> {
    use cohort::firmware::{resolve, DeviceFacts};
    let releases = cohort::store::firmware::live_releases(pool).await?;
    let mut by_group = HashMap::new();
    let mut defaults = HashMap::new();
    for live in releases {
        let release = live
            .resolution()
            .ok_or_else(|| anyhow::anyhow!("release {} has no version", live.id))?;
        match live.group_id {
            Some(g) => by_group.insert(g, release),
            None => defaults.insert(live.org_id, release),
        };
    }
    let mut groups_of: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for (group, device) in memberships {
        groups_of.entry(device.as_str()).or_default().push(*group);
    }
    type Row = (
        String,
        String,
        bool,
        Option<String>,
        Option<String>,
        String,
        Option<Uuid>,
    );
    let devices: Vec<Row> = sqlx::query_as(
        "SELECT id, org_id, is_development, firmware_lock, target_version, target_reason, target_release \
         FROM devices",
    )
    .fetch_all(pool)
    .await?;
    for (id, org, development, lock, version, reason, release) in devices {
        let facts = DeviceFacts {
            id: &id,
            development,
            lock: lock.as_deref(),
            current: release,
        };
        let groups = groups_of.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let target = resolve(
            &facts,
            groups.iter().filter_map(|g| by_group.get(g)),
            defaults.get(&org),
        );
        anyhow::ensure!(
            (target.version.as_deref(), target.reason.as_str(), target.release)
                == (version.as_deref(), reason.as_str(), release),
            "device {id} targets {version:?} ({reason}, release {release:?}), resolution gives {:?} \
             ({}, release {:?})",
            target.version,
            target.reason.as_str(),
            target.release
        );
    }
    Ok(())
}

pub fn metric(name_and_labels: &str) -> f64 {
    let rendered = cohort::metrics::install().render();
    rendered
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Attributes drawn from small pools, so devices move in and out of groups often.
pub fn random_attributes(rng: &mut Rng) -> Value {
    json!({
        "status": rng.pick(&["online", "offline", "maintenance"]),
        "osType": rng.pick(&["linux", "rtos", "android"]),
        "uptimeSeconds": rng.below(1000),
        "tags": if rng.chance(50) { json!(["prod"]) } else { json!(["dev", "eu"]) },
    })
}

pub async fn standard_groups(h: &Harness) -> anyhow::Result<Vec<Uuid>> {
    Ok(vec![
        h.group(
            "online-linux",
            json!({"operator": "AND", "conditions": [
            {"field": "status", "operator": "equals", "value": "online"},
            {"field": "osType", "operator": "equals", "value": "linux"}]}),
        )
        .await?,
        h.group(
            "long-uptime",
            json!({"operator": "AND", "conditions": [
            {"field": "uptimeSeconds", "operator": "greaterThan", "value": 500}]}),
        )
        .await?,
        h.group(
            "prod-or-rtos",
            json!({"operator": "OR", "conditions": [
            {"field": "tags", "operator": "contains", "value": "PROD"},
            {"field": "osType", "operator": "in", "value": ["rtos"]}]}),
        )
        .await?,
    ])
}

/// Sends `count` random events over `devices` devices; returns the last sequence per device.
pub async fn stream(
    h: &mut Harness,
    devices: usize,
    count: usize,
    rng: &mut Rng,
) -> anyhow::Result<Vec<(String, i64)>> {
    let mut last = std::collections::BTreeMap::new();
    for i in 0..count {
        let device = format!("dev-{}", i % devices);
        let seq = h.send(&device, random_attributes(rng)).await?;
        last.insert(device, seq);
    }
    Ok(last.into_iter().collect())
}

pub async fn all_applied(h: &Harness, last: &[(String, i64)]) -> anyhow::Result<()> {
    for (device, seq) in last {
        h.applied(device, *seq).await?;
    }
    Ok(())
}
