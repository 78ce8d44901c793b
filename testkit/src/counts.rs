//! The check that every group's maintained member count (`group_member_counts`, kept by triggers) equals
//! `count(*)` of its memberships. Part of the from-scratch oracle ([`crate::app::check_oracle`]), and
//! usable alone after any write.

use sqlx::PgPool;
use uuid::Uuid;

/// Fails naming every group (any group with a membership, a count row or a definition) whose summed count
/// rows differ from its memberships, read in one statement (one snapshot).
pub async fn check_member_counts(pool: &PgPool) -> anyhow::Result<()> {
    let wrong: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "WITH maintained AS ( \
           SELECT group_id, sum(members)::int8 AS n FROM group_member_counts GROUP BY group_id), \
         actual AS ( \
           SELECT group_id, count(*) AS n FROM device_group_memberships GROUP BY group_id), \
         groups AS ( \
           SELECT id AS group_id FROM device_groups \
           UNION SELECT group_id FROM maintained UNION SELECT group_id FROM actual) \
         SELECT g.group_id, coalesce(m.n, 0), coalesce(a.n, 0) \
         FROM groups g LEFT JOIN maintained m USING (group_id) LEFT JOIN actual a USING (group_id) \
         WHERE coalesce(m.n, 0) <> coalesce(a.n, 0) ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    anyhow::ensure!(
        wrong.is_empty(),
        "maintained member counts differ from count(*) (group, maintained, actual): {wrong:?}"
    );
    Ok(())
}

/// `count(*)` of the group's memberships: what its maintained count must equal.
pub async fn counted_members(pool: &PgPool, group_id: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM device_group_memberships WHERE group_id = $1")
            .bind(group_id)
            .fetch_one(pool)
            .await?,
    )
}
