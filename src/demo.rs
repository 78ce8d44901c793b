//! `cohort demo`: cohort's whole main job on a fresh machine, with no configuration.
//!
//! 1. **PostgreSQL** ([`database`]): `COHORT_DATABASE_URL` or `DATABASE_URL` if set, else the local server at
//!    its default address with a database of the demo's own (`cohort_demo`). The demo empties its own
//!    database at every start, and any database holding only an earlier demo's data; it refuses a database
//!    holding orgs it did not create, and a benchmark's data unless `--reset`. If no server answers, the
//!    message says how to get one.
//! 2. **Kafka**: `COHORT_KAFKA_BROKERS` if set, else librdkafka's in-process mock cluster.
//! 3. **A synthetic fleet** ([`crate::synthetic`]): orgs, devices with realistic attributes, dynamic
//!    groups using every operator (seeded in steady state, as the benchmark does), then through the normal
//!    write paths ([`setup`]): a static group per org with hand-picked members, firmware releases to groups
//!    and as each org's default, one locked device and one development device per org.
//! 4. **The worker, the relay and the REST API** (the same [`Application`] `cohort worker` runs), with a
//!    system key and an org key printed once the API is up. The stream starts once the worker has applied
//!    the set-up, so the seeded fleet (memberships, initial firmware targets) is in place before the first
//!    event.
//! 5. **A stream** of attribute changes (and a few poison messages, to show dead letters) at `--rate`,
//!    with a live progress line, then a [`summary`] keeping the seeded fleet apart from what the events
//!    caused, with the throughput the worker measured. With `--serve` the API keeps serving until Ctrl-C,
//!    and says so; the address is never printed once the API has stopped.

pub mod database;
pub mod setup;
pub mod summary;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::app::Application;
use crate::config::Config;
use crate::rules::Catalogue;
use crate::synthetic::broker::{self, Broker, Stream};
use crate::synthetic::fleet::{Fleet, Mix, Rng};
use crate::worker::ManualClock;

pub use database::DEFAULT_DATABASE_URL;
pub use summary::Summary;

