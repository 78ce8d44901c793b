//! What a group's new definition (a filter edit, a new site, a static group turned dynamic) does to firmware
//! targets: the releases stay, but devices join or leave the group, and a device whose groups change may
//! resolve to another version — only if the group carries a live release, since a group's membership
//! counts in resolution through its release alone.

use futures_util::TryStreamExt as _;
use serde_json::{Map, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    current_releases, facts, DeviceRow, Facts, Impact, ReleaseError, Releases, DEVICE_COLUMNS,
};
use crate::rules::{AttrValue, Attributes, Catalogue, CompiledFilter, EpochMillis};

/// A dynamic group's definition after a change, as the workers will evaluate it.
#[derive(Clone, Copy, Debug)]
pub struct NewDefinition<'a> {
    pub group: Uuid,
    /// A site-scoped group holds only devices of its site.
    pub site: Option<&'a str>,
    pub filter: &'a CompiledFilter,
    /// The instant time conditions are evaluated at.
    pub now: EpochMillis,
}

/// A device as the definition's impact reads it: id, development flag, lock, reported `firmwareVersion`,
/// groups, whether it is pinned in the group, and the attributes the filter (and site) read.
type DefinitionRow = (
    String,
    bool,
    Option<String>,
    Option<String>,
    Vec<Uuid>,
    bool,
    Value,
    Option<Uuid>,
);

/// Whose resolved firmware changes once the workers apply `definition` to the org's devices, read from
/// PostgreSQL in `conn`'s transaction: a device joins the group when it matches (and is of the group's
/// site), and leaves it when it does not, unless pinned — as the workers decide membership. None, without
/// reading a device, when the group carries no live release. The devices are streamed, so memory stays
/// The org's releases, the same on both sides — what moving devices into or out of `group` is counted
/// against — or `None` when `group` carries no live release (then no move through it retargets a device).
async fn unchanged_releases(
    conn: &mut PgConnection,
    org_id: &str,
    group: Uuid,
) -> Result<Option<Releases>, sqlx::Error> {
    let (groups, default) = current_releases(conn, org_id).await?;
    if !groups.contains_key(&group) {
        return Ok(None);
    }
    Ok(Some(Releases {
        before_groups: groups.clone(),
        before_default: default.clone(),
        after_groups: groups,
        after_default: default,
    }))
}

/// flat whatever the org's size; the read takes the time a preview from PostgreSQL takes.
pub async fn definition_impact(
    conn: &mut PgConnection,
    org_id: &str,
    definition: &NewDefinition<'_>,
    catalogue: &Catalogue,
    sample: usize,
) -> Result<Impact, ReleaseError> {
    let Some(releases) = unchanged_releases(conn, org_id, definition.group).await? else {
        return Ok(Impact::new(0));
    };
    let mut fields = definition.filter.stored_field_names(catalogue);
    if !fields.iter().any(|f| f == "siteId") {
        fields.push("siteId".to_string());
    }
    let site_field = catalogue.builtin("siteId");
    let mut impact = Impact::new(0);
    let mut rows = sqlx::query_as::<_, DefinitionRow>(
        "SELECT d.id, d.is_development, d.firmware_lock, d.attributes ->> 'firmwareVersion', \
           ARRAY(SELECT m.group_id FROM device_group_memberships m WHERE m.device_id = d.id), \
           COALESCE((SELECT m.is_pinned FROM device_group_memberships m \
                     WHERE m.device_id = d.id AND m.group_id = $2), false), \
           COALESCE((SELECT jsonb_object_agg(f, d.attributes -> f) FROM unnest($3::text[]) f \
                     WHERE d.attributes ? f), '{}'::jsonb), d.target_release \
         FROM devices d WHERE d.org_id = $1 ORDER BY d.id",
    )
    .bind(org_id)
    .bind(definition.group)
    .bind(&fields)
    .fetch(&mut *conn);
    while let Some((id, development, lock, running, member_of, pinned, doc, current)) =
        rows.try_next().await?
    {
        let doc = match doc {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let attrs = Attributes::from_stored_json(&doc, catalogue, |_, _| {});
        let in_site = match (definition.site, site_field) {
            (None, _) => true,
            (Some(site), Some(field)) => {
                matches!(attrs.get(field), Some(AttrValue::Str(s)) if s.as_str() == site)
            }
            (Some(_), None) => false,
        };
        let matches = in_site && definition.filter.evaluate(&attrs, definition.now);
        let member = member_of.contains(&definition.group);
        let stays = matches || (member && pinned);
        let after: Vec<Uuid> = match (member, stays) {
            (false, true) => member_of
                .iter()
                .copied()
                .chain([definition.group])
                .collect(),
            (true, false) => member_of
                .iter()
                .copied()
                .filter(|g| *g != definition.group)
                .collect(),
            _ => member_of.clone(),
        };
        let facts = Facts {
            id: &id,
            development,
            lock: lock.as_deref(),
            running: running.as_deref(),
            current,
        };
        releases.count_moved(&mut impact, facts, &member_of, &after, sample);
    }
    Ok(impact)
}

/// Whose resolved firmware changes because `devices` were just added to (or, `removal`, removed from)
/// `group` in `conn`'s transaction, which already holds the change: each device's groups are read as
/// they are now, and as they were without (with) the group. None, without reading a device, when the
/// group carries no live release.
pub async fn batch_impact(
    conn: &mut PgConnection,
    org_id: &str,
    group: Uuid,
    devices: &[String],
    removal: bool,
    sample: usize,
) -> Result<Impact, ReleaseError> {
    if devices.is_empty() {
        return Ok(Impact::new(0));
    }
    let Some(releases) = unchanged_releases(conn, org_id, group).await? else {
        return Ok(Impact::new(0));
    };
    let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.org_id = $1 AND d.id = ANY($2) ORDER BY d.id"
    ))
    .bind(org_id)
    .bind(devices)
    .fetch_all(&mut *conn)
    .await?;
    let mut impact = Impact::new(0);
    for row in &rows {
        let now = &row.4;
        let before: Vec<Uuid> = if removal {
            now.iter().copied().chain([group]).collect()
        } else {
            now.iter().copied().filter(|g| *g != group).collect()
        };
        releases.count_moved(&mut impact, facts(row), &before, now, sample);
    }
    Ok(impact)
}
