//! Members of a group: the members page, static membership (one device or a batch, by device id or by the
//! identifiers cellular platforms use), and pins on dynamic groups.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::groups::visible_group;
use super::{next_cursor, page, ApiError, ApiState};
use crate::store::api as queries;
use crate::store::groups;
use crate::store::members::{self, IdentifierKind, StaticChange};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/{id}/members", get(list).post(add_one))
        .route("/{id}/members/batch", post(add_batch))
        .route("/{id}/members/batch-remove", post(remove_batch))
        .route(
            "/{id}/members/{device_id}",
            axum::routing::delete(remove_one),
        )
        .route("/{id}/members/{device_id}/pin", post(pin).delete(unpin))
}

/// Most devices one batch may name.
pub const MAX_BATCH: usize = 10_000;

/// A member of a group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub device_id: String,
    pub is_pinned: bool,
    pub added_at: DateTime<Utc>,
    /// `manual`, `dynamic_rule` or `policy`.
    pub added_by: String,
    /// The device's key attributes (hostname, displayName, status, osType, platform, firmwareVersion,
    /// siteId, lastSeenAt), where it has them.
    #[schema(value_type = Object)]
    pub attributes: Value,
}

/// A page of members.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberList {
    pub members: Vec<MemberView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    /// The `after` of the next page (the last member's device id) when this page is full; absent at the
    /// end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Pagination.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1–1000, default 100.
    pub limit: Option<i64>,
    /// Members to skip (after `after`); prefer `after` for deep pages.
    pub offset: Option<i64>,
    /// Only members whose device id sorts after this one: a page's `nextAfter`.
    pub after: Option<String>,
}

/// List a group's members, by device id.
#[utoipa::path(get, path = "/api/v1/groups/{id}/members", tag = "members",
    params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = MemberList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Query(params): Query<PageParams>,
) -> Result<Json<MemberList>, ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 100, 1000)?;
    visible_group(&state, &caller, id).await?;
    let (rows, total) =
        queries::list_members(&state.pool, id, params.after.as_deref(), limit, offset).await?;
    let next_after = next_cursor(&rows, limit, |last| last.device_id.clone());
    Ok(Json(MemberList {
        members: rows
            .into_iter()
            .map(|m| MemberView {
                device_id: m.device_id,
                is_pinned: m.is_pinned,
                added_at: m.added_at,
                added_by: m.added_by,
                attributes: m.attributes,
            })
            .collect(),
        total,
        limit,
        offset,
        next_after,
    }))
}

/// One device to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    #[serde(alias = "device_id")]
    pub device_id: String,
    /// Who is adding it (recorded in the membership log); defaults to the API key.
    #[serde(alias = "added_by")]
    pub added_by: Option<String>,
}

/// A device named by an identifier its cellular platform uses.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentifier {
    /// `imei`, `iccid`, `esn`, `mdn`, `meid` or `msisdn`.
    #[schema(value_type = String)]
    pub kind: IdentifierKind,
    pub identifier: String,
}

/// Devices to add or remove, by id and/or by cellular identifier.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBatch {
    #[serde(default, alias = "deviceIds")]
    pub device_ids: Vec<String>,
    #[serde(default)]
    pub identifiers: Vec<DeviceIdentifier>,
    /// Who is making the change (recorded in the membership log); defaults to the API key.
    #[serde(alias = "addedBy")]
    pub added_by: Option<String>,
}

/// What a batch did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchResult {
    /// Devices added (or, for a removal, removed).
    pub added: Vec<String>,
    /// Devices already members (for a removal: not members).
    pub skipped: Vec<String>,
    /// Device ids unknown in the org.
    pub not_found: Vec<String>,
    /// Identifiers no device of the org reports.
    pub identifiers_not_found: Vec<DeviceIdentifier>,
    /// Devices refused because they are not in the group's site (site-scoped groups only hold devices of
    /// their site).
    pub wrong_site: Vec<String>,
    /// `{"added": n, "skipped": n, "notFound": n}`.
    #[schema(value_type = Object)]
    pub counts: Value,
}

fn actor(caller: &Caller, given: Option<String>) -> Result<String, ApiError> {
    match given {
        None => Ok(caller.actor()),
        Some(a) if !a.trim().is_empty() && a.chars().count() <= 255 => {
            Ok(format!("{} ({})", a.trim(), caller.actor()))
        }
        Some(_) => Err(ApiError::bad_request(
            "added_by must be 1 to 255 characters",
        )),
    }
}

fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        Err(format!(
            "device ids must be 1 to 256 bytes, got {} bytes",
            id.len()
        ))
    } else {
        Ok(())
    }
}

/// Validates the batch and resolves identifiers; returns the device ids (input order, identifiers after
/// ids) and the identifiers that matched no device.
async fn resolve_batch(
    state: &ApiState,
    org_id: &str,
    batch: MemberBatch,
) -> Result<(Vec<String>, Vec<DeviceIdentifier>), ApiError> {
    let n = batch.device_ids.len() + batch.identifiers.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "Name at least one device in device_ids or identifiers",
        ));
    }
    if n > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "At most {MAX_BATCH} devices per batch, got {n}"
        )));
    }
    let mut problems = Vec::new();
    for (i, id) in batch.device_ids.iter().enumerate() {
        if let Err(message) = check_device_id(id) {
            problems.push(json!({"path": format!("device_ids[{i}]"), "message": message}));
        }
    }
    for (i, ident) in batch.identifiers.iter().enumerate() {
        if let Err(message) = ident.kind.validate(&ident.identifier) {
            problems.push(json!({"path": format!("identifiers[{i}]"), "message": message}));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::bad_request("Invalid devices in the batch").with_details(problems));
    }
    let mut ids = batch.device_ids;
    let mut unknown = Vec::new();
    if !batch.identifiers.is_empty() {
        let pairs: Vec<(IdentifierKind, String)> = batch
            .identifiers
            .iter()
            .map(|i| (i.kind, i.identifier.clone()))
            .collect();
        let resolved = members::resolve_identifiers(&state.pool, org_id, &pairs).await?;
        for (ident, device) in batch.identifiers.into_iter().zip(resolved) {
            match device {
                Some(id) => ids.push(id),
                None => unknown.push(ident),
            }
        }
    }
    Ok((ids, unknown))
}

