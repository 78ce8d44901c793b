//! Releases: the org's releases with their stage, percentage, state and progress (their devices by
//! standing, from what the devices report), and releasing or withdrawing through a
//! confirmation screen — the API's dry run (version, target, the devices whose target changes by
//! transition, what they will download, a sample), then the change itself, carrying the dry run's
//! confirmation token as `Cohort-Confirm` when the org's retarget cap asks for one.

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, Form, Path as AxumPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::groups::form;
use super::layout::{self, seg, when, Failure};
use super::session::Signed;
use crate::api::error::{Json, Path, Query};
use crate::api::groups::{self as api_groups, ListParams as GroupParams};
use crate::api::release_health;
use crate::api::releases::{
    self as api_releases, CreateRelease, ListParams, ReleaseOutcome, ReleaseView, WithdrawParams,
};
use crate::api::retarget_cap::CONFIRM_HEADER;
use crate::api::ApiState;
use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::store::firmware::Impact;

/// Groups offered as a release's target.
const TARGET_CHOICES: i64 = 1000;

/// The org's group names by id (the first [`TARGET_CHOICES`] by name), for targets.
async fn group_names(state: &ApiState, signed: &Signed) -> Result<Vec<(Uuid, String)>, Failure> {
    let params = GroupParams {
        limit: Some(TARGET_CHOICES),
        offset: None,
        kind: None,
        site_id: None,
        parent_id: None,
        tags: None,
        search: None,
        org_id: None,
    };
    let Json(listed) = api_groups::list(
        State(state.clone()),
        Extension(signed.caller.clone()),
        Query(params),
    )
    .await?;
    Ok(listed.groups.into_iter().map(|g| (g.id, g.name)).collect())
}

fn target_name(names: &HashMap<Uuid, String>, group: Option<Uuid>) -> String {
    match group {
        None => "org default".to_string(),
        Some(g) => names.get(&g).cloned().unwrap_or_else(|| g.to_string()),
    }
}

/// Releases shown on the page.
const RELEASES_SHOWN: usize = 200;

/// Whether the list includes withdrawn releases.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    withdrawn: bool,
}

