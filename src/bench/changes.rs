//! The group-changes phase of `cohort bench`: after the latency phase, with events still produced at half
//! the sustained rate, the REST API of the worker under test is read and a group is created, edited and
//! deleted through it, all in the fleet's first org.
//!
//! - **reads**: one dynamic group (with its `deviceCount`) 50 times, a page of 100 groups 20 times;
//! - **previews**: a one-field and a five-field (nested AND/OR) filter 5 times each, then 20 one-field
//!   previews at once (the API runs [`PREVIEW_SLOTS`](crate::api::PREVIEW_SLOTS) at a time and refuses
//!   the rest);
//! - **changes**: a dynamic group matching about 30% of the org is created, its filter edited so that
//!   about half its members leave, and it is deleted. Each change has **settled** once every partition
//!   of the run's topic has applied the control log up to the entry the change wrote
//!   (`partition_positions.control_position`, polled every 20 ms); then its `deviceCount` must equal its
//!   rows in `device_group_memberships`. The events committed from the request until the events in
//!   flight when it settled are committed give the change's produce → commit latency, and the longest
//!   time in which nothing committed; beside it, the latency over the second before the request, once
//!   the worker has caught up (so that one step's backlog is not counted against the next);
//! - **a release dry run** to the created group once it has settled: its time and the impact it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::api::{Api, Reply, Timings};
use super::phases::Rig;
use super::readings::wait_committed;
use crate::rules::time::format_millis;
use crate::rules::EpochMillis;
use crate::synthetic::broker::Stream;
use crate::synthetic::fleet::Fleet;
use crate::worker::latency::LatencySnapshot;
use crate::worker::Status;

const GROUP_READS: usize = 50;
const LISTINGS: usize = 20;
pub(super) const LISTING_PAGE: usize = 100;
const PREVIEWS: usize = 5;
const CONCURRENT_PREVIEWS: usize = 20;
/// How often a change's progress is read.
const POLL: Duration = Duration::from_millis(20);
/// The span before each change whose events' latency is the change's baseline.
const BASELINE: Duration = Duration::from_secs(1);
/// How long a change may take to settle before the phase fails.
const SETTLE_DEADLINE: Duration = Duration::from_secs(600);
const GROUPS: &str = "/api/v1/groups";

/// `osType` in two of the fleet's five types: 20% + 10% of the devices (the fleet's weights), and no
/// event changes it, so the group's members change only with its filter.
fn thirty_percent() -> Value {
    json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "in", "value": ["rtos", "windows"]}
    ]})
}

/// [`thirty_percent`] and enrolled in the later half of the fleet's enrolment span (30 to 1,000 days
/// before `t0`, uniformly; no event changes it): half of its members stay, whatever the org.
fn half_of_it(t0: EpochMillis) -> Value {
    const DAY_MS: i64 = 24 * 3_600_000;
    let middle = format_millis(t0 - (30 + 970 / 2) * DAY_MS);
    json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "in", "value": ["rtos", "windows"]},
        {"field": "enrolledAt", "operator": "after", "value": middle}
    ]})
}

/// Five fields in nested AND/OR groups.
fn five_fields() -> Value {
    json!({"operator": "AND", "conditions": [
        {"field": "status", "operator": "in", "value": ["online", "maintenance"]},
        {"operator": "OR", "conditions": [
            {"field": "osType", "operator": "equals", "value": "linux"},
            {"operator": "AND", "conditions": [
                {"field": "tags", "operator": "contains", "value": "prod"},
                {"field": "firmwareVersion", "operator": "startsWith", "value": "2."}
            ]}
        ]},
        {"field": "uptimeSeconds", "operator": "greaterThan", "value": 1_000_000}
    ]})
}

