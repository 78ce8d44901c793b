//! The pipeline's state: what the run loop and every stage work on — the registry, the owned partitions
//! with the records buffered for them, and their batches in flight, each with what it was computed from
//! and what puts its changes back.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::clock::Clock;
use super::compute::touched::TouchedDevices;
use super::compute::Stats;
use super::partition::Partition;
use super::registry::Registry;
use super::status::Status;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::kafka::{Decoded, RebalanceRequest, Shared};
use crate::rules::EpochMillis;
use crate::store::control::Positioned;
use crate::store::StoreError;

/// The rebalance requests from the poller's callback.
pub(crate) type Rebalances = mpsc::UnboundedReceiver<RebalanceRequest>;

/// The pipeline's state: the registry, the owned partitions with their buffers and batches in flight.
pub(crate) struct Pipeline {
    pub(super) config: Config,
    /// Every read and batch goes through it.
    pub(super) pool: PgPool,
    /// Every org's group definitions and releases, as far as the control log's `registry.position`.
    pub(super) registry: Registry,
    /// The owned partitions' state.
    pub(super) partitions: HashMap<i32, Partition>,
    /// The assignment generation each owned partition was assigned under: records polled under another
    /// are stale.
    pub(super) generations: HashMap<i32, u64>,
    /// The assignment generation each partition had when it was last dropped: records polled under it (or
    /// earlier) and delivered after the revoke are stale, not records of a partition never owned.
    pub(super) revoked: HashMap<i32, u64>,
    /// Records accepted and not yet in a batch, per partition.
    pub(super) buffers: HashMap<i32, Buffer>,
    /// Where the time is read.
    pub(super) clock: Arc<dyn Clock>,
    /// What the worker lets others observe.
    pub(super) status: Arc<Status>,
    /// The partitions held, published for previews once loaded.
    pub(super) view: super::view::FleetView,
    /// What the poller and the pipeline share: committed offsets, high watermarks, the stop flag.
    pub(super) shared: Arc<Shared>,
    /// This worker's name in the partitions' claims.
    pub(super) owner: String,
    /// Set when the control log may have entries not read yet (a notification, or a listener restart).
    pub(super) control_dirty: bool,
    /// Each partition's batches computed and not yet settled, oldest first (at most
    /// [`PIPELINE_DEPTH`]): the first is committing, the next waits for it.
    /// A partition with none has no entry.
    pub(super) in_flight: HashMap<i32, VecDeque<InFlight>>,
    /// Numbers batches, so that a completion is matched to the batch that sent it.
    pub(super) next_batch: u64,
    /// Commit tasks announce (partition, batch) here when they end (`Channels::completions`).
    pub(super) completions_tx: mpsc::UnboundedSender<Completion>,
}

impl Pipeline {
    /// Retries a database operation with capped exponential backoff until it succeeds or fails for a
    /// non-transient reason.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
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
}

/// A partition's records accepted and not yet in a batch.
pub(crate) struct Buffer {
    /// The records, decoded, in offset order.
    pub(super) records: Vec<Decoded>,
    /// When each record was taken from the poller (parallel to `records`).
    pub(super) accepted: Vec<Instant>,
    /// When the oldest record buffered was taken: the batch closes `worker.batch_max_wait_ms` after.
    pub(super) first_at: Option<Instant>,
}

/// What a batch is computed from; kept while it commits, to recompute it after a device conflict.
pub(crate) struct BatchInputs {
    /// The input records, decoded, in offset order.
    pub(super) records: Vec<Decoded>,
    /// The devices whose time flips came due.
    pub(super) due: Vec<Box<str>>,
    /// The control-log entries the partition had still to apply.
    pub(super) control: Vec<Positioned>,
    /// The instant the batch is evaluated at.
    pub(super) now: EpochMillis,
}

/// How many batches of one partition may be in flight: one committing and one computed on the state it
/// leaves, waiting to commit right after it. A third would only add latency: computing a batch takes less
/// time than committing one.
pub(super) const PIPELINE_DEPTH: usize = 2;

/// A batch whose commit runs on its own task. Its state is already installed in the partition; `undo`
/// puts it back if the commit does not succeed.
pub(crate) struct InFlight {
    /// The batch's number (see [`Completion`]).
    pub(super) id: u64,
    /// The commit task.
    pub(super) task: tokio::task::JoinHandle<Outcome>,
    /// Set while the task waits to retry a failed commit (nothing of the batch is written then).
    pub(super) retrying: Arc<AtomicBool>,
    /// Resolves when this batch has committed: the partition's next batch waits on it before committing.
    pub(super) committed: Option<oneshot::Receiver<()>>,
    /// What puts the batch's changes back.
    pub(super) undo: Undo,
    /// What the batch did, recorded as metrics once it commits.
    pub(super) stats: Stats,
    /// The partition's next input offset once the batch commits (what Kafka may be told).
    pub(super) next_offset: i64,
    /// What the batch was computed from, to recompute it after a device conflict.
    pub(super) inputs: BatchInputs,
}

/// What puts back a batch's changes to its partition's state.
pub(crate) struct Undo {
    /// Each device the batch touched, with what it started from.
    pub(super) devices: TouchedDevices,
    /// The partition's positions before the batch.
    pub(super) next_offset: i64,
    pub(super) control_position: i64,
    /// How many control entries the batch took off the queue.
    pub(super) control_applied: usize,
    /// The definition change under way before the batch.
    pub(super) sweep: Option<super::partition::Sweep>,
}

/// How a commit task ended.
pub(crate) enum Outcome {
    Committed,
    Failed(StoreError),
    /// Not attempted: the partition's previous batch did not commit.
    Skipped,
}

/// A commit task's announcement that it ended.
pub(crate) struct Completion {
    pub(super) partition: i32,
    /// The batch's number.
    pub(super) id: u64,
    /// When the task ended.
    pub(super) at: Instant,
    /// Input records in the batch.
    pub(super) records: u64,
}
