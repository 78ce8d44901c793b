//! The synthetic fleet that `cohort bench` measures and `cohort demo` shows, and what runs it: the same
//! orgs, devices, groups and attribute-change events, seeded the same way and streamed through the same
//! broker, so the demo's fleet behaves as the benchmark's does.
//!
//! - [`fleet`]: the generator — orgs, devices with realistic attributes, dynamic groups using every
//!   operator, and attribute-change events, all from one seed. Pure: no IO.
//! - [`seed`]: the fleet written into PostgreSQL in the steady state a worker would leave it in, and the
//!   check that a database holds nothing but synthetic data before it is emptied.
//! - [`broker`]: the Kafka-protocol broker the events go through (librdkafka's in-process mock cluster
//!   unless brokers are given) and the producer that streams them.
//! - [`follow_wall_clock`]: the worker's [`ManualClock`] set from the instant the fleet was generated at,
//!   then advancing with the wall clock.

pub mod broker;
pub mod fleet;
pub mod rollout;
pub mod seed;

use std::time::{Duration, Instant};

use crate::rules::EpochMillis;
use crate::worker::ManualClock;

/// Has `clock` follow the wall clock from `t0` on, set every 5 ms from now until the task is aborted. The
/// fleet's datetimes are relative to `t0`, so the worker sees them age as they would on real devices.
pub fn follow_wall_clock(clock: &ManualClock, t0: EpochMillis) -> tokio::task::JoinHandle<()> {
    let clock = clock.clone();
    let from = Instant::now();
    tokio::spawn(async move {
        loop {
            clock.set(t0 + from.elapsed().as_millis() as i64);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}
