//! The REST API as `cohort bench` calls it: an org's key, and one request per connection to the address
//! the worker's HTTP listener bound, timed from the connect to the last byte of the answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sqlx::PgPool;

/// The most of an answer read (a page of 100 groups is well under it).
const MAX_ANSWER_BYTES: usize = 16 << 20;
/// How long one request may take before the phase fails (a preview of a million devices takes seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A client of the API with one org's key.
#[derive(Clone)]
pub struct Api {
    addr: SocketAddr,
    /// `Authorization: Bearer` value.
    key: String,
}

/// One answer: its status, its body (`Null` when empty or not JSON) and how long the request took.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub ms: f64,
}

impl Reply {
    /// The answer, if its status is `expected`; otherwise an error naming the request and the answer.
    pub fn expect(self, expected: StatusCode, what: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            self.status == expected,
            "{what}: answered {} instead of {expected}: {}",
            self.status,
            self.body
        );
        Ok(self)
    }
}

impl Api {
    /// A client of the API at `addr` with a new key of `org_id`'s named `name`. Each step of the benchmark
    /// has a key of its own: the rate limit is per key, and no step should be refused for another's
    /// requests.
    pub async fn with_new_key(
        pool: &PgPool,
        addr: SocketAddr,
        org_id: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let (_, key) = crate::store::api_keys::create(pool, Some(org_id), name)
            .await
            .map_err(|e| anyhow::anyhow!("failed to create an API key: {e}"))?;
        Ok(Self { addr, key })
    }

    /// `method path` with `body` as JSON (if any).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let started = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .with_context(|| format!("{path} did not answer within {REQUEST_TIMEOUT:?}"))??;
        let (status, bytes) = answer;
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, axum::body::Bytes)> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("failed to connect to the API at {}", self.addr))?;
        stream.set_nodelay(true)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("failed to open an HTTP connection")?;
        // The connection is driven by its own task; it ends when the answer has been read and the
        // sender dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", self.key));
        let body = match body {
            Some(value) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(value)?)
            }
            None => Body::empty(),
        };
        let response = sender
            .send_request(request.body(body)?)
            .await
            .with_context(|| format!("failed to send {path}"))?;
        let status = response.status();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER_BYTES)
            .await
            .with_context(|| format!("failed to read the answer to {path}"))?;
        Ok((status, bytes))
    }
}

/// The median and the largest of some request times.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub requests: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Timings {
    /// The figures of `ms` (in any order).
    pub fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median_ms = match n {
            0 => 0.0,
            _ if n % 2 == 1 => ms[n / 2],
            _ => (ms[n / 2 - 1] + ms[n / 2]) / 2.0,
        };
        Self {
            requests: n,
            median_ms,
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }

    /// `median X ms, max Y ms (N requests)`.
    pub fn describe(&self) -> String {
        format!(
            "median {:.1} ms, max {:.1} ms ({} requests)",
            self.median_ms, self.max_ms, self.requests
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_give_the_median_and_the_max() {
        let t = Timings::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((t.requests, t.median_ms, t.max_ms), (3, 2.0, 3.0));
        let t = Timings::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!((t.median_ms, t.max_ms), (2.5, 4.0));
        assert_eq!(Timings::of(Vec::new()).requests, 0);
    }
}
