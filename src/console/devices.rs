//! A device: its attributes, its groups, its resolved firmware with the reason, and for each dynamic group
//! whether it matches and why, condition by condition — the API's device view, rendered.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path as AxumPath, Query as AxumQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::groups::{query, see_other};
use super::layout::{self, explanation_tree, seg, when, Failure};
use super::session::Signed;
use crate::api::devices as api_devices;
use crate::api::error::{Json, Path};
use crate::api::ApiState;

/// The device lookup's query.
#[derive(Debug, Deserialize)]
pub struct FindQuery {
    #[serde(default)]
    id: String,
}

/// Opens the device named in the lookup box.
pub async fn find(
    _signed: Signed,
    q: Result<AxumQuery<FindQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let id = query(q)?.id.trim().to_string();
    if id.is_empty() {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "Name a device id"));
    }
    Ok(see_other(&format!("/console/devices/{}", seg(&id))))
}

/// A device's page.
pub async fn show(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
) -> Result<Response, Failure> {
    let Json(device) =
        api_devices::view(State(state), Extension(signed.caller.clone()), Path(id)).await?;
    let attributes: Vec<(&String, &serde_json::Value)> = device
        .attributes
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    let fw = &device.firmware;
    let group_name = |id: uuid::Uuid| {
        device
            .groups
            .iter()
            .find(|g| g.group_id == id)
            .map(|g| g.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let body = html! {
        h1 #device-id { (device.id) }
        p.muted { "Evaluated at " (device.evaluated_at) "; last change " (when(&device.updated_at))
            ", event sequence " (device.sequence) ", partition " (device.partition) }
        h2 { "Firmware" }
        dl.facts #firmware {
            dt { "Target" } dd #target-version { (fw.target_version.as_deref().unwrap_or("none")) }
            dt { "Reason" } dd #target-reason { (fw.reason) }
            @if let Some(g) = fw.group_id {
                dt { "Decided by" } dd { a href=(format!("/console/groups/{g}")) { (group_name(g)) } }
            }
            dt { "Rollout events" } dd #target-sequence { (fw.target_sequence) }
            @if let Some(lock) = &fw.firmware_lock { dt { "Locked to" } dd { (lock) } }
            dt { "Development device" } dd { @if fw.is_development { "yes" } @else { "no" } }
        }
        @if !fw.releases.is_empty() {
            table #releases {
                thead { tr { th { "Release" } th { "Target" } th { "Stage" } th { "Selected" } th { "Why" } } }
                tbody { @for r in &fw.releases {
                    tr {
                        td { (r.version) @if r.deciding { " " span.badge { "deciding" } } }
                        td { @match r.group_id { Some(g) => { (group_name(g)) }, None => { "org default" } } }
                        td { (r.stage + 1) " (" (r.percentage) "%)" }
                        td { @if r.selected { "yes" } @else { "no" } }
                        td { (r.why) }
                    }
                } }
            }
        }
        h2 { "Groups" }
        table #device-groups {
            thead { tr { th { "Group" } th { "Type" } th { "Added by" } th { "Pinned" } th { "Since" } } }
            tbody { @for g in &device.groups {
                tr {
                    td { a href=(format!("/console/groups/{}", g.group_id)) { (g.name) } }
                    td { (g.kind) } td { (g.added_by) }
                    td { @if g.is_pinned { "yes" } @else { "no" } }
                    td { (when(&g.added_at)) }
                }
            } }
        }
        h2 { "Dynamic groups: does it match, and why" }
        @for g in &device.dynamic_groups {
            section.explain data-group=(g.group_id) {
                h3 {
                    a href=(format!("/console/groups/{}", g.group_id)) { (g.name) } " "
                    @if g.matches { span.yes.verdict { "matches" } } @else { span.no.verdict { "does not match" } }
                    @if g.is_member { " " span.badge { "member" } }
                }
                @if let Some(site) = &g.site_mismatch { p.no { (site) } }
                (explanation_tree(&g.explanation))
            }
        }
        h2 { "Attributes" }
        table #attributes {
            tbody { @for (k, v) in &attributes { tr { th { (k) } td { (layout::text(v)) } } } }
        }
    };
    Ok(layout::page(&device.id, &signed, body))
}