/// The org's releases, newest first: the live ones, or (`?withdrawn=true`) all, the first
/// [`RELEASES_SHOWN`] of them.
pub async fn list(
    State(state): State<ApiState>,
    signed: Signed,
    q: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let q = super::groups::query(q)?;
    let Json(mut listed) = api_releases::list(
        State(state.clone()),
        Extension(signed.caller.clone()),
        Query(ListParams {
            org_id: None,
            include_withdrawn: q.withdrawn,
        }),
    )
    .await?;
    let total = listed.releases.len();
    listed.releases.truncate(RELEASES_SHOWN);
    let names: HashMap<Uuid, String> = group_names(&state, &signed).await?.into_iter().collect();
    let body = html! {
        div.bar {
            h1 { "Releases" }
            a.button #new-release href="/console/releases/new" { "New release" }
        }
        p.muted {
            @if q.withdrawn { "Live and withdrawn releases. " a #live-only href="/console/releases" { "Live only" } }
            @else { "Live releases. " a #with-withdrawn href="/console/releases?withdrawn=true" { "Include withdrawn" } }
        }
        table #release-list {
            thead { tr { th { "Version" } th { "Target" } th { "Stage" } th { "Percentage" } th { "Progress" }
                th { "Created" } th { "State" } th {} } }
            tbody { @for r in &listed.releases { (release_row(&names, r)) } }
        }
        @if total > RELEASES_SHOWN { p.muted { "The newest " (RELEASES_SHOWN) " of " (total) " are shown." } }
    };
    Ok(layout::page("Releases", &signed, body))
}

fn release_row(names: &HashMap<Uuid, String>, r: &ReleaseView) -> Markup {
    html! {
        tr data-release=(r.id) {
            td.version { (r.version) }
            td { @match r.group_id {
                Some(g) => { a href=(format!("/console/groups/{g}")) { (target_name(names, Some(g))) } },
                None => { "org default" }
            } }
            td { (r.stage + 1) " of " (r.stages.len()) }
            td.percentage { (r.percentage) "%" }
            td.progress {
                span.running { (r.progress.running) " of " (r.progress.targeted) " running" }
                @if r.progress.complete { " · complete" }
                br;
                span.muted {
                    (r.progress.previous) " previous · " (r.progress.failed) " failed · "
                    (r.progress.reverted) " reverted"
                }
            }
            td { (when(&r.created_at)) br; span.muted { (r.created_by) } }
            td.state { @match &r.withdrawn_at {
                Some(at) => { "withdrawn " (when(at)) },
                None => {
                    (r.state.replace('_', " "))
                    @if let Some(by) = r.halted.as_ref().and_then(|h| h.get("by")).and_then(|b| b.as_str()) {
                        br; span.muted { "halted by " (by.replace('_', " ")) }
                    }
                }
            } }
            td { @if r.withdrawn_at.is_none() {
                @if r.state == "active" {
                    a.pause href=(format!("/console/releases/{}/pause", r.id)) { "Pause…" } br;
                } @else {
                    a.resume href=(format!("/console/releases/{}/resume", r.id)) { "Resume…" } br;
                }
                a.withdraw href=(format!("/console/releases/{}/withdraw", r.id)) { "Withdraw…" }
            } }
        }
    }
}

/// The new release form.
pub async fn new_page(State(state): State<ApiState>, signed: Signed) -> Result<Response, Failure> {
    let groups = group_names(&state, &signed).await?;
    let body = html! {
        h1 { "New release" }
        p.muted { "Nothing is released until you confirm: the next screen shows what it would do." }
        form #release-form method="post" action="/console/releases/dry-run" {
            input type="hidden" name="csrf" value=(signed.csrf);
            label for="target" { "Target" }
            select #target name="target" {
                @for (id, name) in &groups { option value=(id) { (name) } }
                option value="default" { "The org's default (every device without a group release)" }
            }
            label for="version" { "Version (an integer or a semantic version)" }
            input #version type="text" name="version" required maxlength="128";
            label for="stages" { "Stages, in percent (e.g. 10, 50, 100; empty: all at once)" }
            input #stages type="text" name="stages";
            fieldset {
                legend { "Watch the rollout (optional)" }
                label for="failure-attribute" { "Devices report a failed update as: attribute (e.g. custom.otaStatus)" }
                input #failure-attribute type="text" name="failure_attribute" maxlength="255";
                label for="failure-value" { "… with the value (e.g. failed)" }
                input #failure-value type="text" name="failure_value" maxlength="4096";
                label for="halt-failures" { "Halt after this many failures" }
                input #halt-failures type="number" name="halt_failures" min="1";
                label for="halt-revert-rate" { "Halt when this share of the targeted devices reverted, in percent" }
                input #halt-revert-rate type="number" name="halt_revert_percent" min="0.01" max="100" step="0.01";
                label { input #halt-rollback type="checkbox" name="halt_rollback" value="on"; " Roll the release back when it halts" }
                label for="soak" { "Advance each stage by itself after this many seconds (empty: by hand)" }
                input #soak type="number" name="soak_seconds" min="1";
            }
            button #dry-run type="submit" { "Review the impact" }
        }
    };
    Ok(layout::page("New release", &signed, body))
}

/// A release to review or confirm.
#[derive(Debug, Deserialize)]
pub struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    stages: String,
    /// The failure signal: an attribute and the value (as typed; JSON if it parses as JSON).
    #[serde(default)]
    failure_attribute: String,
    #[serde(default)]
    failure_value: String,
    #[serde(default)]
    halt_failures: String,
    #[serde(default)]
    halt_revert_percent: String,
    #[serde(default)]
    halt_rollback: String,
    #[serde(default)]
    soak_seconds: String,
    /// The dry run's confirmation token, when the org's retarget cap asked for one.
    #[serde(default)]
    token: String,
}

