//! The web console at `/console`: server-rendered pages over the API's own handlers and store functions,
//! for operators who would rather click than curl (docs/console.md).
//!
//! - `session`: signing in with an org's API key, the session cookie, the per-session CSRF token, and
//!   the security headers every console answer carries.
//! - `layout`: the page shell, error pages, and small rendering helpers shared by the pages.
//! - `groups`: the group hierarchy, a group's page (filter, members, log, pins, static batches).
//! - `builder`: creating and editing a dynamic group with the filter builder and its live preview.
//! - `devices`: a device: attributes, groups, firmware, and why it is (not) in each dynamic group.
//! - `releases`: releases with their progress, and releasing, withdrawing, pausing or resuming through a
//!   dry run's confirmation screen.
//!
//! Everything a page shows or changes goes through the API's functions, so the console and the API
//! decide alike. The assets (one stylesheet, one script) are compiled into the binary; no page has an
//! inline script or style, so the Content-Security-Policy can forbid them.

mod builder;
mod devices;
mod groups;
mod layout;
mod releases;
pub mod session;

use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::from_fn;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::Router;

use crate::api::ApiState;

/// The console's stylesheet.
const STYLE: &str = include_str!("../../assets/console/console.css");
/// The console's one script: the filter builder with its live preview, and confirmation prompts.
const SCRIPT: &str = include_str!("../../assets/console/console.js");

/// The console's routes, each answer with [`session::security_headers`]. Merged into the API's router,
/// so it shares its listener, body limit and request metrics.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/groups") }),
        )
        .route("/console/assets/console.css", get(style))
        .route("/console/assets/console.js", get(script))
        .route(
            "/console/sign-in",
            get(session::sign_in_page).post(session::sign_in),
        )
        .route("/console/sign-out", post(session::sign_out))
        .route("/console/groups", get(groups::list).post(builder::create))
        .route("/console/groups/new", get(builder::new_page))
        .route("/console/preview", post(builder::preview))
        .route("/console/groups/{id}", get(groups::show))
        .route(
            "/console/groups/{id}/edit",
            get(builder::edit_page).post(builder::save),
        )
        .route("/console/groups/{id}/members", post(groups::batch))
        .route("/console/groups/{id}/pins", post(groups::pin))
        .route("/console/devices", get(devices::find))
        .route("/console/devices/{id}", get(devices::show))
        .route(
            "/console/releases",
            get(releases::list).post(releases::confirm),
        )
        .route("/console/releases/new", get(releases::new_page))
        .route("/console/releases/dry-run", post(releases::dry_run))
        .route(
            "/console/releases/{id}/{action}",
            get(releases::action_page).post(releases::action),
        )
        .route("/console/{*rest}", any(not_found))
        // Set here, before the API's own (which only fills fallbacks not yet set), so a console page's
        // 405 is a console page, with the console's headers.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn(session::security_headers))
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn method_not_allowed() -> Response {
    layout::error_page(
        StatusCode::METHOD_NOT_ALLOWED,
        "This page does not take that method",
        None,
    )
}

async fn not_found() -> Response {
    layout::error_page(StatusCode::NOT_FOUND, "No such page", None)
}
