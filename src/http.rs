//! The operational HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up) and `/readyz`
//! (the worker has its definitions loaded and its consumer running, and the database answers), and the
//! server every role's listener runs on, with its read timeouts and connection limit ([`serve`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use tokio::sync::{mpsc, watch, Semaphore};
use tower::ServiceExt;

use crate::api::ApiError;
use crate::config::HttpConfig;
use crate::worker::Status;

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

/// What one listener allows a client ([`HttpConfig`]).
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
}

impl From<&HttpConfig> for Limits {
    fn from(config: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            max_connections: config.max_connections,
        }
    }
}

/// Binds `config.listen` and serves `router` until `shutdown` resolves, then lets the connections finish
/// what they are answering. Returns the bound address (port 0 picks one).
///
/// HTTP/1.1 with keep-alive, served by hyper directly rather than `axum::serve`, which sets no timer and so
/// no read timeout: a client could hold a connection by sending its headers or body a byte at a time. Here
/// a request's head must arrive within `header_read_timeout_ms` (an idle keep-alive connection is closed
/// after it too), the whole request must be read and answered within `request_timeout_ms`, and at most
/// `max_connections` are served at once (the next wait in the listen backlog). An answer after which the
/// connection closes says `Connection: close` ([`answer`]).
pub async fn serve(
    config: &HttpConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(accept_loop(listener, router, config.into(), shutdown));
    Ok((addr, handle))
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
        let (stream, _peer) = tokio::select! {
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
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stopping = stop.subscribe();
        let done = done.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(answer(router, request, limits.request_timeout).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = pin!(connection);
            let ended = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.changed() => {
                    // Finish the request in hand (if any), then close.
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
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
/// An answer given before the request's body was read to its end (an error decided from the head, a body
/// over the limit still arriving when the limit was passed, a body that did not arrive in time) carries
/// `Connection: close`, and hyper then closes the connection once the answer is written. The rest of that
/// body may still be on its way, and hyper would either drain what has already arrived or close without
/// saying so; either way the client is told, and does not send its next request into a closing socket.
/// Every other answer keeps the connection usable, unless the request asked to close it or the server is
/// shutting down (hyper then says `Connection: close` itself).
async fn answer(router: Router, request: Request<Incoming>, deadline: Duration) -> Response {
    let body_read = Arc::new(AtomicBool::new(request.body().is_end_stream()));
    let request = request.map(|body| {
        Body::new(Tracked {
            inner: body,
            finished: body_read.clone(),
        })
    });
    let mut response = match tokio::time::timeout(deadline, router.oneshot(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) if !body_read.load(Ordering::Acquire) => ApiError::request_timeout(format!(
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
    if !body_read.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records when it has been read to the end.
struct Tracked {
    inner: Incoming,
    finished: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
