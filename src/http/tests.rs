//! The server against raw sockets: what a slow or greedy client gets. Every exchange is bounded by
//! [`BOUND`], far beyond any deadline set here, so a regression fails instead of hanging; nothing
//! asserts how fast an answer came.

use super::*;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const BOUND: Duration = Duration::from_secs(30);
/// The body limit of `/small`.
const SMALL: usize = 16;
/// The body limit of every route (`api.max_body_bytes`).
const MAX_BODY: usize = 4096;

struct Server {
    addr: SocketAddr,
    handle: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
    /// Requests `/count` has answered.
    counted: Arc<AtomicUsize>,
    /// `/hold` and `/hold-body` answer once a permit is added here.
    release: Arc<Semaphore>,
    /// Requests `/hold-body` has read the whole body of.
    bodies_read: Arc<AtomicUsize>,
    /// Requests `/late-echo` has received (before reading their bodies).
    late_received: Arc<AtomicUsize>,
    /// `/late-echo` starts reading its body once a permit is added here.
    read_later: Arc<Semaphore>,
}

async fn start(config: HttpConfig) -> Server {
    let counted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Semaphore::new(0));
    let bodies_read = Arc::new(AtomicUsize::new(0));
    let late_received = Arc::new(AtomicUsize::new(0));
    let read_later = Arc::new(Semaphore::new(0));
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
        .route("/echo", post(|body: Bytes| async move { body }))
        // Answers from the head alone, as a handler refusing a request before its body does.
        .route(
            "/refuse",
            post(|| async { (StatusCode::UNAUTHORIZED, "refused") }),
        )
        .route(
            "/small",
            post(|body: Bytes| async move { body }).layer(DefaultBodyLimit::max(SMALL)),
        )
        // Reads the whole body, then holds it until released.
        .route("/hold-body", {
            let release = release.clone();
            let bodies_read = bodies_read.clone();
            post(move |body: Bytes| async move {
                bodies_read.fetch_add(1, Ordering::SeqCst);
                let _permit = release.acquire().await;
                body.len().to_string()
            })
        })
        // Starts reading its body only when told to.
        .route("/late-echo", {
            let late_received = late_received.clone();
            let read_later = read_later.clone();
            post(move |request: axum::extract::Request| async move {
                late_received.fetch_add(1, Ordering::SeqCst);
                let _permit = read_later.acquire().await;
                axum::body::to_bytes(request.into_body(), usize::MAX)
                    .await
                    .map_err(|_| StatusCode::BAD_REQUEST)
            })
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, handle) = serve(&config, MAX_BODY, router, async {
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
        bodies_read,
        late_received,
        read_later,
    }
}

fn limits(header_ms: u64, request_ms: u64, max_connections: usize) -> HttpConfig {
    HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        header_read_timeout_ms: header_ms,
        first_request_timeout_ms: header_ms,
        request_timeout_ms: request_ms,
        max_connections,
        max_connections_per_client: max_connections,
        max_body_buffer_bytes: 64 * MAX_BODY,
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
    let (status, head, body) = response(&mut busy).await;
    assert_eq!((status, body.as_str()), (200, "released"));
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed(&mut busy).await, "the busy connection stayed open");
    tokio::time::timeout(BOUND, server.handle)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}

/// Whether an answer's head says the connection closes after it.
fn says_close(head: &str) -> bool {
    head.lines()
        .filter_map(|line| line.strip_prefix("connection:"))
        .any(|value| value.split(',').any(|token| token.trim() == "close"))
}

/// A chunked body: `body` in chunks of at most `size` bytes, then the last chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Sends `raw` on a fresh connection and expects `status` with `Connection: close`, then the end of the
/// connection.
async fn answered_then_closed(server: &Server, raw: &[u8], status: u16) {
    let mut stream = connect(server.addr).await;
    send(&mut stream, raw).await;
    let (got, head, body) = response(&mut stream).await;
    let request = String::from_utf8_lossy(&raw[..raw.len().min(120)]);
    assert_eq!(got, status, "{request}: {head}{body}");
    assert!(
        says_close(&head),
        "{request}: no Connection: close in {head}"
    );
    assert!(
        closed(&mut stream).await,
        "{request}: the connection stayed open"
    );
}

