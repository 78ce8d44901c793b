//! `cohort reconcile`: recomputes every dynamic membership and firmware target of an org (or of all orgs)
//! from PostgreSQL with the workers' own evaluator and resolution, and reports any drift with examples.
//!
//! Safe while workers run: it only reads, in two passes. The first scans everything; devices that seem to
//! have drifted are read again after `settle` and checked again, and only drift that persists is reported —
//! a device a worker was just changing is not a false alarm.
//!
//! Static memberships are the operators' to make and are not judged; memberships in deleted groups, dynamic
//! memberships the filter no longer supports (unless pinned), missing dynamic memberships, and resolved
//! firmware targets that differ from what the releases, locks and development flags say are.
//!
//! Every group's maintained member count ([`crate::store::counts`]) is compared with `count(*)` of its
//! memberships, in one statement (one snapshot, so a writer running meanwhile is no false alarm).
//!
//! [`repair`] has the owning workers rewrite drifted devices through their normal path (a device whose
//! stored standing drifted stands again, moving its release's counts), and resets each drifted count to
//! the true one directly ([`counts::reset`], [`progress::reset`]), holding off the writers for that short
//! transaction.
//!
//! Each device's standing in the release its target names is checked against what it reports, and each
//! release's progress counts against a recount of its devices' standings ([`progress::drift`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::firmware::progress::standing;
use crate::firmware::{resolve, DeviceFacts, GroupRelease, Reason, Target};
use crate::rules::{compile, AttrValue, Attributes, Catalogue, CompiledFilter, EpochMillis};
use crate::store::counts::{self, CountDrift};
use crate::store::firmware::org_live_releases;
use crate::store::firmware::progress::{self, ProgressDrift};
use crate::store::StoreError;

/// What to check.
#[derive(Clone, Debug)]
pub struct Options {
    /// One org, or every org.
    pub org: Option<String>,
    /// Most drift examples in the report.
    pub examples: usize,
    /// How long to wait before re-checking devices that seem to have drifted.
    pub settle: Duration,
}

/// One difference between what is stored and what the rules say.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub org_id: String,
    pub device_id: String,
    /// `missing_membership`, `extra_membership` or `wrong_target`.
    pub kind: &'static str,
    pub group_id: Option<Uuid>,
    /// What the rules say (a membership: `true`/`false`; a target: `{version, reason, groupId}`).
    pub expected: Value,
    /// What is stored.
    pub stored: Value,
}

/// The outcome.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub orgs: usize,
    pub devices_checked: u64,
    pub dynamic_groups: usize,
    pub evaluations: u64,
    pub missing_memberships: u64,
    pub extra_memberships: u64,
    pub wrong_targets: u64,
    /// Devices whose stored standing in their release differs from what they report.
    pub wrong_standings: u64,
    /// Groups checked for their member count (deleted ones included).
    pub groups_counted: u64,
    /// Every group whose maintained member count differs from `count(*)` of its memberships.
    pub wrong_counts: Vec<CountDrift>,
    /// Every release whose stored progress counts differ from a count of its devices' standings.
    pub wrong_progress: Vec<ProgressDrift>,
    /// Devices with persistent drift, by org.
    pub drifted: Vec<(String, Vec<String>)>,
    pub examples: Vec<Drift>,
    pub evaluated_at: String,
}

impl Report {
    /// Whether anything drifted.
    pub fn has_drift(&self) -> bool {
        self.missing_memberships
            + self.extra_memberships
            + self.wrong_targets
            + self.wrong_standings
            > 0
            || !self.wrong_counts.is_empty()
            || !self.wrong_progress.is_empty()
    }
}

/// What [`repair`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repair {
    /// The `reevaluate` control-log entries appended for the owning workers.
    pub entries: Vec<i64>,
    /// Groups whose member count was reset to the true count.
    pub counts_reset: usize,
    /// Releases whose progress counts were reset to a recount of their devices' standings.
    pub progress_reset: usize,
}

