//! The application: wires configuration, storage, the worker, the embedded outbox relay and the HTTP
//! endpoints together (`Application::build(config)` then `run_until_stopped(shutdown)`; `main` passes a
//! future that resolves on SIGINT/SIGTERM, tests pass their own). [`run_relay`] runs the relay role alone
//! (`cohort relay`), [`run_api`] the REST API alone (`cohort api`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::relay::{Relay, RelayStatus};
use crate::rules::Catalogue;
use crate::store;
use crate::store::live_workers::LiveWorker;
use crate::worker::{presence, Clock, Status, SystemClock, Worker};

/// A built application, ready to run.
pub struct Application {
    worker: Worker,
    /// The outbox relay, unless `worker.embedded_relay` is off (relays then run as `cohort relay`).
    relay: Option<Relay>,
    /// The REST API, unless `worker.embedded_api` is off (it then runs as `cohort api`).
    api: Option<crate::api::ApiState>,
    status: Arc<Status>,
    pool: PgPool,
    http: crate::config::HttpConfig,
    /// `api.max_body_bytes`, which the listener applies to every route.
    max_body_bytes: usize,
    /// The address the HTTP listener bound, once it has (port 0 picks one).
    address: tokio::sync::watch::Sender<Option<SocketAddr>>,
    /// The internal routes peers call for previews and impacts ([`crate::api::internal`]), served
    /// whether or not the API is.
    internal: crate::api::internal::InternalState,
    /// The worker's name (`partition_positions.owner`), under which it registers in `live_workers`.
    owner: String,
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
        let http = config.http.clone();
        let max_body_bytes = config.api.max_body_bytes;
        let relay = if config.worker.embedded_relay {
            Some(
                Relay::build(&config, brokers.clone(), pool.clone())
                    .context("failed to prepare the outbox relay")?,
            )
        } else {
            None
        };
        let api = if config.worker.embedded_api {
            Some(
                crate::api::ApiState::new(&config, pool.clone(), catalogue.clone())
                    .context("failed to prepare the REST API")?,
            )
        } else {
            None
        };
        let worker = Worker::build(config, brokers, pool.clone(), catalogue.clone(), clock);
        // The API in a worker's process evaluates previews where the worker holds the devices, and its
        // peers' calls share the same bound on evaluations at once.
        let slots = api.as_ref().map_or_else(
            || Arc::new(Semaphore::new(crate::api::MEMORY_PREVIEW_SLOTS)),
            |api| api.memory_preview_slots.clone(),
        );
        let api = api.map(|api| api.with_worker(worker.view(), worker.owner()));
        let internal = crate::api::internal::InternalState {
            token: presence::new_token().into(),
            view: worker.view(),
            catalogue,
            slots,
        };
        let owner = worker.owner().to_string();
        let status = worker.status();
        Ok(Self {
            worker,
            relay,
            api,
            status,
            pool,
            http,
            max_body_bytes,
            address: tokio::sync::watch::channel(None).0,
            internal,
            owner,
        })
    }

    /// The worker's status (readiness, batches committed, partitions owned).
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// The HTTP listener's address, once bound.
    pub fn http_address(&self) -> tokio::sync::watch::Receiver<Option<SocketAddr>> {
        self.address.subscribe()
    }

    /// The embedded relay's status, when it runs in this process.
    pub fn relay_status(&self) -> Option<Arc<RelayStatus>> {
        self.relay.as_ref().map(Relay::status)
    }

    /// Serves the HTTP endpoints and runs the worker (and the embedded relay) until `shutdown` resolves.
    ///
    /// Once its listener is bound the worker registers in `live_workers` (its peers find it there), and
    /// refreshes its row while it runs ([`presence`]); a clean stop deletes the row once the worker has
    /// stopped. The relay is stopped only after the worker has finished its in-flight batches, so it can
    /// still publish what those batches wrote to the outbox. Each has `worker.shutdown_deadline_ms`, so
    /// shutdown takes at most twice that.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let metrics = crate::metrics::install();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut router =
            crate::http::router(metrics, Some(self.status.clone()), self.pool.clone()).merge(
                crate::api::internal::router(self.internal.clone(), self.max_body_bytes),
            );
        if let Some(api) = self.api {
            router = router.merge(crate::api::router(api));
        }
        let (addr, http) = crate::http::serve(&self.http, self.max_body_bytes, router, async {
            let _ = http_stopped.await;
        })
        .await
        .with_context(|| format!("failed to listen on {}", self.http.listen))?;
        let _ = self.address.send(Some(addr));
        tracing::info!(%addr, "serving the API, /metrics, /healthz and /readyz");
        if self.http.advertise.is_none() && addr.ip().is_unspecified() {
            tracing::warn!(%addr, "http.advertise is not set and http.listen's address is unspecified: \
                peers are told 127.0.0.1, which only processes on this host reach");
        }
        let registered = LiveWorker {
            owner: self.owner.clone(),
            address: self.http.advertised(addr),
            token: self.internal.token.to_string(),
        };
        // Registered before the worker claims a partition, so a preview finds every partition's worker.
        match store::live_workers::register(&self.pool, &registered, presence::FRESH_WITHIN).await {
            Ok(()) => tracing::info!(owner = %registered.owner, address = %registered.address,
                "registered where peers reach this worker"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register this worker for peers yet; will retry")
            }
        }
        let (stop_presence, presence_stopped) = tokio::sync::oneshot::channel::<()>();
        let presence = presence::run(self.pool.clone(), registered, async {
            let _ = presence_stopped.await;
        });
        let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
        let watch = crate::release_watch::run(self.pool.clone(), async {
            let _ = watch_stopped.await;
        });
        let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = async {
            let result = self.worker.run_until_stopped(shutdown).await;
            let _ = stop_presence.send(());
            let _ = stop_watch.send(());
            let _ = stop_relay.send(());
            result
        };
        let relay = async {
            match self.relay {
                Some(relay) => {
                    relay
                        .run_until_stopped(async {
                            let _ = relay_stopped.await;
                        })
                        .await
                }
                None => Ok(()),
            }
        };
        let (result, relay_result, (), ()) = tokio::join!(worker, relay, presence, watch);
        let _ = stop_http.send(());
        let _ = http.await;
        result.and(relay_result)
    }
}

