//! How long to wait before trying again: capped exponential backoff with decorrelated jitter.
//!
//! Every retry that waits in cohort uses [`Backoff`]: a batch commit, claiming an assigned partition,
//! loading one, reading a batch's devices, the control log and its listener, the relay's rounds and the
//! migrations at start-up. The bounds come from `worker.retry_initial_backoff_ms` (`initial`) and
//! `worker.retry_max_backoff_ms` (`max`).
//!
//! The waits have a ceiling that starts at twice `initial` and doubles with every attempt up to `max`; each
//! wait is drawn uniformly between `initial` and the ceiling ("full jitter", with `initial` as its floor):
//!
//! ```text
//! ceilingₙ = min(max, initial · 2ⁿ)
//! waitₙ    = uniform(initial, ceilingₙ)        n = 1, 2, …; back to n = 1 after a success
//! ```
//!
//! Why jitter: the failures cohort retries are shared ones (PostgreSQL restarting or unreachable), met by
//! every partition's pipeline, every commit task and the relay at the same moment. Without jitter they all
//! wait exactly the same time and come back together, again and again, as one burst of connections against
//! a database that is just coming up. Why full jitter over the doubling ceiling: it spreads the retriers
//! over the whole range, and the ceiling grows as fast as the plain doubling did, so a long outage is
//! still met with waits near `max`. The floor keeps the configured shortest wait meaningful (no retrier
//! comes back at once). Decorrelated jitter (each wait uniform between `initial` and three times the
//! previous one) was rejected: its waits drift upwards by only about a tenth per attempt in the typical
//! case, so during a long outage it retries many times more often than the doubling it replaces.
//!
//! The random numbers come from a SplitMix64 generator seeded from std's per-process random hasher keys:
//! cheap, no dependency, and distinct for every [`Backoff`] created.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::config::Config;

/// Waits before successive attempts: see the module documentation.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The ceiling of the wait after `next`.
    ceiling: Duration,
    /// The wait [`Backoff::step`] returns next (drawn ahead so [`Backoff::current`] can report it).
    next: Duration,
    rng: SplitMix64,
}

impl Backoff {
    /// Waits between `initial` and `max` (`initial` is at least a millisecond, `max` at least `initial`),
    /// with a random seed.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self::with_seed(initial, max, random_seed())
    }

    /// The retry waits `config` sets: `worker.retry_initial_backoff_ms` to `worker.retry_max_backoff_ms`.
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            Duration::from_millis(config.worker.retry_initial_backoff_ms),
            Duration::from_millis(config.worker.retry_max_backoff_ms),
        )
    }

    /// Like [`Backoff::new`] with a given seed: the same seed gives the same waits.
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        let mut backoff = Self {
            initial,
            max,
            ceiling: initial,
            next: initial,
            rng: SplitMix64(seed),
        };
        backoff.reset();
        backoff
    }

    /// The wait before the next attempt, without taking it.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// Takes the wait before the next attempt; the ceiling of the one after doubles, up to `max`.
    pub fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.draw();
        wait
    }

    /// Starts over after a success: the next wait is drawn as the first one was.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
        self.next = self.draw();
    }

    /// Doubles the ceiling (up to `max`) and draws a wait uniformly between `initial` and it.
    fn draw(&mut self) -> Duration {
        self.ceiling = self
            .ceiling
            .checked_mul(2)
            .unwrap_or(self.max)
            .min(self.max);
        let low = self.initial.as_nanos();
        let span = self.ceiling.as_nanos() - low;
        // Uniform in 0..=span: a 64-bit fraction of `span + 1` (saturating only for spans of centuries).
        let offset = u128::from(self.rng.next_u64()).saturating_mul(span + 1) >> 64;
        let nanos = (low + offset).min(self.max.as_nanos());
        // At most `max`, a Duration: the conversion fails only past 584 years.
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A distinct random seed per call: std's `RandomState` keys are random per process and change with every
/// `new` on a thread.
fn random_seed() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x6261_636b_6f66_6621);
    hasher.finish()
}

