//! `cohort bench`: the worker end to end — a synthetic fleet streamed through a Kafka-protocol broker into
//! the worker and PostgreSQL — measured against the ceiling of the same PostgreSQL writes done by a minimal
//! writer, in the same run.
//!
//! Phases, in one process:
//! 1. **seed** ([`seed`]): orgs and dynamic groups through the store (so the control log is right), then
//!    devices and their initial memberships bulk-loaded, each device on its Kafka partition, and the
//!    partitions' positions at the control-log head: the worker starts in steady state, with every
//!    device as the event stream keeps it ([`fleet`]), so every phase's events change as many
//!    memberships per event.
//! 2. **load**: the worker (the same [`Application`] `cohort worker` runs, embedded relay included) joins
//!    the consumer group and loads its partitions; resident memory is read before and after
//!    (`/proc/self/status`), giving bytes per device held.
//! 3. **throughput**: `--events` events are produced as fast as the broker takes them; the sustained rate
//!    is the committed rate between 10% and 90% of them (the worker's [`Status`] counters); the CPU the
//!    phase used per event is read from `/proc` by role ([`cpu`]), the log rows it wrote per event from
//!    the log's ids.
//! 4. **latency**: events are produced at half the sustained rate for `--latency-seconds`; the latency of
//!    each is from its Kafka timestamp (set when produced) to just after its batch commits.
//! 5. **ceiling** ([`ceiling`]): the worker stopped, a minimal writer commits precomputed batches of the
//!    same shape, with one connection per partition and then with one, each run long enough to span
//!    several checkpoint cycles.
//! 6. **check** ([`verify`]): every event committed, every membership equal to an oracle, the log
//!    consistent.
//!
//! Time: the worker runs on a [`ManualClock`] the benchmark sets. It reads the seeding instant while the
//! partitions load (the seeded memberships were evaluated then), then follows the wall clock, and is frozen
//! before the worker stops, so the oracle evaluates at the instant the worker's timers last fired.
//!
//! Without `--brokers`, the broker is librdkafka's in-process mock cluster ([`broker`]).
//!
//! Why this file is over 800 lines: the run's phases (seeding, throughput, latency, the ceiling) and the
//! report still live together; they are to move into a module per phase.

pub mod ceiling;
pub mod cpu;
pub mod server;
pub mod verify;

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgPool;

use self::ceiling::{CeilingReport, CeilingSettings};
use self::server::ServerActivity;
use self::verify::{Correctness, Expectations};
use crate::app::Application;
use crate::config::{Config, WalCompression};
use crate::rules::Catalogue;
use crate::synthetic::broker::{self, Broker, Stream};
use crate::synthetic::fleet::{self, Fleet, Rng};
use crate::synthetic::seed::{self, SeedReport};
use crate::worker::{Clock, ManualClock, Status};

/// The goals the benchmark checks (BENCHMARKS.md, "Goals").
const GOAL_CEILING_SHARE: f64 = 0.70;
const GOAL_P99_MS: u64 = 250;
const GOAL_BYTES_PER_DEVICE: f64 = 1024.0;

/// What to run. The defaults are the sizes the goals are stated for.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchOptions {
    /// Devices in the synthetic fleet.
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: usize,
    /// Orgs the devices and groups are spread over.
    #[arg(long, default_value_t = 10)]
    pub orgs: usize,
    /// Dynamic groups (spread over the orgs; together they use every operator).
    #[arg(long, default_value_t = 1_000)]
    pub groups: usize,
    /// Events produced as fast as possible to measure the sustained rate.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// How long events are produced at half the sustained rate to measure latency (after the warm-up).
    #[arg(long, default_value_t = 60)]
    pub latency_seconds: u64,
    /// How long events are produced at half the sustained rate before the latency is measured: the
    /// server first writes out what the throughput phase left behind (its next checkpoint's file syncs).
    /// The report shows the p99 of every 10 seconds, warm-up included.
    #[arg(long, default_value_t = 20)]
    pub latency_warmup_seconds: u64,
    /// Events the minimal writer commits per ceiling run (there are two runs). The default spans two
    /// or more of the stock server's checkpoint cycles, so that each run meets page images at the rate
    /// the throughput phase does (a shorter run's rate depends on where in a cycle it falls).
    #[arg(long, default_value_t = 300_000)]
    pub ceiling_events: usize,
    /// Partitions of the input topic (the worker owns them all; the first ceiling run uses one
    /// connection per partition).
    #[arg(long, default_value_t = 2)]
    pub partitions: i32,
    /// The database (created if missing). It must be empty, or hold only an earlier run's data and be
    /// given `--reset`.
    #[arg(
        long,
        env = "COHORT_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/cohort_bench"
    )]
    pub database_url: String,
    /// Kafka bootstrap servers; without them, librdkafka's in-process mock cluster is used. A fresh topic
    /// is created either way.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Empty a database holding an earlier benchmark's data first (refused if it holds anything else).
    #[arg(long)]
    pub reset: bool,
    /// Seed of the synthetic fleet and events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The WAL compression the worker's and the minimal writer's sessions ask for, as
    /// `database.wal_compression` (server, off, pglz, lz4, zstd); server settings are left alone.
    #[arg(long, default_value = "lz4", value_parser = parse_wal_compression)]
    pub wal_compression: WalCompression,
    /// The worker's `worker.caught_up_flush_after_kb`: `backend_flush_after` for the batches of a caught-up
    /// partition (0 turns it off; the minimal writer, always behind, never sets it).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=2048))]
    pub caught_up_flush_after_kb: u32,
}