impl ReleaseForm {
    fn request(&self, dry_run: bool) -> Result<CreateRelease, Failure> {
        let (group_id, default) = match self.target.as_str() {
            "default" => (None, true),
            raw => (Some(api_groups::group_id(raw)?), false),
        };
        let stages = if self.stages.trim().is_empty() {
            None
        } else {
            let parsed: Result<Vec<f64>, _> = self
                .stages
                .split(',')
                .map(|s| s.trim().trim_end_matches('%').parse::<f64>())
                .collect();
            Some(parsed.map_err(|_| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "Stages are percentages separated by commas, e.g. 10, 50, 100",
                )
            })?)
        };
        Ok(CreateRelease {
            org_id: None,
            group_id,
            default,
            version: self.version.clone(),
            stages,
            percentage: None,
            failure: self.failure(),
            halt: self.halt()?,
            soak_seconds: number(&self.soak_seconds, "The soak time")?,
            dry_run,
        })
    }

    /// The failure signal, if an attribute is named.
    fn failure(&self) -> Option<FailureSignal> {
        let attribute = self.failure_attribute.trim();
        if attribute.is_empty() {
            return None;
        }
        let raw = self.failure_value.trim();
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        Some(FailureSignal {
            attribute: attribute.to_string(),
            value,
        })
    }

    /// The halt thresholds, if any is given.
    fn halt(&self) -> Result<Option<Thresholds>, Failure> {
        let failures = number::<u64>(&self.halt_failures, "The failure count")?;
        let revert_rate =
            number::<f64>(&self.halt_revert_percent, "The revert share")?.map(|p| p / 100.0);
        if failures.is_none() && revert_rate.is_none() {
            return Ok(None);
        }
        Ok(Some(Thresholds {
            failures,
            revert_rate,
            rollback: self.halt_rollback == "on",
            ..Thresholds::default()
        }))
    }

    /// The form's fields that carry the release's settings to the confirmation screen.
    fn settings(&self) -> [(&'static str, &str); 7] {
        [
            ("stages", &self.stages),
            ("failure_attribute", &self.failure_attribute),
            ("failure_value", &self.failure_value),
            ("halt_failures", &self.halt_failures),
            ("halt_revert_percent", &self.halt_revert_percent),
            ("halt_rollback", &self.halt_rollback),
            ("soak_seconds", &self.soak_seconds),
        ]
    }
}

/// A number typed in a form (empty: none).
fn number<T: std::str::FromStr>(raw: &str, what: &str) -> Result<Option<T>, Failure> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{what} must be a number, not {raw:?}"),
        )
    })
}

/// The headers carrying a dry run's token as `Cohort-Confirm`.
fn confirm_headers(token: &str) -> Result<HeaderMap, Failure> {
    let mut headers = HeaderMap::new();
    if !token.is_empty() {
        let value = HeaderValue::from_str(token).map_err(|_| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "The confirmation token is not valid",
            )
        })?;
        headers.insert(CONFIRM_HEADER, value);
    }
    Ok(headers)
}

/// What a change does: counts, transitions, downloads and a sample.
fn impact(impact: &Impact) -> Markup {
    html! {
        dl.facts #impact {
            dt { "Devices examined" } dd #examined { (impact.examined) }
            dt { "Targets changing (one rollout event each)" } dd #changed { (impact.changed) }
            dt { "Devices that will download firmware" } dd #impacted { (impact.impacted) }
        }
        @if !impact.transitions.is_empty() {
            h3 { "Transitions" }
            table #transitions { tbody { @for (t, n) in &impact.transitions { tr { td { (t) } td { (n) } } } } }
        }
        @if !impact.downloads.is_empty() {
            h3 { "Downloads (running → target)" }
            table #downloads { tbody { @for (t, n) in &impact.downloads { tr { td { (t) } td { (n) } } } } }
        }
        @if !impact.sample.is_empty() {
            h3 { "Sample" }
            table #sample {
                thead { tr { th { "Device" } th { "From" } th { "To" } th { "Running" } th { "Downloads" } } }
                tbody { @for d in &impact.sample { tr {
                    td { a href=(format!("/console/devices/{}", seg(&d.device_id))) { (d.device_id) } }
                    td { (d.from.version.as_deref().unwrap_or("none")) }
                    td { (d.to.version.as_deref().unwrap_or("none")) }
                    td { (d.running.as_deref().unwrap_or("unreported")) }
                    td { @if d.impacted { "yes" } @else { "no" } }
                } } }
            }
        }
    }
}

