//! Groups: list, create, get, update (PATCH and PUT), delete, previews, and the membership log.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::{next_cursor, page, ApiError, ApiState};
use crate::rules::time::format_millis;
use crate::rules::{compile, Attributes};
use crate::store::api::{self as queries, GroupQuery, GroupRow};
use crate::store::groups::{self, GroupError, GroupPatch, NewGroup};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/preview", post(preview_filter))
        .route("/{id}", get(get_one).patch(patch).put(put).delete(delete))
        .route("/{id}/preview", post(preview_group))
        .route("/{id}/membership-log", get(membership_log))
}

/// A group.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    pub id: Uuid,
    pub org_id: String,
    pub site_id: Option<String>,
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// `static` or `dynamic`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The filter of a dynamic group: `{"operator": "AND"|"OR", "conditions": [...]}`.
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
    /// The fields the filter references, derived from it.
    pub filter_fields_used: Vec<String>,
    pub parent_id: Option<Uuid>,
    /// Increases with every change of the filter or site.
    pub version: i64,
    pub device_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<GroupRow> for GroupView {
    fn from(g: GroupRow) -> Self {
        Self {
            id: g.id,
            org_id: g.org_id,
            site_id: g.site_id,
            name: g.name,
            description: g.description,
            tags: g.tags,
            kind: g.kind,
            filter_conditions: g.filter_conditions,
            filter_fields_used: g.filter_fields_used,
            parent_id: g.parent_id,
            version: g.version,
            device_count: g.device_count,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

/// A page of groups.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupList {
    pub groups: Vec<GroupView>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// Filters and pagination of the group listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1–1000, default 100.
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    /// `static` or `dynamic`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub site_id: Option<String>,
    pub parent_id: Option<Uuid>,
    /// Comma-separated; groups having all of them.
    pub tags: Option<String>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
    /// With a system key: only this org's groups.
    pub org_id: Option<String>,
}

/// A group to create. The type follows from the filter unless given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    /// Required with a system key; an org key creates in its own org.
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(alias = "site_id")]
    pub site_id: Option<String>,
    #[serde(alias = "parent_id")]
    pub parent_id: Option<Uuid>,
    /// `static` or `dynamic`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Required for a dynamic group.
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
}

/// A change to a group (PATCH: absent fields are kept; `null` clears `siteId` or `parentId`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateGroup {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    #[serde(default, alias = "site_id", deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub site_id: Option<Option<String>>,
    #[serde(default, alias = "parent_id", deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
    /// Only for dynamic groups; the type cannot change.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 4096;
const MAX_TAGS: usize = 100;
const MAX_TAG: usize = 64;
const MAX_SITE: usize = 128;

fn check_descriptive(
    name: Option<&str>,
    description: Option<&str>,
    tags: Option<&[String]>,
    site: Option<&str>,
) -> Result<(), ApiError> {
    let mut problems = Vec::new();
    if let Some(name) = name {
        if name.trim().is_empty() {
            problems.push("name must not be empty".to_string());
        } else if name.chars().count() > MAX_NAME {
            problems.push(format!("name must be at most {MAX_NAME} characters"));
        }
    }
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        problems.push(format!(
            "description must be at most {MAX_DESCRIPTION} characters"
        ));
    }
    if let Some(tags) = tags {
        if tags.len() > MAX_TAGS {
            problems.push(format!("at most {MAX_TAGS} tags"));
        }
        if tags
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > MAX_TAG)
        {
            problems.push(format!("each tag must be 1 to {MAX_TAG} characters"));
        }
    }
    if site.is_some_and(|s| s.is_empty() || s.chars().count() > MAX_SITE) {
        problems.push(format!("siteId must be 1 to {MAX_SITE} characters"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(problems.join("; "))
            .with_details(problems.into_iter().map(Value::String).collect()))
    }
}

/// A live group the caller may see (others answer 404, as if they did not exist).
pub(crate) async fn visible_group(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
) -> Result<GroupRow, ApiError> {
    match queries::get_group(&state.pool, id).await? {
        Some(group) if caller.sees(&group.org_id) => Ok(group),
        _ => Err(ApiError::not_found("Group not found")),
    }
}

