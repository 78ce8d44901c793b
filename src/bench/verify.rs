//! The benchmark's correctness check, after every phase: what PostgreSQL holds must be exactly what the
//! events call for. Throughput means nothing if the writes are wrong.
//!
//! - every produced event is committed: the worker counted each record, and the stored `next_offset`s add
//!   up to the number produced;
//! - every device holds the sequence of the last event sent to it, and lives on the partition Kafka's
//!   default partitioner gives its id (no device was re-homed);
//! - every device's memberships equal an oracle: each dynamic group of its org evaluated from scratch on the
//!   stored attributes, at the instant the benchmark's clock was frozen;
//! - the membership log is consistent: per (group, device) its actions alternate, and the last one agrees
//!   with the membership;
//! - each group change of the group-changes phase, once settled, had a `deviceCount` equal to its stored
//!   memberships (the phase counts those; its groups are checked above like any other, a deleted group
//!   having no members).

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::kafka::default_partition;
use crate::rules::{Attributes, Catalogue, EpochMillis};
use crate::synthetic::fleet::Fleet;
use crate::worker::registry::Registry;

/// Devices read per query.
const CHUNK: usize = 20_000;

/// What the check found. [`Correctness::ok`] says whether everything holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Correctness {
    /// Events produced to the input topic (every worker phase).
    pub events_produced: u64,
    /// Records the worker committed.
    pub records_committed: u64,
    /// The sum of the input partitions' stored `next_offset`s.
    pub stored_offsets: i64,
    /// Devices compared with the oracle.
    pub devices_checked: usize,
    /// Devices whose stored sequence is not that of the last event sent to them.
    pub wrong_sequence: usize,
    /// Devices not on the partition their id hashes to.
    pub misplaced: usize,
    /// Devices the worker counted as re-homed.
    pub rehomed: u64,
    /// Memberships the oracle expects.
    pub memberships_expected: u64,
    /// Memberships stored.
    pub memberships_stored: u64,
    /// Expected but not stored.
    pub memberships_missing: u64,
    /// Stored but not expected.
    pub memberships_extra: u64,
    /// Membership-log rows.
    pub log_rows: i64,
    /// Log rows repeating the previous action of their (group, device).
    pub log_repeats: i64,
    /// (group, device) pairs whose last log action disagrees with the membership.
    pub log_disagreements: i64,
    /// Groups whose maintained member count differs from their stored memberships.
    pub wrong_counts: i64,
    /// Changes of the group-changes phase whose settled `deviceCount` differed from the group's stored
    /// memberships (set by the phase, not by [`verify`]).
    pub changes_wrong_counts: usize,
    /// The instant the oracle evaluated at (RFC 3339).
    pub evaluated_at: String,
}

impl Correctness {
    /// Whether everything holds.
    pub fn ok(&self) -> bool {
        self.records_committed == self.events_produced
            && self.stored_offsets == self.events_produced as i64
            && self.wrong_sequence == 0
            && self.misplaced == 0
            && self.rehomed == 0
            && self.memberships_missing == 0
            && self.memberships_extra == 0
            && self.memberships_expected == self.memberships_stored
            && self.log_repeats == 0
            && self.log_disagreements == 0
            && self.wrong_counts == 0
            && self.changes_wrong_counts == 0
    }
}

/// What the check needs to know about the run.
pub struct Expectations<'a> {
    pub input_topic: &'a str,
    pub partitions: i32,
    pub events_produced: u64,
    pub records_committed: u64,
    pub rehomed: u64,
    /// The last sequence sent to each device (0: none).
    pub last_sequence: &'a [i64],
    pub at: EpochMillis,
}

type DeviceRow = (String, String, Value, i64, i32);

