//! One worker batch, written in one transaction: devices, memberships, log rows, outbox messages and the
//! partition's position. Whole columns are bound as arrays with `unnest`, so the SQL text never changes and
//! there is no parameter-count ceiling. Columns are bound by reference: cloning each attribute document
//! (a JSON tree) just to bind it cost an allocation per node.
//!
//! The position update comes first and is fenced on the partition's epoch: it fails (and the transaction
//! rolls back) when another worker has claimed the partition, and otherwise holds the position row's lock, so a
//! concurrent claim waits for this batch. Every device the batch changes is guarded by the device's
//! version, so a device re-homed by another partition's worker is never written by two owners: the stale
//! writer gets [`StoreError::DeviceConflict`] and recomputes.
//!
//! A device whose row does not change — only its memberships and log do, as when a group's definition
//! changes — is not rewritten, nor locked: the batch only checks that its stored version is still the one
//! it expects (a plain read: rewriting the row costs a whole new row version, and even a `FOR SHARE` lock
//! dirties its page and writes a WAL record, about a third of a definition change's cost per member).
//! What orders such a batch against a worker taking the device over is the partition's position row
//! instead: a batch taking devices over from other partitions first locks those partitions' position rows
//! `FOR SHARE` (`lock_previous_owners`), so it waits for any batch of theirs in flight (which holds its
//! position row from its first statement to its commit), and a batch of theirs that starts later waits for
//! it. Whichever commits second sees the first: the old owner's version check finds the row rewritten, or
//! the new owner's check ([`BatchWrite::taken_over`]) finds the memberships it read no longer stored. One
//! lock per partition taken from, instead of one per device changed.

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;
use crate::outbox::Message;

/// A device row to write. For an update, `expected_version` guards it; the stored version becomes
/// `expected_version + 1`.
#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub id: String,
    /// Shared with the worker's interned org (no copy per row).
    pub org_id: std::sync::Arc<str>,
    /// JSON text (stored as `jsonb`): the whole attributes document, or for [`AttributesWrite::Merge`]
    /// and [`AttributesWrite::MergeRemoving`] the changed attributes to merge into the stored one.
    pub attributes: String,
    pub attributes_write: AttributesWrite,
    pub sequence: i64,
    pub expected_version: i64,
    pub is_development: bool,
    pub firmware_lock: Option<String>,
    /// Shared with the release it was resolved from.
    pub target_version: Option<std::sync::Arc<str>>,
    pub target_reason: &'static str,
    pub target_group: Option<Uuid>,
    pub target_sequence: i64,
    /// The release that decided the target, when known.
    pub target_release: Option<Uuid>,
    /// Where the device stands in it (see [`crate::firmware::progress`]).
    pub target_standing: Option<&'static str>,
    pub target_reached: bool,
}

/// How a device row's `attributes` text is written.
///
/// A device the worker holds is stored exactly as its held state says (every write is guarded by the
/// version it was computed from), so an update need only send what changed: a heartbeat changes one or two
/// attributes of a document of dozens. PostgreSQL merges the patch (`jsonb ||`), dropping the `null`s that
/// stand for removed attributes (`jsonb_strip_nulls`, only when there are any). An attribute stored that
/// the catalogue no longer accepts (skipped when the device was read) is kept, not dropped by the next
/// event's write. New devices, and devices read from the database for the batch, are written whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributesWrite {
    /// `attributes` is the whole document.
    Replace,
    /// `attributes` holds the changed attributes; none was removed.
    Merge,
    /// `attributes` holds the changed attributes, and `null` for each removed one.
    MergeRemoving,
}

impl AttributesWrite {
    /// The code the statement's `CASE` reads.
    fn code(self) -> i16 {
        match self {
            AttributesWrite::Replace => 0,
            AttributesWrite::Merge => 1,
            AttributesWrite::MergeRemoving => 2,
        }
    }
}

/// A membership to insert.
#[derive(Clone, Debug)]
pub struct MembershipRow {
    pub group_id: Uuid,
    pub device_id: String,
    pub is_pinned: bool,
    pub added_by: &'static str,
}

