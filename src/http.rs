//! The operational HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up) and `/readyz`
//! (the worker has its definitions loaded and its consumer running, and the database answers), and the
//! server every role's listener runs on, with its read timeouts, connection limits and body limits
//! ([`serve`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use tokio::sync::{mpsc, watch, Semaphore};
use tower::ServiceExt;

use crate::api::ApiError;
use crate::config::HttpConfig;
use crate::worker::Status;

use body::{Budget, Tracked};
use clients::{Client, Clients};

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    status: Option<Arc<Status>>,
    pool: PgPool,
}

/// The operational routes.
pub fn router(metrics: PrometheusHandle, status: Option<Arc<Status>>, pool: PgPool) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Ops {
            metrics,
            status,
            pool,
        })
}

async fn render_metrics(State(ops): State<Ops>) -> String {
    ops.metrics.render()
}

async fn ready(State(ops): State<Ops>) -> (StatusCode, &'static str) {
    if let Some(status) = &ops.status {
        if !status.ready.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "worker starting or stopping",
            );
        }
    }
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&ops.pool),
    )
    .await;
    match db {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

/// What one listener allows a client ([`HttpConfig`], and `api.max_body_bytes`).
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read_timeout: Duration,
    first_request_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    max_connections_per_client: usize,
    max_body_bytes: usize,
    max_body_buffer_bytes: usize,
}

impl Limits {
    fn new(config: &HttpConfig, max_body_bytes: usize) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            first_request_timeout: Duration::from_millis(config.first_request_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_connections: config.max_connections,
            max_connections_per_client: config.max_connections_per_client,
            max_body_bytes,
            max_body_buffer_bytes: config.max_body_buffer_bytes,
        }
    }
}

