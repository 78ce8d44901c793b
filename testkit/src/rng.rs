//! The harness's one source of randomness: a small seeded pseudo-random generator (SplitMix64) for
//! everything a test draws itself — attribute changes, operator actions, kill points and pauses — and
//! the names that must not collide ([`random_suffix`]). Property tests draw from proptest and the fuzz
//! checks from the fuzzer's bytes (`arbitrary::Unstructured`): those engines shrink and replay their own
//! cases.
//!
//! # Seeds
//! A test starts its generator with [`Rng::seeded`] and a fixed default seed of its own, so every run
//! sends the same stream. `COHORT_TEST_SEED` (decimal, or hexadecimal with `0x`) replaces the defaults,
//! to explore other streams or to replay the one a failure named: a test that can fail on what it drew
//! says its [`Rng::seed`] in the failure. [`random_suffix`] is the exception: it must differ across
//! processes, so its generator is seeded from the operating system.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that replaces every test's default seed.
pub const SEED_VARIABLE: &str = "COHORT_TEST_SEED";

/// A seeded pseudo-random generator (SplitMix64): the same seed gives the same stream.
#[derive(Clone, Debug)]
pub struct Rng {
    /// The seed it started from, to name in a failure.
    seed: u64,
    /// SplitMix64's counter.
    state: u64,
}

impl Rng {
    /// A generator starting from exactly `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, state: seed }
    }

    /// A generator starting from `COHORT_TEST_SEED` when it is set, else from `default`.
    ///
    /// # Panics
    /// When `COHORT_TEST_SEED` is set but is not a whole number.
    pub fn seeded(default: u64) -> Self {
        Self::new(seed(default))
    }

    /// The seed this generator started from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A generator of its own for another part of the same test (the seed mixed with `stream`), so one
    /// part drawing more or less does not shift what the other draws.
    pub fn split(&self, stream: u64) -> Self {
        Self::new(self.seed ^ stream)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// `COHORT_TEST_SEED` when it is set, else `default`.
///
/// # Panics
/// When `COHORT_TEST_SEED` is set but is not a whole number.
pub fn seed(default: u64) -> u64 {
    let Ok(value) = std::env::var(SEED_VARIABLE) else {
        return default;
    };
    let text = value.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.unwrap_or_else(|_| {
        panic!("{SEED_VARIABLE}={value:?} is not a whole number (decimal, or hexadecimal with 0x)")
    })
}

/// 16 random lower-case hex digits, for names that must not collide across tests and test runs.
///
/// Drawn from one generator per process, seeded from the operating system, the process id and the
/// clock: SplitMix64 never repeats an output within its period, so names are distinct within a process,
/// and the seed makes them unpredictable across processes.
pub fn random_suffix() -> String {
    static NAMES: Mutex<Option<Rng>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    let rng = names.get_or_insert_with(|| Rng::new(entropy()));
    format!("{:016x}", rng.next_u64())
}

/// A seed no other process is likely to have: std's `RandomState` keys come from the operating system.
fn entropy() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