/// Runs the relay role alone until `shutdown` resolves (`cohort relay`): applies migrations (waiting for the
/// database), serves `/metrics`, `/healthz` and `/readyz`, and publishes the outbox.
pub async fn run_relay(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let brokers = config
        .kafka
        .brokers()
        .context("kafka.brokers is not configured (set COHORT_KAFKA_BROKERS or [kafka] brokers)")?
        .to_string();
    let pool = store::connect_lazy(&config.database).context("invalid database URL")?;
    migrate_with_retry(&pool, &config).await?;
    let relay = Relay::build(&config, brokers, pool.clone())
        .context("failed to prepare the outbox relay")?;
    let metrics = crate::metrics::install();
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let router = crate::http::router(metrics, None, pool);
    let (addr, http) = crate::http::serve(&config.http, config.api.max_body_bytes, router, async {
        let _ = http_stopped.await;
    })
    .await
    .with_context(|| format!("failed to listen on {}", config.http.listen))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let result = relay.run_until_stopped(shutdown).await;
    let _ = stop_http.send(());
    let _ = http.await;
    result
}

/// Runs the REST API alone until `shutdown` resolves (`cohort api`): applies migrations (waiting for the
/// database) and serves `/api/v1/…` with `/metrics`, `/healthz` and `/readyz`. `bound` learns the address
/// (port 0 picks one).
pub async fn run_api(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let catalogue =
        Arc::new(Catalogue::from_config(&config.catalogue).context("invalid [catalogue]")?);
    let pool = store::connect_lazy(&config.database).context("invalid database URL")?;
    migrate_with_retry(&pool, &config).await?;
    let state = crate::api::ApiState::new(&config, pool.clone(), catalogue)
        .context("failed to prepare the REST API")?;
    let metrics = crate::metrics::install();
    let router = crate::http::router(metrics, None, pool).merge(crate::api::router(state));
    let (addr, http) =
        crate::http::serve(&config.http, config.api.max_body_bytes, router, shutdown)
            .await
            .with_context(|| format!("failed to listen on {}", config.http.listen))?;
    tracing::info!(%addr, "serving the API, /metrics, /healthz and /readyz");
    if let Some(bound) = bound {
        let _ = bound.send(addr);
    }
    http.await.context("the http server task failed")
}

/// Applies migrations, waiting (with backoff) while the database is unreachable.
pub async fn migrate_with_retry(pool: &PgPool, config: &Config) -> anyhow::Result<()> {
    let mut backoff = crate::backoff::Backoff::from_config(config);
    let mut attempts = 0;
    loop {
        match store::migrate(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 30 && is_unreachable(&e) => {
                attempts += 1;
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(backoff.step()).await;
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
