//! Orgs: an org key sees its own; a system key lists and creates them.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ErrorBody, Json};
use super::{ApiError, ApiState};
use crate::store::api as queries;
use crate::store::groups;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/", get(list).post(create))
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// The orgs the key sees.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgList {
    pub orgs: Vec<OrgView>,
}

/// List orgs (an org key sees only its own).
#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs", responses((status = 200, body = OrgList)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<OrgList>, ApiError> {
    let rows = queries::list_orgs(&state.pool, caller.org_id.as_deref()).await?;
    Ok(Json(OrgList {
        orgs: rows
            .into_iter()
            .map(|(id, name, created_at)| OrgView {
                id,
                name,
                created_at,
            })
            .collect(),
    }))
}

/// An org to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1–128 characters: letters, digits, `-`, `_`, `.`.
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// Create an org (system keys only).
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = CreateOrg,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, Json<OrgView>), ApiError> {
    if caller.org_id.is_some() {
        return Err(ApiError::unauthorized("Creating orgs needs a system key"));
    }
    let valid = (1..=128).contains(&body.id.len())
        && body
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(ApiError::bad_request(
            "id must be 1 to 128 characters: letters, digits, '-', '_' or '.'",
        ));
    }
    if body.name.chars().count() > 255 {
        return Err(ApiError::bad_request("name must be at most 255 characters"));
    }
    if !groups::create_org(&state.pool, &body.id, &body.name).await? {
        return Err(ApiError::conflict("An org with this id already exists"));
    }
    let (id, name, created_at) = queries::list_orgs(&state.pool, Some(&body.id))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("Org not found"))?;
    Ok((
        StatusCode::CREATED,
        Json(OrgView {
            id,
            name,
            created_at,
        }),
    ))
}
