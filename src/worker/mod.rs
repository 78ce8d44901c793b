//! The worker: a Kafka consumer-group member that owns the devices of its partitions and is the only writer
//! of their dynamic memberships.
//!
//! One pipeline task serves every owned partition. It receives records from the poller thread (bounded
//! channel), rebalance requests from the poller's callback, and control-log notifications; it buffers records
//! per partition and flushes a partition's batch when it is full, old enough, or has control entries or timers
//! due. A flush computes on copies of the touched devices ([`partition::compute`]) and commits everything in
//! one fenced transaction ([`crate::store::batch`]) on a task of its own, so the other partitions' batches
//! are computed and committed meanwhile.
//!
//! A partition's batches commit in order, one at a time, and are pipelined two deep when the partition is
//! behind: while one commits, a full next batch is computed on the state the first leaves, and its commit
//! task starts the moment the first commits (it waits for the first's signal, not for this task). So a
//! partition that is behind does not idle its connection while a batch is computed. One that is not waits
//! for the commit instead, and its next batch gathers what arrives meanwhile: computing it early would
//! split that into two smaller commits. The in-memory state moves on when a batch is computed; each batch
//! in flight keeps what it replaced, so that a batch which does not commit, and every batch after it, can
//! be put back.
//! A batch whose inputs include control entries is computed only when nothing of its partition is in
//! flight (a reconciliation re-reads devices from the database, which must hold every earlier batch).
//! Kafka offsets, metrics and the committed-record count move only when a commit succeeds.
//!
//! Failures: a transient database error is retried with capped exponential backoff with jitter
//! ([`crate::backoff`]), never skipped (while
//! rebalance requests are still answered); a fenced commit means another worker owns the partition, so its
//! state is dropped; a device conflict (another partition re-homed the device) puts the batch and the one
//! behind it back, evicts the device, and recomputes both.
//!
//! Why this file is over 800 lines: the run loop, rebalance handling, commit pipelining and the control-log
//! refresh are still one file; they are to split by concern (with a `Channels` value owned by the run loop),
//! a mechanical move guarded by the crash and fault suites.

pub mod latency;
pub mod partition;
pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use self::partition::{compute, BatchContext, Device, Partition, Record};
use self::registry::Registry;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::event;
use crate::kafka::{self, Polled, RebalanceRequest, Shared};
use crate::metrics as m;
use crate::rules::{Catalogue, EpochMillis};
use crate::store::control::{self, ControlEntry, Positioned};
use crate::store::{self, partition as stored, StoreError};

/// Where the worker reads the time. Tests inject a manual clock to make time-based conditions flip.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> EpochMillis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMillis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: EpochMillis) -> Self {
        Self(Arc::new(AtomicI64::new(at)))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: EpochMillis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EpochMillis {
        self.0.load(Ordering::SeqCst)
    }
}

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

/// Everything the worker needs, built once.
pub struct Worker {
    config: Config,
    brokers: String,
    pool: PgPool,
    catalogue: Arc<Catalogue>,
    clock: Arc<dyn Clock>,
    status: Arc<Status>,
    owner: String,
}

impl Worker {
    /// Prepares a worker; nothing connects until [`Worker::run_until_stopped`].
    pub fn build(
        config: Config,
        brokers: String,
        pool: PgPool,
        catalogue: Arc<Catalogue>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let owner = format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "cohort".into()),
            std::process::id()
        );
        Self {
            config,
            brokers,
            pool,
            catalogue,
            clock,
            status: Arc::new(Status::default()),
            owner,
        }
    }

    /// The worker's observable status.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Runs until `shutdown` resolves, then finishes in-flight batches (bounded by the configured deadline),
    /// leaves the consumer group and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (records_tx, records_rx) =
            mpsc::channel(self.config.worker.batch_max_events.max(1) * 4);
        let (rebalance_tx, rebalance_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let mut pipeline = Pipeline::new(&self, shared.clone());
        // Definitions first, so the first assignment can be served.
        pipeline.load_definitions().await?;
        let consumer = kafka::client_config(&self.config.kafka, &self.brokers, kafka::Role::Worker);
        let poller = kafka::spawn_poller(
            consumer,
            self.config.kafka.input_topic.clone(),
            records_tx,
            rebalance_tx,
            shared.clone(),
        )
        .context("failed to start the Kafka consumer")?;
        self.status.ready.store(true, Ordering::SeqCst);
        metrics::gauge!(m::READY).set(1.0);
        let result = pipeline.run(records_rx, rebalance_rx, shutdown).await;
        self.status.ready.store(false, Ordering::SeqCst);
        metrics::gauge!(m::READY).set(0.0);
        shared.stop.store(true, Ordering::SeqCst);
        // The poller revokes through the pipeline while closing; serve those requests until it is gone.
        let mut rebalance_rx = pipeline.take_rebalances();
        let join = tokio::task::spawn_blocking(move || poller.join());
        tokio::pin!(join);
        loop {
            tokio::select! {
                _ = &mut join => break,
                Some(request) = async { match rebalance_rx.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    pipeline.answer_during_shutdown(request);
                }
            }
        }
        result
    }
}

struct Buffer {
    records: Vec<Record>,
    /// When each record was taken from the poller (parallel to `records`).
    accepted: Vec<Instant>,
    first_at: Option<Instant>,
}

struct Pipeline {
    config: Config,
    pool: PgPool,
    registry: Registry,
    partitions: HashMap<i32, Partition>,
    generations: HashMap<i32, u64>,
    /// The assignment generation each partition had when it was last dropped: records polled under it (or
    /// earlier) and delivered after the revoke are stale, not records of a partition never owned.
    revoked: HashMap<i32, u64>,
    buffers: HashMap<i32, Buffer>,
    clock: Arc<dyn Clock>,
    status: Arc<Status>,
    shared: Arc<Shared>,
    owner: String,
    rebalances: Option<mpsc::UnboundedReceiver<RebalanceRequest>>,
    control_dirty: bool,
    /// Each partition's batches computed and not yet settled, oldest first (at most [`PIPELINE_DEPTH`]):
    /// the first is committing, the next waits for it. A partition with none has no entry.
    in_flight: HashMap<i32, VecDeque<InFlight>>,
    /// Numbers batches, so that a completion is matched to the batch that sent it.
    next_batch: u64,
    /// Commit tasks announce (partition, batch) here when they end.
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: Option<mpsc::UnboundedReceiver<Completion>>,
}

