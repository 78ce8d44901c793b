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
    /// `host:port` at which other cohort processes reach this listener: a worker publishes it (with
    /// its internal route's token) so previews served by any API process can evaluate in its memory.
    /// Unset: `listen`'s address and the bound port, with `127.0.0.1` in place of an unspecified address
    /// (`0.0.0.0`, `::`), which only processes on the same host can reach.
    pub advertise: Option<String>,
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
    /// How long a preview waits for a peer worker's evaluation of its partitions before it reads them
    /// from PostgreSQL instead.
    pub peer_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            max_body_bytes: 1 << 20,
            peer_timeout_ms: 2_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            advertise: None,
            header_read_timeout_ms: 10_000,
            first_request_timeout_ms: 3_000,
            request_timeout_ms: 60_000,
            max_connections: 1024,
            max_connections_per_client: 64,
            max_body_buffer_bytes: 64 << 20,
        }
    }
}

impl HttpConfig {
    /// The address a worker publishes for its listener, bound at `bound`: `advertise` when set, else the
    /// bound address, with `127.0.0.1` for an unspecified one.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        match &self.advertise {
            Some(address) => address.clone(),
            None if bound.ip().is_unspecified() => {
                SocketAddr::from(([127, 0, 0, 1], bound.port())).to_string()
            }
            None => bound.to_string(),
        }
    }
}

/// Why an `http.advertise` value is not a `host:port` a peer can connect to, if it is not.
pub(super) fn check_advertise(address: &str) -> Result<(), &'static str> {
    let authority: axum::http::uri::Authority = address
        .parse()
        .map_err(|_| "is not a host:port such as 10.0.0.7:8080 or worker-1.cohort:8080")?;
    if authority.as_str().contains('@') {
        return Err("must not hold user information");
    }
    if authority.host().is_empty() {
        return Err("names no host");
    }
    match authority.port_u16() {
        None => Err("names no port"),
        Some(0) => Err("port 0 cannot be reached"),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_defaults_to_the_bound_one_with_loopback_for_an_unspecified_ip() {
        let config = HttpConfig::default();
        let bound: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(config.advertised(bound), "10.1.2.3:8080");
        let any: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        assert_eq!(config.advertised(any), "127.0.0.1:9000");
        let any6: SocketAddr = "[::]:9000".parse().unwrap();
        assert_eq!(config.advertised(any6), "127.0.0.1:9000");
        let set = HttpConfig {
            advertise: Some("worker-1.cohort:8080".into()),
            ..HttpConfig::default()
        };
        assert_eq!(set.advertised(any), "worker-1.cohort:8080");
    }

    #[test]
    fn an_advertised_address_must_be_a_host_and_a_port() {
        for good in ["10.0.0.7:8080", "worker-1.cohort:8080", "[fd00::7]:8080"] {
            assert_eq!(check_advertise(good), Ok(()), "{good}");
        }
        for bad in [
            "10.0.0.7",
            "10.0.0.7:0",
            "http://10.0.0.7:8080",
            "10.0.0.7:8080/x",
            "u@10.0.0.7:8080",
            ":8080",
            "",
            "a b:80",
        ] {
            assert!(check_advertise(bad).is_err(), "{bad}");
        }
    }
}
