//! Creating and editing a dynamic group with the filter builder: the fields and operators of the
//! catalogue by type, values checked as they are typed, and a live preview (count and sample) through the
//! API's own preview as the filter changes. The builder itself is the console's script; this module
//! serves its page, its catalogue, the preview it asks for, and the saves.

use axum::extract::rejection::FormRejection;
use axum::extract::{Extension, Form, Path as AxumPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;
use serde_json::{json, Value};

use super::groups::{form, see_other};
use super::layout::{self, Failure};
use super::session::Signed;
use crate::api::error::{Json, Path, Query};
use crate::api::group_changes;
use crate::api::groups::{self as api_groups, CreateGroup, UpdateGroup};
use crate::api::preview::{self as api_preview, PreviewFilter, PreviewParams};
use crate::api::{ApiError, ApiState};
use crate::rules::catalogue::FieldType;
use crate::rules::{Catalogue, Operator};

/// Devices in the preview's sample.
const PREVIEW_SAMPLE: i64 = 10;

/// The catalogue as the builder reads it: each field with its type, its enum values and the operators
/// allowed on it.
pub fn catalogue_json(catalogue: &Catalogue) -> Value {
    let fields: Vec<Value> = catalogue
        .fixed_fields()
        .map(|(_, def)| {
            let values: Vec<&str> = match &def.ty {
                FieldType::Enum(v) => v.iter().map(|s| &**s).collect(),
                _ => Vec::new(),
            };
            let operators: Vec<&str> = Operator::ALL
                .into_iter()
                .filter(|op| op.allowed_on(&def.ty))
                .map(Operator::name)
                .collect();
            json!({
                "name": def.name,
                "type": def.ty.name(),
                "values": values,
                "operators": operators,
                "description": def.description,
            })
        })
        .collect();
    let string_ops: Vec<&str> = Operator::ALL
        .into_iter()
        .filter(|op| op.allowed_on(&FieldType::String))
        .map(Operator::name)
        .collect();
    json!({"fields": fields, "customOperators": string_ops})
}

/// What the group form holds, to show it again after a refusal.
#[derive(Debug, Default, Deserialize)]
pub struct GroupForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    site_id: String,
    #[serde(default)]
    filter: String,
}

impl GroupForm {
    fn tags(&self) -> Vec<String> {
        self.tags
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn site(&self) -> Option<String> {
        Some(self.site_id.trim().to_string()).filter(|s| !s.is_empty())
    }

    fn filter(&self) -> Result<Value, Failure> {
        serde_json::from_str(&self.filter).map_err(|_| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                "The filter is not complete: add at least one condition",
            )
        })
    }
}

/// The builder page: a new group's (`editing` None) or an existing group's.
fn builder_page(
    state: &ApiState,
    signed: &Signed,
    editing: Option<&str>,
    values: &GroupForm,
    problem: Option<&Failure>,
) -> Response {
    let action = match editing {
        Some(id) => format!("/console/groups/{id}/edit"),
        None => "/console/groups".to_string(),
    };
    let title = if editing.is_some() {
        "Edit group"
    } else {
        "New dynamic group"
    };
    let catalogue = catalogue_json(&state.catalogue).to_string();
    let body = html! {
        h1 { (title) }
        @if let Some(problem) = problem {
            div.error #problem {
                p { (problem.message()) }
                @if !problem.details().is_empty() { ul { @for d in problem.details() { li { (d) } } } }
            }
        }
        form #group-form method="post" action=(action) {
            input type="hidden" name="csrf" value=(signed.csrf);
            label for="name" { "Name" }
            input #name type="text" name="name" value=(values.name) required maxlength="255";
            label for="description" { "Description" }
            textarea #description name="description" rows="2" { (values.description) }
            label for="tags" { "Tags (comma-separated)" }
            input #tags type="text" name="tags" value=(values.tags);
            label for="site" { "Site (only devices of this site; empty: every site)" }
            input #site type="text" name="site_id" value=(values.site_id);
            input #filter-json type="hidden" name="filter" value=(values.filter);
            h2 { "Filter" }
            div #builder data-catalogue=(catalogue) data-csrf=(signed.csrf) data-preview="/console/preview" {
                p.muted { "The filter builder needs JavaScript." }
            }
            ul.error #builder-problems {}
            section.preview #preview {
                h2 { "Preview" }
                p { "Matching now: " strong #preview-count { "—" } " of " span #preview-examined { "—" } " devices "
                    span.muted #preview-state {} }
                ul #preview-sample {}
            }
            button #save-group type="submit" { "Save group" }
        }
    };
    let status = problem.map(Failure::status).unwrap_or(StatusCode::OK);
    let mut response = layout::page(title, signed, body);
    *response.status_mut() = status;
    response
}

