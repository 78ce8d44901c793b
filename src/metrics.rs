//! Every metric cohort exports: names (`cohort_<subsystem>_<name>_<unit>`), descriptions, and the Prometheus
//! recorder. Labels are few and bounded — never a device id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Input events by outcome: `applied`, `duplicate`, `stale`, `dead_letter`.
pub const EVENTS: &str = "cohort_worker_events_total";
/// Dead letters by reason.
pub const DEAD_LETTERS: &str = "cohort_worker_dead_letters_total";
/// Membership changes by reason (`filter_match`, `filter_unmatch`, `pinned`, `unpinned`, `manual`).
pub const MEMBERSHIP_CHANGES: &str = "cohort_worker_membership_changes_total";
/// Dynamic-group evaluations.
pub const GROUP_EVALUATIONS: &str = "cohort_worker_group_evaluations_total";
/// Applied events whose changed fields no dynamic group references (no group evaluated).
pub const EVENTS_WITHOUT_CANDIDATES: &str = "cohort_worker_events_without_candidates_total";
/// Devices moved to this worker's partition from another.
pub const DEVICES_REHOMED: &str = "cohort_worker_devices_rehomed_total";
/// Control-log entries applied (per partition).
pub const CONTROL_ENTRIES: &str = "cohort_worker_control_entries_total";
/// Devices re-evaluated because a time-based condition came due.
pub const TIMER_EVALUATIONS: &str = "cohort_worker_timer_evaluations_total";
/// Rollout-target events emitted (written to the outbox with the change that caused them).
pub const ROLLOUT_EVENTS: &str = "cohort_worker_rollout_events_total";
/// Batches committed.
pub const BATCHES: &str = "cohort_worker_batches_total";
/// Batches computed while an earlier batch of their partition was still committing (the pipeline was
/// used: a rate close to `cohort_worker_batches_total`'s means the worker is bound by its commits).
pub const BATCHES_PIPELINED: &str = "cohort_worker_batches_pipelined_total";
/// Batches of a caught-up partition (small, nothing of their partition in flight), written with
/// `backend_flush_after` (`worker.caught_up_flush_after_kb`): a rate close to `cohort_worker_batches_total`'s
/// means the worker keeps up and its commits are not left to wait on checkpoint syncs; a falling share
/// under load means batches are growing past a quarter of `worker.batch_max_events`. (A server that refuses
/// the setting is logged once, and the batches are written without it.)
pub const BATCHES_CAUGHT_UP: &str = "cohort_worker_batches_caught_up_total";
/// Time to compute a batch (decode, evaluate), seconds.
pub const BATCH_SECONDS: &str = "cohort_worker_batch_duration_seconds";
/// Time to commit a batch's transaction, seconds.
pub const COMMIT_SECONDS: &str = "cohort_worker_commit_duration_seconds";
/// From an event's Kafka timestamp to the commit of its effects, seconds.
pub const EVENT_LATENCY_SECONDS: &str = "cohort_worker_event_latency_seconds";
/// Transaction attempts that failed, by kind (`transient`, `fenced`, `device_conflict`, `permanent`).
pub const COMMIT_FAILURES: &str = "cohort_worker_commit_failures_total";
/// Records dropped because they belong to an older assignment or a partition not owned.
pub const RECORDS_DROPPED: &str = "cohort_worker_records_dropped_total";
/// Consumer lag per partition, in messages (high watermark − committed next offset).
pub const CONSUMER_LAG: &str = "cohort_worker_consumer_lag_messages";
/// Partitions owned by this worker.
pub const PARTITIONS_OWNED: &str = "cohort_worker_partitions_owned";
/// 1 while the worker's pipeline runs with its definitions loaded (what `/readyz` reports), else 0.
pub const READY: &str = "cohort_worker_ready";
/// Devices held in memory.
pub const DEVICES_HELD: &str = "cohort_worker_devices_held";
/// Owned partitions in the middle of applying a definition change (a group created, edited or deleted, a
/// release changed) in chunks.
pub const CHANGES_IN_PROGRESS: &str = "cohort_worker_definition_changes_in_progress";
/// Rebalance callbacks by kind (`assign`, `revoke`).
pub const REBALANCES: &str = "cohort_worker_rebalances_total";
/// Times the poller paused fetching because the pipeline was behind.
pub const BACKPRESSURE_PAUSES: &str = "cohort_worker_backpressure_pauses_total";
/// Errors reported by the Kafka consumer.
pub const CONSUMER_ERRORS: &str = "cohort_worker_consumer_errors_total";
/// Outbox messages the relay delivered to Kafka, by `topic` (the configured output and dead-letter topics).
/// A message re-sent after a relay crash is counted again.
pub const RELAY_MESSAGES_RELAYED: &str = "cohort_relay_messages_relayed_total";
/// Outbox rows not yet published (as seen by this process; every relay, leader or standby, reports it).
pub const RELAY_OUTBOX_BACKLOG: &str = "cohort_relay_outbox_backlog_messages";
/// Age of the oldest unpublished outbox row, seconds (0 when there is none): the alerting signal for a
/// stuck relay.
pub const RELAY_OUTBOX_OLDEST_AGE: &str = "cohort_relay_outbox_oldest_age_seconds";
/// Outbox messages whose delivery failed (they are retried, never skipped), by `topic`.
pub const RELAY_PUBLISH_FAILURES: &str = "cohort_relay_publish_failures_total";
/// 1 while this process holds the relay's publishing lease, else 0 (exactly one relay should report 1).
pub const RELAY_LEADER: &str = "cohort_relay_leader";
/// Published outbox rows deleted after the retention period.
pub const RELAY_ROWS_EXPIRED: &str = "cohort_relay_outbox_rows_expired_total";
/// REST API requests by `route` (the matched path template, never a raw path) and `status` class
/// (`2xx`, `4xx`, `5xx`).
pub const API_REQUESTS: &str = "cohort_api_requests_total";
/// REST API request duration by `route`, seconds.
pub const API_REQUEST_SECONDS: &str = "cohort_api_request_duration_seconds";
/// Requests refused by the per-key rate limit.
pub const API_RATE_LIMITED: &str = "cohort_api_rate_limited_total";
/// Requests refused for a missing, malformed, unknown or revoked API key.
pub const API_UNAUTHORIZED: &str = "cohort_api_unauthorized_total";
/// Changes refused for retargeting more devices than the org's retarget cap, by `reason`: `unconfirmed`
/// (no `Cohort-Confirm` token), `expired` (the token's time was up) or `mismatch` (the impact changed
/// since the dry run, or the token was for another change, or not one cohort issued).
pub const API_RETARGET_CAP_REFUSALS: &str = "cohort_api_retarget_cap_refusals_total";
/// Releases halted by one of their thresholds, by the `state` the halt left them in: `paused` or
/// `rolled_back`.
pub const RELEASE_HALTS: &str = "cohort_release_halts_total";
/// Devices each live release targets, by `release` and `standing`: `targeted`, `running`, `previous`,
/// `failed`, `reverted` (refreshed by every worker process from the stored counts).
pub const RELEASE_DEVICES: &str = "cohort_release_devices";
/// Stage advances made by a release's soak time running out while its health held.
pub const RELEASE_AUTO_ADVANCES: &str = "cohort_release_auto_advances_total";
/// Calls of peer workers' internal routes, by `outcome` — `answered` (its partitions were evaluated in
/// its memory) or `failed` (an error, a refusal or no answer within `api.peer_timeout_ms`: its partitions
/// were read from PostgreSQL) — and `route`: `evaluate` (a preview) or `impact` (a release's impact).
pub const PEER_REQUESTS: &str = "cohort_api_peer_requests_total";
/// Connections the HTTP listener closed without serving a request, by `reason`: `client_limit` (the
/// client already had `http.max_connections_per_client` open; answered 503) or `no_request` (no request
/// head within `http.first_request_timeout_ms`).
pub const HTTP_CONNECTIONS_CLOSED: &str = "cohort_http_connections_closed_total";
/// Requests refused because of their body, by `reason`: `too_large` (a `Content-Length` over
/// `api.max_body_bytes`, refused before any of it is read) or `no_budget` (no room in
/// `http.max_body_buffer_bytes` before the request's time ran out).
pub const HTTP_BODIES_REFUSED: &str = "cohort_http_bodies_refused_total";
/// Request bodies that had to wait for room in `http.max_body_buffer_bytes`.
pub const HTTP_BODY_BUFFER_WAITS: &str = "cohort_http_body_buffer_waits_total";
/// Request-body bytes reserved now (of `http.max_body_buffer_bytes`).
pub const HTTP_BODY_BUFFER_BYTES: &str = "cohort_http_body_buffer_bytes";

