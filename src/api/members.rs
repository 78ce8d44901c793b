//! A group's members, in Breeze's words (`/api/v1/groups/{id}/devices…` and the device-scoped batch routes
//! `/api/v1/devices/groups/{id}/members`), and what every family's member routes share: the member record,
//! batch validation, cellular identifiers, and pins.

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::{snippet, Detail, ErrorBody, Json, Path, Query};
use super::group_changes::{gated_change, or_dry_run, Batched};

or_dry_run!(
    /// A batch's answer, or (`"dryRun": true`) what the batch would do.
    BatchAnswerOrDryRun,
    BatchAnswer
);
use super::groups::visible;
use super::retarget_cap::DryRunParams;
use super::{next_cursor, page, ApiError, ApiState};
use crate::store::api::{self as queries, GroupRow, MemberRow};
use crate::store::groups;
use crate::store::members::{self, IdentifierKind, MemberError, Partial, StaticChange};

/// `/api/v1/groups/{id}/devices…`: members, static additions and removals, pins.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/{id}/devices", get(list).post(add))
        .route("/{id}/devices/{device_id}", delete(remove_one))
        .route("/{id}/devices/{device_id}/pin", post(pin).delete(unpin))
}

/// Most devices one batch may name.
pub const MAX_BATCH: usize = 10_000;

/// Declares a member record (a member with the device's key attributes as top-level fields) whose fields
/// are named in `$case`: each family of routes names them in its own words from the one list here.
macro_rules! member_record {
    ($(#[$doc:meta])* $name:ident, $case:tt) => {
        $(#[$doc])*
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        #[serde(rename_all = $case)]
        pub struct $name {
            pub device_id: String,
            pub hostname: Option<String>,
            pub display_name: Option<String>,
            /// `online`, `offline`, `maintenance` or `decommissioned`.
            pub status: Option<String>,
            pub os_type: Option<String>,
            /// Whether the device is pinned (dynamic groups only).
            pub is_pinned: bool,
            pub added_at: chrono::DateTime<chrono::Utc>,
            /// `manual`, `dynamic_rule` or `policy`.
            pub added_by: String,
            pub platform: Option<String>,
            pub firmware_version: Option<String>,
            pub site_id: Option<String>,
            pub last_seen_at: Option<String>,
        }

        impl From<$crate::store::api::MemberRow> for $name {
            fn from(m: $crate::store::api::MemberRow) -> Self {
                let text = |field: &str| {
                    m.attributes
                        .get(field)
                        .and_then($crate::api::members::display_text)
                };
                Self {
                    hostname: text("hostname"),
                    display_name: text("displayName"),
                    status: text("status"),
                    os_type: text("osType"),
                    platform: text("platform"),
                    firmware_version: text("firmwareVersion"),
                    site_id: text("siteId"),
                    last_seen_at: text("lastSeenAt"),
                    device_id: m.device_id,
                    is_pinned: m.is_pinned,
                    added_at: m.added_at,
                    added_by: m.added_by,
                }
            }
        }
    };
}
pub(crate) use member_record;

member_record!(
    /// A member of a group, with the device's key attributes as top-level fields.
    MemberRecord,
    "camelCase"
);

/// An attribute as display text: strings as they are, numbers and booleans written out.
pub(crate) fn display_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A page of members, by device id.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberPage {
    pub data: Vec<MemberRecord>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
    /// The `after` of the next page (the last member's device id) when this page is full; absent at the
    /// end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Pagination of members.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1–1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Members to skip (after `after`); prefer `after` for deep pages.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Only members whose device id sorts after this one: a page's `nextAfter`.
    pub after: Option<String>,
}

/// One page of a visible group's members: the rows, the total, the page and the next cursor.
pub(crate) async fn member_page(
    state: &ApiState,
    group: &GroupRow,
    params: PageParams,
) -> Result<(Vec<MemberRow>, i64, i64, i64, Option<String>), ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 100, 1000)?;
    let (rows, total) = queries::list_members(
        &state.pool,
        group.id,
        params.after.as_deref(),
        limit,
        offset,
    )
    .await?;
    let next_after = next_cursor(&rows, limit, |last| last.device_id.clone());
    Ok((rows, total, limit, offset, next_after))
}

