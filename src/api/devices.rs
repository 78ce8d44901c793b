//! Devices: import (registration through the input topic), the device view ("why is this device (not) in
//! this group?"), firmware locks and the development flag.

use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use chrono::{DateTime, Utc};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{Detail, ErrorBody, Json, Path};
use super::members::{Accepted, MAX_BATCH};
use super::{ApiError, ApiState, PRODUCE_TIMEOUT};
use crate::firmware::{stage_bucket, DeviceFacts, Version};
use crate::rules::{compile, AttrValue, Attributes};
use crate::store::api as queries;
use crate::store::control::LockChange;
use crate::store::firmware::{self, LiveRelease};
use crate::store::members;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/import", post(import))
        .route("/{id}", get(view))
        .route("/{id}/firmware-lock", put(lock).delete(unlock))
        .route("/{id}/development", put(development))
}

/// Device ids to register in an org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportDevices {
    /// Required with a system key.
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    #[serde(alias = "device_ids")]
    #[schema(max_items = 10000)]
    pub device_ids: Vec<String>,
}

/// What an import did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    /// Registrations published to the input topic; the owning workers create the devices (usually within
    /// a second), after which they can join static groups.
    pub registered: Vec<String>,
    /// Already devices of this org (nothing to do).
    pub existing: Vec<String>,
    /// Ids taken by a device of another org (device ids are unique across the deployment).
    pub unavailable: Vec<String>,
}

/// Import devices into an org so they can join static groups before they first report.
#[utoipa::path(post, path = "/api/v1/devices/import", tag = "devices", request_body = ImportDevices,
    responses((status = 202, body = ImportResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn import(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<ImportDevices>,
) -> Result<(StatusCode, Json<ImportResult>), ApiError> {
    let org_id = caller.org_for(body.org_id.as_deref())?;
    if body.device_ids.is_empty() || body.device_ids.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "deviceIds must hold 1 to {MAX_BATCH} ids, got {}",
            body.device_ids.len()
        )));
    }
    // Lazily (`with_details` builds no more problems than it lists), and in a block: the iterator is not
    // held across an await.
    {
        let mut problems = body
            .device_ids
            .iter()
            .enumerate()
            .filter(|(_, id)| id.is_empty() || id.len() > 256 || id.chars().any(char::is_control))
            .map(|(i, _)| {
                Detail::at(
                    format!("deviceIds[{i}]"),
                    "device ids must be 1 to 256 bytes without control characters",
                )
            })
            .peekable();
        if problems.peek().is_some() {
            return Err(ApiError::bad_request("Invalid device ids").with_details(problems));
        }
    }
    if !queries::org_exists(&state.pool, &org_id).await? {
        return Err(ApiError::not_found("Org not found"));
    }
    let Some(producer) = &state.producer else {
        return Err(ApiError::unavailable(
            "Imports need Kafka (kafka.brokers is not configured)",
        ));
    };
    let mut ids = body.device_ids;
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let stored = queries::device_orgs(&state.pool, &ids).await?;
    let owner: std::collections::HashMap<&str, &str> = stored
        .iter()
        .map(|(id, org)| (id.as_str(), org.as_str()))
        .collect();
    let mut result = ImportResult {
        registered: Vec::new(),
        existing: Vec::new(),
        unavailable: Vec::new(),
    };
    let mut deliveries = Vec::new();
    for id in &ids {
        match owner.get(id.as_str()) {
            Some(org) if *org == org_id => result.existing.push(id.clone()),
            Some(_) => result.unavailable.push(id.clone()),
            None => {
                let payload = crate::event::registration_event(&org_id, id);
                let (producer, topic, key) =
                    (producer.clone(), state.input_topic.clone(), id.clone());
                deliveries.push(async move {
                    let record = FutureRecord::to(&topic)
                        .key(key.as_bytes())
                        .payload(&payload);
                    producer.send(record, PRODUCE_TIMEOUT).await
                });
                result.registered.push(id.clone());
            }
        }
    }
    let outcomes = tokio::time::timeout(
        PRODUCE_TIMEOUT + Duration::from_secs(1),
        futures_util::future::join_all(deliveries),
    )
    .await
    .map_err(|_| ApiError::unavailable("Kafka did not acknowledge the registrations in time"))?;
    if let Some(Err((e, _))) = outcomes.into_iter().find(Result::is_err) {
        tracing::warn!(error = %e, "registration not delivered");
        return Err(ApiError::unavailable(
            "Kafka refused the registrations; retry (registrations are idempotent)",
        ));
    }
    Ok((StatusCode::ACCEPTED, Json(result)))
}

/// A device's membership.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceGroupView {
    pub group_id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub is_pinned: bool,
    pub added_by: String,
    pub added_at: DateTime<Utc>,
}

