//! Seeding the synthetic fleet straight into PostgreSQL, in the steady state a worker would leave it in,
//! and the check that a database is one the fleet may be seeded into.
//!
//! Orgs and groups go through [`crate::store::groups`], so the control log holds them as in production.
//! Devices and their initial memberships are computed here with the worker's own evaluator (the
//! [`Registry`] built from the stored definitions) and bulk-loaded with `COPY`, each device on the partition
//! Kafka's default partitioner gives its id. Finally each partition's stored position is set to offset 0
//! and the control-log head, so the worker starts in steady state instead of re-evaluating every group for
//! a million devices.
//!
//! A database may be seeded when it is empty, or holds only an earlier synthetic fleet (every org's id
//! starts with [`ORG_ID_PREFIX`]) and may be emptied ([`prepare`]).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection, PgPool};

use super::fleet::{Fleet, ORG_ID_PREFIX};
use crate::kafka::default_partition;
use crate::rules::{Attributes, Catalogue};
use crate::store::groups::{self, NewGroup};
use crate::worker::registry::Registry;

/// Devices per `COPY`.
const CHUNK: usize = 20_000;

/// What was seeded.
#[derive(Clone, Debug, Serialize)]
pub struct SeedReport {
    pub devices: usize,
    pub orgs: usize,
    pub groups: usize,
    /// Groups whose result can change with time alone (`withinLast`, relative `before`/`after`,
    /// `daysSince…`).
    pub time_dependent_groups: usize,
    /// Site-scoped groups.
    pub site_scoped_groups: usize,
    /// Initial memberships (every device evaluated against every group of its org).
    pub memberships: u64,
    pub seconds: f64,
}

/// The worker's view of the stored definitions: every org and group, and every live release, at the
/// control-log head.
pub async fn load_registry(pool: &PgPool, catalogue: Arc<Catalogue>) -> anyhow::Result<Registry> {
    let (definitions, orgs, head) = groups::load_definitions(pool)
        .await
        .context("failed to load group definitions")?;
    let mut registry = Registry::new(catalogue);
    for org in &orgs {
        registry.add_org(org);
    }
    for def in &definitions {
        registry.upsert(def);
    }
    let releases = crate::store::firmware::live_releases(pool)
        .await
        .context("failed to load firmware releases")?;
    registry.load_releases(&releases);
    registry.position = head;
    Ok(registry)
}

