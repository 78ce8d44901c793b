//! `cohort demo`: cohort's whole main job on a fresh machine, with no configuration.
//!
//! 1. **PostgreSQL**: `COHORT_DATABASE_URL` or `DATABASE_URL` if set, else the local server at its default
//!    address with a database of the demo's own (`cohort_demo`, emptied at every start). A database the
//!    user named is never emptied unless `--reset` says so. If no server answers, the message says how to
//!    get one.
//! 2. **Kafka**: `COHORT_KAFKA_BROKERS` if set, else librdkafka's in-process mock cluster.
//! 3. **A synthetic fleet** ([`crate::bench::fleet`]): orgs, devices with realistic attributes, dynamic
//!    groups using every operator (seeded in steady state, as the benchmark does), then through the normal
//!    write paths: a static group per org with hand-picked members, firmware releases to groups and as each
//!    org's default, one locked device and one development device per org.
//! 4. **The worker, the relay and the REST API** (the same [`Application`] `cohort worker` runs), with a
//!    system key and an org key printed at start.
//! 5. **A stream** of attribute changes (and a few poison messages, to show dead letters) at `--rate`,
//!    with a live progress line, then a summary: throughput, latency percentiles, membership changes and
//!    rollout events by reason, dead letters. With `--serve` the API keeps serving until Ctrl-C.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::{BaseRecord, Producer as _};
use serde::Serialize;
use sqlx::PgPool;

use crate::app::Application;
use crate::bench::broker::{self, Broker, Stream};
use crate::bench::fleet::{Fleet, Rng};
use crate::config::Config;
use crate::firmware::Version;
use crate::rules::Catalogue;
use crate::store::control::LockChange;
use crate::store::firmware::{self, ReleaseTarget};
use crate::store::{api_keys, groups, members};
use crate::worker::{ManualClock, Status};

