//! The REST API's reads: group listings with member counts, the members page, the membership log, the
//! device view, and the device scan behind previews. Writes go through [`super::groups`],
//! [`super::firmware`] and [`super::members`], which record the control-log entries workers act on.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use serde_json::{Map, Value};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use super::StoreError;

/// A group as the API shows it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct GroupRow {
    pub id: Uuid,
    pub org_id: String,
    pub site_id: Option<String>,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `static` or `dynamic`.
    pub kind: String,
    pub filter_conditions: Option<Value>,
    pub filter_fields_used: Vec<String>,
    pub parent_id: Option<Uuid>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub device_count: i64,
}

/// The columns of a [`GroupRow`] for a query over `device_groups g`; the count is the maintained one
/// ([`super::counts`]), a few rows per group whatever its size.
fn group_columns() -> String {
    format!(
        "g.id, g.org_id, g.site_id, g.name, g.description, g.tags, g.type AS kind, \
         g.filter_conditions, g.filter_fields_used, g.parent_id, g.version, g.created_at, g.updated_at, \
         {} AS device_count",
        super::counts::GROUP_MEMBERS
    )
}

/// Filters of the group listing; `None` fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct GroupQuery {
    /// `None` only for system keys listing every org.
    pub org_id: Option<String>,
    pub kind: Option<String>,
    pub site_id: Option<String>,
    pub parent_id: Option<Uuid>,
    /// Groups having every one of these tags.
    pub tags: Vec<String>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

fn push_group_filters(q: &mut QueryBuilder<'_, sqlx::Postgres>, query: &GroupQuery) {
    q.push(" WHERE g.deleted_at IS NULL");
    if let Some(org) = &query.org_id {
        q.push(" AND g.org_id = ").push_bind(org.clone());
    }
    if let Some(kind) = &query.kind {
        q.push(" AND g.type = ").push_bind(kind.clone());
    }
    if let Some(site) = &query.site_id {
        q.push(" AND g.site_id = ").push_bind(site.clone());
    }
    if let Some(parent) = query.parent_id {
        q.push(" AND g.parent_id = ").push_bind(parent);
    }
    if !query.tags.is_empty() {
        q.push(" AND g.tags @> ").push_bind(query.tags.clone());
    }
    if let Some(search) = &query.search {
        // The search text is a literal: escape LIKE's wildcards.
        let escaped = search
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        q.push(" AND g.name ILIKE ")
            .push_bind(format!("%{escaped}%"));
    }
}

/// One page of groups (by name) and the total matching.
pub async fn list_groups(
    pool: &PgPool,
    query: &GroupQuery,
) -> Result<(Vec<GroupRow>, i64), StoreError> {
    let mut count = QueryBuilder::new("SELECT count(*) FROM device_groups g");
    push_group_filters(&mut count, query);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    let mut page = QueryBuilder::new(format!("SELECT {} FROM device_groups g", group_columns()));
    push_group_filters(&mut page, query);
    page.push(" ORDER BY g.name, g.id LIMIT ")
        .push_bind(query.limit)
        .push(" OFFSET ")
        .push_bind(query.offset);
    let rows = page.build_query_as().fetch_all(pool).await?;
    Ok((rows, total))
}

/// A live group by id.
pub async fn get_group(pool: &PgPool, id: Uuid) -> Result<Option<GroupRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {} FROM device_groups g WHERE g.id = $1 AND g.deleted_at IS NULL",
        group_columns()
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The attributes shown beside a device in listings.
pub const KEY_ATTRIBUTES: &[&str] = &[
    "hostname",
    "displayName",
    "status",
    "osType",
    "platform",
    "firmwareVersion",
    "siteId",
    "lastSeenAt",
];

/// `jsonb_strip_nulls(jsonb_build_object('hostname', d.attributes -> 'hostname', …))`.
fn key_attributes_sql() -> String {
    let pairs: Vec<String> = KEY_ATTRIBUTES
        .iter()
        .map(|f| format!("'{f}', d.attributes -> '{f}'"))
        .collect();
    format!(
        "jsonb_strip_nulls(jsonb_build_object({}))",
        pairs.join(", ")
    )
}

/// A member as listed.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct MemberRow {
    pub device_id: String,
    pub is_pinned: bool,
    pub added_at: DateTime<Utc>,
    pub added_by: String,
    pub attributes: Value,
}

