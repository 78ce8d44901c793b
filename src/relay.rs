//! The outbox relay: publishes the committed rows of the transactional `outbox` table (dead letters now,
//! rollout-target events later) to Kafka exactly as written, and marks them published.
//!
//! # A round
//! 1. Read up to `relay.batch_size` unpublished rows `ORDER BY id` (served by the partial index
//!    `outbox_unpublished_idx`).
//! 2. Produce them with an idempotent producer (`enable.idempotence`, `acks=all`, at most 5 requests in
//!    flight, and the `murmur2_random` partitioner of the input contract, so a key lands on the partition a
//!    Java client would choose). Key = `message_key`, value = `payload`, headers = the `headers` object
//!    (string values as their UTF-8 bytes, `null` as a header without a value, anything else as its JSON
//!    text), plus [`HEADER_OUTBOX_ID`] = the row id in decimal.
//! 3. Produce in *waves*: a wave holds at most one row per (topic, key) (keyless rows all go in the first);
//!    the next wave is produced only once every delivery report of the previous one has arrived. When a
//!    row fails, the later rows of its key are held back for the rest of the round.
//! 4. `UPDATE outbox SET published_at = now() WHERE id = ANY(<delivered ids>)`.
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
//! # Retention and metrics
//! Once a minute the leader deletes published rows older than `relay.retention_hours`, in batches of
//! [`RETENTION_BATCH`] rows. Every relay (leader or standby) reports the backlog and the age of the oldest
//! unpublished row at most once a second; see [`crate::metrics`] for the `cohort_relay_*` metrics.
//!
//! # Bounds
//! Every blocking call has a limit: database statements [`DATABASE_TIMEOUT`], connecting
//! `database.connect_timeout_ms`, deliveries `message.timeout.ms` (30 s unless set in `[kafka.properties]`)
//! plus [`DELIVERY_MARGIN`], and shutdown `worker.shutdown_deadline_ms`. The relay opens its own two
//! connections (the lease, and the listener) from the pool's settings, so it never takes a slot from the
//! worker's pool.
//!
//! Why this file is over 800 lines: the relay's run loop, its publishing and its outbox bookkeeping still
//! share this file; the outbox SQL is to move into the storage module and the outgoing message to become one
//! type shared with the worker, which will leave the loop alone here.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::kafka::client::{client_config, Role, RELAY_MESSAGE_TIMEOUT_MS};
use crate::metrics as m;
use crate::store::StoreError;