/// An org's definitions as the check needs them.
struct OrgRules {
    /// Live dynamic groups: (id, site, compiled filter).
    dynamic: Vec<(Uuid, Option<String>, CompiledFilter)>,
    /// Every live group id.
    live: HashSet<Uuid>,
    releases: HashMap<Uuid, GroupRelease>,
    default: Option<GroupRelease>,
    /// Each live release's failure signal, by release id.
    failures: HashMap<Uuid, (crate::rules::FieldId, AttrValue)>,
    /// The field devices report their running version in (`firmwareVersion`).
    running: Option<crate::rules::FieldId>,
}

async fn org_rules(
    pool: &PgPool,
    catalogue: &Catalogue,
    org: &str,
) -> Result<OrgRules, StoreError> {
    let groups: Vec<(Uuid, Option<String>, Option<Value>)> = sqlx::query_as(
        "SELECT id, site_id, filter_conditions FROM device_groups WHERE org_id = $1 AND deleted_at IS NULL",
    )
    .bind(org)
    .fetch_all(pool)
    .await?;
    let mut rules = OrgRules {
        dynamic: Vec::new(),
        live: HashSet::new(),
        releases: HashMap::new(),
        default: None,
        failures: HashMap::new(),
        running: catalogue.builtin("firmwareVersion"),
    };
    for (id, site, filter) in groups {
        rules.live.insert(id);
        if let Some(filter) = filter {
            // A stored filter that no longer compiles (the catalogue changed) matches nothing, for the
            // workers as here.
            if let Ok(compiled) = compile(&filter, catalogue) {
                rules.dynamic.push((id, site, compiled));
            }
        }
    }
    for live in org_live_releases(pool, org).await? {
        if let Some(failure) = &live.failure {
            let parsed =
                crate::rules::attrs::parse_attribute(catalogue, &failure.attribute, &failure.value);
            if let Ok((field, Some(value))) = parsed {
                rules.failures.insert(live.id, (field, value));
            }
        }
        let Some(release) = live.resolution() else {
            continue;
        };
        match live.group_id {
            Some(g) => {
                rules.releases.insert(g, release);
            }
            None => rules.default = Some(release),
        }
    }
    Ok(rules)
}

/// A stored device with its memberships.
#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: String,
    attributes: Value,
    is_development: bool,
    firmware_lock: Option<String>,
    target_version: Option<String>,
    target_reason: String,
    target_group: Option<Uuid>,
    target_release: Option<Uuid>,
    target_standing: Option<String>,
    target_reached: bool,
    groups: Vec<Uuid>,
    pinned: Vec<bool>,
}

const DEVICE_QUERY: &str = "SELECT d.id, d.attributes, d.is_development, d.firmware_lock, d.target_version, \
     d.target_reason, d.target_group, d.target_release, d.target_standing, d.target_reached, \
     ARRAY(SELECT m.group_id FROM device_group_memberships m WHERE m.device_id = d.id ORDER BY m.group_id) AS groups, \
     ARRAY(SELECT m.is_pinned FROM device_group_memberships m WHERE m.device_id = d.id ORDER BY m.group_id) AS pinned \
     FROM devices d";

