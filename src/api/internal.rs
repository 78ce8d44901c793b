//! The routes a worker process serves to the other cohort processes, whether or not it serves the API,
//! for work served by another process over the partitions it holds in memory (the API's `peers` module asks
//! them): `POST /internal/v1/evaluate` evaluates a preview's filter, `POST /internal/v1/impact` counts a
//! release's or withdrawal's impact. They are not part of the public API (the OpenAPI document does not
//! list them).
//!
//! A caller presents the worker's token (`Authorization: Bearer <token>`), which the worker drew when it
//! started and published in `live_workers` with its address ([`crate::worker::presence`]); anything else
//! is answered 401 with no detail. The body is bounded like the API's (`api.max_body_bytes`), its JSON read
//! by the same rules, and the answer is bounded by its sample (at most [`MAX_SAMPLE`] devices of
//! [`SHOWN`] fields). Evaluations run on a blocking thread, at most
//! [`super::MEMORY_PREVIEW_SLOTS`] at once per process, shared with the previews of the API in the same
//! process: more wait their turn.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::error::Json;
use super::ApiError;
use crate::rules::{compile, Catalogue, CompiledFilter, EpochMillis};
use crate::store::firmware::{Impact, Releases, ReleasesWire};
use crate::store::groups::GroupError;
use crate::worker::view::Question;
use crate::worker::FleetView;

/// A preview's evaluation.
pub const EVALUATE_PATH: &str = "/internal/v1/evaluate";

/// A release's or withdrawal's impact.
pub const IMPACT_PATH: &str = "/internal/v1/impact";

/// Largest sample a caller may ask for (the API's previews allow no more).
pub const MAX_SAMPLE: usize = 100;

/// What a preview's sample shows of each device.
pub const SHOWN: [&str; 5] = ["hostname", "displayName", "osType", "status", "lastSeenAt"];

/// What the route needs.
#[derive(Clone)]
pub struct InternalState {
    /// What callers must present, drawn when the process started.
    pub token: Arc<str>,
    /// The partitions this process's worker holds.
    pub view: FleetView,
    pub catalogue: Arc<Catalogue>,
    /// Evaluations in memory at once in this process (shared with the API's previews).
    pub slots: Arc<Semaphore>,
}

/// A preview's filter, to evaluate over the partitions among `partitions` that the worker holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvaluateRequest {
    pub org: String,
    /// Only devices whose `siteId` is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The filter as the API received it: the worker compiles it with its own catalogue.
    pub filter_conditions: Value,
    /// The instant to evaluate at (epoch milliseconds), the same for every part of one preview.
    pub now: EpochMillis,
    /// Sample size, 1 to [`MAX_SAMPLE`].
    pub limit: usize,
    /// The partitions asked for.
    pub partitions: Vec<i32>,
}

/// What a filter matched over some partitions: the route's answer, and each part of a preview.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateAnswer {
    /// The partitions answered: those asked for that the worker holds now.
    pub partitions: Vec<i32>,
    /// Devices of the org (and site) examined.
    pub examined: u64,
    /// Devices matching.
    pub matched: u64,
    /// The `limit` smallest matching ids, in order, each with its [`SHOWN`] fields.
    pub sample: Vec<SampledDevice>,
}

/// A device of a sample: its id and the [`SHOWN`] fields it has, by name, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledDevice {
    pub id: String,
    pub fields: Map<String, Value>,
}

impl EvaluateAnswer {
    /// The parts of one preview, each over partitions no other part covers, merged: counts added, and the
    /// `limit` smallest ids of the samples together (each part's sample is its `limit` smallest, so these
    /// are the smallest of the whole).
    pub fn merge(parts: impl IntoIterator<Item = EvaluateAnswer>, limit: usize) -> EvaluateAnswer {
        let mut merged = EvaluateAnswer::default();
        for part in parts {
            merged.partitions.extend(part.partitions);
            merged.examined += part.examined;
            merged.matched += part.matched;
            merged.sample.extend(part.sample);
        }
        merged.partitions.sort_unstable();
        merged.partitions.dedup();
        merged.sample.sort_by(|a, b| a.id.cmp(&b.id));
        // A device being re-homed can sit in two partitions' memory for a moment: show it once.
        merged.sample.dedup_by(|a, b| a.id == b.id);
        merged.sample.truncate(limit);
        merged
    }
}