/// One page of a group's members (by device id, after `after` if given) and the (maintained) member
/// count. With `after`, the page starts at that key in the primary key `(group_id, device_id)`: a deep
/// page costs the same as the first.
pub async fn list_members(
    pool: &PgPool,
    group_id: Uuid,
    after: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<MemberRow>, i64), StoreError> {
    let total = super::counts::member_count(pool, group_id).await?;
    let sql = format!(
        "SELECT m.device_id, m.is_pinned, m.added_at, m.added_by, {} AS attributes \
         FROM device_group_memberships m JOIN devices d ON d.id = m.device_id \
         WHERE m.group_id = $1{} ORDER BY m.device_id LIMIT $2 OFFSET $3",
        key_attributes_sql(),
        if after.is_some() {
            " AND m.device_id > $4"
        } else {
            ""
        }
    );
    let rows = sqlx::query_as(&sql).bind(group_id).bind(limit).bind(offset);
    let rows = match after {
        Some(after) => rows.bind(after),
        None => rows,
    }
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

/// Whether the device is a member of the group: `Some(is_pinned)`.
pub async fn membership(
    pool: &PgPool,
    group_id: Uuid,
    device_id: &str,
) -> Result<Option<bool>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT is_pinned FROM device_group_memberships WHERE group_id = $1 AND device_id = $2",
    )
    .bind(group_id)
    .bind(device_id)
    .fetch_optional(pool)
    .await?)
}

/// A membership-log entry as listed.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct LogEntry {
    pub id: i64,
    pub device_id: String,
    pub hostname: Option<String>,
    pub display_name: Option<String>,
    pub action: String,
    pub reason: String,
    pub cause: Value,
    pub group_version: i64,
    pub created_at: DateTime<Utc>,
}

/// Which entries of a group's membership log to list.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFilter<'a> {
    pub device_id: Option<&'a str>,
    pub action: Option<&'a str>,
    /// Only entries older than this one (by id): the cursor of the next page.
    pub before: Option<i64>,
}

/// A page of a group's membership log, newest first.
///
/// The statement names only the filters given, so each combination is its own prepared statement with a
/// plan for it: with a device, the `(group_id, device_id, id)` index; without, `(group_id, id)`, read
/// backwards from `before`. A page from a cursor costs the page, however old; `offset` skips rows one by
/// one.
pub async fn membership_log(
    pool: &PgPool,
    group_id: Uuid,
    filter: LogFilter<'_>,
    limit: i64,
    offset: i64,
) -> Result<Vec<LogEntry>, StoreError> {
    use std::fmt::Write as _;
    let mut sql = String::from(
        "SELECT l.id, l.device_id, d.attributes ->> 'hostname' AS hostname, \
           d.attributes ->> 'displayName' AS display_name, l.action, l.reason, l.cause, l.group_version, \
           l.created_at \
         FROM group_membership_log l LEFT JOIN devices d ON d.id = l.device_id \
         WHERE l.group_id = $1",
    );
    let mut n = 1;
    let mut condition = |column: &str, operator: &str| {
        n += 1;
        let _ = write!(sql, " AND l.{column} {operator} ${n}");
    };
    if filter.device_id.is_some() {
        condition("device_id", "=");
    }
    if filter.action.is_some() {
        condition("action", "=");
    }
    if filter.before.is_some() {
        condition("id", "<");
    }
    let _ = write!(
        sql,
        " ORDER BY l.id DESC LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    );
    let mut query = sqlx::query_as(&sql).bind(group_id);
    if let Some(device_id) = filter.device_id {
        query = query.bind(device_id);
    }
    if let Some(action) = filter.action {
        query = query.bind(action);
    }
    if let Some(before) = filter.before {
        query = query.bind(before);
    }
    Ok(query.bind(limit).bind(offset).fetch_all(pool).await?)
}

/// A stored device.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct DeviceRecord {
    pub id: String,
    pub org_id: String,
    pub attributes: Value,
    pub sequence: i64,
    pub partition: i32,
    pub is_development: bool,
    pub firmware_lock: Option<String>,
    pub target_version: Option<String>,
    pub target_reason: String,
    pub target_group: Option<Uuid>,
    pub target_sequence: i64,
    pub target_release: Option<Uuid>,
    pub target_standing: Option<String>,
    pub target_reached: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A device by id.
pub async fn get_device(pool: &PgPool, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, org_id, attributes, sequence, partition, is_development, firmware_lock, target_version, \
           target_reason, target_group, target_sequence, target_release, target_standing, target_reached, \
           created_at, updated_at FROM devices WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// One of a device's memberships, with its group.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct DeviceMembership {
    pub group_id: Uuid,
    pub name: String,
    pub kind: String,
    pub is_pinned: bool,
    pub added_by: String,
    pub added_at: DateTime<Utc>,
}

/// The groups a device is a member of, by name.
pub async fn device_memberships(
    pool: &PgPool,
    device_id: &str,
) -> Result<Vec<DeviceMembership>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT g.id AS group_id, g.name, g.type AS kind, m.is_pinned, m.added_by, m.added_at \
         FROM device_group_memberships m JOIN device_groups g ON g.id = m.group_id \
         WHERE m.device_id = $1 AND g.deleted_at IS NULL ORDER BY g.name",
    )
    .bind(device_id)
    .fetch_all(pool)
    .await?)
}