/// `cohort demo`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Orgs the devices are spread over.
    #[arg(long, default_value_t = 2)]
    pub orgs: usize,
    /// Dynamic groups (spread over the orgs; every operator is used).
    #[arg(long, default_value_t = 60)]
    pub groups: usize,
    /// Attribute-change events to stream.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 2_000.0)]
    pub rate: f64,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Keep serving the API after the stream, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// Also empty a database named by DATABASE_URL that holds a benchmark's synthetic data. Not needed for
    /// the demo's own database (`cohort_demo`) or one holding only an earlier demo's data: those are
    /// emptied at every start. Orgs the demo did not create are never emptied.
    #[arg(long)]
    pub reset: bool,
    /// Print the summary as JSON (after the table).
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs the demo.
pub async fn command(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.devices >= args.orgs.max(1) * 10 && args.orgs >= 1,
        "--devices must be at least ten per org"
    );
    anyhow::ensure!(
        args.groups >= 1 && args.partitions >= 1,
        "--groups and --partitions must be positive"
    );
    anyhow::ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be a number of events per second (0: as fast as possible)"
    );
    let (url, pool) = database::prepare(&args).await?;
    // Before anything is seeded: a database holding this key and only the demo's orgs is recognised as
    // an earlier demo's, and emptied by the next run, even if this one stops half-way.
    let (_, system_key) =
        crate::store::api_keys::create(&pool, None, database::SYSTEM_KEY_NAME).await?;

    let catalogue = Arc::new(Catalogue::default());
    let t0 = chrono::Utc::now().timestamp_millis();
    let fleet = Fleet::new(args.devices, args.orgs, args.seed, t0);
    let brokers = std::env::var("COHORT_KAFKA_BROKERS").ok();
    let broker = Broker::start(brokers.as_deref())?;
    let prefix = match brokers {
        Some(_) => format!("cohort-demo-{t0:x}."),
        None => String::new(),
    };
    let input = format!("{prefix}device-attribute-changes");
    for (topic, partitions) in [
        (input.clone(), args.partitions),
        (format!("{prefix}rollout-targets"), 1),
        (format!("{input}.dead-letter"), 1),
    ] {
        broker.create_topic(&topic, partitions).await?;
    }
    println!("kafka:      {}", broker.describe());
    println!("postgresql: {}", crate::config::redact_database_url(&url));
    println!(
        "seeding {} devices in {} orgs with {} dynamic groups…",
        args.devices, args.orgs, args.groups
    );
    let seeded = crate::synthetic::seed::seed(
        &pool,
        &url,
        &fleet,
        &catalogue,
        args.groups,
        args.partitions,
        &input,
    )
    .await?;
    let setup = setup::setup(&pool, &fleet).await?;
    let set_up = crate::store::control::head(&pool).await?;

    let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
    config.database.url = url.clone();
    config.kafka.brokers = broker.bootstrap();
    config.kafka.input_topic = input.clone();
    config.kafka.output_topic = format!("{prefix}rollout-targets");
    config.kafka.dead_letter_topic = format!("{input}.dead-letter");
    config.kafka.group_id = format!("{prefix}cohort-demo");
    config.http.listen = args.listen;
    config.api.rate_limit_per_second = 1000;
    config.api.rate_limit_burst = 2000;
    if broker.is_mock() {
        broker::tune_for_mock(&mut config.kafka);
    }
    let rollout_topic = config.kafka.output_topic.clone();
    // The worker's clock follows the wall clock (the fleet's datetimes are relative to t0).
    let clock = ManualClock::new(t0);
    let ticker = crate::synthetic::follow_wall_clock(&clock, t0);
    let app = Application::build_with_clock(config.clone(), Arc::new(clock.clone())).await?;
    let status = app.status();
    let mut address = app.http_address();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let addr = tokio::time::timeout(Duration::from_secs(60), address.wait_for(Option::is_some))
        .await
        .context("the API did not start")?
        .map_err(|_| {
            anyhow::anyhow!("the worker stopped before serving (is the port taken? try --listen)")
        })?
        .expect("waited for Some");
    let api = format!("http://{addr}/api/v1");
    let keys = format!(
        "  system key:          {system_key}\n  key for org {}: {}",
        Fleet::org_id(0),
        setup.org_key
    );
    println!("api:        {api}  (OpenAPI: {api}/openapi.json)\n{keys}");
    setup::wait_for(&status, args.partitions as usize, &mut running).await?;
    setup::wait_for_control(
        &pool,
        &input,
        args.partitions as usize,
        set_up,
        &mut running,
    )
    .await?;
    let memberships = summary::memberships(&pool).await?;
    let (changes_before, rollouts_before) = summary::totals(&pool, &rollout_topic).await?;

    // The stream: a few poison messages, then the fleet's attribute changes.
    let (producer, deliveries) = broker::producer(&broker.bootstrap())?;
    let producer = Arc::new(producer);
    let committed_before = status.records_committed.load(Ordering::SeqCst);
    let latency_before = status.latency.snapshot();
    let started = Instant::now();
    let poison = setup::poison(&producer, &input, &fleet)?;
    let stream = Stream {
        mix: Mix::Churn,
        rng: Rng::new(args.seed ^ 0x5eed),
        next_sequence: 1,
        last_sequence: vec![0; args.devices],
    };
    let requested_rate = (args.rate > 0.0).then_some(args.rate);
    let producing = {
        let (producer, input, fleet, clock) = (
            producer.clone(),
            input.clone(),
            fleet.clone(),
            clock.clone(),
        );
        let events = args.events;
        std::thread::spawn(move || {
            let mut stream = stream;
            broker::produce(
                &producer,
                &input,
                &fleet,
                &mut stream,
                &clock,
                events,
                requested_rate,
                None,
                None,
            )
        })
    };
    let total = (args.events + poison) as u64;
    let mut last_line = Instant::now() - Duration::from_secs(1);
    let (committed, seconds) = loop {
        anyhow::ensure!(
            !running.is_finished(),
            "the worker stopped during the stream"
        );
        let committed = status
            .records_committed
            .load(Ordering::SeqCst)
            .saturating_sub(committed_before);
        let elapsed = started.elapsed().as_secs_f64();
        if last_line.elapsed() >= Duration::from_secs(1) || committed >= total {
            last_line = Instant::now();
            let (changes, rollouts) = summary::totals(&pool, &rollout_topic).await?;
            let produced = deliveries.delivered.load(Ordering::Relaxed);
            println!(
                "[{elapsed:5.1}s] produced {produced:>7}  consumed {committed:>7} ({:>6.0}/s)  lag {:>6}  membership changes {:>7}  rollout events {:>6}",
                summary::throughput(committed, elapsed),
                produced.saturating_sub(committed),
                changes - changes_before,
                rollouts - rollouts_before,
            );
        }
        if committed >= total {
            break (committed, elapsed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let latency = status.latency.snapshot().since(&latency_before);
    // Let the relay publish what the last batches wrote before summarising.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let effects = summary::effects(&pool, &rollout_topic).await?;
    let mut summary = Summary {
        fleet: summary::FleetSummary {
            devices: args.devices,
            orgs: args.orgs,
            dynamic_groups: seeded.groups,
            static_groups: setup.static_groups,
            memberships,
            membership_changes: effects.setup.membership_changes,
            initial_targets: effects.setup.rollout_events,
        },
        stream: summary::StreamSummary {
            events: args.events,
            poison_events: poison,
            records_committed: committed,
            seconds,
            events_per_second: summary::throughput(committed, seconds),
            requested_rate,
            membership_changes: effects.events.membership_changes,
            rollout_events: effects.events.rollout_events,
            dead_letters: summary::dead_letters(&pool, &config.kafka.dead_letter_topic).await?,
            ..Default::default()
        },
        timers: effects.timers,
    };
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        if let Some(ms) = latency.quantile(q) {
            summary.stream.latency_ms.insert(name.into(), ms);
        }
    }
    if let Some(ms) = latency.max() {
        summary.stream.latency_ms.insert("max".into(), ms);
    }
    print!("{}", summary::render(&summary));
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if args.serve {
        println!(
            "\nthe API is still serving at {api}; press Ctrl-C to stop it.\n{keys}\ntry:\n  curl -s -H 'Authorization: Bearer {}' '{api}/groups?limit=5'",
            setup.org_key
        );
        tokio::select! {
            _ = crate::app::shutdown_signal() => {}
            result = &mut running => return result.context("the worker task failed")?,
        }
    }
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), running).await;
    ticker.abort();
    drop(producer);
    match result {
        Ok(joined) => joined.context("the worker task failed")??,
        Err(_) => anyhow::bail!("the worker did not stop within 30 s"),
    }
    if args.serve {
        println!("the API has stopped");
    }
    Ok(())
}