/// A release's or withdrawal's impact, to count over the devices of the partitions among `partitions`
/// that the worker holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImpactRequest {
    pub org: String,
    /// The group released to or withdrawn from (its members are counted); absent for the org's default
    /// release (every device of the org is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Uuid>,
    /// The org's releases before and after the change.
    pub releases: ReleasesWire,
    /// Sample size, at most [`MAX_SAMPLE`].
    pub sample: usize,
    /// The partitions asked for.
    pub partitions: Vec<i32>,
}

/// What a change would do to the devices of some partitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpactAnswer {
    /// The partitions answered: those asked for that the worker holds now.
    pub partitions: Vec<i32>,
    pub impact: Impact,
}

/// What to evaluate in memory.
pub(crate) struct Asked {
    pub org: String,
    pub site: Option<String>,
    pub filter: Arc<CompiledFilter>,
    pub now: EpochMillis,
    pub limit: usize,
    /// Only these partitions, when given.
    pub partitions: Option<Vec<i32>>,
}

/// Evaluates `asked` over the partitions `view` holds, on a blocking thread, once one of `slots` is free.
pub(crate) async fn in_memory(
    view: &FleetView,
    catalogue: &Arc<Catalogue>,
    slots: &Arc<Semaphore>,
    asked: Asked,
) -> Result<EvaluateAnswer, ApiError> {
    let Ok(_slot) = slots.clone().acquire_owned().await else {
        return Err(ApiError::rate_limited(1));
    };
    let (view, catalogue) = (view.clone(), catalogue.clone());
    tokio::task::spawn_blocking(move || {
        // (name, field) of each shown field the catalogue has.
        let shown: Vec<(&str, _)> = SHOWN
            .iter()
            .filter_map(|&name| catalogue.builtin(name).map(|f| (name, f)))
            .collect();
        let fields: Vec<_> = shown.iter().map(|&(_, f)| f).collect();
        let answer = view.evaluate(
            &catalogue,
            &Question {
                org: &asked.org,
                site: asked.site.as_deref(),
                filter: &asked.filter,
                now: asked.now,
                limit: asked.limit,
                shown: &fields,
                partitions: asked.partitions.as_deref(),
            },
        );
        EvaluateAnswer {
            partitions: answer.partitions,
            examined: answer.examined,
            matched: answer.matched,
            sample: answer
                .sample
                .into_iter()
                .map(|s| SampledDevice {
                    id: s.id,
                    fields: shown
                        .iter()
                        .zip(s.fields)
                        .filter_map(|(&(name, _), value)| Some((name.to_string(), value?)))
                        .collect(),
                })
                .collect(),
        }
    })
    .await
    .map_err(|e| ApiError::internal(&e))
}

/// Counts a release's or withdrawal's impact over the devices `view` holds of `partitions` — of `group`'s
/// members, or of the whole org for the default — on a blocking thread, once one of `slots` is free.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn impact_in_memory(
    view: &FleetView,
    catalogue: &Arc<Catalogue>,
    slots: &Arc<Semaphore>,
    org: String,
    group: Option<Uuid>,
    partitions: Vec<i32>,
    releases: Releases,
    sample: usize,
) -> Result<ImpactAnswer, ApiError> {
    let Ok(_slot) = slots.clone().acquire_owned().await else {
        return Err(ApiError::rate_limited(1));
    };
    let (view, catalogue) = (view.clone(), catalogue.clone());
    tokio::task::spawn_blocking(move || {
        let (partitions, parts) = view.for_each_device(
            &catalogue,
            &org,
            group,
            Some(&partitions),
            || Impact::new(0),
            |part, device, groups| releases.count(part, device, groups, sample),
        );
        let mut impact = Impact::new(0);
        for part in parts {
            impact.merge(part, sample);
        }
        ImpactAnswer { partitions, impact }
    })
    .await
    .map_err(|e| ApiError::internal(&e))
}

/// The internal routes, with their authorisation, body limit and request metrics.
pub fn router(state: InternalState, max_body_bytes: usize) -> Router {
    Router::new()
        .route(EVALUATE_PATH, post(evaluate))
        .route(IMPACT_PATH, post(impact))
        .route_layer(from_fn_with_state(state.clone(), authorise))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(from_fn(super::record_metrics))
        .with_state(state)
}

