//! Shared testcontainers: one PostgreSQL and one Kafka container per test binary, only used when a
//! Docker daemon answers (see [`crate::docker`]).
//!
//! Each `#[tokio::test]` has its own runtime, which ends with the test, while a shared container must
//! outlive every test. So each container is started and owned by a dedicated "keeper" thread with its
//! own runtime; tests only receive its address. Statics are never dropped in Rust, so the keepers are
//! told to remove their containers from a C `atexit` handler, which runs when the test binary exits
//! normally (a killed binary leaves them behind, as with any testcontainers setup without a reaper).

use std::future::Future;
use std::sync::{mpsc, Mutex, Once};
use std::time::Duration;

use testcontainers_modules::kafka::apache;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::core::{ContainerPort, IntoContainerPort};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ContainerRequest, Image, ImageExt};
use tokio::sync::OnceCell;

/// Starting includes pulling the image, so it is given generous but finite time.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the exit handler waits for each container's removal.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL 13 is the first with `DROP DATABASE … WITH (FORCE)`; the module's default tag is older.
const POSTGRES_TAG: &str = "16-alpine";

/// The URL of the shared PostgreSQL container's `postgres` database, starting it on first use.
pub async fn postgres_url() -> anyhow::Result<String> {
    static URL: OnceCell<Result<String, String>> = OnceCell::const_new();
    let request = Postgres::default().with_tag(POSTGRES_TAG);
    URL.get_or_init(|| {
        start_shared("postgres", request, 5432.tcp(), |host, port| {
            format!("postgres://postgres:postgres@{host}:{port}/postgres")
        })
    })
    .await
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The bootstrap servers of the shared Kafka container, starting it on first use.
pub async fn kafka_bootstrap_servers() -> anyhow::Result<String> {
    static SERVERS: OnceCell<Result<String, String>> = OnceCell::const_new();
    // The apache image runs KRaft (no ZooKeeper) and advertises 127.0.0.1:<mapped port>.
    let request = ContainerRequest::from(apache::Kafka::default());
    SERVERS
        .get_or_init(|| {
            start_shared("kafka", request, apache::KAFKA_PORT, |_host, port| {
                format!("127.0.0.1:{port}")
            })
        })
        .await
        .clone()
        .map_err(anyhow::Error::msg)
}

/// What the exit handler needs to remove one container.
struct Keeper {
    stop: tokio::sync::oneshot::Sender<()>,
    removed: mpsc::Receiver<()>,
}

static KEEPERS: Mutex<Vec<Keeper>> = Mutex::new(Vec::new());

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

extern "C" fn remove_shared_containers() {
    // Never panic here: unwinding out of an `extern "C"` function aborts the process.
    let keepers = match KEEPERS.lock() {
        Ok(mut keepers) => std::mem::take(&mut *keepers),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let mut waiting = Vec::new();
    for keeper in keepers {
        if keeper.stop.send(()).is_ok() {
            waiting.push(keeper.removed);
        }
    }
    for removed in waiting {
        let _ = removed.recv_timeout(REMOVE_TIMEOUT);
    }
}

fn register_exit_handler() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `atexit` only stores the function pointer; the handler is `extern "C"`, takes no
        // arguments and does not unwind.
        if unsafe { atexit(remove_shared_containers) } != 0 {
            eprintln!("test support: could not register the container clean-up; containers will be left running");
        }
    });
}

/// Starts `request` on a keeper thread and returns `address(host, mapped_port)` once it is ready.
async fn start_shared<I>(
    name: &'static str,
    request: ContainerRequest<I>,
    port: ContainerPort,
    address: fn(&str, u16) -> String,
) -> Result<String, String>
where
    I: Image + Send + Sync + 'static,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
    let spawned = std::thread::Builder::new()
        .name(format!("testcontainer-{name}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(format!("failed to build a runtime: {err}")));
                    return;
                }
            };
            runtime.block_on(keep(name, request, port, address, ready_tx));
        });
    if let Err(err) = spawned {
        return Err(format!(
            "failed to spawn the {name} container thread: {err}"
        ));
    }
    match tokio::time::timeout(START_TIMEOUT + Duration::from_secs(30), ready_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(format!(
            "the {name} container thread ended without an answer"
        )),
        Err(_) => Err(format!("timed out waiting for the {name} container")),
    }
}

/// The keeper thread's body: start, report the address, wait for the exit handler, remove.
async fn keep<I>(
    name: &'static str,
    request: ContainerRequest<I>,
    port: ContainerPort,
    address: fn(&str, u16) -> String,
    ready: tokio::sync::oneshot::Sender<Result<String, String>>,
) where
    I: Image + Send + Sync + 'static,
{
    let container = match bounded(START_TIMEOUT, request.start()).await {
        Ok(container) => container,
        Err(err) => {
            let _ = ready.send(Err(format!("failed to start the {name} container: {err}")));
            return;
        }
    };
    let located = async {
        let host = bounded(Duration::from_secs(30), container.get_host()).await?;
        let port = bounded(Duration::from_secs(30), container.get_host_port_ipv4(port)).await?;
        Ok::<_, String>(address(&host.to_string(), port))
    }
    .await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (removed_tx, removed_rx) = mpsc::channel();
    match located {
        Ok(url) => {
            register_exit_handler();
            KEEPERS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(Keeper {
                    stop: stop_tx,
                    removed: removed_rx,
                });
            let _ = ready.send(Ok(url));
            // Resolves when the exit handler asks. If the handler could not be registered it never
            // does: the process exit then ends this thread and the container is left running.
            let _ = stop_rx.await;
        }
        Err(err) => {
            let _ = ready.send(Err(format!("failed to locate the {name} container: {err}")));
        }
    }
    remove(name, container).await;
    let _ = removed_tx.send(());
}

async fn remove<I: Image>(name: &str, container: ContainerAsync<I>) {
    match tokio::time::timeout(REMOVE_TIMEOUT, container.rm()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => eprintln!("test support: failed to remove the {name} container: {err}"),
        Err(_) => eprintln!("test support: timed out removing the {name} container"),
    }
}

async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    future: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}
