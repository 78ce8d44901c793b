//! The limits a greedy client meets: the deadline for a first request, the connection cap per client,
//! the body limit applied from the head, and the budget the bodies being read share. Assertions are on
//! statuses, headers and counts; a wait for a condition is bounded by [`BOUND`].

use super::*;
use std::net::{IpAddr, Ipv4Addr};
use tokio::net::TcpSocket;

/// Opens a connection to `addr` from the loopback address `from` (Linux routes all of 127/8 to lo).
async fn connect_from(from: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Waits (at most [`BOUND`]) until `condition` holds.
async fn until(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within the bound"));
}

fn error_body(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn a_content_length_over_the_body_limit_is_refused_from_the_head_on_every_route() {
    let server = start(limits(10_000, 60_000, 16)).await;
    let over = MAX_BODY + 1;
    for head in [
        format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\n\r\n"),
        // A route that takes no body at all.
        format!("GET /count HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\n\r\n"),
        // The client waits for 100 Continue before sending the body: it must get the 413 instead.
        format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {over}\r\nexpect: 100-continue\r\n\r\n"
        ),
        format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 1u64 << 60),
    ] {
        let mut stream = connect(server.addr).await;
        // Not one byte of the body is sent: the answer comes from the head alone.
        send(&mut stream, head.as_bytes()).await;
        let (status, response_head, body) = response(&mut stream).await;
        assert_eq!(status, 413, "{head}: {response_head}{body}");
        assert!(says_close(&response_head), "{head}: {response_head}");
        assert_eq!(
            error_body(&body),
            serde_json::json!({"error": "bad_request", "message": "Request body too large", "details": []})
        );
        assert!(closed(&mut stream).await, "{head}: the connection stayed open");
    }
    assert_eq!(server.counted.load(Ordering::SeqCst), 0);

    // At the limit, the body is read and answered, and the connection kept.
    let mut stream = connect(server.addr).await;
    let mut raw = format!("POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: {MAX_BODY}\r\n\r\n")
        .into_bytes();
    raw.extend_from_slice(&vec![b'x'; MAX_BODY]);
    send(&mut stream, &raw).await;
    let (status, head, body) = response(&mut stream).await;
    assert_eq!((status, body.len()), (200, MAX_BODY), "{head}");
    assert!(!says_close(&head), "{head}");
}

#[tokio::test]
async fn a_connection_without_a_first_request_is_closed_but_an_idle_kept_one_is_not() {
    let mut config = limits(60_000, 60_000, 16);
    config.first_request_timeout_ms = 200;
    let server = start(config).await;
    // Nothing at all, then a head that never finishes.
    let mut silent = connect(server.addr).await;
    assert!(closed(&mut silent).await, "a silent connection stayed open");
    let mut partial = connect(server.addr).await;
    send(&mut partial, b"GET /count HTTP/1.1\r\nhost: x\r\n").await;
    assert!(closed(&mut partial).await, "a partial head stayed open");
    assert_eq!(server.counted.load(Ordering::SeqCst), 0);

    // Once a request has been served, idling past the first-request deadline (but not the header
    // deadline) keeps the connection.
    let mut kept = connect(server.addr).await;
    send(&mut kept, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(response(&mut kept).await.0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&mut kept, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (status, head, _) = response(&mut kept).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(server.counted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_client_over_its_cap_is_refused_at_once_and_other_clients_are_served() {
    let mut config = limits(60_000, 60_000, 3);
    config.max_connections_per_client = 2;
    let server = start(config).await;
    let greedy = Ipv4Addr::new(127, 0, 0, 1);
    // Two idle connections: the client's cap. They hold two of the three slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(greedy, server.addr).await);
    }
    for _ in 0..3 {
        let mut extra = connect_from(greedy, server.addr).await;
        let (status, head, body) = response(&mut extra).await;
        assert_eq!(status, 503, "{head}{body}");
        assert!(says_close(&head), "{head}");
        assert!(head.contains("retry-after: 1"), "{head}");
        let body = error_body(&body);
        assert_eq!(body["error"], "internal_error");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("http.max_connections_per_client = 2"));
        assert!(closed(&mut extra).await, "a refused connection stayed open");
    }
    // Another client gets the last slot and is served while the greedy one idles.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), server.addr).await;
    send(&mut other, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(response(&mut other).await.0, 200);
    // The connections within the cap are served as any other.
    for stream in &mut held {
        send(stream, b"GET /count HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(response(stream).await.0, 200);
    }
    assert_eq!(server.counted.load(Ordering::SeqCst), 3);
}

/// A request to `path` with a whole body at the limit.
fn whole_body(path: &str) -> Vec<u8> {
    let mut raw = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {MAX_BODY}\r\n\r\n")
        .into_bytes();
    raw.extend_from_slice(&vec![b'x'; MAX_BODY]);
    raw
}

#[tokio::test]
async fn bodies_beyond_the_budget_wait_until_room_is_given_back() {
    let mut config = limits(60_000, 60_000, 16);
    // Room for two bodies at the limit.
    config.max_body_buffer_bytes = 2 * MAX_BODY;
    let server = start(config).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(server.addr).await;
        send(&mut stream, &whole_body("/hold-body")).await;
        streams.push(stream);
    }
    until("two bodies read", || {
        server.bodies_read.load(Ordering::SeqCst) == 2
    })
    .await;
    // All three bodies have arrived; the third is not read while two are held. (A pause, so that a
    // third read would have happened: nothing here depends on how long it is.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.bodies_read.load(Ordering::SeqCst),
        2,
        "a third body was read while the budget held two"
    );
    // One answer gives its room back, and the waiting body is read.
    server.release.add_permits(1);
    until("the third body read", || {
        server.bodies_read.load(Ordering::SeqCst) == 3
    })
    .await;
    server.release.add_permits(2);
    for stream in &mut streams {
        let (status, head, body) = response(stream).await;
        assert_eq!((status, body.as_str()), (200, "4096"), "{head}");
        assert!(!says_close(&head), "{head}");
    }
}

#[tokio::test]
async fn a_body_that_finds_no_room_before_its_deadline_gets_503_and_the_connection_closes() {
    let mut config = limits(60_000, 3_000, 16);
    // Room for one body at the limit.
    config.max_body_buffer_bytes = MAX_BODY;
    let server = start(config).await;
    // The waiting request's deadline is set first: it is received, and reads its body only later.
    let mut waiting = connect(server.addr).await;
    send(&mut waiting, &whole_body("/late-echo")).await;
    until("the late request received", || {
        server.late_received.load(Ordering::SeqCst) == 1
    })
    .await;
    // So that the holder's deadline is well after the waiting request's.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut holder = connect(server.addr).await;
    send(&mut holder, &whole_body("/hold-body")).await;
    until("the holder's body read", || {
        server.bodies_read.load(Ordering::SeqCst) == 1
    })
    .await;
    server.read_later.add_permits(1);

    let (status, head, body) = response(&mut waiting).await;
    assert_eq!(status, 503, "{head}{body}");
    assert!(says_close(&head), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    let body = error_body(&body);
    assert_eq!(body["error"], "internal_error");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&format!("http.max_body_buffer_bytes = {MAX_BODY}")),
        "{body}"
    );
    assert!(closed(&mut waiting).await, "the connection stayed open");

    // Once the holder's answer is out, its room serves the next body.
    server.release.add_permits(2);
    response(&mut holder).await;
    let mut next = connect(server.addr).await;
    send(&mut next, &whole_body("/echo")).await;
    let (status, _, body) = response(&mut next).await;
    assert_eq!((status, body.len()), (200, MAX_BODY));
}