/// Checks one device; returns its drift.
fn check_device(
    org: &str,
    row: &DeviceRow,
    rules: &OrgRules,
    catalogue: &Catalogue,
    site_field: Option<crate::rules::FieldId>,
    now: EpochMillis,
    evaluations: &mut u64,
) -> Vec<Drift> {
    let mut drift = Vec::new();
    let doc = row.attributes.as_object().cloned().unwrap_or_default();
    let attrs = Attributes::from_stored_json(&doc, catalogue, |_, _| {});
    let site = site_field.and_then(|f| match attrs.get(f) {
        Some(AttrValue::Str(s)) => Some(&**s),
        _ => None,
    });
    let membership: HashMap<Uuid, bool> = row
        .groups
        .iter()
        .copied()
        .zip(row.pinned.iter().copied())
        .collect();
    let mut push = |kind, group: Option<Uuid>, expected: Value, stored: Value| {
        drift.push(Drift {
            org_id: org.to_string(),
            device_id: row.id.clone(),
            kind,
            group_id: group,
            expected,
            stored,
        })
    };
    for (group, group_site, filter) in &rules.dynamic {
        *evaluations += 1;
        let should =
            group_site.as_deref().is_none_or(|s| Some(s) == site) && filter.evaluate(&attrs, now);
        match (membership.get(group), should) {
            (None, true) => push(
                "missing_membership",
                Some(*group),
                json!(true),
                json!(false),
            ),
            (Some(false), false) => {
                push("extra_membership", Some(*group), json!(false), json!(true))
            }
            _ => {}
        }
    }
    for group in membership.keys() {
        if !rules.live.contains(group) {
            push("extra_membership", Some(*group), json!(false), json!(true));
        }
    }
    let facts = DeviceFacts {
        id: &row.id,
        development: row.is_development,
        lock: row.firmware_lock.as_deref(),
        current: row.target_release,
    };
    let expected = resolve(
        &facts,
        membership
            .keys()
            .filter(|g| rules.live.contains(g))
            .filter_map(|g| rules.releases.get(g)),
        rules.default.as_ref(),
    );
    let stored = Target {
        version: row.target_version.as_deref().map(Into::into),
        reason: Reason::parse(&row.target_reason).unwrap_or(Reason::None),
        group: row.target_group,
        release: row.target_release,
    };
    if expected != stored {
        push(
            "wrong_target",
            stored.group.or(expected.group),
            expected.to_json(),
            stored.to_json(),
        );
    } else if let (Some(release), Some(version)) = (stored.release, stored.version.as_deref()) {
        // Where it stands in the release, from what it reports (whether it reached the target before
        // is what only the stored row can say).
        let running = rules.running.and_then(|f| match attrs.get(f) {
            Some(AttrValue::Str(s)) => Some(s.as_str()),
            _ => None,
        });
        let failed = rules
            .failures
            .get(&release)
            .is_some_and(|(field, value)| attrs.get(*field) == Some(value));
        let (standing, reached) = standing(version, running, failed, row.target_reached);
        let expected = json!({"standing": standing.as_str(), "reached": reached});
        let stored = json!({"standing": row.target_standing, "reached": row.target_reached});
        if expected != stored {
            push("wrong_standing", row.target_group, expected, stored);
        }
    }
    drift
}