/// The confirmation screen: the dry run's impact, and the form that makes the release.
pub async fn dry_run(
    State(state): State<ApiState>,
    signed: Signed,
    f: Result<Form<ReleaseForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    let outcome = create(&state, &signed, &f, true).await?;
    let names: HashMap<Uuid, String> = group_names(&state, &signed).await?.into_iter().collect();
    let target = f.request(true)?.group_id;
    let body = html! {
        h1 { "Confirm the release" }
        dl.facts {
            dt { "Version" } dd #confirm-version { (f.version.trim()) }
            dt { "Target" } dd #confirm-target { (target_name(&names, target)) }
            @if !f.stages.trim().is_empty() { dt { "Stages" } dd { (f.stages) } }
            @if let Some(failure) = f.failure() {
                dt { "Failure signal" } dd #confirm-failure { (failure.attribute) " = " (failure.value) }
            }
            @if let Ok(Some(halt)) = f.halt() {
                dt { "Halts" } dd #confirm-halt {
                    @if let Some(n) = halt.failures { "after " (n) " failures " }
                    @if let Some(r) = halt.revert_rate { "at " (r * 100.0) "% reverted " }
                    @if halt.rollback { "(and rolls back)" } @else { "(and pauses)" }
                }
            }
        }
        (impact(&outcome.impact))
        @if outcome.confirmation_token.is_some() {
            p.notice { "This release retargets more devices than the org's retarget cap: confirming carries \
                        this review's token, valid for five minutes and for this impact only." }
        }
        form #confirm-form method="post" action="/console/releases" {
            input type="hidden" name="csrf" value=(signed.csrf);
            input type="hidden" name="target" value=(f.target);
            input type="hidden" name="version" value=(f.version);
            @for (name, value) in f.settings() { input type="hidden" name=(name) value=(value); }
            input type="hidden" name="token" value=(outcome.confirmation_token.as_deref().unwrap_or(""));
            button #confirm type="submit" { "Release " (f.version.trim()) }
            " " a href="/console/releases" { "Cancel" }
        }
    };
    Ok(layout::page("Confirm the release", &signed, body))
}

/// Makes the release reviewed on the confirmation screen.
pub async fn confirm(
    State(state): State<ApiState>,
    signed: Signed,
    f: Result<Form<ReleaseForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    let outcome = create(&state, &signed, &f, false).await?;
    done(&state, &signed, "Released", outcome).await
}

/// The API's release of the form's version (`dry_run`: only its impact), the form's CSRF token checked
/// and, for the release itself, its confirmation token sent as `Cohort-Confirm`.
async fn create(
    state: &ApiState,
    signed: &Signed,
    f: &ReleaseForm,
    dry_run: bool,
) -> Result<ReleaseOutcome, Failure> {
    signed.check(&f.csrf)?;
    let headers = if dry_run {
        HeaderMap::new()
    } else {
        confirm_headers(&f.token)?
    };
    let (_, Json(outcome)) = api_releases::create(
        State(state.clone()),
        Extension(signed.caller.clone()),
        headers,
        Json(f.request(dry_run)?),
    )
    .await?;
    Ok(outcome)
}

/// The answer to a release or withdrawal made.
async fn done(
    state: &ApiState,
    signed: &Signed,
    title: &str,
    outcome: ReleaseOutcome,
) -> Result<Response, Failure> {
    let names: HashMap<Uuid, String> = group_names(state, signed).await?.into_iter().collect();
    let body = html! {
        h1 #done { (title) }
        @if let Some(r) = &outcome.release {
            table #release-list { tbody { (release_row(&names, r)) } }
        }
        p { "The owning workers retarget the devices below and emit one rollout-target event per changed \
             target." }
        (impact(&outcome.impact))
        p { a href="/console/releases" { "All releases" } }
    };
    Ok(layout::page(title, signed, body))
}

