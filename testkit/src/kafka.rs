//! A Kafka-protocol broker per test, and helpers to produce and read messages.
//!
//! # librdkafka's mock cluster: what we learned (rdkafka 0.39 / librdkafka 2.12.1)
//! - The first join of a consumer group is delayed 3 s by the mock's "initial rebalance delay". It can
//!   only be set through the raw mock handle (`rd_kafka_mock_group_initial_rebalance_delay_ms`), and
//!   only a cluster created by a client configured with `test.mock.num.brokers` exposes that handle
//!   (`rd_kafka_handle_mock_cluster(client.native_ptr())`). `MockCluster::new(n)` keeps its raw pointer
//!   and its client private, so its delay cannot be changed. We therefore host each mock cluster in a
//!   small `BaseProducer` created with `test.mock.num.brokers`; the cluster lives exactly as long as
//!   that client, and [`TestKafka::mock_cluster`] borrows a `MockCluster` from it for fault injection.
//!   Measured on the smoke suite's two-member resume test: 5.4 s with the delay, 2.3 s without.
//! - Each rebalance (here: a second member joining after the first left) waits about
//!   `session.timeout.ms` minus 1 s: the same test took 2.3 s with a 3 s session, 1.3 s with 2 s and
//!   0.5 s with 1.2 s. Mock consumers use 3 s, a margin against spurious session expiry on a loaded
//!   2-core machine; a suite that rebalances a lot can lower it. Real brokers refuse sessions shorter
//!   than `group.min.session.timeout.ms` (6 s by default), so consumers of a real cluster use 6 s.
//! - `CreateTopics` through the admin API is not supported by the mock (it times out): topics are
//!   created with `MockCluster::create_topic`. A metadata request for an unknown topic auto-creates it
//!   with 4 partitions, so create a topic before producing to or reading from it.
//! - A `BorrowedMessage` still alive when its consumer is dropped makes the drop hang forever: the
//!   readers here convert every message to a [`ConsumedMessage`] immediately and drop the consumer
//!   only after.
//! - Blocking librdkafka calls (metadata, watermarks, commits, consumer close) run on the blocking pool
//!   under a timeout ([`crate::blocking`]); with a coordinator down a synchronous commit was seen to
//!   block for minutes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseProducer, DefaultProducerContext, FutureProducer, FutureRecord, Producer,
};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::OnceCell;

use crate::{blocking, containers, docker, random_suffix, within, OPERATION_TIMEOUT};

/// How long a produced message may wait for delivery before it fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest single `poll` inside a reader, so the deadline is checked often.
const POLL_SLICE: Duration = Duration::from_millis(100);

/// Where the broker comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaSource {
    /// `KAFKA_BROKERS`: a real cluster.
    Environment,
    /// The shared testcontainers Kafka.
    Container,
    /// librdkafka's in-process mock cluster, fresh for this [`TestKafka`].
    Mock,
}

/// A message read back from a topic, owned (no borrow of the consumer survives the read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The key, if any.
    pub key: Option<Vec<u8>>,
    /// The payload, if any (`None` is a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers in order; a header may have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ConsumedMessage {
    /// Copies everything out of a (borrowed) message.
    pub fn from_message(message: &impl Message) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The key as UTF-8, if it is.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The payload as UTF-8, if it is.
    pub fn payload_str(&self) -> Option<&str> {
        self.payload
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
    }

    /// The value of the first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
    }
}

/// A mock cluster and the client that hosts it (see the module docs for why it is hosted this way).
pub struct MockKafka {
    /// The cluster is owned by this client's handle and destroyed with it.
    host: BaseProducer,
}

impl MockKafka {
    /// Starts a mock cluster of `brokers` brokers with no initial rebalance delay.
    pub fn start(brokers: i32) -> anyhow::Result<Self> {
        let host =
            cohort::synthetic::broker::host_mock_cluster(brokers, ClientConfig::new().log_level)?;
        Ok(Self { host })
    }

    /// The cluster, for fault injection (`broker_down`, `request_errors`, `partition_leader`, …).
    pub fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        self.host
            .client()
            .mock_cluster()
            .expect("a client created with test.mock.num.brokers always has a mock cluster")
    }

    /// The raw cluster handle, for the `rd_kafka_mock_*` calls that `MockCluster` does not wrap.
    pub fn raw(&self) -> *mut rdkafka::bindings::rd_kafka_mock_cluster_t {
        // SAFETY: as in `start`.
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(self.host.client().native_ptr()) }
    }
}

/// A broker for one test: bootstrap servers, topic creation and message helpers.
pub struct TestKafka {
    /// Declared first so it is dropped before the mock cluster it talks to.
    producer: FutureProducer,
    /// The bootstrap servers.
    bootstrap: String,
    /// Where the broker comes from.
    source: KafkaSource,
    /// The mock cluster, when that is the broker.
    mock: Option<MockKafka>,
}

