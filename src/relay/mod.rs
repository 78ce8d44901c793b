//! The outbox relay: publishes the committed rows of the transactional `outbox` table (rollout-target
//! events and dead letters) to Kafka exactly as written, and marks them published. The table's statements
//! are in [`crate::store::outbox`]; this module decides when to run them and produces what they read.
//!
//! # A round
//! 1. Read up to `relay.batch_size` unpublished rows in id order
//!    ([`fetch_unpublished`](crate::store::outbox::fetch_unpublished)), each as its
//!    [`outbox::Message`](crate::outbox::Message).
//! 2. Produce them with an idempotent producer (`enable.idempotence`, `acks=all`, at most 5 requests in
//!    flight, and the `murmur2_random` partitioner of the input contract, so a key lands on the partition a
//!    Java client would choose). Key, value and headers are the message's (header values as their UTF-8
//!    bytes, a header without a value as such), plus [`HEADER_OUTBOX_ID`] = the row id in decimal.
//! 3. Produce in *waves*: a wave holds at most one row per (topic, key) (keyless rows all go in the first);
//!    the next wave is produced only once every delivery report of the previous one has arrived. When a
//!    row fails, the later rows of its key are held back for the rest of the round.
//! 4. Mark the delivered rows published
//!    ([`mark_published`](crate::store::outbox::mark_published)).
//!
//! # Guarantee
//! **At-least-once delivery with stable ids.** A row is marked published only after the broker
//! acknowledged it with `acks=all`. No row is ever skipped: a failed delivery leaves it unpublished and it
//! is retried, with capped exponential backoff with jitter ([`crate::backoff`],
//! `worker.retry_initial_backoff_ms` … `retry_max_backoff_ms`), until it is delivered. A row can be *sent
//! more than once* — the relay stopped between the broker's acknowledgement and the `UPDATE`, the `UPDATE`
//! failed, or a delivery reported as timed out had in fact been written — and every copy carries the same [`HEADER_OUTBOX_ID`], so consumers
//! de-duplicate by it.
//!
//! **Per-key order.** For each (topic, key), every copy of a row in the partition is preceded by at least
//! one copy of every earlier row of that key. So a consumer that keeps the first copy of each
//! `cohort-outbox-id` sees each key's rows exactly once, in id order, with no gaps (as long as the topic's
//! partition count does not change, which would move the key to another partition). Why:
//! - *Id order is commit order, per key.* The rows of one key are written by one writer at a time — the
//!   worker that owns the device's partition, which commits its batches one after another (fenced) — and
//!   within a transaction ids follow insertion order. So when the relay can see a row, every earlier row of
//!   its key is committed and visible. (Rows of *different* keys can commit out of id order, and a lower id
//!   may then be published after a higher one; that is harmless, since order is only promised per key.)
//! - *No row is in flight with an earlier row of its key.* This is what the waves are for. The idempotent
//!   producer keeps per-partition order across its own retries, but not across a message that *fails*: one
//!   that times out in the queue (broker down longer than `message.timeout.ms`) leaves a gap while later
//!   messages of the partition are still written (librdkafka's INTRODUCTION, "Message timeout
//!   considerations"). If a later row of the same key had been in flight beside it, it would overtake the
//!   failed one. With waves it never is, and after a failure the key's later rows are not produced at all
//!   that round.
//! - *Re-sends come after the first copy.* A row delivered but not marked is read again in a later round,
//!   together with everything after it, and produced again in id order — behind the first copy.
//! - *It does not depend on there being one relay.* Each relay produces a key's rows in id order and only
//!   after the earlier ones were acknowledged (by itself in an earlier wave, or by whichever relay marked
//!   them before this one read). So two relays overlapping — a leader that lost its lease to a network
//!   partition while still producing — can only add duplicates, never reorder the de-duplicated stream.
//!
//! Rows without a key go to a random partition (`murmur2_random`) and have no order; they are delivered at
//! least once like the others.
//!
//! A row that can never be delivered (larger than the broker accepts, a topic that does not exist with
//! auto-creation off, no authorisation) is retried forever too: it holds back its key, and if such rows
//! fill a whole batch, the relay. `cohort_relay_publish_failures_total`, the backlog and the oldest-age
//! gauges show it, and the log says why. Dropping a dead letter or a rollout event silently would be worse.
//!
//! # Several relays: a leader lease
//! Every worker process runs a relay by default (`worker.embedded_relay`), so several run at once. Only the
//! holder of a session-level PostgreSQL advisory lock ([`LEASE_KEY`], `pg_try_advisory_lock`) publishes;
//! the others are standbys that try to take it every `relay.poll_interval_ms` (within 1–10 s). Chosen over
//! `SELECT … FOR UPDATE SKIP LOCKED` because skipping lets two relays take disjoint batches, so one could
//! publish a key's row 9 while the other still holds its row 5 (breaking per-key order), and because it
//! holds row locks and a transaction open across Kafka round trips (for minutes while a broker is down).
//! The lease keeps the global id order, and one relay is plenty: a round is one read, a few acknowledged
//! produce waves and one update.
//!
//! The lease lives on a dedicated connection, and the leader does *all* its database work on that same
//! connection: when the connection fails, the lease and the work stop together (the connection is dropped
//! and the relay becomes a standby). PostgreSQL releases the lock when the session ends, so a crashed
//! leader's lease frees itself. (A network partition can leave the old leader producing for a moment while
//! a new one takes over; see above: duplicates at worst.)
//!
//! # Wake-ups
//! The worker's batch transaction sends `NOTIFY cohort_outbox` when it writes outbox rows
//! ([`crate::store::batch::commit`]); the leader `LISTEN`s on [`CHANNEL`] and also polls every
//! `relay.poll_interval_ms`, so a missed notification only delays. A full batch is followed at once by the
//! next round.
//!
//! # Retention, counts and metrics
//! Once a minute the leader deletes published rows older than `relay.retention_hours`, in batches of
//! [`RETENTION_BATCH`] rows, and folds the group member counts ([`crate::store::counts::fold`]): the relay
//! leader is the one process that runs periodic upkeep, and the fold needs only one runner. Every relay (leader or standby) reports the backlog and the age of the oldest
//! unpublished row at most once a second; see [`crate::metrics`] for the `cohort_relay_*` metrics.
//!
//! # Bounds
//! Every blocking call has a limit: database statements [`DATABASE_TIMEOUT`], connecting
//! `database.connect_timeout_ms`, deliveries `message.timeout.ms` (30 s unless set in `[kafka.properties]`)
//! plus [`DELIVERY_MARGIN`], and shutdown `worker.shutdown_deadline_ms`. The relay opens its own two
//! connections (the lease, and the listener) from the pool's settings, so it never takes a slot from the
//! worker's pool.
//!
//!
//! # Layout
//! This file holds the run loop, the lease and the shutdown; `round` one round's reading, producing and
//! marking; `waves` the order rows are produced in; `upkeep` the backlog gauges, retention and the count
//! fold.

