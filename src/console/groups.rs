//! The groups: the hierarchy as a tree with search, and a group's page — its filter as a readable tree,
//! members page by page, the membership log with reasons and causes, pins, and static batches.

use std::collections::{BTreeMap, HashSet};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Extension, Form, Path as AxumPath, Query as AxumQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::layout::{self, bad_form, filter_tree, seg, when, Failure};
use super::session::Signed;
use crate::api::error::{Json, Path, Query};
use crate::api::groups::{self as api_groups, GroupView, ListParams};
use crate::api::log::{self as api_log, LogParams};
use crate::api::members::{self as api_members, DeviceIdentifier, MemberBatch, PageParams};
use crate::api::ApiState;

/// Groups listed on one page of the tree.
const GROUPS_PER_PAGE: i64 = 200;
/// Members and log entries on one page of a group.
const ROWS_PER_PAGE: i64 = 50;

/// A query string, or a 400 page.
pub(super) fn query<T>(q: Result<AxumQuery<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|AxumQuery(t)| t).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("The address's query could not be read: {}", e.body_text()),
        )
    })
}

/// A form, or a 400 page.
pub(super) fn form<T>(f: Result<Form<T>, FormRejection>) -> Result<T, Failure> {
    f.map(|Form(t)| t).map_err(bad_form)
}

/// A redirect after a change (303: the browser follows with a GET).
pub(super) fn see_other(to: &str) -> Response {
    let mut response = Redirect::to(to).into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

/// The tree's search.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    search: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    tags: String,
    offset: Option<i64>,
}