/// The NOTIFY channel the worker's batch transaction signals when it writes outbox rows.
pub const CHANNEL: &str = "cohort_outbox";
/// Header carrying the outbox row id (decimal), identical on every copy of a re-sent row.
pub const HEADER_OUTBOX_ID: &str = "cohort-outbox-id";
/// The advisory lock whose holder is the one relay that publishes ("cohortrl" in ASCII; the control log's
/// append lock is "cohort", so they never collide).
pub const LEASE_KEY: i64 = 0x636f_686f_7274_726c;
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
        let result = bounded(
            "find the newest outbox row",
            sqlx::query_scalar::<_, Option<i64>>("SELECT max(id) FROM outbox").fetch_one(conn),
        )
        .await;
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
        let result = bounded(
            "take the lease",
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LEASE_KEY)
                .fetch_one(conn),
        )
        .await;
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

    /// Reads one batch of unpublished rows with `id <= up_to`, produces it in waves and marks what was
    /// delivered.
    async fn round(&self, state: &mut State, up_to: i64) -> Result<Round, RelayError> {
        let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
        let result = bounded(
            "read the outbox",
            sqlx::query_as::<_, OutboxMessage>(
                "SELECT id, topic, message_key, payload, headers FROM outbox \
                 WHERE published_at IS NULL AND id <= $1 ORDER BY id LIMIT $2",
            )
            .bind(up_to)
            .bind(i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX))
            .fetch_all(conn),
        )
        .await;
        let rows = self.check(state, result)?;
        let mut round = Round {
            read: rows.len(),
            ..Round::default()
        };
        if rows.is_empty() {
            self.status.rounds.fetch_add(1, Ordering::Relaxed);
            return Ok(round);
        }
        let mut waves = Waves::new(&rows);
        while let Some(wave) = waves.next_wave() {
            let mut in_flight = Vec::with_capacity(wave.len());
            for index in wave {
                let row = &rows[index];
                let record = FutureRecord::<[u8], [u8]>::to(&row.topic)
                    .payload(&row.payload)
                    .headers(kafka_headers(row));
                let record = match &row.key {
                    Some(key) => record.key(key.as_slice()),
                    None => record,
                };
                match state.producer.send_result(record) {
                    Ok(delivery) => in_flight.push((index, delivery)),
                    Err((error, _)) => {
                        self.failed(&mut round, &mut waves, row, index, error);
                    }
                }
            }
            // Every report of this wave arrives before the next wave is produced (see the module docs).
            let deadline = Instant::now() + self.settings.delivery_wait;
            for (index, delivery) in in_flight {
                let row = &rows[index];
                let error = match tokio::time::timeout_at(deadline, delivery).await {
                    Ok(Ok(Ok(_))) => {
                        round.delivered.push(row.id);
                        self.status.delivered.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(m::RELAY_MESSAGES_RELAYED, "topic" => row.topic.clone())
                            .increment(1);
                        continue;
                    }
                    Ok(Ok(Err((error, _)))) => error,
                    Ok(Err(_canceled)) => KafkaError::Canceled,
                    Err(_elapsed) => {
                        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                    }
                };
                self.failed(&mut round, &mut waves, row, index, error);
            }
        }
        round.held_back = waves.held_back;

        if round.failed > 0 {
            if let Some((code, reason)) = state.producer.client().fatal_error() {
                tracing::error!(?code, %reason, "the producer hit a fatal error; creating a new one");
                match self.producer_config.create() {
                    Ok(producer) => state.producer = producer,
                    Err(e) => tracing::error!(error = %e, "cannot re-create the producer"),
                }
            }
        }
        if !round.delivered.is_empty() {
            let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
            let result = bounded(
                "mark rows published",
                sqlx::query(
                    "UPDATE outbox SET published_at = now() \
                     WHERE id = ANY($1) AND published_at IS NULL",
                )
                .bind(&round.delivered)
                .execute(conn),
            )
            .await;
            self.check(state, result)?;
        }
        self.status.rounds.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            first_id = rows[0].id,
            read = round.read,
            delivered = round.delivered.len(),
            failed = round.failed,
            held_back = round.held_back,
            "relay round done"
        );
        Ok(round)
    }

    fn failed(
        &self,
        round: &mut Round,
        waves: &mut Waves,
        row: &OutboxMessage,
        index: usize,
        error: KafkaError,
    ) {
        tracing::debug!(id = row.id, topic = %row.topic, error = %error, "outbox message not delivered");
        waves.failed(index);
        round.failed += 1;
        round.error.get_or_insert(error);
        self.status.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::RELAY_PUBLISH_FAILURES, "topic" => row.topic.clone()).increment(1);
    }

    /// Refreshes the backlog gauges (at most once a second unless `force`) and, as leader, deletes expired
    /// rows once a minute. Failures only delay these; they are logged.
    async fn maintain(&self, state: &mut State, force: bool) {
        let stats_due = force
            || state
                .last_stats
                .is_none_or(|at| at.elapsed() >= STATS_INTERVAL);
        if stats_due {
            if let Some(conn) = state.conn.as_mut() {
                let result = bounded(
                    "measure the outbox backlog",
                    sqlx::query_as::<_, (i64, f64)>(
                        "SELECT count(*), \
                           COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 \
                         FROM outbox WHERE published_at IS NULL",
                    )
                    .fetch_one(conn),
                )
                .await;
                match self.check(state, result) {
                    Ok((backlog, oldest)) => {
                        metrics::gauge!(m::RELAY_OUTBOX_BACKLOG).set(backlog as f64);
                        metrics::gauge!(m::RELAY_OUTBOX_OLDEST_AGE).set(oldest.max(0.0));
                        state.last_stats = Some(Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot measure the outbox backlog"),
                }
            }
        }
        if state.leader && Instant::now() >= state.next_retention {
            match self.expire(state, RETENTION_BATCHES_PER_PASS).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(deleted = n, "deleted expired outbox rows");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete expired outbox rows; will retry")
                }
            }
        }
    }

    /// Deletes published rows older than the retention period, [`RETENTION_BATCH`] at a time, for at most
    /// `max_batches` statements. Schedules the next pass: in a minute, or at once if rows were left.
    async fn expire(&self, state: &mut State, max_batches: usize) -> Result<u64, RelayError> {
        let mut total = 0;
        let mut batches = 0;
        let hours = self.settings.retention_hours as f64;
        loop {
            let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
            let result = bounded(
                "delete expired outbox rows",
                sqlx::query(
                    "WITH expired AS ( \
                       SELECT id FROM outbox \
                       WHERE published_at < now() - $1 * interval '1 hour' \
                       ORDER BY id LIMIT $2) \
                     DELETE FROM outbox o USING expired WHERE o.id = expired.id",
                )
                .bind(hours)
                .bind(RETENTION_BATCH)
                .execute(conn),
            )
            .await;
            let deleted = self.check(state, result)?.rows_affected();
            total += deleted;
            batches += 1;
            metrics::counter!(m::RELAY_ROWS_EXPIRED).increment(deleted);
            if deleted < RETENTION_BATCH as u64 {
                state.next_retention = Instant::now() + RETENTION_INTERVAL;
                return Ok(total);
            }
            if batches >= max_batches {
                // More are left: continue after the next round instead of delaying publishing now.
                state.next_retention = Instant::now();
                return Ok(total);
            }
        }
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

/// One row of the outbox.
#[derive(Debug, sqlx::FromRow)]
struct OutboxMessage {
    id: i64,
    topic: String,
    #[sqlx(rename = "message_key")]
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Value,
}

/// The outcome of a round.
#[derive(Debug, Default)]
struct Round {
    /// Rows read.
    read: usize,
    /// Ids delivered (and then marked), in id order per key.
    delivered: Vec<i64>,
    /// Deliveries that failed.
    failed: usize,
    /// Rows not produced because an earlier row of their key failed.
    held_back: usize,
    /// The first delivery error.
    error: Option<KafkaError>,
}

impl Round {
    /// The round's failure as an error, if a delivery failed; `delivered` is the total to report.
    fn failure(&self, delivered: usize) -> Option<RelayError> {
        self.error.clone().map(|error| RelayError::Undelivered {
            delivered,
            failed: self.failed,
            held_back: self.held_back,
            error,
        })
    }
}

/// Splits a batch into waves: each wave holds at most one row per (topic, key), the earliest not yet
/// produced; once a row fails, the later rows of its key are held back. Keyless rows have no order and all
/// go in the first wave.
#[derive(Debug)]
struct Waves<'a> {
    rows: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Indexes not yet produced, in id order.
    remaining: Vec<usize>,
    /// (topic, key) of rows that failed this round.
    blocked: HashSet<(&'a str, &'a [u8])>,
    /// Rows dropped from the round because their key is blocked.
    held_back: usize,
}