/// Why a device is or is not in a dynamic group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupExplanation {
    pub group_id: Uuid,
    pub name: String,
    /// Whether the filter (and site) match now.
    pub matches: bool,
    /// Whether the device is a member (a pinned device can be a member without matching; a worker may not
    /// have applied the latest change yet).
    pub is_member: bool,
    /// Set when the group is scoped to a site the device is not in.
    pub site_mismatch: Option<String>,
    /// Every condition with its result and why.
    #[schema(value_type = Object)]
    pub explanation: Value,
}

/// The resolved firmware target.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareView {
    /// The version the device should run (`null`: none).
    pub target_version: Option<String>,
    /// `development`, `locked`, `group`, `default` or `none`.
    pub reason: String,
    /// The group whose release decided it (reason `group`).
    pub group_id: Option<Uuid>,
    /// The release that decided it (reasons `group` and `default`).
    pub release_id: Option<Uuid>,
    /// Where the device stands in that release: `previous` (not yet reported running its target),
    /// `running`, `failed` (reports the release's failure signal) or `reverted` (reported the target, then
    /// another version).
    pub standing: Option<String>,
    /// Rollout-target events emitted for the device so far.
    pub target_sequence: i64,
    pub firmware_lock: Option<String>,
    pub is_development: bool,
    /// Every live release that can target the device — those of its groups, and the org's default — with
    /// whether its current stage selects the device, and why.
    pub releases: Vec<ReleaseSelection>,
}

/// A live release that can target a device, and whether its stage selects it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSelection {
    pub release_id: Uuid,
    /// `null` for the org's default.
    pub group_id: Option<Uuid>,
    pub version: String,
    /// The release's current stage (0 is the first) and the share of its target it selects, in percent.
    pub stage: i32,
    pub percentage: f64,
    /// Where the device falls in the release, in percent: a stage selects the devices below its share.
    pub position: f64,
    pub selected: bool,
    /// Whether this release decided the device's target.
    pub deciding: bool,
    pub why: String,
}

/// Each of `releases` that can target a device of `groups` (its memberships), and whether it selects it.
fn release_selections(
    device: &str,
    groups: &[Uuid],
    target: (&str, Option<Uuid>),
    current: Option<Uuid>,
    releases: Vec<LiveRelease>,
) -> Vec<ReleaseSelection> {
    let facts = DeviceFacts {
        id: device,
        current,
        ..DeviceFacts::default()
    };
    let mut out: Vec<ReleaseSelection> = releases
        .into_iter()
        .filter(|r| r.group_id.is_none_or(|g| groups.contains(&g)))
        .map(|r| {
            let bucket = stage_bucket(r.group_id.unwrap_or(Uuid::nil()), &r.version, device);
            let selected = r.resolution().is_some_and(|g| g.selects(&facts));
            let percentage = f64::from(r.share) / 100.0;
            let position = f64::from(bucket) / 100.0;
            let why = if r.state == "paused" {
                if selected {
                    "selected: the release is paused, and keeps the devices it already targets".to_string()
                } else {
                    "not selected: the release is paused, and selects no further device".to_string()
                }
            } else if r.state == "rolled_back" {
                "not selected: the release was rolled back; it resolves as if this release did not exist"
                    .to_string()
            } else if percentage >= 100.0 {
                "the release's stage selects every device of its target".to_string()
            } else if selected {
                format!("selected: the device's position, {position}%, is below the stage's {percentage}%")
            } else {
                format!(
                    "not yet selected: the device's position, {position}%, is not below the stage's \
                     {percentage}%; it resolves as if this release did not exist"
                )
            };
            let deciding = match target {
                ("group", Some(g)) => r.group_id == Some(g),
                ("default", _) => r.group_id.is_none(),
                _ => false,
            };
            ReleaseSelection {
                release_id: r.id,
                group_id: r.group_id,
                version: r.version,
                stage: r.stage,
                percentage,
                position,
                selected,
                deciding,
                why,
            }
        })
        .collect();
    out.sort_by_key(|r| (r.group_id.is_none(), r.group_id));
    out
}

/// Everything about a device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub id: String,
    pub org_id: String,
    #[schema(value_type = Object)]
    pub attributes: Value,
    /// The highest event sequence applied.
    pub sequence: i64,
    /// The input partition whose worker owns the device.
    pub partition: i32,
    pub groups: Vec<DeviceGroupView>,
    pub firmware: FirmwareView,
    /// Every dynamic group of the org, evaluated now with the workers' evaluator.
    pub dynamic_groups: Vec<GroupExplanation>,
    pub evaluated_at: String,
    pub updated_at: DateTime<Utc>,
}