/// The group hierarchy (one page of groups by name; a group whose parent is on another page is shown at
/// the top level, beside its parent's name).
pub async fn list(
    State(state): State<ApiState>,
    signed: Signed,
    q: Result<AxumQuery<ListQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let offset = q.offset.unwrap_or(0);
    let params = ListParams {
        limit: Some(GROUPS_PER_PAGE),
        offset: Some(offset),
        kind: Some(q.kind.clone()).filter(|k| !k.is_empty()),
        site_id: None,
        parent_id: None,
        tags: Some(q.tags.clone()).filter(|t| !t.trim().is_empty()),
        search: Some(q.search.clone()).filter(|s| !s.is_empty()),
        org_id: None,
    };
    let Json(listed) = api_groups::list(
        State(state),
        Extension(signed.caller.clone()),
        Query(params),
    )
    .await?;
    let on_page: HashSet<Uuid> = listed.groups.iter().map(|g| g.id).collect();
    let mut children: BTreeMap<Option<Uuid>, Vec<&GroupView>> = BTreeMap::new();
    for g in &listed.groups {
        let parent = g.parent_id.filter(|p| on_page.contains(p));
        children.entry(parent).or_default().push(g);
    }
    let more = offset + (listed.groups.len() as i64) < listed.total;
    let next = format!(
        "/console/groups?search={}&type={}&tags={}&offset={}",
        seg(&q.search),
        seg(&q.kind),
        seg(&q.tags),
        offset + GROUPS_PER_PAGE
    );
    let body = html! {
        div.bar {
            h1 { "Groups" }
            a.button #new-group href="/console/groups/new" { "New dynamic group" }
        }
        form.search method="get" action="/console/groups" {
            input #search type="search" name="search" value=(q.search) placeholder="Name contains";
            select name="type" {
                option value="" selected[q.kind.is_empty()] { "Any type" }
                option value="dynamic" selected[q.kind == "dynamic"] { "Dynamic" }
                option value="static" selected[q.kind == "static"] { "Static" }
            }
            input type="text" name="tags" value=(q.tags) placeholder="Tags (comma-separated)";
            button #search-groups type="submit" { "Search" }
        }
        p #group-total { (listed.total) " group" @if listed.total != 1 { "s" } }
        ul.tree #groups { (branch(&children, None)) }
        @if more { p { a #next-groups href=(next) { "Next groups" } } }
    };
    Ok(layout::page("Groups", &signed, body))
}

fn branch(children: &BTreeMap<Option<Uuid>, Vec<&GroupView>>, parent: Option<Uuid>) -> Markup {
    html! {
        @for g in children.get(&parent).map(Vec::as_slice).unwrap_or(&[]) {
            li.group data-group=(g.id) {
                a href=(format!("/console/groups/{}", g.id)) { (g.name) }
                " " span.badge { (g.kind) }
                " " span.count { (g.device_count) " devices" }
                @for t in &g.tags { " " span.tag { (t) } }
                @if parent.is_none() && g.parent_id.is_some() { " " span.muted { "(in another group)" } }
                @if children.contains_key(&Some(g.id)) { ul { (branch(children, Some(g.id))) } }
            }
        }
    }
}

/// A group page's cursors and the notice of the change just made.
#[derive(Debug, Default, Deserialize)]
pub struct GroupQuery {
    after: Option<String>,
    before: Option<String>,
    notice: Option<String>,
}

/// A group: its definition, members, log, and the forms that change it.
pub async fn show(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
    q: Result<AxumQuery<GroupQuery>, QueryRejection>,
) -> Result<Response, Failure> {
    let q = query(q)?;
    let caller = Extension(signed.caller.clone());
    let Json(group) =
        api_groups::get_one(State(state.clone()), caller.clone(), Path(id.clone())).await?;
    let parent = match group.parent_id {
        Some(p) => api_groups::get_one(State(state.clone()), caller.clone(), Path(p.to_string()))
            .await
            .ok()
            .map(|Json(p)| p),
        None => None,
    };
    let members_params = PageParams {
        limit: Some(ROWS_PER_PAGE),
        offset: None,
        after: q.after.clone(),
    };
    let Json(members) = api_members::list(
        State(state.clone()),
        caller.clone(),
        Path(id.clone()),
        Query(members_params),
    )
    .await?;
    let log_params = LogParams {
        device_id: None,
        action: None,
        limit: Some(ROWS_PER_PAGE),
        offset: None,
        before: q.before.clone(),
    };
    let Json(log) =
        api_log::membership_log(State(state), caller, Path(id.clone()), Query(log_params)).await?;
    let dynamic = group.kind == "dynamic";
    let base = format!("/console/groups/{}", group.id);
    let body = html! {
        div.bar {
            h1 #group-name { (group.name) }
            @if dynamic { a.button #edit-group href=(format!("{base}/edit")) { "Edit" } }
        }
        @if let Some(notice) = &q.notice { p.notice #notice { (notice) } }
        dl.facts {
            dt { "Type" } dd #group-type { (group.kind) }
            dt { "Devices" } dd #device-count { (group.device_count) }
            dt { "Version" } dd { (group.version) }
            @if !group.tags.is_empty() { dt { "Tags" } dd { @for t in &group.tags { span.tag { (t) } " " } } }
            @if !group.description.is_empty() { dt { "Description" } dd { (group.description) } }
            @if let Some(site) = &group.site_id { dt { "Site" } dd { (site) } }
            @if let Some(p) = &parent { dt { "Parent" } dd { a href=(format!("/console/groups/{}", p.id)) { (p.name) } } }
        }
        @if let Some(filter) = &group.filter_conditions {
            h2 { "Filter" }
            div.filter #filter { (filter_tree(filter)) }
        }
        h2 { "Members" }
        p.muted #member-total { (members.total) " member" @if members.total != 1 { "s" } }
        table #members {
            thead { tr { th { "Device" } th { "Hostname" } th { "Status" } th { "Added by" } th { "Added" }
                @if dynamic { th { "Pinned" } } } }
            tbody { @for m in &members.data {
                tr data-device=(m.device_id) {
                    td { a href=(format!("/console/devices/{}", seg(&m.device_id))) { (m.device_id) } }
                    td { (m.hostname.as_deref().unwrap_or("—")) }
                    td { (m.status.as_deref().unwrap_or("—")) }
                    td { (m.added_by) }
                    td { (when(&m.added_at)) }
                    @if dynamic { td { (pin_form(&signed, &base, &m.device_id, !m.is_pinned)) } }
                }
            } }
        }
        @if let Some(after) = &members.next_after {
            p { a #next-members href=(format!("{base}?after={}", seg(after))) { "Next members" } }
        }
        @if dynamic {
            h3 { "Pin a device" }
            p.muted { "A pinned device stays in the group (or joins it) whether or not it matches; \
                       unpinning re-evaluates it at once." }
            form.inline method="post" action=(format!("{base}/pins")) {
                input type="hidden" name="csrf" value=(signed.csrf);
                input type="hidden" name="pin" value="pin";
                input #pin-device type="text" name="device" placeholder="Device id" required;
                button #pin type="submit" { "Pin" }
            }
        } @else {
            h3 { "Add or remove devices" }
            form.batch #batch method="post" action=(format!("{base}/members")) {
                input type="hidden" name="csrf" value=(signed.csrf);
                label for="device-ids" { "Device ids, one per line" }
                textarea #device-ids name="device_ids" rows="4" {}
                label for="identifiers" { "Cellular identifiers, one per line as kind:value (imei, iccid, esn, mdn, meid, msisdn)" }
                textarea #identifiers name="identifiers" rows="3" {}
                div {
                    button #add-members type="submit" name="action" value="add" { "Add to the group" }
                    button #remove-members type="submit" name="action" value="remove" { "Remove from the group" }
                }
            }
        }
        h2 { "Membership log" }
        table #log {
            thead { tr { th { "When" } th { "Device" } th { "Action" } th { "Reason" } th { "Cause" } th { "Version" } } }
            tbody { @for e in &log.entries {
                tr {
                    td { (when(&e.created_at)) }
                    td { a href=(format!("/console/devices/{}", seg(&e.device_id))) { (e.device_id) } }
                    td { (e.action) }
                    td.reason { (e.reason) }
                    td { (cause(&e.cause)) }
                    td { (e.group_version) }
                }
            } }
        }
        @if let Some(before) = &log.next_before {
            p { a #older-log href=(format!("{base}?before={before}")) { "Older entries" } }
        }
    };
    Ok(layout::page(&group.name, &signed, body))
}

fn pin_form(signed: &Signed, base: &str, device: &str, pin: bool) -> Markup {
    html! {
        form.inline method="post" action=(format!("{base}/pins")) {
            input type="hidden" name="csrf" value=(signed.csrf);
            input type="hidden" name="device" value=(device);
            input type="hidden" name="pin" value=(if pin { "pin" } else { "unpin" });
            @if pin { span.muted { "no " } button.small type="submit" { "Pin" } }
            @else { span { "pinned " } button.small type="submit" { "Unpin" } }
        }
    }
}

/// A log entry's cause as text: its type, then its other fields.
fn cause(cause: &Value) -> String {
    let Some(fields) = cause.as_object() else {
        return layout::text(cause);
    };
    let kind = fields.get("type").map(layout::text).unwrap_or_default();
    let rest: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "type")
        .map(|(k, v)| format!("{k} {}", layout::text(v)))
        .collect();
    if rest.is_empty() {
        kind
    } else {
        format!("{kind}: {}", rest.join(", "))
    }
}

/// A static batch from the form.
#[derive(Debug, Deserialize)]
pub struct BatchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    device_ids: String,
    #[serde(default)]
    identifiers: String,
}

/// The identifiers of the form, one `kind:value` a line.
fn identifiers(raw: &str) -> Result<Vec<DeviceIdentifier>, Failure> {
    raw.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, line)| {
            let (kind, value) = line.split_once(':').unwrap_or((line, ""));
            serde_json::from_value(json!({"kind": kind.trim(), "identifier": value.trim()}))
                .map_err(|e| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!("Identifier line {}: {e}", i + 1),
                    )
                })
        })
        .collect()
}

