//! The phases of `cohort bench` in which the worker runs: it loads its partitions, then takes events as
//! fast as the broker delivers them (the sustained rate), then at half that rate (the latency, and the
//! group changes of [`changes`](super::changes), which drives the worker through the rig), and stops with
//! its clock frozen.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::producer::BaseProducer;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::cpu;
use super::options::BenchOptions;
use super::readings::{
    crossing, last_log_id, proc_status, reset_peak_rss, stage_snapshots, wait_committed,
    wait_quiet, Windows,
};
use super::report::{LatencyReport, LoadReport, StageReport, ThroughputReport};
use super::server::{self, ServerActivity};
use crate::app::Application;
use crate::config::Config;
use crate::rules::EpochMillis;
use crate::synthetic::broker::{self, Broker, Counting, Deliveries, Stream};
use crate::synthetic::fleet::Fleet;
use crate::worker::{Clock, ManualClock, Status};

/// Events per partition the producer may run ahead of the worker on the mock cluster: a few batches (so
/// the worker never waits for input) and well within the mock's 5 MB per partition.
const MOCK_BACKLOG_PER_PARTITION: u64 = 8_000;

/// What a producer thread ends with: the events it produced, the time spent and the stream.
type Produced = anyhow::Result<(usize, Duration, Stream)>;

/// The worker under test, as `cohort worker` runs it, on a task of this process.
pub struct Worker {
    /// Its counters, which every phase reads.
    status: Arc<Status>,
    /// Its task: a phase fails as soon as it ends.
    task: JoinHandle<anyhow::Result<()>>,
    /// Asks it to stop.
    stop: oneshot::Sender<()>,
    /// The address its HTTP listener (the REST API included) bound, once bound.
    http: tokio::sync::watch::Receiver<Option<SocketAddr>>,
}

