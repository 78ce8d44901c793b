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
/// `max_connections` are served at once (the next wait in the listen backlog).
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
async fn answer(router: Router, request: Request<Incoming>, deadline: Duration) -> Response {
    let body_read = Arc::new(AtomicBool::new(request.body().is_end_stream()));
    let request = request.map(|body| {
        Body::new(Tracked {
            inner: body,
            finished: body_read.clone(),
        })
    });
    match tokio::time::timeout(deadline, router.oneshot(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) if !body_read.load(Ordering::Acquire) => {
            let mut response = ApiError::request_timeout(format!(
                "the request's body did not arrive in time (http.request_timeout_ms = {})",
                deadline.as_millis()
            ))
            .into_response();
            // The rest of the body may still be on its way: this connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        Err(_) => ApiError::unavailable(format!(
            "the answer was not ready in time; retry later (http.request_timeout_ms = {})",
            deadline.as_millis()
        ))
        .into_response(),
    }
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
mod tests {
    //! The server against raw sockets: what a slow or greedy client gets. Every exchange is bounded by
    //! [`BOUND`], far beyond any deadline set here, so a regression fails instead of hanging; nothing
    //! asserts how fast an answer came.
    use super::*;
    use axum::routing::post;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    const BOUND: Duration = Duration::from_secs(30);

    struct Server {
        addr: SocketAddr,
        handle: tokio::task::JoinHandle<()>,
        stop: oneshot::Sender<()>,
        /// Requests `/count` has answered.
        counted: Arc<AtomicUsize>,
        /// `/hold` answers once a permit is added here.
        release: Arc<Semaphore>,
    }

    async fn start(config: HttpConfig) -> Server {
        let counted = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Semaphore::new(0));
        let router = Router::new()
            .route("/count", {
                let counted = counted.clone();
                get(move || async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    "counted"
                })
            })
            .route("/hold", {
                let release = release.clone();
                get(move || async move {
                    let _permit = release.acquire().await;
                    "released"
                })
            })
            .route("/never", get(std::future::pending::<&'static str>))
            .route("/echo", post(|body: Bytes| async move { body }));
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, handle) = serve(&config, router, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        Server {
            addr,
            handle,
            stop,
            counted,
            release,
        }
    }

    fn limits(header_ms: u64, request_ms: u64, max_connections: usize) -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            header_read_timeout_ms: header_ms,
            request_timeout_ms: request_ms,
            max_connections,
        }
    }

    /// One response read off `stream`: its status code, its head (lower-cased) and its body.
    async fn response(stream: &mut TcpStream) -> (u16, String, String) {
        tokio::time::timeout(BOUND, async {
            let mut buffer = Vec::new();
            let head_end = loop {
                if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before a response: {buffer:?}");
                buffer.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(buffer[..head_end].to_vec())
                .unwrap()
                .to_ascii_lowercase();
            let status = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .map(|n| n.trim().parse().unwrap())
                .unwrap_or(0);
            let mut body = buffer[head_end..].to_vec();
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside a body");
                body.extend_from_slice(&chunk[..n]);
            }
            (status, head, String::from_utf8(body).unwrap())
        })
        .await
        .expect("no response within the bound")
    }

    /// Whether the server closes `stream` (rather than sending anything more).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(BOUND, stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true, // reset
            Err(_) => false,
        }
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    /// Writes `raw` (a request, or part of one) to `stream`.
    async fn send(stream: &mut TcpStream, raw: &[u8]) {
        stream.write_all(raw).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_whose_headers_never_finish_is_closed_without_an_answer() {
        let server = start(limits(200, 60_000, 16)).await;
        let mut stream = connect(server.addr).await;
        send(&mut stream, b"GET /count HTTP/1.1\r\nhost: x\r\nx-slow: ").await;
        assert!(closed(&mut stream).await, "the connection stayed open");
        assert_eq!(server.counted.load(Ordering::SeqCst), 0);

        // Others are served as before.
        let mut stream = connect(server.addr).await;
        send(&mut stream, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(response(&mut stream).await.0, 200);
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_gets_408_in_the_error_shape_and_the_connection_closes() {
        let server = start(limits(10_000, 300, 16)).await;
        let mut stream = connect(server.addr).await;
        send(
            &mut stream,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc",
        )
        .await;
        let (status, head, body) = response(&mut stream).await;
        assert_eq!(status, 408, "{head}{body}");
        assert!(head.contains("connection: close"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "request_timeout");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("http.request_timeout_ms = 300"));
        assert!(closed(&mut stream).await, "the connection stayed open");

        // A body that arrives whole is echoed.
        let mut stream = connect(server.addr).await;
        send(
            &mut stream,
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
        )
        .await;
        let (status, _, body) = response(&mut stream).await;
        assert_eq!((status, body.as_str()), (200, "abc"));
    }

    #[tokio::test]
    async fn an_answer_not_ready_in_time_is_a_503_and_the_connection_stays_usable() {
        let server = start(limits(10_000, 300, 16)).await;
        let mut stream = connect(server.addr).await;
        send(&mut stream, b"GET /never HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (status, head, body) = response(&mut stream).await;
        assert_eq!(status, 503, "{head}{body}");
        assert!(!head.contains("connection: close"), "{head}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert_eq!(body["details"], serde_json::json!([]));

        send(&mut stream, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (status, _, body) = response(&mut stream).await;
        assert_eq!((status, body.as_str()), (200, "counted"));
    }

    #[tokio::test]
    async fn a_connection_beyond_the_limit_waits_until_one_closes() {
        let server = start(limits(10_000, 60_000, 1)).await;
        let mut first = connect(server.addr).await;
        send(
            &mut first,
            b"GET /hold HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        // The second connection is accepted by the kernel (the listen backlog) but not served.
        let mut second = connect(server.addr).await;
        send(&mut second, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            server.counted.load(Ordering::SeqCst),
            0,
            "a second connection was served while the limit was 1"
        );

        server.release.add_permits(1);
        let (status, _, body) = response(&mut first).await;
        assert_eq!((status, body.as_str()), (200, "released"));
        let (status, _, body) = response(&mut second).await;
        assert_eq!((status, body.as_str()), (200, "counted"));
        assert_eq!(server.counted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn shutdown_finishes_the_request_in_hand_then_stops_listening() {
        let server = start(limits(10_000, 60_000, 16)).await;
        let mut busy = connect(server.addr).await;
        send(&mut busy, b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n").await;
        // An idle keep-alive connection does not hold shutdown up.
        let mut idle = connect(server.addr).await;
        send(&mut idle, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(response(&mut idle).await.0, 200);

        server.stop.send(()).unwrap();
        assert!(closed(&mut idle).await, "the idle connection stayed open");
        assert!(!server.handle.is_finished());
        server.release.add_permits(1);
        let (status, _, body) = response(&mut busy).await;
        assert_eq!((status, body.as_str()), (200, "released"));
        tokio::time::timeout(BOUND, server.handle)
            .await
            .expect("the server did not stop")
            .unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err());
    }
}