/// The builder for a new group.
pub async fn new_page(State(state): State<ApiState>, signed: Signed) -> Response {
    builder_page(&state, &signed, None, &GroupForm::default(), None)
}

/// The builder for an existing dynamic group.
pub async fn edit_page(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
) -> Result<Response, Failure> {
    let Json(group) = api_groups::get_one(
        State(state.clone()),
        Extension(signed.caller.clone()),
        Path(id),
    )
    .await?;
    let Some(filter) = group.filter_conditions else {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "A static group has no filter to edit",
        ));
    };
    let values = GroupForm {
        name: group.name,
        description: group.description,
        tags: group.tags.join(", "),
        site_id: group.site_id.unwrap_or_default(),
        filter: filter.to_string(),
        ..GroupForm::default()
    };
    let id = group.id.to_string();
    Ok(builder_page(&state, &signed, Some(&id), &values, None))
}

/// Creates the group through the API's creation; a refusal shows the form again with the problems.
pub async fn create(
    State(state): State<ApiState>,
    signed: Signed,
    f: Result<Form<GroupForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    signed.check(&f.csrf)?;
    let created = async {
        let body = CreateGroup {
            org_id: None,
            name: f.name.clone(),
            description: f.description.clone(),
            tags: f.tags(),
            site_id: f.site(),
            parent_id: None,
            kind: Some("dynamic".into()),
            filter_conditions: Some(f.filter()?),
        };
        Ok::<_, Failure>(api_groups::create_group(&state, &signed.caller, body).await?)
    }
    .await;
    match created {
        Ok(row) => Ok(see_other(&format!("/console/groups/{}", row.id))),
        Err(problem) => Ok(builder_page(&state, &signed, None, &f, Some(&problem))),
    }
}

/// Saves an edited group through the API's update (a new filter is a new definition: the workers move
/// only the devices it changes).
pub async fn save(
    State(state): State<ApiState>,
    signed: Signed,
    AxumPath(id): AxumPath<String>,
    f: Result<Form<GroupForm>, FormRejection>,
) -> Result<Response, Failure> {
    let f = form(f)?;
    signed.check(&f.csrf)?;
    let group_id = api_groups::group_id(&id)?;
    let saved = async {
        let body = UpdateGroup {
            name: Some(f.name.clone()),
            description: Some(f.description.clone()),
            tags: Some(f.tags()),
            site_id: Some(f.site()),
            filter_conditions: Some(f.filter()?),
            ..UpdateGroup::default()
        };
        let changed =
            group_changes::update(&state, &signed.caller, group_id, body, &HeaderMap::new())
                .await?;
        Ok::<_, Failure>(changed)
    }
    .await;
    match saved {
        Ok(_) => Ok(see_other(&format!("/console/groups/{group_id}"))),
        Err(problem) => Ok(builder_page(
            &state,
            &signed,
            Some(&group_id.to_string()),
            &f,
            Some(&problem),
        )),
    }
}

/// What the builder previews.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewBody {
    filter_conditions: Value,
    #[serde(default)]
    site_id: Option<String>,
}

/// The builder's live preview: the API's preview of the filter, or the API's error (with every
/// validation problem and its path) as JSON.
pub async fn preview(
    State(state): State<ApiState>,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Json<PreviewBody>, ApiError>,
) -> Response {
    if let Err(refused) = signed.check_header(&headers) {
        return (
            refused.status(),
            axum::Json(json!({"message": refused.message(), "details": []})),
        )
            .into_response();
    }
    let answer = async {
        let Json(body) = body?;
        api_preview::preview_filter(
            State(state),
            Extension(signed.caller.clone()),
            Query(PreviewParams {
                limit: Some(PREVIEW_SAMPLE),
            }),
            Json(PreviewFilter {
                org_id: None,
                site_id: body.site_id.filter(|s| !s.trim().is_empty()),
                filter_conditions: body.filter_conditions,
            }),
        )
        .await
    }
    .await;
    match answer {
        Ok(Json(preview)) => axum::Json(preview).into_response(),
        Err(e) => {
            let failure = Failure::from(e);
            (
                failure.status(),
                axum::Json(json!({"message": failure.message(), "details": failure.details()})),
            )
                .into_response()
        }
    }
}
