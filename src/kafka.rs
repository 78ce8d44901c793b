//! Kafka in and out: the worker's consumer (a dedicated poller thread) and producer settings.
//!
//! The consumer never commits what it merely polled: positions live in PostgreSQL, written with the effects.
//! Its rebalance callback runs on the poller thread and hands every assignment and revocation to the
//! pipeline, waiting for the answer before returning:
//! - **assign**: the pipeline claims each partition in PostgreSQL (fencing any previous owner), loads its
//!   devices, and returns the stored `next_offset` for each; the callback assigns the partitions *at those
//!   offsets*, so consumption resumes exactly where the committed effects end (Kafka's own committed offsets
//!   are advisory, for lag dashboards, and never read).
//! - **revoke**: the pipeline finishes or abandons in-flight batches of those partitions and drops their
//!   state before the callback unassigns them.
//!
//! Every record carries the assignment *generation* it was polled under; the pipeline drops records of an
//! older generation (polled before a rebalance, delivered after), since the new assignment re-reads from the
//! stored positions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::config::KafkaConfig;
use crate::worker::partition::Record;

/// A request from the poller's rebalance callback to the pipeline.
#[derive(Debug)]
pub enum RebalanceRequest {
    /// Claim and load these partitions; answer with the offset to resume each at.
    Assign {
        partitions: Vec<i32>,
        generation: u64,
        reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
    },
    /// Stop working on these partitions and forget them; answer when done.
    Revoke {
        partitions: Vec<i32>,
        reply: std::sync::mpsc::SyncSender<()>,
    },
}

/// A record with the partition and assignment generation it was polled under.
#[derive(Debug)]
pub struct Polled {
    pub partition: i32,
    pub generation: u64,
    pub record: Record,
}

/// State shared between the pipeline and the poller thread.
#[derive(Debug, Default)]
pub struct Shared {
    /// Set to stop the poller.
    pub stop: AtomicBool,
    /// Committed next offsets per partition, for advisory Kafka commits and lag.
    pub committed: Mutex<HashMap<i32, i64>>,
    /// Latest known high watermark per assigned partition.
    pub high_watermarks: Mutex<HashMap<i32, i64>>,
    /// Whether the consumer has an assignment (readiness).
    pub running: AtomicBool,
}

