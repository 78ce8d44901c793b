//! Previews: what a filter matches now, answered as Breeze does (`{"data": {"totalCount", "devices",
//! "evaluatedAt"}}`). `POST /groups/{id}/preview` previews a saved group's filter, or, with a body, the
//! filter (and site) it would have after a change not yet saved; `POST /groups/preview` previews a filter
//! for a group not yet created.

use std::collections::BTreeSet;
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
use super::internal::{
    in_memory, Asked, EvaluateAnswer, EvaluateRequest, SampledDevice, EVALUATE_PATH, SHOWN,
};
use super::members::display_text;
use super::{page, peers, ApiError, ApiState};
use crate::rules::time::format_millis;
use crate::rules::{compile, Attributes, CompiledFilter, EpochMillis};
use crate::store::api as queries;
use crate::store::groups::GroupError;
use crate::store::live_workers;
use crate::worker::presence::FRESH_WITHIN;

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
    /// Where the devices were evaluated: `memory` (every partition in the memory of the worker holding
    /// it, this process's or another's), `database` (every partition from PostgreSQL's committed state)
    /// or `mixed` (some partitions in workers' memory, the others — no worker answered for them — from
    /// the database). See docs/api.md, "Previews".
    pub evaluated_from: String,
}

/// `{"data": Preview}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewAnswer {
    pub data: Preview,
}

/// Evaluates `filter` over the org's devices with the workers' evaluator, where the devices are: in the
/// memory of the worker in this process for the partitions it holds, in the memory of the workers holding
/// the others ([`super::peers`]), and from PostgreSQL for every partition no worker answered (every
/// partition, when none did).
async fn run_preview(
    state: &ApiState,
    org_id: &str,
    site: Option<&str>,
    filter: &Value,
    limit: usize,
) -> Result<PreviewAnswer, ApiError> {
    let compiled = Arc::new(compile(filter, &state.catalogue).map_err(GroupError::Invalid)?);
    let now = chrono::Utc::now().timestamp_millis();
    // Each part covers partitions no other part covers.
    let mut parts = Vec::new();
    let mut answered = BTreeSet::new();
    if let Some(view) = state.view.as_ref().filter(|v| !v.held().is_empty()) {
        let asked = Asked {
            org: org_id.to_string(),
            site: site.map(str::to_string),
            filter: compiled.clone(),
            now,
            limit,
            partitions: None,
        };
        let part = in_memory(view, &state.catalogue, &state.memory_preview_slots, asked).await?;
        answered.extend(part.partitions.iter().copied());
        parts.push(part);
    }
    let owners = live_workers::partition_owners(&state.pool, &state.input_topic, FRESH_WITHIN)
        .await?
        .owners;
    let question = |partitions| EvaluateRequest {
        org: org_id.to_string(),
        site: site.map(str::to_string),
        filter_conditions: filter.clone(),
        now,
        limit,
        partitions,
    };
    let others: Vec<EvaluateAnswer> = peers::ask_the_rest(
        &owners,
        &mut answered,
        &[],
        state.owner.as_deref(),
        EVALUATE_PATH,
        question,
        state.peer_timeout,
    )
    .await;
    parts.extend(others);
    let rest = peers::unanswered(&owners, &answered);
    let evaluated_from = match (answered.is_empty(), rest.is_empty()) {
        (true, _) => "database",
        (false, true) => "memory",
        (false, false) => "mixed",
    };
    if answered.is_empty() {
        // Every partition, and devices of a partition no worker has claimed yet.
        parts.push(from_database(state, org_id, site, &compiled, now, limit, None).await?);
    } else if !rest.is_empty() {
        parts.push(from_database(state, org_id, site, &compiled, now, limit, Some(&rest)).await?);
    }
    let merged = EvaluateAnswer::merge(parts, limit);
    Ok(PreviewAnswer {
        data: Preview {
            total_count: merged.matched,
            examined: merged.examined,
            devices: merged
                .sample
                .into_iter()
                .map(|s| sample(s.id, &s.fields))
                .collect(),
            evaluated_at: format_millis(now),
            evaluated_from: evaluated_from.into(),
        },
    })
}

/// Evaluates the filter over the devices PostgreSQL holds of `partitions` (all, when `None`), at most
/// [`super::PREVIEW_SLOTS`] such reads at once per process (more answer 429).
async fn from_database(
    state: &ApiState,
    org_id: &str,
    site: Option<&str>,
    compiled: &CompiledFilter,
    now: EpochMillis,
    limit: usize,
    partitions: Option<&[i32]>,
) -> Result<EvaluateAnswer, ApiError> {
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
    let mut part = EvaluateAnswer {
        partitions: partitions.map(<[i32]>::to_vec).unwrap_or_default(),
        ..EvaluateAnswer::default()
    };
    queries::scan_devices(
        &state.pool,
        org_id,
        site,
        partitions,
        &fields,
        |device_id, doc| {
            part.examined += 1;
            let attrs = Attributes::from_stored_json(&doc, &catalogue, |_, _| {});
            if compiled.evaluate(&attrs, now) {
                part.matched += 1;
                if part.sample.len() < limit {
                    let fields = SHOWN
                        .iter()
                        .filter_map(|&f| doc.get(f).map(|v| (f.to_string(), v.clone())))
                        .collect();
                    part.sample.push(SampledDevice {
                        id: device_id,
                        fields,
                    });
                }
            }
            true
        },
    )
    .await?;
    Ok(part)
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