fn parse_wal_compression(value: &str) -> Result<WalCompression, String> {
    value
        .parse()
        .map_err(|()| "expected one of server, off, pglz, lz4, zstd".to_owned())
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            devices: 1_000_000,
            orgs: 10,
            groups: 1_000,
            events: 500_000,
            latency_seconds: 60,
            latency_warmup_seconds: 20,
            ceiling_events: 300_000,
            partitions: 2,
            database_url: "postgres://postgres@127.0.0.1:5432/cohort_bench".into(),
            brokers: None,
            reset: false,
            seed: 1,
            wal_compression: WalCompression::Lz4,
            caught_up_flush_after_kb: 256,
        }
    }
}

/// Arguments of `cohort bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub options: BenchOptions,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything measured, and the check.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub broker: String,
    pub partitions: i32,
    pub cpus: usize,
    /// `/proc/loadavg`'s one-minute figure when the run started and ended (the machine is shared).
    pub load_average_start: f64,
    pub load_average_end: f64,
    /// The PostgreSQL settings that pace its writes (checkpoints, WAL volume, commit flushes), as a
    /// session of the worker sees them: the benchmark changes no server setting; `wal_compression` is
    /// the session's own (`--wal-compression`, as the worker's `database.wal_compression`).
    pub postgres_settings: String,
    /// `backend_flush_after` of a caught-up partition's batches, in kB (0: never set).
    pub caught_up_flush_after_kb: u32,
    pub seed: SeedReport,
    pub load: LoadReport,
    pub throughput: ThroughputReport,
    pub latency: LatencyReport,
    /// The database server's WAL, checkpoints and backend writes during the throughput and the latency
    /// phase (`None` where the server does not offer its counters).
    pub server_throughput: Option<ServerActivity>,
    pub server_latency: Option<ServerActivity>,
    /// The process's peak resident memory by the end of the worker phases (`VmHWM`), broker included.
    pub peak_rss_bytes: u64,
    pub ceiling: CeilingReport,
    /// Sustained rate ÷ the one-connection ceiling.
    pub share_of_one_connection: f64,
    /// Sustained rate ÷ the one-connection-per-partition ceiling.
    pub share_of_many_connections: f64,
    pub goals: Goals,
    pub correctness: Correctness,
    pub seconds: f64,
}

/// Loading the partitions.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub seconds: f64,
    pub devices: usize,
    /// Resident memory just before the worker started, and once it held every device.
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_device: f64,
}

/// The sustained rate.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub events: usize,
    /// Time to produce them all.
    pub produce_seconds: f64,
    /// Events committed between 10% and 90% of the phase, and how long that took.
    pub window_events: u64,
    pub window_seconds: f64,
    pub events_per_second: f64,
    /// All events ÷ the time from the first produce to the last commit.
    pub overall_events_per_second: f64,
    pub batches: u64,
    /// Of those, the batches computed while an earlier batch of their partition was committing.
    pub batches_pipelined: u64,
    /// Of those, the batches of a caught-up partition (written with `backend_flush_after`).
    pub batches_caught_up: u64,
    /// CPU per event over the whole phase: the worker's threads, this process's others (Kafka clients,
    /// mock broker, producer) and the PostgreSQL server's processes (when on this machine).
    pub cpu: cpu::CpuPerEvent,
    /// Membership log rows written per event over the phase (one per membership change), from the log's
    /// highest id before and after, to set beside the ceiling's: the ceiling's events come later in the
    /// stream, and this shows whether they were as heavy as the worker's.
    pub log_rows_per_event: Option<f64>,
}