async fn visible_device(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<queries::DeviceRecord, ApiError> {
    match queries::get_device(&state.pool, id).await? {
        Some(device) if caller.sees(&device.org_id) => Ok(device),
        _ => Err(ApiError::not_found("Device not found")),
    }
}

/// A device: attributes, groups, resolved firmware with its reason, and why it is (not) in each dynamic
/// group.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = ErrorBody)))]
pub async fn view(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let device = visible_device(&state, &caller, &id).await?;
    let memberships = queries::device_memberships(&state.pool, &id).await?;
    let groups = queries::dynamic_groups(&state.pool, &device.org_id).await?;
    let member_of: Vec<Uuid> = memberships.iter().map(|m| m.group_id).collect();
    let releases = firmware::org_live_releases(&state.pool, &device.org_id)
        .await
        .map_err(crate::store::StoreError::from)?;
    let releases = release_selections(
        &device.id,
        &member_of,
        (&device.target_reason, device.target_group),
        device.target_release,
        releases,
    );
    let catalogue = &state.catalogue;
    let doc = device.attributes.as_object().cloned().unwrap_or_default();
    let attrs = Attributes::from_stored_json(&doc, catalogue, |_, _| {});
    let now = chrono::Utc::now().timestamp_millis();
    let site = catalogue.lookup("siteId").and_then(|f| match attrs.get(f) {
        Some(AttrValue::Str(s)) => Some(s.to_string()),
        _ => None,
    });
    let mut dynamic_groups = Vec::with_capacity(groups.len());
    for (group_id, name, group_site, filter) in groups {
        // A stored filter always compiled when saved; one that no longer does (the catalogue changed) is
        // shown as not matching, as the workers treat it.
        let Ok(compiled) = compile(&filter, catalogue) else {
            continue;
        };
        let explanation = compiled.explain(&attrs, now, catalogue);
        let site_mismatch = group_site
            .filter(|s| site.as_deref() != Some(s.as_str()))
            .map(|s| format!("the group holds only devices of site {s:?}"));
        dynamic_groups.push(GroupExplanation {
            group_id,
            name,
            matches: explanation.matches && site_mismatch.is_none(),
            is_member: memberships.iter().any(|m| m.group_id == group_id),
            site_mismatch,
            explanation: serde_json::to_value(&explanation.root).unwrap_or(Value::Null),
        });
    }
    Ok(Json(DeviceView {
        id: device.id,
        org_id: device.org_id,
        attributes: device.attributes,
        sequence: device.sequence,
        partition: device.partition,
        groups: memberships
            .into_iter()
            .map(|m| DeviceGroupView {
                group_id: m.group_id,
                name: m.name,
                kind: m.kind,
                is_pinned: m.is_pinned,
                added_by: m.added_by,
                added_at: m.added_at,
            })
            .collect(),
        firmware: FirmwareView {
            target_version: device.target_version,
            reason: device.target_reason,
            group_id: device.target_group,
            release_id: device.target_release,
            standing: device.target_standing,
            target_sequence: device.target_sequence,
            firmware_lock: device.firmware_lock,
            is_development: device.is_development,
            releases,
        },
        dynamic_groups,
        evaluated_at: crate::rules::time::format_millis(now),
        updated_at: device.updated_at,
    }))
}

/// The version to lock a device to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockBody {
    pub version: String,
}

/// The development flag.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevelopmentBody {
    /// A development device never receives automatic updates.
    pub enabled: bool,
}

async fn settings(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    development: Option<bool>,
    lock: LockChange,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let device = visible_device(state, caller, id).await?;
    let control_id = members::set_device_settings(
        &state.pool,
        &device.org_id,
        id,
        development,
        lock,
        &caller.actor(),
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "accepted",
            control_id,
        }),
    ))
}

/// Lock a device to a firmware version: it keeps it whatever is released (unless it is a development
/// device). The owning worker applies it; a changed target emits a rollout-target event.
#[utoipa::path(put, path = "/api/v1/devices/{id}/firmware-lock", tag = "devices", params(("id" = String, Path)),
    request_body = LockBody,
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn lock(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<LockBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let version = body.version.trim().to_string();
    Version::parse(&version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    settings(&state, &caller, &id, None, LockChange::Set(version)).await
}

/// Unlock a device.
#[utoipa::path(delete, path = "/api/v1/devices/{id}/firmware-lock", tag = "devices", params(("id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 404, body = ErrorBody)))]
pub async fn unlock(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    settings(&state, &caller, &id, None, LockChange::Clear).await
}

/// Set or clear the development flag.
#[utoipa::path(put, path = "/api/v1/devices/{id}/development", tag = "devices", params(("id" = String, Path)),
    request_body = DevelopmentBody,
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn development(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<DevelopmentBody>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    settings(
        &state,
        &caller,
        &id,
        Some(body.enabled),
        LockChange::Unchanged,
    )
    .await
}