/// The load: the worker started with `config` on `clock` and waited for until it owns all `--partitions`;
/// resident memory is read before it starts and once it holds every device, and its peak reset.
pub async fn load(
    config: &Config,
    clock: &ManualClock,
    options: &BenchOptions,
) -> anyhow::Result<(Worker, LoadReport)> {
    let app = Application::build_with_clock(config.clone(), Arc::new(clock.clone()))
        .await
        .context("failed to build the worker")?;
    let status = app.status();
    let http = app.http_address();
    let rss_before = proc_status("VmRSS:");
    let load_started = Instant::now();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(1800);
    while status.partitions.load(Ordering::SeqCst) < options.partitions as usize {
        anyhow::ensure!(!task.is_finished(), "the worker stopped while loading");
        anyhow::ensure!(
            Instant::now() < deadline,
            "the worker did not load its partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    let rss_after = proc_status("VmRSS:");
    // The peak read at the stop is then the operating worker's, not the seeding's or the load's.
    if !reset_peak_rss() {
        tracing::warn!("cannot reset the peak resident memory; the reported peak includes seeding");
    }
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
    Ok((
        Worker {
            status,
            task,
            stop,
            http,
        },
        load,
    ))
}

/// The loaded worker and what feeds it events, from the first measured phase to the stop.
pub struct Rig {
    worker: Worker,
    /// Shared with the thread that produces each phase's events.
    producer: Arc<BaseProducer<Counting>>,
    /// The producer's delivery outcomes: an event not delivered fails the run.
    deliveries: Arc<Deliveries>,
    /// The input topic.
    topic: String,
    fleet: Fleet,
    /// The worker's clock, and the task that has it follow the wall clock until the stop freezes it.
    clock: ManualClock,
    ticker: JoinHandle<()>,
    /// With the mock cluster, how far production may run ahead of the commits (see [`broker::Ahead`]).
    backlog: Option<u64>,
}

/// What the stop leaves for the ceiling and the check.
pub struct Stopped {
    /// The instant the worker's clock was frozen at: its timers last fired then.
    pub frozen: EpochMillis,
    /// The worker's counters once it was quiet.
    pub records_committed: u64,
    pub rehomed: u64,
    /// The process's peak resident memory (`VmHWM`) since the load, broker included.
    pub peak_rss_bytes: u64,
}

impl Rig {
    /// Sets the worker's clock, which read `t0` while the partitions loaded, to follow the wall clock, and
    /// connects the producer.
    pub fn new(
        worker: Worker,
        broker: &Broker,
        options: &BenchOptions,
        topic: &str,
        fleet: &Fleet,
        clock: &ManualClock,
        t0: EpochMillis,
    ) -> anyhow::Result<Self> {
        let ticker = crate::synthetic::follow_wall_clock(clock, t0);
        let (producer, deliveries) = broker::producer(&broker.bootstrap())?;
        // With the mock cluster, production stays a bounded backlog ahead of the commits (see
        // `broker::Ahead`).
        let backlog = broker
            .is_mock()
            .then_some(MOCK_BACKLOG_PER_PARTITION * options.partitions as u64);
        Ok(Self {
            worker,
            producer: Arc::new(producer),
            deliveries,
            topic: topic.to_owned(),
            fleet: fleet.clone(),
            clock: clock.clone(),
            ticker,
            backlog,
        })
    }

    /// Produces `count` events of `stream` (at `rate` events per second, or as fast as the producer
    /// takes them) on a thread of its own (librdkafka calls block), never more than the backlog ahead of
    /// the commits since `base`; resolves with the time spent and the stream.
    fn produce(
        &self,
        stream: Stream,
        count: usize,
        rate: Option<f64>,
        base: u64,
    ) -> oneshot::Receiver<Produced> {
        self.spawn_producer(stream, count, rate, base, None)
    }

    /// Produces events of `stream` at `rate` events per second on a thread of its own until `stop` is set,
    /// never more than the backlog ahead of the commits; resolves with the events produced, the time
    /// spent and the stream.
    pub(super) fn produce_until(
        &self,
        stream: Stream,
        rate: f64,
        stop: Arc<AtomicBool>,
    ) -> oneshot::Receiver<Produced> {
        let base = self.worker.status.records_committed.load(Ordering::SeqCst);
        self.spawn_producer(stream, usize::MAX, Some(rate), base, Some(stop))
    }

    /// The producer thread of [`Rig::produce`] and [`Rig::produce_until`].
    fn spawn_producer(
        &self,
        mut stream: Stream,
        count: usize,
        rate: Option<f64>,
        base: u64,
        stop: Option<Arc<AtomicBool>>,
    ) -> oneshot::Receiver<Produced> {
        let (producer, topic, fleet, clock) = (
            self.producer.clone(),
            self.topic.clone(),
            self.fleet.clone(),
            self.clock.clone(),
        );
        let ahead = self.backlog.map(|max| broker::Ahead {
            status: self.worker.status.clone(),
            base,
            max,
        });
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || {
                let first = stream.next_sequence;
                let result = broker::produce(
                    &producer,
                    &topic,
                    &fleet,
                    &mut stream,
                    &clock,
                    count,
                    rate,
                    ahead.as_ref(),
                    stop.as_deref(),
                )
                .map(|elapsed| ((stream.next_sequence - first) as usize, elapsed, stream));
                let _ = tx.send(result);
            })
            .expect("failed to spawn the producer thread");
        rx
    }

    /// The worker's counters.
    pub(super) fn status(&self) -> Arc<Status> {
        self.worker.status.clone()
    }

    /// The worker's task, to fail a phase as soon as it ends.
    pub(super) fn task(&mut self) -> &mut JoinHandle<anyhow::Result<()>> {
        &mut self.worker.task
    }

    /// Events the broker has acknowledged since the first measured phase: once the worker has committed
    /// as many records, every event produced before now is committed.
    pub(super) fn delivered(&self) -> u64 {
        self.deliveries.delivered.load(Ordering::SeqCst)
    }

    /// The input topic.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// The address the worker's HTTP listener bound (it binds before the partitions load).
    pub(super) async fn api_address(&mut self) -> anyhow::Result<SocketAddr> {
        let bound = tokio::time::timeout(
            Duration::from_secs(60),
            self.worker.http.wait_for(Option::is_some),
        )
        .await
        .context("the worker's HTTP listener did not bind within a minute")?
        .context("the worker stopped before its HTTP listener bound")?;
        let addr = *bound;
        addr.context("the worker's HTTP listener has no address")
    }

    /// The sustained rate: `events` events at once, as fast as the producer takes them. Returns the
    /// stream to go on with.
    pub async fn throughput(
        &mut self,
        pool: &PgPool,
        stream: Stream,
        events: usize,
    ) -> anyhow::Result<(ThroughputReport, Option<ServerActivity>, Stream)> {
        let status = self.worker.status.clone();
        let base = status.records_committed.load(Ordering::SeqCst);
        let batches_before = status.batches.load(Ordering::SeqCst);
        let pipelined_before = status.batches_pipelined.load(Ordering::SeqCst);
        let caught_up_before = status.batches_caught_up.load(Ordering::SeqCst);
        let counters_before = server::counters(pool).await;
        let log_before = last_log_id(pool).await;
        let cpu_before = cpu::CpuSample::now();
        let phase_started = Instant::now();
        let producing = self.produce(stream, events, None, base);
        let samples = wait_committed(
            &status,
            base,
            events as u64,
            &mut self.worker.task,
            phase_started,
            None,
        )
        .await?;
        let (_, produce_time, stream) =
            producing.await.context("the producer thread stopped")??;
        let overall = phase_started.elapsed().as_secs_f64();
        let cpu = cpu_before.per_event(&cpu::CpuSample::now(), events as u64);
        let rss_after_bytes = proc_status("VmRSS:");
        let devices_reported = stream.last_sequence.iter().filter(|&&s| s > 0).count();
        let counters_after = server::counters(pool).await;
        let log_rows_per_event = last_log_id(pool)
            .await
            .zip(log_before)
            .map(|(after, before)| (after - before) as f64 / events.max(1) as f64);
        let server = ServerActivity::between(counters_before, counters_after, events as u64);
        let n = events as u64;
        let (lo, hi) = (crossing(&samples, n / 10), crossing(&samples, n * 9 / 10));
        let (window_events, window_seconds) = (n * 9 / 10 - n / 10, (hi - lo).max(1e-6));
        let throughput = ThroughputReport {
            events,
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
            rss_after_bytes,
            devices_reported,
        };
        tracing::info!(
            events_per_second = throughput.events_per_second as u64,
            "throughput measured"
        );
        Ok((throughput, server, stream))
    }

    /// The latency: events at the paced rate (half the `sustained` rate unless `--rate`), for `--latency-warmup-seconds` and then for
    /// `--latency-seconds`, measured over the latter. Returns the stream to go on with.
    pub async fn latency(
        &mut self,
        pool: &PgPool,
        stream: Stream,
        sustained: f64,
        options: &BenchOptions,
    ) -> anyhow::Result<(LatencyReport, Option<ServerActivity>, Stream)> {
        let status = self.worker.status.clone();
        let rate = options.paced_rate(sustained);
        let latency_events = ((rate * options.latency_seconds as f64) as usize).max(100);
        let warmup_events = (rate * options.latency_warmup_seconds as f64) as usize;
        let base = status.records_committed.load(Ordering::SeqCst);
        let phase_started = Instant::now();
        let mut windows = Windows::new(&status, Duration::from_secs(10));
        let producing = self.produce(stream, warmup_events + latency_events, Some(rate), base);
        wait_committed(
            &status,
            base,
            warmup_events as u64,
            &mut self.worker.task,
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
        let counters_before = server::counters(pool).await;
        wait_committed(
            &status,
            base,
            latency_events as u64,
            &mut self.worker.task,
            phase_started,
            Some(&mut windows),
        )
        .await?;
        let (_, produce_time, stream) =
            producing.await.context("the producer thread stopped")??;
        let server = ServerActivity::between(
            counters_before,
            server::counters(pool).await,
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
        Ok((latency, server, stream))
    }

    /// Fails if any event was not delivered; otherwise freezes the clock, lets the worker fire the timers
    /// due by then, and stops it.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        let Rig {
            worker,
            producer,
            deliveries,
            clock,
            ticker,
            ..
        } = self;
        anyhow::ensure!(
            deliveries.failed.load(Ordering::SeqCst) == 0,
            "some events were not delivered"
        );
        ticker.abort();
        let _ = ticker.await;
        let frozen = clock.now();
        let Worker {
            status,
            mut task,
            stop,
            ..
        } = worker;
        wait_quiet(&status, &mut task).await?;
        let records_committed = status.records_committed.load(Ordering::SeqCst);
        let rehomed = status.devices_rehomed.load(Ordering::SeqCst);
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .context("the worker did not stop within 2 minutes")?
            .context("the worker panicked")?
            .context("the worker failed")?;
        let peak_rss_bytes = proc_status("VmHWM:");
        drop(producer);
        Ok(Stopped {
            frozen,
            records_committed,
            rehomed,
            peak_rss_bytes,
        })
    }
}