/// What an operator does to a live release from the list, each through a confirmation screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Withdraw,
    Pause,
    Resume,
}

impl Action {
    /// The action a path's last segment names; anything else names no page (404).
    fn parse(raw: &str) -> Result<Action, Failure> {
        match raw {
            "withdraw" => Ok(Action::Withdraw),
            "pause" => Ok(Action::Pause),
            "resume" => Ok(Action::Resume),
            _ => Err(Failure::new(StatusCode::NOT_FOUND, "No such page")),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Action::Withdraw => "withdraw",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }

    /// The button, the confirmation's title and the answer's.
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Action::Withdraw => ("Withdraw", "Confirm the withdrawal", "Withdrawn"),
            Action::Pause => ("Pause", "Confirm the pause", "Paused"),
            Action::Resume => ("Resume", "Confirm the resume", "Resumed"),
        }
    }
}

/// Decides `action` on release `id` through the API (`dry_run`: only its impact), carrying a dry run's
/// `token` as `Cohort-Confirm`.
async fn act(
    state: &ApiState,
    signed: &Signed,
    id: Uuid,
    action: Action,
    dry_run: bool,
    token: &str,
) -> Result<ReleaseOutcome, Failure> {
    let headers = confirm_headers(token)?;
    let (state, caller) = (State(state.clone()), Extension(signed.caller.clone()));
    let body = axum::body::Bytes::from(serde_json::json!({ "dryRun": dry_run }).to_string());
    let Json(outcome) = match action {
        Action::Withdraw => {
            let params = Query(WithdrawParams { dry_run });
            api_releases::withdraw(state, caller, Path(id), params, headers).await?
        }
        Action::Pause => release_health::pause(state, caller, Path(id), headers, body).await?,
        Action::Resume => release_health::resume(state, caller, Path(id), headers, body).await?,
    };
    Ok(outcome)
}

/// An action's confirmation screen: what withdrawing, pausing or resuming the release would do.
pub async fn action_page(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath((id, action)): AxumPath<(String, String)>,
) -> Result<Response, Failure> {
    let (id, action) = (release_id(&id)?, Action::parse(&action)?);
    let outcome = act(&state, &signed, id, action, true, "").await?;
    let names: HashMap<Uuid, String> = group_names(&state, &signed).await?.into_iter().collect();
    let (button, title, _) = action.words();
    let body = html! {
        h1 { (title) }
        @if let Some(r) = &outcome.release {
            dl.facts {
                dt { "Version" } dd #confirm-version { (r.version) }
                dt { "Target" } dd #confirm-target { (target_name(&names, r.group_id)) }
                dt { "State" } dd #confirm-state { (r.state.replace('_', " ")) }
            }
        }
        @if action == Action::Pause {
            p { "A paused release selects no further device; the devices it targets keep it." }
        }
        (impact(&outcome.impact))
        form #confirm-form method="post" action=(format!("/console/releases/{id}/{}", action.path())) {
            input type="hidden" name="csrf" value=(signed.csrf);
            input type="hidden" name="token" value=(outcome.confirmation_token.as_deref().unwrap_or(""));
            button #confirm type="submit" { (button) }
            " " a href="/console/releases" { "Cancel" }
        }
    };
    Ok(layout::page(title, &signed, body))
}

/// An action's confirmation.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

/// Makes the action reviewed on the confirmation screen.
pub async fn action(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath((id, action)): AxumPath<(String, String)>,
    f: Result<Form<ActionForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    signed.check(&f.csrf)?;
    let (id, action) = (release_id(&id)?, Action::parse(&action)?);
    let outcome = act(&state, &signed, id, action, false, &f.token).await?;
    done(&state, &signed, action.words().2, outcome).await
}

/// A release id in a path: anything else names no release (404).
fn release_id(raw: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(raw).map_err(|_| Failure::new(StatusCode::NOT_FOUND, "Release not found"))
}
