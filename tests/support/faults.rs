//! Fault injection for the fault suite (`tests/faults`): a harness on a mock cluster of several brokers
//! with chosen partition leaders, a load generator that keeps producing through broker outages, the
//! group edits and firmware releases mixed into the stream, PostgreSQL outages (a real restart of a
//! private cluster the test creates, else cutting the test database off), an audit trail of
//! every partition-position write, and the checks every scenario ends with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cohort::config::Config;
use cohort::store::firmware::{self, ReleaseTarget};
use cohort::store::groups;
use cohort::worker::SystemClock;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::app::{random_attributes, spawn_worker, standard_groups, Harness, ORG};
use super::cluster::{self, PrivateCluster, Unavailable};
use super::{blocking, db, eventually, random_suffix, within, TestDatabase, TestKafka};

/// The deadline for a condition that a fault delays (everything applied, everything published): generous,
/// since the machine is loaded and some faults last until a session times out.
pub const PATIENCE: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------------------
// The harness on a mock cluster
// ------------------------------------------------------------------------------------------------

/// Where the partition leaders sit on the mock cluster (brokers are numbered from 1).
#[derive(Clone, Debug)]
pub struct Layout {
    /// Brokers in the cluster.
    pub brokers: i32,
    /// The leader of each input partition; the input topic has this many partitions.
    pub input: Vec<i32>,
    /// The leader of every partition of the output (rollout-target) and dead-letter topics.
    pub outputs: i32,
    /// The broker the worker group's coordinator is pinned to.
    pub coordinator: i32,
}