/// Adds or removes a static group's devices, through the API's batch.
pub async fn batch(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
    f: Result<Form<BatchForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    signed.check(&f.csrf)?;
    let removal = match f.action.as_str() {
        "add" => false,
        "remove" => true,
        _ => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "Choose to add or to remove",
            ))
        }
    };
    let batch = MemberBatch {
        device_ids: f
            .device_ids
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        identifiers: identifiers(&f.identifiers)?,
        added_by: Some("console".into()),
        dry_run: false,
    };
    let (group, done) = api_members::apply_batch(
        &state,
        &signed.caller,
        &id,
        batch,
        removal,
        &HeaderMap::new(),
    )
    .await?;
    let notice = format!(
        "{} {} device{}, {} skipped; {} members now",
        if removal { "Removed" } else { "Added" },
        done.change.changed.len(),
        if done.change.changed.len() == 1 {
            ""
        } else {
            "s"
        },
        done.change.skipped.len(),
        done.change.total
    );
    Ok(see_other(&format!(
        "/console/groups/{}?notice={}",
        group.id,
        seg(&notice)
    )))
}

/// A pin or unpin from the form.
#[derive(Debug, Deserialize)]
pub struct PinForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    pin: String,
}

/// Pins or unpins a device in a dynamic group, through the API's pin.
pub async fn pin(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
    f: Result<Form<PinForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    signed.check(&f.csrf)?;
    let device = f.device.trim().to_string();
    let caller = Extension(signed.caller.clone());
    let path = Path((id.clone(), device.clone()));
    let pinned = match f.pin.as_str() {
        "pin" => true,
        "unpin" => false,
        _ => return Err(Failure::new(StatusCode::BAD_REQUEST, "Choose pin or unpin")),
    };
    if pinned {
        api_members::pin(State(state), caller, path).await?;
    } else {
        api_members::unpin(State(state), caller, path).await?;
    }
    let notice = format!(
        "{} {device}: the worker applies it in order with the device's events",
        if pinned { "Pinned" } else { "Unpinned" }
    );
    Ok(see_other(&format!(
        "/console/groups/{}?notice={}",
        seg(&id),
        seg(&notice)
    )))
}
