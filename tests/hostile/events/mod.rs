//! The hostile-event corpus: every case is produced to the input topic of a running worker that holds a
//! few groups and devices in a known state. A case the input contract refuses must produce exactly one
//! dead letter with the expected reason (headers, body and metric); a case the contract accepts (at a
//! limit, or an absurd-looking but valid value) is applied to a device of its own; a stale or duplicate
//! event changes nothing. Afterwards a valid event on each partition is applied (the worker keeps
//! serving) and every stored row not touched by an accepted case is as it was.

mod attributes;
mod dead_letters;
mod driver;
mod envelope;
mod framing;
mod routing;
mod times;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use cohort::event::{
    DeadLetterReason, HEADER_DETAIL, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
};
use cohort_testkit::app::{metric, Harness, ORG};
use cohort_testkit::{eventually, ConsumedMessage};
use rdkafka::producer::FutureProducer;
use serde_json::{json, Map, Value};

use crate::snapshot;
use crate::snapshot::Snapshot;

use dead_letters::{check_dead_letter, header_text};
use driver::{known_state, partitions, produce, settled};

/// The second org: its devices are what an `org_mismatch` event of `acme` names, and the other way round.
const OTHER_ORG: &str = "globex";
/// The sequence every device of the known state was last written with.
const SEQ: i64 = 10;
/// `worker.max_event_bytes` in this test (the default).
const MAX_EVENT_BYTES: usize = 65_536;

use DeadLetterReason::*;

/// Where a case's message goes.
#[derive(Clone, Debug)]
enum Part {
    /// Chosen by the producer from the key (Kafka's murmur2, as cohort's producers do); partition 0 when
    /// the message has no key.
    ByKey,
    /// The partition that does not hold this (stored) device: an event reaching a device's non-owner.
    AwayFrom(&'static str),
}

/// What the contract says a case must lead to.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly one dead letter with this reason, whose detail contains this text.
    DeadLetter(DeadLetterReason, &'static str),
    /// Applied: the device exists afterwards with this sequence.
    Applied { device: String, sequence: i64 },
    /// Skipped with this outcome (`duplicate` or `stale`): no dead letter, nothing changes.
    Skipped(&'static str),
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    key: Option<Vec<u8>>,
    part: Part,
    payload: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Expect,
}

impl Case {
    fn new(
        name: impl Into<String>,
        key: Option<&[u8]>,
        payload: Option<Vec<u8>>,
        expect: Expect,
    ) -> Self {
        Self {
            name: name.into(),
            key: key.map(<[u8]>::to_vec),
            part: Part::ByKey,
            payload,
            headers: Vec::new(),
            expect,
        }
    }

    fn away_from(mut self, device: &'static str) -> Self {
        self.part = Part::AwayFrom(device);
        self
    }
}

/// A valid event of `acme` for `device` at `sequence` (an object to spoil).
fn base(device: &str, sequence: i64) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "eventId": format!("hostile-{device}-{sequence}"),
        "orgId": ORG,
        "deviceId": device,
        "sequence": sequence,
    }) else {
        unreachable!("a json object literal")
    };
    map
}

/// `base(device, sequence)` changed by `change`, encoded.
fn with(device: &str, sequence: i64, change: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let mut event = base(device, sequence);
    change(&mut event);
    Value::Object(event).to_string().into_bytes()
}

/// A refused event keyed by its device (`dev-a`, a stored device of `acme`, unless said otherwise).
fn refused(name: &str, payload: Vec<u8>, reason: DeadLetterReason, detail: &'static str) -> Case {
    Case::new(
        name,
        Some(b"dev-a"),
        Some(payload),
        Expect::DeadLetter(reason, detail),
    )
}

/// An event refused for one key's value: `{..base(dev-a, 99), key: value}`.
fn refused_field(key: &str, value: Value, reason: DeadLetterReason, detail: &'static str) -> Case {
    let name = format!("{key} = {}", short(&value.to_string()));
    let payload = with("dev-a", 99, |e| {
        e.insert(key.to_string(), value);
    });
    refused(&name, payload, reason, detail)
}

