//! Firmware releases: list, create (to a group or as the org default) and withdraw, each with `dry_run`
//! answering what the real request would: the same refusal, or the impact (whose resolved firmware would
//! change and which devices would download firmware, computed with the workers' resolution code) without
//! writing. Both go through one decision in the store (`firmware::apply`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::internal::{self, ImpactAnswer, ImpactRequest, IMPACT_PATH};
use super::release_health::{self, ProgressView};
use super::retarget_cap::confirmation;
use super::{peers, release_stages, ApiError, ApiState};
use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::firmware::WHOLE_SHARE;
use crate::rules::Catalogue;
use crate::store::api as queries;
use crate::store::firmware::{
    self, Counting, HeldDevices, Impact, Mode, Proposal, ReleaseTarget, Releases,
};
use crate::store::live_workers::{self, LiveWorker};
use crate::worker::presence::FRESH_WITHIN;
use crate::worker::FleetView;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(list).post(create))
        .route("/{id}", get(release_health::get).delete(withdraw))
        .route("/{id}/advance", post(release_stages::advance))
        .route("/{id}/progress", get(release_health::progress))
        .route("/{id}/pause", post(release_health::pause))
        .route("/{id}/resume", post(release_health::resume))
}

/// Devices listed in an impact preview.
pub(crate) const IMPACT_SAMPLE: usize = 20;

/// A release.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    pub id: Uuid,
    pub org_id: String,
    pub version: String,
    /// `null` for the org's default release.
    pub group_id: Option<Uuid>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// Each stage's share of the target's devices, in percent, increasing (`[100]`: all at once).
    pub stages: Vec<f64>,
    /// The current stage (0 is the first).
    pub stage: i32,
    /// The share of the target's devices the current stage selects, in percent.
    pub percentage: f64,
    /// `active` (selects what its stage selects), `paused` (selects no further device; those it targets
    /// keep it) or `rolled_back` (selects none).
    pub state: String,
    /// What its devices report when an update failed.
    #[schema(value_type = Option<Object>)]
    pub failure: Option<FailureSignal>,
    /// The thresholds that halt it.
    #[schema(value_type = Option<Object>)]
    pub halt: Option<Thresholds>,
    /// Seconds each stage runs, its health holding, before the next starts by itself.
    pub soak_seconds: Option<i32>,
    /// When its current stage started.
    pub stage_started_at: DateTime<Utc>,
    /// When its next stage starts by itself, if it will (active, soak time set, not at its last stage).
    pub next_advance_at: Option<DateTime<Utc>>,
    /// Why it was paused or rolled back: `{"by": "threshold", "threshold", "counts", "deviceId", "cause",
    /// "at"}`, or `{"by": "operator", "actor", "at"}`.
    #[schema(value_type = Option<Object>)]
    pub halted: Option<serde_json::Value>,
    /// Its devices by standing, from what they report.
    pub progress: ProgressView,
}

impl From<queries::ReleaseRow> for ReleaseView {
    fn from(r: queries::ReleaseRow) -> Self {
        let current = usize::try_from(r.stage)
            .ok()
            .and_then(|i| r.stages.get(i))
            .copied()
            .unwrap_or(i32::from(WHOLE_SHARE));
        let progress = ProgressView::of(&r);
        let last = r.stage + 1 >= r.stages.len() as i32;
        let next_advance_at = match (r.soak_seconds, r.state.as_str(), last, r.withdrawn_at) {
            (Some(soak), "active", false, None) => {
                Some(r.stage_started_at + chrono::Duration::seconds(i64::from(soak)))
            }
            _ => None,
        };
        Self {
            id: r.id,
            org_id: r.org_id,
            version: r.version,
            group_id: r.group_id,
            created_by: r.created_by,
            created_at: r.created_at,
            withdrawn_at: r.withdrawn_at,
            state: r.state,
            failure: r.failure.map(|f| f.0),
            halt: r.halt.map(|h| h.0),
            soak_seconds: r.soak_seconds,
            stage_started_at: r.stage_started_at,
            next_advance_at,
            halted: r.halted,
            progress,
            stages: r
                .stages
                .iter()
                .map(|s| release_stages::percent(*s))
                .collect(),
            stage: r.stage,
            percentage: release_stages::percent(current),
        }
    }
}

