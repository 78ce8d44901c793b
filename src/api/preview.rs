//! Previews: what a filter matches now, answered as Breeze does (`{"data": {"totalCount", "devices",
//! "evaluatedAt"}}`). `POST /groups/{id}/preview` previews a saved group's filter, or, with a body, the
//! filter (and site) it would have after a change not yet saved; `POST /groups/preview` previews a filter
//! for a group not yet created.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{parse_json, require_json, ErrorBody, Json, Path, Query, RawBody};
use super::groups::visible;
use super::members::display_text;
use super::{page, ApiError, ApiState};
use crate::rules::time::format_millis;
use crate::rules::{compile, Attributes};
use crate::store::api as queries;
use crate::store::groups::GroupError;
use crate::worker::view::Question;

/// `/preview` and `/{id}/preview`, under each group family's base path.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/preview", post(preview_filter))
        .route("/{id}/preview", post(preview_group))
}

/// `?limit=` of previews.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    /// Sample size, 1–100, default 10.
    #[param(minimum = 1, maximum = 100)]
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

/// A change to a saved group's filter or site, previewed before it is saved (every field optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewChange {
    #[serde(alias = "site_id")]
    pub site_id: Option<String>,
    #[serde(alias = "filter_conditions", alias = "filter")]
    #[schema(value_type = Option<Object>)]
    pub filter_conditions: Option<Value>,
}

/// A matching device in a preview.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewDevice {
    /// The device id.
    pub id: String,
    pub hostname: Option<String>,
    pub display_name: Option<String>,
    pub os_type: Option<String>,
    pub status: Option<String>,
    pub last_seen_at: Option<String>,
}

/// What a filter matches now.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// Devices matching.
    pub total_count: u64,
    /// Devices examined (the org's, or the site's).
    pub examined: u64,
    /// Up to `limit` matching devices, by id.
    pub devices: Vec<PreviewDevice>,
    /// The instant the filter was evaluated at.
    pub evaluated_at: String,
    /// Where the devices were evaluated: `memory` (every partition in the memory of the worker serving
    /// this request), `database` (PostgreSQL's committed state) or `mixed` (the partitions this process's
    /// worker holds in memory, the others from the database). See docs/api.md, "Previews".
    pub evaluated_from: String,
}

/// `{"data": Preview}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAnswer {
    pub data: Preview,
}

/// What a preview's sample shows of each device.
const SHOWN: [&str; 5] = ["hostname", "displayName", "osType", "status", "lastSeenAt"];