/// What the phase measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChangesReport {
    /// The org everything was done in, and its devices.
    pub org_id: String,
    pub org_devices: usize,
    /// Events produced during the phase: the rate asked for (half the sustained rate, or `--rate`) and achieved.
    pub events: usize,
    pub target_rate: f64,
    pub achieved_rate: f64,
    /// `GET /api/v1/groups/{id}` of one of the org's dynamic groups.
    pub group_reads: Timings,
    /// `GET /api/v1/groups?limit=100`, the groups the page held and the org's groups in all.
    pub listings: Timings,
    pub listed: usize,
    pub org_groups: i64,
    pub previews: Previews,
    pub release_dry_run: ReleaseDryRun,
    /// The group created (matching about 30% of the org), its filter edited (about half its members
    /// leave), and its deletion.
    pub create: Change,
    pub edit: Change,
    pub delete: Change,
}

/// `POST /api/v1/groups/preview`.
#[derive(Clone, Debug, Serialize)]
pub struct Previews {
    /// The one-field filter, one at a time, and the devices it matched.
    pub one_field: Timings,
    pub one_field_matched: u64,
    /// The five-field filter in nested AND/OR groups, one at a time, and the devices it matched.
    pub five_fields: Timings,
    pub five_fields_matched: u64,
    /// One-field previews sent at once: the time until the last answered, and how they were answered.
    pub concurrent: usize,
    pub concurrent_wall_ms: f64,
    pub concurrent_answered: usize,
    /// Answered 429 (the API's preview slots were taken).
    pub concurrent_refused: usize,
    /// Answered anything else.
    pub concurrent_other: usize,
}

/// `POST /api/v1/releases` with `dryRun: true` to the created group.
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseDryRun {
    pub version: String,
    pub ms: f64,
    /// The impact answered: devices examined, whose resolved version would change, and which would
    /// download firmware.
    pub examined: u64,
    pub changed: u64,
    pub impacted: u64,
}

/// One group change, from the request until it settled.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// The request's own time.
    pub request_ms: f64,
    /// `max(id)` of the control log read right after the answer.
    pub control_id: i64,
    /// From the request until every partition had applied `control_id`.
    pub settle_seconds: f64,
    /// The group's `deviceCount` once settled (`None`: the group is gone, as after its deletion), and its
    /// rows in `device_group_memberships`.
    pub device_count: Option<i64>,
    pub memberships: i64,
    /// Events committed from the request until those in flight when it settled were, and their produce →
    /// commit latency (ms).
    pub events: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    /// The longest time in that span in which nothing was committed (read every 20 ms).
    pub longest_gap_ms: f64,
    /// For comparison, the latency of the events committed in the second before the request (ms), once
    /// the events produced before that second were committed.
    pub before_p50_ms: Option<u64>,
    pub before_p99_ms: Option<u64>,
}

impl Change {
    /// Whether the settled member count equals the stored memberships (a deleted group has neither).
    pub fn counts_agree(&self) -> bool {
        self.device_count.unwrap_or(0) == self.memberships
    }
}

impl ChangesReport {
    /// Changes whose settled member count differs from their stored memberships.
    pub fn wrong_counts(&self) -> usize {
        [&self.create, &self.edit, &self.delete]
            .into_iter()
            .filter(|c| !c.counts_agree())
            .count()
    }
}

/// Runs the phase on `rig` with `stream`'s events at `rate` per second; returns the stream to go on
/// with, once every event it produced is committed.
pub async fn measure(
    rig: &mut Rig,
    pool: &PgPool,
    stream: Stream,
    rate: f64,
    fleet: &Fleet,
    partitions: i32,
) -> anyhow::Result<(ChangesReport, Stream)> {
    let status = rig.status();
    let base = status.records_committed.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let producing = rig.produce_until(stream, rate, stop.clone());
    let measured = steps(rig, pool, fleet, partitions).await;
    stop.store(true, Ordering::SeqCst);
    let (events, produce_time, stream) =
        producing.await.context("the producer thread stopped")??;
    let mut report = measured?;
    wait_committed(
        &status,
        base,
        events as u64,
        rig.task(),
        Instant::now(),
        None,
    )
    .await?;
    report.events = events;
    report.target_rate = rate;
    report.achieved_rate = events as f64 / produce_time.as_secs_f64().max(1e-6);
    tracing::info!(
        create_seconds = report.create.settle_seconds,
        edit_seconds = report.edit.settle_seconds,
        delete_seconds = report.delete.settle_seconds,
        "group changes measured"
    );
    Ok((report, stream))
}

