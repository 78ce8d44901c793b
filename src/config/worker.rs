//! `[worker]` and `[relay]`: the pipeline and the outbox relay.

use serde::Deserialize;

/// `[worker]`: the consume → evaluate → commit pipeline.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Most input events in one batch (one PostgreSQL transaction); bounds transaction size and memory.
    pub batch_max_events: usize,
    /// Longest a partial batch waits for more events before it is processed; trades latency for throughput.
    pub batch_max_wait_ms: u64,
    /// How long shutdown may take to finish or fence in-flight batches and commit before exiting anyway.
    pub shutdown_deadline_ms: u64,
    /// First wait before retrying a transient failure (database or broker down).
    pub retry_initial_backoff_ms: u64,
    /// Longest wait between retries; the backoff doubles up to this.
    pub retry_max_backoff_ms: u64,
    /// Largest input payload accepted; larger ones are dead-lettered as oversize, protecting memory.
    pub max_event_bytes: usize,
    /// Whether the worker process also runs the outbox relay ([`crate::relay`]), so a single process is a
    /// complete deployment. Turn it off when relays run as separate `cohort relay` processes; leaving it on
    /// in every worker is also safe (one relay at a time holds the publishing lease).
    pub embedded_relay: bool,
    /// Whether the worker process also serves the REST API ([`crate::api`]) on `http.listen`. Turn it off
    /// when the API runs as separate `cohort api` processes.
    pub embedded_api: bool,
    /// PostgreSQL's `backend_flush_after` (in kB, at most 2048; 0 turns it off) for the batches of a
    /// partition that is caught up: a batch closed by `batch_max_wait_ms` with nothing of its partition in
    /// flight, and at most a quarter of `batch_max_events`. Such a transaction writes the pages it evicts
    /// from shared buffers back to disk as it goes, instead of leaving them in the kernel's cache for the
    /// next checkpoint's file syncs, which otherwise stall every commit for as long as they take. A partition that is behind or nearly (full or large
    /// batches, pipelined) leaves the server's setting alone: write-back as it goes costs about a quarter
    /// of the sustained rate.
    pub caught_up_flush_after_kb: u32,
    /// Most changes (membership changes and firmware re-resolutions) one batch writes for a definition
    /// change — a group created, edited, retyped or deleted, a release changed. A larger change is applied
    /// over several batches, each also taking the partition's events, so their latency holds while a
    /// change of a million devices is applied.
    pub change_chunk_rows: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 1000,
            batch_max_wait_ms: 20,
            shutdown_deadline_ms: 10_000,
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 10_000,
            max_event_bytes: 65_536,
            embedded_relay: true,
            embedded_api: true,
            caught_up_flush_after_kb: 256,
            change_chunk_rows: 500,
        }
    }
}

/// `[relay]`: publishing committed outbox rows to Kafka.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Most outbox rows read and published per round.
    pub batch_size: usize,
    /// How often the outbox is polled when no notification arrives (a safety net, not the main path).
    pub poll_interval_ms: u64,
    /// How long published rows are kept before the relay deletes them, in hours: long enough to
    /// investigate what was sent, short enough that the table does not grow forever.
    pub retention_hours: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval_ms: 100,
            retention_hours: 24,
        }
    }
}
