//! How a worker process tells its peers where to reach it: a row in `live_workers` with the address of its
//! HTTP listener (`http.advertise`) and the token its internal route accepts
//! ([`crate::api::internal`]), written when it starts, refreshed every [`REFRESH_EVERY`] and deleted on a
//! clean stop. Readers trust a row refreshed within [`FRESH_WITHIN`]; a killed worker's row is ignored
//! after that, and deleted long after by the next worker that registers.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;

use crate::store::live_workers::{self, LiveWorker};

/// How often a worker refreshes its row.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// A row not refreshed within this is a worker gone: three missed refreshes, so a database slow for a
/// few seconds does not make live workers look gone.
pub const FRESH_WITHIN: Duration = Duration::from_secs(30);

/// `bytes` random bytes from the operating system, as lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    // The operating system's generator fails only where it does not exist; nothing here could go on
    // without it (tokio and the TLS stacks need it too).
    getrandom::fill(&mut buffer).expect("the operating system's random generator is available");
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token for a worker's internal route: 32 random bytes, as hex.
pub fn new_token() -> String {
    random_hex(32)
}

/// Refreshes `worker`'s row every [`REFRESH_EVERY`] until `stop` resolves, then deletes it. The caller
/// registers it first (before the worker claims a partition), so the first refresh is one period later. A
/// failed write is logged and tried again at the next refresh: the worker runs whether or not its peers
/// can find it (previews then read its partitions from PostgreSQL).
pub async fn run(pool: PgPool, worker: LiveWorker, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + REFRESH_EVERY, REFRESH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => {
                if let Err(e) = live_workers::register(&pool, &worker, FRESH_WITHIN).await {
                    tracing::warn!(owner = %worker.owner, error = %e, "cannot register this worker for peers; will retry");
                }
            }
        }
    }
    if let Err(e) = live_workers::deregister(&pool, &worker).await {
        tracing::warn!(owner = %worker.owner, error = %e, "cannot remove this worker's registration; peers ignore it once stale");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_random_bytes_in_hex() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
