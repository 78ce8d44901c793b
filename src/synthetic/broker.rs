//! The Kafka-protocol broker the synthetic fleet's events stream through, and their producer.
//!
//! With no brokers given, `cohort bench` and `cohort demo` start librdkafka's in-process mock cluster (the
//! same one the integration tests use; see `testkit/src/kafka.rs`, and docs/architecture.md, "Where the
//! limits are", for what the mock does and does not do). The cluster is hosted by a client created with
//! `test.mock.num.brokers`, because only such a cluster exposes the raw handle needed to remove the
//! mock's 3-second initial rebalance delay. It runs on librdkafka threads inside the process, so its CPU
//! and memory (it keeps every message) count against the run, as a broker on the same 2-core machine
//! would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::fleet::{Fleet, Mix, Rng};
use crate::config::KafkaConfig;
use crate::worker::{Clock, ManualClock};

/// Where the fleet's events go.
pub enum Broker {
    /// Bootstrap servers the user gave.
    External(String),
    /// The in-process mock cluster, alive as long as this client.
    Mock(BaseProducer),
}

/// Starts librdkafka's mock cluster of `brokers` brokers with no initial rebalance delay, hosted by the
/// returned client and destroyed with it.
pub fn host_mock_cluster(brokers: i32, log_level: RDKafkaLogLevel) -> anyhow::Result<BaseProducer> {
    let host: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", brokers.to_string())
        .set_log_level(log_level)
        .create()
        .context("failed to create the client hosting the mock cluster")?;
    // SAFETY: the handle is valid while `host` lives; `rd_kafka_handle_mock_cluster` only reads it.
    let raw =
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(host.client().native_ptr()) };
    anyhow::ensure!(!raw.is_null(), "the client did not create a mock cluster");
    // SAFETY: `raw` is the live cluster owned by `host`.
    unsafe { rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(raw, 0) };
    Ok(host)
}

impl Broker {
    /// Connects to `brokers`, or starts a one-broker mock cluster when there are none.
    pub fn start(brokers: Option<&str>) -> anyhow::Result<Self> {
        if let Some(brokers) = brokers.map(str::trim).filter(|b| !b.is_empty()) {
            return Ok(Broker::External(brokers.to_string()));
        }
        let host = host_mock_cluster(1, RDKafkaLogLevel::Warning)?;
        Ok(Broker::Mock(host))
    }

    /// Whether this is the in-process mock cluster (no brokers were given, or only blanks).
    pub fn is_mock(&self) -> bool {
        matches!(self, Broker::Mock(_))
    }

    /// The bootstrap servers.
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::External(brokers) => brokers.clone(),
            Broker::Mock(host) => host
                .client()
                .mock_cluster()
                .map(|c| c.bootstrap_servers())
                .unwrap_or_default(),
        }
    }

    /// How the run names it (the benchmark's report, the demo's first lines).
    pub fn describe(&self) -> String {
        match self {
            Broker::External(brokers) => format!("Kafka at {brokers}"),
            Broker::Mock(_) => "librdkafka's in-process mock cluster (1 broker)".into(),
        }
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Broker::Mock(host) => host
                .client()
                .mock_cluster()
                .context("the mock cluster is gone")?
                .create_topic(name, partitions, 1)
                .with_context(|| format!("failed to create topic {name} on the mock cluster")),
            Broker::External(brokers) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .context("failed to create an admin client")?;
                // Without an explicit request timeout an unanswered admin call waits about 60 s.
                let options = AdminOptions::new()
                    .request_timeout(Some(Duration::from_secs(30)))
                    .operation_timeout(Some(Duration::from_secs(30)));
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
                for result in admin
                    .create_topics(&[topic], &options)
                    .await
                    .context("the create-topics request failed")?
                {
                    result.map_err(|(topic, code)| {
                        anyhow::anyhow!("failed to create topic {topic}: {code}")
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// Sets what a worker consuming from the mock cluster needs: the mock answers a fetch with no data only
/// after `fetch.wait.max.ms` (500 ms by default) and is not woken by new data the way a real broker's long
/// poll is; without this, every quiet moment adds up to half a second of latency that a real cluster would
/// not.
pub fn tune_for_mock(kafka: &mut KafkaConfig) {
    kafka
        .properties
        .insert("fetch.wait.max.ms".into(), "10".into());
}

/// Delivery outcomes, counted by the producer's delivery callback.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// The producer's context: counts deliveries.
pub struct Counting(Arc<Deliveries>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                if self.0.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(%error, "an event could not be delivered");
                }
            }
        }
    }
}