/// List a group's members, by device id.
#[utoipa::path(get, path = "/api/v1/groups/{id}/devices", tag = "members",
    params(("id" = String, Path), PageParams),
    responses((status = 200, body = MemberPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Json<MemberPage>, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let (rows, total, limit, offset, next_after) = member_page(&state, &group, params).await?;
    Ok(Json(MemberPage {
        data: rows.into_iter().map(MemberRecord::from).collect(),
        total,
        limit,
        offset,
        next_after,
    }))
}

/// A device named by an identifier its cellular platform uses.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentifier {
    /// `imei`, `iccid`, `esn`, `mdn`, `meid` or `msisdn`, in any case.
    #[schema(value_type = String,
        pattern = "^([Ii][Mm][Ee][Ii]|[Ii][Cc][Cc][Ii][Dd]|[Ee][Ss][Nn]|[Mm][Dd][Nn]|[Mm][Ee][Ii][Dd]|[Mm][Ss][Ii][Ss][Dd][Nn])$")]
    pub kind: IdentifierKind,
    pub identifier: String,
}

/// Devices to add or remove, by id and/or by cellular identifier.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberBatch {
    #[serde(default, alias = "device_ids")]
    #[serde(rename = "deviceIds")]
    #[schema(max_items = 10000)]
    pub device_ids: Vec<String>,
    #[serde(default)]
    #[schema(max_items = 10000)]
    pub identifiers: Vec<DeviceIdentifier>,
    /// Who is making the change (recorded in the membership log beside the API key).
    #[serde(alias = "added_by")]
    #[serde(rename = "addedBy")]
    #[schema(min_length = 1, max_length = 255)]
    pub added_by: Option<String>,
    /// Decide the batch exactly as without it — the same refusals — but write nothing: answer its
    /// firmware impact (and, over the org's retarget cap, a `confirmationToken`).
    #[serde(default, rename = "dryRun", alias = "dry_run")]
    pub dry_run: bool,
}

/// The counts Breeze answers a batch with.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCounts {
    /// Devices added (absent for a removal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub added: Option<usize>,
    /// Devices removed (absent for an addition).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<usize>,
    /// Devices already members (for a removal: not members).
    pub skipped: usize,
    /// The group's members afterwards.
    pub total: i64,
}

/// `{"data": {"added", "skipped", "total"}}` (a removal: `removed` instead of `added`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub data: BatchCounts,
}

impl BatchAnswer {
    pub(crate) fn new(change: &StaticChange, removal: bool) -> Self {
        let done = Some(change.changed.len());
        Self {
            data: BatchCounts {
                added: if removal { None } else { done },
                removed: if removal { done } else { None },
                skipped: change.skipped.len(),
                total: change.total,
            },
        }
    }
}

/// The actor recorded for a change: the key, and the label the caller gave.
pub(crate) fn actor(caller: &Caller, given: Option<String>) -> Result<String, ApiError> {
    match given {
        None => Ok(caller.actor()),
        Some(a) if !a.trim().is_empty() && a.chars().count() <= 255 => {
            Ok(format!("{} ({})", a.trim(), caller.actor()))
        }
        Some(_) => Err(ApiError::bad_request(
            "added_by must be 1 to 255 characters",
        )),
    }
}

pub(crate) fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        Err(format!(
            "device ids must be 1 to 256 bytes, got {} bytes",
            id.len()
        ))
    } else {
        Ok(())
    }
}