mod round;
#[cfg(test)]
mod tests;
mod upkeep;
mod waves;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::kafka::client::{client_config, Role, RELAY_MESSAGE_TIMEOUT_MS};
use crate::metrics as m;
use crate::store::outbox as store;
use crate::store::StoreError;

pub use crate::store::outbox::{CHANNEL, LEASE_KEY};

/// Header carrying the outbox row id (decimal), identical on every copy of a re-sent row.
pub const HEADER_OUTBOX_ID: &str = "cohort-outbox-id";
/// Limit on one database statement of the relay.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past `message.timeout.ms` the relay waits for delivery reports before counting a message as
/// failed (librdkafka reports every message within its timeout; this only guards against a stuck client).
pub const DELIVERY_MARGIN: Duration = Duration::from_secs(5);
/// Published rows deleted per retention statement: small, so the deletion never holds many locks or a long
/// transaction.
pub const RETENTION_BATCH: i64 = 1000;
/// Most retention statements per pass, so a large backlog of expired rows does not delay publishing.
const RETENTION_BATCHES_PER_PASS: usize = 10;
/// How often the leader deletes expired rows.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// How often the leader folds the group member counts ([`crate::store::counts::fold`]).
const FOLD_INTERVAL: Duration = Duration::from_secs(60);
/// How often the backlog gauges are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest and longest interval between a standby's attempts to take the lease (the poll interval,
/// within these bounds).
const MIN_LEASE_RETRY: Duration = Duration::from_secs(1);
const MAX_LEASE_RETRY: Duration = Duration::from_secs(10);
/// Used to bound the wait for delivery reports when `message.timeout.ms` is 0 (librdkafka: infinite).
const UNBOUNDED_MESSAGE_WAIT: Duration = Duration::from_secs(300);

