//! Breeze's device-scoped group endpoints, `/api/v1/devices/groups`: list (`orgId`, `page`, `limit`),
//! create, get, update, delete, and batch membership (`/{id}/members`). They act on the same groups as
//! `/api/v1/groups`, with the same bodies and answers; only the listing pages by page number.

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Query};
use super::group_changes;
use super::groups::{self, GroupView, ListParams};
use super::members;
use super::{ApiError, ApiState};

/// `/api/v1/devices/groups`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list).post(groups::create))
        .route(
            "/{id}",
            get(groups::get_one)
                .patch(group_changes::patch)
                .delete(group_changes::delete),
        )
        .route(
            "/{id}/members",
            axum::routing::post(members::add_bulk).delete(members::remove_bulk),
        )
}

/// The device-scoped listing's query: `page` (from 1) instead of `offset`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageListParams {
    /// With a system key: only this org's groups.
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    /// From 1, default 1.
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<i64>,
    /// 1–1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `static` or `dynamic`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<super::groups::GroupType>)]
    pub kind: Option<String>,
    #[serde(alias = "site_id")]
    pub site_id: Option<String>,
    #[serde(alias = "parent_id")]
    pub parent_id: Option<Uuid>,
    /// Case-insensitive substring of the name.
    pub search: Option<String>,
}

/// Where a page stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    pub page: i64,
    pub limit: i64,
    pub total: i64,
}

/// A page of groups: `{"data": [...], "pagination": {"page", "limit", "total"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupPage {
    pub data: Vec<GroupView>,
    pub pagination: Pagination,
}

/// Most pages one listing may reach (page × limit stays far from overflowing).
const MAX_PAGE: i64 = 1_000_000;

/// List an org's groups, by name, a page at a time.
#[utoipa::path(get, path = "/api/v1/devices/groups", tag = "device-scoped", params(PageListParams),
    responses((status = 200, body = GroupPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<PageListParams>,
) -> Result<Json<GroupPage>, ApiError> {
    let page = params.page.unwrap_or(1);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(format!(
            "page must be from 1 to {MAX_PAGE}, got {page}"
        )));
    }
    let (limit, _) = super::page(params.limit, None, 50, 1000)?;
    let query = ListParams {
        limit: Some(limit),
        offset: Some((page - 1) * limit),
        kind: params.kind,
        site_id: params.site_id,
        parent_id: params.parent_id,
        tags: None,
        search: params.search,
        org_id: params.org_id,
    };
    let (rows, total) = groups::find(&state, &caller, query, limit, (page - 1) * limit).await?;
    Ok(Json(GroupPage {
        data: rows.into_iter().map(GroupView::from).collect(),
        pagination: Pagination { page, limit, total },
    }))
}
