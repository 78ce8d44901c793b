//! `cohort bench`'s command line: what to run, and how to print the report.

use crate::config::WalCompression;
use crate::synthetic::fleet::Mix;

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
    /// What the events change: `churn` (most change a membership), `heartbeat` (only `lastSeenAt` and a
    /// growing `uptimeSeconds`) or `realistic` (heartbeats, 2% of them also changing state).
    #[arg(long, default_value = "churn")]
    pub mix: Mix,
    /// Events per second in the latency and group-changes phases; by default half the sustained rate. A
    /// fixed rate lets runs of two builds, whose sustained rates differ by the machine's noise, be
    /// compared under the same load.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Run with a rollout under way: every org's devices targeted by a default release that watches a
    /// failure signal (`status = "maintenance"`), so every event also moves release progress.
    #[arg(long)]
    pub rollout: bool,
    /// Leave out the group-changes phase (the API's reads, previews and a group created, edited and
    /// deleted while events flow at half the sustained rate).
    #[arg(long)]
    pub skip_changes: bool,
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

fn parse_rate(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(rate) if rate.is_finite() && (1.0..=10_000_000.0).contains(&rate) => Ok(rate),
        _ => Err("expected events per second, from 1 to 10,000,000".to_owned()),
    }
}

fn parse_wal_compression(value: &str) -> Result<WalCompression, String> {
    value
        .parse()
        .map_err(|()| "expected one of server, off, pglz, lz4, zstd".to_owned())
}

impl BenchOptions {
    /// The rate of the latency and group-changes phases: `--rate`, or half the `sustained` rate.
    pub fn paced_rate(&self, sustained: f64) -> f64 {
        self.rate.unwrap_or((sustained / 2.0).max(1.0))
    }
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
            mix: Mix::Churn,
            rate: None,
            rollout: false,
            skip_changes: false,
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