/// Validates the batch and resolves identifiers to device ids (input order, identifiers after ids). An
/// identifier no device of the org reports refuses the batch, like an unknown device id.
pub(crate) async fn resolve_batch(
    state: &ApiState,
    org_id: &str,
    device_ids: Vec<String>,
    identifiers: Vec<DeviceIdentifier>,
) -> Result<Vec<String>, ApiError> {
    let n = device_ids.len() + identifiers.len();
    if n == 0 {
        return Err(ApiError::bad_request(
            "Name at least one device in deviceIds or identifiers",
        ));
    }
    if n > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "At most {MAX_BATCH} devices per batch, got {n}"
        )));
    }
    // Lazily (`with_details` builds no more problems than it lists), and in a block: the iterator is not
    // held across an await.
    {
        let mut problems = device_ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let message = check_device_id(id).err()?;
                Some(Detail::at(format!("deviceIds[{i}]"), message))
            })
            .chain(identifiers.iter().enumerate().filter_map(|(i, ident)| {
                let message = ident.kind.validate(&ident.identifier).err()?;
                Some(Detail::at(format!("identifiers[{i}]"), message))
            }))
            .peekable();
        if problems.peek().is_some() {
            return Err(
                ApiError::bad_request("Invalid devices in the batch").with_details(problems)
            );
        }
    }
    let mut ids = device_ids;
    if !identifiers.is_empty() {
        let pairs: Vec<(IdentifierKind, String)> = identifiers
            .iter()
            .map(|i| (i.kind, i.identifier.clone()))
            .collect();
        let resolved = members::resolve_identifiers(&state.pool, org_id, &pairs).await?;
        let mut unknown = Vec::new();
        for (i, (ident, device)) in identifiers.iter().zip(resolved).enumerate() {
            match device {
                Some(id) => ids.push(id),
                None => unknown.push((i, ident)),
            }
        }
        if !unknown.is_empty() {
            let details = unknown.into_iter().map(|(i, ident)| {
                Detail::at(
                    format!("identifiers[{i}]"),
                    format!(
                        "No device of the org reports {} {}",
                        ident.kind.label(),
                        snippet(&ident.identifier, 64)
                    ),
                )
            });
            return Err(
                ApiError::bad_request("Devices not found in the group's organization")
                    .with_details(details),
            );
        }
    }
    Ok(ids)
}

/// Adds (or removes) the batch's devices to (from) a static group, all or nothing: a device unknown in the
/// org, or of another site, refuses the batch (400, each listed).
async fn change_static(
    state: &ApiState,
    caller: &Caller,
    group: &GroupRow,
    batch: MemberBatch,
    removal: bool,
    headers: &HeaderMap,
) -> Result<Batched, ApiError> {
    let actor = actor(caller, batch.added_by)?;
    let ids = resolve_batch(state, &group.org_id, batch.device_ids, batch.identifiers).await?;
    let how = (batch.dry_run, headers);
    gated_change(state, group, &ids, &actor, Partial::Refused, removal, how).await
}

/// A batch refused because some devices are unknown in the org (or of another site): every one listed.
pub(crate) fn refusal(e: MemberError) -> ApiError {
    match e {
        MemberError::Refused(change) => {
            let details = change
                .not_found
                .iter()
                .map(|id| Detail::device(id, "Device not found in the group's organization"))
                .chain(
                    change
                        .wrong_site
                        .iter()
                        .map(|id| Detail::device(id, "Device not in the group's site")),
                );
            ApiError::bad_request(
                "Devices not found in the group's organization (or not of its site); nothing was changed",
            )
            .with_details(details)
        }
        other => other.into(),
    }
}

/// Applies a batch to the static group named in the path (as written there): the group and what changed.
pub(crate) async fn apply_batch(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    batch: MemberBatch,
    removal: bool,
    headers: &HeaderMap,
) -> Result<(GroupRow, Batched), ApiError> {
    let group = visible(state, caller, id).await?;
    let change = change_static(state, caller, &group, batch, removal, headers).await?;
    Ok((group, change))
}

/// Applies a batch and answers Breeze's counts.
async fn batch(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    (batch, headers): (MemberBatch, &HeaderMap),
    removal: bool,
) -> Result<Response, ApiError> {
    let (_, change) = apply_batch(state, caller, id, batch, removal, headers).await?;
    Ok(change.answer(|change| BatchAnswer::new(&change, removal)))
}

