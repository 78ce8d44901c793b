//! A snapshot of the stored tables (each row as JSON), and a comparison that ignores only the rows a test
//! allows to change.

use std::collections::BTreeMap;

use serde_json::Value;
use sqlx::PgPool;

/// The tables a corpus must not change, each with the order its rows are compared in. Positions
/// (`partition_positions`) move with every message and API keys record their last use, so they are left
/// out; the outbox's `published_at` is set by the relay at its own pace.
const TABLES: &[(&str, &str)] = &[
    ("orgs", "SELECT to_jsonb(t) FROM orgs t ORDER BY id"),
    ("devices", "SELECT to_jsonb(t) FROM devices t ORDER BY id"),
    (
        "device_groups",
        "SELECT to_jsonb(t) FROM device_groups t ORDER BY id",
    ),
    (
        "device_group_memberships",
        "SELECT to_jsonb(t) FROM device_group_memberships t ORDER BY group_id, device_id",
    ),
    (
        "group_membership_log",
        "SELECT to_jsonb(t) FROM group_membership_log t ORDER BY id",
    ),
    (
        "firmware_releases",
        "SELECT to_jsonb(t) FROM firmware_releases t ORDER BY id",
    ),
    (
        "device_identifiers",
        "SELECT to_jsonb(t) FROM device_identifiers t ORDER BY 1",
    ),
    (
        "device_firmware_versions",
        "SELECT to_jsonb(t) FROM device_firmware_versions t ORDER BY 1",
    ),
    (
        "control_log",
        "SELECT to_jsonb(t) FROM control_log t ORDER BY id",
    ),
    (
        "outbox",
        "SELECT to_jsonb(t) - 'published_at' FROM outbox t ORDER BY id",
    ),
];

/// Every row of every table in [`TABLES`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub tables: BTreeMap<&'static str, Vec<Value>>,
}

impl Snapshot {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Self> {
        let mut tables = BTreeMap::new();
        for (table, sql) in TABLES {
            let rows: Vec<Value> = sqlx::query_scalar(sql).fetch_all(pool).await?;
            tables.insert(*table, rows);
        }
        Ok(Self { tables })
    }

    /// Fails, naming the first differences, unless `after` holds the same rows as `self` once the rows
    /// `exempt(table, row)` allows to appear, change or vanish are left out of both.
    pub fn assert_unchanged(
        &self,
        after: &Snapshot,
        exempt: impl Fn(&str, &Value) -> bool,
    ) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        for (table, before_rows) in &self.tables {
            let keep = |rows: &Vec<Value>| -> Vec<Value> {
                rows.iter()
                    .filter(|row| !exempt(table, row))
                    .cloned()
                    .collect()
            };
            let before = keep(before_rows);
            let now = keep(&after.tables[table]);
            if before != now {
                let gone: Vec<&Value> = before.iter().filter(|r| !now.contains(r)).collect();
                let new: Vec<&Value> = now.iter().filter(|r| !before.contains(r)).collect();
                problems.push(format!(
                    "{table}: {} row(s) before, {} after; changed or removed {:?}; new or changed {:?}",
                    before.len(),
                    now.len(),
                    gone.iter().take(3).collect::<Vec<_>>(),
                    new.iter().take(3).collect::<Vec<_>>()
                ));
            }
        }
        anyhow::ensure!(
            problems.is_empty(),
            "stored state changed:\n{}",
            problems.join("\n")
        );
        Ok(())
    }
}

/// The string column `column` of a snapshot row, if it has one.
pub fn text<'a>(row: &'a Value, column: &str) -> Option<&'a str> {
    row.get(column).and_then(Value::as_str)
}
