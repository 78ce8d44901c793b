//! ThingSpace's "Create Device Group" request, served where a ThingSpace client sends it
//! (`POST /api/m2m/v1/groups`) and accepted on `POST /api/v1/groups` too: `accountName` names the org,
//! `groupName` and `groupDescription` the new static group, and `devicesToAdd` its first members by
//! cellular identifier (`{"kind": "imei", "identifier": "…"}`, kinds in any case).
//!
//! Answers are ThingSpace's: `{"success": true}` (200), and every failure as
//! `{"errorCode", "errorMessage"}` — status 400 for what the client must fix (as ThingSpace answers), and
//! the status's own code for a missing key (401), the rate limit (429) and the server's failures (5xx).
//! The request is all or nothing: an identifier no device of the org reports refuses it before the group is
//! created.

use axum::body::{to_bytes, Body};
use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{parse_json, require_json, Detail, RawBody};
use super::groups::{create_group, CreateGroup};
use super::members::{resolve_batch, DeviceIdentifier, MAX_BATCH};
use super::{ApiError, ApiState};
use crate::store::groups as group_store;
use crate::store::members::{self, Partial};

/// `/api/m2m/v1/groups`.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/", post(create))
}

/// A device group to create, in ThingSpace's words.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThingSpaceGroup {
    /// The org (ThingSpace's billing account). An org key may only name its own.
    #[schema(min_length = 1, max_length = 128)]
    pub account_name: String,
    /// Unique within the org, 1–255 characters.
    #[schema(min_length = 1, max_length = 255)]
    pub group_name: String,
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub group_description: Option<String>,
    /// Zero or more devices to add, by cellular identifier.
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub devices_to_add: Vec<DeviceIdentifier>,
}

/// `{"success": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

/// ThingSpace's failure answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThingSpaceError {
    /// `BAD_REQUEST`, `NOT_FOUND`, `CONFLICT`, `UNAUTHORIZED`, `RATE_LIMITED` or `INTERNAL_ERROR`.
    pub error_code: String,
    pub error_message: String,
}

/// An API error in ThingSpace's shape.
fn thingspace_error(e: ApiError) -> Response {
    let client = e.status.is_client_error()
        && !matches!(
            e.status,
            StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
        );
    let status = if client {
        StatusCode::BAD_REQUEST
    } else {
        e.status
    };
    let mut message = e.message;
    // The first few problems, so a client that shows only the message still says what to fix.
    let listed: Vec<String> = e.details.iter().take(5).map(Detail::summary).collect();
    if !listed.is_empty() {
        message = format!("{message}: {}", listed.join("; "));
    }
    let body = ThingSpaceError {
        error_code: e.code.to_ascii_uppercase(),
        error_message: message,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = e.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

/// Whether a create body is ThingSpace's (it names `groupName` or `accountName`).
pub(crate) fn is_thingspace(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        group_name: Option<serde::de::IgnoredAny>,
        account_name: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(body)
        .is_ok_and(|p| p.group_name.is_some() || p.account_name.is_some())
}

/// Creates the group from a ThingSpace body, answering in ThingSpace's shape.
pub(crate) async fn create_from_bytes(state: &ApiState, caller: &Caller, body: &[u8]) -> Response {
    match create_group_and_members(state, caller, body).await {
        Ok(()) => Json200(Success { success: true }).into_response(),
        Err(e) => thingspace_error(e),
    }
}

struct Json200<T>(T);

impl<T: Serialize> IntoResponse for Json200<T> {
    fn into_response(self) -> Response {
        (StatusCode::OK, axum::Json(self.0)).into_response()
    }
}

async fn create_group_and_members(
    state: &ApiState,
    caller: &Caller,
    body: &[u8],
) -> Result<(), ApiError> {
    let body: ThingSpaceGroup = parse_json(body)?;
    if body.devices_to_add.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "At most {MAX_BATCH} devices per group creation, got {}",
            body.devices_to_add.len()
        )));
    }
    let org_id = caller.org_for(Some(&body.account_name))?;
    // Every identifier is checked and resolved before anything is written.
    let ids = if body.devices_to_add.is_empty() {
        Vec::new()
    } else {
        resolve_batch(state, &org_id, Vec::new(), body.devices_to_add).await?
    };
    let group = create_group(
        state,
        caller,
        CreateGroup {
            org_id: Some(org_id.clone()),
            name: body.group_name,
            description: body.group_description.unwrap_or_default(),
            tags: Vec::new(),
            site_id: None,
            parent_id: None,
            kind: Some("static".to_string()),
            filter_conditions: None,
        },
    )
    .await?;
    if ids.is_empty() {
        return Ok(());
    }
    let added = members::add_static_with(
        &state.pool,
        &org_id,
        group.id,
        &ids,
        &caller.actor(),
        Partial::Refused,
    )
    .await;
    if let Err(e) = added {
        // The group was created a moment ago and holds nothing: take it back, so the request changes
        // nothing, as it answers.
        if let Err(undo) = group_store::delete_group(&state.pool, group.id).await {
            tracing::warn!(group = %group.id, error = %undo, "could not take back a group whose members failed");
        }
        return Err(super::members::refusal(e));
    }
    Ok(())
}

/// Create a device group (ThingSpace): a static group in the org `accountName`, with the devices named by
/// their cellular identifiers.
#[utoipa::path(post, path = "/api/m2m/v1/groups", tag = "thingspace", request_body = ThingSpaceGroup,
    responses((status = 200, body = Success), (status = 400, body = ThingSpaceError),
        (status = 401, body = ThingSpaceError), (status = 429, body = ThingSpaceError)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Response {
    let body = match body {
        Ok(RawBody(body)) => body,
        Err(e) => return thingspace_error(e),
    };
    if let Err(e) = require_json(&headers) {
        return thingspace_error(e);
    }
    create_from_bytes(&state, &caller, &body).await
}

/// Rewrites the API's error answers under ThingSpace's base path (a missing key, an unknown route, the rate
/// limit) into ThingSpace's shape.
pub async fn errors_as_thingspace(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Error bodies are small; anything else passes through as it is.
    let Ok(bytes) = to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(error) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let (Some(code), Some(message)) = (error["error"].as_str(), error["message"].as_str()) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let mut rewritten = thingspace_error(ApiError {
        status: parts.status,
        code: leak_code(code),
        message: message.to_string(),
        details: Vec::new(),
        retry_after: parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        cap: None,
    });
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        rewritten.headers_mut().insert(header::ALLOW, allow.clone());
    }
    rewritten
}

/// The API's error codes as `'static` strings (the codes are a closed set; anything else is internal).
fn leak_code(code: &str) -> &'static str {
    const CODES: [&str; 7] = [
        "bad_request",
        "unauthorized",
        "not_found",
        "conflict",
        "rate_limited",
        "request_timeout",
        "internal_error",
    ];
    CODES
        .into_iter()
        .find(|c| *c == code)
        .unwrap_or("internal_error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thingspace_body_is_told_by_its_field_names() {
        assert!(is_thingspace(
            br#"{"accountName": "1", "groupName": "NV tanks"}"#
        ));
        assert!(is_thingspace(br#"{"groupName": "x"}"#));
        assert!(!is_thingspace(br#"{"name": "x", "type": "static"}"#));
        assert!(!is_thingspace(b"not json"));
    }

    #[test]
    fn client_errors_answer_400_and_keep_their_code() {
        let response = thingspace_error(ApiError::not_found("Org not found"));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let response = thingspace_error(ApiError::rate_limited(3));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
