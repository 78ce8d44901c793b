//! The relay's bookkeeping beside publishing: the backlog gauges (every relay), and as leader the deletion
//! of published rows past their retention and the fold of group member counts
//! ([`crate::store::counts::fold`]).

use tokio::time::Instant;

use super::{
    bounded, Relay, RelayError, State, FOLD_INTERVAL, RETENTION_BATCH, RETENTION_BATCHES_PER_PASS,
    RETENTION_INTERVAL, STATS_INTERVAL,
};
use crate::metrics as m;
use crate::store::counts;
use crate::store::outbox as store;

impl Relay {
    /// Refreshes the backlog gauges (at most once a second unless `force`) and, as leader, deletes expired
    /// rows and folds the group member counts once a minute. Failures only delay these; they are logged.
    pub(super) async fn maintain(&self, state: &mut State, force: bool) {
        let stats_due = force
            || state
                .last_stats
                .is_none_or(|at| at.elapsed() >= STATS_INTERVAL);
        if stats_due {
            if let Some(conn) = state.conn.as_mut() {
                let result = bounded("measure the outbox backlog", store::backlog(conn)).await;
                match self.check(state, result) {
                    Ok((backlog, oldest)) => {
                        metrics::gauge!(m::RELAY_OUTBOX_BACKLOG).set(backlog as f64);
                        metrics::gauge!(m::RELAY_OUTBOX_OLDEST_AGE).set(oldest.max(0.0));
                        state.last_stats = Some(Instant::now());
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot measure the outbox backlog"),
                }
            }
        }
        if state.leader && Instant::now() >= state.next_retention {
            match self.expire(state, RETENTION_BATCHES_PER_PASS).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(deleted = n, "deleted expired outbox rows");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot delete expired outbox rows; will retry")
                }
            }
        }
        if state.leader && Instant::now() >= state.next_fold {
            state.next_fold = Instant::now() + FOLD_INTERVAL;
            if let Err(e) = self.fold_counts(state).await {
                tracing::warn!(error = %e, "cannot fold the group member counts; will retry");
            }
        }
    }

    /// Folds the group member counts' shard rows into their totals, on the lease connection.
    async fn fold_counts(&self, state: &mut State) -> Result<(), RelayError> {
        let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
        let result = bounded("fold the group member counts", counts::fold(conn)).await;
        match self.check(state, result)? {
            Some(folded) if folded > 0 => {
                tracing::debug!(folded, "folded group member counts")
            }
            Some(_) => {}
            None => tracing::debug!("another session folds the group member counts"),
        }
        Ok(())
    }

    /// Deletes published rows older than the retention period, [`RETENTION_BATCH`] at a time, for at most
    /// `max_batches` statements. Schedules the next pass: in a minute, or at once if rows were left.
    pub(super) async fn expire(
        &self,
        state: &mut State,
        max_batches: usize,
    ) -> Result<u64, RelayError> {
        let mut total = 0;
        let mut batches = 0;
        let hours = self.settings.retention_hours as f64;
        loop {
            let conn = state.conn.as_mut().ok_or(RelayError::NotLeader)?;
            let result = bounded(
                "delete expired outbox rows",
                store::delete_expired(conn, hours, RETENTION_BATCH),
            )
            .await;
            let deleted = self.check(state, result)?;
            total += deleted;
            batches += 1;
            metrics::counter!(m::RELAY_ROWS_EXPIRED).increment(deleted);
            if deleted < RETENTION_BATCH as u64 {
                state.next_retention = Instant::now() + RETENTION_INTERVAL;
                return Ok(total);
            }
            if batches >= max_batches {
                // More are left: continue after the next round instead of delaying publishing now.
                state.next_retention = Instant::now();
                return Ok(total);
            }
        }
    }
}
