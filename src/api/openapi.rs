//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa). It is served at
//! `/api/v1/openapi.json`, printed by `cohort openapi`, and checked in as `docs/openapi.json` (a test fails
//! when the two differ). Every `/api/v1/groups` path is also listed under `/api/v1/device-groups`, its alias.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use super::{devices, error, groups, members, orgs, releases};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cohort",
        description = "Dynamic device groups, static membership, pins, previews, the membership log, and \
                       firmware releases. Every route needs `Authorization: Bearer <API key>`. Errors share one \
                       shape: `{\"error\", \"message\", \"details\"}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        groups::list, groups::create, groups::get_one, groups::patch, groups::put, groups::delete,
        groups::preview_group, groups::preview_filter, groups::membership_log,
        members::list, members::add_one, members::remove_one, members::add_batch, members::remove_batch,
        members::pin, members::unpin,
        devices::import, devices::view, devices::lock, devices::unlock, devices::development,
        releases::list, releases::create, releases::withdraw,
        orgs::list, orgs::create,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth, &DeviceGroupsAlias),
    security(("api_key" = [])),
    tags(
        (name = "groups", description = "Static and dynamic groups, previews, the membership log"),
        (name = "members", description = "Members, static membership, pins"),
        (name = "devices", description = "Devices: import, view, locks, the development flag"),
        (name = "releases", description = "Firmware releases"),
        (name = "orgs", description = "Orgs"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

struct DeviceGroupsAlias;

impl Modify for DeviceGroupsAlias {
    fn modify(&self, openapi: &mut Document) {
        let aliases: Vec<(String, utoipa::openapi::PathItem)> = openapi
            .paths
            .paths
            .iter()
            .filter_map(|(path, item)| {
                let rest = path.strip_prefix("/api/v1/groups")?;
                let mut item = item.clone();
                for op in operations(&mut item) {
                    op.operation_id = op
                        .operation_id
                        .take()
                        .map(|id| format!("device_groups_{id}"));
                }
                Some((format!("/api/v1/device-groups{rest}"), item))
            })
            .collect();
        openapi.paths.paths.extend(aliases);
    }
}

fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document.
pub fn document() -> Document {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as pretty JSON with a trailing newline (the checked-in form).
pub fn json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /api/v1/openapi.json` (no key needed: the document describes the API, it holds no data).
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