/// Evaluates `filter` over the org's devices with the workers' evaluator: in the memory of the worker in
/// this process for the partitions it holds, and from PostgreSQL for the rest (every partition, in an API
/// process without a worker).
async fn run_preview(
    state: &ApiState,
    org_id: &str,
    site: Option<&str>,
    filter: &Value,
    limit: usize,
) -> Result<PreviewAnswer, ApiError> {
    let compiled = Arc::new(compile(filter, &state.catalogue).map_err(GroupError::Invalid)?);
    let now = chrono::Utc::now().timestamp_millis();
    let mut preview = Preview {
        total_count: 0,
        examined: 0,
        devices: Vec::new(),
        evaluated_at: format_millis(now),
        evaluated_from: "database".into(),
    };
    let mut held = Vec::new();
    if let Some(view) = &state.view {
        let held_now = view.held();
        if !held_now.is_empty() {
            let Ok(_slot) = state.memory_preview_slots.clone().acquire_owned().await else {
                return Err(ApiError::rate_limited(1));
            };
            // (name, field) of each shown field the catalogue has.
            let shown: Vec<(&str, _)> = SHOWN
                .iter()
                .filter_map(|&name| state.catalogue.builtin(name).map(|f| (name, f)))
                .collect();
            let fields: Vec<_> = shown.iter().map(|&(_, f)| f).collect();
            let (view, catalogue, org, site, filter) = (
                view.clone(),
                state.catalogue.clone(),
                org_id.to_string(),
                site.map(str::to_string),
                compiled.clone(),
            );
            let answer = tokio::task::spawn_blocking(move || {
                view.evaluate(
                    &catalogue,
                    &Question {
                        org: &org,
                        site: site.as_deref(),
                        filter: &filter,
                        now,
                        limit,
                        shown: &fields,
                    },
                )
            })
            .await
            .map_err(|e| ApiError::internal(&e))?;
            preview.total_count = answer.matched;
            preview.examined = answer.examined;
            preview.devices = answer
                .sample
                .into_iter()
                .map(|s| {
                    // The shown values by name, as a stored document has them.
                    let doc: Map<String, Value> = shown
                        .iter()
                        .zip(s.fields)
                        .filter_map(|(&(name, _), value)| Some((name.to_string(), value?)))
                        .collect();
                    sample(s.id, &doc)
                })
                .collect();
            held = answer.partitions;
            preview.evaluated_from = "memory".into();
        }
    }
    let rest = if held.is_empty() {
        None
    } else {
        let all = queries::input_partitions(&state.pool, &state.input_topic).await?;
        let rest: Vec<i32> = all.into_iter().filter(|p| !held.contains(p)).collect();
        if rest.is_empty() {
            return Ok(PreviewAnswer { data: preview });
        }
        preview.evaluated_from = "mixed".into();
        Some(rest)
    };
    let Ok(_slot) = state.preview_slots.try_acquire() else {
        return Err(ApiError::rate_limited(1));
    };
    let mut fields = compiled.stored_field_names(&state.catalogue);
    for shown in SHOWN {
        if !fields.iter().any(|f| f == shown) {
            fields.push(shown.to_string());
        }
    }
    let catalogue = state.catalogue.clone();
    let mut sampled = Vec::new();
    let (mut matched, mut examined) = (0, 0);
    queries::scan_devices(
        &state.pool,
        org_id,
        site,
        rest.as_deref(),
        &fields,
        |device_id, doc| {
            examined += 1;
            let attrs = Attributes::from_stored_json(&doc, &catalogue, |_, _| {});
            if compiled.evaluate(&attrs, now) {
                matched += 1;
                if sampled.len() < limit {
                    sampled.push(sample(device_id, &doc));
                }
            }
            true
        },
    )
    .await?;
    preview.total_count += matched;
    preview.examined += examined;
    // Both samples are the smallest ids of their part, in order: merged, the smallest of the whole.
    preview.devices.extend(sampled);
    preview.devices.sort_by(|a, b| a.id.cmp(&b.id));
    preview.devices.truncate(limit);
    Ok(PreviewAnswer { data: preview })
}

fn sample(id: String, doc: &Map<String, Value>) -> PreviewDevice {
    let text = |field: &str| doc.get(field).and_then(display_text);
    PreviewDevice {
        hostname: text("hostname"),
        display_name: text("displayName"),
        os_type: text("osType"),
        status: text("status"),
        last_seen_at: text("lastSeenAt"),
        id,
    }
}

/// Preview a group: how many devices its filter matches now, and a sample. With a body
/// (`filterConditions` and/or `siteId`), the filter and site it would have after that change, before it
/// is saved (a static group can be previewed so before it is turned dynamic).
#[utoipa::path(post, path = "/api/v1/groups/{id}/preview", tag = "groups",
    params(("id" = String, Path), PreviewParams), request_body(content = Option<PreviewChange>),
    responses((status = 200, body = PreviewAnswer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn preview_group(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<PreviewParams>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<PreviewAnswer>, ApiError> {
    let (limit, _) = page(params.limit, None, 10, 100)?;
    // No body (as Breeze's example sends it) previews the saved filter; a body must be JSON.
    let change: PreviewChange = if body.iter().all(u8::is_ascii_whitespace) {
        PreviewChange::default()
    } else {
        require_json(&headers)?;
        parse_json(&body)?
    };
    let group = visible(&state, &caller, &id).await?;
    let site = change.site_id.or(group.site_id);
    let Some(filter) = change.filter_conditions.or(group.filter_conditions) else {
        return Err(ApiError::bad_request(
            "A static group has no filter to preview (send filterConditions to preview one)",
        ));
    };
    let preview = run_preview(
        &state,
        &group.org_id,
        site.as_deref(),
        &filter,
        limit as usize,
    )
    .await?;
    Ok(Json(preview))
}

/// Preview a filter not yet saved.
#[utoipa::path(post, path = "/api/v1/groups/preview", tag = "groups", params(PreviewParams),
    request_body = PreviewFilter,
    responses((status = 200, body = PreviewAnswer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn preview_filter(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<PreviewParams>,
    Json(body): Json<PreviewFilter>,
) -> Result<Json<PreviewAnswer>, ApiError> {
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