/// Lets through only a request that presents this process's token, compared in constant time.
async fn authorise(State(state): State<InternalState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    let accepted = presented.is_some_and(|p| bool::from(p.ct_eq(state.token.as_bytes())));
    if !accepted {
        metrics::counter!(crate::metrics::API_UNAUTHORIZED).increment(1);
        return ApiError::unauthorized("Unauthorized").into_response();
    }
    next.run(request).await
}

async fn evaluate(
    State(state): State<InternalState>,
    Json(request): Json<EvaluateRequest>,
) -> Result<axum::Json<EvaluateAnswer>, ApiError> {
    if !(1..=MAX_SAMPLE).contains(&request.limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_SAMPLE}, got {}",
            request.limit
        )));
    }
    let filter =
        compile(&request.filter_conditions, &state.catalogue).map_err(GroupError::Invalid)?;
    let asked = Asked {
        org: request.org,
        site: request.site,
        filter: Arc::new(filter),
        now: request.now,
        limit: request.limit,
        partitions: Some(request.partitions),
    };
    let answer = in_memory(&state.view, &state.catalogue, &state.slots, asked).await?;
    Ok(axum::Json(answer))
}

/// Counts a release's or withdrawal's impact over the devices held of the partitions asked for.
async fn impact(
    State(state): State<InternalState>,
    Json(request): Json<ImpactRequest>,
) -> Result<axum::Json<ImpactAnswer>, ApiError> {
    if request.sample > MAX_SAMPLE {
        return Err(ApiError::bad_request(format!(
            "sample must be at most {MAX_SAMPLE}, got {}",
            request.sample
        )));
    }
    let answer = impact_in_memory(
        &state.view,
        &state.catalogue,
        &state.slots,
        request.org,
        request.group,
        request.partitions,
        Releases::from_wire(&request.releases),
        request.sample,
    )
    .await?;
    Ok(axum::Json(answer))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn part(partitions: &[i32], examined: u64, ids: &[&str]) -> EvaluateAnswer {
        EvaluateAnswer {
            partitions: partitions.to_vec(),
            examined,
            matched: ids.len() as u64,
            sample: ids
                .iter()
                .map(|id| SampledDevice {
                    id: id.to_string(),
                    fields: Map::from_iter([("status".to_string(), json!(format!("of {id}")))]),
                })
                .collect(),
        }
    }

    #[test]
    fn merged_parts_add_their_counts_and_keep_the_smallest_ids_of_the_whole() {
        let merged = EvaluateAnswer::merge(
            [
                part(&[3], 10, &["d05", "d09"]),
                part(&[0, 1], 20, &["d02", "d07", "d08"]),
                part(&[2], 5, &[]),
            ],
            3,
        );
        assert_eq!(merged.partitions, vec![0, 1, 2, 3]);
        assert_eq!((merged.examined, merged.matched), (35, 5));
        let ids: Vec<&str> = merged.sample.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["d02", "d05", "d07"]);
        // Each device keeps its own fields.
        assert_eq!(merged.sample[1].fields["status"], json!("of d05"));
    }

    #[test]
    fn a_merged_sample_shows_a_device_once_and_no_parts_merge_to_nothing() {
        let merged = EvaluateAnswer::merge([part(&[0], 2, &["a", "b"]), part(&[1], 1, &["a"])], 10);
        let ids: Vec<&str> = merged.sample.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, vec!["a", "b"]);
        assert_eq!(
            EvaluateAnswer::merge(Vec::new(), 10),
            EvaluateAnswer::default()
        );
    }

    #[test]
    fn the_request_and_answer_read_as_the_route_documents_them() {
        let request: EvaluateRequest = serde_json::from_value(json!({
            "org": "acme", "filterConditions": {"operator": "AND", "conditions": []},
            "now": 1, "limit": 10, "partitions": [0, 2]}))
        .unwrap();
        assert_eq!(request.site, None);
        assert_eq!(request.partitions, vec![0, 2]);
        let unknown = serde_json::from_value::<EvaluateRequest>(json!({
            "org": "acme", "filterConditions": {}, "now": 1, "limit": 10, "partitions": [], "x": 1}));
        assert!(unknown.is_err());
        let answer = serde_json::to_value(part(&[1], 4, &["d1"])).unwrap();
        assert_eq!(
            answer,
            json!({"partitions": [1], "examined": 4, "matched": 1,
                "sample": [{"id": "d1", "fields": {"status": "of d1"}}]})
        );
    }
}
