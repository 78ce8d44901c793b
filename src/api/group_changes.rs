//! The group changes that can retarget devices, on every family's routes: an update (PATCH and PUT: a new
//! filter, site or type moves devices in or out of the group), a deletion, and a static change (its
//! routes are in [`super::members`] and [`super::device_groups`]; `gated_change` is what they share).
//! Each takes a dry run (`"dryRun": true` in a body, `?dryRun=true` on a route without one) answering its
//! firmware impact, and each is gated by the org's retarget cap: over it, the change needs the dry run's
//! token in `Cohort-Confirm` (see [`super::retarget_cap`]).

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::groups::{
    check_descriptive, group_id, parse_kind, visible, visible_group, GroupView, ReplaceGroup,
    UpdateGroup,
};
use super::members::refusal;
use super::releases::{held_devices, mode, IMPACT_SAMPLE};
use super::retarget_cap::{confirmation, DryRunParams};
use super::{ApiError, ApiState};
use crate::store::api::GroupRow;
use crate::store::firmware::{HeldDevices, Impact};
use crate::store::groups::{self, GroupPatch};
use crate::store::members::{self, Partial, StaticChange};

/// What a group change's dry run answers.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupDryRun {
    pub dry_run: bool,
    /// The change's firmware impact, as a release's: the devices whose resolved version changes because
    /// they join or leave the group, by `transitions`, with `impacted`, `downloads` and a `sample`. Only a
    /// group that carries a live release can retarget a device.
    #[schema(value_type = Object)]
    pub impact: Impact,
    /// When the impact exceeds the org's retarget cap: send the change again with this in the
    /// `Cohort-Confirm` header, within five minutes, to make it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub confirmation_token: Option<String>,
}

/// Declares the schema of a route's 200 answer that is either `$done` or, for a dry run, a
/// [`GroupDryRun`]: the OpenAPI document's `oneOf`. Only described, never built.
macro_rules! or_dry_run {
    ($(#[$doc:meta])* $name:ident, $done:ty) => {
        $(#[$doc])*
        #[derive(serde::Serialize, utoipa::ToSchema)]
        #[serde(untagged)]
        #[allow(dead_code)]
        pub enum $name {
            Done($done),
            DryRun($crate::api::group_changes::GroupDryRun),
        }
    };
}
pub(crate) use or_dry_run;

or_dry_run!(
    /// A group, or (`"dryRun": true`) what changing it would do.
    GroupOrDryRun,
    GroupView
);

/// A change made, or (a dry run) only answered.
pub(crate) enum Changed {
    Written(GroupRow),
    DryRun(GroupDryRun),
}

impl Changed {
    /// The answer: the group in the family's words (`view`), or the dry run's.
    pub(crate) fn answer<T: Serialize>(self, view: impl FnOnce(GroupRow) -> T) -> Response {
        match self {
            Changed::Written(row) => Json(view(row)).into_response(),
            Changed::DryRun(dry) => Json(dry).into_response(),
        }
    }
}

/// Applies a change to a group and reads it back — or, with `dryRun`, answers its impact only.
pub(crate) async fn update(
    state: &ApiState,
    caller: &Caller,
    id: Uuid,
    body: UpdateGroup,
    headers: &HeaderMap,
) -> Result<Changed, ApiError> {
    visible_group(state, caller, id).await?;
    let kind = body.kind.as_deref().map(parse_kind).transpose()?;
    check_descriptive(
        body.name.as_deref(),
        body.description.as_deref(),
        body.tags.as_deref(),
        body.site_id.clone().flatten().as_deref(),
    )?;
    let patch = GroupPatch {
        name: body.name.map(|n| n.trim().to_string()),
        description: body.description,
        tags: body.tags,
        site_id: body.site_id,
        parent_id: body.parent_id,
        filter: body.filter_conditions,
        kind,
        actor: Some(caller.actor()),
    };
    let updated = groups::update_group_confirmed(
        &state.pool,
        &state.catalogue,
        id,
        &patch,
        IMPACT_SAMPLE,
        &confirmation(headers),
        mode(body.dry_run),
    )
    .await?;
    if body.dry_run {
        return Ok(Changed::DryRun(GroupDryRun {
            dry_run: true,
            impact: updated.impact,
            confirmation_token: updated.confirmation_token,
        }));
    }
    Ok(Changed::Written(visible_group(state, caller, id).await?))
}

/// Update some fields of a group. `type` changes the group's type: a dynamic group turned static keeps
/// its current members (now manual, each logged); a static group turned dynamic needs `filterConditions`.
/// `"dryRun": true` answers the change's firmware impact instead; one that retargets more devices than the
/// org's retarget cap needs the dry run's token in `Cohort-Confirm`.
#[utoipa::path(patch, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path),
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    request_body = UpdateGroup,
    responses((status = 200, body = GroupOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "A name taken, or over the org's retarget cap without a valid Cohort-Confirm token (`retarget_cap_exceeded`, with `cap` and `impact`)", body = ErrorBody)))]
