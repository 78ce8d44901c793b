//! What `cohort bench` reads while the worker runs: the committed count over time and when it crossed a
//! mark, the produce-to-commit latency of each interval and of each stage, the membership log's last id,
//! the process's memory and the machine's load.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::worker::latency::LatencySnapshot;
use crate::worker::Status;

/// The membership log's highest id (0 when empty), or `None` if it cannot be read (the figure is then left
/// out). Ids come from a sequence in commit order; a rolled-back batch leaves a gap, so a difference of two
/// readings is an upper bound on the rows written between them.
pub(super) async fn last_log_id(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar::<_, i64>("SELECT coalesce(max(id), 0) FROM group_membership_log")
        .fetch_one(pool)
        .await
        .map_err(|e| tracing::warn!(error = %e, "could not read the membership log's last id"))
        .ok()
}

/// The worker's latency stages, named, with their units.
pub(super) fn stage_snapshots(
    status: &Status,
) -> Vec<(&'static str, &'static str, LatencySnapshot)> {
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

/// Waits until `count` more records than `base` are committed, sampling (seconds since `from`, committed
/// in this phase). Fails if the worker stops, or if nothing commits for two minutes.
pub(super) async fn wait_committed(
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
pub(super) struct Windows {
    started: Instant,
    every: Duration,
    snapshots: Vec<LatencySnapshot>,
}

impl Windows {
    pub(super) fn new(status: &Status, every: Duration) -> Self {
        Self {
            started: Instant::now(),
            every,
            snapshots: vec![status.latency.snapshot()],
        }
    }

    /// Takes the snapshot of every interval boundary passed since the last call.
    pub(super) fn sample(&mut self, status: &Status) {
        let passed = (self.started.elapsed().as_secs_f64() / self.every.as_secs_f64()) as usize;
        while self.snapshots.len() <= passed {
            self.snapshots.push(status.latency.snapshot());
        }
    }

    /// The p99 of each interval, the last (partial) one up to now included.
    pub(super) fn p99s(&self, status: &Status) -> Vec<Option<u64>> {
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
pub(super) async fn wait_quiet(
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
pub(super) fn crossing(samples: &[(f64, u64)], target: u64) -> f64 {
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

/// Resets this process's peak resident memory (`VmHWM`) to its current resident memory (Linux's
/// `clear_refs`), so that a later reading is the peak from now on. Returns whether it could.
pub(super) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `/proc/self/status` figure (given in kB) in bytes; 0 where there is no such file.
pub(super) fn proc_status(key: &str) -> u64 {
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

pub(super) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
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
}