/// A membership-log row.
#[derive(Clone, Debug)]
pub struct LogRow {
    pub group_id: Uuid,
    pub device_id: String,
    pub action: &'static str,
    pub reason: &'static str,
    /// The cause's JSON document, rendered once and shared by every row one event or control entry causes.
    pub cause: std::sync::Arc<serde_json::value::RawValue>,
    pub group_version: i64,
}

/// What a batch moved in one release's progress.
#[derive(Clone, Debug)]
pub struct ReleaseProgress {
    pub release: Uuid,
    /// The change of its counts.
    pub delta: crate::firmware::progress::Counts,
    /// Devices that came to stand failed or reverted in it, in the order the batch made them.
    pub increments: Vec<Increment>,
}

/// A device that came to stand failed or reverted in a release: what a halt names as its cause.
#[derive(Clone, Debug)]
pub struct Increment {
    pub standing: crate::firmware::progress::Standing,
    pub device_id: String,
    /// The cause of the change (the event, control entry or instant), as the membership log has it.
    pub cause: std::sync::Arc<serde_json::value::RawValue>,
}

/// Everything one batch writes.
#[derive(Clone, Debug, Default)]
pub struct BatchWrite {
    pub topic: String,
    pub partition: i32,
    pub epoch: i64,
    pub next_offset: i64,
    pub control_position: i64,
    pub device_updates: Vec<DeviceRow>,
    pub device_inserts: Vec<DeviceRow>,
    /// (device, version) of held devices whose memberships or log change while their row does not: the
    /// row is checked to be still at that version instead of rewritten.
    pub device_checks: Vec<(String, i64)>,
    /// (device, its memberships as read: (group, pinned), sorted) of devices this batch takes over from
    /// another partition, checked against what is stored once their rows are written.
    pub taken_over: Vec<(String, Vec<(Uuid, bool)>)>,
    pub membership_deletes: Vec<(Uuid, String)>,
    pub membership_inserts: Vec<MembershipRow>,
    /// (group, device, is_pinned) for memberships whose pin changes.
    pub pin_updates: Vec<(Uuid, String, bool)>,
    pub log: Vec<LogRow>,
    /// Rollout events and dead letters, inserted with [`super::outbox::insert`].
    pub outbox: Vec<Message>,
    /// Releases whose progress counts the batch moved ([`super::firmware::progress`]).
    pub progress: Vec<ReleaseProgress>,
    /// `backend_flush_after` for this transaction only, in kB (the pipeline sets it for a caught-up
    /// partition's batches; see [`crate::config::WorkerConfig::caught_up_flush_after_kb`]); `None` leaves
    /// the session's setting.
    pub flush_after_kb: Option<u32>,
}

/// Whether the server refused `backend_flush_after` (see [`flush_after_refused`]).
static FLUSH_AFTER_REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether the server has refused a batch's `backend_flush_after` in this process. The first refusal is
/// logged; that batch and every later one are written without the setting (as if
/// `worker.caught_up_flush_after_kb` were 0), since a refusal holds for every connection of the role.
pub fn flush_after_refused() -> bool {
    FLUSH_AFTER_REFUSED.load(Ordering::Relaxed)
}