/// The demo's own database on the local server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/cohort_demo";

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
    /// Empty a database named by DATABASE_URL that already holds demo or benchmark data.
    #[arg(long)]
    pub reset: bool,
    /// Print the summary as JSON (after the table).
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The end-of-run summary.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub devices: usize,
    pub orgs: usize,
    pub dynamic_groups: usize,
    pub static_groups: usize,
    pub events: usize,
    pub poison_events: usize,
    pub seconds: f64,
    pub events_per_second: f64,
    pub latency_ms: BTreeMap<String, u64>,
    pub membership_changes: BTreeMap<String, i64>,
    pub rollout_events: BTreeMap<String, i64>,
    pub dead_letters: BTreeMap<String, i64>,
    pub api: String,
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
    let url = database(&args).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .context("failed to connect to the demo database")?;
    crate::store::migrate(&pool).await?;
    crate::bench::prepare(&pool, true).await?;

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
    let seeded = crate::bench::seed::seed(
        &pool,
        &url,
        &fleet,
        &catalogue,
        args.groups,
        args.partitions,
        &input,
    )
    .await?;
    let setup = setup(&pool, &fleet).await?;

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
    if matches!(broker, Broker::Mock(_)) {
        // The mock broker does not wake a waiting fetch when data arrives (see `cohort bench`).
        config
            .kafka
            .properties
            .insert("fetch.wait.max.ms".into(), "10".into());
    }
    // The worker's clock follows the wall clock (the fleet's datetimes are relative to t0).
    let clock = ManualClock::new(t0);
    let ticker = {
        let clock = clock.clone();
        let from = Instant::now();
        tokio::spawn(async move {
            loop {
                clock.set(t0 + from.elapsed().as_millis() as i64);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
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
    let api = format!("http://{addr}");
    println!("api:        {api}/api/v1  (OpenAPI: {api}/api/v1/openapi.json)");
    println!("  system key:          {}", setup.system_key);
    println!("  key for org {}: {}", Fleet::org_id(0), setup.org_key);
    wait_for(&status, args.partitions as usize, &mut running).await?;

    // The stream: a few poison messages, then the fleet's attribute changes.
    let (producer, deliveries) = broker::producer(&broker.bootstrap())?;
    let producer = Arc::new(producer);
    let committed_before = status.records_committed.load(Ordering::SeqCst);
    let poison = poison(&producer, &input, &fleet)?;
    let started = Instant::now();
    let latency_before = status.latency.snapshot();
    let stream = Stream {
        rng: Rng::new(args.seed ^ 0x5eed),
        next_sequence: 1,
        last_sequence: vec![0; args.devices],
    };
    let producing = {
        let (producer, input, fleet, clock) = (
            producer.clone(),
            input.clone(),
            fleet.clone(),
            clock.clone(),
        );
        let (events, rate) = (args.events, (args.rate > 0.0).then_some(args.rate));
        std::thread::spawn(move || {
            let mut stream = stream;
            broker::produce(
                &producer,
                &input,
                &fleet,
                &mut stream,
                &clock,
                events,
                rate,
                None,
            )
        })
    };
    let total = (args.events + poison) as u64;
    let mut last_line = Instant::now() - Duration::from_secs(1);
    loop {
        anyhow::ensure!(
            !running.is_finished(),
            "the worker stopped during the stream"
        );
        let committed = status
            .records_committed
            .load(Ordering::SeqCst)
            .saturating_sub(committed_before);
        if last_line.elapsed() >= Duration::from_secs(1) || committed >= total {
            last_line = Instant::now();
            let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
                .fetch_one(&pool)
                .await?;
            let rollouts: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE topic = $1")
                .bind(&config.kafka.output_topic)
                .fetch_one(&pool)
                .await?;
            let produced = deliveries.delivered.load(Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "[{elapsed:5.1}s] produced {produced:>7}  consumed {committed:>7} ({:>6.0}/s)  lag {:>6}  membership changes {changes:>7}  rollout events {rollouts:>6}",
                committed as f64 / elapsed.max(0.001),
                produced.saturating_sub(committed),
            );
        }
        if committed >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    producing
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let latency = status.latency.snapshot().since(&latency_before);
    // Let the relay publish what the last batches wrote before summarising.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut summary = Summary {
        devices: args.devices,
        orgs: args.orgs,
        dynamic_groups: seeded.groups,
        static_groups: setup.static_groups,
        events: args.events,
        poison_events: poison,
        seconds,
        events_per_second: args.events as f64 / seconds.max(0.001),
        api: api.clone(),
        ..Summary::default()
    };
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        if let Some(ms) = latency.quantile(q) {
            summary.latency_ms.insert(name.into(), ms);
        }
    }
    if let Some(ms) = latency.max() {
        summary.latency_ms.insert("max".into(), ms);
    }
    let outcome = counts(&pool, &config).await?;
    summary.membership_changes = outcome.0;
    summary.rollout_events = outcome.1;
    summary.dead_letters = outcome.2;
    print!("{}", render(&summary));
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if args.serve {
        println!(
            "\nserving the API at {api} until Ctrl-C; try:\n  curl -s -H 'Authorization: Bearer {}' {api}/api/v1/groups?limit=5",
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
        Ok(joined) => joined.context("the worker task failed")?,
        Err(_) => anyhow::bail!("the worker did not stop within 30 s"),
    }
}

/// The database URL to use, checked to answer.
async fn database(args: &DemoArgs) -> anyhow::Result<String> {
    let named = std::env::var("COHORT_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| !u.trim().is_empty());
    let url = named
        .clone()
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let reachable = tokio::time::timeout(
        Duration::from_secs(10),
        crate::store::create_database_if_missing(&url),
    )
    .await;
    match reachable {
        Ok(Ok(())) => {}
        Ok(Err(e)) if !e.is_transient() => {
            return Err(e).with_context(|| {
                format!(
                    "PostgreSQL at {} refused the demo",
                    crate::config::redact_database_url(&url)
                )
            })
        }
        _ => anyhow::bail!(
            "no PostgreSQL answers at {}.\n\
             Start one, then run the demo again:\n\
             \x20 - Debian/Ubuntu: sudo apt-get install postgresql && sudo pg_ctlcluster $(ls /etc/postgresql) main start\n\
             \x20 - Docker:        docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:17\n\
             or point the demo at a server you have: DATABASE_URL=postgres://user:password@host:5432/dbname",
            crate::config::redact_database_url(&url)
        ),
    }
    // The demo's own database is emptied at every start (by the caller); a named one only with --reset.
    if named.is_some() && !args.reset {
        let pool = sqlx::PgPool::connect(&url).await?;
        crate::store::migrate(&pool).await?;
        let used: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orgs)")
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        anyhow::ensure!(
            !used,
            "the database named by DATABASE_URL already holds data; pass --reset to empty it (only demo \
             or benchmark data is ever emptied), or name an empty database"
        );
    }
    Ok(url)
}

/// What [`setup`] created.
struct Setup {
    static_groups: usize,
    system_key: String,
    org_key: String,
}

/// Static groups, releases, a lock and a development device per org, and API keys, all through the
/// normal write paths (the control log tells the worker).
async fn setup(pool: &PgPool, fleet: &Fleet) -> anyhow::Result<Setup> {
    let mut static_groups = 0;
    for o in 0..fleet.orgs {
        let org = Fleet::org_id(o);
        let devices: Vec<usize> = (0..fleet.devices)
            .filter(|&i| fleet.org_of(i) == o)
            .collect();
        let pilot = groups::create_group(
            pool,
            &Catalogue::default(),
            &groups::NewGroup {
                org_id: org.clone(),
                name: "pilot devices".into(),
                description: "Hand-picked devices that get new firmware first".into(),
                tags: vec!["pilot".into()],
                ..Default::default()
            },
        )
        .await?;
        static_groups += 1;
        let picked: Vec<String> = devices
            .iter()
            .take(25)
            .map(|&i| fleet.device_id(i))
            .collect();
        members::add_static(pool, &org, pilot.group_id, &picked, "cohort demo").await?;
        // The org default: the version most of its devices report (a default must be one some device
        // runs); a newer one to the pilot group; the newest to the first few dynamic groups.
        let running: Option<String> = sqlx::query_scalar(
            "SELECT attributes ->> 'firmwareVersion' FROM devices WHERE org_id = $1 \
             GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .bind(&org)
        .fetch_optional(pool)
        .await?
        .flatten();
        if let Some(version) = running.filter(|v| Version::parse(v).is_ok()) {
            firmware::release(pool, &org, ReleaseTarget::Default, &version, "cohort demo").await?;
        }
        firmware::release(
            pool,
            &org,
            ReleaseTarget::Group(pilot.group_id),
            "9.0.0",
            "cohort demo",
        )
        .await?;
        let dynamic: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM device_groups WHERE org_id = $1 AND type = 'dynamic' AND deleted_at IS NULL \
             ORDER BY name LIMIT 3",
        )
        .bind(&org)
        .fetch_all(pool)
        .await?;
        for (n, group) in dynamic.into_iter().enumerate() {
            let version = format!("8.{n}.0");
            firmware::release(
                pool,
                &org,
                ReleaseTarget::Group(group),
                &version,
                "cohort demo",
            )
            .await?;
        }
        if let (Some(&locked), Some(&dev)) = (devices.get(30), devices.get(31)) {
            members::set_device_settings(
                pool,
                &org,
                &fleet.device_id(locked),
                None,
                LockChange::Set("7.0.0".into()),
                "cohort demo",
            )
            .await?;
            members::set_device_settings(
                pool,
                &org,
                &fleet.device_id(dev),
                Some(true),
                LockChange::Unchanged,
                "cohort demo",
            )
            .await?;
        }
    }
    let (_, system_key) = api_keys::create(pool, None, "cohort demo (system)").await?;
    let (_, org_key) = api_keys::create(pool, Some(&Fleet::org_id(0)), "cohort demo").await?;
    Ok(Setup {
        static_groups,
        system_key,
        org_key,
    })
}

/// Waits until the worker owns every partition.
async fn wait_for(
    status: &Status,
    partitions: usize,
    running: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while status.partitions.load(Ordering::SeqCst) < partitions {
        if running.is_finished() {
            return match running.await {
                Ok(Err(e)) => Err(e.context("the worker stopped while starting")),
                _ => Err(anyhow::anyhow!("the worker stopped while starting")),
            };
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not start in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A few messages no worker can apply (they are dead-lettered, counted, and the stream goes on): broken
/// JSON, an unknown org, a wrong type, a device claimed by another org. Returns how many.
fn poison(
    producer: &rdkafka::producer::BaseProducer<broker::Counting>,
    topic: &str,
    fleet: &Fleet,
) -> anyhow::Result<usize> {
    let device = fleet.device_id(0);
    // Another existing org claiming the device (or, with one org, an org that does not exist).
    let foreign_org =
        Fleet::org_id((fleet.org_of(0) + 1) % (fleet.orgs + usize::from(fleet.orgs == 1)));
    let messages = [
        (
            device.clone(),
            "{\"eventId\": \"bad-1\", \"orgId\":".to_string(),
        ),
        (
            "stranger".to_string(),
            serde_json::json!({"eventId": "bad-2", "orgId": "no-such-org", "deviceId": "stranger",
                "sequence": 1, "attributes": {}})
            .to_string(),
        ),
        (
            device.clone(),
            serde_json::json!({"eventId": "bad-3", "orgId": Fleet::org_id(0), "deviceId": device,
                "sequence": 1, "attributes": {"uptimeSeconds": "soon"}})
            .to_string(),
        ),
        (
            device.clone(),
            serde_json::json!({"eventId": "bad-4", "orgId": foreign_org, "deviceId": device,
                "sequence": 1, "attributes": {}})
            .to_string(),
        ),
    ];
    for (key, payload) in &messages {
        producer
            .send(
                BaseRecord::to(topic)
                    .key(key.as_str())
                    .payload(payload.as_str()),
            )
            .map_err(|(e, _)| e)
            .context("failed to produce a poison message")?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("the poison messages were not delivered")?;
    Ok(messages.len())
}

type Counts = (
    BTreeMap<String, i64>,
    BTreeMap<String, i64>,
    BTreeMap<String, i64>,
);

/// Membership changes by reason, rollout events by the reason of their new target, dead letters by
/// reason — read from PostgreSQL, the system of record.
pub async fn counts(pool: &PgPool, config: &Config) -> anyhow::Result<Counts> {
    let changes: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count(*) FROM group_membership_log GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await?;
    let rollouts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT convert_from(payload, 'UTF8')::jsonb -> 'data' -> 'target' ->> 'reason', count(*) \
         FROM outbox WHERE topic = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(&config.kafka.output_topic)
    .fetch_all(pool)
    .await?;
    let dead: Vec<(String, i64)> = sqlx::query_as(
        "SELECT headers ->> $2, count(*) FROM outbox WHERE topic = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(&config.kafka.dead_letter_topic)
    .bind(crate::event::HEADER_REASON)
    .fetch_all(pool)
    .await?;
    Ok((
        changes.into_iter().collect(),
        rollouts.into_iter().collect(),
        dead.into_iter().collect(),
    ))
}

/// The summary table.
pub fn render(s: &Summary) -> String {
    let mut out = String::from("\nsummary\n");
    let row = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("  {name:<28} {value}\n"));
    };
    row(
        &mut out,
        "fleet",
        format!(
            "{} devices, {} orgs, {} dynamic + {} static groups",
            s.devices, s.orgs, s.dynamic_groups, s.static_groups
        ),
    );
    row(
        &mut out,
        "events",
        format!(
            "{} attribute changes + {} poison messages in {:.1} s",
            s.events, s.poison_events, s.seconds
        ),
    );
    row(
        &mut out,
        "throughput",
        format!("{:.0} events/s", s.events_per_second),
    );
    let latency: Vec<String> = s
        .latency_ms
        .iter()
        .map(|(k, v)| format!("{k} {v} ms"))
        .collect();
    row(&mut out, "latency (produce → commit)", latency.join(", "));
    let join = |m: &BTreeMap<String, i64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    row(&mut out, "membership changes", join(&s.membership_changes));
    row(
        &mut out,
        "rollout events (new target)",
        join(&s.rollout_events),
    );
    row(&mut out, "dead letters", join(&s.dead_letters));
    row(&mut out, "api", format!("{}/api/v1", s.api));
    out
}
