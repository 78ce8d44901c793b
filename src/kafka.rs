//! Kafka in and out: the worker's consumer (a dedicated poller thread), its input record type and decoding
//! in [`record`], and in [`client`] the settings of every Kafka client cohort runs (one builder, one
//! documented precedence).
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
//!
//! Backpressure: the poller holds what the pipeline's bounded channel cannot take yet; once it holds
//! `HOLD_MAX` records it waits for room, polling at least every `WAIT_SLICE` so rebalances are served,
//! and librdkafka stops fetching when its own prefetch queue is full. It never pauses partitions: that
//! discarded the prefetched records (fetched again on resume), and librdkafka 2.12 was seen to resume
//! *past* them, silently skipping records. Offsets are also checked for continuity: each assigned
//! partition's next record must follow the last one polled (or be at the assigned offset); a repeated
//! record is dropped, and a record past a gap is dropped and the partition re-fetched from the gap, so a
//! position is never committed past a record that was not processed.

pub mod client;
pub mod record;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

pub use client::{client_config, Role};
pub use record::{Decoded, Record};

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
    /// The offset the next record of each assigned partition must have: set when the partition is
    /// assigned, advanced by each record polled. Only the poller thread uses it (the rebalance callback
    /// runs inside its `poll`); the mutex is never contended.
    next_offsets: Mutex<HashMap<i32, i64>>,
}

/// How a polled record's offset relates to the partition's next expected one.
#[derive(Debug, PartialEq, Eq)]
enum OffsetCheck {
    /// The expected record (or one of a partition with no expectation yet).
    Next,
    /// An offset already polled.
    Repeated,
    /// Records were skipped; the expected offset is given.
    Gap(i64),
}

impl WorkerContext {
    fn check_offset(&self, partition: i32, offset: i64) -> OffsetCheck {
        let Ok(mut next) = self.next_offsets.lock() else {
            return OffsetCheck::Next;
        };
        match next.get(&partition).copied() {
            Some(expected) if offset < expected => OffsetCheck::Repeated,
            Some(expected) if offset > expected => OffsetCheck::Gap(expected),
            _ => {
                next.insert(partition, offset + 1);
                OffsetCheck::Next
            }
        }
    }
}

/// How often every advisory offset is committed again, changed or not. The outcome of an asynchronous
/// commit is never reported to the consumer (rust-rdkafka 0.39 submits it with no reply queue, so its
/// commit callback is not invoked), so a commit that failed — coordinator down or moving, a rejoin under
/// way — would otherwise leave Kafka's copy behind until the partition's position next changes: forever,
/// at the end of a stream, and Kafka-side lag dashboards would show lag that is not there.
const ADVISORY_REFRESH: Duration = Duration::from_secs(10);

/// Bound on a seek (it waits for librdkafka's fetcher).
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

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
                if let Ok(mut next) = self.next_offsets.lock() {
                    if !cooperative {
                        next.clear();
                    }
                    next.extend(offsets.iter().copied());
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
                if let Ok(mut next) = self.next_offsets.lock() {
                    if cooperative {
                        for p in &partitions {
                            next.remove(p);
                        }
                    } else {
                        next.clear();
                    }
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
                if let Ok(mut next) = self.next_offsets.lock() {
                    next.clear();
                }
                let _ = consumer.unassign();
            }
        }
    }
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
        next_offsets: Mutex::new(HashMap::new()),
    };
    let consumer: BaseConsumer<WorkerContext> = config.create_with_context(context)?;
    consumer.subscribe(&[&topic])?;
    let handle = std::thread::Builder::new()
        .name("cohort-poller".into())
        .spawn(move || poll_loop(consumer, topic, records, shared, generation))
        .map_err(|e| KafkaError::Subscription(format!("cannot start the poller thread: {e}")))?;
    Ok(handle)
}