/// Writes the batch, or nothing.
pub async fn commit(pool: &PgPool, batch: &BatchWrite) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if let Some(kb) = batch.flush_after_kb.filter(|_| !flush_after_refused()) {
        // Transaction-local: the pooled connection's next user starts from the session's setting.
        let set = sqlx::query("SELECT set_config('backend_flush_after', $1, true)")
            .bind(format!("{kb}kB"))
            .execute(&mut *tx)
            .await;
        match set {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if super::refuses_setting(e.as_ref()) => {
                if !FLUSH_AFTER_REFUSED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        flush_after_kb = kb,
                        error = %e,
                        "the database refused backend_flush_after; caught-up batches are written without \
                         it from now on (worker.caught_up_flush_after_kb = 0 stops asking at start-up)"
                    );
                }
                // The refused statement aborted the transaction: the batch starts again without it.
                tx.rollback().await?;
                tx = pool.begin().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let fenced = sqlx::query(
        "UPDATE partition_positions SET next_offset = $1, control_position = $2, updated_at = now() \
         WHERE topic = $3 AND partition = $4 AND epoch = $5",
    )
    .bind(batch.next_offset)
    .bind(batch.control_position)
    .bind(&batch.topic)
    .bind(batch.partition)
    .bind(batch.epoch)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if fenced != 1 {
        return Err(StoreError::Fenced {
            partition: batch.partition,
            epoch: batch.epoch,
        });
    }

    if !batch.taken_over.is_empty() {
        lock_previous_owners(&mut tx, batch).await?;
    }
    let mut conflicts = Vec::new();
    // Both statements take the same columns ($1–$11 and $13–$16, and $12 the partition), bound by
    // `write_devices`; each uses the ones it needs.
    let updates = "UPDATE devices d SET attributes = CASE u.aw WHEN 0 THEN u.attributes::jsonb \
             WHEN 1 THEN d.attributes || u.attributes::jsonb \
             ELSE jsonb_strip_nulls(d.attributes || u.attributes::jsonb) END, \
           sequence = u.sequence, version = d.version + 1, \
           partition = $12, is_development = u.dev, firmware_lock = u.lock, target_version = u.tv, \
           target_reason = u.tr, target_group = u.tg, target_sequence = u.ts, target_release = u.trl, \
           target_standing = u.tst, target_reached = u.trc, updated_at = now() \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[], $7::text[], \
                     $8::text[], $9::text[], $10::uuid[], $11::int8[], $13::int2[], $14::uuid[], \
                     $15::text[], $16::bool[]) \
           AS u(id, org, attributes, sequence, expected, dev, lock, tv, tr, tg, ts, aw, trl, tst, trc) \
         WHERE d.id = u.id AND d.version = u.expected RETURNING d.id";
    let inserts = "INSERT INTO devices (id, org_id, attributes, sequence, partition, version, is_development, \
           firmware_lock, target_version, target_reason, target_group, target_sequence, target_release, \
           target_standing, target_reached) \
         SELECT u.id, u.org, u.attributes::jsonb, u.sequence, $12, 1, u.dev, u.lock, u.tv, u.tr, u.tg, u.ts, \
           u.trl, u.tst, u.trc \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::bool[], $7::text[], \
                     $8::text[], $9::text[], $10::uuid[], $11::int8[], $13::int2[], $14::uuid[], \
                     $15::text[], $16::bool[]) \
           AS u(id, org, attributes, sequence, expected, dev, lock, tv, tr, tg, ts, aw, trl, tst, trc) \
         ON CONFLICT (id) DO NOTHING RETURNING id";
    for (sql, rows) in [
        (updates, &batch.device_updates),
        (inserts, &batch.device_inserts),
    ] {
        if rows.is_empty() {
            continue;
        }
        let written = write_devices(&mut tx, sql, rows, batch.partition).await?;
        if written.len() != rows.len() {
            missing(rows.iter().map(|r| r.id.as_str()), &written, &mut conflicts);
        }
    }
    if !batch.device_checks.is_empty() {
        let current = at_version(&mut tx, &batch.device_checks).await?;
        if current.len() != batch.device_checks.len() {
            let ids = batch.device_checks.iter().map(|(id, _)| id.as_str());
            missing(ids, &current, &mut conflicts);
        }
    }
    if conflicts.is_empty() && !batch.taken_over.is_empty() {
        conflicts.extend(memberships_moved(&mut tx, &batch.taken_over).await?);
    }
    if !conflicts.is_empty() {
        // Dropping the transaction rolls it back.
        return Err(StoreError::DeviceConflict { devices: conflicts });
    }

    if !batch.membership_deletes.is_empty() {
        let rows = &batch.membership_deletes;
        sqlx::query(
            "DELETE FROM device_group_memberships m USING unnest($1::uuid[], $2::text[]) AS u(g, d) \
             WHERE m.group_id = u.g AND m.device_id = u.d",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.membership_inserts.is_empty() {
        let rows = &batch.membership_inserts;
        sqlx::query(
            "INSERT INTO device_group_memberships (group_id, device_id, is_pinned, added_by) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[]) \
             ON CONFLICT (group_id, device_id) DO UPDATE SET is_pinned = EXCLUDED.is_pinned",
        )
        .bind(rows.iter().map(|r| r.group_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.device_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.is_pinned).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.added_by).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.pin_updates.is_empty() {
        let rows = &batch.pin_updates;
        sqlx::query(
            "UPDATE device_group_memberships m SET is_pinned = u.p \
             FROM unnest($1::uuid[], $2::text[], $3::bool[]) AS u(g, d, p) \
             WHERE m.group_id = u.g AND m.device_id = u.d",
        )
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.2).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !batch.log.is_empty() {
        let rows = &batch.log;
        sqlx::query(
            "INSERT INTO group_membership_log (group_id, device_id, action, reason, cause, group_version) \
             SELECT u.g, u.d, u.a, u.r, u.c::jsonb, u.v \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) AS u(g, d, a, r, c, v)",
        )
        .bind(rows.iter().map(|r| r.group_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.device_id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.action).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reason).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.cause.get()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.group_version).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    super::outbox::insert(&mut tx, &batch.outbox).await?;
    if !batch.progress.is_empty() {
        super::firmware::progress::write(&mut tx, batch.partition, &batch.progress).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The devices of `rows` whose stored version is still the one given (a device whose version moved was
/// rewritten by a worker that took it over).
async fn at_version(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    rows: &[(String, i64)],
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT d.id FROM devices d \
         JOIN unnest($1::text[], $2::int8[]) AS u(id, version) ON d.id = u.id AND d.version = u.version",
    )
    .bind(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?)
}

/// Locks `FOR SHARE` the position rows of the partitions the batch's taken-over devices are stored under,
/// before their rows are rewritten: the batch waits for those partitions' batches in flight, and theirs
/// started later wait for it (see the module's documentation). In partition order, as every batch locks.
async fn lock_previous_owners(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &BatchWrite,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = batch.taken_over.iter().map(|(id, _)| id.as_str()).collect();
    sqlx::query(
        "SELECT p.partition FROM partition_positions p \
         WHERE p.topic = $1 AND p.partition <> $2 \
           AND p.partition IN (SELECT d.partition FROM devices d WHERE d.id = ANY($3)) \
         ORDER BY p.partition FOR SHARE OF p",
    )
    .bind(&batch.topic)
    .bind(batch.partition)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The devices taken over whose stored memberships differ from those the batch was computed from: another
/// partition's batch changed them after they were read (see the module's documentation).
async fn memberships_moved(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    taken_over: &[(String, Vec<(Uuid, bool)>)],
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<&str> = taken_over.iter().map(|(id, _)| id.as_str()).collect();
    let rows: Vec<(String, Uuid, bool)> = sqlx::query_as(
        "SELECT device_id, group_id, is_pinned FROM device_group_memberships WHERE device_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut stored: std::collections::HashMap<&str, Vec<(Uuid, bool)>> =
        std::collections::HashMap::new();
    for (device, group, pinned) in &rows {
        stored
            .entry(device.as_str())
            .or_default()
            .push((*group, *pinned));
    }
    Ok(taken_over
        .iter()
        .filter(|(id, basis)| {
            let mut now = stored.remove(id.as_str()).unwrap_or_default();
            now.sort_unstable();
            now != *basis
        })
        .map(|(id, _)| id.clone())
        .collect())
}

/// Runs one of the device statements over `rows`, returning the ids it wrote.
async fn write_devices(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    sql: &str,
    rows: &[DeviceRow],
    partition: i32,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(sql)
        .bind(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| &*r.org_id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.attributes.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.expected_version).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.is_development).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.firmware_lock.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.target_version.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.target_reason).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.target_group).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.target_sequence).collect::<Vec<_>>())
        .bind(partition)
        .bind(
            rows.iter()
                .map(|r| r.attributes_write.code())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.target_release).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.target_standing).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.target_reached).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?)
}

/// Adds to `out` the `ids` a statement did not return in `written` (written, or locked).
fn missing<'a>(ids: impl Iterator<Item = &'a str>, written: &[String], out: &mut Vec<String>) {
    let written: std::collections::HashSet<&str> = written.iter().map(String::as_str).collect();
    out.extend(ids.filter(|id| !written.contains(id)).map(str::to_string));
}