impl TestKafka {
    /// A broker from the chosen infrastructure: `KAFKA_BROKERS`, else the shared container when
    /// Docker answers, else a fresh single-broker mock cluster.
    pub async fn new() -> anyhow::Result<Self> {
        match shared_cluster().await {
            Some((bootstrap, source)) => Self::connect(bootstrap.clone(), source.clone(), None),
            None => Self::mock(1),
        }
    }

    /// Always a fresh mock cluster of `brokers` brokers, whatever the environment: for tests that
    /// inject faults, which only the mock can do.
    pub fn mock(brokers: i32) -> anyhow::Result<Self> {
        let mock = MockKafka::start(brokers)?;
        let bootstrap = mock.cluster().bootstrap_servers();
        Self::connect(bootstrap, KafkaSource::Mock, Some(mock))
    }

    fn connect(
        bootstrap: String,
        source: KafkaSource,
        mock: Option<MockKafka>,
    ) -> anyhow::Result<Self> {
        let producer = producer_config(&bootstrap)
            .create()
            .context("failed to create the test producer")?;
        Ok(Self {
            producer,
            bootstrap,
            source,
            mock,
        })
    }

    /// The bootstrap servers, for the code under test.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    /// Where the broker comes from.
    pub fn source(&self) -> &KafkaSource {
        &self.source
    }

    /// The mock cluster, when the broker is one (fault tests: `broker_down`, `request_errors`, …).
    pub fn mock_cluster(&self) -> Option<MockCluster<'_, DefaultProducerContext>> {
        self.mock.as_ref().map(MockKafka::cluster)
    }

    /// The mock and its raw handle, when the broker is one.
    pub fn mock_kafka(&self) -> Option<&MockKafka> {
        self.mock.as_ref()
    }

    /// A topic name no other test uses: `<prefix>-<random>`.
    pub fn unique_topic(&self, prefix: &str) -> String {
        format!("{prefix}-{}", random_suffix())
    }

    /// Creates a topic with `partitions` partitions and waits until every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        if let Some(mock) = self.mock_cluster() {
            // The mock does not implement CreateTopics; this is in-process and immediate.
            return mock
                .create_topic(name, partitions, 1)
                .with_context(|| format!("failed to create topic {name} on the mock cluster"));
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .context("failed to create an admin client")?;
        // Without an explicit request timeout an unanswered admin call waits about 60 s.
        let options = AdminOptions::new()
            .request_timeout(Some(Duration::from_secs(10)))
            .operation_timeout(Some(Duration::from_secs(10)));
        // Replication -1 asks for the broker's default, which suits a one-broker container and a real cluster.
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        let results = within(OPERATION_TIMEOUT, "create a topic", async {
            admin
                .create_topics(&[topic], &options)
                .await
                .context("the create-topics request failed")
        })
        .await?;
        for result in results {
            result.map_err(|(topic, code)| {
                anyhow::anyhow!("failed to create topic {topic}: {code}")
            })?;
        }
        self.wait_for_leaders(name, partitions).await
    }

    async fn wait_for_leaders(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let config = self.client_config();
        let name = name.to_owned();
        blocking(
            OPERATION_TIMEOUT + Duration::from_secs(5),
            "see the new topic's leaders",
            move || {
                let consumer: BaseConsumer = config.create()?;
                let deadline = Instant::now() + OPERATION_TIMEOUT;
                loop {
                    let metadata = consumer.fetch_metadata(Some(&name), POLL_SLICE * 10)?;
                    let ready = metadata.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    });
                    if ready {
                        return Ok(());
                    }
                    anyhow::ensure!(Instant::now() < deadline, "topic {name} has no leaders yet");
                    std::thread::sleep(POLL_SLICE);
                }
            },
        )
        .await
    }

    /// Connection settings only (`bootstrap.servers`), to build any client from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// The settings test producers use (bounded delivery, Kafka's default partitioner).
    pub fn producer_config(&self) -> ClientConfig {
        producer_config(&self.bootstrap)
    }

    /// Recommended consumer settings for tests: fast group membership, no auto-commit, reading from
    /// the earliest offset when the group has none.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        // The mock waits about session.timeout.ms - 1 s per rebalance, so keep it short there; real
        // brokers refuse anything under group.min.session.timeout.ms (6 s by default).
        let session_timeout = match self.source {
            KafkaSource::Mock => "3000",
            KafkaSource::Environment | KafkaSource::Container => "6000",
        };
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("session.timeout.ms", session_timeout)
            .set("heartbeat.interval.ms", "500")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        config
    }

    /// Produces one message and waits for its delivery; returns its `(partition, offset)`.
    pub async fn produce(
        &self,
        topic: &str,
        key: impl AsRef<[u8]>,
        payload: impl AsRef<[u8]>,
    ) -> anyhow::Result<(i32, i64)> {
        self.produce_with_headers(topic, key, payload, &[]).await
    }

    /// Produces one message with headers and waits for its delivery; returns its `(partition, offset)`.
    pub async fn produce_with_headers(
        &self,
        topic: &str,
        key: impl AsRef<[u8]>,
        payload: impl AsRef<[u8]>,
        headers: &[(&str, &[u8])],
    ) -> anyhow::Result<(i32, i64)> {
        let mut owned_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned_headers = owned_headers.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(topic)
            .key(key.as_ref())
            .payload(payload.as_ref())
            .headers(owned_headers);
        let delivery = within(
            DELIVERY_TIMEOUT + Duration::from_secs(5),
            "deliver a message",
            async {
                self.producer
                    .send(record, DELIVERY_TIMEOUT)
                    .await
                    .map_err(|(err, _message)| anyhow::Error::new(err))
                    .with_context(|| format!("failed to produce to {topic}"))
            },
        )
        .await?;
        Ok((delivery.partition, delivery.offset))
    }

    /// Reads `topic` from the beginning of every partition until `done(messages so far)` is true, or
    /// fails when `limit` passes. Messages are in arrival order (ordered within a partition).
    pub async fn consume_until(
        &self,
        topic: &str,
        limit: Duration,
        mut done: impl FnMut(&[ConsumedMessage]) -> bool + Send + 'static,
    ) -> anyhow::Result<Vec<ConsumedMessage>> {
        let config = self.reader_config();
        let topic = topic.to_owned();
        blocking(limit + Duration::from_secs(10), "read a topic", move || {
            read_topic(config, &topic, limit, |messages, _| done(messages))
        })
        .await
    }

    /// Reads every message in `topic` at the time of the call (up to each partition's high watermark).
    pub async fn read_all(&self, topic: &str) -> anyhow::Result<Vec<ConsumedMessage>> {
        let config = self.reader_config();
        let topic = topic.to_owned();
        blocking(
            OPERATION_TIMEOUT + Duration::from_secs(10),
            "read a whole topic",
            move || read_topic(config, &topic, OPERATION_TIMEOUT, |_, caught_up| caught_up),
        )
        .await
    }

    /// A consumer that only uses `assign` (no group membership, no commits).
    fn reader_config(&self) -> ClientConfig {
        // librdkafka wants a group id on a consumer even when it never joins the group.
        let mut config = self.consumer_config(&format!("cohort-test-reader-{}", random_suffix()));
        config.set("enable.auto.offset.store", "false");
        config
    }
}

fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set(
            "message.timeout.ms",
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )
        // librdkafka's default partitioner hashes keys with CRC32; cohort and the Java clients use
        // murmur2, and tests must put a key on the partition cohort expects.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0");
    config
}

/// The broker shared by this binary, when it is not the mock: `(bootstrap servers, source)`.
async fn shared_cluster() -> Option<&'static (String, KafkaSource)> {
    static SHARED: OnceCell<Option<(String, KafkaSource)>> = OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
                if !brokers.is_empty() {
                    return Some((brokers, KafkaSource::Environment));
                }
            }
            if docker::docker_available() {
                match containers::kafka_bootstrap_servers().await {
                    Ok(servers) => return Some((servers, KafkaSource::Container)),
                    Err(err) => {
                        eprintln!("test support: falling back to the kafka mock cluster: {err:#}")
                    }
                }
            }
            None
        })
        .await
        .as_ref()
}

/// The blocking reader behind [`TestKafka::consume_until`] and [`TestKafka::read_all`]. `done` gets
/// the messages so far and whether every partition has reached its high watermark as of the start.
fn read_topic(
    config: ClientConfig,
    topic: &str,
    limit: Duration,
    mut done: impl FnMut(&[ConsumedMessage], bool) -> bool,
) -> anyhow::Result<Vec<ConsumedMessage>> {
    let deadline = Instant::now() + limit;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer = config.create().context("failed to create a reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), remaining())
        .with_context(|| format!("failed to fetch the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");

    // Where each partition ends now; `read_all` stops there.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, remaining())
            .with_context(|| format!("failed to fetch the watermarks of {topic}/{partition}"))?;
        if high > low {
            ends.insert(partition, high);
        }
    }

    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;

    let mut messages: Vec<ConsumedMessage> = Vec::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut last_error = None;
    loop {
        let caught_up = ends
            .iter()
            .all(|(partition, end)| next.get(partition).is_some_and(|n| n >= end));
        if done(&messages, caught_up) {
            break;
        }
        if remaining().is_zero() {
            anyhow::bail!(
                "read {} messages from {topic} in {limit:?} without reaching the condition (last error: {})",
                messages.len(),
                last_error.map_or_else(|| "none".to_owned(), |e: rdkafka::error::KafkaError| e.to_string())
            );
        }
        match consumer.poll(remaining().min(POLL_SLICE)) {
            // The borrowed message is copied and dropped right here, well before the consumer.
            Some(Ok(message)) => {
                let owned = ConsumedMessage::from_message(&message);
                next.insert(owned.partition, owned.offset + 1);
                messages.push(owned);
            }
            // Errors such as a broker being down are transient for a reader: keep polling until
            // the deadline, and report the last one if it passes.
            Some(Err(err)) => last_error = Some(err),
            None => {}
        }
    }
    drop(consumer);
    Ok(messages)
}
