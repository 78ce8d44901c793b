//! The ceiling: how fast a minimal writer can do the worker's PostgreSQL writes, with no Kafka and no
//! evaluation in the timed part.
//!
//! Events are generated exactly as for the worker and grouped per partition into batches of
//! `worker.batch_max_events`, and each batch is computed up front by the worker's own batch code
//! ([`crate::worker::engine`]) on devices read from the database, so the writes are the worker's, row for
//! row: device updates guarded by version, membership deletes and inserts, log rows with causes, and the
//! fenced position update. The positions are kept under a topic of their own (`<input>.ceiling`), so the worker's are
//! untouched. Then only [`store::batch::commit`] runs, timed: first with as many connections as partitions
//! (each partition's batches in order on its own connection, as separate worker processes would write
//! them), then with one connection. Each run writes its own events, computed after the previous run's.
//!
//! The runs are long enough (300,000 events by default) to span two or more of the stock server's
//! checkpoint cycles. A run shorter than a cycle meets page images at a rate that depends on where in the
//! cycle it falls, and a run that follows another within one cycle meets fewer: the pages the first run
//! touched are already logged whole. Measured with 100,000-event runs, the second run met 0.60–0.87 page
//! images per event against 1.12–1.13 in the worker's throughput phase.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgPool;

use super::broker::Stream;
use super::fleet::Fleet;
use super::server::{self, ServerActivity};
use crate::config::WalCompression;
use crate::kafka::{default_partition, Record};
use crate::rules::{Catalogue, EpochMillis};
use crate::store::batch::BatchWrite;
use crate::store::partition::{self as stored, StoredMembership};
use crate::store::{self};
use crate::worker::engine::{self, Engine};
use crate::worker::registry::Registry;

/// The minimal writer's rates.
#[derive(Clone, Debug, Serialize)]
pub struct CeilingReport {
    /// Events per run (each run writes different events).
    pub events: usize,
    /// Transactions per run.
    pub batches: usize,
    /// Events per second with one connection.
    pub one_connection: f64,
    /// Connections of the second run (one per partition).
    pub connections: usize,
    /// Events per second with `connections` connections.
    pub many_connections: f64,
    /// The shape of the writes, per event: device rows, membership inserts and deletes, log rows.
    pub device_rows_per_event: f64,
    pub membership_writes_per_event: f64,
    pub log_rows_per_event: f64,
    /// CPU per event of the run with `connections` connections (the writer's threads count as `worker`).
    pub cpu_many_connections: super::cpu::CpuPerEvent,
    /// The server's WAL, page images, checkpoints and backend writes during each run (server-wide; `None`
    /// where the server does not offer the counters): set beside the worker's phases', they show whether
    /// each run met the server's checkpoints (and so its page images) as the worker did.
    pub server_one_connection: Option<ServerActivity>,
    pub server_many_connections: Option<ServerActivity>,
}

/// Settings the computation needs.
pub struct CeilingSettings<'a> {
    pub url: &'a str,
    /// What the writers' sessions set `wal_compression` to (as the worker's do).
    pub wal_compression: WalCompression,
    pub input_topic: &'a str,
    pub dead_letter_topic: &'a str,
    pub output_topic: &'a str,
    pub partitions: i32,
    pub batch_max_events: usize,
    pub max_event_bytes: usize,
    /// The instant the batches are evaluated at (the benchmark's frozen clock).
    pub now: EpochMillis,
    pub events: usize,
}

