//! A preview's (or a release impact's) partitions held by other workers, evaluated in their memory: each
//! owner found in `live_workers` is asked, all at once, for the partitions it owns ([`super::internal`]'s
//! routes), each within `api.peer_timeout_ms`. What a worker did not answer — it failed, took too long,
//! or no longer holds the partition — is left to the caller, which reads it from PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::internal::{EvaluateAnswer, ImpactAnswer};
use crate::metrics as m;
use crate::store::live_workers::LiveWorker;

/// The most of a peer's answer read: a sample of 100 devices with their shown fields is far below it.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// What a worker's internal route answers: it says which of the partitions asked it answered.
pub(crate) trait Answered: DeserializeOwned {
    fn answered(&mut self) -> &mut Vec<i32>;
}

impl Answered for EvaluateAnswer {
    fn answered(&mut self) -> &mut Vec<i32> {
        &mut self.partitions
    }
}

impl Answered for ImpactAnswer {
    fn answered(&mut self) -> &mut Vec<i32> {
        &mut self.partitions
    }
}

/// The live owners of the partitions in `owners` that are not `answered` yet, each with its partitions,
/// by owner name; never `own` (this process's worker: what its view did not answer, it does not hold).
pub(crate) fn to_ask(
    owners: &[(i32, Option<LiveWorker>)],
    answered: &BTreeSet<i32>,
    own: Option<&str>,
) -> BTreeMap<String, (LiveWorker, Vec<i32>)> {
    let mut asked: BTreeMap<String, (LiveWorker, Vec<i32>)> = BTreeMap::new();
    for (partition, owner) in owners {
        let Some(owner) = owner else { continue };
        if answered.contains(partition) || own == Some(owner.owner.as_str()) {
            continue;
        }
        asked
            .entry(owner.owner.clone())
            .or_insert_with(|| (owner.clone(), Vec::new()))
            .1
            .push(*partition);
    }
    asked
}

/// Asks the live owners of the partitions neither `answered` nor in `skip` (never `own`) for them, and
/// returns the parts that answered partitions not answered yet, each restricted to those; `answered`
/// gains them. What is still unanswered is [`unanswered`].
pub(crate) async fn ask_the_rest<Q: Serialize, A: Answered>(
    owners: &[(i32, Option<LiveWorker>)],
    answered: &mut BTreeSet<i32>,
    skip: &[i32],
    own: Option<&str>,
    path: &'static str,
    question: impl Fn(Vec<i32>) -> Q,
    timeout: Duration,
) -> Vec<A> {
    let not_asked: BTreeSet<i32> = answered.iter().chain(skip).copied().collect();
    let asked = to_ask(owners, &not_asked, own);
    if asked.is_empty() {
        return Vec::new();
    }
    let mut parts: Vec<A> = ask(asked, path, question, timeout).await;
    parts.retain_mut(|part| {
        let partitions = part.answered();
        partitions.retain(|p| !answered.contains(p));
        answered.extend(partitions.iter().copied());
        !partitions.is_empty()
    });
    parts
}

/// The partitions of `owners` not in `answered`: those to read from PostgreSQL.
pub(crate) fn unanswered(
    owners: &[(i32, Option<LiveWorker>)],
    answered: &BTreeSet<i32>,
) -> Vec<i32> {
    owners
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !answered.contains(p))
        .collect()
}

/// Asks every worker in `owners` at `path` for its partitions (`question` of them), concurrently, each
/// within `timeout`; returns the answers that came, each restricted to the partitions asked of that
/// worker.
async fn ask<Q: Serialize, A: Answered>(
    owners: BTreeMap<String, (LiveWorker, Vec<i32>)>,
    path: &'static str,
    question: impl Fn(Vec<i32>) -> Q,
    timeout: Duration,
) -> Vec<A> {
    let question = &question;
    // The route's last segment, `evaluate` or `impact`: a bounded label.
    let route = path.rsplit('/').next().unwrap_or(path);
    let asks = owners.into_values().map(|(worker, partitions)| async move {
        let request = question(partitions.clone());
        let answer = match tokio::time::timeout(timeout, exchange(&worker, path, &request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow::anyhow!("no answer within {timeout:?}")),
        };
        match answer {
            Ok(mut answer) => {
                // A worker answers only what it was asked; anything else is ignored, not counted twice.
                A::answered(&mut answer).retain(|p| partitions.contains(p));
                metrics::counter!(m::PEER_REQUESTS, "outcome" => "answered", "route" => route)
                    .increment(1);
                Some(answer)
            }
            Err(e) => {
                metrics::counter!(m::PEER_REQUESTS, "outcome" => "failed", "route" => route)
                    .increment(1);
                tracing::warn!(owner = %worker.owner, address = %worker.address, path, ?partitions,
                    error = format!("{e:#}"), "a peer worker did not answer; reading its partitions from the database");
                None
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One call of a worker's internal route, on a connection of its own (closed when the answer is read or
/// the call is dropped at its timeout).
async fn exchange<Q: Serialize, A: Answered>(
    worker: &LiveWorker,
    path: &str,
    request: &Q,
) -> anyhow::Result<A> {
    let stream = tokio::net::TcpStream::connect(worker.address.as_str())
        .await
        .context("failed to connect")?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("failed to open an HTTP connection")?;
    let call = async {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(HOST, worker.address.as_str())
            .header(AUTHORIZATION, format!("Bearer {}", worker.token))
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(request)?))?;
        let response = sender
            .send_request(request)
            .await
            .context("failed to send the request")?;
        let status = response.status();
        let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER_BYTES)
            .await
            .context("failed to read the answer")?;
        anyhow::ensure!(
            status == StatusCode::OK,
            "answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
        );
        serde_json::from_slice::<A>(&bytes).context("the answer is not what the route answers")
    };
    // The connection is driven beside the call; once it ends, the call's own error says why.
    let driven = async {
        let _ = connection.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        answer = call => answer,
        () = driven => unreachable!("pending never resolves"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(owner: &str) -> Option<LiveWorker> {
        Some(LiveWorker {
            owner: owner.into(),
            address: format!("{owner}:8080"),
            token: "t".into(),
        })
    }

    #[test]
    fn each_live_owner_is_asked_once_for_its_partitions_not_yet_answered() {
        let owners = vec![
            (0, worker("a")),
            (1, worker("b")),
            (2, worker("a")),
            (3, None),
            (4, worker("self")),
            (5, worker("b")),
        ];
        let answered = BTreeSet::from([5]);
        let asked = to_ask(&owners, &answered, Some("self"));
        let asked: Vec<(&str, &[i32])> = asked
            .iter()
            .map(|(owner, (_, partitions))| (owner.as_str(), partitions.as_slice()))
            .collect();
        // Partition 3 has no live owner, 4 is this process's worker's, 5 is answered: none is asked.
        assert_eq!(asked, vec![("a", &[0, 2][..]), ("b", &[1][..])]);
        assert!(to_ask(&owners, &BTreeSet::from([0, 1, 2, 4, 5]), None).is_empty());
    }
}