/// The membership log's highest id (0 when empty), or `None` if it cannot be read (the figure is then left
/// out). Ids come from a sequence in commit order; a rolled-back batch leaves a gap, so a difference of two
/// readings is an upper bound on the rows written between them.
async fn last_log_id(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar::<_, i64>("SELECT coalesce(max(id), 0) FROM group_membership_log")
        .fetch_one(pool)
        .await
        .map_err(|e| tracing::warn!(error = %e, "could not read the membership log's last id"))
        .ok()
}

/// The worker's latency stages, named, with their units.
fn stage_snapshots(
    status: &Status,
) -> Vec<(
    &'static str,
    &'static str,
    crate::worker::latency::LatencySnapshot,
)> {
    let s = &status.stages;
    vec![
        (
            "delivery: produce → pipeline, per event",
            "ms",
            s.delivery.snapshot(),
        ),
        (
            "buffered: pipeline → batch start, per event",
            "ms",
            s.buffered.snapshot(),
        ),
        ("compute, per event", "ms", s.compute.snapshot()),
        ("commit, per event", "ms", s.commit.snapshot()),
        (
            "commit end → installed, per event",
            "ms",
            s.settle.snapshot(),
        ),
        ("records per batch", "events", s.batch_records.snapshot()),
    ]
}

/// Latency at half the sustained rate.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub events: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Where the latency went: p50, p99 and max of each stage over the same period.
    pub stages: Vec<StageReport>,
    /// Events produced at the same rate before the measurement, and for how long.
    pub warmup_events: usize,
    pub warmup_seconds: u64,
    /// p99 of the events committed in each 10 seconds of the phase, warm-up included (ms; `None` for a
    /// window in which nothing committed).
    pub window_p99_ms: Vec<Option<u64>>,
    /// Batches committed in the phase, and how many of them were a caught-up partition's.
    pub batches: u64,
    pub batches_caught_up: u64,
}

/// One stage of the latency ([`crate::worker::Stages`]).
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub unit: &'static str,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// The benchmark's goals, met or not.
#[derive(Clone, Debug, Serialize)]
pub struct Goals {
    /// Sustained rate ≥ 70% of the minimal writer's best ceiling.
    pub throughput: bool,
    /// p99 < 250 ms at half the sustained rate.
    pub latency: bool,
    /// Less than 1 KiB resident per device.
    pub memory: bool,
}

/// `cohort bench`: runs and prints the report; fails if the check fails.
pub async fn command(args: BenchArgs) -> anyhow::Result<()> {
    let report = run(&args.options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", render(&report));
    }
    anyhow::ensure!(
        report.correctness.ok(),
        "the correctness check failed: {:?}",
        report.correctness
    );
    Ok(())
}