/// An event refused for its attributes.
fn refused_attributes(name: &str, attributes: Value, detail: &'static str) -> Case {
    let payload = with("dev-a", 99, |e| {
        e.insert("attributes".into(), attributes);
    });
    refused(name, payload, InvalidAttributes, detail)
}

/// A case the contract accepts: applied to a fresh device `device` at `sequence`.
fn accepted(name: &str, device: &str, sequence: i64, payload: Vec<u8>) -> Case {
    Case::new(
        name,
        Some(device.as_bytes()),
        Some(payload),
        Expect::Applied {
            device: device.to_string(),
            sequence,
        },
    )
}

fn short(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A valid event padded with spaces to exactly `len` bytes.
fn padded(device: &str, sequence: i64, len: usize) -> Vec<u8> {
    let mut bytes = with(device, sequence, |_| {});
    bytes.pop(); // the closing brace
    assert!(bytes.len() < len);
    bytes.resize(len - 1, b' ');
    bytes.push(b'}');
    bytes
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A valid event of `dev-a`, the base of the byte-level cases.
fn valid_event() -> Vec<u8> {
    with("dev-a", 99, |_| {})
}

/// [`valid_event`] as text.
fn valid_event_text() -> String {
    String::from_utf8(valid_event()).expect("ascii")
}

/// The corpus. Every name is unique; see `docs/hostile-input.md` for the categories.
fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(framing::cases());
    cases.extend(envelope::cases());
    cases.extend(times::cases());
    cases.extend(attributes::cases());
    cases.extend(routing::cases());
    cases.extend(vec![
        // -- at the limits: accepted
        accepted(
            "exactly worker.max_event_bytes",
            "at-max-bytes",
            1,
            padded("at-max-bytes", 1, MAX_EVENT_BYTES),
        ),
        accepted(
            "attribute values at their limits",
            "attr-limits",
            1,
            with("attr-limits", 1, |e| {
                e.insert(
                    "attributes".into(),
                    json!({"hostname": "é".repeat(2048), "tags": vec!["t"; 256], "uptimeSeconds": 1.7976931348623157e308}),
                );
            }),
        ),
    ]);
    let long_id = "d".repeat(256);
    let long_event = with(&long_id, 1, |e| {
        e.insert("eventId".into(), json!("e".repeat(128)));
    });
    cases.push(accepted(
        "a deviceId of 256 characters and an eventId of 128",
        &long_id,
        1,
        long_event,
    ));
    cases
}

fn org_event(org: &str, device: &str, sequence: i64) -> Vec<u8> {
    with(device, sequence, |e| {
        e.insert("orgId".into(), json!(org));
        e.insert("attributes".into(), json!({"status": "maintenance"}));
    })
}

fn registration(org: &str, device: &str) -> Vec<u8> {
    cohort::event::registration_event(org, device)
}

/// `base(dev-a, 99)` with `attributes` written as raw JSON text (for what `serde_json::Value` cannot hold).
fn with_raw_attributes(attributes: &str) -> Vec<u8> {
    let text = String::from_utf8(with("dev-a", 99, |_| {})).expect("ascii");
    format!("{},\"attributes\":{attributes}}}", &text[..text.len() - 1]).into_bytes()
}

/// The valid event's eventId with an overlong encoding of `/` in it.
fn overlong(valid: &str) -> Vec<u8> {
    splice_bytes(valid, b"\xc0\xaf")
}

/// `valid` with `bytes` in place of its `hostile-` eventId prefix.
fn splice_bytes(valid: &str, bytes: &[u8]) -> Vec<u8> {
    let at = valid.find("hostile-").expect("the event id prefix");
    [
        valid.as_bytes()[..at].to_vec(),
        bytes.to_vec(),
        valid.as_bytes()[at + "hostile-".len()..].to_vec(),
    ]
    .concat()
}

fn dead_letter_metric(reason: DeadLetterReason) -> f64 {
    metric(&format!(
        "cohort_worker_dead_letters_total{{reason=\"{}\"}}",
        reason.as_str()
    ))
}

fn outcome_metric(outcome: &str) -> f64 {
    metric(&format!(
        "cohort_worker_events_total{{outcome=\"{outcome}\"}}"
    ))
}

#[tokio::test]
async fn every_hostile_event_is_dead_lettered_or_applied_as_the_contract_says_and_nothing_else_changes(
) -> anyhow::Result<()> {
    let h = Harness::start().await?;
    let producer: FutureProducer = h.kafka.producer_config().create()?;
    known_state(&h, &producer).await?;
    let homes = partitions(&h).await?;
    let before = Snapshot::take(h.pool()).await?;
    let cases = corpus();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    let metrics_before: BTreeMap<&str, f64> = DeadLetterReason::ALL
        .iter()
        .map(|r| (r.as_str(), dead_letter_metric(*r)))
        .chain(["duplicate", "stale"].map(|o| (o, outcome_metric(o))))
        .collect();

    // Produce the corpus.
    let mut produced: BTreeMap<(i32, i64), &Case> = BTreeMap::new();
    for case in &cases {
        let partition = match &case.part {
            Part::ByKey => case.key.is_none().then_some(0),
            Part::AwayFrom(device) => Some(1 - homes[*device]),
        };
        let at = produce(
            &producer,
            &h.input,
            case.key.as_deref(),
            partition,
            case.payload.as_deref(),
            &case.headers,
        )
        .await
        .with_context(|| format!("producing case {:?}", case.name))?;
        produced.insert(at, case);
    }

    // Then a valid event on each partition (for new devices: no key, so the partition is chosen here),
    // and one that moves a stored device into a group.
    let mut touched: BTreeSet<String> = cases
        .iter()
        .filter_map(|c| match &c.expect {
            Expect::Applied { device, .. } => Some(device.clone()),
            _ => None,
        })
        .collect();
    for partition in [0, 1] {
        let device = format!("after-{partition}");
        let payload = with(&device, 1, |e| {
            e.insert(
                "attributes".into(),
                json!({"status": "online", "osType": "linux"}),
            );
        });
        produce(
            &producer,
            &h.input,
            None,
            Some(partition),
            Some(&payload),
            &[],
        )
        .await?;
        touched.insert(device);
    }
    let moved = with("dev-b", SEQ + 1, |e| {
        e.insert(
            "attributes".into(),
            json!({"status": "online", "osType": "linux"}),
        );
    });
    produce(&producer, &h.input, Some(b"dev-b"), None, Some(&moved), &[]).await?;
    touched.insert("dev-b".into());
    h.applied("after-0", 1).await?;
    h.applied("after-1", 1).await?;
    h.applied("dev-b", SEQ + 1).await?;
    for &at in produced.keys() {
        h.processed(at).await?;
    }
    settled(&h, "the corpus and the valid events settle").await?;

    // Exactly one dead letter per refused case, as the case expects.
    let expected_dead: usize = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::DeadLetter(..)))
        .count();
    let dead = h.kafka.read_all(&h.dead_letters).await?;
    let mut by_source: BTreeMap<(i32, i64), Vec<&ConsumedMessage>> = BTreeMap::new();
    for message in &dead {
        let source = (
            header_text(message, HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
            header_text(message, HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
        );
        match source {
            (Some(p), Some(o)) => by_source.entry((p, o)).or_default().push(message),
            _ => anyhow::bail!("a dead letter without its source: {message:?}"),
        }
    }
    let mut failures = Vec::new();
    for (&at, case) in &produced {
        let letters = by_source.remove(&at).unwrap_or_default();
        match &case.expect {
            Expect::DeadLetter(reason, detail) => match letters.as_slice() {
                [one] => {
                    if let Err(problem) =
                        check_dead_letter(case, one, &h.input, at, *reason, detail)
                    {
                        failures.push(format!("{}: {problem}", case.name));
                    }
                }
                other => failures.push(format!(
                    "{}: {} dead letters, expected one ({})",
                    case.name,
                    other.len(),
                    reason
                )),
            },
            Expect::Applied { device, sequence } => {
                if !letters.is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered ({:?}), expected it applied",
                        case.name,
                        header_text(letters[0], HEADER_DETAIL)
                    ));
                }
                let stored: Option<(String, i64)> =
                    sqlx::query_as("SELECT org_id, sequence FROM devices WHERE id = $1")
                        .bind(device)
                        .fetch_optional(h.pool())
                        .await?;
                if stored != Some((ORG.to_string(), *sequence)) {
                    failures.push(format!("{}: stored as {stored:?}", case.name));
                }
            }
            Expect::Skipped(_) => {
                if !letters.is_empty() {
                    failures.push(format!(
                        "{}: dead-lettered ({:?}), expected it skipped",
                        case.name,
                        header_text(letters[0], HEADER_DETAIL)
                    ));
                }
            }
        }
    }
    anyhow::ensure!(
        by_source.is_empty(),
        "dead letters of messages no case sent: {by_source:?}"
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(dead.len(), expected_dead);

    // The dead-letter counter rose by reason, and the skipped events were counted as such.
    let mut expected_counts: BTreeMap<&str, f64> = BTreeMap::new();
    for case in &cases {
        match &case.expect {
            Expect::DeadLetter(reason, _) => {
                *expected_counts.entry(reason.as_str()).or_default() += 1.0
            }
            Expect::Skipped(outcome) => *expected_counts.entry(outcome).or_default() += 1.0,
            Expect::Applied { .. } => {}
        }
    }
    let metrics_before = &metrics_before;
    let expected_counts = &expected_counts;
    eventually(
        Duration::from_secs(10),
        "the metrics count every case",
        || async move {
            let now: BTreeMap<&str, f64> = DeadLetterReason::ALL
                .iter()
                .map(|r| (r.as_str(), dead_letter_metric(*r)))
                .chain(["duplicate", "stale"].map(|o| (o, outcome_metric(o))))
                .collect();
            let rose: BTreeMap<&str, f64> = now
                .iter()
                .map(|(k, v)| (*k, v - metrics_before[k]))
                .filter(|(_, d)| *d != 0.0)
                .collect();
            Ok((rose == *expected_counts).then_some(()))
        },
    )
    .await
    .with_context(|| format!("expected the counters to rise by {expected_counts:?}"))?;

    // Nothing stored changed but what the accepted events did.
    let after = Snapshot::take(h.pool()).await?;
    let dead_topic = h.dead_letters.clone();
    let touched_keys: BTreeSet<String> = touched
        .iter()
        .map(|d| format!("\\x{}", hex(d.as_bytes())))
        .collect();
    before.assert_unchanged(&after, |table, row| {
        let device = match table {
            "devices" => snapshot::text(row, "id"),
            "outbox" => {
                // Dead letters were checked above; rollout events of touched devices may be new.
                if snapshot::text(row, "topic") == Some(dead_topic.as_str()) {
                    return true;
                }
                return snapshot::text(row, "message_key")
                    .is_some_and(|k| touched_keys.contains(k));
            }
            _ => snapshot::text(row, "device_id"),
        };
        device.is_some_and(|d| touched.contains(d))
    })?;
    let positions: BTreeMap<String, i32> = partitions(&h).await?;
    for (device, home) in &homes {
        anyhow::ensure!(
            positions.get(device) == Some(home),
            "device {device} moved from partition {home} to {:?}",
            positions.get(device)
        );
    }
    // dev-b left prod-or-rtos for online-linux, whose release it now targets.
    let dev_b: (i64, Option<String>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM device_group_memberships WHERE device_id = 'dev-b'), \
         (SELECT target_version FROM devices WHERE id = 'dev-b')",
    )
    .fetch_one(h.pool())
    .await?;
    anyhow::ensure!(
        dev_b == (1, Some("2.0.0".to_string())),
        "dev-b after its valid event: {dev_b:?}"
    );
    h.stop().await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