/// Why a relay operation failed. Every variant but [`RelayError::Producer`] is transient: the relay loop
/// retries it with backoff and [`Relay::drain_once`] callers may simply call again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A database call failed (classified by [`StoreError`]); the lease connection is dropped with it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A database call did not finish in time; the lease connection is dropped with it.
    #[error("database call to {what} timed out after {after:?}")]
    DatabaseTimeout {
        /// What the call was for.
        what: &'static str,
        /// The limit that passed.
        after: Duration,
    },
    /// Another relay holds the publishing lease; this one is a standby.
    #[error("another relay holds the outbox publishing lease")]
    NotLeader,
    /// Some rows were not delivered in this round. The delivered ones were marked; the others stay
    /// unpublished and are sent again (same `cohort-outbox-id`) by a later round.
    #[error(
        "{failed} outbox message(s) failed and {held_back} were held back behind them \
         ({delivered} delivered): {error}"
    )]
    Undelivered {
        /// Rows delivered (and marked) before the failure.
        delivered: usize,
        /// Deliveries that failed.
        failed: usize,
        /// Rows not produced because an earlier row of their key failed.
        held_back: usize,
        /// The first delivery error.
        #[source]
        error: KafkaError,
    },
    /// The producer could not be created (bad `[kafka.properties]`).
    #[error("cannot create the kafka producer: {0}")]
    Producer(#[source] KafkaError),
}

impl RelayError {
    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RelayError::Store(e) => e.is_transient(),
            RelayError::DatabaseTimeout { .. }
            | RelayError::NotLeader
            | RelayError::Undelivered { .. } => true,
            RelayError::Producer(_) => false,
        }
    }
}

/// Observable relay state, for readiness, the demo and tests.
#[derive(Debug, Default)]
pub struct RelayStatus {
    /// Whether this relay holds the publishing lease now.
    pub leader: AtomicBool,
    /// Messages delivered so far (a re-sent row counts again).
    pub delivered: AtomicU64,
    /// Deliveries that failed so far (each is retried).
    pub failed: AtomicU64,
    /// Rounds completed (read, produce, mark), whatever their outcome.
    pub rounds: AtomicU64,
}

