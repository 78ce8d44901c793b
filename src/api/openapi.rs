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
    device_groups, device_scoped, devices, error, group_changes, groups, log, members, orgs,
    preview, release_health, release_stages, releases, retarget_cap, thingspace,
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
        groups::list, groups::create, groups::get_one, group_changes::patch, group_changes::put,
        group_changes::delete,
        preview::preview_group, preview::preview_filter, log::membership_log,
        members::list, members::add, members::remove_one, members::pin, members::unpin,
        device_scoped::list, members::add_bulk, members::remove_bulk,
        device_groups::list, device_groups::create, device_groups::get_one, device_groups::update,
        device_groups::delete, device_groups::list_devices, device_groups::add_batch,
        device_groups::remove_batch, device_groups::add_one, device_groups::remove_one,
        thingspace::create,
        devices::import, devices::view, devices::lock, devices::unlock, devices::development,
        releases::list, releases::create, releases::withdraw, release_stages::advance,
        release_health::get, release_health::progress, release_health::pause, release_health::resume,
        orgs::list, orgs::create, retarget_cap::get_settings, retarget_cap::patch_settings,
    ),
    components(schemas(error::ErrorBody, thingspace::ThingSpaceError, groups::GroupType, log::LogAction)),
    modifiers(&BearerAuth, &Aliases, &UniqueOperationIds, &CommonResponses),
    security(("api_key" = [])),
    tags(
        (name = "groups", description = "Static and dynamic groups, previews, the membership log (Breeze)"),
        (name = "members", description = "Members, static membership, pins (Breeze)"),
        (name = "device-scoped", description = "Breeze's device-scoped group routes (`/api/v1/devices/groups`)"),
        (name = "device-groups", description = "The device-groups API, snake_case"),
        (name = "thingspace", description = "ThingSpace's device group creation"),
        (name = "devices", description = "Devices: import, view, locks, the development flag"),
        (name = "releases", description = "Firmware releases"),
        (name = "orgs", description = "Orgs and their settings"),
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

/// Lists, on every operation, the answers any route can give besides its own: 401 (no valid key), 405
/// (another method), 429 (the rate limit), 500 and 503 (the server's failures, the database unavailable);
/// with a request body, 408 (it did not arrive in time), 413 (over the limit) and 415 (not JSON); with
/// parameters or a body, 400; and 404 (a resource or org named that does not exist for the key). Each in
/// the route's error shape.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut Document) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let error = if path.starts_with("/api/m2m/") {
                "ThingSpaceError"
            } else {
                "ErrorBody"
            };
            for op in operations(item) {
                let has_body = op.request_body.is_some();
                let has_parameters = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name(error)))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                };
                if has_body || has_parameters {
                    add(
                        "400",
                        "The request is malformed or invalid; `details` says where",
                    );
                }
                add("401", "No valid API key");
                add("404", "No such resource (or one of another org)");
                add("405", "Another method is served on this path");
                if has_body {
                    add(
                        "408",
                        "The body did not arrive in time; the connection is closed",
                    );
                    add("413", "The body is over the limit");
                    add(
                        "415",
                        "The body is not JSON (`Content-Type: application/json`)",
                    );
                }
                add(
                    "429",
                    "Over the key's rate limit; `Retry-After` says when to retry",
                );
                add("500", "A failure of the server's; it has been logged");
                add(
                    "503",
                    "The database is unavailable or the answer was not ready in time; retry",
                );
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

/// `GET /api/v1/openapi.json` (no key needed: the document describes the API, it holds no data). It is
/// built once per process: it depends on nothing but the code.
pub async fn serve() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get_or_init(json).as_str(),
    )
}