pub async fn patch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<UpdateGroup>,
) -> Result<Response, ApiError> {
    let id = group_id(&id)?;
    let changed = update(&state, &caller, id, body, &headers).await?;
    Ok(changed.answer(GroupView::from))
}

/// Replace a group: absent optional fields are cleared (description, tags, siteId, parentId); `name` is
/// required, and `filterConditions` for a dynamic group. `"dryRun": true` as with PATCH.
#[utoipa::path(put, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path),
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    request_body = ReplaceGroup,
    responses((status = 200, body = GroupOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn put(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ReplaceGroup>,
) -> Result<Response, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let dynamic = body.kind.as_deref().unwrap_or(&group.kind) == "dynamic";
    if dynamic && body.filter_conditions.is_none() {
        return Err(ApiError::bad_request(
            "filterConditions is required for a dynamic group",
        ));
    }
    let change = UpdateGroup {
        name: Some(body.name),
        description: Some(body.description),
        tags: Some(body.tags),
        site_id: Some(body.site_id),
        parent_id: Some(body.parent_id),
        kind: body.kind,
        filter_conditions: body.filter_conditions,
        dry_run: body.dry_run,
    };
    let changed = update(&state, &caller, group.id, change, &headers).await?;
    Ok(changed.answer(GroupView::from))
}

/// Delete a group: workers remove its memberships (each removal logged); its log is kept. `dryRun=true`
/// answers the deletion's firmware impact instead (200); a deletion that retargets more devices than the
/// org's retarget cap needs the dry run's token in `Cohort-Confirm`.
#[utoipa::path(delete, path = "/api/v1/groups/{id}", tag = "groups", params(("id" = String, Path), DryRunParams,
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the deletion retargets more devices than the org's retarget cap")),
    responses((status = 204), (status = 200, body = GroupDryRun), (status = 404, body = ErrorBody),
        (status = 409, description = "Child groups, or over the org's retarget cap without a valid Cohort-Confirm token (`retarget_cap_exceeded`, with `cap` and `impact`)", body = ErrorBody)))]
pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<DryRunParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let held = held_devices(&state).await?;
    let deletion = groups::delete_group_confirmed(
        &state.pool,
        group.id,
        IMPACT_SAMPLE,
        Some(&held as &dyn HeldDevices),
        &confirmation(&headers),
        mode(params.dry_run),
    )
    .await?;
    if !params.dry_run {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(GroupDryRun {
        dry_run: true,
        impact: deletion.impact,
        confirmation_token: deletion.confirmation_token,
    })
    .into_response())
}

/// A static change made, or (a dry run) only answered.
pub(crate) struct Batched {
    /// What was changed (for a dry run, what would be), for the checks a route makes of it.
    pub change: StaticChange,
    /// A dry run's answer.
    pub dry_run: Option<GroupDryRun>,
}

impl Batched {
    /// The answer: the change in the family's words (`view`), or the dry run's.
    pub(crate) fn answer<T: Serialize>(self, view: impl FnOnce(StaticChange) -> T) -> Response {
        match self.dry_run {
            None => Json(view(self.change)).into_response(),
            Some(dry) => Json(dry).into_response(),
        }
    }
}

/// Adds (or removes) devices to (from) a static group, gated by the org's retarget cap (`Cohort-Confirm`
/// in `headers`), or only answers the impact (`dry_run`).
pub(crate) async fn gated_change(
    state: &ApiState,
    group: &GroupRow,
    ids: &[String],
    actor: &str,
    partial: Partial,
    removal: bool,
    (dry_run, headers): (bool, &HeaderMap),
) -> Result<Batched, ApiError> {
    let confirmed = members::change_static_confirmed(
        &state.pool,
        &group.org_id,
        group.id,
        ids,
        actor,
        partial,
        removal,
        IMPACT_SAMPLE,
        &confirmation(headers),
        mode(dry_run),
    )
    .await
    .map_err(refusal)?;
    Ok(Batched {
        change: confirmed.change,
        dry_run: dry_run.then_some(GroupDryRun {
            dry_run: true,
            impact: confirmed.impact,
            confirmation_token: confirmed.confirmation_token,
        }),
    })
}
