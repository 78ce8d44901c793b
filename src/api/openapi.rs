//! The OpenAPI 3.1 document, generated from the handlers' annotations (utoipa). It is served at
//! `/api/v1/openapi.json`, printed by `cohort openapi`, and checked in as `docs/openapi.json` (a test fails
//! when the two differ). Routes one handler serves under several base paths (previews, pins and the log
//! under `/api/v1/device-groups`; create, get, update and delete under `/api/v1/devices/groups`) are listed
//! under each. Every operation id is `<tag>_<handler>`, unique in the document.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as Document;
use utoipa::{Modify, OpenApi};

use super::{
    device_groups, device_scoped, devices, error, groups, log, members, orgs, preview, releases,
    thingspace,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cohort",
        description = "Dynamic device groups, static membership, pins, previews, the membership log, and \
                       firmware releases, served in the words of Breeze's group API (`/api/v1/groups`, \
                       `/api/v1/devices/groups`), the device-groups API (`/api/v1/device-groups`) and \
                       ThingSpace's group creation (`/api/m2m/v1/groups`). Every route needs \
                       `Authorization: Bearer <API key>`. Errors share one shape: \
                       `{\"error\", \"message\", \"details\"}` (ThingSpace's routes: \
                       `{\"errorCode\", \"errorMessage\"}`).",
        license(name = "Apache-2.0")
    ),
    paths(
        groups::list, groups::create, groups::get_one, groups::patch, groups::put, groups::delete,
        preview::preview_group, preview::preview_filter, log::membership_log,
        members::list, members::add, members::remove_one, members::pin, members::unpin,
        device_scoped::list, members::add_bulk, members::remove_bulk,
        device_groups::list, device_groups::create, device_groups::get_one, device_groups::update,
        device_groups::delete, device_groups::list_devices, device_groups::add_batch,
        device_groups::remove_batch, device_groups::add_one, device_groups::remove_one,
        thingspace::create,
        devices::import, devices::view, devices::lock, devices::unlock, devices::development,
        releases::list, releases::create, releases::withdraw,
        orgs::list, orgs::create,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&BearerAuth, &Aliases, &UniqueOperationIds),
    security(("api_key" = [])),
    tags(
        (name = "groups", description = "Static and dynamic groups, previews, the membership log (Breeze)"),
        (name = "members", description = "Members, static membership, pins (Breeze)"),
        (name = "device-scoped", description = "Breeze's device-scoped group routes (`/api/v1/devices/groups`)"),
        (name = "device-groups", description = "The device-groups API, snake_case"),
        (name = "thingspace", description = "ThingSpace's device group creation"),
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

/// Lists the routes one handler serves under several base paths under each.
struct Aliases;

/// (from, to, methods) of each alias; `None`: every method.
const ALIASES: &[(&str, &str, Option<&[&str]>)] = &[
    (
        "/api/v1/groups/preview",
        "/api/v1/device-groups/preview",
        None,
    ),
    (
        "/api/v1/groups/{id}/preview",
        "/api/v1/device-groups/{id}/preview",
        None,
    ),
    (
        "/api/v1/groups/{id}/membership-log",
        "/api/v1/device-groups/{id}/membership-log",
        None,
    ),
    (
        "/api/v1/groups/{id}/devices/{device_id}/pin",
        "/api/v1/device-groups/{id}/devices/{device_id}/pin",
        None,
    ),
    ("/api/v1/groups", "/api/v1/devices/groups", Some(&["post"])),
    (
        "/api/v1/groups/{id}",
        "/api/v1/devices/groups/{id}",
        Some(&["get", "patch", "delete"]),
    ),
];

impl Modify for Aliases {
    fn modify(&self, openapi: &mut Document) {
        for (from, to, methods) in ALIASES {
            let Some(mut item) = openapi.paths.paths.get(*from).cloned() else {
                continue;
            };
            if let Some(methods) = methods {
                let keep = |name: &str| methods.contains(&name);
                if !keep("get") {
                    item.get = None;
                }
                if !keep("put") {
                    item.put = None;
                }
                if !keep("post") {
                    item.post = None;
                }
                if !keep("delete") {
                    item.delete = None;
                }
                if !keep("patch") {
                    item.patch = None;
                }
            }
            let family = if to.starts_with("/api/v1/device-groups") {
                "device-groups"
            } else {
                "device-scoped"
            };
            for op in operations(&mut item) {
                op.tags = Some(vec![family.to_string()]);
                op.operation_id = op.operation_id.take().map(|id| format!("{id}_alias"));
            }
            match openapi.paths.paths.get_mut(*to) {
                // A path with its own operations (the device-scoped listing) gains the alias's.
                Some(existing) => {
                    existing.post = existing.post.take().or(item.post);
                    existing.get = existing.get.take().or(item.get);
                    existing.patch = existing.patch.take().or(item.patch);
                    existing.delete = existing.delete.take().or(item.delete);
                    existing.put = existing.put.take().or(item.put);
                }
                None => {
                    openapi.paths.paths.insert(to.to_string(), item);
                }
            }
        }
    }
}

/// Makes every operation id `<first tag>_<handler>`: handlers of different families share names.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            for op in operations(item) {
                let tag = op
                    .tags
                    .as_ref()
                    .and_then(|t| t.first())
                    .map(|t| t.replace('-', "_"))
                    .unwrap_or_default();
                let id = op.operation_id.take().unwrap_or_default();
                let id = id.strip_suffix("_alias").unwrap_or(&id).to_string();
                op.operation_id = Some(format!("{tag}_{id}"));
            }
        }
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
