//! Groups at `/api/v1/groups` (Breeze's primary endpoints, camelCase) and the group operations every
//! family of routes shares: list, create (also ThingSpace's body, see [`super::thingspace`]) and get; the
//! changes that can retarget devices — update (PATCH and PUT, including a change of type) and delete —
//! are in [`super::group_changes`]. A group id that is not one of cohort's is an unknown group (404),
//! whatever its form.

use axum::extract::FromRequest;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{Detail, ErrorBody, Json, Path, Query, RawBody};
use super::group_changes::{delete, patch, put};
use super::{page, ApiError, ApiState};
use crate::store::api::{self as queries, GroupQuery, GroupRow};
use crate::store::groups::{self, GroupKind, NewGroup};

/// `/api/v1/groups`: the groups themselves; members, pins, previews and the log are merged in by
/// [`super::router`].
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{id}", get(get_one).patch(patch).put(put).delete(delete))
}

/// The group id in a path: an id that is not a UUID names no group of cohort's (404, like any unknown id).
pub(crate) fn group_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("Group not found"))
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
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// `static` or `dynamic`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<GroupType>)]
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

/// A group's type, as the API names it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupType {
    Static,
    Dynamic,
}

/// A group to create. The type follows from the filter unless given.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateGroup {
    /// Required with a system key; an org key creates in its own org.
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    /// 1–255 characters, unique in the org.
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    /// At most 100 tags of 1–64 characters.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub tags: Vec<String>,
    #[serde(alias = "site_id")]
    #[schema(min_length = 1, max_length = 128)]
    pub site_id: Option<String>,
    #[serde(alias = "parent_id")]
    pub parent_id: Option<Uuid>,
    /// `static` or `dynamic`.
    #[serde(rename = "type", alias = "group_type")]
    #[schema(value_type = Option<GroupType>)]
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
    #[schema(min_length = 1, max_length = 255)]
    pub name: Option<String>,
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    #[schema(max_items = 100)]
    pub tags: Option<Vec<String>>,
    #[serde(default, alias = "site_id", deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128)]
    pub site_id: Option<Option<String>>,
    #[serde(default, alias = "parent_id", deserialize_with = "double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
    /// `static` or `dynamic`: a new type. A dynamic group turned static keeps its current members as
    /// manual ones (each logged); a static group turned dynamic needs `filterConditions`, and only the
    /// membership diff is written.
    #[serde(rename = "type", alias = "group_type")]
    #[schema(value_type = Option<GroupType>)]
    pub kind: Option<String>,
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
    /// Decide the change exactly as without it — the same refusals — but write nothing: answer its
    /// firmware impact (and, over the org's retarget cap, a `confirmationToken`).
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// A group's replacement (PUT): `name` is required, and `filterConditions` for a dynamic group; absent
/// optional fields are cleared.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplaceGroup {
    #[schema(min_length = 1, max_length = 255)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub description: String,
    #[serde(default)]
    #[schema(max_items = 100)]
    pub tags: Vec<String>,
    #[serde(alias = "site_id")]
    #[schema(min_length = 1, max_length = 128)]
    pub site_id: Option<String>,
    #[serde(alias = "parent_id")]
    pub parent_id: Option<Uuid>,
    /// `static` or `dynamic` (a change of type as with PATCH).
    #[serde(rename = "type", alias = "group_type")]
    #[schema(value_type = Option<GroupType>)]
    pub kind: Option<String>,
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
    /// As with PATCH: answer the firmware impact only.
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
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