/// Releases of an org.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseView>,
}

/// Listing filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Required with a system key.
    pub org_id: Option<String>,
    /// Include withdrawn releases (history); default false.
    #[serde(default)]
    pub include_withdrawn: bool,
}

/// List an org's releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases", params(ListParams),
    responses((status = 200, body = ReleaseList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Json<ReleaseList>, ApiError> {
    let org_id = caller.org_for(params.org_id.as_deref())?;
    let rows = queries::list_releases(&state.pool, &org_id, params.include_withdrawn).await?;
    Ok(Json(ReleaseList {
        releases: rows.into_iter().map(ReleaseView::from).collect(),
    }))
}

/// A release to create: to a group (`groupId`) or as the org default (`default: true`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRelease {
    /// Required with a system key (or taken from the group).
    #[serde(alias = "org_id")]
    pub org_id: Option<String>,
    #[serde(alias = "group_id")]
    pub group_id: Option<Uuid>,
    #[serde(default)]
    pub default: bool,
    /// An integer or a semantic version; an org's releases all use one kind.
    #[schema(min_length = 1, max_length = 128)]
    pub version: String,
    /// Release in stages: each the percentage of the target's devices selected (increasing, up to 10, to a
    /// hundredth), chosen by a stable hash of the release and the device. The release starts at the first;
    /// `POST /api/v1/releases/{id}/advance` moves it on. Default: all at once.
    pub stages: Option<Vec<f64>>,
    /// One stage of this percentage (instead of `stages`).
    pub percentage: Option<f64>,
    /// What a device reports when its update failed: a field of the catalogue and its value, e.g.
    /// `{"attribute": "custom.otaStatus", "value": "failed"}`. Such devices count as `failed`.
    #[schema(value_type = Option<Object>)]
    pub failure: Option<FailureSignal>,
    /// Thresholds that halt the release, any one reached: `failures` / `reverts` (counts), `failureRate`
    /// / `revertRate` (shares of the targeted devices, above 0 and at most 1), and `rollback` (a halt
    /// also rolls the release back: its devices resolve as if it did not exist). Without `rollback` a
    /// halt pauses it: no further device is selected, those it targets keep it.
    #[schema(value_type = Option<Object>)]
    pub halt: Option<Thresholds>,
    /// Seconds each stage runs before the release advances to the next by itself, if its health holds
    /// (it is not paused). Default: stages advance only by hand.
    pub soak_seconds: Option<u32>,
    /// Decide the release exactly as without it — the same refusals — but write nothing: answer the impact
    /// (and, over the org's retarget cap, a `confirmationToken`).
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// The answer to a release or withdrawal.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseOutcome {
    pub dry_run: bool,
    /// The release created or withdrawn (absent for a dry run).
    pub release: Option<ReleaseView>,
    /// What the change does (computed just before writing it): `examined` devices; `changed`, whose resolved
    /// version changes (each is one rollout-target event), by `transitions` ("1 -> 2", "none" for no
    /// target); `impacted`, the changed devices that will download firmware because their new target is not
    /// the version they report running (`firmwareVersion`; a device that reports none is impacted), by
    /// `downloads` ("running -> target", "unreported" for none); and a `sample` of changed devices
    /// (`deviceId`, `from`, `to`, `running`, `impacted`).
    #[schema(value_type = Object)]
    pub impact: Impact,
    /// A dry run's answer when the impact exceeds the org's retarget cap: send the change again with this
    /// in the `Cohort-Confirm` header, within five minutes, to make it. It confirms this change with this
    /// impact only: if the impact differs when the change is made, it is refused again.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub confirmation_token: Option<String>,
}

impl ReleaseOutcome {
    /// The answer to a change of an existing release: the release as it is after (for a dry run, now).
    pub(super) fn of(
        dry_run: bool,
        release: queries::ReleaseRow,
        applied: firmware::Applied,
    ) -> Self {
        Self {
            dry_run,
            release: Some(release.into()),
            impact: applied.impact,
            confirmation_token: applied.confirmation_token,
        }
    }
}

/// Release firmware to a group or as the org default (`dry_run`: only the impact).
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases", request_body = CreateRelease,
    params(("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the release retargets more devices than the org's retarget cap")),
    responses((status = 201, body = ReleaseOutcome), (status = 200, body = ReleaseOutcome),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Over the org's retarget cap without a valid Cohort-Confirm token (`retarget_cap_exceeded`, with `cap` and `impact`)", body = ErrorBody)))]
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(body): Json<CreateRelease>,
) -> Result<(StatusCode, Json<ReleaseOutcome>), ApiError> {
    let (org_id, target) = match (body.group_id, body.default) {
        (Some(group), false) => {
            let group = super::groups::visible_group(&state, &caller, group).await?;
            if body.org_id.as_deref().is_some_and(|o| o != group.org_id) {
                return Err(ApiError::not_found("Group not found"));
            }
            (group.org_id, ReleaseTarget::Group(group.id))
        }
        (None, true) => (
            caller.org_for(body.org_id.as_deref())?,
            ReleaseTarget::Default,
        ),
        _ => {
            return Err(ApiError::bad_request(
                "Name exactly one target: groupId, or default: true",
            ))
        }
    };
    let stages = release_stages::requested(body.stages.as_deref(), body.percentage)?;
    if let Some(failure) = &body.failure {
        release_health::check_failure(&state.catalogue, failure)?;
    }
    let proposal = Proposal::Release {
        target,
        version: body.version.trim().to_string(),
        stages,
        health: firmware::Health {
            failure: body.failure,
            halt: body.halt,
            soak_seconds: body.soak_seconds,
        },
    };
    let applied = decide(&state, &caller, &org_id, &proposal, body.dry_run, &headers).await?;
    if body.dry_run {
        return Ok((
            StatusCode::OK,
            Json(ReleaseOutcome {
                dry_run: true,
                release: None,
                impact: applied.impact,
                confirmation_token: applied.confirmation_token,
            }),
        ));
    }
    let created = applied
        .release
        .ok_or_else(|| ApiError::not_found("Release not found"))?;
    let row = queries::get_release(&state.pool, created.id)
        .await?
        .ok_or_else(|| ApiError::not_found("Release not found"))?;
    Ok((
        StatusCode::CREATED,
        Json(ReleaseOutcome {
            dry_run: false,
            release: Some(row.into()),
            impact: applied.impact,
            confirmation_token: None,
        }),
    ))
}

/// Decides a change of the org's releases through the store's one decision (`firmware::apply_counting`):
/// its impact counted where the devices are held, written unless `dry_run`, and gated by the org's
/// retarget cap with the request's `Cohort-Confirm` token.
pub(super) async fn decide(
    state: &ApiState,
    caller: &Caller,
    org_id: &str,
    proposal: &Proposal,
    dry_run: bool,
    headers: &HeaderMap,
) -> Result<firmware::Applied, ApiError> {
    let held = held_devices(state).await?;
    Ok(firmware::apply_counting(
        &state.pool,
        org_id,
        proposal,
        &caller.actor(),
        IMPACT_SAMPLE,
        mode(dry_run),
        Some(&held as &dyn HeldDevices),
        &confirmation(headers),
    )
    .await?)
}

/// Where the impact's devices are counted in memory: by the worker in this process for the partitions it
/// holds, and by the workers holding the others (the partitions no worker counted are read from
/// PostgreSQL). A partition whose worker has not yet applied every control-log entry committed before
/// this request — a static member just added, a pin, another release — is read from PostgreSQL, which
/// already holds them: an impact counts every change committed before it was asked for.
pub(crate) async fn held_devices(state: &ApiState) -> Result<InMemory, ApiError> {
    let live_workers::PartitionOwners { owners, behind } =
        live_workers::partition_owners(&state.pool, &state.input_topic, FRESH_WITHIN).await?;
    Ok(InMemory {
        view: state.view.clone(),
        catalogue: state.catalogue.clone(),
        owner: state.owner.clone(),
        owners,
        behind,
        timeout: state.peer_timeout,
        slots: state.memory_preview_slots.clone(),
    })
}

/// The workers' devices, as the impact counts them.
pub(crate) struct InMemory {
    /// The worker's in this process, if it runs one.
    view: Option<FleetView>,
    catalogue: Arc<Catalogue>,
    /// The name of the worker in this process.
    owner: Option<String>,
    /// Every partition of the input topic, with its owner if that worker is live.
    owners: Vec<(i32, Option<LiveWorker>)>,
    /// The partitions whose workers have not applied every control-log entry committed before the
    /// request: counted from PostgreSQL, not from memory.
    behind: Vec<i32>,
    /// How long a peer worker may take (`api.peer_timeout_ms`).
    timeout: Duration,
    /// This process's bound on evaluations in memory (`ApiState::memory_preview_slots`).
    slots: Arc<tokio::sync::Semaphore>,
}

impl HeldDevices for InMemory {
    fn count<'a>(
        &'a self,
        org_id: &'a str,
        target: ReleaseTarget,
        releases: &'a Releases,
        impact: &'a mut Impact,
        sample: usize,
    ) -> Counting<'a> {
        Box::pin(async move {
            let group = match target {
                ReleaseTarget::Group(g) => Some(g),
                ReleaseTarget::Default => None,
            };
            let mut answered = BTreeSet::new();
            let current: Vec<i32> = self
                .owners
                .iter()
                .map(|(p, _)| *p)
                .filter(|p| !self.behind.contains(p))
                .collect();
            if let Some(view) = self.view.as_ref().filter(|v| !v.held().is_empty()) {
                // Counted on a blocking thread under the process's bound on in-memory evaluations; if
                // that fails, these partitions are read from PostgreSQL like any unanswered one.
                let own = internal::impact_in_memory(
                    view,
                    &self.catalogue,
                    &self.slots,
                    org_id.to_string(),
                    group,
                    current,
                    releases.clone(),
                    sample,
                )
                .await;
                if let Ok(own) = own {
                    impact.merge(own.impact, sample);
                    answered.extend(own.partitions);
                }
            }
            let question = |partitions| ImpactRequest {
                org: org_id.to_string(),
                group,
                releases: releases.to_wire(),
                sample,
                partitions,
            };
            // A partition behind is asked of no worker.
            let others: Vec<ImpactAnswer> = peers::ask_the_rest(
                &self.owners,
                &mut answered,
                &self.behind,
                self.owner.as_deref(),
                IMPACT_PATH,
                question,
                self.timeout,
            )
            .await;
            for part in others {
                impact.merge(part.impact, sample);
            }
            if answered.is_empty() {
                return None;
            }
            Some(peers::unanswered(&self.owners, &answered))
        })
    }
}

/// A request's `dry_run` flag as the store's mode: the same decision either way, written only without it.
pub(crate) fn mode(dry_run: bool) -> Mode {
    if dry_run {
        Mode::DryRun
    } else {
        Mode::Write
    }
}

/// `?dryRun=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WithdrawParams {
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// Withdraw a live release (`dryRun=true`: only the impact).
#[utoipa::path(delete, path = "/api/v1/releases/{id}", tag = "releases", params(("id" = Uuid, Path), WithdrawParams,
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the withdrawal retargets more devices than the org's retarget cap")),
    responses((status = 200, body = ReleaseOutcome), (status = 404, body = ErrorBody),
        (status = 409, description = "Over the org's retarget cap without a valid Cohort-Confirm token (`retarget_cap_exceeded`, with `cap` and `impact`)", body = ErrorBody)))]
pub async fn withdraw(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    Query(params): Query<WithdrawParams>,
    headers: HeaderMap,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    let proposal = Proposal::Withdraw { release: id };
    release_health::answer(&state, &caller, id, &headers, params.dry_run, proposal).await
}
