//! The application: wires configuration, storage, the worker and the HTTP endpoints together
//! (`Application::build(config)` then `run_until_stopped(shutdown)`; `main` passes a future that resolves
//! on SIGINT/SIGTERM, tests pass their own).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;

use crate::config::Config;
use crate::rules::Catalogue;
use crate::store;
use crate::worker::{Clock, Status, SystemClock, Worker};

/// A built application, ready to run.
pub struct Application {
    worker: Worker,
    status: Arc<Status>,
    pool: PgPool,
    listen: SocketAddr,
}

impl Application {
    /// Connects to PostgreSQL (waiting for it), applies migrations and prepares the worker.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Application::build`] with an injected clock (tests make time pass with it).
    pub async fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let brokers = config
            .kafka
            .brokers()
            .context(
                "kafka.brokers is not configured (set COHORT_KAFKA_BROKERS or [kafka] brokers)",
            )?
            .to_string();
        let catalogue =
            Arc::new(Catalogue::from_config(&config.catalogue).context("invalid [catalogue]")?);
        let pool = store::connect_lazy(&config.database).context("invalid database URL")?;
        migrate_with_retry(&pool, &config).await?;
        let listen = config.http.listen;
        let worker = Worker::build(config, brokers, pool.clone(), catalogue, clock);
        let status = worker.status();
        Ok(Self {
            worker,
            status,
            pool,
            listen,
        })
    }

    /// The worker's status (readiness, batches committed, partitions owned).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Serves the HTTP endpoints and runs the worker until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = crate::metrics::install();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let router = crate::http::router(metrics, Some(self.status.clone()), self.pool.clone());
        let (addr, http) = crate::http::serve(self.listen, router, async {
            let _ = http_stopped.await;
        })
        .await
        .with_context(|| format!("failed to listen on {}", self.listen))?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let result = self.worker.run_until_stopped(shutdown).await;
        let _ = stop_http.send(());
        let _ = http.await;
        result
    }
}

/// Applies migrations, waiting (with backoff) while the database is unreachable.
pub async fn migrate_with_retry(pool: &PgPool, config: &Config) -> anyhow::Result<()> {
    let mut backoff = std::time::Duration::from_millis(config.worker.retry_initial_backoff_ms);
    let max = std::time::Duration::from_millis(config.worker.retry_max_backoff_ms);
    let mut attempts = 0;
    loop {
        match store::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 30 && is_unreachable(&e) => {
                attempts += 1;
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
            Err(e) => return Err(e).context("failed to apply migrations"),
        }
    }
}

fn is_unreachable(e: &store::StoreError) -> bool {
    match e {
        store::StoreError::Migrate(sqlx::migrate::MigrateError::Execute(inner)) => {
            store::StoreError::from(sqlx::Error::Protocol(inner.to_string())).is_transient()
        }
        other => other.is_transient(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