/// Binds `config.listen` and serves `router` until `shutdown` resolves, then lets the connections finish
/// what they are answering. Returns the bound address (port 0 picks one).
///
/// HTTP/1.1 with keep-alive, served by hyper directly rather than `axum::serve`, which sets no timer and so
/// no read timeout: a client could hold a connection by sending its headers or body a byte at a time. Here
/// a new connection must send its first request's head within `first_request_timeout_ms` (and within
/// `header_read_timeout_ms`), every later head within `header_read_timeout_ms` (an idle keep-alive
/// connection is closed after it too), the whole request must be read and answered within
/// `request_timeout_ms`, and at most `max_connections` are served at once (the next wait in the listen
/// backlog), at most `max_connections_per_client` of them for one client (a further one is answered 503
/// and closed at once, `http::clients`).
///
/// Bodies: a `Content-Length` over `max_body_bytes` (the API's `api.max_body_bytes`, applied to every
/// route) is refused with 413 before any of the body is read, and the bodies being read and answered
/// hold at most `max_body_buffer_bytes` between them (`http::body`). An answer after which the connection
/// closes says `Connection: close` (`answer`).
pub async fn serve(
    config: &HttpConfig,
    max_body_bytes: usize,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let limits = Limits::new(config, max_body_bytes);
    let handle = tokio::spawn(accept_loop(listener, router, limits, shutdown));
    Ok((addr, handle))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = Clients::new(limits.max_connections_per_client);
    let refusal = clients::refusal(limits.max_connections_per_client);
    let budget = Budget::new(limits.max_body_buffer_bytes, limits.max_body_bytes);
    // Connections watch `stop` to shut down gracefully; each holds a clone of `done`, so its receiver
    // learns when the last one has finished.
    let (stop, _) = watch::channel(false);
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted: the listener
                    // itself is fine. Pause so that a persistent condition does not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = clients.admit(Client::of(peer.ip())) else {
            metrics::counter!(crate::metrics::HTTP_CONNECTIONS_CLOSED, "reason" => "client_limit")
                .increment(1);
            clients::refuse(stream, &refusal);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let budget = budget.clone();
        let mut stopping = stop.subscribe();
        let done = done.clone();
        tokio::spawn(async move {
            // Set once the first request's head has been read.
            let started = Arc::new(AtomicBool::new(false));
            let service = hyper::service::service_fn({
                let started = started.clone();
                move |request: Request<Incoming>| {
                    started.store(true, Ordering::Release);
                    let router = router.clone();
                    let budget = budget.clone();
                    async move { Ok::<_, Infallible>(answer(router, request, limits, budget).await) }
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            let first_request = tokio::time::sleep(limits.first_request_timeout);
            let mut first_request = pin!(first_request);
            let mut awaiting_first = true;
            let ended = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = stopping.changed() => {
                        // Finish the request in hand (if any), then close.
                        connection.as_mut().graceful_shutdown();
                        break connection.as_mut().await;
                    }
                    () = &mut first_request, if awaiting_first => {
                        awaiting_first = false;
                        if !started.load(Ordering::Acquire) {
                            // Dropping the connection closes the socket.
                            metrics::counter!(
                                crate::metrics::HTTP_CONNECTIONS_CLOSED,
                                "reason" => "no_request"
                            )
                            .increment(1);
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
            drop(admitted);
            drop(slot);
            drop(done);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(done);
    let _ = all_done.recv().await;
}

/// Routes one request under the request deadline.
///
/// A `Content-Length` over `api.max_body_bytes` is answered 413 from the head, before any of the body is
/// read. A body waits for room in the body budget when it is first read; a request whose time runs out
/// while it waits is answered 503 (retry later).
///
/// An answer given before the request's body was read to its end (an error decided from the head, a body
/// over the limit still arriving when the limit was passed, a body that did not arrive in time or found
/// no room) carries `Connection: close`, and hyper then closes the connection once the answer is written.
/// The rest of that body may still be on its way, and hyper would either drain what has already arrived
/// or close without saying so; either way the client is told, and does not send its next request into a
/// closing socket. Every other answer keeps the connection usable, unless the request asked to close it
/// or the server is shutting down (hyper then says `Connection: close` itself).
async fn answer(
    router: Router,
    request: Request<Incoming>,
    limits: Limits,
    budget: Budget,
) -> Response {
    let deadline = limits.request_timeout;
    if request.body().size_hint().lower() > limits.max_body_bytes as u64 {
        metrics::counter!(crate::metrics::HTTP_BODIES_REFUSED, "reason" => "too_large")
            .increment(1);
        return closing(too_large().into_response());
    }
    let (parts, body) = request.into_parts();
    let (body, progress) = Tracked::new(body, budget);
    let request = Request::from_parts(parts, Body::new(body));
    let response = match tokio::time::timeout(deadline, router.oneshot(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) if progress.waiting() => {
            metrics::counter!(crate::metrics::HTTP_BODIES_REFUSED, "reason" => "no_budget")
                .increment(1);
            ApiError {
                retry_after: Some(1),
                ..ApiError::unavailable(format!(
                    "the server is reading too many request bodies; retry later \
                     (http.max_body_buffer_bytes = {})",
                    limits.max_body_buffer_bytes
                ))
            }
            .into_response()
        }
        Err(_) if !progress.finished() => ApiError::request_timeout(format!(
            "the request's body did not arrive in time (http.request_timeout_ms = {})",
            deadline.as_millis()
        ))
        .into_response(),
        Err(_) => ApiError::unavailable(format!(
            "the answer was not ready in time; retry later (http.request_timeout_ms = {})",
            deadline.as_millis()
        ))
        .into_response(),
    };
    if progress.finished() {
        response
    } else {
        closing(response)
    }
}

/// `response`, saying the connection closes after it.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// 413 for a body over `api.max_body_bytes`, as the API answers one it finds too large while reading.
fn too_large() -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        ..ApiError::bad_request("Request body too large")
    }
}

mod body;
mod clients;

#[cfg(test)]
mod tests;