/// Runs the check.
pub async fn check(
    pool: &PgPool,
    catalogue: &Catalogue,
    options: &Options,
) -> Result<Report, StoreError> {
    let orgs: Vec<String> = match &options.org {
        Some(org) => {
            sqlx::query_scalar("SELECT id FROM orgs WHERE id = $1")
                .bind(org)
                .fetch_all(pool)
                .await?
        }
        None => {
            sqlx::query_scalar("SELECT id FROM orgs ORDER BY id")
                .fetch_all(pool)
                .await?
        }
    };
    let site_field = catalogue.lookup("siteId");
    let mut report = Report {
        orgs: orgs.len(),
        ..Report::default()
    };
    let now = chrono::Utc::now().timestamp_millis();
    let mut suspects: Vec<(String, Vec<String>)> = Vec::new();
    for org in &orgs {
        let rules = org_rules(pool, catalogue, org).await?;
        report.dynamic_groups += rules.dynamic.len();
        let mut conn = pool.acquire().await?;
        let query = format!("{DEVICE_QUERY} WHERE d.org_id = $1 ORDER BY d.id");
        let mut rows = sqlx::query_as::<_, DeviceRow>(&query)
            .bind(org)
            .fetch(&mut *conn);
        let mut drifted = Vec::new();
        while let Some(row) = rows.try_next().await? {
            report.devices_checked += 1;
            let found = check_device(
                org,
                &row,
                &rules,
                catalogue,
                site_field,
                now,
                &mut report.evaluations,
            );
            if !found.is_empty() {
                drifted.push(row.id);
            }
        }
        if !drifted.is_empty() {
            suspects.push((org.clone(), drifted));
        }
    }
    // Second pass: only drift that survives a pause is real.
    if !suspects.is_empty() {
        tokio::time::sleep(options.settle).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    for (org, ids) in suspects {
        let rules = org_rules(pool, catalogue, &org).await?;
        let rows: Vec<DeviceRow> = sqlx::query_as(&format!(
            "{DEVICE_QUERY} WHERE d.org_id = $1 AND d.id = ANY($2) ORDER BY d.id"
        ))
        .bind(&org)
        .bind(&ids)
        .fetch_all(pool)
        .await?;
        let mut persistent = Vec::new();
        let mut evaluations = 0;
        for row in &rows {
            let found = check_device(
                &org,
                row,
                &rules,
                catalogue,
                site_field,
                now,
                &mut evaluations,
            );
            if found.is_empty() {
                continue;
            }
            persistent.push(row.id.clone());
            for d in found {
                match d.kind {
                    "missing_membership" => report.missing_memberships += 1,
                    "extra_membership" => report.extra_memberships += 1,
                    "wrong_standing" => report.wrong_standings += 1,
                    _ => report.wrong_targets += 1,
                }
                if report.examples.len() < options.examples {
                    report.examples.push(d);
                }
            }
        }
        if !persistent.is_empty() {
            report.drifted.push((org, persistent));
        }
    }
    report.groups_counted = count_groups(pool, options.org.as_deref()).await?;
    report.wrong_counts = counts::drift(pool, options.org.as_deref()).await?;
    report.wrong_progress = progress::drift(pool, options.org.as_deref()).await?;
    report.evaluated_at = crate::rules::time::format_millis(now);
    Ok(report)
}

/// How many groups (deleted ones included) the count check covers.
async fn count_groups(pool: &PgPool, org: Option<&str>) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_groups WHERE $1::text IS NULL OR org_id = $1",
    )
    .bind(org)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Groups with a drifted member count listed by [`render`] (the report holds them all).
const COUNT_EXAMPLES: usize = 20;

/// A human summary.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "checked {} devices in {} org(s) against {} dynamic groups ({} evaluations) and the member \
         counts of {} group(s) at {}\n",
        report.devices_checked,
        report.orgs,
        report.dynamic_groups,
        report.evaluations,
        report.groups_counted,
        report.evaluated_at
    );
    if !report.has_drift() {
        out.push_str(
            "no drift: every dynamic membership, firmware target, standing, member count and release \
             progress count is what the rules, the memberships and the devices' reports say\n",
        );
        return out;
    }
    if !report.wrong_counts.is_empty() {
        out.push_str(&format!(
            "DRIFT in the member count of {} group(s)\n",
            report.wrong_counts.len()
        ));
        for d in report.wrong_counts.iter().take(COUNT_EXAMPLES) {
            out.push_str(&format!(
                "  {} group={} maintained={} actual={}\n",
                d.org_id, d.group_id, d.maintained, d.actual
            ));
        }
        if let Some(more) = report.wrong_counts.len().checked_sub(COUNT_EXAMPLES) {
            if more > 0 {
                out.push_str(&format!("  … and {more} more\n"));
            }
        }
    }
    if !report.wrong_progress.is_empty() {
        out.push_str(&format!(
            "DRIFT in the progress counts of {} release(s)\n",
            report.wrong_progress.len()
        ));
        for d in report.wrong_progress.iter().take(COUNT_EXAMPLES) {
            out.push_str(&format!(
                "  {} release={} stored={:?} counted={:?}\n",
                d.org_id, d.release_id, d.stored, d.counted
            ));
        }
    }
    let devices: usize = report.drifted.iter().map(|(_, d)| d.len()).sum();
    if devices == 0 {
        return out;
    }
    out.push_str(&format!(
        "DRIFT in {devices} device(s): {} missing membership(s), {} extra membership(s), {} wrong target(s)\n",
        report.missing_memberships, report.extra_memberships, report.wrong_targets
    ));
    for d in &report.examples {
        out.push_str(&format!(
            "  {} {} {} group={} expected={} stored={}\n",
            d.org_id,
            d.device_id,
            d.kind,
            d.group_id.map_or("-".to_string(), |g| g.to_string()),
            d.expected,
            d.stored
        ));
    }
    out
}