/// Every name above (the deploy/ dashboards and alerts are checked against it).
pub const ALL: &[&str] = &[
    EVENTS,
    DEAD_LETTERS,
    MEMBERSHIP_CHANGES,
    GROUP_EVALUATIONS,
    EVENTS_WITHOUT_CANDIDATES,
    DEVICES_REHOMED,
    CONTROL_ENTRIES,
    TIMER_EVALUATIONS,
    ROLLOUT_EVENTS,
    BATCHES,
    BATCHES_PIPELINED,
    BATCHES_CAUGHT_UP,
    BATCH_SECONDS,
    COMMIT_SECONDS,
    EVENT_LATENCY_SECONDS,
    COMMIT_FAILURES,
    RECORDS_DROPPED,
    CONSUMER_LAG,
    PARTITIONS_OWNED,
    READY,
    DEVICES_HELD,
    CHANGES_IN_PROGRESS,
    REBALANCES,
    BACKPRESSURE_PAUSES,
    CONSUMER_ERRORS,
    RELAY_MESSAGES_RELAYED,
    RELAY_OUTBOX_BACKLOG,
    RELAY_OUTBOX_OLDEST_AGE,
    RELAY_PUBLISH_FAILURES,
    RELAY_LEADER,
    RELAY_ROWS_EXPIRED,
    API_REQUESTS,
    API_REQUEST_SECONDS,
    API_RATE_LIMITED,
    API_UNAUTHORIZED,
    API_RETARGET_CAP_REFUSALS,
    RELEASE_HALTS,
    RELEASE_DEVICES,
    RELEASE_AUTO_ADVANCES,
    PEER_REQUESTS,
    HTTP_CONNECTIONS_CLOSED,
    HTTP_BODIES_REFUSED,
    HTTP_BODY_BUFFER_WAITS,
    HTTP_BODY_BUFFER_BYTES,
];