/// Add devices to a static group (duplicates and members already are skipped). Every addition is logged
/// with reason `manual`; workers then re-resolve the devices' firmware.
#[utoipa::path(post, path = "/api/v1/groups/{id}/devices", tag = "members", params(("id" = String, Path),
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    request_body = MemberBatch,
    responses((status = 200, body = BatchAnswerOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MemberBatch>,
) -> Result<Response, ApiError> {
    batch(&state, &caller, &id, (body, &headers), false).await
}

/// Removes one device from a static group (or, `dry_run`, answers what that does); 404 when it is not a
/// member.
pub(crate) async fn remove_member(
    state: &ApiState,
    caller: &Caller,
    group: &GroupRow,
    device_id: &str,
    how: (bool, &HeaderMap),
) -> Result<Batched, ApiError> {
    let ids = [device_id.to_string()];
    let actor = caller.actor();
    let batched = gated_change(state, group, &ids, &actor, Partial::Allowed, true, how).await?;
    if batched.change.changed.is_empty() {
        return Err(ApiError::not_found(
            "Device not found, or not a member of this group",
        ));
    }
    Ok(batched)
}

/// Remove one device from a static group (`dryRun=true`: only its firmware impact).
#[utoipa::path(delete, path = "/api/v1/groups/{id}/devices/{device_id}", tag = "members",
    params(("id" = String, Path), ("device_id" = String, Path), DryRunParams,
        ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")),
    responses((status = 200, body = BatchAnswerOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn remove_one(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(String, String)>,
    Query(params): Query<DryRunParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let group = visible(&state, &caller, &id).await?;
    let how = (params.dry_run, &headers);
    let change = remove_member(&state, &caller, &group, &device_id, how).await?;
    Ok(change.answer(|change| BatchAnswer::new(&change, true)))
}

/// Add devices to a static group in bulk (the device-scoped route).
#[utoipa::path(post, path = "/api/v1/devices/groups/{id}/members", tag = "device-scoped",
    params(("id" = String, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")), request_body = MemberBatch,
    responses((status = 200, body = BatchAnswerOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add_bulk(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MemberBatch>,
) -> Result<Response, ApiError> {
    batch(&state, &caller, &id, (body, &headers), false).await
}

/// Remove devices from a static group in bulk (devices that are not members are skipped).
#[utoipa::path(delete, path = "/api/v1/devices/groups/{id}/members", tag = "device-scoped",
    params(("id" = String, Path), ("Cohort-Confirm" = Option<String>, Header,
        description = "A dry run's confirmationToken: needed when the change retargets more devices than the org's retarget cap")), request_body = MemberBatch,
    responses((status = 200, body = BatchAnswerOrDryRun), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn remove_bulk(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<MemberBatch>,
) -> Result<Response, ApiError> {
    batch(&state, &caller, &id, (body, &headers), true).await
}

/// A pin or unpin accepted: the owning worker applies it in order with the device's events.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub status: &'static str,
    /// The control-log entry carrying the change.
    pub control_id: i64,
}

async fn set_pin(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    device_id: &str,
    pin: bool,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let group = visible(state, caller, id).await?;
    if group.kind != "dynamic" {
        return Err(ApiError::bad_request(
            "Pins apply to dynamic groups only (static membership is managed directly)",
        ));
    }
    let found = queries::device_orgs(&state.pool, &[device_id.to_string()]).await?;
    if !found.iter().any(|(_, org)| *org == group.org_id) {
        return Err(ApiError::not_found("Device not found"));
    }
    let control_id =
        groups::set_pin(&state.pool, group.id, device_id, pin, &caller.actor()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "accepted",
            control_id,
        }),
    ))
}

/// Pin a device in a dynamic group: it stays (or is added) even when it does not match.
#[utoipa::path(post, path = "/api/v1/groups/{id}/devices/{device_id}/pin", tag = "members",
    params(("id" = String, Path), ("device_id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn pin(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    set_pin(&state, &caller, &id, &device_id, true).await
}

/// Unpin a device: if it no longer matches, it leaves at once (reason `unpinned`).
#[utoipa::path(delete, path = "/api/v1/groups/{id}/devices/{device_id}/pin", tag = "members",
    params(("id" = String, Path), ("device_id" = String, Path)),
    responses((status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unpin(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, device_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    set_pin(&state, &caller, &id, &device_id, false).await
}
