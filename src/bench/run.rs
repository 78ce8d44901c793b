//! The order of `cohort bench`'s phases, and what they share: the database, the synthetic fleet seeded
//! into it, the broker, and the worker's configuration.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use sqlx::PgPool;

use super::ceiling::{self, CeilingSettings};
use super::changes::{self, ChangesReport};
use super::options::BenchOptions;
use super::phases::{self, Rig};
use super::readings::load_average;
use super::report::{BenchReport, Goals};
use super::verify::{self, Expectations};
use crate::config::Config;
use crate::rules::Catalogue;
use crate::synthetic::broker::{self, Broker, Stream};
use crate::synthetic::fleet::{Fleet, Rng};
use crate::synthetic::seed;
use crate::worker::ManualClock;

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
    let pool = database(options).await?;
    let postgres_settings = postgres_settings(&pool).await?;

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
    if options.rollout {
        let targeted = crate::synthetic::rollout::seed_rollout(&pool, &fleet, &topic).await?;
        tracing::info!(
            targeted,
            "a rollout is under way: every device targeted by a release"
        );
    }

    // The worker, as `cohort worker` runs it.
    let config = worker_config(options, &broker, &topic)?;
    let clock = ManualClock::new(t0);
    let (worker, load) = phases::load(&config, &clock, options).await?;

    // From here the worker's clock follows the wall clock.
    let mut rig = Rig::new(worker, &broker, options, &topic, &fleet, &clock, t0)?;
    let stream = Stream {
        mix: options.mix,
        rng: Rng::new(options.seed ^ 0x6576_656e_7473),
        next_sequence: 1,
        last_sequence: vec![0; options.devices],
    };
    let (throughput, server_throughput, stream) =
        rig.throughput(&pool, stream, options.events).await?;
    let (latency, server_latency, stream) = rig
        .latency(&pool, stream, throughput.events_per_second, options)
        .await?;
    let (changes, mut stream) = if options.skip_changes {
        (None, stream)
    } else {
        let (changes, stream) = changes::measure(
            &mut rig,
            &pool,
            stream,
            options.paced_rate(throughput.events_per_second),
            &fleet,
            options.partitions,
        )
        .await?;
        (Some(changes), stream)
    };
    let stopped = rig.stop().await?;

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
            now: stopped.frozen,
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
            events_produced: (options.events
                + latency.warmup_events
                + latency.events
                + changes.as_ref().map_or(0, |c| c.events)) as u64,
            records_committed: stopped.records_committed,
            rehomed: stopped.rehomed,
            last_sequence: &stream.last_sequence,
            at: stopped.frozen,
        },
    )
    .await?;
    let correctness = verify::Correctness {
        changes_wrong_counts: changes.as_ref().map_or(0, ChangesReport::wrong_counts),
        ..correctness
    };
    let broker_name = broker.describe();
    drop(broker);

    let goals = Goals::judge(
        &throughput,
        &latency,
        &load,
        &ceiling,
        stopped.peak_rss_bytes,
    );
    Ok(BenchReport {
        broker: broker_name,
        partitions: options.partitions,
        mix: options.mix,
        rollout: options.rollout,
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
        peak_rss_bytes: stopped.peak_rss_bytes,
        changes,
        ceiling,
        goals,
        correctness,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The benchmark's database: created if missing, migrated, and refused unless it is empty or holds only
/// an earlier run's data and `--reset` is given (then emptied).
async fn database(options: &BenchOptions) -> anyhow::Result<PgPool> {
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
    Ok(pool)
}

/// The PostgreSQL settings that pace its writes, as `name=value, …` for the report.
async fn postgres_settings(pool: &PgPool) -> anyhow::Result<String> {
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('max_wal_size', \
         'wal_compression', 'shared_buffers', 'synchronous_commit', 'checkpoint_timeout', 'autovacuum', \
         'backend_flush_after') \
         ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .context("failed to read the database's settings")?;
    Ok(settings
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The worker's configuration: the defaults, with the benchmark's database, its session settings, and
/// topics and a consumer group of the run's own on `broker`.
fn worker_config(options: &BenchOptions, broker: &Broker, topic: &str) -> anyhow::Result<Config> {
    let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
    config.database.url = options.database_url.clone();
    config.database.wal_compression = options.wal_compression;
    config.worker.caught_up_flush_after_kb = options.caught_up_flush_after_kb;
    config.kafka.brokers = broker.bootstrap();
    config.kafka.input_topic = topic.to_owned();
    config.kafka.dead_letter_topic = format!("{topic}.dead-letter");
    config.kafka.output_topic = format!("{topic}.rollout-targets");
    config.kafka.group_id = format!("{topic}-workers");
    config.http.listen = "127.0.0.1:0".parse()?;
    if broker.is_mock() {
        broker::tune_for_mock(&mut config.kafka);
    }
    Ok(config)
}