/// Registers descriptions with the current recorder.
pub fn describe() {
    describe_counter!(EVENTS, "Input events by outcome");
    describe_counter!(
        DEAD_LETTERS,
        "Input events sent to the dead-letter topic, by reason"
    );
    describe_counter!(MEMBERSHIP_CHANGES, "Membership changes by reason");
    describe_counter!(GROUP_EVALUATIONS, "Dynamic-group evaluations");
    describe_counter!(
        EVENTS_WITHOUT_CANDIDATES,
        "Applied events that evaluated no group"
    );
    describe_counter!(
        DEVICES_REHOMED,
        "Devices moved to this worker's partition from another"
    );
    describe_counter!(CONTROL_ENTRIES, "Control-log entries applied per partition");
    describe_counter!(
        TIMER_EVALUATIONS,
        "Devices re-evaluated when a time-based condition came due"
    );
    describe_counter!(ROLLOUT_EVENTS, "Rollout-target events emitted");
    describe_counter!(BATCHES, "Batches committed");
    describe_counter!(
        BATCHES_PIPELINED,
        "Batches computed while an earlier batch of their partition was committing"
    );
    describe_counter!(
        BATCHES_CAUGHT_UP,
        "Batches of a caught-up partition, written with backend_flush_after"
    );
    describe_histogram!(BATCH_SECONDS, Unit::Seconds, "Time to compute a batch");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Time to commit a batch");
    describe_histogram!(
        EVENT_LATENCY_SECONDS,
        Unit::Seconds,
        "Kafka timestamp to commit of the event's effects"
    );
    describe_counter!(COMMIT_FAILURES, "Failed batch transactions by kind");
    describe_counter!(RECORDS_DROPPED, "Records dropped as stale or not owned");
    describe_gauge!(CONSUMER_LAG, "Consumer lag per partition in messages");
    describe_gauge!(PARTITIONS_OWNED, "Partitions owned by this worker");
    describe_gauge!(READY, "1 while the worker pipeline runs, else 0");
    describe_gauge!(DEVICES_HELD, "Devices held in memory");
    describe_gauge!(
        CHANGES_IN_PROGRESS,
        "Owned partitions in the middle of applying a definition change in chunks"
    );
    describe_counter!(REBALANCES, "Rebalance callbacks by kind");
    describe_counter!(
        BACKPRESSURE_PAUSES,
        "Times fetching paused because the pipeline was behind"
    );
    describe_counter!(CONSUMER_ERRORS, "Errors reported by the Kafka consumer");
    describe_counter!(
        RELAY_MESSAGES_RELAYED,
        "Outbox messages delivered to Kafka by the relay, by topic"
    );
    describe_gauge!(RELAY_OUTBOX_BACKLOG, "Outbox rows not yet published");
    describe_gauge!(
        RELAY_OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished outbox row"
    );
    describe_counter!(
        RELAY_PUBLISH_FAILURES,
        "Outbox messages whose delivery failed and will be retried, by topic"
    );
    describe_gauge!(
        RELAY_LEADER,
        "1 while this process holds the relay's publishing lease"
    );
    describe_counter!(
        RELAY_ROWS_EXPIRED,
        "Published outbox rows deleted after the retention period"
    );
    describe_counter!(API_REQUESTS, "REST API requests by route and status class");
    describe_histogram!(
        API_REQUEST_SECONDS,
        Unit::Seconds,
        "REST API request duration by route"
    );
    describe_counter!(
        API_RATE_LIMITED,
        "REST API requests refused by the rate limit"
    );
    describe_counter!(
        API_UNAUTHORIZED,
        "REST API requests refused for a missing or invalid API key"
    );
    describe_counter!(
        API_RETARGET_CAP_REFUSALS,
        "Changes refused for retargeting more devices than the org's cap, by reason"
    );
    describe_counter!(
        RELEASE_HALTS,
        "Releases halted by a threshold, by the state it left them in"
    );
    describe_gauge!(
        RELEASE_DEVICES,
        "Devices a live release targets, by release and standing"
    );
    describe_counter!(
        RELEASE_AUTO_ADVANCES,
        "Stage advances made after a release's soak time"
    );
    describe_counter!(
        PEER_REQUESTS,
        "Calls of peer workers for previews, by outcome"
    );
    describe_counter!(
        HTTP_CONNECTIONS_CLOSED,
        "Connections closed without serving a request, by reason"
    );
    describe_counter!(
        HTTP_BODIES_REFUSED,
        "Requests refused because of their body, by reason"
    );
    describe_counter!(
        HTTP_BODY_BUFFER_WAITS,
        "Request bodies that waited for room in the body buffer budget"
    );
    describe_gauge!(
        HTTP_BODY_BUFFER_BYTES,
        Unit::Bytes,
        "Request-body bytes reserved now"
    );
}

/// Installs the global Prometheus recorder (once per process) and returns its handle for `/metrics`.
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours still renders what it records.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}