/// The reads, previews and changes, in that order.
async fn steps(
    rig: &mut Rig,
    pool: &PgPool,
    fleet: &Fleet,
    partitions: i32,
) -> anyhow::Result<ChangesReport> {
    let addr = rig.api_address().await?;
    let org_id = Fleet::org_id(0);
    let org_devices = fleet.devices.div_ceil(fleet.orgs);

    let api = Api::with_new_key(pool, addr, &org_id, "bench-reads").await?;
    let (mut listing_ms, mut listing) = (Vec::new(), Value::Null);
    for _ in 0..LISTINGS {
        let path = format!("{GROUPS}?limit={LISTING_PAGE}");
        let reply = api.call(Method::GET, &path, None).await?;
        let reply = reply.expect(StatusCode::OK, "listing groups")?;
        listing_ms.push(reply.ms);
        listing = reply.body;
    }
    let listed = listing["groups"].as_array().map_or(0, Vec::len);
    let dynamic = listing["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["type"] == "dynamic"))
        .and_then(|g| g["id"].as_str())
        .context("the first org has no dynamic group")?
        .to_owned();
    let mut read_ms = Vec::new();
    for _ in 0..GROUP_READS {
        let reply = api
            .call(Method::GET, &format!("{GROUPS}/{dynamic}"), None)
            .await?;
        read_ms.push(reply.expect(StatusCode::OK, "reading a group")?.ms);
    }
    tracing::info!("group reads measured");

    let previews =
        previews(&Api::with_new_key(pool, addr, &org_id, "bench-previews").await?).await?;
    tracing::info!("previews measured");

    let api = Api::with_new_key(pool, addr, &org_id, "bench-changes").await?;
    let body = json!({"name": "bench-changes", "filterConditions": thirty_percent()});
    let request = Request {
        method: Method::POST,
        path: GROUPS,
        body: Some(body),
        expected: StatusCode::CREATED,
        what: "creating a group",
    };
    let (reply, create) = change(rig, pool, &api, request, partitions).await?;
    let id = reply.body["id"]
        .as_str()
        .context("the created group has no id")?
        .to_owned();
    let create = counted(create, &api, pool, &id).await?;
    tracing::info!(seconds = create.settle_seconds, "group creation settled");

    let version = "9.0.0";
    let body = json!({"groupId": id, "version": version, "dryRun": true});
    let reply = api
        .call(Method::POST, "/api/v1/releases", Some(&body))
        .await?;
    let reply = reply.expect(StatusCode::OK, "a release dry run")?;
    let impact = |field: &str| reply.body["impact"][field].as_u64().unwrap_or(0);
    let release_dry_run = ReleaseDryRun {
        version: version.to_owned(),
        ms: reply.ms,
        examined: impact("examined"),
        changed: impact("changed"),
        impacted: impact("impacted"),
    };

    let path = format!("{GROUPS}/{id}");
    let body = json!({"filterConditions": half_of_it(fleet.t0)});
    let request = Request {
        method: Method::PATCH,
        path: &path,
        body: Some(body),
        expected: StatusCode::OK,
        what: "editing the group's filter",
    };
    let (_, edit) = change(rig, pool, &api, request, partitions).await?;
    let edit = counted(edit, &api, pool, &id).await?;
    tracing::info!(seconds = edit.settle_seconds, "group edit settled");
    let request = Request {
        method: Method::DELETE,
        path: &path,
        body: None,
        expected: StatusCode::NO_CONTENT,
        what: "deleting the group",
    };
    let (_, delete) = change(rig, pool, &api, request, partitions).await?;
    let delete = counted(delete, &api, pool, &id).await?;
    tracing::info!(seconds = delete.settle_seconds, "group deletion settled");

    Ok(ChangesReport {
        org_id,
        org_devices,
        events: 0,
        target_rate: 0.0,
        achieved_rate: 0.0,
        group_reads: Timings::of(read_ms),
        listings: Timings::of(listing_ms),
        listed,
        org_groups: listing["total"].as_i64().unwrap_or(0),
        previews,
        release_dry_run,
        create,
        edit,
        delete,
    })
}

/// Each filter previewed one at a time, then the one-field filter by many requests at once.
async fn previews(api: &Api) -> anyhow::Result<Previews> {
    let preview = |filter: Value| {
        let body = json!({"filterConditions": filter});
        async move {
            api.call(Method::POST, "/api/v1/groups/preview", Some(&body))
                .await
        }
    };
    let mut sequential = Vec::new();
    for filter in [thirty_percent(), five_fields()] {
        let (mut ms, mut matched) = (Vec::new(), 0);
        for _ in 0..PREVIEWS {
            let reply = preview(filter.clone()).await?;
            let reply = reply.expect(StatusCode::OK, "a preview")?;
            ms.push(reply.ms);
            matched = reply.body["data"]["totalCount"].as_u64().unwrap_or(0);
        }
        sequential.push((Timings::of(ms), matched));
    }
    let started = Instant::now();
    let replies: Vec<Reply> =
        futures_util::future::join_all((0..CONCURRENT_PREVIEWS).map(|_| preview(thirty_percent())))
            .await
            .into_iter()
            .collect::<anyhow::Result<_>>()?;
    let concurrent_wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let answered = |status: StatusCode| replies.iter().filter(|r| r.status == status).count();
    let (ok, refused) = (
        answered(StatusCode::OK),
        answered(StatusCode::TOO_MANY_REQUESTS),
    );
    let mut sequential = sequential.into_iter();
    let (one_field, one_field_matched) = sequential.next().unwrap_or_default();
    let (five_fields, five_fields_matched) = sequential.next().unwrap_or_default();
    Ok(Previews {
        one_field,
        one_field_matched,
        five_fields,
        five_fields_matched,
        concurrent: CONCURRENT_PREVIEWS,
        concurrent_wall_ms,
        concurrent_answered: ok,
        concurrent_refused: refused,
        concurrent_other: replies.len() - ok - refused,
    })
}

/// A change to send.
struct Request<'a> {
    method: Method,
    path: &'a str,
    body: Option<Value>,
    /// The status it must be answered with, and what it is, for the error otherwise.
    expected: StatusCode,
    what: &'static str,
}

