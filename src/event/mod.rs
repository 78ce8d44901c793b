//! The `device-attribute-changes` input contract: what a message on the input topic must look like, how
//! it is decoded, and the dead-letter message written when it cannot be.
//!
//! The contract is published as JSON Schema in `schemas/device-attribute-changes.schema.json` (with
//! examples under `schemas/examples/device-attribute-changes/`) and `schemas/dead-letter.schema.json`;
//! the `event_contract` test suite keeps those files and this module from drifting apart.
//!
//! # The event
//! A JSON object with camelCase keys ([`EVENT_KEYS`]; any other key is refused): `eventId`, `orgId`,
//! `deviceId` and `sequence` are required; `attributes` (catalogue field → value, `null` removes),
//! `removed` (field names), `development`, `firmwareLock` (`null` clears the lock) and `occurredAt`
//! (informational) are optional. The Kafka key, when present, must equal `deviceId`.
//!
//! `"register": true` makes the event a **registration** (a device import): the worker creates the device,
//! with no attributes, if it exists nowhere yet, and otherwise does nothing at all (no re-homing, no
//! sequence change). A registration carries nothing but the envelope — `attributes`, `removed`,
//! `development` and `firmwareLock` are refused with it — and its `sequence` is not recorded: a registered
//! device's sequence stays below 0, so its first real event (any sequence ≥ 0) is applied.
//! [`registration_event`] builds one.
//!
//! # Decoding
//! [`decode`](fn@decode) is strict and total: it never panics, and every failure carries a
//! [`DeadLetterReason`], because a message that fails to decode fails the same way every time and must go
//! to the dead-letter topic (see [`dead_letter`](fn@dead_letter)) rather than block its partition. Checks
//! run in this order, and the first failing one decides the reason: missing or empty value, size, JSON
//! syntax, the envelope (keys, ids, `sequence`, `removed`, …), the attributes (every bad one reported at
//! once), and finally the Kafka key.
//!
//! Duplicate object keys are refused (as [`DeadLetterReason::InvalidEvent`]), anywhere in the event. JSON
//! leaves their meaning open — serde_json keeps the last, other parsers keep the first — so a producer, a
//! gateway and cohort could otherwise disagree about an event's `orgId` or `deviceId`.
//!
//! Detail strings are bounded ([`MAX_DETAIL_BYTES`]), quote at most a short prefix of any input value,
//! and carry no control characters, so they are safe in logs and Kafka headers.
//!
//! Decoding resolves field names through the [`Catalogue`](crate::rules::catalogue::Catalogue), which
//! interns undeclared `custom.<key>` names it has not seen before (up to the catalogue's cap) — also for an
//! event that is then refused for a later check, such as a mismatched key.
//!
//! # Layout
//! - `contract`: the limits, the keys, [`DeviceEvent`], [`DeviceEventJson`], [`DeadLetterReason`] and
//!   [`DecodeError`].
//! - `decode`: [`decode`](fn@decode), the envelope's checks and the attributes'.
//! - `plain`: the fast path for plain, valid events, which gives up on anything else and leaves it to
//!   `decode`'s checks.
//! - `strict_json`: JSON parsing that refuses duplicate keys.
//! - `detail`: bounded, escaped detail strings.
//! - `dead_letter`: [`dead_letter`](fn@dead_letter), the outbox message for a message that cannot be
//!   applied, and its headers.

mod contract;
mod dead_letter;
mod decode;
mod detail;
mod plain;
mod strict_json;
#[cfg(test)]
mod tests;

pub use contract::{
    encode, registration_event, DeadLetterReason, DecodeError, DeviceEvent, DeviceEventJson,
    EVENT_KEYS, MAX_DEVICE_ID_CHARS, MAX_EVENT_ID_CHARS, MAX_FIRMWARE_LOCK_CHARS, MAX_ORG_ID_CHARS,
    MAX_REMOVED, NOT_WITH_REGISTER, REQUIRED_KEYS,
};
pub use dead_letter::{
    dead_letter, HEADER_DETAIL, HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
};
pub use decode::decode;
pub use detail::MAX_DETAIL_BYTES;