/// Checks the database against the run.
pub async fn verify(
    pool: &PgPool,
    registry: &Registry,
    catalogue: &Catalogue,
    fleet: &Fleet,
    expect: &Expectations<'_>,
) -> anyhow::Result<Correctness> {
    let mut c = Correctness {
        events_produced: expect.events_produced,
        records_committed: expect.records_committed,
        rehomed: expect.rehomed,
        evaluated_at: crate::rules::time::format_millis(expect.at),
        ..Default::default()
    };
    c.stored_offsets = sqlx::query_scalar(
        "SELECT COALESCE(SUM(next_offset), 0)::int8 FROM partition_positions WHERE topic = $1",
    )
    .bind(expect.input_topic)
    .fetch_one(pool)
    .await
    .context("failed to read the stored positions")?;

    let mut start = 0;
    while start < fleet.devices {
        let end = (start + CHUNK).min(fleet.devices);
        let (first, last) = (fleet.device_id(start), fleet.device_id(end - 1));
        let devices: Vec<DeviceRow> = sqlx::query_as(
            "SELECT id, org_id, attributes, sequence, partition FROM devices WHERE id BETWEEN $1 AND $2 ORDER BY id",
        )
        .bind(&first)
        .bind(&last)
        .fetch_all(pool)
        .await
        .context("failed to read devices")?;
        let memberships: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT device_id, group_id FROM device_group_memberships WHERE device_id BETWEEN $1 AND $2",
        )
        .bind(&first)
        .bind(&last)
        .fetch_all(pool)
        .await
        .context("failed to read memberships")?;
        c.memberships_stored += memberships.len() as u64;
        let mut stored: HashMap<String, BTreeSet<Uuid>> = HashMap::new();
        for (device, group) in memberships {
            stored.entry(device).or_default().insert(group);
        }
        anyhow::ensure!(
            devices.len() == end - start,
            "devices {first}..{last}: {} stored, {} expected",
            devices.len(),
            end - start
        );
        for (index, (id, org, attributes, sequence, partition)) in devices.into_iter().enumerate() {
            let i = start + index;
            anyhow::ensure!(id == fleet.device_id(i), "unexpected device {id}");
            c.devices_checked += 1;
            if sequence != expect.last_sequence[i] {
                c.wrong_sequence += 1;
            }
            if partition != default_partition(id.as_bytes(), expect.partitions) {
                c.misplaced += 1;
            }
            let map = attributes
                .as_object()
                .context("stored attributes are not an object")?;
            let attrs = Attributes::from_json(map, catalogue)
                .map_err(|e| anyhow::anyhow!("stored attributes of {id} do not parse: {e:?}"))?;
            let (_, org_groups) = registry.org(&org).context("a device's org is unknown")?;
            let expected: BTreeSet<Uuid> = org_groups
                .dynamic
                .iter()
                .filter(|slot| registry.matches(**slot, &attrs, expect.at))
                .map(|slot| registry.group(*slot).id)
                .collect();
            let empty = BTreeSet::new();
            let have = stored.get(&id).unwrap_or(&empty);
            c.memberships_expected += expected.len() as u64;
            c.memberships_missing += expected.difference(have).count() as u64;
            c.memberships_extra += have.difference(&expected).count() as u64;
        }
        start = end;
    }

    c.log_rows = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(pool)
        .await
        .context("failed to count the log")?;
    c.log_repeats = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT action, lag(action) OVER (PARTITION BY group_id, device_id ORDER BY id) \
         AS previous FROM group_membership_log) l WHERE action = previous",
    )
    .fetch_one(pool)
    .await
    .context("failed to check the log's alternation")?;
    c.log_disagreements = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT DISTINCT ON (group_id, device_id) group_id, device_id, action \
         FROM group_membership_log ORDER BY group_id, device_id, id DESC) l \
         LEFT JOIN device_group_memberships m USING (group_id, device_id) \
         WHERE (l.action = 'added') <> (m.group_id IS NOT NULL)",
    )
    .fetch_one(pool)
    .await
    .context("failed to compare the log with the memberships")?;
    c.wrong_counts = sqlx::query_scalar(
        "SELECT count(*) FROM \
           (SELECT group_id, count(*) AS n FROM device_group_memberships GROUP BY group_id) m \
         FULL JOIN (SELECT group_id, sum(members) AS n FROM group_member_counts GROUP BY group_id) c \
           USING (group_id) \
         WHERE coalesce(m.n, 0) <> coalesce(c.n, 0)",
    )
    .fetch_one(pool)
    .await
    .context("failed to compare the member counts with the memberships")?;
    Ok(c)
}
