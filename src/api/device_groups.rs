//! The device-groups API at `/api/v1/device-groups`, in its own words (snake_case): list (`org_id`,
//! `limit`, `offset`), create, get, update (`PUT`, and `PATCH`), delete, members (`limit`, `offset`), one
//! device added or removed by path, and batches (`device_ids`, `added_by`). Breeze's camelCase request
//! fields are accepted here too, as its documents name this path as another name for `/api/v1/groups`;
//! answers follow the device-groups API. Previews, pins and the membership log are served here as under
//! `/api/v1/groups`.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::group_changes::{self, or_dry_run, GroupDryRun};

or_dry_run!(
    /// A device group, or (`"dry_run": true`) what changing it would do.
    DeviceGroupOrDryRun,
    DeviceGroup
);
or_dry_run!(
    /// A batch's result, or (`"dry_run": true`) what the batch would do.
    BatchResultOrDryRun,
    BatchResult
);
use super::groups::{self, group_id, visible, CreateGroup, ListParams, UpdateGroup};
use super::members::{self, MemberBatch, PageParams};
use super::retarget_cap::DryRunParams;
use super::{page, ApiError, ApiState};
use crate::store::api::GroupRow;
use crate::store::members::{Partial, StaticChange};

/// `/api/v1/device-groups` (previews, pins and the log are merged in by [`super::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list).post(create))
        .route(
            "/{id}",
            get(get_one).put(update).patch(update).delete(delete),
        )
        .route(
            "/{id}/devices",
            get(list_devices).post(add_batch).delete(remove_batch),
        )
        .route(
            "/{id}/devices/{device_id}",
            post(add_one).delete(remove_one),
        )
        .route(
            "/{id}/devices/{device_id}/pin",
            post(members::pin).delete(members::unpin),
        )
}

/// A device group.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceGroup {
    pub id: Uuid,
    pub org_id: String,
    pub name: String,
    pub description: String,
    /// `static` or `dynamic`.
    pub group_type: String,
    pub tags: Vec<String>,
    pub device_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub site_id: Option<String>,
    pub parent_id: Option<Uuid>,
    /// The filter of a dynamic group.
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
    pub filter_fields_used: Vec<String>,
    /// Increases with every change of the filter, site or type.
    pub version: i64,
}

impl From<GroupRow> for DeviceGroup {
    fn from(g: GroupRow) -> Self {
        Self {
            id: g.id,
            org_id: g.org_id,
            name: g.name,
            description: g.description,
            group_type: g.kind,
            tags: g.tags,
            device_count: g.device_count,
            created_at: g.created_at,
            updated_at: g.updated_at,
            site_id: g.site_id,
            parent_id: g.parent_id,
            filter_conditions: g.filter_conditions,
            filter_fields_used: g.filter_fields_used,
            version: g.version,
        }
    }
}

/// A page of device groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceGroupList {
    pub groups: Vec<DeviceGroup>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// The listing's query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeviceGroupParams {
    /// The organization: required with a system key, and an org key's own if given.
    #[serde(alias = "orgId")]
    pub org_id: Option<String>,
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Records to skip, default 0.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// `static` or `dynamic`.
    #[serde(alias = "type")]
    #[param(value_type = Option<super::groups::GroupType>)]
    pub group_type: Option<String>,
    #[serde(alias = "siteId")]
    pub site_id: Option<String>,
    #[serde(alias = "parentId")]
    pub parent_id: Option<Uuid>,
    /// Comma-separated; groups having all of them.
    pub tags: Option<String>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
}

