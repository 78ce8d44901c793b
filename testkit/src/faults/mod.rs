//! Fault injection for the fault suite (`tests/suite/faults`): a harness on a mock cluster of several brokers
//! with chosen partition leaders, a load generator that keeps producing through broker outages, the
//! group edits and firmware releases mixed into the stream, PostgreSQL outages (a real restart of a
//! private cluster the test creates, else cutting the test database off), an audit trail of
//! every partition-position write, and the checks every scenario ends with.

mod checks;
mod load;
mod outage;

pub use checks::*;
pub use load::*;
pub use outage::*;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cohort::config::Config;
use cohort::store::groups;
use cohort::worker::SystemClock;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::app::{Harness, ORG};
use crate::{eventually, random_suffix, within, TestDatabase, TestKafka};

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
    let h = Harness::with_worker(db, kafka, input, dead_letters, config, clock).await?;
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