/// The org's live dynamic groups: (id, name, site, filter).
pub async fn dynamic_groups(
    pool: &PgPool,
    org_id: &str,
) -> Result<Vec<(Uuid, String, Option<String>, Value)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, name, site_id, filter_conditions FROM device_groups \
         WHERE org_id = $1 AND type = 'dynamic' AND deleted_at IS NULL ORDER BY name",
    )
    .bind(org_id)
    .fetch_all(pool)
    .await?)
}

/// Which of `ids` exist, and in which org: (id, org).
pub async fn device_orgs(
    pool: &PgPool,
    ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, org_id FROM devices WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// Whether the org exists.
pub async fn org_exists(pool: &PgPool, org_id: &str) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT 1::int8 FROM orgs WHERE id = $1")
            .bind(org_id)
            .fetch_optional(pool)
            .await?
            .is_some(),
    )
}

/// Orgs: (id, name, created_at), all or one.
pub async fn list_orgs(
    pool: &PgPool,
    only: Option<&str>,
) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, name, created_at FROM orgs WHERE $1::text IS NULL OR id = $1 ORDER BY id",
    )
    .bind(only)
    .fetch_all(pool)
    .await?)
}

/// Calls `each(device_id, attributes)` for every device of the org (of `site`, and of `partitions`, when
/// given), in device id order, streaming: memory stays flat however large the org. Only the attributes named in `fields` are
/// read (the fields a filter uses), which keeps a million-device scan to a few seconds.
pub async fn scan_devices(
    pool: &PgPool,
    org_id: &str,
    site: Option<&str>,
    partitions: Option<&[i32]>,
    fields: &[String],
    mut each: impl FnMut(String, Map<String, Value>) -> bool,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    let mut rows = sqlx::query_as::<_, (String, Value)>(
        "SELECT d.id, COALESCE((SELECT jsonb_object_agg(f, d.attributes -> f) FROM unnest($3::text[]) f \
           WHERE d.attributes ? f), '{}'::jsonb) \
         FROM devices d WHERE d.org_id = $1 AND ($2::text IS NULL OR d.attributes ->> 'siteId' = $2) \
           AND ($4::int4[] IS NULL OR d.partition = ANY($4)) \
         ORDER BY d.id",
    )
    .bind(org_id)
    .bind(site)
    .bind(fields)
    .bind(partitions)
    .fetch(&mut *conn);
    while let Some((id, attributes)) = rows.try_next().await? {
        let Value::Object(map) = attributes else {
            continue;
        };
        if !each(id, map) {
            break;
        }
    }
    Ok(())
}

/// A firmware release as stored.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ReleaseRow {
    pub id: Uuid,
    pub org_id: String,
    pub version: String,
    pub group_id: Option<Uuid>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// Each stage's share of the target's devices, in basis points.
    pub stages: Vec<i32>,
    /// The current stage (an index into `stages`).
    pub stage: i32,
    /// `active`, `paused` or `rolled_back`.
    pub state: String,
    pub failure: Option<sqlx::types::Json<crate::firmware::progress::FailureSignal>>,
    pub halt: Option<sqlx::types::Json<crate::firmware::progress::Thresholds>>,
    pub soak_seconds: Option<i32>,
    pub stage_started_at: DateTime<Utc>,
    /// Why it was paused or rolled back.
    pub halted: Option<serde_json::Value>,
    /// Its progress counts (the sum of their parts).
    pub targeted: i64,
    pub running: i64,
    pub failed: i64,
    pub reverted: i64,
}

/// The columns of [`ReleaseRow`], of `firmware_releases r` with its counts.
const RELEASE_COLUMNS: &str = "r.id, r.org_id, r.version, r.group_id, r.created_by, r.created_at, \
     r.withdrawn_at, r.stages, r.stage, r.state, r.failure, r.halt, r.soak_seconds, r.stage_started_at, \
     r.halted, coalesce(p.targeted, 0)::int8 AS targeted, coalesce(p.running, 0)::int8 AS running, \
     coalesce(p.failed, 0)::int8 AS failed, coalesce(p.reverted, 0)::int8 AS reverted \
     FROM firmware_releases r LEFT JOIN LATERAL (SELECT sum(targeted) AS targeted, sum(running) AS running, \
       sum(failed) AS failed, sum(reverted) AS reverted FROM release_progress WHERE release_id = r.id) p ON true";

/// An org's releases, newest first (live ones only unless `include_withdrawn`).
pub async fn list_releases(
    pool: &PgPool,
    org_id: &str,
    include_withdrawn: bool,
) -> Result<Vec<ReleaseRow>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} WHERE r.org_id = $1 AND ($2 OR r.withdrawn_at IS NULL) \
         ORDER BY r.created_at DESC, r.id LIMIT 1000"
    ))
    .bind(org_id)
    .bind(include_withdrawn)
    .fetch_all(pool)
    .await?)
}

/// A release by id.
pub async fn get_release(pool: &PgPool, id: Uuid) -> Result<Option<ReleaseRow>, StoreError> {
    Ok(
        sqlx::query_as(&format!("SELECT {RELEASE_COLUMNS} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}
