//! The REST API: groups (static and dynamic), static membership, pins, previews, the membership log,
//! devices, firmware releases, locks and development devices.
//!
//! The groups are served in the words of each document cohort is specified by, so a client written
//! against any of them works unchanged (docs/api.md says which paths serve which):
//! - Breeze's group API at `/api/v1/groups` ([`groups`], [`group_changes`], [`members`], [`preview`],
//!   [`log`]) and its device-scoped routes at `/api/v1/devices/groups` ([`device_scoped`]);
//! - the device-groups API at `/api/v1/device-groups` ([`device_groups`]), snake_case;
//! - ThingSpace's group creation at `/api/m2m/v1/groups` ([`thingspace`]), also accepted on
//!   `POST /api/v1/groups`.
//!
//! The rest:
//! - [`error`]: the one error shape (`{"error", "message", "details"}`) and the extractors that map every
//!   rejection into it, so bad input never yields a 500 or a stack trace.
//! - [`auth`]: API keys (`Authorization: Bearer`), org scoping, the per-key rate limit.
//! - [`devices`], [`releases`], [`orgs`]: the other handlers; [`release_stages`] and [`release_health`]:
//!   a release's stages, progress, pause and resume.
//! - [`retarget_cap`]: an org's settings (its retarget cap), the `Cohort-Confirm` header that confirms a
//!   change over the cap, and the 409 that refuses one without.
//! - [`openapi`]: the OpenAPI document, generated from the handlers' annotations.
//!
//! - [`internal`]: the route a worker process serves its peers (not part of the public API): a preview's
//!   evaluation over the partitions it holds; `peers` is the other side, asking the workers that hold a
//!   preview's partitions.
//!
//! Every change workers must act on is written by the storage layer together with its control-log entry,
//! in one transaction; the API talks to workers directly only to read (previews, `peers`). Device registrations (imports) go through
//! the input topic instead, keyed like any device event, so the owning worker creates the device.

pub mod auth;
pub mod device_groups;
pub mod device_scoped;
pub mod devices;
pub mod error;
pub mod group_changes;
pub mod groups;
pub mod internal;
pub mod log;
pub mod members;
pub mod openapi;
pub mod orgs;
mod peers;
pub mod preview;
pub mod release_health;
pub mod release_stages;
pub mod releases;
pub mod retarget_cap;
pub mod thingspace;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;

use crate::config::Config;
use crate::rules::Catalogue;

pub use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub catalogue: Arc<Catalogue>,
    pub limiter: Arc<auth::RateLimiter>,
    /// Publishes device registrations to the input topic (`None` when no brokers are configured: imports
    /// then answer 503).
    pub producer: Option<FutureProducer>,
    pub input_topic: String,
    pub max_body_bytes: usize,
    /// Previews that read devices from PostgreSQL (seconds for a million): at most this many run at once
    /// per process, so they cannot starve the worker sharing the process or the database; more are refused.
    pub preview_slots: Arc<tokio::sync::Semaphore>,
    /// The devices the worker in this process holds, when it runs one: previews evaluate there
    /// ([`crate::worker::view`]).
    pub view: Option<crate::worker::FleetView>,
    /// Previews evaluated in memory at once; more wait for a slot.
    pub memory_preview_slots: Arc<tokio::sync::Semaphore>,
    /// The name this process's worker claims partitions under, when it runs one: previews do not ask it
    /// over the network for what its view did not answer.
    pub owner: Option<String>,
    /// How long a preview waits for a peer worker's answer (`api.peer_timeout_ms`).
    pub peer_timeout: Duration,
}

/// Concurrent previews per process that read devices from PostgreSQL.
pub const PREVIEW_SLOTS: usize = 2;

/// Concurrent previews per process evaluated in the worker's memory, its peers' calls included (each
/// takes tens of milliseconds of one core for a million devices).
pub const MEMORY_PREVIEW_SLOTS: usize = 4;