/// SplitMix64 (Steele, Lea and Flood): a 64-bit state, a full period, good enough for spreading waits.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn every_wait_is_between_the_initial_wait_and_the_cap() {
        for seed in 0..200 {
            let mut backoff = Backoff::with_seed(INITIAL, MAX, seed);
            for _ in 0..100 {
                let wait = backoff.step();
                assert!(
                    wait >= INITIAL,
                    "seed {seed}: {wait:?} below the initial wait"
                );
                assert!(wait <= MAX, "seed {seed}: {wait:?} above the cap");
            }
        }
    }

    #[test]
    fn the_first_wait_is_at_most_twice_the_initial_one() {
        for seed in 0..200 {
            let wait = Backoff::with_seed(INITIAL, MAX, seed).step();
            assert!(wait <= INITIAL * 2, "seed {seed}: {wait:?}");
        }
    }

    #[test]
    fn the_waits_grow_until_they_reach_the_cap() {
        const SEEDS: u32 = 200;
        // The average wait of each attempt over many seeds: the ceiling doubles (200 ms, 400 ms, … 10 s).
        let mut averages = vec![Duration::ZERO; 40];
        for seed in 0..SEEDS {
            let mut backoff = Backoff::with_seed(INITIAL, MAX, u64::from(seed));
            for average in averages.iter_mut() {
                *average += backoff.step() / SEEDS;
            }
        }
        for n in 1..7 {
            assert!(
                averages[n] > averages[n - 1] * 5 / 4,
                "attempt {}: {:?} after {:?}",
                n + 1,
                averages[n],
                averages[n - 1]
            );
        }
        // From the eighth attempt the ceiling is the cap: the waits spread over the whole range.
        let late = averages[10..].iter().sum::<Duration>() / 30;
        let middle = (INITIAL + MAX) / 2;
        assert!(
            late > middle * 9 / 10 && late < middle * 11 / 10,
            "late waits average {late:?}"
        );
    }

    #[test]
    fn the_waits_are_spread_not_identical() {
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|seed| Backoff::with_seed(INITIAL, MAX, seed).step())
            .collect();
        assert!(
            waits.len() > 40,
            "{} distinct first waits of 50",
            waits.len()
        );
        let a = Backoff::new(INITIAL, MAX);
        let b = Backoff::new(INITIAL, MAX);
        let (mut a, mut b) = (a, b);
        let a: Vec<Duration> = (0..5).map(|_| a.step()).collect();
        let b: Vec<Duration> = (0..5).map(|_| b.step()).collect();
        assert_ne!(a, b, "two backoffs drew the same waits");
    }

    #[test]
    fn a_reset_starts_over_from_the_initial_wait() {
        for seed in 0..100 {
            let mut backoff = Backoff::with_seed(INITIAL, MAX, seed);
            for _ in 0..30 {
                backoff.step();
            }
            backoff.reset();
            let wait = backoff.step();
            assert!(
                (INITIAL..=INITIAL * 2).contains(&wait),
                "seed {seed}: {wait:?} after a reset"
            );
        }
    }

    #[test]
    fn current_reports_the_wait_that_step_takes() {
        let mut backoff = Backoff::with_seed(INITIAL, MAX, 7);
        for _ in 0..20 {
            let reported = backoff.current();
            assert_eq!(backoff.step(), reported);
        }
    }

    #[test]
    fn degenerate_bounds_still_wait() {
        // A zero initial wait would retry in a busy loop; a cap below it would be ignored.
        let mut zero = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 1);
        assert_eq!(zero.step(), Duration::from_millis(1));
        let mut inverted = Backoff::with_seed(Duration::from_secs(2), Duration::from_secs(1), 1);
        for _ in 0..10 {
            assert_eq!(inverted.step(), Duration::from_secs(2));
        }
    }

    #[test]
    fn the_bounds_come_from_the_retry_settings() {
        let mut config =
            Config::load_from(None, Vec::<(String, String)>::new()).expect("defaults load");
        config.worker.retry_initial_backoff_ms = 40;
        config.worker.retry_max_backoff_ms = 50;
        let mut backoff = Backoff::from_config(&config);
        for _ in 0..20 {
            let wait = backoff.step();
            assert!((Duration::from_millis(40)..=Duration::from_millis(50)).contains(&wait));
        }
    }
}
