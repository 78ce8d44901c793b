//! Bounded waits: every infrastructure call a test makes ends, with an error that says what was waited
//! for, instead of hanging the test.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;

/// The default bound for a single infrastructure operation (connect, create, produce, read).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `future` for at most `limit`, turning a timeout into an error that says what was waited for.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .with_context(|| format!("timed out after {limit:?} waiting to {what}"))?
}

/// Runs blocking work (librdkafka calls that block the calling thread) on a thread of its own,
/// bounded by `limit`. On timeout the thread is abandoned and an error returned, so the test fails
/// instead of hanging. (Not `spawn_blocking`: dropping a tokio runtime waits for its blocking tasks,
/// so an abandoned one would hang the test at its end.)
pub async fn blocking<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("test-blocking".to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .with_context(|| format!("failed to spawn a thread to {what}"))?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(anyhow::anyhow!("the thread meant to {what} panicked")),
        Err(_) => Err(anyhow::anyhow!(
            "timed out after {limit:?} waiting to {what}"
        )),
    }
}

/// Polls `condition` every 50 ms until it returns `Some`, or fails once `limit` has passed. Use this to
/// wait for an effect instead of sleeping a fixed time.
pub async fn eventually<T, F, Fut>(
    limit: Duration,
    what: &str,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: still not true after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
