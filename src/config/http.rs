//! `[http]` and `[api]`: the HTTP listener and the REST API's limits.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[http]`: the one HTTP listener.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address serving /metrics, /healthz, /readyz and the REST API. Loopback by default: exposing the
    /// API is a deliberate choice.
    pub listen: SocketAddr,
    /// A connection must send a request's head (request line and headers) within this; it also closes a
    /// keep-alive connection left idle that long.
    pub header_read_timeout_ms: u64,
    /// A new connection must send its first request's head within this (or within
    /// `header_read_timeout_ms`, if that is shorter), else it is closed: an idle socket does not hold a
    /// connection slot for the whole header timeout.
    pub first_request_timeout_ms: u64,
    /// A request must be read and answered within this: 408 when its body had not all arrived, 503 when
    /// the answer was not ready. A streamed answer's body is not bounded.
    pub request_timeout_ms: u64,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Connections served at once for one client (one IPv4 address, or one IPv6 /64): a further one is
    /// answered 503 and closed at once.
    pub max_connections_per_client: usize,
    /// Request-body bytes all requests may hold at once while their bodies are read and answered. A body
    /// reserves its `Content-Length` (a chunked one `api.max_body_bytes`) when it is first read, and
    /// waits while the budget is spent (503 when the request's time runs out first). At least
    /// `api.max_body_bytes`.
    pub max_body_buffer_bytes: usize,
}

/// `[api]`: limits of the REST API.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Requests per second each API key may make on average (a token bucket per key and process).
    pub rate_limit_per_second: u32,
    /// Requests a key may make in a burst above the average rate.
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes; larger ones are refused with 413 before being read.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            max_body_bytes: 1 << 20,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            header_read_timeout_ms: 10_000,
            first_request_timeout_ms: 3_000,
            request_timeout_ms: 60_000,
            max_connections: 1024,
            max_connections_per_client: 64,
            max_body_buffer_bytes: 64 << 20,
        }
    }
}