fn batch_result(change: StaticChange, unknown: Vec<DeviceIdentifier>) -> BatchResult {
    let counts = json!({
        "added": change.changed.len(),
        "skipped": change.skipped.len(),
        "notFound": change.not_found.len() + unknown.len(),
        "wrongSite": change.wrong_site.len(),
    });
    BatchResult {
        added: change.changed,
        skipped: change.skipped,
        not_found: change.not_found,
        identifiers_not_found: unknown,
        wrong_site: change.wrong_site,
        counts,
    }
}

/// Add devices to a static group. Every addition is logged with reason `manual`; workers then re-resolve
/// the devices' firmware.
#[utoipa::path(post, path = "/api/v1/groups/{id}/members/batch", tag = "members", params(("id" = Uuid, Path)),
    request_body = MemberBatch,
    responses((status = 200, body = BatchResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(batch): Json<MemberBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    let group = visible_group(&state, &caller, id).await?;
    let actor = actor(&caller, batch.added_by.clone())?;
    let (ids, unknown) = resolve_batch(&state, &group.org_id, batch).await?;
    let change = members::add_static(&state.pool, &group.org_id, id, &ids, &actor).await?;
    Ok(Json(batch_result(change, unknown)))
}

/// Remove devices from a static group (`added` lists the devices removed, `skipped` those that were not
/// members).
#[utoipa::path(post, path = "/api/v1/groups/{id}/members/batch-remove", tag = "members",
    params(("id" = Uuid, Path)), request_body = MemberBatch,
    responses((status = 200, body = BatchResult), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(batch): Json<MemberBatch>,
) -> Result<Json<BatchResult>, ApiError> {
    let group = visible_group(&state, &caller, id).await?;
    let actor = actor(&caller, batch.added_by.clone())?;
    let (ids, unknown) = resolve_batch(&state, &group.org_id, batch).await?;
    let change = members::remove_static(&state.pool, &group.org_id, id, &ids, &actor).await?;
    Ok(Json(batch_result(change, unknown)))
}

/// Add one device to a static group (201 when added, 200 when it already was a member).
#[utoipa::path(post, path = "/api/v1/groups/{id}/members", tag = "members", params(("id" = Uuid, Path)),
    request_body = AddMember,
    responses((status = 201, body = BatchResult), (status = 200, body = BatchResult), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn add_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(body): Json<AddMember>,
) -> Result<impl IntoResponse, ApiError> {
    let group = visible_group(&state, &caller, id).await?;
    let actor = actor(&caller, body.added_by)?;
    check_device_id(&body.device_id).map_err(ApiError::bad_request)?;
    let change = members::add_static(
        &state.pool,
        &group.org_id,
        id,
        std::slice::from_ref(&body.device_id),
        &actor,
    )
    .await?;
    if !change.not_found.is_empty() {
        return Err(ApiError::not_found("Device not found"));
    }
    if !change.wrong_site.is_empty() {
        return Err(ApiError::bad_request(
            "The device is not in the group's site",
        ));
    }
    let status = if change.changed.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(batch_result(change, Vec::new()))))
}

/// Remove one device from a static group.
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{device_id}", tag = "members",
    params(("id" = Uuid, Path), ("device_id" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(Uuid, String)>,
) -> Result<StatusCode, ApiError> {
    let group = visible_group(&state, &caller, id).await?;
    let change = members::remove_static(
        &state.pool,
        &group.org_id,
        id,
        std::slice::from_ref(&device_id),
        &caller.actor(),
    )
    .await?;
    if change.changed.is_empty() {
        return Err(ApiError::not_found(
            "Device not found, or not a member of this group",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A pin or unpin accepted: the owning worker applies it in order with the device's events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub status: &'static str,
    /// The control-log entry carrying the change.
    pub control_id: i64,
}

async fn set_pin(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
    device_id: &str,
    pin: bool,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let group = visible_group(state, caller, id).await?;
    if group.kind != "dynamic" {
        return Err(ApiError::bad_request(
            "Pins apply to dynamic groups only (static membership is managed directly)",
        ));
    }
    let found = queries::device_orgs(&state.pool, &[device_id.to_string()]).await?;
    if !found.iter().any(|(_, org)| *org == group.org_id) {
        return Err(ApiError::not_found("Device not found"));
    }
    let control_id = groups::set_pin(&state.pool, id, device_id, pin, &caller.actor()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "accepted",
            control_id,
        }),
    ))
}

/// Pin a device in a dynamic group: it stays (or is added) even when it does not match.
#[utoipa::path(post, path = "/api/v1/groups/{id}/members/{device_id}/pin", tag = "members",
    params(("id" = Uuid, Path), ("device_id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn pin(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(Uuid, String)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    set_pin(&state, &caller, id, &device_id, true).await
}

/// Unpin a device: if it no longer matches, it leaves at once (reason `unpinned`).
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{device_id}/pin", tag = "members",
    params(("id" = Uuid, Path), ("device_id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unpin(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(Uuid, String)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    set_pin(&state, &caller, id, &device_id, false).await
}