/// The fleet's producer: Kafka's default partitioner for keyed messages (`murmur2_random`), so each
/// event lands on the partition that owns its device.
pub fn producer(bootstrap: &str) -> anyhow::Result<(BaseProducer<Counting>, Arc<Deliveries>)> {
    let deliveries = Arc::new(Deliveries::default());
    let producer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create_with_context(Counting(deliveries.clone()))
        .context("failed to create the producer")?;
    Ok((producer, deliveries))
}

/// The generator's state carried from one phase to the next.
pub struct Stream {
    /// What the events change.
    pub mix: Mix,
    pub rng: Rng,
    /// The next event's sequence (sequences only grow, so every event is newer than its device's state).
    pub next_sequence: i64,
    /// The last sequence sent to each device (0: none), for the final check.
    pub last_sequence: Vec<i64>,
}

/// Waits a millisecond while serving delivery reports. Sleeps rather than `poll` with a timeout: that
/// spins on the clock in rust-rdkafka 0.39 (it burnt most of a core, taken from the worker under test).
fn idle(producer: &BaseProducer<Counting>) {
    producer.poll(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(1));
}

/// How far production may run ahead of the worker's commits.
///
/// librdkafka's mock cluster keeps at most 100,000 messages or 5 MB per partition (`rdkafka_mock.c`,
/// hard-coded) and deletes older segments, so a backlog larger than that would lose events before the
/// worker reads them (the worker then stops at the gap rather than skip it). A few batches of backlog per
/// partition keep the worker saturated all the same.
pub struct Ahead {
    pub status: Arc<crate::worker::Status>,
    /// `records_committed` when the phase started.
    pub base: u64,
    /// Events produced but not yet committed, at most.
    pub max: u64,
}

/// Produces `count` events as fast as the producer takes them, or paced at `rate` events per second,
/// never more than `ahead.max` beyond what the worker has committed, and waits for every delivery; stops
/// early once `stop` is set (the stream's `next_sequence` then says how many were produced). Blocks the
/// calling thread. Returns the time spent producing.
#[allow(clippy::too_many_arguments)]
pub fn produce(
    producer: &BaseProducer<Counting>,
    topic: &str,
    fleet: &Fleet,
    stream: &mut Stream,
    clock: &ManualClock,
    count: usize,
    rate: Option<f64>,
    ahead: Option<&Ahead>,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for n in 0..count {
        if stop.is_some_and(|stop| stop.load(Ordering::SeqCst)) {
            break;
        }
        if let Some(ahead) = ahead {
            loop {
                let committed = ahead
                    .status
                    .records_committed
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .saturating_sub(ahead.base);
                if (n as u64).saturating_sub(committed) < ahead.max {
                    break;
                }
                idle(producer);
            }
        }
        if let Some(rate) = rate {
            // Keep to the rate: never ahead of it, catching up in small bursts when behind.
            while n as f64 > rate * started.elapsed().as_secs_f64() {
                idle(producer);
            }
        }
        let sequence = stream.next_sequence;
        stream.next_sequence += 1;
        let event = fleet.event(stream.mix, &mut stream.rng, sequence, clock.now());
        stream.last_sequence[event.device] = sequence;
        let mut record = BaseRecord::to(topic)
            .key(event.key.as_slice())
            .payload(event.payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    idle(producer);
                }
                Err((e, _)) => return Err(e).context("failed to produce an event"),
            }
        }
        if n % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .context("events were not delivered within 5 minutes")?;
    Ok(started.elapsed())
}