/// Devices named per repair entry (bounds the control-log payload).
const REPAIR_CHUNK: usize = 1000;

/// Repairs what `report` found. Drifted devices: asks the owning workers, with one `reevaluate`
/// control-log entry per org (and per thousand devices); each worker re-reads the devices, evaluates them
/// against every dynamic group and writes the difference through its normal batch, with log rows and
/// rollout events. Drifted member counts: resets them to the true count at once ([`counts::reset`]).
pub async fn repair(pool: &PgPool, report: &Report, actor: &str) -> Result<Repair, StoreError> {
    let groups: Vec<Uuid> = report.wrong_counts.iter().map(|d| d.group_id).collect();
    counts::reset(pool, &groups).await?;
    let releases: Vec<Uuid> = report.wrong_progress.iter().map(|d| d.release_id).collect();
    progress::reset(pool, &releases).await?;
    let mut ids = Vec::new();
    for (org, devices) in &report.drifted {
        for chunk in devices.chunks(REPAIR_CHUNK) {
            let entry = crate::store::control::ControlEntry::Reevaluate {
                org_id: org.clone(),
                device_ids: chunk.to_vec(),
                actor: actor.to_string(),
            };
            let mut tx = pool.begin().await?;
            ids.push(crate::store::control::append(&mut tx, org, &entry).await?);
            tx.commit().await?;
        }
    }
    Ok(Repair {
        entries: ids,
        counts_reset: groups.len(),
        progress_reset: releases.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> Report {
        Report {
            orgs: 1,
            devices_checked: 3,
            dynamic_groups: 1,
            evaluations: 3,
            groups_counted: 2,
            evaluated_at: "2026-01-01T00:00:00.000Z".into(),
            ..Report::default()
        }
    }

    #[test]
    fn a_clean_report_says_counts_were_checked() {
        let report = clean();
        assert!(!report.has_drift());
        let text = render(&report);
        assert!(text.contains("member counts of 2 group(s)"), "{text}");
        assert!(text.contains("no drift"), "{text}");
    }

    #[test]
    fn a_drifted_member_count_is_drift_and_is_listed() {
        let group = Uuid::from_u128(7);
        let mut report = clean();
        report.wrong_counts.push(CountDrift {
            org_id: "acme".into(),
            group_id: group,
            maintained: 5,
            actual: 3,
        });
        assert!(report.has_drift());
        let text = render(&report);
        assert!(
            text.contains("DRIFT in the member count of 1 group(s)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("acme group={group} maintained=5 actual=3")),
            "{text}"
        );
        // No device drifted, so no device line.
        assert!(!text.contains("device(s)"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["wrongCounts"],
            json!([{"orgId": "acme", "groupId": group, "maintained": 5, "actual": 3}])
        );
    }

    #[test]
    fn long_lists_of_drifted_counts_are_cut_in_the_summary() {
        let mut report = clean();
        for i in 0..(COUNT_EXAMPLES as u128 + 3) {
            report.wrong_counts.push(CountDrift {
                org_id: "acme".into(),
                group_id: Uuid::from_u128(i),
                maintained: 1,
                actual: 0,
            });
        }
        let text = render(&report);
        assert_eq!(
            text.matches(" maintained=").count(),
            COUNT_EXAMPLES,
            "{text}"
        );
        assert!(text.contains("… and 3 more"), "{text}");
    }
}
