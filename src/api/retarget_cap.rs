//! The org's retarget cap over the API: its setting (`GET` and `PATCH /api/v1/orgs/{org}/settings`), the
//! `Cohort-Confirm` header that carries a dry run's token with a change over the cap, and the 409 that
//! refuses such a change without one (`retarget_cap_exceeded`, with the cap and the impact).

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path};
use super::{ApiError, ApiState};
use crate::firmware::confirm::Unconfirmed;
use crate::store::api as queries;
use crate::store::retarget_cap::{self as cap, CapExceeded, Confirmation, MAX_RETARGET_CAP};

/// The header a change over the cap carries its dry run's `confirmationToken` in. A header, not a query
/// parameter: URLs are logged by proxies and kept in histories.
pub const CONFIRM_HEADER: &str = "cohort-confirm";

/// `/api/v1/orgs/{org}/settings`.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/{org}/settings", get(get_settings).patch(patch_settings))
}

/// The confirmation a request carries (`Cohort-Confirm`), checked now. A value that is not visible ASCII
/// cannot be a token cohort issued: it is kept empty, and refused as one that confirms nothing.
pub fn confirmation(headers: &HeaderMap) -> Confirmation {
    let token = headers
        .get(CONFIRM_HEADER)
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    Confirmation::with(token)
}

/// The 409 for a change over the cap: the cap, the impact, and what to do.
pub(crate) fn refusal(refused: CapExceeded) -> ApiError {
    let CapExceeded { cap, impact, why } = refused;
    let reason = match why {
        Unconfirmed::Missing => "unconfirmed",
        Unconfirmed::Expired => "expired",
        Unconfirmed::Mismatch => "mismatch",
    };
    metrics::counter!(crate::metrics::API_RETARGET_CAP_REFUSALS, "reason" => reason).increment(1);
    let over = format!(
        "this change would retarget {} device{}, more than the org's retarget cap of {cap}",
        impact.changed,
        if impact.changed == 1 { "" } else { "s" }
    );
    let message = match why {
        Unconfirmed::Missing => format!(
            "Confirmation needed: {over}. Send it as a dry run (\"dryRun\": true, or ?dryRun=true) to see \
             its impact, then repeat it with the dry run's confirmationToken in the Cohort-Confirm header"
        ),
        Unconfirmed::Expired => format!(
            "The Cohort-Confirm token has expired: {over}. Dry-run it again for a new token"
        ),
        Unconfirmed::Mismatch => format!(
            "The Cohort-Confirm token does not confirm this change as it is now (its impact changed since \
             the dry run, or the token is for another change): {over}. Dry-run it again and check the impact"
        ),
    };
    ApiError::cap_exceeded(message, cap, impact)
}

/// `?dryRun=` on a change that answers no body of its own (a group deletion).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DryRunParams {
    /// Decide the change exactly as without it — the same refusals — but write nothing: answer its
    /// firmware impact.
    #[serde(default, alias = "dry_run")]
    pub dry_run: bool,
}

/// An org's settings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgSettingsView {
    pub org_id: String,
    /// How many devices one change (a release, a withdrawal, a group's deletion, new definition or static
    /// batch) may retarget — change the resolved firmware version of — without confirmation; `null`: no cap (the
    /// default).
    pub retarget_cap: Option<i64>,
    /// When the settings were last changed (`null`: never, the defaults).
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// A change of an org's settings: absent fields are kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrgSettings {
    /// 0 to 10,000,000 devices, or `null` for no cap.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 10000000)]
    pub retarget_cap: Option<Option<i64>>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(deserializer).map(Some)
}

/// The org in the path, if the caller sees it and it exists (404 otherwise, as for any other org).
async fn visible_org(state: &ApiState, caller: &Caller, org: &str) -> Result<String, ApiError> {
    if caller.sees(org) && queries::org_exists(&state.pool, org).await? {
        Ok(org.to_string())
    } else {
        Err(ApiError::not_found("Org not found"))
    }
}

async fn view(state: &ApiState, org_id: String) -> Result<OrgSettingsView, ApiError> {
    let settings = cap::settings(&state.pool, &org_id).await?;
    Ok(OrgSettingsView {
        org_id,
        retarget_cap: settings.retarget_cap,
        updated_at: settings.updated_at,
        updated_by: settings.updated_by,
    })
}

/// An org's settings.
#[utoipa::path(get, path = "/api/v1/orgs/{org}/settings", tag = "orgs", params(("org" = String, Path)),
    responses((status = 200, body = OrgSettingsView), (status = 404, body = ErrorBody)))]
pub async fn get_settings(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(org): Path<String>,
) -> Result<Json<OrgSettingsView>, ApiError> {
    let org_id = visible_org(&state, &caller, &org).await?;
    Ok(Json(view(&state, org_id).await?))
}

/// Change an org's settings: `{"retargetCap": 500}` caps how many devices one change may retarget without
/// confirmation; `null` removes the cap.
#[utoipa::path(patch, path = "/api/v1/orgs/{org}/settings", tag = "orgs", params(("org" = String, Path)),
    request_body = UpdateOrgSettings,
    responses((status = 200, body = OrgSettingsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_settings(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(org): Path<String>,
    Json(body): Json<UpdateOrgSettings>,
) -> Result<Json<OrgSettingsView>, ApiError> {
    let org_id = visible_org(&state, &caller, &org).await?;
    if let Some(new_cap) = body.retarget_cap {
        if new_cap.is_some_and(|c| !(0..=MAX_RETARGET_CAP).contains(&c)) {
            return Err(ApiError::bad_request(format!(
                "retargetCap must be an integer from 0 to {MAX_RETARGET_CAP}, or null for no cap"
            )));
        }
        cap::set_retarget_cap(&state.pool, &org_id, new_cap, &caller.actor()).await?;
    }
    Ok(Json(view(&state, org_id).await?))
}
