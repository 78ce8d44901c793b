//! Staged releases over the API: a release's stages given as percentages of its target's devices
//! (`stages: [5, 25, 100]`, or `percentage: 10` for one stage), and `POST /api/v1/releases/{id}/advance`,
//! which moves a live release to its next stage (or the one named), with `dryRun` answering the impact —
//! the devices the larger stage adds — through the same decision as every release change.

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path};
use super::release_health::{act, optional_body};
use super::releases::ReleaseOutcome;
use super::{ApiError, ApiState};
use crate::firmware::WHOLE_SHARE;
use crate::store::firmware::{stages_from_percents, Proposal};

/// A release's stages from a request: `stages` (percentages, increasing), or `percentage` (one stage), or
/// neither (the whole target at once). Percentages are kept to a hundredth of a percent (basis points).
pub(super) fn requested(
    stages: Option<&[f64]>,
    percentage: Option<f64>,
) -> Result<Vec<u16>, ApiError> {
    let percents: &[f64] = match (stages, &percentage) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("Give stages or percentage, not both"))
        }
        (Some(stages), None) => stages,
        (None, Some(p)) => std::slice::from_ref(p),
        (None, None) => return Ok(vec![WHOLE_SHARE]),
    };
    stages_from_percents(percents).map_err(ApiError::bad_request)
}

/// Basis points as a percentage.
pub(super) fn percent(points: i32) -> f64 {
    f64::from(points) / 100.0
}

/// Move a release to a later stage.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdvanceRelease {
    /// The stage to move to (0 is the first); default the next one.
    pub stage: Option<u16>,
    /// Decide the advance exactly as without it, but write nothing: answer the impact.
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// Advance a live release to its next stage, or to a later one (`dryRun`: only the impact, the devices it
/// would add). Refused (400) when the release is at its last stage or the stage named is not ahead.
#[utoipa::path(post, path = "/api/v1/releases/{id}/advance", tag = "releases",
    params(("id" = Uuid, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the advance retargets more devices than the org's retarget cap")),
    request_body = Option<AdvanceRelease>,
    responses((status = 200, body = ReleaseOutcome), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Over the org's retarget cap without a valid Cohort-Confirm token (`retarget_cap_exceeded`, with `cap` and `impact`)", body = ErrorBody)))]
pub async fn advance(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ReleaseOutcome>, ApiError> {
    // The body is optional: none advances to the next stage.
    let body: AdvanceRelease = optional_body(&body)?;
    let proposal = Proposal::Advance {
        release: id,
        stage: body.stage,
    };
    let (mut release, applied) = act(&state, &caller, id, &headers, body.dry_run, proposal).await?;
    if let (true, Some(after)) = (body.dry_run, &applied.release) {
        // As it would be after the advance.
        release.stage = i32::from(after.stage);
    }
    Ok(Json(ReleaseOutcome::of(body.dry_run, release, applied)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_basis_points_and_anything_else_is_refused() {
        assert_eq!(requested(None, None).unwrap(), vec![10_000]);
        assert_eq!(requested(None, Some(10.0)).unwrap(), vec![1_000]);
        let stages = [0.5, 5.0, 25.0, 100.0];
        assert_eq!(
            requested(Some(&stages), None).unwrap(),
            vec![50, 500, 2_500, 10_000]
        );
        for bad in [0.0, -1.0, 100.5, 12.345, f64::NAN] {
            assert!(requested(None, Some(bad)).is_err(), "{bad}");
        }
        assert!(requested(Some(&[]), None).is_err());
        assert!(requested(Some(&[1.0; 11]), None).is_err());
        assert!(requested(Some(&[5.0]), Some(5.0)).is_err());
        assert_eq!(percent(2_500), 25.0);
    }
}
