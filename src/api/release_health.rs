//! A release's health over the API: its progress (its devices by standing, from what they report), the
//! failure signal and halt thresholds it is created with, and `pause` / `resume`, decided like every
//! release change (a dry run answers the impact; over the org's retarget cap a resume needs the dry
//! run's token). A threshold reached pauses (or rolls back) the release by itself; `halted` says why.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path};
use super::releases::{decide, ReleaseOutcome, ReleaseView};
use super::{ApiError, ApiState};
use crate::firmware::progress::FailureSignal;
use crate::rules::Catalogue;
use crate::store::api::{self as queries, ReleaseRow};
use crate::store::firmware::{Applied, Proposal};

/// A release's devices by standing.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressView {
    /// Devices whose resolved target the release decides.
    pub targeted: i64,
    /// Of those, reporting running the target (`firmwareVersion`).
    pub running: i64,
    /// Not yet reporting the target (still on their previous version).
    pub previous: i64,
    /// Reporting the release's failure signal.
    pub failed: i64,
    /// Reported the target since the release targeted them, and now report another version.
    pub reverted: i64,
    /// Every device the release targets runs the target (and it targets some).
    pub complete: bool,
}

impl ProgressView {
    pub(super) fn of(r: &ReleaseRow) -> Self {
        let counts = crate::firmware::progress::Counts {
            targeted: r.targeted,
            running: r.running,
            failed: r.failed,
            reverted: r.reverted,
        };
        Self {
            targeted: counts.targeted,
            running: counts.running,
            previous: counts.previous(),
            failed: counts.failed,
            reverted: counts.reverted,
            complete: counts.complete(),
        }
    }
}

/// A release's progress.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressAnswer {
    pub release_id: Uuid,
    pub version: String,
    /// `active`, `paused` or `rolled_back`; `withdrawn` once withdrawn.
    pub state: String,
    pub stage: i32,
    /// The share of the target's devices the current stage selects, in percent.
    pub percentage: f64,
    pub progress: ProgressView,
    /// Why it was paused or rolled back (see the release).
    #[schema(value_type = Option<Object>)]
    pub halted: Option<serde_json::Value>,
}

/// Refuses a failure signal whose attribute is not a field of the catalogue, or whose value is not one
/// that field can hold.
pub(super) fn check_failure(
    catalogue: &Catalogue,
    failure: &FailureSignal,
) -> Result<(), ApiError> {
    match crate::rules::attrs::parse_attribute(catalogue, &failure.attribute, &failure.value) {
        Ok((_, Some(_))) => Ok(()),
        Ok((_, None)) => Err(ApiError::bad_request("failure.value must not be null")),
        Err(message) => Err(ApiError::bad_request(format!("failure: {message}"))),
    }
}

/// A release of the caller's org.
async fn visible(state: &ApiState, caller: &Caller, id: Uuid) -> Result<ReleaseRow, ApiError> {
    match queries::get_release(&state.pool, id).await? {
        Some(r) if caller.sees(&r.org_id) => Ok(r),
        _ => Err(ApiError::not_found("Release not found")),
    }
}

/// A release, with its progress.
#[utoipa::path(get, path = "/api/v1/releases/{id}", tag = "releases", params(("id" = Uuid, Path)),
    responses((status = 200, body = ReleaseView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<Json<ReleaseView>, ApiError> {
    Ok(Json(visible(&state, &caller, id).await?.into()))
}

/// A release's progress: its devices by standing, from what they report, and why it was halted.
#[utoipa::path(get, path = "/api/v1/releases/{id}/progress", tag = "releases",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ProgressAnswer), (status = 404, body = ErrorBody)))]
pub async fn progress(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
) -> Result<Json<ProgressAnswer>, ApiError> {
    let row = visible(&state, &caller, id).await?;
    let progress = ProgressView::of(&row);
    let view = ReleaseView::from(row);
    let state = match view.withdrawn_at {
        Some(_) => "withdrawn".to_string(),
        None => view.state,
    };
    Ok(Json(ProgressAnswer {
        release_id: view.id,
        version: view.version,
        state,
        stage: view.stage,
        percentage: view.percentage,
        progress,
        halted: view.halted,
    }))
}

/// An optional body of `dryRun` only.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DryRunBody {
    /// Decide exactly as without it, but write nothing: answer the impact.
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// Parses an optional JSON body (none, or only whitespace, is `T::default()`).
pub(super) fn optional_body<T: Default + serde::de::DeserializeOwned>(
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

/// Decides a change of a live release of the caller's org and answers with the release as it is
/// afterwards (for a dry run, as it is now) and the impact.
pub(super) async fn answer(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
    headers: &HeaderMap,
    dry_run: bool,
    proposal: Proposal,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    let (row, applied) = act(state, caller, id, headers, dry_run, proposal).await?;
    Ok(Json(ReleaseOutcome::of(dry_run, row, applied)))
}

/// Decides a change of a live release of the caller's org: the release as it is afterwards (for a dry
/// run, as it is now) and what the decision answered.
pub(super) async fn act(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
    headers: &HeaderMap,
    dry_run: bool,
    proposal: Proposal,
) -> Result<(ReleaseRow, Applied), ApiError> {
    let row = match visible(state, caller, id).await? {
        r if r.withdrawn_at.is_none() => r,
        _ => return Err(ApiError::not_found("Release not found")),
    };
    let applied = decide(state, caller, &row.org_id, &proposal, dry_run, headers).await?;
    let row = match dry_run {
        true => row,
        false => queries::get_release(&state.pool, id)
            .await?
            .ok_or_else(|| ApiError::not_found("Release not found"))?,
    };
    Ok((row, applied))
}

/// Pause a live release: it selects no further device; the devices it targets keep it (`dryRun`: only
/// the impact, which is none). Refused (409) when it is already paused or rolled back.
#[utoipa::path(post, path = "/api/v1/releases/{id}/pause", tag = "releases",
    params(("id" = Uuid, Path)), request_body = Option<DryRunBody>,
    responses((status = 200, body = ReleaseOutcome), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn pause(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    let dry_run = optional_body::<DryRunBody>(&body)?.dry_run;
    answer(
        &state,
        &caller,
        id,
        &headers,
        dry_run,
        Proposal::Pause { release: id },
    )
    .await
}

/// Resume a paused or rolled-back release at its current stage: it selects what its stage selects again
/// (`dryRun`: only the impact, the devices it would retarget). Clears why it was halted and starts the
/// stage's soak time again. Refused (409) when it is not paused.
#[utoipa::path(post, path = "/api/v1/releases/{id}/resume", tag = "releases",
    params(("id" = Uuid, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the resume retargets more devices than the org's retarget cap")),
    request_body = Option<DryRunBody>,
    responses((status = 200, body = ReleaseOutcome), (status = 404, body = ErrorBody),
        (status = 409, description = "Not paused, or over the org's retarget cap without a valid Cohort-Confirm token", body = ErrorBody)))]
pub async fn resume(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    let dry_run = optional_body::<DryRunBody>(&body)?.dry_run;
    answer(
        &state,
        &caller,
        id,
        &headers,
        dry_run,
        Proposal::Resume { release: id },
    )
    .await
}