impl<'a> Waves<'a> {
    fn new(rows: &'a [OutboxMessage]) -> Self {
        Self::from_keys(
            rows.iter()
                .map(|r| (r.topic.as_str(), r.key.as_deref()))
                .collect(),
        )
    }

    fn from_keys(rows: Vec<(&'a str, Option<&'a [u8]>)>) -> Self {
        Self {
            remaining: (0..rows.len()).collect(),
            rows,
            blocked: HashSet::new(),
            held_back: 0,
        }
    }

    /// The next wave's row indexes, in id order, or `None` when the round is done.
    fn next_wave(&mut self) -> Option<Vec<usize>> {
        let mut wave = Vec::new();
        let mut later = Vec::new();
        let mut in_wave = HashSet::new();
        for &index in &self.remaining {
            match self.rows[index] {
                (_, None) => wave.push(index),
                (topic, Some(key)) => {
                    if self.blocked.contains(&(topic, key)) {
                        self.held_back += 1;
                    } else if in_wave.insert((topic, key)) {
                        wave.push(index);
                    } else {
                        later.push(index);
                    }
                }
            }
        }
        self.remaining = later;
        (!wave.is_empty()).then_some(wave)
    }

    /// Records that the row at `index` failed: its key's later rows are held back.
    fn failed(&mut self, index: usize) {
        if let (topic, Some(key)) = self.rows[index] {
            self.blocked.insert((topic, key));
        }
    }
}