/// List groups.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", params(ListParams),
    responses((status = 200, body = GroupList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Json<GroupList>, ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 100, 1000)?;
    if let Some(kind) = &params.kind {
        if kind != "static" && kind != "dynamic" {
            return Err(ApiError::bad_request(format!(
                "type must be static or dynamic, got {kind:?}"
            )));
        }
    }
    let query = GroupQuery {
        org_id: caller.org_filter(params.org_id.as_deref())?,
        kind: params.kind,
        site_id: params.site_id,
        parent_id: params.parent_id,
        tags: params
            .tags
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        search: params.search.filter(|s| !s.is_empty()),
        limit,
        offset,
    };
    let (rows, total) = queries::list_groups(&state.pool, &query).await?;
    Ok(Json(GroupList {
        groups: rows.into_iter().map(GroupView::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// Create a group.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateGroup>,
) -> Result<impl IntoResponse, ApiError> {
    let org_id = caller.org_for(body.org_id.as_deref())?;
    check_descriptive(
        Some(&body.name),
        Some(&body.description),
        Some(&body.tags),
        body.site_id.as_deref(),
    )?;
    let dynamic = match (body.kind.as_deref(), &body.filter_conditions) {
        (None, filter) => filter.is_some(),
        (Some("dynamic"), Some(_)) => true,
        (Some("dynamic"), None) => {
            return Err(ApiError::bad_request(
                "A dynamic group needs filterConditions",
            ))
        }
        (Some("static"), None) => false,
        (Some("static"), Some(_)) => {
            return Err(ApiError::bad_request(
                "A static group has no filterConditions",
            ))
        }
        (Some(other), _) => {
            return Err(ApiError::bad_request(format!(
                "type must be static or dynamic, got {other:?}"
            )))
        }
    };
    if !queries::org_exists(&state.pool, &org_id).await? {
        return Err(ApiError::not_found("Org not found"));
    }
    let group = NewGroup {
        org_id,
        name: body.name.trim().to_string(),
        site_id: body.site_id,
        description: body.description,
        tags: body.tags,
        filter: if dynamic {
            body.filter_conditions
        } else {
            None
        },
        parent_id: body.parent_id,
    };
    let def = groups::create_group(&state.pool, &state.catalogue, &group).await?;
    let row = visible_group(&state, &caller, def.group_id).await?;
    Ok((StatusCode::CREATED, Json(GroupView::from(row))))
}

/// Get a group.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(visible_group(&state, &caller, id).await?.into()))
}

async fn update(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
    body: UpdateGroup,
) -> Result<Json<GroupView>, ApiError> {
    let group = visible_group(state, caller, id).await?;
    if body.kind.as_deref().is_some_and(|k| k != group.kind) {
        return Err(ApiError::bad_request(
            "The type of a group cannot change (create a new group)",
        ));
    }
    check_descriptive(
        body.name.as_deref(),
        body.description.as_deref(),
        body.tags.as_deref(),
        body.site_id.clone().flatten().as_deref(),
    )?;
    let patch = GroupPatch {
        name: body.name.map(|n| n.trim().to_string()),
        description: body.description,
        tags: body.tags,
        site_id: body.site_id,
        parent_id: body.parent_id,
        filter: body.filter_conditions,
    };
    groups::update_group(&state.pool, &state.catalogue, id, &patch).await?;
    Ok(Json(visible_group(state, caller, id).await?.into()))
}

/// Update some fields of a group.
#[utoipa::path(patch, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    request_body = UpdateGroup,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn patch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(body): Json<UpdateGroup>,
) -> Result<Json<GroupView>, ApiError> {
    update(&state, &caller, id, body).await
}

/// Replace a group: absent optional fields are cleared (description, tags, siteId, parentId); `name` is
/// required, and `filterConditions` for a dynamic group.
#[utoipa::path(put, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    request_body = UpdateGroup,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn put(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Json(mut body): Json<UpdateGroup>,
) -> Result<Json<GroupView>, ApiError> {
    let group = visible_group(&state, &caller, id).await?;
    if body.name.is_none() {
        return Err(ApiError::bad_request("name is required"));
    }
    if group.kind == "dynamic" && body.filter_conditions.is_none() {
        return Err(ApiError::bad_request(
            "filterConditions is required for a dynamic group",
        ));
    }
    body.description.get_or_insert_with(String::new);
    body.tags.get_or_insert_with(Vec::new);
    body.site_id.get_or_insert(None);
    body.parent_id.get_or_insert(None);
    update(&state, &caller, id, body).await
}

/// Delete a group: workers remove its memberships (each removal logged); its log is kept.
#[utoipa::path(delete, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    visible_group(&state, &caller, id).await?;
    groups::delete_group(&state.pool, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?limit=` of previews.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// Sample size, 1–100, default 10.
    pub limit: Option<i64>,
}

/// A filter not yet saved.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewFilter {
    /// Required with a system key.
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    #[serde(alias = "site_id")]
    pub site_id: Option<String>,
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Object)]
    pub filter_conditions: Value,
}

/// A matching device in a preview.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewDevice {
    pub device_id: String,
    /// The attributes the filter reads.
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

/// What a filter matches now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Devices matching.
    pub total: u64,
    /// Devices examined (the org's, or the site's).
    pub examined: u64,
    pub sample: Vec<PreviewDevice>,
    /// The instant the filter was evaluated at.
    pub evaluated_at: String,
}

/// Evaluates `filter` over the org's stored devices with the workers' evaluator.
async fn run_preview(
    state: &ApiState,
    org_id: &str,
    site: Option<&str>,
    filter: &Value,
    limit: usize,
) -> Result<Preview, ApiError> {
    let compiled = compile(filter, &state.catalogue).map_err(GroupError::Invalid)?;
    let Ok(_slot) = state.preview_slots.try_acquire() else {
        return Err(ApiError::rate_limited(1));
    };
    let fields = compiled.stored_field_names(&state.catalogue);
    let now = chrono::Utc::now().timestamp_millis();
    let catalogue = state.catalogue.clone();
    let mut preview = Preview {
        total: 0,
        examined: 0,
        sample: Vec::new(),
        evaluated_at: format_millis(now),
    };
    queries::scan_devices(&state.pool, org_id, site, &fields, |device_id, doc| {
        preview.examined += 1;
        let attrs = Attributes::from_stored_json(&doc, &catalogue, |_, _| {});
        if compiled.evaluate(&attrs, now) {
            preview.total += 1;
            if preview.sample.len() < limit {
                preview.sample.push(PreviewDevice {
                    device_id,
                    attributes: doc,
                });
            }
        }
        true
    })
    .await?;
    Ok(preview)
}

/// Preview a group: how many devices its filter matches now, and a sample.
#[utoipa::path(post, path = "/api/v1/groups/{id}/preview", tag = "groups",
    params(("id" = Uuid, Path), PreviewParams),
    responses((status = 200, body = Preview), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn preview_group(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Query(params): Query<PreviewParams>,
) -> Result<Json<Preview>, ApiError> {
    let (limit, _) = page(params.limit, None, 10, 100)?;
    let group = visible_group(&state, &caller, id).await?;
    let Some(filter) = &group.filter_conditions else {
        return Err(ApiError::bad_request(
            "A static group has no filter to preview",
        ));
    };
    let preview = run_preview(
        &state,
        &group.org_id,
        group.site_id.as_deref(),
        filter,
        limit as usize,
    )
    .await?;
    Ok(Json(preview))
}

/// Preview a filter not yet saved.
#[utoipa::path(post, path = "/api/v1/groups/preview", tag = "groups", params(PreviewParams),
    request_body = PreviewFilter,
    responses((status = 200, body = Preview), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn preview_filter(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<PreviewParams>,
    Json(body): Json<PreviewFilter>,
) -> Result<Json<Preview>, ApiError> {
    let (limit, _) = page(params.limit, None, 10, 100)?;
    let org_id = caller.org_for(body.org_id.as_deref())?;
    if !queries::org_exists(&state.pool, &org_id).await? {
        return Err(ApiError::not_found("Org not found"));
    }
    let preview = run_preview(
        &state,
        &org_id,
        body.site_id.as_deref(),
        &body.filter_conditions,
        limit as usize,
    )
    .await?;
    Ok(Json(preview))
}

/// Filters of the membership log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    #[serde(alias = "device_id")]
    pub device_id: Option<String>,
    /// `added` or `removed`.
    pub action: Option<String>,
    /// 1–500, default 50.
    pub limit: Option<i64>,
    /// Entries to skip (after `before`); prefer `before` for deep pages.
    pub offset: Option<i64>,
    /// Only entries older than the entry with this id: a page's `nextBefore`.
    pub before: Option<i64>,
}

/// One membership change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntryView {
    pub id: i64,
    pub device_id: String,
    pub hostname: Option<String>,
    pub display_name: Option<String>,
    /// `added` or `removed`.
    pub action: String,
    /// `manual`, `filter_match`, `filter_unmatch`, `pinned` or `unpinned`.
    pub reason: String,
    /// What led to it: an event (`eventId`, `partition`, `offset`), a control-log entry, a timer, or an API
    /// call.
    #[schema(value_type = Object)]
    pub cause: Value,
    pub group_version: i64,
    pub created_at: DateTime<Utc>,
}

/// A page of the membership log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    pub entries: Vec<LogEntryView>,
    pub limit: i64,
    pub offset: i64,
    /// The `before` of the next page (the last entry's id) when this page is full; absent at the log's
    /// start. Entries written meanwhile never shift a page read so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// The membership log of a group, newest first.
#[utoipa::path(get, path = "/api/v1/groups/{id}/membership-log", tag = "groups",
    params(("id" = Uuid, Path), LogParams),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn membership_log(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Query(params): Query<LogParams>,
) -> Result<Json<LogPage>, ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 50, 500)?;
    if let Some(action) = &params.action {
        if action != "added" && action != "removed" {
            return Err(ApiError::bad_request(format!(
                "action must be added or removed, got {action:?}"
            )));
        }
    }
    if let Some(before) = params.before {
        if before < 1 {
            return Err(ApiError::bad_request(format!(
                "before must be an entry id (1 or more), got {before}"
            )));
        }
    }
    visible_group(&state, &caller, id).await?;
    let filter = queries::LogFilter {
        device_id: params.device_id.as_deref(),
        action: params.action.as_deref(),
        before: params.before,
    };
    let rows = queries::membership_log(&state.pool, id, filter, limit, offset).await?;
    let next_before = next_cursor(&rows, limit, |last| last.id);
    Ok(Json(LogPage {
        entries: rows
            .into_iter()
            .map(|r| LogEntryView {
                id: r.id,
                device_id: r.device_id,
                hostname: r.hostname,
                display_name: r.display_name,
                action: r.action,
                reason: r.reason,
                cause: r.cause,
                group_version: r.group_version,
                created_at: r.created_at,
            })
            .collect(),
        limit,
        offset,
        next_before,
    }))
}
