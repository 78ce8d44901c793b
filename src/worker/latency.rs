//! A lock-free latency histogram with about 1% relative precision, readable at any time: the worker
//! records each committed record's produce-to-commit latency in it ([`super::Status::latency`]), and the
//! benchmark (`cohort bench`) reads quantiles over a phase by subtracting two snapshots. The Prometheus
//! histogram `cohort_worker_event_latency_seconds` records the same values for dashboards; this one exists
//! because a process cannot read quantiles back from its metrics recorder.
//!
//! Layout: values below 256 ms have a bucket each; above, every power of two is split into 128 buckets (so
//! a bucket is at most 1/128 of its value wide), up to 2^32 ms. Larger values land in the last bucket.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this have a bucket of their own.
const LINEAR: u64 = 256;
/// Buckets per power of two above [`LINEAR`].
const SUB: u64 = 128;
/// Powers of two covered above [`LINEAR`]: 2^8 .. 2^32.
const OCTAVES: u64 = 24;
const BUCKETS: usize = (LINEAR + OCTAVES * SUB) as usize;

/// Counts of latencies in milliseconds.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

fn bucket(ms: u64) -> usize {
    if ms < LINEAR {
        return ms as usize;
    }
    // ms >= 256, so its highest set bit is at least 8.
    let octave = (63 - ms.leading_zeros() as u64) - 8;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let mantissa = (ms >> (octave + 1)) - SUB; // 0..SUB
    (LINEAR + octave * SUB + mantissa) as usize
}

/// The smallest value that falls in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let octave = (i - LINEAR) / SUB;
    let mantissa = (i - LINEAR) % SUB;
    (SUB + mantissa) << (octave + 1)
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&self, ms: u64) {
        self.buckets[bucket(ms)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one latency `n` times (a batch's duration, once for each of its events).
    pub fn record_n(&self, ms: u64, n: u64) {
        if n > 0 {
            self.buckets[bucket(ms)].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// A copy of a histogram's counts; subtract an earlier one to look at one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: Vec<u64>,
}

impl LatencySnapshot {
    /// The counts recorded after `earlier` was taken.
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// How many latencies are counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) in milliseconds: the lower bound of the bucket holding it, so at most
    /// 1% below the true value. `None` when nothing is counted.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the quantile, 1-based: the smallest value with at least q·total values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(lower_bound(i));
            }
        }
        None
    }

    /// The largest value counted (its bucket's lower bound).
    pub fn max(&self) -> Option<u64> {
        self.counts.iter().rposition(|n| *n > 0).map(lower_bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_at_most_one_percent_wide() {
        let mut previous = 0;
        for ms in 0..200_000u64 {
            let b = bucket(ms);
            assert!(b == previous || b == previous + 1, "gap at {ms}");
            previous = b;
            let low = lower_bound(b);
            assert!(low <= ms, "{ms} below its bucket's bound {low}");
            assert!(
                (ms - low) as f64 <= ms as f64 / 128.0,
                "bucket of {ms} too wide"
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket(1 << 32), BUCKETS - 1);
        assert!(bucket((1 << 32) - 1) < BUCKETS);
    }

    #[test]
    fn quantiles_of_a_period_ignore_what_came_before() {
        let h = LatencyHistogram::default();
        for _ in 0..1000 {
            h.record(5_000);
        }
        let before = h.snapshot();
        for ms in 1..=100 {
            h.record(ms);
        }
        let period = h.snapshot().since(&before);
        assert_eq!(period.count(), 100);
        assert_eq!(period.quantile(0.5), Some(50));
        assert_eq!(period.quantile(0.99), Some(99));
        assert_eq!(period.quantile(1.0), Some(100));
        assert_eq!(period.max(), Some(100));
        assert_eq!(LatencyHistogram::default().snapshot().quantile(0.5), None);
    }
}
