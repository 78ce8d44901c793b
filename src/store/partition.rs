//! Per-partition positions and the state a worker loads when it is assigned a partition.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// Where a partition resumes, and the epoch that fences every later write for it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Bumped by every claim; a batch commits only while its epoch is current.
    pub epoch: i64,
    /// The next Kafka offset to process (everything below it is applied).
    pub next_offset: i64,
    /// The last control-log id applied to this partition's devices.
    pub control_position: i64,
}

/// Claims a partition for `owner`: creates its position row if needed (starting at offset 0 and at
/// `initial_control_position` — nothing to catch up for a partition that never had devices) and bumps the
/// epoch, fencing any previous owner. Waits for a previous owner's in-flight batch to commit or roll back
/// (it holds the row lock), so the claim sees its effects.
pub async fn claim(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    owner: &str,
    initial_control_position: i64,
) -> Result<Claim, StoreError> {
    let (epoch, next_offset, control_position): (i64, i64, i64) = sqlx::query_as(
        "INSERT INTO partition_positions (topic, partition, control_position, epoch, owner) \
         VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (topic, partition) DO UPDATE SET epoch = partition_positions.epoch + 1, \
           owner = EXCLUDED.owner, updated_at = now() \
         RETURNING epoch, next_offset, control_position",
    )
    .bind(topic)
    .bind(partition)
    .bind(initial_control_position)
    .bind(owner)
    .fetch_one(pool)
    .await?;
    Ok(Claim {
        epoch,
        next_offset,
        control_position,
    })
}

/// A device row as stored.
#[derive(Clone, Debug)]
pub struct StoredDevice {
    pub id: String,
    pub org_id: String,
    pub attributes: Value,
    pub sequence: i64,
    pub partition: i32,
    pub version: i64,
    pub is_development: bool,
    pub firmware_lock: Option<String>,
    pub target_version: Option<String>,
    pub target_reason: String,
    pub target_group: Option<Uuid>,
    pub target_sequence: i64,
    /// The release that decided the target, if known.
    pub target_release: Option<Uuid>,
    /// Where the device stands in that release (`previous`, `running`, `failed`, `reverted`).
    pub target_standing: Option<String>,
    /// Whether it has reported running the target since that release came to target it.
    pub target_reached: bool,
}

/// A membership row as stored.
#[derive(Clone, Debug)]
pub struct StoredMembership {
    pub group_id: Uuid,
    pub device_id: String,
    pub is_pinned: bool,
    pub added_by: String,
}

type DeviceTuple = (
    String,
    String,
    Value,
    i64,
    i32,
    i64,
    bool,
    Option<String>,
    Option<String>,
    String,
    Option<Uuid>,
    i64,
    Option<Uuid>,
    Option<String>,
    bool,
);

fn device(row: DeviceTuple) -> StoredDevice {
    let (
        id,
        org_id,
        attributes,
        sequence,
        partition,
        version,
        is_development,
        firmware_lock,
        target_version,
        target_reason,
        target_group,
        target_sequence,
        target_release,
        target_standing,
        target_reached,
    ) = row;
    StoredDevice {
        target_version,
        target_reason,
        target_group,
        target_sequence,
        target_release,
        target_standing,
        target_reached,
        id,
        org_id,
        attributes,
        sequence,
        partition,
        version,
        is_development,
        firmware_lock,
    }
}

const DEVICE_COLUMNS: &str =
    "d.id, d.org_id, d.attributes, d.sequence, d.partition, d.version, d.is_development, \
     d.firmware_lock, d.target_version, d.target_reason, d.target_group, d.target_sequence, \
     d.target_release, d.target_standing, d.target_reached";

/// Calls `each` with every device owned by `partition`, as the rows arrive: a partition is loaded without
/// ever holding all its stored rows at once (a `Vec` of them cost about 3 KB per device at the peak).
/// Pair it with [`for_each_membership`]. On an error, `each` may have seen some of the rows.
pub async fn for_each_device(
    pool: &PgPool,
    partition: i32,
    mut each: impl FnMut(StoredDevice),
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt as _;
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.partition = $1");
    let mut rows = sqlx::query_as::<_, DeviceTuple>(&sql)
        .bind(partition)
        .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        each(device(row));
    }
    Ok(())
}

/// Calls `each` with every membership of a device owned by `partition`, as the rows arrive.
pub async fn for_each_membership(
    pool: &PgPool,
    partition: i32,
    mut each: impl FnMut(StoredMembership),
) -> Result<(), StoreError> {
    use futures_util::TryStreamExt as _;
    let mut rows = sqlx::query_as::<_, (Uuid, String, bool, String)>(
        "SELECT m.group_id, m.device_id, m.is_pinned, m.added_by FROM device_group_memberships m \
         JOIN devices d ON d.id = m.device_id WHERE d.partition = $1",
    )
    .bind(partition)
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        each(membership(row));
    }
    Ok(())
}

/// The named devices (those a batch needs but the worker does not hold), with their memberships.
pub async fn load_devices(
    pool: &PgPool,
    ids: &[String],
) -> Result<(Vec<StoredDevice>, Vec<StoredMembership>), StoreError> {
    load(pool, "d.id = ANY($1)", ids).await
}

/// Devices matching `condition` (over `devices d`, with `$1` bound to `arg`) and their memberships.
async fn load<A>(
    pool: &PgPool,
    condition: &str,
    arg: A,
) -> Result<(Vec<StoredDevice>, Vec<StoredMembership>), StoreError>
where
    A: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Clone,
{
    let devices_sql = format!("SELECT {DEVICE_COLUMNS} FROM devices d WHERE {condition}");
    let members_sql = format!(
        "SELECT m.group_id, m.device_id, m.is_pinned, m.added_by FROM device_group_memberships m \
         JOIN devices d ON d.id = m.device_id WHERE {condition}"
    );
    let devices: Vec<DeviceTuple> = sqlx::query_as(&devices_sql)
        .bind(arg.clone())
        .fetch_all(pool)
        .await?;
    let memberships: Vec<(Uuid, String, bool, String)> = sqlx::query_as(&members_sql)
        .bind(arg)
        .fetch_all(pool)
        .await?;
    Ok((
        devices.into_iter().map(device).collect(),
        memberships.into_iter().map(membership).collect(),
    ))
}

fn membership(
    (group_id, device_id, is_pinned, added_by): (Uuid, String, bool, String),
) -> StoredMembership {
    StoredMembership {
        group_id,
        device_id,
        is_pinned,
        added_by,
    }
}