/// Creates the orgs, groups, devices, memberships and partition positions of `fleet`.
pub async fn seed(
    pool: &PgPool,
    url: &str,
    fleet: &Fleet,
    catalogue: &Arc<Catalogue>,
    group_count: usize,
    partitions: i32,
    topic: &str,
) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    for o in 0..fleet.orgs {
        groups::create_org(pool, &Fleet::org_id(o), &format!("Bench org {o}"))
            .await
            .context("failed to create an org")?;
    }
    let specs = fleet.groups(group_count);
    for spec in &specs {
        let group = NewGroup {
            org_id: Fleet::org_id(spec.org),
            name: spec.name.clone(),
            site_id: spec.site.clone(),
            filter: Some(spec.filter.clone()),
            ..Default::default()
        };
        groups::create_group(pool, catalogue, &group)
            .await
            .map_err(|e| anyhow::anyhow!("failed to create group {}: {e:?}", spec.name))?;
    }
    let registry = load_registry(pool, catalogue.clone()).await?;
    tracing::info!(
        orgs = fleet.orgs,
        groups = specs.len(),
        "orgs and groups created; seeding devices"
    );

    // One connection writes while this task computes the next chunk.
    let mut conn = PgConnection::connect(url)
        .await
        .context("failed to connect the seeding writer")?;
    // Rows computed here are consistent by construction: skip the foreign-key triggers, which cost more
    // than the rows themselves (superuser only; without it the load is just slower).
    if let Err(e) = sqlx::query("SET session_replication_role = replica")
        .execute(&mut conn)
        .await
    {
        tracing::warn!(error = %e, "cannot skip foreign-key checks while seeding; it will be slower");
    }
    let (chunks, mut incoming) = tokio::sync::mpsc::channel::<(String, String)>(1);
    let writer = tokio::spawn(async move {
        while let Some((devices, members)) = incoming.recv().await {
            copy(
                &mut conn,
                "COPY devices (id, org_id, attributes, partition, sequence, version) FROM STDIN",
                devices,
            )
            .await?;
            copy(&mut conn, "COPY device_group_memberships (group_id, device_id, is_pinned, added_by) FROM STDIN", members).await?;
        }
        conn.close().await.ok();
        Ok::<_, anyhow::Error>(())
    });
    let mut memberships = 0u64;
    let mut start = 0;
    while start < fleet.devices {
        let end = (start + CHUNK).min(fleet.devices);
        let (devices, members, count) = chunk(fleet, &registry, catalogue, partitions, start..end)?;
        memberships += count;
        if chunks.send((devices, members)).await.is_err() {
            break; // the writer failed; its error is reported below
        }
        start = end;
        if start % 200_000 == 0 {
            tracing::info!(devices = start, "seeding");
        }
    }
    drop(chunks);
    writer.await.context("the seeding writer panicked")??;
    // The load skipped the triggers that keep the side tables of `devices` (identifiers, reported firmware
    // versions) in step: fill them set-based, as the triggers would have.
    sqlx::query("SELECT cohort_fill_device_side_tables()")
        .execute(pool)
        .await
        .context("failed to fill the side tables of the seeded devices")?;
    // The load skipped the triggers that keep group member counts too: count them once, set-based.
    crate::store::counts::recount_all(pool)
        .await
        .context("failed to count the seeded groups' members")?;
    // A freshly loaded table has no statistics and no visibility map: settle both, as a database that has
    // been running for a while would be.
    sqlx::raw_sql("VACUUM (ANALYZE) devices, device_group_memberships")
        .execute(pool)
        .await
        .context("failed to vacuum the seeded tables")?;
    for partition in 0..partitions {
        sqlx::query(
            "INSERT INTO partition_positions (topic, partition, next_offset, control_position, epoch, owner) \
             VALUES ($1, $2, 0, $3, 0, '')",
        )
        .bind(topic)
        .bind(partition)
        .bind(registry.position)
        .execute(pool)
        .await
        .context("failed to set the partition positions")?;
    }
    let (time_dependent_groups, site_scoped_groups) = (0..specs.len() as u32)
        .map(|slot| registry.group(slot))
        .fold((0, 0), |(t, s), g| {
            (
                t + usize::from(g.is_time_dependent()),
                s + usize::from(g.site.is_some()),
            )
        });
    Ok(SeedReport {
        devices: fleet.devices,
        orgs: fleet.orgs,
        groups: specs.len(),
        time_dependent_groups,
        site_scoped_groups,
        memberships,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The number of orgs in the database, and of those that are not the synthetic fleet's.
pub async fn org_counts(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE id NOT LIKE $1) FROM orgs")
        .bind(format!("{ORG_ID_PREFIX}%"))
        .fetch_one(pool)
        .await
        .context("failed to inspect the database")
}

/// Refuses a database holding anything but an earlier synthetic fleet's data; empties that with `reset`.
pub async fn prepare(pool: &PgPool, reset: bool) -> anyhow::Result<()> {
    let (orgs, foreign) = org_counts(pool).await?;
    let devices: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices)")
        .fetch_one(pool)
        .await?;
    if orgs == 0 && !devices {
        return Ok(());
    }
    anyhow::ensure!(
        foreign == 0,
        "the database holds orgs that are not the benchmark's; use a database of its own"
    );
    anyhow::ensure!(
        reset,
        "the database holds an earlier benchmark's data; pass --reset to empty it"
    );
    tracing::info!("emptying the database (--reset)");
    sqlx::raw_sql(
        "TRUNCATE group_membership_log, device_group_memberships, group_member_counts, release_progress, \
         firmware_releases, \
         devices, device_groups, control_log, partition_positions, outbox, api_keys, device_identifiers, \
         device_firmware_versions, org_settings, console_sessions, orgs \
         RESTART IDENTITY",
    )
    .execute(pool)
    .await
    .context("failed to empty the database")?;
    Ok(())
}

/// The `COPY` text of a range of devices and of their memberships, and the number of memberships.
fn chunk(
    fleet: &Fleet,
    registry: &Registry,
    catalogue: &Catalogue,
    partitions: i32,
    range: std::ops::Range<usize>,
) -> anyhow::Result<(String, String, u64)> {
    let mut devices = String::with_capacity(range.len() * 500);
    let mut members = String::new();
    let mut count = 0;
    for i in range {
        let id = fleet.device_id(i);
        let org = Fleet::org_id(fleet.org_of(i));
        let doc = fleet.attributes(i);
        let attrs = Attributes::from_json(&doc, catalogue)
            .map_err(|e| anyhow::anyhow!("a generated device does not parse: {e:?}"))?;
        let partition = default_partition(id.as_bytes(), partitions);
        let json = serde_json::Value::Object(doc).to_string();
        for field in [id.as_str(), org.as_str(), json.as_str()] {
            push_copy_field(&mut devices, field);
            devices.push('\t');
        }
        devices.push_str(&format!("{partition}\t0\t1\n"));
        let Some((_, org_groups)) = registry.org(&org) else {
            anyhow::bail!("org {org} is not in the registry");
        };
        for slot in &org_groups.dynamic {
            if registry.matches(*slot, &attrs, fleet.t0) {
                members.push_str(&registry.group(*slot).id.to_string());
                members.push('\t');
                push_copy_field(&mut members, &id);
                members.push_str("\tf\tdynamic_rule\n");
                count += 1;
            }
        }
    }
    Ok((devices, members, count))
}

/// Appends `text` escaped for `COPY`'s text format.
fn push_copy_field(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

async fn copy(conn: &mut PgConnection, statement: &str, data: String) -> anyhow::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .with_context(|| format!("failed to start {statement}"))?;
    copy.send(data.into_bytes())
        .await
        .with_context(|| format!("failed to send rows for {statement}"))?;
    copy.finish()
        .await
        .with_context(|| format!("failed to finish {statement}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_fields_escape_what_the_text_format_treats_specially() {
        let mut out = String::new();
        push_copy_field(&mut out, "a\\b\tc\nd\re");
        assert_eq!(out, "a\\\\b\\tc\\nd\\re");
    }
}