pub(crate) fn check_descriptive(
    name: Option<&str>,
    description: Option<&str>,
    tags: Option<&[String]>,
    site: Option<&str>,
) -> Result<(), ApiError> {
    // (path, message): at most one problem per field, so at most five.
    let mut problems: Vec<(String, String)> = Vec::new();
    if let Some(name) = name {
        if name.trim().is_empty() {
            problems.push(("name".into(), "name must not be empty".into()));
        } else if name.chars().count() > MAX_NAME {
            problems.push((
                "name".into(),
                format!("name must be at most {MAX_NAME} characters"),
            ));
        }
    }
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION) {
        problems.push((
            "description".into(),
            format!("description must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
    if let Some(tags) = tags {
        if tags.len() > MAX_TAGS {
            problems.push(("tags".into(), format!("at most {MAX_TAGS} tags")));
        }
        if let Some(i) = tags
            .iter()
            .position(|t| t.is_empty() || t.chars().count() > MAX_TAG)
        {
            problems.push((
                format!("tags[{i}]"),
                format!("each tag must be 1 to {MAX_TAG} characters"),
            ));
        }
    }
    if site.is_some_and(|s| s.is_empty() || s.chars().count() > MAX_SITE) {
        problems.push((
            "siteId".into(),
            format!("siteId must be 1 to {MAX_SITE} characters"),
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let message = problems
            .iter()
            .map(|(_, message)| message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        Err(ApiError::bad_request(message).with_details(
            problems
                .into_iter()
                .map(|(path, message)| Detail::at(path, message)),
        ))
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

/// A live group the caller may see, by the id as written in the path.
pub(crate) async fn visible(
    state: &ApiState,
    caller: &Caller,
    raw: &str,
) -> Result<GroupRow, ApiError> {
    visible_group(state, caller, group_id(raw)?).await
}

/// The `type` of a request: `static` or `dynamic`.
pub(crate) fn parse_kind(kind: &str) -> Result<GroupKind, ApiError> {
    GroupKind::parse(kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "type must be static or dynamic, got {:?}",
            kind.chars().take(32).collect::<String>()
        ))
    })
}

/// One page of groups as stored, and the total matching.
pub(crate) async fn find(
    state: &ApiState,
    caller: &Caller,
    params: ListParams,
    limit: i64,
    offset: i64,
) -> Result<(Vec<GroupRow>, i64), ApiError> {
    if let Some(kind) = &params.kind {
        parse_kind(kind)?;
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
    Ok(queries::list_groups(&state.pool, &query).await?)
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
    let (rows, total) = find(&state, &caller, params, limit, offset).await?;
    Ok(Json(GroupList {
        groups: rows.into_iter().map(GroupView::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// Create a group. A body in ThingSpace's shape (`accountName`, `groupName`, `groupDescription`,
/// `devicesToAdd`) is ThingSpace's request and gets its answers (`{"success": true}`, or
/// `{"errorCode", "errorMessage"}`), as at `/api/m2m/v1/groups`.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // The content type is checked before the body is read: a refused body is never buffered.
    super::error::require_json(request.headers())?;
    let RawBody(body) = RawBody::from_request(request, &state).await?;
    if super::thingspace::is_thingspace(&body) {
        return Ok(super::thingspace::create_from_bytes(&state, &caller, &body)
            .await
            .into_response());
    }
    let body: CreateGroup = super::error::parse_json(&body)?;
    let row = create_group(&state, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(GroupView::from(row))).into_response())
}

/// Creates a group from a request in any family's words.
pub(crate) async fn create_group(
    state: &ApiState,
    caller: &Caller,
    body: CreateGroup,
) -> Result<GroupRow, ApiError> {
    let org_id = caller.org_for(body.org_id.as_deref())?;
    check_descriptive(
        Some(&body.name),
        Some(&body.description),
        Some(&body.tags),
        body.site_id.as_deref(),
    )?;
    let kind = body.kind.as_deref().map(parse_kind).transpose()?;
    let dynamic = match (kind, &body.filter_conditions) {
        (None, filter) => filter.is_some(),
        (Some(GroupKind::Dynamic), Some(_)) => true,
        (Some(GroupKind::Dynamic), None) => {
            return Err(ApiError::bad_request(
                "A dynamic group needs filterConditions",
            ))
        }
        (Some(GroupKind::Static), None) => false,
        (Some(GroupKind::Static), Some(_)) => {
            return Err(ApiError::bad_request(
                "A static group has no filterConditions",
            ))
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
        id: None,
    };
    let def = groups::create_group(&state.pool, &state.catalogue, &group).await?;
    visible_group(state, caller, def.group_id).await
}

/// Get a group.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub async fn get_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(visible(&state, &caller, &id).await?.into()))
}