/// Runs every phase and returns the report (whether or not the check passed).
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        options.devices > 0 && options.orgs > 0 && options.groups > 0,
        "--devices, --orgs and --groups must be positive"
    );
    anyhow::ensure!(
        options.events >= 10 && options.partitions > 0,
        "--events must be at least 10 and --partitions positive"
    );
    let started = Instant::now();
    let load_average_start = load_average();
    crate::store::create_database_if_missing(&options.database_url)
        .await
        .context("failed to create the database")?;
    let pool = crate::store::pool_options(options.wal_compression)
        .max_connections(4)
        .connect(&options.database_url)
        .await
        .context("failed to connect to the database")?;
    crate::store::migrate(&pool).await?;
    seed::prepare(&pool, options.reset).await?;
    let postgres_settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('max_wal_size', \
         'wal_compression', 'shared_buffers', 'synchronous_commit', 'checkpoint_timeout', 'autovacuum', \
         'backend_flush_after') \
         ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .context("failed to read the database's settings")?;
    let postgres_settings = postgres_settings
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ");

    let catalogue = Arc::new(Catalogue::default());
    let t0 = chrono::Utc::now().timestamp_millis();
    let fleet = Fleet::new(options.devices, options.orgs, options.seed, t0);
    let broker = Broker::start(options.brokers.as_deref())?;
    let topic = format!("cohort-bench-{:x}-{}", t0, std::process::id());
    broker.create_topic(&topic, options.partitions).await?;
    tracing::info!(broker = %broker.describe(), %topic, "seeding the fleet");
    let seed = seed::seed(
        &pool,
        &options.database_url,
        &fleet,
        &catalogue,
        options.groups,
        options.partitions,
        &topic,
    )
    .await?;
    tracing::info!(
        seconds = seed.seconds,
        memberships = seed.memberships,
        "fleet seeded"
    );

    // The worker, as `cohort worker` runs it.
    let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
    config.database.url = options.database_url.clone();
    config.database.wal_compression = options.wal_compression;
    config.worker.caught_up_flush_after_kb = options.caught_up_flush_after_kb;
    config.kafka.brokers = broker.bootstrap();
    config.kafka.input_topic = topic.clone();
    config.kafka.dead_letter_topic = format!("{topic}.dead-letter");
    config.kafka.output_topic = format!("{topic}.rollout-targets");
    config.kafka.group_id = format!("{topic}-workers");
    config.http.listen = "127.0.0.1:0".parse()?;
    if options.brokers.is_none() {
        broker::tune_for_mock(&mut config.kafka);
    }
    let clock = ManualClock::new(t0);
    let app = Application::build_with_clock(config.clone(), Arc::new(clock.clone()))
        .await
        .context("failed to build the worker")?;
    let status = app.status();
    let rss_before = proc_status("VmRSS:");
    let load_started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut worker = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(1800);
    while status.partitions.load(Ordering::SeqCst) < options.partitions as usize {
        anyhow::ensure!(!worker.is_finished(), "the worker stopped while loading");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not load its partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let rss_after = proc_status("VmRSS:");
    let load = LoadReport {
        seconds: load_seconds,
        devices: options.devices,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_device: rss_after.saturating_sub(rss_before) as f64 / options.devices as f64,
    };
    tracing::info!(
        seconds = load.seconds,
        bytes_per_device = load.bytes_per_device as u64,
        "worker loaded its partitions"
    );

    // From here the worker's clock follows the wall clock.
    let ticker = crate::synthetic::follow_wall_clock(&clock, t0);
    let (producer, deliveries) = broker::producer(&broker.bootstrap())?;
    let producer = Arc::new(producer);
    let mut stream = Stream {
        rng: Rng::new(options.seed ^ 0x6576_656e_7473),
        next_sequence: 1,
        last_sequence: vec![0; options.devices],
    };

    // With the mock cluster, production stays a bounded backlog ahead of the commits (see `broker::Ahead`).
    let backlog = options
        .brokers
        .is_none()
        .then_some(MOCK_BACKLOG_PER_PARTITION * options.partitions as u64);
    // Throughput: everything at once, as fast as the producer takes it.
    let base = status.records_committed.load(Ordering::SeqCst);
    let batches_before = status.batches.load(Ordering::SeqCst);
    let pipelined_before = status.batches_pipelined.load(Ordering::SeqCst);
    let caught_up_before = status.batches_caught_up.load(Ordering::SeqCst);
    let counters_before = server::counters(&pool).await;
    let log_before = last_log_id(&pool).await;
    let cpu_before = cpu::CpuSample::now();
    let phase_started = Instant::now();
    let producing = spawn_producer(
        producer.clone(),
        topic.clone(),
        fleet.clone(),
        stream,
        clock.clone(),
        options.events,
        None,
        ahead(&status, base, backlog),
    );
    let samples = wait_committed(
        &status,
        base,
        options.events as u64,
        &mut worker,
        phase_started,
        None,
    )
    .await?;
    let (produce_time, returned) = producing.await.context("the producer thread stopped")??;
    stream = returned;
    let overall = phase_started.elapsed().as_secs_f64();
    let cpu = cpu_before.per_event(&cpu::CpuSample::now(), options.events as u64);
    let counters_after = server::counters(&pool).await;
    let log_rows_per_event = last_log_id(&pool)
        .await
        .zip(log_before)
        .map(|(after, before)| (after - before) as f64 / options.events.max(1) as f64);
    let server_throughput =
        ServerActivity::between(counters_before, counters_after, options.events as u64);
    let n = options.events as u64;
    let (lo, hi) = (crossing(&samples, n / 10), crossing(&samples, n * 9 / 10));
    let (window_events, window_seconds) = (n * 9 / 10 - n / 10, (hi - lo).max(1e-6));
    let throughput = ThroughputReport {
        events: options.events,
        produce_seconds: produce_time.as_secs_f64(),
        window_events,
        window_seconds,
        events_per_second: window_events as f64 / window_seconds,
        overall_events_per_second: n as f64 / overall,
        batches: status.batches.load(Ordering::SeqCst) - batches_before,
        batches_pipelined: status.batches_pipelined.load(Ordering::SeqCst) - pipelined_before,
        batches_caught_up: status.batches_caught_up.load(Ordering::SeqCst) - caught_up_before,
        cpu,
        log_rows_per_event,
    };
    tracing::info!(
        events_per_second = throughput.events_per_second as u64,
        "throughput measured"
    );

    // Latency: half the sustained rate.
    let rate = (throughput.events_per_second / 2.0).max(1.0);
    let latency_events = ((rate * options.latency_seconds as f64) as usize).max(100);
    let warmup_events = (rate * options.latency_warmup_seconds as f64) as usize;
    let base = status.records_committed.load(Ordering::SeqCst);
    let phase_started = Instant::now();
    let mut windows = Windows::new(&status, Duration::from_secs(10));
    let producing = spawn_producer(
        producer.clone(),
        topic.clone(),
        fleet.clone(),
        stream,
        clock.clone(),
        warmup_events + latency_events,
        Some(rate),
        ahead(&status, base, backlog),
    );
    wait_committed(
        &status,
        base,
        warmup_events as u64,
        &mut worker,
        phase_started,
        Some(&mut windows),
    )
    .await?;
    // The measurement starts here, with the events committed from now on (a batch may have taken a few
    // past the warm-up's count: the wait below is for the phase's total).
    let base = base + warmup_events as u64;
    let before = status.latency.snapshot();
    let stages_before = stage_snapshots(&status);
    let batches_before = status.batches.load(Ordering::SeqCst);
    let caught_up_before = status.batches_caught_up.load(Ordering::SeqCst);
    let counters_before = server::counters(&pool).await;
    wait_committed(
        &status,
        base,
        latency_events as u64,
        &mut worker,
        phase_started,
        Some(&mut windows),
    )
    .await?;
    let (produce_time, returned) = producing.await.context("the producer thread stopped")??;
    stream = returned;
    let server_latency = ServerActivity::between(
        counters_before,
        server::counters(&pool).await,
        latency_events as u64,
    );
    let period = status.latency.snapshot().since(&before);
    let latency = LatencyReport {
        target_rate: rate,
        achieved_rate: (warmup_events + latency_events) as f64 / produce_time.as_secs_f64(),
        events: latency_events,
        warmup_events,
        warmup_seconds: options.latency_warmup_seconds,
        window_p99_ms: windows.p99s(&status),
        p50_ms: period.quantile(0.50).unwrap_or(0),
        p99_ms: period.quantile(0.99).unwrap_or(0),
        max_ms: period.max().unwrap_or(0),
        stages: stage_snapshots(&status)
            .into_iter()
            .zip(stages_before)
            .map(|((stage, unit, after), (_, _, before))| {
                let period = after.since(&before);
                StageReport {
                    stage,
                    unit,
                    p50: period.quantile(0.50).unwrap_or(0),
                    p99: period.quantile(0.99).unwrap_or(0),
                    max: period.max().unwrap_or(0),
                }
            })
            .collect(),
        batches: status.batches.load(Ordering::SeqCst) - batches_before,
        batches_caught_up: status.batches_caught_up.load(Ordering::SeqCst) - caught_up_before,
    };
    tracing::info!(
        p50_ms = latency.p50_ms,
        p99_ms = latency.p99_ms,
        "latency measured"
    );
    anyhow::ensure!(
        deliveries.failed.load(Ordering::SeqCst) == 0,
        "some events were not delivered"
    );

    // Freeze the clock, let the worker fire the timers due by then, and stop it.
    ticker.abort();
    let _ = ticker.await;
    let frozen = clock.now();
    wait_quiet(&status, &mut worker).await?;
    let records_committed = status.records_committed.load(Ordering::SeqCst);
    let rehomed = status.devices_rehomed.load(Ordering::SeqCst);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .context("the worker did not stop within 2 minutes")?
        .context("the worker panicked")?
        .context("the worker failed")?;
    let peak_rss_bytes = proc_status("VmHWM:");
    drop(producer);

    // The ceiling, then the check.
    let mut registry = seed::load_registry(&pool, catalogue.clone()).await?;
    let ceiling = ceiling::measure(
        &pool,
        &mut registry,
        &catalogue,
        &fleet,
        &mut stream,
        &CeilingSettings {
            url: &options.database_url,
            wal_compression: options.wal_compression,
            input_topic: &topic,
            dead_letter_topic: &config.kafka.dead_letter_topic,
            output_topic: &config.kafka.output_topic,
            partitions: options.partitions,
            batch_max_events: config.worker.batch_max_events,
            max_event_bytes: config.worker.max_event_bytes,
            now: frozen,
            events: options.ceiling_events.max(1),
        },
    )
    .await?;
    tracing::info!("checking the database against an oracle");
    let correctness = verify::verify(
        &pool,
        &registry,
        &catalogue,
        &fleet,
        &Expectations {
            input_topic: &topic,
            partitions: options.partitions,
            events_produced: (options.events + warmup_events + latency_events) as u64,
            records_committed,
            rehomed,
            last_sequence: &stream.last_sequence,
            at: frozen,
        },
    )
    .await?;
    let broker_name = broker.describe();
    drop(broker);

    let best = ceiling.one_connection.max(ceiling.many_connections);
    let goals = Goals {
        throughput: throughput.events_per_second >= GOAL_CEILING_SHARE * best,
        latency: latency.p99_ms < GOAL_P99_MS,
        memory: load.bytes_per_device < GOAL_BYTES_PER_DEVICE,
    };
    Ok(BenchReport {
        broker: broker_name,
        partitions: options.partitions,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average_start,
        load_average_end: load_average(),
        postgres_settings,
        caught_up_flush_after_kb: options.caught_up_flush_after_kb,
        share_of_one_connection: throughput.events_per_second / ceiling.one_connection,
        share_of_many_connections: throughput.events_per_second / ceiling.many_connections,
        seed,
        load,
        throughput,
        latency,
        server_throughput,
        server_latency,
        peak_rss_bytes,
        ceiling,
        goals,
        correctness,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Produced = anyhow::Result<(Duration, Stream)>;

/// Events per partition the producer may run ahead of the worker on the mock cluster: a few batches (so
/// the worker never waits for input) and well within the mock's 5 MB per partition.
const MOCK_BACKLOG_PER_PARTITION: u64 = 8_000;

fn ahead(status: &Arc<Status>, base: u64, max: Option<u64>) -> Option<broker::Ahead> {
    max.map(|max| broker::Ahead {
        status: status.clone(),
        base,
        max,
    })
}

/// Produces on a thread of its own (librdkafka calls block); resolves with the time spent and the stream.
// The producer's inputs travel to its thread by value; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
fn spawn_producer(
    producer: Arc<rdkafka::producer::BaseProducer<broker::Counting>>,
    topic: String,
    fleet: Fleet,
    mut stream: Stream,
    clock: ManualClock,
    count: usize,
    rate: Option<f64>,
    ahead: Option<broker::Ahead>,
) -> tokio::sync::oneshot::Receiver<Produced> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bench-producer".into())
        .spawn(move || {
            let result = broker::produce(
                &producer,
                &topic,
                &fleet,
                &mut stream,
                &clock,
                count,
                rate,
                ahead.as_ref(),
            )
            .map(|elapsed| (elapsed, stream));
            let _ = tx.send(result);
        })
        .expect("failed to spawn the producer thread");
    rx
}

/// Waits until `count` more records than `base` are committed, sampling (seconds since `from`, committed
/// in this phase). Fails if the worker stops, or if nothing commits for two minutes.
async fn wait_committed(
    status: &Status,
    base: u64,
    count: u64,
    worker: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
    from: Instant,
    mut windows: Option<&mut Windows>,
) -> anyhow::Result<Vec<(f64, u64)>> {
    let mut samples = vec![(0.0, 0)];
    let mut progress = Instant::now();
    loop {
        if let Some(windows) = windows.as_deref_mut() {
            windows.sample(status);
        }
        let done = status.records_committed.load(Ordering::SeqCst) - base;
        if done > samples.last().map_or(0, |s| s.1) {
            progress = Instant::now();
        }
        samples.push((from.elapsed().as_secs_f64(), done));
        if done >= count {
            return Ok(samples);
        }
        anyhow::ensure!(!worker.is_finished(), "the worker stopped");
        anyhow::ensure!(
            progress.elapsed() < Duration::from_secs(120),
            "no event committed for two minutes ({done} of {count})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Snapshots of the worker's produce-to-commit latencies at fixed intervals of a phase, for the p99 of
/// each interval.
struct Windows {
    started: Instant,
    every: Duration,
    snapshots: Vec<crate::worker::latency::LatencySnapshot>,
}

impl Windows {
    fn new(status: &Status, every: Duration) -> Self {
        Self {
            started: Instant::now(),
            every,
            snapshots: vec![status.latency.snapshot()],
        }
    }

    /// Takes the snapshot of every interval boundary passed since the last call.
    fn sample(&mut self, status: &Status) {
        let passed = (self.started.elapsed().as_secs_f64() / self.every.as_secs_f64()) as usize;
        while self.snapshots.len() <= passed {
            self.snapshots.push(status.latency.snapshot());
        }
    }

    /// The p99 of each interval, the last (partial) one up to now included.
    fn p99s(&self, status: &Status) -> Vec<Option<u64>> {
        let mut snapshots = self.snapshots.clone();
        snapshots.push(status.latency.snapshot());
        snapshots
            .windows(2)
            .map(|w| w[1].since(&w[0]).quantile(0.99))
            .collect()
    }
}

/// Waits until the worker has committed nothing for a second: with the clock frozen, every timer due by
/// then has fired (the worker checks timers every few milliseconds).
async fn wait_quiet(
    status: &Status,
    worker: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut last = status.batches.load(Ordering::SeqCst);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_secs(1) {
        anyhow::ensure!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = status.batches.load(Ordering::SeqCst);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

/// When the committed count first reached `target`, interpolated between samples.
fn crossing(samples: &[(f64, u64)], target: u64) -> f64 {
    for pair in samples.windows(2) {
        let ((t0, c0), (t1, c1)) = (pair[0], pair[1]);
        if c1 >= target {
            if c1 == c0 {
                return t1;
            }
            let f = (target.saturating_sub(c0)) as f64 / (c1 - c0) as f64;
            return t0 + f.clamp(0.0, 1.0) * (t1 - t0);
        }
    }
    samples.last().map_or(0.0, |s| s.0)
}

/// A `/proc/self/status` figure (given in kB) in bytes; 0 where there is no such file.
fn proc_status(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l[key.len()..]
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The report as text.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let c = &r.correctness;
    let _ = writeln!(
        s,
        "cohort bench: {} devices, {} orgs, {} dynamic groups ({} time-dependent, {} site-scoped), {} partitions",
        thousands(r.seed.devices as f64),
        r.seed.orgs,
        thousands(r.seed.groups as f64),
        r.seed.time_dependent_groups,
        r.seed.site_scoped_groups,
        r.partitions
    );
    let _ = writeln!(
        s,
        "broker: {}; {} CPUs; load average {:.1} at the start, {:.1} at the end; {:.0} s in all",
        r.broker, r.cpus, r.load_average_start, r.load_average_end, r.seconds
    );
    let _ = writeln!(s, "postgres: {}", r.postgres_settings);
    let _ = writeln!(
        s,
        "seeded in {:.1} s: {} memberships ({:.1} per device)",
        r.seed.seconds,
        thousands(r.seed.memberships as f64),
        r.seed.memberships as f64 / r.seed.devices as f64
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| measure | value | goal |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| sustained throughput (10–90% of {} events) | {} events/s | |",
        thousands(r.throughput.events as f64),
        thousands(r.throughput.events_per_second)
    );
    let _ = writeln!(
        s,
        "| ceiling, minimal writer, 1 connection | {} events/s | |",
        thousands(r.ceiling.one_connection)
    );
    let _ = writeln!(
        s,
        "| ceiling, minimal writer, {} connections | {} events/s | |",
        r.ceiling.connections,
        thousands(r.ceiling.many_connections)
    );
    let _ = writeln!(
        s,
        "| worker ÷ ceiling | {:.0}% of 1 connection, {:.0}% of {} | ≥ 70% of the best: {} |",
        r.share_of_one_connection * 100.0,
        r.share_of_many_connections * 100.0,
        r.ceiling.connections,
        mark(r.goals.throughput)
    );
    let _ = writeln!(
        s,
        "| latency, produce → commit, at {} events/s (half) | p50 {} ms, p99 {} ms, max {} ms | p99 < 250 ms: {} |",
        thousands(r.latency.achieved_rate),
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        mark(r.goals.latency)
    );
    let windows: Vec<String> = r
        .latency
        .window_p99_ms
        .iter()
        .map(|p| p.map_or("–".to_owned(), |ms| ms.to_string()))
        .collect();
    let _ = writeln!(
        s,
        "| — after a warm-up of {} s ({} events); p99 of each 10 s from the warm-up's start | {} ms | |",
        r.latency.warmup_seconds,
        thousands(r.latency.warmup_events as f64),
        windows.join(", ")
    );
    for stage in &r.latency.stages {
        let _ = writeln!(
            s,
            "| — {} | p50 {} {unit}, p99 {} {unit}, max {} {unit} | |",
            stage.stage,
            stage.p50,
            stage.p99,
            stage.max,
            unit = stage.unit
        );
    }
    let _ = writeln!(
        s,
        "| resident memory per device held | {} B | < 1,024 B: {} |",
        thousands(r.load.bytes_per_device),
        mark(r.goals.memory)
    );
    let _ = writeln!(
        s,
        "| peak RSS (VmHWM, in-process broker included) | {} MiB | |",
        thousands(r.peak_rss_bytes as f64 / 1_048_576.0)
    );
    let _ = writeln!(
        s,
        "| partition load | {} devices in {:.1} s | |",
        thousands(r.load.devices as f64),
        r.load.seconds
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "ceiling's writes per event: {:.2} device rows, {:.2} membership inserts/deletes, {:.2} log rows; {} batches per ceiling run{}",
        r.ceiling.device_rows_per_event,
        r.ceiling.membership_writes_per_event,
        r.ceiling.log_rows_per_event,
        r.ceiling.batches,
        r.throughput
            .log_rows_per_event
            .map(|l| format!("; the throughput phase wrote {l:.2} log rows per event"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "throughput phase: produced in {:.1} s; {:.0} events/s overall; {} batches, {} of them computed while their partition's previous batch committed, {} caught up",
        r.throughput.produce_seconds,
        r.throughput.overall_events_per_second,
        r.throughput.batches,
        r.throughput.batches_pipelined,
        r.throughput.batches_caught_up
    );
    let (w, wc) = (&r.throughput.cpu, &r.ceiling.cpu_many_connections);
    let _ = writeln!(
        s,
        "CPU per event (µs): throughput phase: worker threads {:.1}, Kafka clients, mock broker and producer {:.1}, PostgreSQL {:.1}; ceiling with {} connections: writer {:.1}, PostgreSQL {:.1}",
        w.worker_us,
        w.other_us,
        w.postgres_us,
        r.ceiling.connections,
        wc.worker_us,
        wc.postgres_us
    );
    let _ = writeln!(
        s,
        "latency phase: {} batches, {} of them caught up (written with backend_flush_after={} kB; 0: never set)",
        r.latency.batches, r.latency.batches_caught_up, r.caught_up_flush_after_kb
    );
    let one = "the ceiling with 1 connection";
    let many = format!("the ceiling with {} connections", r.ceiling.connections);
    for (phase, activity) in [
        ("the throughput phase", &r.server_throughput),
        ("the latency phase", &r.server_latency),
        (many.as_str(), &r.ceiling.server_many_connections),
        (one, &r.ceiling.server_one_connection),
    ] {
        if let Some(activity) = activity {
            let _ = writeln!(s, "postgres during {phase}: {}", activity.describe());
        }
    }
    let _ = writeln!(
        s,
        "check ({}): {} of {} events committed, stored offsets add up to {}; {} devices checked: {} wrong sequences, {} misplaced, {} re-homed; memberships {} stored, {} expected ({} missing, {} extra); log {} rows, {} repeats, {} disagreements",
        if c.ok() { "passed" } else { "FAILED" },
        thousands(c.records_committed as f64),
        thousands(c.events_produced as f64),
        thousands(c.stored_offsets as f64),
        thousands(c.devices_checked as f64),
        c.wrong_sequence,
        c.misplaced,
        c.rehomed,
        thousands(c.memberships_stored as f64),
        thousands(c.memberships_expected as f64),
        c.memberships_missing,
        c.memberships_extra,
        thousands(c.log_rows as f64),
        c.log_repeats,
        c.log_disagreements
    );
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossings_interpolate_between_samples() {
        let samples = [(0.0, 0), (1.0, 100), (2.0, 300)];
        assert_eq!(crossing(&samples, 0), 1.0 * 0.0);
        assert_eq!(crossing(&samples, 50), 0.5);
        assert_eq!(crossing(&samples, 200), 1.5);
        assert_eq!(crossing(&samples, 300), 2.0);
    }

    #[test]
    fn windows_give_the_p99_of_each_interval() {
        let status = Status::default();
        let mut windows = Windows::new(&status, Duration::from_secs(3600));
        for ms in 1..=100 {
            status.latency.record(ms);
        }
        windows.sample(&status);
        assert_eq!(windows.snapshots.len(), 1, "no boundary passed yet");
        // What `sample` takes at a boundary.
        windows.snapshots.push(status.latency.snapshot());
        status.latency.record(500);
        assert_eq!(windows.p99s(&status), vec![Some(99), Some(500)]);
        windows.snapshots.push(status.latency.snapshot());
        assert_eq!(windows.p99s(&status), vec![Some(99), Some(500), None]);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }
}