/// Sends a change and follows it until every partition has applied it and the events in flight then
/// are committed. The member counts are left for [`counted`].
async fn change(
    rig: &mut Rig,
    pool: &PgPool,
    api: &Api,
    request: Request<'_>,
    partitions: i32,
) -> anyhow::Result<(Reply, Change)> {
    let status = rig.status();
    // The latency without a change, for comparison: over a second once what was produced before it is
    // committed (the previous step's backlog would otherwise be counted against this change).
    let mut idle = During::new(&status);
    drain(rig, &status, &mut idle).await?;
    let before = status.latency.snapshot();
    tokio::time::sleep(BASELINE).await;
    let baseline = status.latency.snapshot().since(&before);

    let mut during = During::new(&status);
    let started = Instant::now();
    let Request {
        method,
        path,
        body,
        expected,
        what,
    } = request;
    let call = api.call(method, path, body.as_ref());
    tokio::pin!(call);
    let reply = loop {
        tokio::select! {
            reply = &mut call => break reply?,
            () = tokio::time::sleep(POLL) => during.sample(&status),
        }
    };
    let reply = reply.expect(expected, what)?;
    let control_id: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM control_log")
        .fetch_one(pool)
        .await
        .context("failed to read the control log's head")?;
    loop {
        during.sample(&status);
        let applied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM partition_positions WHERE topic = $1 AND control_position >= $2",
        )
        .bind(rig.topic())
        .bind(control_id)
        .fetch_one(pool)
        .await
        .context("failed to read the partitions' control positions")?;
        if applied >= i64::from(partitions) {
            break;
        }
        anyhow::ensure!(!rig.task().is_finished(), "the worker stopped");
        anyhow::ensure!(
            started.elapsed() < SETTLE_DEADLINE,
            "{path}: control-log entry {control_id} not applied within {SETTLE_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    let settle_seconds = started.elapsed().as_secs_f64();
    drain(rig, &status, &mut during).await?;
    let (latency, longest_gap) = during.finish(&status);
    let change = Change {
        request_ms: reply.ms,
        control_id,
        settle_seconds,
        device_count: None,
        memberships: 0,
        events: latency.count(),
        p50_ms: latency.quantile(0.50),
        p99_ms: latency.quantile(0.99),
        max_ms: latency.max(),
        longest_gap_ms: longest_gap.as_secs_f64() * 1000.0,
        before_p50_ms: baseline.quantile(0.50),
        before_p99_ms: baseline.quantile(0.99),
    };
    Ok((reply, change))
}

/// Waits until the events in flight now (those the broker has acknowledged) are committed.
async fn drain(rig: &mut Rig, status: &Status, during: &mut During) -> anyhow::Result<()> {
    let (in_flight, started) = (rig.delivered(), Instant::now());
    while status.records_committed.load(Ordering::SeqCst) < in_flight {
        anyhow::ensure!(!rig.task().is_finished(), "the worker stopped");
        anyhow::ensure!(
            started.elapsed() < SETTLE_DEADLINE,
            "the events in flight were not committed within {SETTLE_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
        during.sample(status);
    }
    Ok(())
}

/// `change` with the group's `deviceCount` (via the API; `None` if it is gone) and its stored rows.
async fn counted(mut change: Change, api: &Api, pool: &PgPool, id: &str) -> anyhow::Result<Change> {
    let reply = api
        .call(Method::GET, &format!("{GROUPS}/{id}"), None)
        .await?;
    change.device_count = match reply.status {
        StatusCode::NOT_FOUND => None,
        _ => Some(
            reply.expect(StatusCode::OK, "reading the group")?.body["deviceCount"]
                .as_i64()
                .context("the group has no deviceCount")?,
        ),
    };
    change.memberships =
        sqlx::query_scalar("SELECT count(*) FROM device_group_memberships WHERE group_id = $1")
            .bind(Uuid::parse_str(id).context("the group's id is not a UUID")?)
            .fetch_one(pool)
            .await
            .context("failed to count the group's memberships")?;
    Ok(change)
}

/// The worker's produce → commit latencies and commit progress over a change, as the latency phase
/// reads them: histogram snapshots, the later minus the earlier.
struct During {
    before: LatencySnapshot,
    committed: u64,
    progressed: Instant,
    longest_gap: Duration,
}

impl During {
    fn new(status: &Status) -> Self {
        Self {
            before: status.latency.snapshot(),
            committed: status.records_committed.load(Ordering::SeqCst),
            progressed: Instant::now(),
            longest_gap: Duration::ZERO,
        }
    }

    fn sample(&mut self, status: &Status) {
        let committed = status.records_committed.load(Ordering::SeqCst);
        if committed > self.committed {
            self.longest_gap = self.longest_gap.max(self.progressed.elapsed());
            self.committed = committed;
            self.progressed = Instant::now();
        }
    }

    /// The latencies of the events committed since [`During::new`], and the longest gap.
    fn finish(self, status: &Status) -> (LatencySnapshot, Duration) {
        let gap = self.longest_gap.max(self.progressed.elapsed());
        (status.latency.snapshot().since(&self.before), gap)
    }
}