/// Starts a harness (one worker, with the embedded relay) on a fresh mock cluster laid out as `layout`,
/// with the configuration adjusted by `tweak`. Short retry backoffs and delivery timeouts, so faults
/// shorter than a few seconds are retried through rather than waited out. The position audit
/// ([`install_position_audit`]) is installed before the worker starts.
pub async fn start_on_mock(
    layout: &Layout,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<Harness> {
    start_on_mock_in(TestDatabase::new().await?, layout, tweak).await
}

/// [`start_on_mock`] on the database `db` (such as one on a private cluster).
pub async fn start_on_mock_in(
    db: TestDatabase,
    layout: &Layout,
    tweak: impl FnOnce(&mut Config),
) -> anyhow::Result<Harness> {
    logs_if_asked();
    let kafka = TestKafka::mock(layout.brokers)?;
    let input = kafka.unique_topic("device-attribute-changes");
    let dead_letters = format!("{input}.dead-letter");
    let output = format!("{input}.rollout-targets");
    let partitions = layout.input.len() as i32;
    kafka.create_topic(&input, partitions).await?;
    kafka.create_topic(&dead_letters, 1).await?;
    kafka.create_topic(&output, 2).await?;
    {
        let cluster = kafka.mock_cluster().context("a mock cluster")?;
        for (partition, leader) in layout.input.iter().enumerate() {
            cluster.partition_leader(&input, partition as i32, Some(*leader))?;
        }
        cluster.partition_leader(&dead_letters, 0, Some(layout.outputs))?;
        for partition in 0..2 {
            cluster.partition_leader(&output, partition, Some(layout.outputs))?;
        }
    }
    cohort::store::migrate(db.pool()).await?;
    groups::create_org(db.pool(), ORG, "Acme").await?;
    install_position_audit(db.pool()).await?;
    let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
    config.database.url = db.url().to_string();
    config.kafka.brokers = kafka.bootstrap_servers();
    config.kafka.input_topic = input.clone();
    config.kafka.dead_letter_topic = dead_letters.clone();
    config.kafka.output_topic = output;
    config.kafka.group_id = format!("cohort-{}", random_suffix());
    for (key, value) in [
        ("session.timeout.ms", "3000"),
        ("heartbeat.interval.ms", "500"),
        // The relay's deliveries to a broker that is down fail after 5 s and are retried by a later round
        // (the consumer ignores this producer property).
        ("message.timeout.ms", "5000"),
    ] {
        config.kafka.properties.insert(key.into(), value.into());
    }
    config.worker.batch_max_wait_ms = 5;
    config.worker.retry_initial_backoff_ms = 50;
    config.worker.retry_max_backoff_ms = 1000;
    config.relay.poll_interval_ms = 50;
    config.http.listen = "127.0.0.1:0".parse()?;
    tweak(&mut config);
    kafka
        .mock_cluster()
        .context("a mock cluster")?
        .coordinator(
            rdkafka::mocking::MockCoordinator::Group(config.kafka.group_id.clone()),
            layout.coordinator,
        )?;
    let clock: Arc<dyn cohort::worker::Clock> = Arc::new(SystemClock);
    let worker = spawn_worker(&config, clock.clone()).await?;
    let status = worker.status.clone();
    let h = Harness {
        db,
        kafka,
        input,
        dead_letters,
        config,
        clock,
        workers: vec![worker],
        status,
        catalogue: Default::default(),
        sequence: 0,
    };
    h.all_partitions_owned(partitions as usize).await?;
    Ok(h)
}

/// The raw mock cluster handle of the harness's broker, for the `rd_kafka_mock_*` calls `MockCluster`
/// does not wrap.
pub fn raw_mock(h: &Harness) -> anyhow::Result<*mut rdkafka::bindings::rd_kafka_mock_cluster_t> {
    let mock = h
        .kafka
        .mock_kafka()
        .context("the harness runs on a mock cluster")?;
    Ok(mock.raw())
}

/// Pushes `errors` onto broker `broker`'s error stack for `api`: its next requests of that kind fail
/// with them, one each, in order. Returns how many were pushed.
pub fn push_broker_errors(
    h: &Harness,
    broker: i32,
    api: RDKafkaApiKey,
    errors: &[RDKafkaRespErr],
) -> anyhow::Result<usize> {
    let raw = raw_mock(h)?;
    for error in errors {
        // SAFETY: `raw` is the live cluster owned by the harness's broker; one (error, rtt) pair is
        // passed for a count of 1, as the variadic signature expects (both promoted to C ints).
        let result = unsafe {
            rdkafka::bindings::rd_kafka_mock_broker_push_request_error_rtts(
                raw,
                broker,
                i16::from(api),
                1,
                *error as i32,
                0i32,
            )
        };
        anyhow::ensure!(
            result == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            "pushing {error:?} for {api:?} on broker {broker} failed: {result:?}"
        );
    }
    Ok(errors.len())
}

/// How many pushed errors for `api` broker `broker` has not served yet.
pub fn pending_broker_errors(
    h: &Harness,
    broker: i32,
    api: RDKafkaApiKey,
) -> anyhow::Result<usize> {
    let raw = raw_mock(h)?;
    let mut count = 0usize;
    // SAFETY: as in `push_broker_errors`; `count` outlives the call.
    let result = unsafe {
        rdkafka::bindings::rd_kafka_mock_broker_error_stack_cnt(
            raw,
            broker,
            i16::from(api),
            &mut count,
        )
    };
    anyhow::ensure!(
        result == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
        "reading broker {broker}'s error stack failed: {result:?}"
    );
    Ok(count)
}

/// Waits until broker `broker` has served every error pushed for `api`.
pub async fn errors_served(h: &Harness, broker: i32, api: RDKafkaApiKey) -> anyhow::Result<()> {
    eventually(
        PATIENCE,
        &format!("broker {broker} serves every injected {api:?} error"),
        || async move { Ok((pending_broker_errors(h, broker, api)? == 0).then_some(())) },
    )
    .await
}

/// Waits until the running workers together own `partitions` partitions, with [`PATIENCE`].
pub async fn partitions_owned(h: &Harness, partitions: usize) -> anyhow::Result<()> {
    let statuses: Vec<_> = h.workers.iter().map(|w| w.status.clone()).collect();
    eventually(PATIENCE, "the running workers own every partition", || {
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

/// Stops worker `index` gracefully (it finishes its batches and leaves the group).
pub async fn stop_worker(h: &mut Harness, index: usize) -> anyhow::Result<()> {
    let mut worker = h.workers.remove(index);
    if let Some(stop) = worker.stop.take() {
        let _ = stop.send(());
    }
    within(PATIENCE, "a worker stops", async {
        worker.task.await?.context("the worker failed")
    })
    .await
}

/// Kills worker `index`: its task is aborted, an in-flight transaction abandoned.
pub fn kill_worker(h: &mut Harness, index: usize) {
    h.workers.remove(index).task.abort();
}

// ------------------------------------------------------------------------------------------------
// Load: events produced through faults
// ------------------------------------------------------------------------------------------------

/// Produces attribute-change events (and the odd poison message) over a fixed set of devices, all of a
/// burst in flight at once, with a producer patient enough to wait out a broker outage. Remembers the
/// last sequence of each device and the last offset of each partition.
pub struct Load {
    producer: FutureProducer,
    topic: String,
    rng: u64,
    devices: usize,
    /// The last sequence used (one counter over all devices, so each device's sequences ascend).
    sequence: i64,
    /// The last sequence produced per device.
    pub last: BTreeMap<String, i64>,
    /// The highest offset delivered per input partition.
    pub ends: BTreeMap<i32, i64>,
    /// Events produced.
    pub events: usize,
    /// Poison messages produced (each must become a dead letter).
    pub poison: usize,
}

impl Load {
    pub fn new(h: &Harness, devices: usize, seed: u64) -> anyhow::Result<Self> {
        let producer = h
            .kafka
            .producer_config()
            .set("message.timeout.ms", "90000")
            .set("enable.idempotence", "true")
            .create()
            .context("failed to create the load producer")?;
        Ok(Self {
            producer,
            topic: h.input.clone(),
            rng: seed | 1,
            devices,
            sequence: 0,
            last: BTreeMap::new(),
            ends: BTreeMap::new(),
            events: 0,
            poison: 0,
        })
    }

    /// Produces `count` events with random attributes, round-robin over the devices, and waits for every
    /// delivery (through broker outages, up to the producer's 90 s).
    pub async fn burst(&mut self, count: usize) -> anyhow::Result<()> {
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let device = format!("dev-{}", (self.events + i) % self.devices);
            self.sequence += 1;
            let event = json!({
                "eventId": format!("{device}-{}-{}", self.sequence, random_suffix()),
                "orgId": ORG,
                "deviceId": device,
                "sequence": self.sequence,
                "attributes": random_attributes(&mut self.rng),
            });
            self.last.insert(device.clone(), self.sequence);
            messages.push((device, event.to_string()));
        }
        self.events += count;
        self.send(messages).await
    }

    /// Produces one malformed message, which the worker must dead-letter.
    pub async fn poison(&mut self) -> anyhow::Result<()> {
        self.poison += 1;
        let key = format!("dev-{}", self.poison % self.devices);
        self.send(vec![(key, format!("{{ poison {}", self.poison))])
            .await
    }

    async fn send(&mut self, messages: Vec<(String, String)>) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(messages.len());
        for (key, payload) in &messages {
            let record = FutureRecord::to(&self.topic).key(key).payload(payload);
            // `send` waits for room in the queue (never full at these volumes) and then for delivery.
            deliveries.push(self.producer.send(
                record,
                rdkafka::util::Timeout::After(Duration::from_secs(30)),
            ));
        }
        let results = within(
            Duration::from_secs(120),
            "deliver a burst of events",
            async { Ok(futures_util::future::join_all(deliveries).await) },
        )
        .await?;
        for result in results {
            let delivery = result
                .map_err(|(e, _)| e)
                .context("an event was not delivered")?;
            let end = self.ends.entry(delivery.partition).or_insert(-1);
            *end = (*end).max(delivery.offset);
        }
        Ok(())
    }
}

/// Waits until every input record produced so far is behind its partition's stored position (applied,
/// skipped or dead-lettered: processed), then until every device's last event is applied and every
/// control-log entry is applied.
pub async fn all_processed(h: &Harness, load: &Load) -> anyhow::Result<()> {
    let pool = h.pool().clone();
    let topic = h.input.clone();
    let ends = load.ends.clone();
    eventually(PATIENCE, "every input record is processed", || {
        let (pool, topic, ends) = (pool.clone(), topic.clone(), ends.clone());
        async move {
            let positions: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM partition_positions WHERE topic = $1",
            )
            .bind(&topic)
            .fetch_all(&pool)
            .await?;
            let positions: HashMap<i32, i64> = positions.into_iter().collect();
            Ok(ends
                .iter()
                .all(|(p, end)| positions.get(p).is_some_and(|next| next > end))
                .then_some(()))
        }
    })
    .await?;
    let pool = h.pool().clone();
    let last: Vec<(String, i64)> = load.last.iter().map(|(d, s)| (d.clone(), *s)).collect();
    eventually(PATIENCE, "every device's last event is applied", || {
        let (pool, last) = (pool.clone(), last.clone());
        async move {
            let stored: Vec<(String, i64)> = sqlx::query_as("SELECT id, sequence FROM devices")
                .fetch_all(&pool)
                .await?;
            let stored: HashMap<String, i64> = stored.into_iter().collect();
            Ok(last
                .iter()
                .all(|(d, s)| stored.get(d).is_some_and(|x| x >= s))
                .then_some(()))
        }
    })
    .await?;
    let pool = h.pool().clone();
    eventually(PATIENCE, "every control entry is applied", || {
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

// ------------------------------------------------------------------------------------------------
// Group edits and firmware releases
// ------------------------------------------------------------------------------------------------

/// The control-plane changes mixed into a stream: filter edits, a new group, a deletion, a pin and an
/// unpin, and firmware releases to groups (so devices moving between groups change their targets and
/// rollout-target events flow). [`Edits::next`] applies the next one; the first is a release.
pub struct Edits {
    groups: Vec<Uuid>,
    extra: Option<Uuid>,
    step: usize,
    /// Edits applied so far.
    pub applied: usize,
}

impl Edits {
    /// Creates the standard groups (see [`standard_groups`]).
    pub async fn new(h: &Harness) -> anyhow::Result<Self> {
        Ok(Self {
            groups: standard_groups(h).await?,
            extra: None,
            step: 0,
            applied: 0,
        })
    }

    /// Applies the next `n` edits.
    pub async fn several(&mut self, h: &Harness, n: usize) -> anyhow::Result<()> {
        for _ in 0..n {
            self.next(h).await?;
        }
        Ok(())
    }

    /// Applies the next edit (cycling through releases once the structural edits are done).
    pub async fn next(&mut self, h: &Harness) -> anyhow::Result<()> {
        let pool = h.pool();
        let step = self.step;
        self.step += 1;
        match step {
            0 => release(pool, self.groups[2], "2").await?,
            1 => {
                groups::set_pin(pool, self.groups[1], "dev-3", true, "faults").await?;
            }
            2 => {
                groups::update_filter(
                    pool,
                    &h.catalogue,
                    self.groups[0],
                    &json!({"operator": "AND", "conditions": [
                        {"field": "status", "operator": "equals", "value": "online"},
                        {"field": "osType", "operator": "in", "value": ["linux", "android"]}]}),
                )
                .await?;
            }
            // (The oracle does not model a pin that outlives the stream: unpinned right away.)
            3 => {
                groups::set_pin(pool, self.groups[1], "dev-3", false, "faults").await?;
            }
            4 => {
                let group = h
                    .group(
                        "maintenance",
                        json!({"operator": "AND", "conditions": [
                            {"field": "status", "operator": "equals", "value": "maintenance"}]}),
                    )
                    .await?;
                self.extra = Some(group);
                release(pool, group, "3").await?;
            }
            5 => groups::delete_group(pool, self.groups[0]).await?,
            6 => release(pool, self.groups[1], "4").await?,
            7 => {
                let group = self.extra.context("the maintenance group exists")?;
                groups::update_filter(
                    pool,
                    &h.catalogue,
                    group,
                    &json!({"operator": "OR", "conditions": [
                        {"field": "status", "operator": "equals", "value": "maintenance"},
                        {"field": "uptimeSeconds", "operator": "lessThan", "value": 100}]}),
                )
                .await?;
            }
            n => {
                // Alternate two versions on the prod-or-rtos group: each moves its members' targets.
                let version = if n % 2 == 0 { "5" } else { "6" };
                release(pool, self.groups[2], version).await?;
            }
        }
        self.applied += 1;
        Ok(())
    }
}

async fn release(pool: &PgPool, group: Uuid, version: &str) -> anyhow::Result<()> {
    firmware::release(pool, ORG, ReleaseTarget::Group(group), version, "faults")
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("release {version} to {group}: {e}"))
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL outages
// ------------------------------------------------------------------------------------------------

/// How a scenario takes PostgreSQL away from the worker. Never by stopping a server the test did not
/// start: the machine's server and a `DATABASE_URL` server are shared with other tests and other users.
pub enum Outage {
    /// A private cluster created for the scenario ([`PrivateCluster`]): its test database lives there,
    /// and the server is stopped, started and restarted for real. Stopped and removed when dropped.
    Private(PrivateCluster),
    /// No private cluster (`DATABASE_URL` names the server to use, or no PostgreSQL server binaries
    /// here): the test database on the shared server is cut off instead — new connections refused and
    /// its sessions terminated.
    CutOff { why: String },
}

impl Outage {
    /// A private cluster when one can be made and `DATABASE_URL` is not set; see [`Outage`].
    pub async fn prepare() -> anyhow::Result<Self> {
        if std::env::var("DATABASE_URL").is_ok_and(|url| !url.is_empty()) {
            return Ok(Outage::CutOff {
                why: "DATABASE_URL names the server to use".into(),
            });
        }
        Ok(match PrivateCluster::create().await? {
            Ok(cluster) => Outage::Private(cluster),
            Err(Unavailable(why)) => Outage::CutOff { why },
        })
    }

    /// A fresh test database: on the private cluster, or on the shared server.
    pub async fn database(&self) -> anyhow::Result<TestDatabase> {
        match self {
            Outage::Private(cluster) => TestDatabase::new_on(&cluster.admin_url()).await,
            Outage::CutOff { .. } => TestDatabase::new().await,
        }
    }
}

/// The start time of the server the binary's other tests use (`pg_postmaster_start_time()`): the same
/// before and after a scenario when the scenario restarted no server but its own.
pub async fn shared_server_start_time() -> anyhow::Result<String> {
    cluster::server_start_time(&db::server().await.admin_url).await
}

/// Cuts this test's database off: no new connections, and every session of it terminated.
pub async fn cut_off(h: &Harness) -> anyhow::Result<()> {
    let mut admin = db::connect(h.db.admin_url()).await?;
    let name = h.db.name();
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Lets connections to this test's database in again.
pub async fn reconnect(h: &Harness) -> anyhow::Result<()> {
    let mut admin = db::connect(h.db.admin_url()).await?;
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
        h.db.name()
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// The position audit
// ------------------------------------------------------------------------------------------------

/// Records every update of `partition_positions` (in the updating transaction, so only committed ones
/// stay) in `fault_position_audit`, in the order they took the row's lock.
pub async fn install_position_audit(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE fault_position_audit (
             id bigserial PRIMARY KEY, topic text NOT NULL, partition integer NOT NULL,
             old_epoch bigint NOT NULL, new_epoch bigint NOT NULL,
             old_next bigint NOT NULL, new_next bigint NOT NULL,
             old_control bigint NOT NULL, new_control bigint NOT NULL);
         CREATE FUNCTION fault_audit_position() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO fault_position_audit
                 (topic, partition, old_epoch, new_epoch, old_next, new_next, old_control, new_control)
             VALUES (NEW.topic, NEW.partition, OLD.epoch, NEW.epoch, OLD.next_offset, NEW.next_offset,
                     OLD.control_position, NEW.control_position);
             RETURN NEW;
         END $$;
         CREATE TRIGGER fault_audit_position AFTER UPDATE ON partition_positions
             FOR EACH ROW EXECUTE FUNCTION fault_audit_position();",
    )
    .execute(pool)
    .await
    .context("failed to install the position audit")?;
    Ok(())
}

/// What the position audit saw.
#[derive(Debug, Default)]
pub struct PositionAudit {
    /// Claims after a partition's first (an epoch bump: a worker took the partition again; the first claim
    /// inserts the row, which the update trigger does not see).
    pub claims: usize,
    /// Batch commits (a position write).
    pub writes: usize,
    /// The highest epoch of any partition.
    pub max_epoch: i64,
}

/// Checks the audit trail: per partition, in lock order, a claim bumps the epoch by one and moves no
/// position; a batch writes under the current epoch only — never under a stale one, which would show
/// as a write after a later claim with the older epoch — and never moves a position backwards.
pub async fn check_positions(h: &Harness) -> anyhow::Result<PositionAudit> {
    type Row = (String, i32, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT topic, partition, old_epoch, new_epoch, old_next, new_next, old_control, new_control \
         FROM fault_position_audit ORDER BY id",
    )
    .fetch_all(h.pool())
    .await?;
    let mut audit = PositionAudit::default();
    let mut epochs: HashMap<(String, i32), i64> = HashMap::new();
    for (topic, partition, old_epoch, new_epoch, old_next, new_next, old_ctl, new_ctl) in rows {
        let seen = epochs.entry((topic, partition)).or_insert(old_epoch);
        anyhow::ensure!(
            old_epoch == *seen,
            "partition {partition}: an update found epoch {old_epoch} after epoch {seen} had been set"
        );
        if new_epoch != old_epoch {
            anyhow::ensure!(
                new_epoch == old_epoch + 1 && new_next == old_next && new_ctl == old_ctl,
                "partition {partition}: a claim went {old_epoch}->{new_epoch} and moved the position \
                 {old_next}->{new_next}, {old_ctl}->{new_ctl}"
            );
            audit.claims += 1;
        } else {
            anyhow::ensure!(
                new_next >= old_next && new_ctl >= old_ctl,
                "partition {partition} epoch {old_epoch}: a batch moved the position backwards: \
                 offset {old_next}->{new_next}, control {old_ctl}->{new_ctl}"
            );
            audit.writes += 1;
        }
        *seen = new_epoch;
        audit.max_epoch = audit.max_epoch.max(new_epoch);
    }
    // The audit ends where the table is.
    let current: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, epoch FROM partition_positions WHERE topic = $1")
            .bind(&h.input)
            .fetch_all(h.pool())
            .await?;
    for (partition, epoch) in current {
        if let Some(seen) = epochs.get(&(h.input.clone(), partition)) {
            anyhow::ensure!(
                *seen == epoch,
                "partition {partition}: the audit ends at epoch {seen}, the table is at {epoch}"
            );
        }
    }
    Ok(audit)
}

// ------------------------------------------------------------------------------------------------
// The checks every scenario ends with
// ------------------------------------------------------------------------------------------------

/// What a scenario's checks counted.
#[derive(Debug, Default)]
pub struct Figures {
    pub events: usize,
    pub poison: usize,
    pub rollouts: usize,
    pub rollout_copies: usize,
    pub dead_letters: usize,
    pub log_rows: i64,
    /// Relay deliveries to this harness's output and dead-letter topics that failed (and were retried).
    pub relay_failures: u64,
    pub positions: PositionAudit,
}

/// Waits for everything produced to be processed, then checks: the oracle (memberships, log alternation,
/// firmware targets), no input record applied twice, the rollout-target and dead-letter topics against
/// the outbox, and the position audit.
pub async fn settle_and_check(h: &Harness, load: &Load) -> anyhow::Result<Figures> {
    all_processed(h, load).await?;
    h.check_oracle(chrono::Utc::now().timestamp_millis())
        .await?;
    check_applied_once(h).await?;
    let mut figures = check_published(h).await?;
    anyhow::ensure!(
        figures.dead_letters >= load.poison,
        "{} poison messages, {} dead letters",
        load.poison,
        figures.dead_letters
    );
    figures.events = load.events;
    figures.poison = load.poison;
    figures.log_rows = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(h.pool())
        .await?;
    figures.positions = check_positions(h).await?;
    figures.relay_failures = [&h.config.kafka.output_topic, &h.dead_letters]
        .iter()
        .map(|t| {
            super::app::metric(&format!(
                "cohort_relay_publish_failures_total{{topic=\"{t}\"}}"
            ))
        })
        .sum::<f64>() as u64;
    Ok(figures)
}

/// No input record changed a membership twice: log rows caused by events are unique per (group, device,
/// partition, offset).
pub async fn check_applied_once(h: &Harness) -> anyhow::Result<()> {
    let twice: Vec<(Uuid, String, Value, i64)> = sqlx::query_as(
        "SELECT group_id, device_id, cause, count(*) FROM group_membership_log \
         WHERE cause->>'type' = 'event' GROUP BY group_id, device_id, cause HAVING count(*) > 1",
    )
    .fetch_all(h.pool())
    .await?;
    anyhow::ensure!(
        twice.is_empty(),
        "input records applied more than once: {twice:?}"
    );
    Ok(())
}

/// Waits until the relay has published every outbox row, then reads the rollout-target and dead-letter
/// topics and checks, after de-duplication by `cohort-outbox-id`: exactly the outbox's rows are there,
/// with their keys and payloads; each device's rollout events are numbered 1, 2, 3… in partition order
/// with no gap, and the last one is the target PostgreSQL stores for the device.
pub async fn check_published(h: &Harness) -> anyhow::Result<Figures> {
    let pool = h.pool().clone();
    eventually(PATIENCE, "the relay publishes every outbox row", || {
        let pool = pool.clone();
        async move {
            let unpublished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&pool)
                    .await?;
            Ok((unpublished == 0).then_some(()))
        }
    })
    .await?;
    type Row = (i64, String, Option<Vec<u8>>, Vec<u8>);
    let rows: Vec<Row> =
        sqlx::query_as("SELECT id, topic, message_key, payload FROM outbox ORDER BY id")
            .fetch_all(h.pool())
            .await?;
    let mut figures = Figures::default();
    let output = h.config.kafka.output_topic.clone();
    for topic in [output.clone(), h.dead_letters.clone()] {
        let expected: BTreeMap<i64, (Option<Vec<u8>>, Vec<u8>)> = rows
            .iter()
            .filter(|(_, t, ..)| *t == topic)
            .map(|(id, _, key, payload)| (*id, (key.clone(), payload.clone())))
            .collect();
        let wanted: BTreeSet<i64> = expected.keys().copied().collect();
        let mut messages = h
            .kafka
            .consume_until(&topic, PATIENCE, move |messages| {
                let seen: BTreeSet<i64> = messages.iter().filter_map(outbox_id).collect();
                wanted.is_subset(&seen)
            })
            .await
            .with_context(|| format!("reading {topic}"))?;
        messages.sort_by_key(|m| (m.partition, m.offset));
        let mut first = BTreeSet::new();
        let mut by_device: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for message in &messages {
            let id = outbox_id(message).context("a relayed message without its outbox id")?;
            let (key, payload) = expected.get(&id).with_context(|| {
                format!("{topic}: message with outbox id {id} is in no outbox row")
            })?;
            anyhow::ensure!(
                message.key.as_ref() == key.as_ref() && message.payload.as_ref() == Some(payload),
                "{topic}: outbox row {id} was published with another key or payload"
            );
            if !first.insert(id) || topic != output {
                continue;
            }
            let event: Value = serde_json::from_slice(payload)?;
            let device = event["subject"].as_str().unwrap_or_default().to_string();
            by_device.entry(device).or_default().push(event);
        }
        anyhow::ensure!(first.len() == expected.len(), "{topic}: rows missing");
        if topic == output {
            figures.rollouts = first.len();
            figures.rollout_copies = messages.len();
            check_rollouts(h, &by_device).await?;
        } else {
            figures.dead_letters = first.len();
        }
    }
    Ok(figures)
}

fn outbox_id(message: &super::ConsumedMessage) -> Option<i64> {
    std::str::from_utf8(message.header(cohort::relay::HEADER_OUTBOX_ID)?)
        .ok()?
        .parse()
        .ok()
}

/// Each device's de-duplicated rollout events are numbered 1..=n in order, and the last names the stored
/// target (and n is the stored target sequence).
async fn check_rollouts(
    h: &Harness,
    by_device: &BTreeMap<String, Vec<Value>>,
) -> anyhow::Result<()> {
    let stored: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT id, target_version, target_sequence FROM devices")
            .fetch_all(h.pool())
            .await?;
    for (device, version, sequence) in stored {
        let events = by_device.get(&device).map(Vec::as_slice).unwrap_or(&[]);
        let numbers: Vec<i64> = events
            .iter()
            .map(|e| e["data"]["sequence"].as_i64().unwrap_or(-1))
            .collect();
        let expected: Vec<i64> = (1..=sequence).collect();
        anyhow::ensure!(
            numbers == expected,
            "device {device}: rollout events numbered {numbers:?} on the topic, {sequence} stored"
        );
        if let Some(last) = events.last() {
            let published = last["data"]["target"]["version"].as_str();
            anyhow::ensure!(
                published == version.as_deref(),
                "device {device}: the last rollout event targets {published:?}, PostgreSQL {version:?}"
            );
        } else {
            anyhow::ensure!(
                version.is_none(),
                "device {device} targets {version:?} with no rollout event"
            );
        }
    }
    let known: BTreeSet<&String> = by_device.keys().collect();
    let devices: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM devices")
        .fetch_all(h.pool())
        .await?
        .into_iter()
        .collect();
    for device in known {
        anyhow::ensure!(
            devices.contains(device),
            "rollout events for {device}, which is not stored"
        );
    }
    Ok(())
}

/// Kafka's committed offsets for the worker's group (advisory, for lag dashboards) equal the positions
/// PostgreSQL holds, eventually. Read with an OffsetFetch that does not join the group.
pub async fn advisory_offsets_match(h: &Harness) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let config = h.kafka.consumer_config(&h.config.kafka.group_id);
    let topic = h.input.clone();
    let pool = h.pool().clone();
    let positions: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM partition_positions WHERE topic = $1 ORDER BY partition",
    )
    .bind(&topic)
    .fetch_all(&pool)
    .await?;
    let wanted: BTreeMap<i32, i64> = positions.into_iter().collect();
    let last = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let seen = last.clone();
    let result = eventually(
        Duration::from_secs(30),
        "kafka's committed offsets reach the stored positions",
        || {
            let (config, topic, wanted, seen) =
                (config.clone(), topic.clone(), wanted.clone(), seen.clone());
            async move {
                let partitions: Vec<i32> = wanted.keys().copied().collect();
                let committed = blocking(
                    Duration::from_secs(20),
                    "fetch committed offsets",
                    move || {
                        let consumer: BaseConsumer = config.create()?;
                        let mut tpl = TopicPartitionList::new();
                        for partition in &partitions {
                            tpl.add_partition(&topic, *partition);
                        }
                        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
                        Ok(committed
                            .elements()
                            .iter()
                            .map(|e| {
                                let offset = match e.offset() {
                                    Offset::Offset(o) => o,
                                    _ => -1,
                                };
                                (e.partition(), offset)
                            })
                            .collect::<BTreeMap<i32, i64>>())
                    },
                )
                .await?;
                let done = committed == wanted;
                if let Ok(mut s) = seen.lock() {
                    *s = committed;
                }
                Ok(done.then_some(()))
            }
        },
    )
    .await;
    result.with_context(|| {
        format!(
            "stored positions {wanted:?}, last committed in kafka {:?}",
            last.lock().map(|l| l.clone()).unwrap_or_default()
        )
    })
}

/// Sends cohort's logs to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=cohort=info`), to see what the
/// worker and the relay did through a fault.
pub fn logs_if_asked() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// The machine's 1-minute load average, for the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