struct WorkerContext {
    topic: String,
    rebalances: mpsc::UnboundedSender<RebalanceRequest>,
    generation: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    /// librdkafka's periodic statistics carry each partition's high watermark: the lag gauge's input,
    /// obtained without a blocking request.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let marks: HashMap<i32, i64> = topic
            .partitions
            .iter()
            .filter(|(p, part)| **p >= 0 && part.hi_offset >= 0)
            .map(|(p, part)| (*p, part.hi_offset))
            .collect();
        if let Ok(mut m) = self.shared.high_watermarks.lock() {
            *m = marks;
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                let request = RebalanceRequest::Assign {
                    partitions,
                    generation,
                    reply,
                };
                let offsets = if self.rebalances.send(request).is_ok() {
                    answer.recv().unwrap_or_default()
                } else {
                    Vec::new()
                };
                let mut assignment = TopicPartitionList::new();
                for (partition, next_offset) in &offsets {
                    if let Err(e) = assignment.add_partition_offset(
                        &self.topic,
                        *partition,
                        Offset::Offset(*next_offset),
                    ) {
                        tracing::error!(partition, error = %e, "cannot set the resume offset");
                    }
                }
                metrics::counter!(crate::metrics::REBALANCES, "kind" => "assign").increment(1);
                tracing::info!(?offsets, generation, "partitions assigned");
                let result = if cooperative {
                    consumer.incremental_assign(&assignment)
                } else {
                    consumer.assign(&assignment)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                let request = RebalanceRequest::Revoke {
                    partitions: partitions.clone(),
                    reply,
                };
                if self.rebalances.send(request).is_ok() {
                    let _ = answer.recv();
                }
                metrics::counter!(crate::metrics::REBALANCES, "kind" => "revoke").increment(1);
                tracing::info!(?partitions, "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// The librdkafka settings cohort's consumer needs, with the operator's pass-through properties.
pub fn consumer_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", &kafka.group_id)
        // Positions live in PostgreSQL; Kafka commits are advisory and explicit.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Statistics feed the lag gauge (high watermarks).
        .set("statistics.interval.ms", "5000")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

/// Starts the poller thread. It stops when `shared.stop` is set or the records channel closes, closing the
/// consumer (which revokes its partitions through the pipeline first).
pub fn spawn_poller(
    config: ClientConfig,
    topic: String,
    records: mpsc::Sender<Polled>,
    rebalances: mpsc::UnboundedSender<RebalanceRequest>,
    shared: Arc<Shared>,
) -> Result<std::thread::JoinHandle<()>, KafkaError> {
    let generation = Arc::new(AtomicU64::new(0));
    let context = WorkerContext {
        topic: topic.clone(),
        rebalances,
        generation: generation.clone(),
        shared: shared.clone(),
    };
    let consumer: BaseConsumer<WorkerContext> = config.create_with_context(context)?;
    consumer.subscribe(&[&topic])?;
    let handle = std::thread::Builder::new()
        .name("cohort-poller".into())
        .spawn(move || poll_loop(consumer, topic, records, shared, generation))
        .map_err(|e| KafkaError::Subscription(format!("cannot start the poller thread: {e}")))?;
    Ok(handle)
}

fn poll_loop(
    consumer: BaseConsumer<WorkerContext>,
    topic: String,
    records: mpsc::Sender<Polled>,
    shared: Arc<Shared>,
    generation: Arc<AtomicU64>,
) {
    // Records polled but not yet accepted by the pipeline, in order.
    let mut held: std::collections::VecDeque<Polled> = std::collections::VecDeque::new();
    let mut paused = false;
    let mut last_commit = Instant::now();
    let mut committed_sent: HashMap<i32, i64> = HashMap::new();
    'poll: while !shared.stop.load(Ordering::SeqCst) {
        // The pipeline is gone (it stopped or crashed): leave the group so its partitions move on.
        if records.is_closed() {
            break;
        }
        // Hand over what we hold before polling more. While the pipeline is behind, fetching is paused but
        // polling goes on, so rebalances and heartbeats are still served (never block this thread).
        while let Some(p) = held.pop_front() {
            match records.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    held.push_front(p);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break 'poll,
            }
        }
        if held.is_empty() && paused {
            if let Ok(assignment) = consumer.assignment() {
                let _ = consumer.resume(&assignment);
            }
            paused = false;
        } else if !held.is_empty() && !paused {
            if let Ok(assignment) = consumer.assignment() {
                let _ = consumer.pause(&assignment);
            }
            paused = true;
            metrics::counter!(crate::metrics::BACKPRESSURE_PAUSES).increment(1);
        }
        let wait = Duration::from_millis(if held.is_empty() { 100 } else { 10 });
        match consumer.poll(wait) {
            None => {}
            Some(Err(e)) => {
                metrics::counter!(crate::metrics::CONSUMER_ERRORS).increment(1);
                tracing::warn!(error = %e, "consumer error");
            }
            Some(Ok(message)) => {
                let polled = Polled {
                    partition: message.partition(),
                    generation: generation.load(Ordering::SeqCst),
                    record: Record {
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        timestamp: message.timestamp().to_millis(),
                    },
                };
                // Dropped here: no librdkafka message outlives this statement (a live one blocks the
                // consumer's drop forever).
                drop(message);
                held.push_back(polled);
            }
        }
        shared.running.store(true, Ordering::SeqCst);
        if last_commit.elapsed() >= Duration::from_secs(1) {
            last_commit = Instant::now();
            advisory_commit(&consumer, &topic, &shared, &mut committed_sent);
        }
    }
    advisory_commit(&consumer, &topic, &shared, &mut committed_sent);
    // Leaving the group revokes our partitions through the callback.
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && consumer
            .assignment()
            .map(|a| a.count() > 0)
            .unwrap_or(false)
    {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    shared.running.store(false, Ordering::SeqCst);
}

/// Commits the offsets PostgreSQL already holds, so Kafka-side lag dashboards are right. Never read back.
fn advisory_commit(
    consumer: &BaseConsumer<WorkerContext>,
    topic: &str,
    shared: &Shared,
    sent: &mut HashMap<i32, i64>,
) {
    let committed = shared
        .committed
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for (partition, offset) in &committed {
        if sent.get(partition) != Some(offset) {
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
    }
    if tpl.count() > 0 && consumer.commit(&tpl, CommitMode::Async).is_ok() {
        sent.extend(committed);
    }
}