/// What a batch is computed from; kept while it commits, to recompute it after a device conflict.
struct BatchInputs {
    decoded: Vec<(Record, Result<event::DeviceEvent, event::DecodeError>)>,
    due: Vec<Box<str>>,
    control: Vec<Positioned>,
    now: EpochMillis,
}

/// How many batches of one partition may be in flight: one committing and one computed on the state it
/// leaves, waiting to commit right after it. A third would only add latency: computing a batch takes less
/// time than committing one.
const PIPELINE_DEPTH: usize = 2;

/// A batch whose commit runs on its own task. Its state is already installed in the partition; `undo`
/// puts it back if the commit does not succeed.
struct InFlight {
    id: u64,
    task: tokio::task::JoinHandle<Outcome>,
    /// Set while the task waits to retry a failed commit (nothing of the batch is written then).
    retrying: Arc<AtomicBool>,
    /// Resolves when this batch has committed: the partition's next batch waits on it before committing.
    committed: Option<oneshot::Receiver<()>>,
    undo: Undo,
    stats: partition::Stats,
    /// The partition's next input offset once the batch commits (what Kafka may be told).
    next_offset: i64,
    inputs: BatchInputs,
}

/// What a batch replaced in its partition's state when it was installed.
struct Undo {
    /// Each device the batch touched, with its state before (None: the partition did not hold it).
    devices: Vec<(Box<str>, Option<Box<Device>>)>,
    next_offset: i64,
    control_position: i64,
}

/// How a commit task ended.
enum Outcome {
    Committed,
    Failed(StoreError),
    /// Not attempted: the partition's previous batch did not commit.
    Skipped,
}

/// A commit task's announcement that it ended.
struct Completion {
    partition: i32,
    id: u64,
    at: Instant,
    records: u64,
}

/// How a commit task retries.
struct CommitRetry {
    partition: i32,
    id: u64,
    backoff: Backoff,
    retrying: Arc<AtomicBool>,
    done: mpsc::UnboundedSender<Completion>,
    status: Arc<Status>,
    /// Input records in the batch (for the per-record latency stages).
    records: u64,
}

/// A caught-up partition's batch (nothing of its partition in flight) is written back as it goes only if
/// it holds at most `worker.batch_max_events / WRITE_BACK_SHARE` records (a quarter).
const WRITE_BACK_SHARE: usize = 4;

/// Whether a batch of `records`, closed with nothing of its partition in flight, writes back the pages it
/// evicts: only a small one (at most a quarter of `batch_max_events`, at least one record; never a full
/// one). Batches grow when the commits before them were slow, and writing back as they go costs write
/// capacity (every evicted page written at once instead of once per checkpoint), which would slow the
/// next commits and grow the next batches further. So a partition near its write capacity writes like
/// one that is behind until its batches are small again: measured at half the benchmark's sustained rate
/// (BENCHMARKS.md, "Worker end to end"), 73–99% of the batches were written back and the p99
/// was 109–238 ms in ten runs of eleven (490 ms in the other), against 374–520 ms with every caught-up
/// batch written back, its partitions falling behind.
fn writes_back(records: usize, batch_max_events: usize) -> bool {
    records < batch_max_events && records <= (batch_max_events / WRITE_BACK_SHARE).max(1)
}

/// Commits a batch once the partition's previous batch has (`after`), retrying every failure with capped
/// exponential backoff except the two that need the pipeline: fenced (the partition is lost) and a device
/// conflict (the batch must be recomputed). Signals `then` when it has committed.
async fn commit_with_retry(
    pool: PgPool,
    write: store::batch::BatchWrite,
    retry: CommitRetry,
    after: Option<oneshot::Receiver<()>>,
    then: oneshot::Sender<()>,
) -> Outcome {
    let spawned = Instant::now();
    if let Some(after) = after {
        if after.await.is_err() {
            // The previous batch failed or was abandoned: this one was computed on its state.
            return Outcome::Skipped;
        }
    }
    let mut backoff = retry.backoff;
    let result = loop {
        let started = Instant::now();
        let result = store::batch::commit(&pool, &write).await;
        metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => break Ok(()),
            Err(e @ (StoreError::Fenced { .. } | StoreError::DeviceConflict { .. })) => {
                break Err(e)
            }
            Err(e) => {
                let kind = e.retry_kind();
                metrics::counter!(m::COMMIT_FAILURES, "kind" => kind).increment(1);
                let wait = backoff.step();
                tracing::warn!(partition = retry.partition, error = %e, backoff_ms = wait.as_millis() as u64, "batch failed; retrying");
                retry.retrying.store(true, Ordering::SeqCst);
                tokio::time::sleep(wait).await;
                retry.retrying.store(false, Ordering::SeqCst);
            }
        }
    };
    let at = Instant::now();
    if result.is_ok() {
        let _ = then.send(());
    }
    retry
        .status
        .stages
        .commit
        .record_n(at.duration_since(spawned).as_millis() as u64, retry.records);
    let _ = retry.done.send(Completion {
        partition: retry.partition,
        id: retry.id,
        at,
        records: retry.records,
    });
    match result {
        Ok(()) => Outcome::Committed,
        Err(e) => Outcome::Failed(e),
    }
}

impl Pipeline {
    fn new(worker: &Worker, shared: Arc<Shared>) -> Self {
        let (completions_tx, completions) = mpsc::unbounded_channel();
        Self {
            config: worker.config.clone(),
            pool: worker.pool.clone(),
            registry: Registry::new(worker.catalogue.clone()),
            partitions: HashMap::new(),
            generations: HashMap::new(),
            revoked: HashMap::new(),
            buffers: HashMap::new(),
            clock: worker.clock.clone(),
            status: worker.status.clone(),
            shared,
            owner: worker.owner.clone(),
            rebalances: None,
            control_dirty: true,
            in_flight: HashMap::new(),
            next_batch: 0,
            completions_tx,
            completions: Some(completions),
        }
    }