/// Computes two runs' batches, then times their commits.
pub async fn measure(
    pool: &PgPool,
    registry: &mut Registry,
    catalogue: &Catalogue,
    fleet: &Fleet,
    stream: &mut Stream,
    settings: &CeilingSettings<'_>,
) -> anyhow::Result<CeilingReport> {
    let topic = format!("{}.ceiling", settings.input_topic);
    // Generate both runs' events, then read every device they touch.
    let mut runs: Vec<Vec<Vec<Record>>> = Vec::new();
    let mut next_offset = vec![0i64; settings.partitions as usize];
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let mut per_partition: Vec<Vec<Record>> = vec![Vec::new(); settings.partitions as usize];
        for _ in 0..settings.events {
            let sequence = stream.next_sequence;
            stream.next_sequence += 1;
            let event = fleet.event(stream.mix, &mut stream.rng, sequence, settings.now);
            stream.last_sequence[event.device] = sequence;
            let p = default_partition(&event.key, settings.partitions) as usize;
            ids.insert(fleet.device_id(event.device));
            per_partition[p].push(Record {
                offset: next_offset[p],
                key: Some(event.key),
                payload: Some(event.payload),
                timestamp: None,
            });
            next_offset[p] += 1;
        }
        runs.push(per_partition);
    }
    let position = registry.position;
    let mut engine = Engine::new(
        registry,
        engine::Settings {
            input_topic: &topic,
            dead_letter_topic: settings.dead_letter_topic,
            output_topic: settings.output_topic,
            max_event_bytes: settings.max_event_bytes,
            now: settings.now,
        },
    );
    for p in 0..settings.partitions {
        let claim = stored::claim(pool, &topic, p, "cohort-bench-ceiling", position)
            .await
            .context("failed to claim a ceiling partition")?;
        engine.add_partition(p, claim);
    }
    let ids: Vec<String> = ids.into_iter().collect();
    for chunk in ids.chunks(5_000) {
        let (rows, memberships) = stored::load_devices(pool, chunk)
            .await
            .context("failed to read the ceiling's devices")?;
        let mut by_device: HashMap<&str, Vec<&StoredMembership>> = HashMap::new();
        for m in &memberships {
            by_device.entry(m.device_id.as_str()).or_default().push(m);
        }
        for row in &rows {
            let members = by_device
                .get(row.id.as_str())
                .map_or(&[][..], Vec::as_slice);
            let p = default_partition(row.id.as_bytes(), settings.partitions);
            anyhow::ensure!(
                engine.load_device(p, row, members),
                "a ceiling device's org is unknown"
            );
        }
    }
    // Compute every batch in order, installing each batch's state as the worker does after a commit.
    let mut writes: Vec<Vec<Vec<BatchWrite>>> = Vec::new();
    let (mut device_rows, mut membership_writes, mut log_rows) = (0usize, 0usize, 0usize);
    for run in runs {
        let mut per_partition = Vec::new();
        for (p, records) in run.into_iter().enumerate() {
            let mut batches = Vec::new();
            for batch in records.chunks(settings.batch_max_events.max(1)) {
                let decoded: Vec<_> = batch
                    .iter()
                    .map(|r| r.clone().decode(catalogue, settings.max_event_bytes))
                    .collect();
                let computed = engine
                    .compute_batch(p as i32, &decoded)
                    .context("a ceiling partition was not claimed")?;
                anyhow::ensure!(
                    computed.applied as usize == batch.len(),
                    "a ceiling batch did not apply every event"
                );
                let w = &computed.write;
                device_rows += w.device_updates.len() + w.device_inserts.len();
                membership_writes += w.membership_inserts.len() + w.membership_deletes.len();
                log_rows += w.log.len();
                batches.push(computed.write);
            }
            per_partition.push(batches);
        }
        writes.push(per_partition);
    }
    drop(engine);
    let batches = writes[0].iter().map(Vec::len).sum();
    let total = (settings.events * 2) as f64;
    let mut runs = writes.into_iter();

    // One connection per partition, each writing its partition's batches in order. This run goes first:
    // the second run meets pages the first already logged whole in the current checkpoint cycle, and the
    // best ceiling is usually this one (the runs must commit in the order they were computed).
    let connections = settings.partitions as usize;
    let many = crate::store::pool_options(settings.wal_compression)
        .max_connections(connections as u32)
        .min_connections(connections as u32)
        .connect(settings.url)
        .await
        .context("failed to connect the ceiling writers")?;
    // Open every connection before the clock starts.
    let mut warm = Vec::new();
    for _ in 0..connections {
        warm.push(
            many.acquire()
                .await
                .context("failed to open a ceiling connection")?,
        );
    }
    drop(warm);
    let run = runs.next().expect("two runs");
    let counters_before = server::counters(pool).await;
    let cpu_before = super::cpu::CpuSample::now();
    let started = Instant::now();
    let tasks: Vec<_> = run
        .into_iter()
        .map(|batches| {
            let pool = many.clone();
            tokio::spawn(async move {
                for batch in &batches {
                    store::batch::commit(&pool, batch).await?;
                }
                Ok::<_, store::StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .context("a ceiling writer panicked")?
            .context("a ceiling batch failed (one connection per partition)")?;
    }
    let many_connections = settings.events as f64 / started.elapsed().as_secs_f64();
    let cpu_many_connections =
        cpu_before.per_event(&super::cpu::CpuSample::now(), settings.events as u64);
    let server_many_connections = ServerActivity::between(
        counters_before,
        server::counters(pool).await,
        settings.events as u64,
    );
    many.close().await;
    tracing::info!(
        events_per_second = many_connections as u64,
        connections,
        "ceiling with one connection per partition"
    );

    // Then one connection: the partitions' batches interleaved, as one worker alternates between them.
    let one = crate::store::pool_options(settings.wal_compression)
        .max_connections(1)
        .connect(settings.url)
        .await
        .context("failed to connect the ceiling writer")?;
    let run = runs.next().expect("two runs");
    let mut interleaved = Vec::new();
    let mut queues: Vec<std::vec::IntoIter<BatchWrite>> =
        run.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = interleaved.len();
        for q in &mut queues {
            if let Some(b) = q.next() {
                interleaved.push(b);
            }
        }
        if interleaved.len() == before {
            break;
        }
    }
    let counters_before = server::counters(pool).await;
    let started = Instant::now();
    for batch in &interleaved {
        store::batch::commit(&one, batch)
            .await
            .context("a ceiling batch failed (one connection)")?;
    }
    let one_connection = settings.events as f64 / started.elapsed().as_secs_f64();
    let server_one_connection = ServerActivity::between(
        counters_before,
        server::counters(pool).await,
        settings.events as u64,
    );
    one.close().await;
    drop(interleaved);
    tracing::info!(
        events_per_second = one_connection as u64,
        "ceiling with one connection"
    );

    Ok(CeilingReport {
        events: settings.events,
        batches,
        one_connection,
        connections,
        many_connections,
        device_rows_per_event: device_rows as f64 / total,
        membership_writes_per_event: membership_writes as f64 / total,
        log_rows_per_event: log_rows as f64 / total,
        cpu_many_connections,
        server_one_connection,
        server_many_connections,
    })
}