/// Records the poller holds (polled, not yet taken by the pipeline) before it waits for the pipeline.
const HOLD_MAX: usize = 1_000;
/// Longest the poller goes without polling the consumer.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Hands held records to the pipeline until its channel is full. Fails when the pipeline is gone.
fn hand_over(
    held: &mut std::collections::VecDeque<Polled>,
    records: &mpsc::Sender<Polled>,
) -> Result<(), ()> {
    while let Some(p) = held.pop_front() {
        match records.try_send(p) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(p)) => {
                held.push_front(p);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
        }
    }
    Ok(())
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
    let mut waiting = false;
    let mut last_commit = Instant::now();
    let mut last_refresh = Instant::now();
    let mut committed_sent: HashMap<i32, i64> = HashMap::new();
    // Partitions being re-fetched from an earlier offset after a gap, and from where.
    let mut seeking: HashMap<i32, i64> = HashMap::new();
    'poll: while !shared.stop.load(Ordering::SeqCst) {
        // The pipeline is gone (it stopped or crashed): leave the group so its partitions move on.
        if records.is_closed() {
            break;
        }
        // Hand over what we hold before polling more.
        if hand_over(&mut held, &records).is_err() {
            break;
        }
        // The pipeline is behind: wait for room instead of polling more, never longer than WAIT_SLICE
        // between polls, so rebalances are still served. Fetching is never paused (librdkafka stops
        // fetching on its own once its prefetch queue is full: `queued.min.messages`,
        // `queued.max.messages.kbytes`). Pausing was both slow (it discards the prefetched records, which
        // are fetched again on resume) and unsafe: librdkafka 2.12 was seen to resume *after* the
        // discarded records, skipping them.
        if held.len() >= HOLD_MAX {
            if !waiting {
                waiting = true;
                metrics::counter!(crate::metrics::BACKPRESSURE_PAUSES).increment(1);
            }
            let until = Instant::now() + WAIT_SLICE;
            while held.len() >= HOLD_MAX
                && Instant::now() < until
                && !shared.stop.load(Ordering::SeqCst)
            {
                std::thread::sleep(Duration::from_millis(1));
                if hand_over(&mut held, &records).is_err() {
                    break 'poll;
                }
            }
        } else {
            waiting = false;
        }
        let wait = if held.is_empty() {
            WAIT_SLICE
        } else {
            Duration::from_millis(10)
        };
        match consumer.poll(wait) {
            None => {}
            Some(Err(e)) => {
                metrics::counter!(crate::metrics::CONSUMER_ERRORS).increment(1);
                tracing::warn!(error = %e, "consumer error");
            }
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                match consumer.context().check_offset(partition, offset) {
                    OffsetCheck::Next => {
                        seeking.remove(&partition);
                    }
                    OffsetCheck::Repeated => {
                        // Already handed over (or held): a re-delivery after a seek or a resume.
                        metrics::counter!(crate::metrics::RECORDS_DROPPED, "why" => "offset_repeated").increment(1);
                        continue;
                    }
                    OffsetCheck::Gap(expected) => {
                        // librdkafka skipped records (seen after pausing and resuming, which the poller
                        // no longer does): never hand over a record past a gap, so no position is ever
                        // committed past records not processed; fetch again from the first one missing.
                        metrics::counter!(crate::metrics::RECORDS_DROPPED, "why" => "offset_gap")
                            .increment(1);
                        if seeking.get(&partition) != Some(&expected) {
                            tracing::warn!(
                                partition,
                                expected,
                                offset,
                                "records skipped by the consumer; seeking back"
                            );
                            match consumer.seek(
                                &topic,
                                partition,
                                Offset::Offset(expected),
                                SEEK_TIMEOUT,
                            ) {
                                Ok(()) => {
                                    seeking.insert(partition, expected);
                                }
                                Err(e) => {
                                    tracing::warn!(partition, error = %e, "seek failed; will retry")
                                }
                            }
                        }
                        continue;
                    }
                }
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
            if last_refresh.elapsed() >= ADVISORY_REFRESH {
                last_refresh = Instant::now();
                committed_sent.clear();
            }
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
/// Only changed ones, except every [`ADVISORY_REFRESH`], when `sent` is cleared and all go again.
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

/// Kafka's murmur2 hash, exactly as the Java client's `Utils.murmur2` computes it (and librdkafka's
/// `murmur2` partitioners): the hash behind Kafka's default partitioner.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java works on signed ints with wrapping arithmetic and `>>>`; u32 with wrapping ops is the same bits.
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a keyed message: `toPositive(murmur2(key)) % partitions`
/// (librdkafka's `murmur2_random` partitioner for keyed messages). This is where a device lives.
pub fn default_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's own UtilsTest.testMurmur2 cases, and librdkafka's rdmurmur2.c unit-test keys.
        let cases: [(&[u8], i32); 13] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"string-f-24-chars-length", 124_730_809),
            (b"string-fo-25-chars-length", 1_269_511_650),
            (b"kafka", 0xd067_cf64_u32 as i32),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"12345", -1_188_365_604),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn the_default_partition_is_the_positive_hash_modulo_the_partition_count() {
        // toPositive(-973932308) = 1173551340.
        assert_eq!(default_partition(b"21", 1), 0);
        assert_eq!(default_partition(b"21", 7), 1_173_551_340 % 7);
        assert_eq!(default_partition(b"abc", 10), 479_470_107 % 10);
        assert_eq!(default_partition(b"", 3), (murmur2(b"") & 0x7fff_ffff) % 3);
    }
}
