//! A reader that follows the rollout-target topic from offset 0 for the whole run, as the OTA dispatcher
//! would. Reading along (rather than once at the end) is needed with the mock broker: it keeps at most
//! 5 MiB of each partition's log and drops the oldest record batches beyond that (librdkafka's
//! `rdkafka_mock.c`, `max_size`), and a run emits far more rollout events than that. Every partition must be
//! read without a gap in offsets, so a pruned log fails the run instead of passing as "missing events".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cohort_testkit::ConsumedMessage;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// How long the reader may take to reach the end of the topic once asked to finish.
const FINISH_LIMIT: Duration = Duration::from_secs(120);

pub struct TopicReader {
    stop: Arc<AtomicBool>,
    result: tokio::sync::oneshot::Receiver<anyhow::Result<Vec<ConsumedMessage>>>,
}

impl TopicReader {
    /// Starts reading every partition of `topic` from offset 0 on a thread of its own.
    pub fn start(bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // Never joins the group (it only assigns), but librdkafka wants a group id on a consumer.
            .set(
                "group.id",
                format!("crash-reader-{}", cohort_testkit::random_suffix()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("failed to create the rollout-topic reader")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Offset(0))?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, result) = tokio::sync::oneshot::channel();
        let (topic, flag) = (topic.to_owned(), stop.clone());
        std::thread::Builder::new()
            .name("crash-topic-reader".to_owned())
            .spawn(move || {
                let _ = tx.send(read(consumer, &topic, partitions, &flag));
            })
            .context("failed to start the reader thread")?;
        Ok(Self { stop, result })
    }

    /// Reads up to the end of every partition as it is now, stops, and returns every message read.
    pub async fn finish(self) -> anyhow::Result<Vec<ConsumedMessage>> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(FINISH_LIMIT + Duration::from_secs(30), self.result)
            .await
            .context("the rollout-topic reader did not finish")?
            .context("the rollout-topic reader thread died")?
    }
}

fn read(
    consumer: BaseConsumer,
    topic: &str,
    partitions: i32,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<ConsumedMessage>> {
    let mut messages = Vec::new();
    // Per partition, the next offset expected: the log must be read from 0 with no gap.
    let mut next: HashMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let mut ends: Option<(HashMap<i32, i64>, Instant)> = None;
    loop {
        if ends.is_none() && stop.load(Ordering::SeqCst) {
            let mut high = HashMap::new();
            for partition in 0..partitions {
                let (_, end) = consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(10))
                    .with_context(|| format!("failed to fetch the end of {topic}/{partition}"))?;
                high.insert(partition, end);
            }
            ends = Some((high, Instant::now() + FINISH_LIMIT));
        }
        if let Some((high, deadline)) = &ends {
            if high.iter().all(|(p, end)| next[p] >= *end) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < *deadline,
                "the reader did not reach the end of {topic} ({high:?}) within {FINISH_LIMIT:?}; at {next:?}"
            );
        }
        // An error is transient for a reader (the broker is in-process and never goes away here).
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            // Copied at once: no borrowed message outlives this block (a live one would hang the drop).
            let owned = ConsumedMessage::from_message(&message);
            drop(message);
            let expected = next
                .get_mut(&owned.partition)
                .with_context(|| format!("a message from unknown partition {}", owned.partition))?;
            anyhow::ensure!(
                owned.offset == *expected,
                "{topic}/{}: read offset {} where {} was expected — the log was pruned before it \
                     was read (the mock broker keeps 5 MiB per partition)",
                owned.partition,
                owned.offset,
                expected
            );
            *expected += 1;
            messages.push(owned);
        }
    }
    drop(consumer);
    Ok(messages)
}
