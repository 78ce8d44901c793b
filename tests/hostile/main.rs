//! Hostile input: a corpus of bad events produced to the input topic, and a corpus of bad requests sent to
//! the REST API. Every case has a name and the outcome the contract promises for it; each test then checks
//! that the service keeps serving and that nothing already stored changed.
//!
//! - [`events`]: malformed, truncated, non-UTF-8, wrong-typed, oversize and deeply nested events; key and
//!   header tricks; unknown and mismatched orgs; absurd sequences and timestamps. Each refused case must
//!   produce exactly one dead letter with the expected reason (headers, body, metric); each case the
//!   contract accepts is applied to a device of its own; stale and duplicate events change nothing.
//! - [`api`]: the same kinds of bad input on every route family, plus bodies over `api.max_body_bytes`,
//!   path tricks, SQL-like strings, out-of-range query parameters, catastrophic-looking regexes, and filters
//!   at and one past every limit of `cohort::rules::filter`. Every refused case must answer a 4xx (never a
//!   5xx, never a hang) in the API's error shape with a clear message.
//! - [`bounds`]: answers stay small whatever the request (at most 100 details, bounded messages), and a
//!   duplicate object key anywhere in a body is refused.
//! - [`connections`]: greedy clients with small configured limits: more idle connections than one client
//!   may hold (the extra ones are refused, another client is answered), a `Content-Length` over the body
//!   limit (refused before any of the body is sent), stalled bodies (they hold no more than the body
//!   budget; the rest wait their turn).
//! - [`keepalive`]: an answer given before the request's body was read says `Connection: close` and the
//!   connection ends; any other answer keeps the connection usable for the next request.
//! - [`raw`]: a raw HTTP/1.1 client, so requests can carry what a well-behaved client library would refuse
//!   to send (bad content types, broken bodies, odd paths).
//! - [`snapshot`]: the stored tables, to prove a corpus changed nothing it may not.
//!
//! See `docs/hostile-input.md` for the categories and counts.
//!
//! # Why a binary of its own
//! The event corpus checks that each dead-letter reason's counter, and the duplicate and stale outcome
//! counters, rise by exactly as many as its cases promise. Those counters live in the process-wide metrics
//! recorder (`cohort::metrics::install`) and carry no label a test owns, so any other test applying events
//! in the same process would change them. The rest of the integration suites share one binary
//! (`tests/suite`), where no test reads a process-wide counter exactly.

mod api;
mod bounds;
mod connections;
mod events;
mod keepalive;
mod raw;
mod snapshot;
