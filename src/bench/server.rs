//! What the database server did during a benchmark phase, from its own cumulative counters: the WAL it wrote
//! (and how many whole-page images were in it), the checkpoints it ran, and the pages its backends had to
//! write out themselves to free a buffer. These are what pace a write-bound run: WAL volume sets how often
//! checkpoints come, page images are most of that volume, and a checkpoint's file syncs stall commits.
//!
//! The counters are server-wide (anything else writing to the server counts too) and are published by
//! each backend at most once a second, which is noise at the scale of a phase. A server that does not
//! offer them (before PostgreSQL 14, or a role that may not read them) leaves the figures out.

use serde::Serialize;
use sqlx::PgPool;

/// The server's cumulative counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counters {
    pub wal_bytes: f64,
    pub page_images: i64,
    pub checkpoints: i64,
    /// Buffers written by backends rather than the checkpointer or the background writer (not offered by
    /// PostgreSQL 17, which moved it to `pg_stat_io`).
    pub backend_writes: Option<i64>,
}

/// PostgreSQL 14–16, then 17 (whose checkpoint counters moved to `pg_stat_checkpointer`).
const QUERIES: [&str; 2] = [
    "SELECT w.wal_bytes::float8, w.wal_fpi, b.checkpoints_timed + b.checkpoints_req, b.buffers_backend \
     FROM pg_stat_wal w CROSS JOIN pg_stat_bgwriter b",
    "SELECT w.wal_bytes::float8, w.wal_fpi, c.num_timed + c.num_requested, NULL::int8 \
     FROM pg_stat_wal w CROSS JOIN pg_stat_checkpointer c",
];

/// Reads the counters, or `None` where the server does not offer them.
pub async fn counters(pool: &PgPool) -> Option<Counters> {
    for sql in QUERIES {
        match sqlx::query_as::<_, (f64, i64, i64, Option<i64>)>(sql)
            .fetch_one(pool)
            .await
        {
            Ok((wal_bytes, page_images, checkpoints, backend_writes)) => {
                return Some(Counters {
                    wal_bytes,
                    page_images,
                    checkpoints,
                    backend_writes,
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "the server's WAL counters are not readable this way")
            }
        }
    }
    None
}

/// The server's activity over a phase of `events` events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServerActivity {
    pub wal_bytes_per_event: f64,
    pub page_images_per_event: f64,
    pub checkpoints: i64,
    pub backend_writes_per_event: Option<f64>,
}

impl ServerActivity {
    /// The difference between two readings, per event; `None` unless both readings exist.
    pub fn between(
        before: Option<Counters>,
        after: Option<Counters>,
        events: u64,
    ) -> Option<ServerActivity> {
        let (before, after) = (before?, after?);
        let per_event = |d: f64| d / events.max(1) as f64;
        Some(ServerActivity {
            wal_bytes_per_event: per_event(after.wal_bytes - before.wal_bytes),
            page_images_per_event: per_event((after.page_images - before.page_images) as f64),
            checkpoints: after.checkpoints - before.checkpoints,
            backend_writes_per_event: after
                .backend_writes
                .zip(before.backend_writes)
                .map(|(a, b)| per_event((a - b) as f64)),
        })
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{:.1} KB of WAL per event ({:.2} page images), {} checkpoint{}",
            self.wal_bytes_per_event / 1000.0,
            self.page_images_per_event,
            self.checkpoints,
            if self.checkpoints == 1 { "" } else { "s" }
        );
        if let Some(writes) = self.backend_writes_per_event {
            s.push_str(&format!(
                ", {writes:.2} pages written out by backends per event"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wal_bytes: f64, page_images: i64, checkpoints: i64, backend: Option<i64>) -> Counters {
        Counters {
            wal_bytes,
            page_images,
            checkpoints,
            backend_writes: backend,
        }
    }

    #[test]
    fn activity_is_the_difference_per_event() {
        let activity = ServerActivity::between(
            Some(at(1_000.0, 10, 3, Some(100))),
            Some(at(41_000.0, 30, 5, Some(180))),
            20,
        )
        .unwrap();
        assert_eq!(
            activity,
            ServerActivity {
                wal_bytes_per_event: 2_000.0,
                page_images_per_event: 1.0,
                checkpoints: 2,
                backend_writes_per_event: Some(4.0),
            }
        );
        assert_eq!(
            activity.describe(),
            "2.0 KB of WAL per event (1.00 page images), 2 checkpoints, 4.00 pages written out by backends per event"
        );
    }

    #[test]
    fn a_missing_reading_leaves_the_figures_out() {
        assert_eq!(
            ServerActivity::between(None, Some(at(0.0, 0, 0, None)), 5),
            None
        );
        let activity =
            ServerActivity::between(Some(at(0.0, 0, 0, None)), Some(at(0.0, 0, 1, None)), 0)
                .unwrap();
        assert_eq!(activity.backend_writes_per_event, None);
        assert_eq!(
            activity.describe(),
            "0.0 KB of WAL per event (0.00 page images), 1 checkpoint"
        );
    }
}