#[tokio::test]
async fn an_answer_given_before_the_body_was_read_says_close_and_the_connection_closes() {
    let server = start(limits(10_000, 60_000, 16)).await;
    let head = "POST /refuse HTTP/1.1\r\nhost: x\r\n";
    let whole = format!("{head}content-length: 5\r\n\r\nhello");
    let part = format!("{head}content-length: 50\r\n\r\nhello");
    let mut whole_chunked = format!("{head}transfer-encoding: chunked\r\n\r\n").into_bytes();
    whole_chunked.extend_from_slice(&chunked(b"hello world", 4));
    let part_chunked = format!("{head}transfer-encoding: chunked\r\n\r\n4\r\nhell\r\n");
    let expecting = format!("{head}content-length: 5\r\nexpect: 100-continue\r\n\r\n");
    for raw in [
        whole.as_bytes(),
        part.as_bytes(),
        &whole_chunked,
        part_chunked.as_bytes(),
        expecting.as_bytes(),
    ] {
        answered_then_closed(&server, raw, 401).await;
    }
}

#[tokio::test]
async fn a_body_refused_over_the_limit_before_its_end_gets_413_that_says_close() {
    let server = start(limits(10_000, 60_000, 16)).await;
    let over = vec![b'x'; SMALL * 4];
    // The limit is passed long before the declared length has arrived.
    let mut with_length = format!(
        "POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        over.len() * 16
    )
    .into_bytes();
    with_length.extend_from_slice(&over);
    // The limit is passed at the third chunk, before the last chunk is read.
    let mut in_chunks =
        b"POST /small HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    in_chunks.extend_from_slice(&chunked(&over, SMALL / 2));
    for raw in [&with_length, &in_chunks] {
        answered_then_closed(&server, raw, 413).await;
    }
}

#[tokio::test]
async fn a_broken_chunked_body_is_refused_with_close_and_the_connection_closes() {
    let server = start(limits(10_000, 60_000, 16)).await;
    let raw =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n";
    answered_then_closed(&server, raw, 400).await;
}

#[tokio::test]
async fn answers_from_the_server_itself_that_close_say_so() {
    let server = start(limits(10_000, 60_000, 16)).await;
    // The client asks to close.
    answered_then_closed(
        &server,
        b"GET /count HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        200,
    )
    .await;
    // hyper refuses a head it cannot parse.
    answered_then_closed(
        &server,
        b"GET /count HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n",
        400,
    )
    .await;
    answered_then_closed(
        &server,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
        400,
    )
    .await;
}

#[tokio::test]
async fn a_connection_whose_bodies_are_read_to_the_end_stays_usable() {
    let server = start(limits(10_000, 60_000, 16)).await;
    let mut stream = connect(server.addr).await;
    let mut echo_chunked =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    echo_chunked.extend_from_slice(&chunked(b"hello world", 4));
    let exchanges: [(&[u8], u16, &str); 6] = [
        (b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n", 200, "counted"),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
            200,
            "abc",
        ),
        (&echo_chunked, 200, "hello world"),
        // Refused from its head, but there was no body to leave unread.
        (
            b"POST /refuse HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
            401,
            "refused",
        ),
        (b"POST /refuse HTTP/1.1\r\nhost: x\r\n\r\n", 401, "refused"),
        (
            b"POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 16\r\n\r\n0123456789abcdef",
            200,
            "0123456789abcdef",
        ),
    ];
    for (raw, status, answer) in exchanges {
        send(&mut stream, raw).await;
        let (got, head, body) = response(&mut stream).await;
        let request = String::from_utf8_lossy(raw);
        assert_eq!((got, body.as_str()), (status, answer), "{request}: {head}");
        assert!(!says_close(&head), "{request}: {head}");
    }
    // Still usable after all of them.
    send(&mut stream, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (status, _, body) = response(&mut stream).await;
    assert_eq!((status, body.as_str()), (200, "counted"));
    assert_eq!(server.counted.load(Ordering::SeqCst), 2);
}

mod limits;