    fn take_rebalances(&mut self) -> Option<mpsc::UnboundedReceiver<RebalanceRequest>> {
        self.rebalances.take()
    }

    /// Retries a database operation with capped exponential backoff until it succeeds or fails for a
    /// non-transient reason.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::from_config(&self.config);
        loop {
            match op().await {
                Err(e) if e.is_transient() => {
                    let wait = backoff.step();
                    tracing::warn!(error = %e, backoff_ms = wait.as_millis() as u64, "{what} failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    async fn load_definitions(&mut self) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let (groups, orgs, head) = self
            .retry("loading group definitions", || {
                store::groups::load_definitions(&pool)
            })
            .await
            .context("failed to load group definitions")?;
        for org in &orgs {
            self.registry.add_org(org);
        }
        for def in &groups {
            self.registry.upsert(def);
        }
        // Releases are read after the definitions' snapshot; a release changed in between is applied again
        // from the control log, which is idempotent.
        let releases = self
            .retry("loading firmware releases", || {
                store::firmware::live_releases(&pool)
            })
            .await
            .context("failed to load firmware releases")?;
        for (org, group, version) in &releases {
            self.registry.set_release(org, *group, Some(version));
        }
        self.registry.position = head;
        tracing::info!(
            orgs = orgs.len(),
            groups = groups.len(),
            control_position = head,
            "definitions loaded"
        );
        Ok(())
    }

    async fn run(
        &mut self,
        mut records: mpsc::Receiver<Polled>,
        rebalances: mpsc::UnboundedReceiver<RebalanceRequest>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.rebalances = Some(rebalances);
        let mut listener = self.listen().await;
        tokio::pin!(shutdown);
        let tick = Duration::from_millis(self.config.worker.batch_max_wait_ms.clamp(5, 100));
        let mut completions = self.completions.take().expect("present until run");
        // After the control log could not be read or listened to (the database is away), neither is tried
        // again before this instant: capped exponential backoff instead of a reconnect on every tick.
        let mut control_backoff = Backoff::from_config(&self.config);
        let mut control_quiet_until: Option<Instant> = None;
        loop {
            let control_quiet = control_quiet_until.is_some_and(|t| Instant::now() < t);
            let mut rebalances = self.rebalances.take().expect("present while running");
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.rebalances = Some(rebalances);
                    break;
                }
                Some(request) = rebalances.recv() => {
                    self.rebalances = Some(rebalances);
                    self.rebalance(request).await;
                }
                Some(Completion { partition, id, at, records: n }) = completions.recv() => {
                    self.rebalances = Some(rebalances);
                    self.status.stages.settle.record_n(at.elapsed().as_millis() as u64, n);
                    // Settle the batch that ended and any before it (they ended first: a batch commits
                    // only after its predecessor has).
                    while self
                        .in_flight
                        .get(&partition)
                        .and_then(VecDeque::front)
                        .is_some_and(|f| f.id <= id)
                    {
                        self.finish_front(partition).await;
                    }
                }
                Some(polled) = records.recv() => {
                    self.rebalances = Some(rebalances);
                    // One reading of the clocks for the burst: its records are taken together.
                    let taken = (Instant::now(), chrono::Utc::now().timestamp_millis());
                    self.accept(polled, taken);
                    // Take what is already queued, up to a batch, without waiting.
                    for _ in 0..self.config.worker.batch_max_events {
                        match records.try_recv() {
                            Ok(p) => self.accept(p, taken),
                            Err(_) => break,
                        }
                    }
                }
                notified = async {
                    match listener.as_mut() {
                        Some(l) if !control_quiet => l.recv().await.map(|_| ()),
                        _ => std::future::pending().await,
                    }
                } => {
                    self.rebalances = Some(rebalances);
                    if let Err(e) = notified {
                        // The listener reconnects on its own, at its next use (after the backoff); catch up
                        // then in case a notification was missed.
                        let wait = control_backoff.step();
                        tracing::warn!(error = %e, backoff_ms = wait.as_millis() as u64, "control-log listener interrupted");
                        control_quiet_until = Some(Instant::now() + wait);
                    }
                    self.control_dirty = true;
                }
                _ = tokio::time::sleep(tick) => {
                    self.rebalances = Some(rebalances);
                }
            }
            if control_quiet_until.is_none_or(|t| Instant::now() >= t) {
                if listener.is_none() {
                    listener = self.listen().await;
                }
                let mut failed = listener.is_none();
                if self.control_dirty {
                    if let Err(e) = self.refresh_control().await {
                        tracing::warn!(error = %e, backoff_ms = control_backoff.current().as_millis() as u64, "cannot read the control log; will retry");
                        failed = true;
                    } else {
                        self.control_dirty = false;
                    }
                }
                if failed {
                    control_quiet_until = Some(Instant::now() + control_backoff.step());
                } else {
                    control_quiet_until = None;
                    control_backoff.reset();
                }
            }
            self.flush_ready(false).await;
            self.report();
        }
        // Shutdown: finish what is buffered, bounded by the deadline.
        let deadline = Duration::from_millis(self.config.worker.shutdown_deadline_ms);
        if tokio::time::timeout(deadline, self.drain()).await.is_err() {
            tracing::warn!("shutdown deadline passed with batches unfinished; they will be re-read from the stored positions");
            for flight in self.in_flight.drain().flat_map(|(_, queue)| queue) {
                flight.task.abort();
            }
        }
        Ok(())
    }

    async fn listen(&self) -> Option<PgListener> {
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(control::CHANNEL).await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for control-log notifications");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the control-log listener");
                None
            }
        }
    }

    /// Buffers a polled record; `taken` is when the pipeline took it (monotonic, and wall-clock milliseconds).
    fn accept(&mut self, polled: Polled, (now, wall): (Instant, EpochMillis)) {
        let owned = self.partitions.contains_key(&polled.partition);
        let current = self.generations.get(&polled.partition).copied();
        let revoked = self.revoked.get(&polled.partition).copied();
        match disposition(owned, current, revoked, polled.generation) {
            Disposition::Accept => {
                let buffer = self
                    .buffers
                    .entry(polled.partition)
                    .or_insert_with(|| Buffer {
                        records: Vec::new(),
                        accepted: Vec::new(),
                        first_at: None,
                    });
                buffer.first_at.get_or_insert(now);
                if let Some(ts) = polled.record.timestamp {
                    self.status
                        .stages
                        .delivery
                        .record((wall - ts).max(0) as u64);
                }
                buffer.records.push(polled.record);
                buffer.accepted.push(now);
            }
            Disposition::Stale => {
                // Polled under an older assignment (still in the channel when the partition was revoked or
                // re-assigned): whoever owns the partition now re-reads it from the stored position.
                metrics::counter!(m::RECORDS_DROPPED, "why" => "stale_generation").increment(1);
            }
            Disposition::NotOwned => {
                metrics::counter!(m::RECORDS_DROPPED, "why" => "not_owned").increment(1);
                tracing::error!(
                    partition = polled.partition,
                    offset = polled.record.offset,
                    "record from a partition this worker does not own"
                );
            }
        }
    }

    async fn rebalance(&mut self, request: RebalanceRequest) {
        match request {
            RebalanceRequest::Assign {
                partitions,
                generation,
                reply,
            } => {
                let mut offsets = Vec::new();
                for partition in partitions {
                    // A partition left out of the answer is not assigned by the callback, yet the group
                    // counts it as ours: no worker would consume it until the next rebalance. So a failure
                    // to take it (the database down, restarting or refusing connections) is retried until
                    // it succeeds, like a batch.
                    let mut backoff = Backoff::from_config(&self.config);
                    let next_offset = loop {
                        match self.assign(partition, generation).await {
                            Ok(next_offset) => break next_offset,
                            Err(e) => {
                                let wait = backoff.step();
                                tracing::warn!(partition, error = %e, backoff_ms = wait.as_millis() as u64, "cannot take the partition; retrying");
                                tokio::time::sleep(wait).await;
                            }
                        }
                    };
                    offsets.push((partition, next_offset));
                }
                let _ = reply.send(offsets);
            }
            RebalanceRequest::Revoke { partitions, reply } => {
                for partition in partitions {
                    // Finish the batch in flight and what is buffered if we still can; otherwise the next
                    // owner re-reads it.
                    self.finish_unless_retrying(partition).await;
                    self.flush_partition(partition).await;
                    self.finish_unless_retrying(partition).await;
                    self.drop_partition(partition);
                }
                let _ = reply.send(());
            }
        }
    }

    /// Finishes a partition's batches in flight, unless a commit is failing (the database is away): then
    /// they are abandoned (`drop_partition` aborts them) rather than holding up a rebalance.
    async fn finish_unless_retrying(&mut self, partition: i32) {
        let failing = self
            .in_flight
            .get(&partition)
            .is_some_and(|q| q.iter().any(|f| f.retrying.load(Ordering::SeqCst)));
        if !failing {
            self.finish(partition).await;
        }
    }

    /// At shutdown: finishes the batches in flight and flushes everything buffered, until nothing is left.
    async fn drain(&mut self) {
        loop {
            self.finish_all().await;
            self.flush_ready(true).await;
            if self.in_flight.is_empty() {
                return;
            }
        }
    }

    fn answer_during_shutdown(&mut self, request: RebalanceRequest) {
        match request {
            RebalanceRequest::Assign { reply, .. } => {
                let _ = reply.send(Vec::new());
            }
            RebalanceRequest::Revoke { partitions, reply } => {
                for partition in partitions {
                    self.drop_partition(partition);
                }
                let _ = reply.send(());
            }
        }
    }

    fn drop_partition(&mut self, partition: i32) {
        // Its lag is the new owner's to report now; a stale value here would raise false alarms.
        metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string()).set(0.0);
        for flight in self.in_flight.remove(&partition).into_iter().flatten() {
            // Abandoned: if its transaction still commits, it does so under this worker's epoch, before the
            // next owner's claim (which waits for the position row's lock) reads the positions. A batch
            // waiting behind it never starts.
            flight.task.abort();
        }
        self.partitions.remove(&partition);
        if let Some(generation) = self.generations.remove(&partition) {
            self.revoked.insert(partition, generation);
        }
        self.buffers.remove(&partition);
        if let Ok(mut c) = self.shared.committed.lock() {
            c.remove(&partition);
        }
    }

    /// Claims a partition, loads its devices and queues the control entries it has not applied yet.
    async fn assign(&mut self, partition: i32, generation: u64) -> Result<i64, StoreError> {
        let pool = self.pool.clone();
        let topic = self.config.kafka.input_topic.clone();
        let owner = self.owner.clone();
        // The registry must be at least as far as the partition's stored position.
        self.refresh_control().await?;
        let head = self.registry.position;
        let claim = self
            .retry("claiming a partition", || {
                stored::claim(&pool, &topic, partition, &owner, head)
            })
            .await?;
        if claim.control_position > self.registry.position {
            self.refresh_control().await?;
        }
        let mut state = Partition::new(partition, claim);
        self.load_devices(&mut state).await?;
        // The API writes static memberships itself, so what was just loaded can include the effects of
        // entries appended after the registry's position. Read up to the log's head now, and queue every
        // entry up to it: they are all applied in the partition's first batch, whose end state then matches
        // what was loaded (applying an entry whose effect is already loaded changes nothing).
        self.refresh_control().await?;
        let catch_up = if claim.control_position < self.registry.position {
            let from = claim.control_position;
            self.retry("reading the control log", || {
                control::read_after(&pool, from, i64::MAX)
            })
            .await?
        } else {
            Vec::new()
        };
        let upto = self.registry.position;
        state
            .pending_control
            .extend(catch_up.into_iter().filter(|e| e.id <= upto));
        let now = self.clock.now();
        let ids: Vec<Box<str>> = state.devices.keys().cloned().collect();
        for id in &ids {
            state.schedule(id, &self.registry, now);
        }
        tracing::info!(
            partition,
            devices = state.devices.len(),
            epoch = claim.epoch,
            next_offset = claim.next_offset,
            pending_control = state.pending_control.len(),
            "partition claimed"
        );
        if let Ok(mut c) = self.shared.committed.lock() {
            c.insert(partition, claim.next_offset);
        }
        self.partitions.insert(partition, state);
        self.generations.insert(partition, generation);
        Ok(claim.next_offset)
    }

    /// Loads a partition's devices and their memberships into `state`, streaming the rows so that the stored
    /// rows are never all held at once. A transient failure starts over, with backoff.
    async fn load_devices(&mut self, state: &mut Partition) -> Result<(), StoreError> {
        let pool = self.pool.clone();
        let mut backoff = Backoff::from_config(&self.config);
        loop {
            state.devices.clear();
            let registry = &mut self.registry;
            let devices = &mut state.devices;
            let mut result = stored::for_each_device(&pool, state.id, |row| {
                if let Some(device) = Device::from_stored(&row, &[], registry) {
                    devices.insert(row.id.into_boxed_str(), Box::new(device));
                }
            })
            .await;
            if result.is_ok() {
                result = stored::for_each_membership(&pool, state.id, |m| {
                    if let Some(device) = devices.get_mut(m.device_id.as_str()) {
                        device.push_stored_membership(&m, registry);
                    }
                })
                .await;
            }
            match result {
                Ok(()) => {
                    for device in devices.values_mut() {
                        device.loaded();
                    }
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    let wait = backoff.step();
                    tracing::warn!(partition = state.id, error = %e, backoff_ms = wait.as_millis() as u64, "loading a partition failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads new control-log entries, applies their definition changes to the registry and queues them for
    /// every owned partition.
    async fn refresh_control(&mut self) -> Result<(), StoreError> {
        loop {
            let entries = control::read_after(&self.pool, self.registry.position, 1000).await?;
            if entries.is_empty() {
                return Ok(());
            }
            for entry in entries {
                match &entry.entry {
                    ControlEntry::OrgCreated { org_id } => self.registry.add_org(org_id),
                    ControlEntry::GroupUpserted(def) => {
                        self.registry.upsert(def);
                    }
                    ControlEntry::GroupDeleted { group_id, .. } => {
                        self.registry.delete(*group_id);
                    }
                    ControlEntry::ReleaseChanged {
                        org_id,
                        group_id,
                        version,
                    } => {
                        self.registry
                            .set_release(org_id, *group_id, version.as_deref());
                    }
                    // Per-device entries: only the partitions holding the devices act on them.
                    ControlEntry::Pinned { .. }
                    | ControlEntry::Unpinned { .. }
                    | ControlEntry::StaticMembers { .. }
                    | ControlEntry::DeviceSettings { .. }
                    | ControlEntry::Reevaluate { .. } => {}
                }
                self.registry.position = entry.id;
                for state in self.partitions.values_mut() {
                    if entry.id > state.claim.control_position {
                        state.pending_control.push_back(entry.clone());
                    }
                }
            }
        }
    }

    /// Flushes every partition whose batch is due (or all with anything to do, when `all`).
    async fn flush_ready(&mut self, all: bool) {
        let now = self.clock.now();
        let max_events = self.config.worker.batch_max_events;
        let max_wait = Duration::from_millis(self.config.worker.batch_max_wait_ms);
        let due: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(id, state)| {
                let buffer = self.buffers.get(id);
                let full = buffer.is_some_and(|b| b.records.len() >= max_events);
                let old = buffer
                    .is_some_and(|b| b.first_at.is_some_and(|t| all || t.elapsed() >= max_wait));
                full || old
                    || !state.pending_control.is_empty()
                    || state.next_timer().is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for partition in due {
            self.flush_partition(partition).await;
        }
    }

    /// Computes the next batch of a partition and starts its commit. With a batch of the partition in
    /// flight, only a full batch is computed behind it, and only while the pipeline has room, no commit is
    /// failing, and no control entry waits (see the module's documentation).
    async fn flush_partition(&mut self, partition: i32) {
        let max_events = self.config.worker.batch_max_events;
        if let Some(queue) = self.in_flight.get(&partition) {
            let control = self
                .partitions
                .get(&partition)
                .is_some_and(|p| !p.pending_control.is_empty());
            let failing = queue.iter().any(|f| f.retrying.load(Ordering::SeqCst));
            let full = self
                .buffers
                .get(&partition)
                .is_some_and(|b| b.records.len() >= max_events);
            if queue.len() >= PIPELINE_DEPTH || control || failing || !full {
                return;
            }
        }
        let records: Vec<Record> = match self.buffers.get_mut(&partition) {
            Some(buffer) => {
                let take = buffer.records.len().min(max_events);
                let rest = buffer.records.split_off(take);
                let taken = std::mem::replace(&mut buffer.records, rest);
                let rest = buffer.accepted.split_off(take);
                let now = Instant::now();
                for at in std::mem::replace(&mut buffer.accepted, rest) {
                    self.status
                        .stages
                        .buffered
                        .record(now.duration_since(at).as_millis() as u64);
                }
                buffer.first_at = if buffer.records.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                taken
            }
            None => Vec::new(),
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let now = self.clock.now();
        let due = state.due_timers(now, max_events);
        let control: Vec<Positioned> = state.pending_control.iter().cloned().collect();
        if records.is_empty() && due.is_empty() && control.is_empty() {
            return;
        }
        let catalogue = self.registry.catalogue().clone();
        let decoded: Vec<_> = records
            .into_iter()
            .map(|r| {
                let d = event::decode(
                    r.key.as_deref(),
                    r.payload.as_deref(),
                    &catalogue,
                    self.config.worker.max_event_bytes,
                );
                (r, d)
            })
            .collect();
        self.start_batch(
            partition,
            BatchInputs {
                decoded,
                due,
                control,
                now,
            },
        )
        .await;
    }

    /// Computes a batch and spawns its commit. Reads the devices the batch names that the partition does not
    /// hold first (re-homed or new ones, and those a reconciliation asks to re-read), retrying with backoff.
    async fn start_batch(&mut self, partition: i32, inputs: BatchInputs) {
        let mut backoff = Backoff::from_config(&self.config);
        let foreign = loop {
            let Some(state) = self.partitions.get(&partition) else {
                return;
            };
            // Devices a reconciliation asks to re-evaluate are re-read too, so the batch starts from what
            // is stored and writes whatever differs from the rules.
            let reread = inputs.control.iter().flat_map(|e| match &e.entry {
                ControlEntry::Reevaluate { device_ids, .. } => device_ids
                    .iter()
                    .filter(|id| state.devices.contains_key(id.as_str()))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            });
            let mut unknown: Vec<String> = inputs
                .decoded
                .iter()
                .filter_map(|(_, d)| d.as_ref().ok())
                .filter(|e| !state.devices.contains_key(e.device_id.as_str()))
                .map(|e| e.device_id.clone())
                .chain(reread)
                .collect::<foldhash::HashSet<_>>()
                .into_iter()
                .collect();
            unknown.sort();
            if unknown.is_empty() {
                break foldhash::HashMap::default();
            }
            match stored::load_devices(&self.pool, &unknown).await {
                Ok((rows, memberships)) => {
                    let mut by_device: foldhash::HashMap<&str, Vec<&stored::StoredMembership>> =
                        foldhash::HashMap::default();
                    for mm in &memberships {
                        by_device.entry(mm.device_id.as_str()).or_default().push(mm);
                    }
                    let mut foreign = foldhash::HashMap::default();
                    for row in &rows {
                        let members = by_device
                            .get(row.id.as_str())
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        if let Some(device) = Device::from_stored(row, members, &mut self.registry)
                        {
                            foreign.insert(row.id.as_str().into(), device);
                        }
                    }
                    break foreign;
                }
                Err(e) => {
                    let kind = e.retry_kind();
                    metrics::counter!(m::COMMIT_FAILURES, "kind" => kind).increment(1);
                    let wait = backoff.step();
                    tracing::warn!(partition, error = %e, backoff_ms = wait.as_millis() as u64, "reading a batch's devices failed; retrying");
                    // Keep answering rebalances while waiting: a revoke abandons the batch.
                    if self.wait_or_revoked(partition, wait).await {
                        return;
                    }
                }
            }
        };
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let started = Instant::now();
        let ctx = BatchContext {
            input_topic: &self.config.kafka.input_topic,
            dead_letter_topic: &self.config.kafka.dead_letter_topic,
            max_event_bytes: self.config.worker.max_event_bytes,
            now: inputs.now,
            output_topic: &self.config.kafka.output_topic,
        };
        let mut computed = compute(
            &self.registry,
            state,
            &inputs.control,
            &inputs.decoded,
            &inputs.due,
            foreign,
            &ctx,
        );
        metrics::histogram!(m::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        let stages = &self.status.stages;
        let records = inputs.decoded.len() as u64;
        stages
            .compute
            .record_n(started.elapsed().as_millis() as u64, records);
        stages.batch_records.record(records);
        let mut write = std::mem::take(&mut computed.write);
        let positions = (write.next_offset, write.control_position);
        self.next_batch += 1;
        let id = self.next_batch;
        let retrying = Arc::new(AtomicBool::new(false));
        let queue = self.in_flight.entry(partition).or_default();
        let after = queue.back_mut().and_then(|f| f.committed.take());
        if after.is_some() {
            metrics::counter!(m::BATCHES_PIPELINED).increment(1);
            self.status
                .batches_pipelined
                .fetch_add(1, Ordering::Relaxed);
        }
        // A partition that keeps up trades some of its write capacity for commits that do not wait on the
        // next checkpoint's file syncs; one that is behind, or nearly, keeps all of it (docs/worker.md,
        // "PostgreSQL's write load").
        let flush_after_kb = self.config.worker.caught_up_flush_after_kb;
        if after.is_none()
            && writes_back(records as usize, self.config.worker.batch_max_events)
            && flush_after_kb > 0
        {
            write.flush_after_kb = Some(flush_after_kb);
            computed.stats.caught_up = true;
        }
        let (then, committed) = oneshot::channel();
        // The commit starts first: installing (rescheduling the devices' flips) overlaps it.
        let task = tokio::spawn(commit_with_retry(
            self.pool.clone(),
            write,
            CommitRetry {
                partition,
                id,
                backoff: Backoff::from_config(&self.config),
                retrying: retrying.clone(),
                done: self.completions_tx.clone(),
                status: self.status.clone(),
                records,
            },
            after,
            then,
        ));
        let undo = install(
            state,
            &self.registry,
            computed.devices,
            computed.reschedule_all,
            positions,
            inputs.control.len(),
            inputs.now,
        );
        queue.push_back(InFlight {
            id,
            task,
            retrying,
            committed: Some(committed),
            undo,
            stats: computed.stats,
            next_offset: positions.0,
            inputs,
        });
    }

    /// Waits for every batch of a partition in flight, oldest first, and acts on each outcome.
    async fn finish(&mut self, partition: i32) {
        while self.in_flight.contains_key(&partition) {
            self.finish_front(partition).await;
        }
    }

    /// Waits for a partition's oldest batch in flight and acts on the outcome: settles it (committed), drops
    /// the partition (fenced), or puts it and the batches after it back and recomputes them (a device
    /// conflict).
    async fn finish_front(&mut self, partition: i32) {
        let Some(queue) = self.in_flight.get_mut(&partition) else {
            return;
        };
        let flight = queue.pop_front();
        if queue.is_empty() {
            self.in_flight.remove(&partition);
        }
        let Some(flight) = flight else {
            return;
        };
        let outcome = match flight.task.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(partition, error = %e, "a batch commit task failed; dropping the partition");
                self.drop_partition(partition);
                return;
            }
        };
        let conflicted = match outcome {
            Outcome::Committed => {
                self.settle(
                    partition,
                    flight.next_offset,
                    &flight.stats,
                    &flight.inputs.decoded,
                );
                return;
            }
            Outcome::Failed(StoreError::Fenced { .. }) => {
                metrics::counter!(m::COMMIT_FAILURES, "kind" => "fenced").increment(1);
                tracing::warn!(partition, "partition fenced: another worker owns it now");
                self.drop_partition(partition);
                return;
            }
            Outcome::Failed(StoreError::DeviceConflict { devices }) => {
                metrics::counter!(m::COMMIT_FAILURES, "kind" => "device_conflict").increment(1);
                tracing::info!(
                    partition,
                    devices = devices.len(),
                    "devices changed under the batch; reloading them"
                );
                devices
            }
            // Not reached: the oldest batch waits for nothing.
            Outcome::Skipped => Vec::new(),
            Outcome::Failed(e) => {
                // `commit_with_retry` retries everything else; not reached.
                tracing::error!(partition, error = %e, "batch commit gave up; dropping the partition");
                self.drop_partition(partition);
                return;
            }
        };
        // Put back the batch and every one computed after it, newest first, then recompute them in order.
        let mut flights = vec![(flight.undo, flight.inputs)];
        for later in self.in_flight.remove(&partition).into_iter().flatten() {
            later.task.abort();
            flights.push((later.undo, later.inputs));
        }
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let mut recompute = Vec::with_capacity(flights.len());
        for (undo, inputs) in flights.into_iter().rev() {
            uninstall(state, undo, &inputs.control);
            recompute.push(inputs);
        }
        for id in &conflicted {
            state.devices.remove(id.as_str());
        }
        for inputs in recompute.into_iter().rev() {
            self.start_batch(partition, inputs).await;
        }
    }

    /// Finishes every batch in flight.
    async fn finish_all(&mut self) {
        let partitions: Vec<i32> = self.in_flight.keys().copied().collect();
        for partition in partitions {
            self.finish(partition).await;
        }
    }

    /// Sleeps for `backoff`, serving rebalance requests meanwhile. Returns true if `partition` was revoked.
    async fn wait_or_revoked(&mut self, partition: i32, backoff: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            let Some(mut rx) = self.rebalances.take() else {
                tokio::time::sleep_until(deadline).await;
                return false;
            };
            let request = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => None,
                r = rx.recv() => r,
            };
            self.rebalances = Some(rx);
            match request {
                None => return !self.partitions.contains_key(&partition),
                Some(RebalanceRequest::Revoke { partitions, reply }) => {
                    for p in &partitions {
                        self.drop_partition(*p);
                    }
                    let _ = reply.send(());
                    if partitions.contains(&partition) {
                        return true;
                    }
                }
                Some(assign @ RebalanceRequest::Assign { .. }) => {
                    Box::pin(self.rebalance(assign)).await;
                }
            }
        }
    }

    /// Records a committed batch: the offset Kafka may be told, metrics and counters.
    fn settle(
        &mut self,
        partition: i32,
        next_offset: i64,
        stats: &partition::Stats,
        decoded: &[(Record, Result<event::DeviceEvent, event::DecodeError>)],
    ) {
        if !self.partitions.contains_key(&partition) {
            return;
        }
        if let Ok(mut c) = self.shared.committed.lock() {
            c.insert(partition, next_offset);
        }
        metrics::counter!(m::BATCHES).increment(1);
        if stats.caught_up {
            metrics::counter!(m::BATCHES_CAUGHT_UP).increment(1);
            self.status.batches_caught_up.fetch_add(1, Ordering::SeqCst);
        }
        metrics::counter!(m::EVENTS, "outcome" => "applied").increment(stats.applied);
        metrics::counter!(m::EVENTS, "outcome" => "duplicate").increment(stats.duplicates);
        metrics::counter!(m::EVENTS, "outcome" => "stale").increment(stats.stale);
        metrics::counter!(m::EVENTS, "outcome" => "dead_letter")
            .increment(stats.dead_letters.len() as u64);
        for reason in &stats.dead_letters {
            metrics::counter!(m::DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
        }
        for (reason, n) in &stats.changes {
            metrics::counter!(m::MEMBERSHIP_CHANGES, "reason" => *reason).increment(*n);
        }
        metrics::counter!(m::GROUP_EVALUATIONS).increment(stats.groups_evaluated);
        metrics::counter!(m::EVENTS_WITHOUT_CANDIDATES).increment(stats.no_candidates);
        metrics::counter!(m::DEVICES_REHOMED).increment(stats.rehomed);
        metrics::counter!(m::CONTROL_ENTRIES).increment(stats.control_entries);
        metrics::counter!(m::TIMER_EVALUATIONS).increment(stats.timer_evaluations);
        metrics::counter!(m::ROLLOUT_EVENTS).increment(stats.rollouts);
        let wall = chrono::Utc::now().timestamp_millis();
        let latency = metrics::histogram!(m::EVENT_LATENCY_SECONDS);
        for (record, _) in decoded {
            if let Some(ts) = record.timestamp {
                let ms = (wall - ts).max(0);
                latency.record(ms as f64 / 1000.0);
                self.status.latency.record(ms as u64);
            }
        }
        self.status
            .devices_rehomed
            .fetch_add(stats.rehomed, Ordering::Relaxed);
        self.status
            .timer_evaluations
            .fetch_add(stats.timer_evaluations, Ordering::SeqCst);
        self.status
            .records_committed
            .fetch_add(decoded.len() as u64, Ordering::SeqCst);
        self.status.batches.fetch_add(1, Ordering::SeqCst);
    }

    fn report(&self) {
        self.status
            .partitions
            .store(self.partitions.len(), Ordering::SeqCst);
        metrics::gauge!(m::PARTITIONS_OWNED).set(self.partitions.len() as f64);
        metrics::gauge!(m::DEVICES_HELD).set(
            self.partitions
                .values()
                .map(|p| p.devices.len())
                .sum::<usize>() as f64,
        );
        // Read in place (no other code holds both locks): this runs on every turn of the pipeline's loop.
        let (Ok(marks), Ok(committed)) = (
            self.shared.high_watermarks.lock(),
            self.shared.committed.lock(),
        ) else {
            return;
        };
        for partition in self.partitions.keys() {
            if let (Some(high), Some(next)) = (marks.get(partition), committed.get(partition)) {
                metrics::gauge!(m::CONSUMER_LAG, "partition" => partition.to_string())
                    .set((high - next).max(0) as f64);
            }
        }
    }
}

/// Installs a computed batch in its partition's state: its devices (rescheduling their time flips), its
/// positions, and the control entries it applied taken off the queue. Returns what it replaced.
fn install(
    state: &mut Partition,
    registry: &Registry,
    devices: foldhash::HashMap<Box<str>, Box<Device>>,
    reschedule_all: bool,
    (next_offset, control_position): (i64, i64),
    control_applied: usize,
    now: EpochMillis,
) -> Undo {
    let undo_positions = (state.claim.next_offset, state.claim.control_position);
    state.claim.next_offset = next_offset;
    state.claim.control_position = control_position;
    for _ in 0..control_applied {
        state.pending_control.pop_front();
    }
    // Each touched device with its state before the batch (what a rollback restores). A held device's
    // entry keeps its key: only a device new to the partition needs a copy of its id.
    let touched: Vec<(Box<str>, Option<Box<Device>>)> = devices
        .into_iter()
        .map(|(id, device)| {
            let before = match state.devices.get_mut(&id) {
                Some(held) => Some(std::mem::replace(held, device)),
                None => {
                    state.devices.insert(id.clone(), device);
                    None
                }
            };
            (id, before)
        })
        .collect();
    if reschedule_all {
        let ids: Vec<Box<str>> = state.devices.keys().cloned().collect();
        for id in &ids {
            state.schedule(id, registry, now);
        }
    } else {
        for (id, _) in &touched {
            state.schedule(id, registry, now);
        }
    }
    Undo {
        devices: touched,
        next_offset: undo_positions.0,
        control_position: undo_positions.1,
    }
}

/// Puts back what [`install`] replaced: the devices as they were, the positions, and `control` (the entries
/// the batch applied) at the head of the queue. A restored device's flip is pushed again, in case its timer
/// was taken while the batch's state was installed (a duplicate timer is harmless: the device is due once).
fn uninstall(state: &mut Partition, undo: Undo, control: &[Positioned]) {
    state.claim.next_offset = undo.next_offset;
    state.claim.control_position = undo.control_position;
    for entry in control.iter().rev() {
        state.pending_control.push_front(entry.clone());
    }
    for (id, before) in undo.devices {
        match before {
            Some(device) => {
                if let Some(at) = device.next_flip() {
                    state.timers.push(std::cmp::Reverse((at, id.clone())));
                }
                state.devices.insert(id, device);
            }
            None => {
                state.devices.remove(&id);
            }
        }
    }
}

/// What to do with a polled record.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Polled under the partition's current assignment: process it.
    Accept,
    /// Polled under an older assignment: drop it quietly (the current owner re-reads it).
    Stale,
    /// From a partition this worker neither owns nor owned when the record was polled: an error.
    NotOwned,
}

/// Classifies a record polled under `generation`, given whether the worker owns the partition, the
/// generation of its current assignment, and the one it had when last revoked. Records polled before a
/// revoke can still be in the channel when it is handled; they are stale, not an error (under rebalances
/// they came by the thousand, each logged as an error).
fn disposition(
    owned: bool,
    current: Option<u64>,
    revoked: Option<u64>,
    generation: u64,
) -> Disposition {
    if owned {
        if current == Some(generation) {
            Disposition::Accept
        } else {
            Disposition::Stale
        }
    } else if revoked.is_some_and(|revoked| generation <= revoked) {
        Disposition::Stale
    } else {
        Disposition::NotOwned
    }
}

#[cfg(test)]
mod tests {
    use super::{disposition, writes_back, Disposition};

    #[test]
    fn only_small_caught_up_batches_write_back() {
        // The default limit of 1,000: up to 250 records.
        assert!(writes_back(1, 1000));
        assert!(writes_back(250, 1000));
        assert!(!writes_back(251, 1000));
        assert!(!writes_back(999, 1000));
        assert!(!writes_back(1000, 1000));
        // Small limits still write back a batch of one, but never a full batch.
        assert!(writes_back(1, 2));
        assert!(!writes_back(2, 2));
        assert!(writes_back(1, 3));
        assert!(!writes_back(1, 1));
        assert!(writes_back(2, 8));
        assert!(!writes_back(3, 8));
    }

    /// A batch computed on the state of one that did not commit never writes: its task ends without
    /// touching the database (this pool points at a closed port, so an attempt would retry, not end).
    #[tokio::test]
    async fn a_batch_whose_predecessor_did_not_commit_is_not_attempted() {
        use super::*;
        let config =
            Config::load_from(None, Vec::<(String, String)>::new()).expect("defaults load");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let (predecessor, after) = oneshot::channel::<()>();
        drop(predecessor);
        let (then, committed) = oneshot::channel();
        let (done, mut completions) = mpsc::unbounded_channel();
        let retry = CommitRetry {
            partition: 0,
            id: 2,
            backoff: Backoff::from_config(&config),
            retrying: Arc::new(AtomicBool::new(false)),
            done,
            status: Arc::new(Status::default()),
            records: 1,
        };
        let task = commit_with_retry(
            pool,
            store::batch::BatchWrite::default(),
            retry,
            Some(after),
            then,
        );
        // A guard against a hang (an attempted commit retries forever), not a timing assertion.
        let outcome = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the task ends without attempting the commit");
        assert!(matches!(outcome, Outcome::Skipped));
        assert!(committed.await.is_err(), "no success signal");
        assert!(completions.try_recv().is_err(), "no completion announced");
    }

    #[test]
    fn a_record_of_the_current_assignment_is_accepted() {
        assert_eq!(disposition(true, Some(3), None, 3), Disposition::Accept);
        assert_eq!(disposition(true, Some(5), Some(3), 5), Disposition::Accept);
    }

    #[test]
    fn a_record_polled_before_its_partition_was_revoked_or_reassigned_is_stale_not_an_error() {
        // Revoked at generation 3, not owned now: a record polled under 3 (or earlier) is stale.
        assert_eq!(disposition(false, None, Some(3), 3), Disposition::Stale);
        assert_eq!(disposition(false, None, Some(3), 2), Disposition::Stale);
        // Owned again under 5: a record of 3 is stale too.
        assert_eq!(disposition(true, Some(5), Some(3), 3), Disposition::Stale);
    }

    #[test]
    fn a_record_of_a_partition_not_owned_when_it_was_polled_is_an_error() {
        assert_eq!(disposition(false, None, None, 1), Disposition::NotOwned);
        assert_eq!(disposition(false, None, Some(3), 4), Disposition::NotOwned);
    }
}
