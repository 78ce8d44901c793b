//! The worker's observable state, for readiness, tests and the benchmark: what it owns and has
//! committed, and the produce-to-commit latency stage by stage.

use super::latency;

/// Observable worker state, for readiness and tests.
#[derive(Debug, Default)]
pub struct Status {
    /// Set once group definitions are loaded and the consumer runs.
    pub ready: std::sync::atomic::AtomicBool,
    /// Batches committed so far.
    pub batches: std::sync::atomic::AtomicU64,
    /// Batches computed while an earlier batch of their partition was still in flight.
    pub batches_pipelined: std::sync::atomic::AtomicU64,
    /// Batches of a caught-up partition (closed by time, nothing of their partition in flight, at most a
    /// quarter of `worker.batch_max_events`), which write back the pages they evict as they go
    /// (`worker.caught_up_flush_after_kb`).
    pub batches_caught_up: std::sync::atomic::AtomicU64,
    /// Partitions owned right now.
    pub partitions: std::sync::atomic::AtomicUsize,
    /// Input records whose batch has committed (applied, skipped and dead-lettered alike): what a
    /// throughput measurement counts.
    pub records_committed: std::sync::atomic::AtomicU64,
    /// Devices moved to one of this worker's partitions from another one.
    pub devices_rehomed: std::sync::atomic::AtomicU64,
    /// Devices re-evaluated because a time flip of theirs came due (in committed batches).
    pub timer_evaluations: std::sync::atomic::AtomicU64,
    /// Produce-to-commit latency of committed records (Kafka message timestamp to just after the commit),
    /// readable in-process; `cohort_worker_event_latency_seconds` records the same for dashboards.
    pub latency: latency::LatencyHistogram,
    /// Where that latency goes, stage by stage (milliseconds; batch sizes in events).
    pub stages: Stages,
}

/// The stages of the produce-to-commit latency, readable in-process like [`Status::latency`]: the
/// benchmark reports them so that a latency figure can be explained.
#[derive(Debug, Default)]
pub struct Stages {
    /// Per record: from its Kafka timestamp to the pipeline taking it from the poller.
    pub delivery: latency::LatencyHistogram,
    /// Per record: from the pipeline taking it to its batch starting to compute.
    pub buffered: latency::LatencyHistogram,
    /// Per record: computing its batch (evaluation and rendering the writes).
    pub compute: latency::LatencyHistogram,
    /// Per record: its batch's commit task, from spawn to the commit's end (retries included, and the wait
    /// for the partition's previous batch to commit).
    pub commit: latency::LatencyHistogram,
    /// Per record: from its batch's commit end to the pipeline installing it.
    pub settle: latency::LatencyHistogram,
    /// Per batch: input records in it.
    pub batch_records: latency::LatencyHistogram,
}
