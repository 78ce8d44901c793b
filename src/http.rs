//! The operational HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is up) and `/readyz`
//! (the worker has its definitions loaded and its consumer running, and the database answers).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

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

/// Binds `listen` and serves `router` until `shutdown` resolves. Returns the bound address (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((addr, handle))
}