/// How long to wait for a message's delivery report under `config`.
fn delivery_wait(config: &ClientConfig) -> Duration {
    let timeout_ms = config
        .get("delivery.timeout.ms")
        .or_else(|| config.get("message.timeout.ms"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(RELAY_MESSAGE_TIMEOUT_MS);
    if timeout_ms == 0 {
        UNBOUNDED_MESSAGE_WAIT
    } else {
        Duration::from_millis(timeout_ms) + DELIVERY_MARGIN
    }
}

/// The settings the relay reads from [`Config`].
#[derive(Clone, Debug)]
struct Settings {
    batch_size: usize,
    poll_interval: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    shutdown_deadline: Duration,
    connect_timeout: Duration,
    retention_hours: u64,
    delivery_wait: Duration,
}

/// What the relay holds between rounds; behind a mutex so [`Relay::drain_once`] can take `&self`.
struct State {
    /// The dedicated connection: holds the lease when `leader`, else kept for the next attempt.
    conn: Option<PgConnection>,
    /// Whether `conn` holds the advisory lock.
    leader: bool,
    /// The idempotent producer (re-created if it hits a fatal error).
    producer: FutureProducer,
    /// When the backlog gauges were last refreshed.
    last_stats: Option<Instant>,
    /// When the leader next deletes expired rows.
    next_retention: Instant,
    /// When the leader next folds the group member counts.
    next_fold: Instant,
}

/// The outbox relay. Build it with [`Relay::build`], then either run it ([`Relay::run_until_stopped`]) or
/// drive it by hand ([`Relay::drain_once`]).
pub struct Relay {
    settings: Settings,
    /// Settings of the relay's own connections (the pool's, named `cohort-relay`).
    connect: PgConnectOptions,
    /// To re-create the producer after a fatal error.
    producer_config: ClientConfig,
    state: tokio::sync::Mutex<State>,
    status: Arc<RelayStatus>,
}

impl Relay {
    /// Prepares a relay: creates the producer (which connects lazily) and takes its connection settings from
    /// `pool`. Nothing touches the database until the relay runs.
    pub fn build(config: &Config, brokers: String, pool: PgPool) -> Result<Self, RelayError> {
        let producer_config = client_config(&config.kafka, &brokers, Role::Relay);
        let producer: FutureProducer = producer_config.create().map_err(RelayError::Producer)?;
        metrics::gauge!(m::RELAY_LEADER).set(0.0);
        let connect = (*pool.connect_options())
            .clone()
            .application_name("cohort-relay");
        let settings = Settings {
            batch_size: config.relay.batch_size.max(1),
            poll_interval: Duration::from_millis(config.relay.poll_interval_ms.max(1)),
            initial_backoff: Duration::from_millis(config.worker.retry_initial_backoff_ms.max(1)),
            max_backoff: Duration::from_millis(config.worker.retry_max_backoff_ms.max(1)),
            shutdown_deadline: Duration::from_millis(config.worker.shutdown_deadline_ms),
            connect_timeout: Duration::from_millis(config.database.connect_timeout_ms.max(1)),
            retention_hours: config.relay.retention_hours.max(1),
            delivery_wait: delivery_wait(&producer_config),
        };
        Ok(Self {
            settings,
            connect,
            producer_config,
            state: tokio::sync::Mutex::new(State {
                conn: None,
                leader: false,
                producer,
                last_stats: None,
                next_retention: Instant::now(),
                next_fold: Instant::now(),
            }),
            status: Arc::new(RelayStatus::default()),
        })
    }

    /// The relay's observable status.
    pub fn status(&self) -> Arc<RelayStatus> {
        self.status.clone()
    }

    /// Publishes every row unpublished at the time of the call, round after round, and returns how many
    /// messages were delivered. Takes the lease first ([`RelayError::NotLeader`] if another relay holds it)
    /// and keeps it until the relay is dropped. Stops at the first round with a failed delivery
    /// ([`RelayError::Undelivered`]), having marked what was delivered.
    pub async fn drain_once(&self) -> Result<usize, RelayError> {
        let mut state = self.state.lock().await;
        self.acquire_lease(&mut state).await?;
        let result = self.drain(&mut state).await;
        self.maintain(&mut state, true).await;
        result
    }

    /// Deletes published rows older than `relay.retention_hours` now (the run loop does it once a
    /// minute), returning how many. Takes the lease like [`Relay::drain_once`].
    pub async fn expire_published(&self) -> Result<u64, RelayError> {
        let mut state = self.state.lock().await;
        self.acquire_lease(&mut state).await?;
        self.expire(&mut state, usize::MAX).await
    }

    /// Publishes until `shutdown` resolves: as leader, a round per notification or poll interval (at once
    /// after a full batch, after a backoff after a failure); as standby, an attempt to take the lease every
    /// `relay.poll_interval_ms` (within 1–10 s). On shutdown it lets the current round finish, publishes
    /// what is left (the worker's last batches) and releases the lease, all within
    /// `worker.shutdown_deadline_ms`; rows it could not mark are re-sent by the next relay. Failures are
    /// logged and retried, never returned.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let lease_retry = self
            .settings
            .poll_interval
            .clamp(MIN_LEASE_RETRY, MAX_LEASE_RETRY);
        let mut backoff = Backoff::new(self.settings.initial_backoff, self.settings.max_backoff);
        let mut listener: Option<PgListener> = None;
        let mut next_listen_attempt = Instant::now();
        tracing::info!(
            batch_size = self.settings.batch_size,
            poll_interval_ms = self.settings.poll_interval.as_millis() as u64,
            "relay started"
        );
        loop {
            let step = self.step();
            tokio::pin!(step);
            let outcome = tokio::select! {
                outcome = &mut step => outcome,
                _ = &mut shutdown => {
                    let until = Instant::now() + self.settings.shutdown_deadline;
                    if tokio::time::timeout_at(until, step).await.is_err() {
                        tracing::warn!("shutdown deadline passed during a relay round; unmarked rows will be re-sent");
                    }
                    self.finish(until).await;
                    return Ok(());
                }
            };
            let wait = match outcome {
                Step::More => {
                    backoff.reset();
                    continue;
                }
                Step::Idle => {
                    backoff.reset();
                    self.settings.poll_interval
                }
                Step::Standby => {
                    backoff.reset();
                    listener = None;
                    lease_retry
                }
                Step::Failed => backoff.step(),
            };
            if matches!(outcome, Step::Idle)
                && listener.is_none()
                && Instant::now() >= next_listen_attempt
            {
                listener = self.listen().await;
                next_listen_attempt = Instant::now() + lease_retry;
            }
            let listening = matches!(outcome, Step::Idle) && listener.is_some();
            tokio::select! {
                _ = &mut shutdown => {
                    self.finish(Instant::now() + self.settings.shutdown_deadline).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
                notified = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                }, if listening => {
                    if let Err(e) = notified {
                        tracing::warn!(error = %e, "outbox listener interrupted; polling until it is back");
                        listener = None;
                    }
                }
            }
        }
    }

    /// One pass of the run loop.
    async fn step(&self) -> Step {
        let mut state = self.state.lock().await;
        if !state.leader {
            match self.acquire_lease(&mut state).await {
                Ok(()) => {}
                Err(RelayError::NotLeader) => {
                    self.maintain(&mut state, false).await;
                    return Step::Standby;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the outbox publishing lease; retrying");
                    return Step::Failed;
                }
            }
        }
        let result = self.round(&mut state, i64::MAX).await;
        self.maintain(&mut state, false).await;
        match result {
            Ok(round) => match round.failure(0) {
                None if round.read >= self.settings.batch_size => Step::More,
                None => Step::Idle,
                Some(e) => {
                    tracing::warn!(error = %e, "outbox messages not delivered; retrying");
                    Step::Failed
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "relay round failed; retrying");
                Step::Failed
            }
        }
    }

    /// After shutdown: publish what is left if leader, then release the lease, by `until`.
    async fn finish(&self, until: Instant) {
        let work = async {
            let mut state = self.state.lock().await;
            if state.leader {
                match self.drain(&mut state).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(published = n, "published the remaining outbox rows")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "could not publish every remaining outbox row; the next relay will")
                    }
                }
            }
            if let Some(conn) = state.conn.take() {
                // Closing the session releases the lease at once (dropping would too, once the server notices).
                let _ = conn.close().await;
            }
            self.set_leader(&mut state, false);
        };
        if tokio::time::timeout_at(until, work).await.is_err() {
            tracing::warn!("shutdown deadline passed while the relay was finishing");
        }
        tracing::info!("relay stopped");
    }

    /// Rounds until nothing unpublished at the start is left, stopping at the first failed delivery.
    async fn drain(&self, state: &mut State) -> Result<usize, RelayError> {
        let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
        let result = bounded("find the newest outbox row", store::newest_id(conn)).await;
        let Some(up_to) = self.check(state, result)? else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let round = self.round(state, up_to).await?;
            total += round.delivered.len();
            if let Some(error) = round.failure(total) {
                return Err(error);
            }
            if round.read < self.settings.batch_size {
                return Ok(total);
            }
        }
    }

    /// Connects if needed and tries to take the lease.
    async fn acquire_lease(&self, state: &mut State) -> Result<(), RelayError> {
        if state.leader && state.conn.is_some() {
            return Ok(());
        }
        if state.conn.is_none() {
            let connect = PgConnection::connect_with(&self.connect);
            let conn = match tokio::time::timeout(self.settings.connect_timeout, connect).await {
                Ok(conn) => conn.map_err(StoreError::from)?,
                Err(_) => {
                    return Err(RelayError::DatabaseTimeout {
                        what: "connect",
                        after: self.settings.connect_timeout,
                    })
                }
            };
            state.conn = Some(conn);
        }
        let conn = state.conn.as_mut().expect("connected above");
        let result = bounded("take the lease", store::try_take_lease(conn)).await;
        if self.check(state, result)? {
            self.set_leader(state, true);
            tracing::info!("took the outbox publishing lease: this relay publishes");
            Ok(())
        } else {
            Err(RelayError::NotLeader)
        }
    }

    fn set_leader(&self, state: &mut State, leader: bool) {
        state.leader = leader;
        self.status.leader.store(leader, Ordering::SeqCst);
        metrics::gauge!(m::RELAY_LEADER).set(if leader { 1.0 } else { 0.0 });
    }

    /// Passes `result` through; on an error, drops the connection (and with it the lease), since its state
    /// is unknown after a failure or a timeout.
    fn check<T>(&self, state: &mut State, result: Result<T, RelayError>) -> Result<T, RelayError> {
        if let Err(e) = &result {
            if state.conn.take().is_some() && state.leader {
                tracing::warn!(error = %e, "dropped the lease connection after a database error");
            }
            self.set_leader(state, false);
        }
        result
    }

    /// A listener for [`CHANNEL`] on a connection of its own (a one-connection pool, so the listener can
    /// reconnect without touching the worker's pool).
    async fn listen(&self) -> Option<PgListener> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.settings.connect_timeout)
            .connect_lazy_with(self.connect.clone());
        let listen = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.settings.connect_timeout + DATABASE_TIMEOUT, listen).await {
            Ok(Ok(listener)) => Some(listener),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for outbox notifications; polling");
                None
            }
            Err(_) => {
                tracing::warn!("timed out listening for outbox notifications; polling");
                None
            }
        }
    }
}

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A full batch was published: there may be more, go on at once.
    More,
    /// Everything was published: wait for a notification or the poll interval.
    Idle,
    /// Another relay publishes: try to take the lease later.
    Standby,
    /// Something failed: back off.
    Failed,
}

/// Awaits a database call for at most [`DATABASE_TIMEOUT`].
async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout(DATABASE_TIMEOUT, call).await {
        Ok(result) => result.map_err(RelayError::Store),
        Err(_) => Err(RelayError::DatabaseTimeout {
            what,
            after: DATABASE_TIMEOUT,
        }),
    }
}