impl ApiState {
    /// Builds the state from the configuration. The producer is created lazily by librdkafka (no broker
    /// connection is needed to start).
    pub fn new(config: &Config, pool: PgPool, catalogue: Arc<Catalogue>) -> anyhow::Result<Self> {
        let producer = match config.kafka.brokers() {
            Some(brokers) => Some(registration_producer(config, brokers)?),
            None => None,
        };
        Ok(Self {
            pool,
            catalogue,
            limiter: Arc::new(auth::RateLimiter::new(
                config.api.rate_limit_per_second,
                config.api.rate_limit_burst,
            )),
            producer,
            input_topic: config.kafka.input_topic.clone(),
            max_body_bytes: config.api.max_body_bytes,
            preview_slots: Arc::new(tokio::sync::Semaphore::new(PREVIEW_SLOTS)),
            view: None,
            memory_preview_slots: Arc::new(tokio::sync::Semaphore::new(MEMORY_PREVIEW_SLOTS)),
            owner: None,
            peer_timeout: Duration::from_millis(config.api.peer_timeout_ms),
        })
    }

    /// The state of an API served by a worker's process: previews evaluate in its memory first.
    pub fn with_worker(self, view: crate::worker::FleetView, owner: &str) -> Self {
        Self {
            view: Some(view),
            owner: Some(owner.to_string()),
            ..self
        }
    }
}

/// The producer for registrations: idempotent, acks from all replicas, and Kafka's murmur2 partitioner so a
/// registration lands on the partition that owns the device, like every other event of it; its delivery
/// timeout is [`PRODUCE_TIMEOUT`] (see [`crate::kafka::client`] for the precedence of `[kafka.properties]`).
fn registration_producer(config: &Config, brokers: &str) -> anyhow::Result<FutureProducer> {
    let role = crate::kafka::Role::Registrations {
        message_timeout: PRODUCE_TIMEOUT,
    };
    Ok(crate::kafka::client_config(&config.kafka, brokers, role).create()?)
}

/// The API's routes, with authentication, rate limiting, body limits and request metrics.
pub fn router(state: ApiState) -> Router {
    // What every group family serves the same way: previews and the membership log.
    let shared = || preview::routes().merge(log::routes());
    let groups = groups::routes().merge(members::routes()).merge(shared());
    let device_groups = device_groups::routes().merge(shared());
    // ThingSpace's clients read every failure, a missing key's too, in ThingSpace's shape.
    let thingspace = thingspace::routes()
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate))
        .layer(from_fn(thingspace::errors_as_thingspace));
    let authenticated = Router::new()
        .nest("/api/v1/groups", groups)
        .nest("/api/v1/device-groups", device_groups)
        .nest("/api/v1/devices/groups", device_scoped::routes())
        .nest("/api/v1/devices", devices::routes())
        .nest("/api/v1/releases", releases::routes())
        .nest("/api/v1/orgs", orgs::routes().merge(retarget_cap::routes()))
        .route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    authenticated
        .nest("/api/m2m/v1/groups", thingspace)
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(crate::console::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn(record_metrics))
        .with_state(state)
}

/// Counts requests by route template and status class, and times them.
pub(crate) async fn record_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(crate::metrics::API_REQUESTS, "route" => route.clone(), "status" => class)
        .increment(1);
    metrics::histogram!(crate::metrics::API_REQUEST_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Pagination: `limit` within `1..=max` (default `default`), `offset >= 0`.
pub(crate) fn page(
    limit: Option<i64>,
    offset: Option<i64>,
    default: i64,
    max: i64,
) -> Result<(i64, i64), ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {max}, got {limit}"
        )));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request(format!(
            "offset must be 0 or more, got {offset}"
        )));
    }
    Ok((limit, offset))
}

/// The cursor of the page after `rows` (the last row's `key`) when the page is full, else `None`: a
/// shorter page is the last.
pub(crate) fn next_cursor<T, K>(rows: &[T], limit: i64, key: impl Fn(&T) -> K) -> Option<K> {
    match rows.last() {
        Some(last) if rows.len() as i64 == limit => Some(key(last)),
        _ => None,
    }
}

/// How long a registration may wait for the broker before the import answers 503.
pub(crate) const PRODUCE_TIMEOUT: Duration = Duration::from_secs(10);
