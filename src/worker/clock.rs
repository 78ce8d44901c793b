//! Where the worker reads the time: the system clock, or in tests and the benchmark a manual one that
//! makes time-based conditions flip on demand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::rules::EpochMillis;

/// Where the worker reads the time. Tests inject a manual clock to make time-based conditions flip.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> EpochMillis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> EpochMillis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `at`.
    pub fn new(at: EpochMillis) -> Self {
        Self(Arc::new(AtomicI64::new(at)))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: EpochMillis) {
        self.0.store(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> EpochMillis {
        self.0.load(Ordering::SeqCst)
    }
}