/// List device groups.
#[utoipa::path(get, path = "/api/v1/device-groups", tag = "device-groups", params(DeviceGroupParams),
    responses((status = 200, body = DeviceGroupList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<DeviceGroupParams>,
) -> Result<Json<DeviceGroupList>, ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 100, 1000)?;
    let query = ListParams {
        limit: Some(limit),
        offset: Some(offset),
        kind: params.group_type,
        site_id: params.site_id,
        parent_id: params.parent_id,
        tags: params.tags,
        search: params.search,
        org_id: params.org_id,
    };
    let (rows, total) = groups::find(&state, &caller, query, limit, offset).await?;
    Ok(Json(DeviceGroupList {
        groups: rows.into_iter().map(DeviceGroup::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// Create a device group (`org_id`, `name`, `description`, `group_type`, `tags`; a dynamic group with
/// `filter_conditions`).
#[utoipa::path(post, path = "/api/v1/device-groups", tag = "device-groups", request_body = CreateGroup,
    responses((status = 201, body = DeviceGroup), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let row = groups::create_group(&state, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(DeviceGroup::from(row))))
}

/// Retrieve a device group.
#[utoipa::path(get, path = "/api/v1/device-groups/{group_id}", tag = "device-groups",
    params(("group_id" = String, Path)),
    responses((status = 200, body = DeviceGroup), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceGroup>, ApiError> {
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}

/// Update a device group's metadata (name, description, tags) — and, as with PATCH, any other field
/// given: fields left out keep their values.
#[utoipa::path(put, path = "/api/v1/device-groups/{group_id}", tag = "device-groups",
    params(("group_id" = String, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    request_body = UpdateGroup,
    responses((status = 200, body = DeviceGroupOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn update(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<UpdateGroup>,
) -> Result<Response, ApiError> {
    let id = group_id(&id)?;
    let changed = group_changes::update(&state, &caller, id, body, &headers).await?;
    Ok(changed.answer(DeviceGroup::from))
}

/// Delete a device group: its devices stay registered and only leave this group. `dry_run=true` answers
/// the deletion's firmware impact instead; one over the org's retarget cap needs `Cohort-Confirm` (as on
/// `DELETE /api/v1/groups/{id}`).
#[utoipa::path(delete, path = "/api/v1/device-groups/{group_id}", tag = "device-groups",
    params(("group_id" = String, Path), DryRunParams,
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the deletion retargets more devices than the org's retarget cap")),
    responses((status = 204), (status = 200, body = GroupDryRun), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn delete(
    state: State<ApiState>,
    caller: Extension<Caller>,
    id: Path<String>,
    params: Query<DryRunParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    group_changes::delete(state, caller, id, params, headers).await
}

super::members::member_record!(
    /// A member of a device group.
    DeviceGroupMember,
    "snake_case"
);

/// A page of a group's members.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceGroupMembers {
    pub group_id: Uuid,
    pub devices: Vec<DeviceGroupMember>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    /// The `after` of the next page (the last device id) when this page is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// List the devices that are members of the group.
#[utoipa::path(get, path = "/api/v1/device-groups/{group_id}/devices", tag = "device-groups",
    params(("group_id" = String, Path), PageParams),
    responses((status = 200, body = DeviceGroupMembers), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_devices(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<DeviceGroupMembers>, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let (rows, total, limit, offset, next_after) =
        members::member_page(&state, &group, params).await?;
    Ok(Json(DeviceGroupMembers {
        group_id: group.id,
        devices: rows.into_iter().map(DeviceGroupMember::from).collect(),
        total,
        limit,
        offset,
        next_after,
    }))
}

/// What a batch did: the devices added (or removed) and those skipped (already members; for a removal,
/// not members).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    pub group_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<Vec<String>>,
    pub skipped: Vec<String>,
}

impl BatchResult {
    fn new(group: &GroupRow, change: StaticChange, removal: bool) -> Self {
        let done = Some(change.changed);
        Self {
            group_id: group.id,
            added: if removal { None } else { done.clone() },
            removed: if removal { done } else { None },
            skipped: change.skipped,
        }
    }
}

/// Applies a batch to the group named in the path and answers the devices added (removed) and skipped.
async fn batch(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    (batch, headers): (MemberBatch, &HeaderMap),
    removal: bool,
) -> Result<Response, ApiError> {
    let (group, change) = members::apply_batch(state, caller, id, batch, removal, headers).await?;
    Ok(change.answer(|change| BatchResult::new(&group, change, removal)))
}

/// Add devices to a static group in one request (`device_ids`, `added_by`). A device unknown in the org
/// refuses the batch (400, each listed).
#[utoipa::path(post, path = "/api/v1/device-groups/{group_id}/devices", tag = "device-groups",
    params(("group_id" = String, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")), request_body = MemberBatch,
    responses((status = 200, body = BatchResultOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MemberBatch>,
) -> Result<Response, ApiError> {
    batch(&state, &caller, &id, (body, &headers), false).await
}

/// Remove devices from a static group in one request (`device_ids`).
#[utoipa::path(delete, path = "/api/v1/device-groups/{group_id}/devices", tag = "device-groups",
    params(("group_id" = String, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")), request_body = MemberBatch,
    responses((status = 200, body = BatchResultOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn remove_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MemberBatch>,
) -> Result<Response, ApiError> {
    batch(&state, &caller, &id, (body, &headers), true).await
}

/// Add a single device to a static group (201 when added, 200 when it already was a member, 404 for a
/// device unknown in the org; `dry_run=true`: only its firmware impact).
#[utoipa::path(post, path = "/api/v1/device-groups/{group_id}/devices/{device_id}", tag = "device-groups",
    params(("group_id" = String, Path), ("device_id" = String, Path), DryRunParams, ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    responses((status = 201, body = BatchResult), (status = 200, body = BatchResultOrDryRun), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(String, String)>,
    Query(params): Query<DryRunParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    members::check_device_id(&device_id).map_err(ApiError::bad_request)?;
    let ids = [device_id];
    let how = (params.dry_run, &headers);
    let actor = caller.actor();
    let batched =
        group_changes::gated_change(&state, &group, &ids, &actor, Partial::Allowed, false, how)
            .await?;
    let change = &batched.change;
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
    if batched.dry_run.is_some() {
        return Ok(batched.answer(|_| ()));
    }
    Ok((
        status,
        Json(BatchResult::new(&group, batched.change, false)),
    )
        .into_response())
}

/// Remove a single device from a static group (404 when it is not a member; `dry_run=true`: only its
/// firmware impact).
#[utoipa::path(delete, path = "/api/v1/device-groups/{group_id}/devices/{device_id}", tag = "device-groups",
    params(("group_id" = String, Path), ("device_id" = String, Path), DryRunParams, ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    responses((status = 204), (status = 200, body = GroupDryRun), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(String, String)>,
    Query(params): Query<DryRunParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let how = (params.dry_run, &headers);
    let batched = members::remove_member(&state, &caller, &group, &device_id, how).await?;
    if batched.dry_run.is_some() {
        return Ok(batched.answer(|_| ()));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