/// The Kafka headers of a row: its `headers` object, then [`HEADER_OUTBOX_ID`].
fn kafka_headers(row: &OutboxMessage) -> OwnedHeaders {
    let pairs = header_pairs(row.id, &row.headers);
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in &pairs {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    headers
}

/// The header names and values of a row, in order: the `headers` object's entries (strings as their
/// bytes, `null` as no value, any other JSON value as its JSON text; an entry named [`HEADER_OUTBOX_ID`]
/// is replaced by the relay's), then the outbox id in decimal. A `headers` value that is not an object
/// is ignored, with a warning (the worker always writes an object).
fn header_pairs(id: i64, headers: &Value) -> Vec<(String, Option<Vec<u8>>)> {
    let mut pairs = Vec::new();
    match headers {
        Value::Object(map) => {
            for (key, value) in map {
                if key == HEADER_OUTBOX_ID {
                    continue;
                }
                let value = match value {
                    Value::String(s) => Some(s.as_bytes().to_vec()),
                    Value::Null => None,
                    other => Some(other.to_string().into_bytes()),
                };
                pairs.push((key.clone(), value));
            }
        }
        Value::Null => {}
        other => {
            tracing::warn!(id, headers = %other, "outbox headers are not a JSON object; sending none of them");
        }
    }
    pairs.push((
        HEADER_OUTBOX_ID.to_owned(),
        Some(id.to_string().into_bytes()),
    ));
    pairs
}

/// Awaits a database call for at most [`DATABASE_TIMEOUT`], classifying its error.
async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, RelayError> {
    match tokio::time::timeout(DATABASE_TIMEOUT, call).await {
        Ok(result) => result.map_err(|e| RelayError::Store(StoreError::from(e))),
        Err(_) => Err(RelayError::DatabaseTimeout {
            what,
            after: DATABASE_TIMEOUT,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;
    use proptest::prelude::*;
    use serde_json::json;

    fn producer_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
        client_config(kafka, brokers, Role::Relay)
    }

    fn keys<'a>(rows: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        rows.iter()
            .map(|(t, k)| (*t, k.map(str::as_bytes)))
            .collect()
    }

    #[test]
    fn a_wave_holds_at_most_one_row_per_topic_and_key_and_keyless_rows_go_first() {
        let rows = keys(&[
            ("t", Some("a")),
            ("t", Some("a")),
            ("t", Some("b")),
            ("u", Some("a")),
            ("t", None),
            ("t", Some("a")),
            ("t", None),
        ]);
        let mut waves = Waves::from_keys(rows);
        assert_eq!(waves.next_wave(), Some(vec![0, 2, 3, 4, 6]));
        assert_eq!(waves.next_wave(), Some(vec![1]));
        assert_eq!(waves.next_wave(), Some(vec![5]));
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 0);
    }

    #[test]
    fn after_a_failure_the_later_rows_of_that_key_are_held_back() {
        let rows = keys(&[
            ("t", Some("a")),
            ("t", Some("b")),
            ("t", Some("a")),
            ("t", Some("b")),
            ("t", Some("a")),
        ]);
        let mut waves = Waves::from_keys(rows);
        assert_eq!(waves.next_wave(), Some(vec![0, 1]));
        waves.failed(0);
        assert_eq!(waves.next_wave(), Some(vec![3]));
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 2);
    }

    #[test]
    fn a_keyless_failure_holds_nothing_back() {
        let mut waves = Waves::from_keys(keys(&[("t", None), ("t", None)]));
        assert_eq!(waves.next_wave(), Some(vec![0, 1]));
        waves.failed(0);
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 0);
    }

    proptest! {
        /// Against a simple reference: each key's produced rows are a prefix of its rows in id order,
        /// produced one per wave; the prefix stops right after its first failure; and every row is either
        /// produced or held back.
        #[test]
        fn waves_produce_each_key_in_order_and_stop_it_at_its_first_failure(
            rows in proptest::collection::vec((0u8..2, proptest::option::of(0u8..4)), 0..40),
            failing in proptest::collection::hash_set(0usize..40, 0..10),
        ) {
            let owned: Vec<(String, Option<Vec<u8>>)> = rows
                .iter()
                .map(|(t, k)| (format!("topic-{t}"), k.map(|k| vec![k])))
                .collect();
            let keyed: Vec<(&str, Option<&[u8]>)> =
                owned.iter().map(|(t, k)| (t.as_str(), k.as_deref())).collect();
            let mut waves = Waves::from_keys(keyed.clone());
            let mut produced: Vec<(usize, usize)> = Vec::new(); // (wave, index)
            let mut wave_number = 0;
            while let Some(wave) = waves.next_wave() {
                prop_assert!(wave.windows(2).all(|w| w[0] < w[1]), "a wave is in id order");
                let mut seen = HashSet::new();
                for &index in &wave {
                    if let (t, Some(k)) = keyed[index] {
                        prop_assert!(seen.insert((t, k)), "one row per key in a wave");
                    }
                    produced.push((wave_number, index));
                }
                for &index in &wave {
                    if failing.contains(&index) {
                        waves.failed(index);
                    }
                }
                wave_number += 1;
            }
            prop_assert_eq!(produced.len() + waves.held_back, keyed.len());
            // Reference: per key, walk its rows in id order; produce until (and including) the first failure.
            let distinct: HashSet<(&str, &[u8])> =
                keyed.iter().filter_map(|(t, k)| k.map(|k| (*t, k))).collect();
            for (topic, key) in distinct {
                let rows_of_key: Vec<usize> = (0..keyed.len())
                    .filter(|&i| keyed[i] == (topic, Some(key)))
                    .collect();
                let mut expected = Vec::new();
                for &i in &rows_of_key {
                    expected.push(i);
                    if failing.contains(&i) {
                        break;
                    }
                }
                let actual: Vec<(usize, usize)> = produced
                    .iter()
                    .copied()
                    .filter(|(_, i)| keyed[*i] == (topic, Some(key)))
                    .collect();
                prop_assert_eq!(actual.iter().map(|(_, i)| *i).collect::<Vec<_>>(), expected);
                prop_assert!(actual.windows(2).all(|w| w[0].0 < w[1].0), "one wave after another");
            }
            // Keyless rows are all produced, in the first wave.
            for (i, (_, key)) in keyed.iter().enumerate() {
                if key.is_none() {
                    prop_assert!(produced.contains(&(0, i)));
                }
            }
        }
    }

    #[test]
    fn headers_keep_strings_and_add_the_outbox_id_last() {
        let pairs = header_pairs(
            42,
            &json!({
                "cohort-dead-letter-reason": "malformed_json",
                "empty": null,
                "number": 7,
                "cohort-outbox-id": "forged",
            }),
        );
        assert_eq!(
            pairs,
            vec![
                (
                    "cohort-dead-letter-reason".to_owned(),
                    Some(b"malformed_json".to_vec())
                ),
                ("empty".to_owned(), None),
                ("number".to_owned(), Some(b"7".to_vec())),
                ("cohort-outbox-id".to_owned(), Some(b"42".to_vec())),
            ]
        );
        assert_eq!(
            header_pairs(7, &json!([1, 2])),
            vec![("cohort-outbox-id".to_owned(), Some(b"7".to_vec()))]
        );
        assert_eq!(header_pairs(8, &Value::Null).len(), 1);
    }

    #[test]
    fn the_producer_settings_that_carry_the_guarantee_cannot_be_overridden() {
        let mut kafka = KafkaConfig::default();
        for (k, v) in [
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("partitioner", "consistent_random"),
            ("max.in.flight.requests.per.connection", "50"),
            ("message.timeout.ms", "3000"),
            ("compression.type", "zstd"),
        ] {
            kafka.properties.insert(k.into(), v.into());
        }
        let config = producer_config(&kafka, "k:9092");
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("partitioner"), Some("murmur2_random"));
        assert_eq!(
            config.get("max.in.flight.requests.per.connection"),
            Some("5")
        );
        assert_eq!(config.get("compression.type"), Some("zstd"));
        assert_eq!(config.get("message.timeout.ms"), Some("3000"));
        assert_eq!(
            delivery_wait(&config),
            Duration::from_secs(3) + DELIVERY_MARGIN
        );
    }

    #[test]
    fn the_delivery_wait_follows_the_message_timeout_or_its_alias() {
        let config = producer_config(&KafkaConfig::default(), "k:9092");
        assert_eq!(config.get("message.timeout.ms"), Some("30000"));
        assert_eq!(
            delivery_wait(&config),
            Duration::from_secs(30) + DELIVERY_MARGIN
        );

        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("delivery.timeout.ms".into(), "1000".into());
        let config = producer_config(&kafka, "k:9092");
        assert_eq!(config.get("message.timeout.ms"), None);
        assert_eq!(
            delivery_wait(&config),
            Duration::from_secs(1) + DELIVERY_MARGIN
        );

        let mut kafka = KafkaConfig::default();
        kafka
            .properties
            .insert("message.timeout.ms".into(), "0".into());
        assert_eq!(
            delivery_wait(&producer_config(&kafka, "k:9092")),
            UNBOUNDED_MESSAGE_WAIT
        );
    }
}
