//! The demo's end-of-run summary: the seeded fleet (what was in place before the first event: devices,
//! groups, memberships, the initial firmware targets) kept apart from the stream's effects (what the events
//! caused), with the throughput the worker measured rather than the rate that was asked for.
//!
//! Effects are told apart by their recorded cause, read from PostgreSQL (the system of record): every
//! membership-log row and rollout-target event says whether an input event, a control-log entry (the demo's
//! set-up: static members, releases, settings) or a time condition coming due caused it.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::PgPool;

use crate::store::outbox;

/// Membership changes and rollout events (by the reason of their new target), each by reason.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Effects {
    pub membership_changes: BTreeMap<String, i64>,
    pub rollout_events: BTreeMap<String, i64>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.membership_changes.is_empty() && self.rollout_events.is_empty()
    }
}

/// Effects by what caused them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ByCause {
    /// Caused by input events (the stream).
    pub events: Effects,
    /// Caused by a time condition coming due, with no event.
    pub timers: Effects,
    /// Caused by anything else: the control-log entries of the demo's set-up.
    pub setup: Effects,
}

impl ByCause {
    /// Sorts `(cause type, reason, count)` rows of the membership log and of the rollout events.
    pub fn from_rows(
        memberships: &[(String, String, i64)],
        rollouts: &[(String, String, i64)],
    ) -> Self {
        let mut out = ByCause::default();
        for (rows, pick) in [
            (
                memberships,
                (|e: &mut Effects| &mut e.membership_changes) as fn(&mut Effects) -> &mut _,
            ),
            (rollouts, |e: &mut Effects| &mut e.rollout_events),
        ] {
            for (cause, reason, count) in rows {
                let effects = match cause.as_str() {
                    "event" => &mut out.events,
                    "timer" => &mut out.timers,
                    _ => &mut out.setup,
                };
                *pick(effects).entry(reason.clone()).or_default() += count;
            }
        }
        out
    }
}

/// The seeded fleet: what was in place before the first event.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetSummary {
    pub devices: usize,
    pub orgs: usize,
    pub dynamic_groups: usize,
    pub static_groups: usize,
    /// Memberships before the first event, by how the device was added (`dynamic_rule`, `manual`).
    pub memberships: BTreeMap<String, i64>,
    /// Membership-log rows of the set-up (the static groups' members), by reason.
    pub membership_changes: BTreeMap<String, i64>,
    /// Rollout events of the set-up's releases (the initial targets), by the reason of the target.
    pub initial_targets: BTreeMap<String, i64>,
}

/// The stream and what its events caused.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamSummary {
    pub events: usize,
    pub poison_events: usize,
    /// Input records the worker committed during the stream (applied and dead-lettered alike).
    pub records_committed: u64,
    /// Wall time of the stream, from the first message produced to the worker committing the last one.
    pub seconds: f64,
    /// Measured: `records_committed / seconds`.
    pub events_per_second: f64,
    /// The pace asked for with `--rate` (`None`: as fast as possible).
    pub requested_rate: Option<f64>,
    pub latency_ms: BTreeMap<String, u64>,
    pub membership_changes: BTreeMap<String, i64>,
    pub rollout_events: BTreeMap<String, i64>,
    pub dead_letters: BTreeMap<String, i64>,
}

/// The end-of-run summary.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub fleet: FleetSummary,
    pub stream: StreamSummary,
    /// Effects of time conditions coming due (no event caused them).
    pub timers: Effects,
}

/// Records per second over `seconds` of wall time (0 for no time at all).
pub fn throughput(records: u64, seconds: f64) -> f64 {
    if seconds > 0.0 && seconds.is_finite() {
        records as f64 / seconds
    } else {
        0.0
    }
}

/// Membership changes and rollout events in PostgreSQL, by cause.
pub async fn effects(pool: &PgPool, rollout_topic: &str) -> anyhow::Result<ByCause> {
    let memberships: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT coalesce(cause ->> 'type', ''), reason, count(*) FROM group_membership_log \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let rollouts = outbox::rollouts_by_cause(pool, rollout_topic).await?;
    Ok(ByCause::from_rows(&memberships, &rollouts))
}

/// Dead letters by reason.
pub async fn dead_letters(pool: &PgPool, topic: &str) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows = outbox::count_by_header(pool, topic, crate::event::HEADER_REASON).await?;
    Ok(rows.into_iter().collect())
}

/// Memberships by how the device was added.
pub async fn memberships(pool: &PgPool) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT added_by, count(*) FROM device_group_memberships GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Membership-log rows and rollout events so far (the live progress line counts from these).
pub async fn totals(pool: &PgPool, rollout_topic: &str) -> anyhow::Result<(i64, i64)> {
    let changes: i64 = sqlx::query_scalar("SELECT count(*) FROM group_membership_log")
        .fetch_one(pool)
        .await?;
    Ok((changes, outbox::count(pool, rollout_topic).await?))
}

fn total(m: &BTreeMap<String, i64>) -> i64 {
    m.values().sum()
}

/// `a 1, b 2`, or `none`.
fn by_reason(m: &BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        "none".to_string()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `N (a 1, b 2)`, or `none`.
fn counted(m: &BTreeMap<String, i64>) -> String {
    if m.is_empty() {
        "none".to_string()
    } else {
        format!("{} ({})", total(m), by_reason(m))
    }
}

/// The summary table.
pub fn render(s: &Summary) -> String {
    let mut out = String::from("\nsummary\n");
    let row = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("    {name:<28} {value}\n"));
    };
    let f = &s.fleet;
    out.push_str("  seeded fleet (in place before the first event)\n");
    row(
        &mut out,
        "fleet",
        format!(
            "{} devices, {} orgs, {} dynamic + {} static groups",
            f.devices, f.orgs, f.dynamic_groups, f.static_groups
        ),
    );
    row(&mut out, "memberships", counted(&f.memberships));
    row(
        &mut out,
        "membership changes (set-up)",
        counted(&f.membership_changes),
    );
    row(
        &mut out,
        "initial targets",
        match total(&f.initial_targets) {
            0 => "none".to_string(),
            n => format!(
                "{n} rollout events from the releases ({})",
                by_reason(&f.initial_targets)
            ),
        },
    );
    let t = &s.stream;
    out.push_str("  the stream (what its events caused)\n");
    row(
        &mut out,
        "events",
        format!(
            "{} attribute changes + {} poison messages",
            t.events, t.poison_events
        ),
    );
    let pace = match t.requested_rate {
        Some(rate) => {
            format!("paced at {rate:.0}/s by --rate; --rate 0 for the most the worker can do")
        }
        None => "produced as fast as possible".to_string(),
    };
    row(
        &mut out,
        "throughput (measured)",
        format!(
            "{:.0} events/s: {} records committed by the worker in {:.1} s ({pace})",
            t.events_per_second, t.records_committed, t.seconds
        ),
    );
    // Percentiles in order, then the maximum.
    let mut latency: Vec<(&String, &u64)> = t.latency_ms.iter().collect();
    latency.sort_by_key(|(k, _)| (k.as_str() == "max", k.len(), k.as_str()));
    let latency: Vec<String> = latency
        .into_iter()
        .map(|(k, v)| format!("{k} {v} ms"))
        .collect();
    row(
        &mut out,
        "latency (produce → commit)",
        if latency.is_empty() {
            "none".to_string()
        } else {
            latency.join(", ")
        },
    );
    row(
        &mut out,
        "membership changes",
        counted(&t.membership_changes),
    );
    row(
        &mut out,
        "rollout events (new target)",
        counted(&t.rollout_events),
    );
    row(&mut out, "dead letters", counted(&t.dead_letters));
    if !s.timers.is_empty() {
        out.push_str("  time conditions coming due (no event)\n");
        row(
            &mut out,
            "membership changes",
            counted(&s.timers.membership_changes),
        );
        row(
            &mut out,
            "rollout events (new target)",
            counted(&s.timers.rollout_events),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
        r.iter()
            .map(|(c, k, n)| (c.to_string(), k.to_string(), *n))
            .collect()
    }

    fn map(r: &[(&str, i64)]) -> BTreeMap<String, i64> {
        r.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn effects_are_sorted_by_their_cause() {
        let by = ByCause::from_rows(
            &rows(&[
                ("control", "manual", 50),
                ("event", "filter_match", 300),
                ("event", "filter_unmatch", 280),
                ("timer", "filter_unmatch", 4),
                ("", "manual", 1),
            ]),
            &rows(&[
                ("control", "default_release", 4000),
                ("control", "group_release", 1034),
                ("event", "group_release", 120),
                ("timer", "default_release", 2),
            ]),
        );
        assert_eq!(
            by.events,
            Effects {
                membership_changes: map(&[("filter_match", 300), ("filter_unmatch", 280)]),
                rollout_events: map(&[("group_release", 120)]),
            }
        );
        assert_eq!(by.setup.membership_changes, map(&[("manual", 51)]));
        assert_eq!(
            by.setup.rollout_events,
            map(&[("default_release", 4000), ("group_release", 1034)])
        );
        assert_eq!(by.timers.membership_changes, map(&[("filter_unmatch", 4)]));
        assert_eq!(by.timers.rollout_events, map(&[("default_release", 2)]));
    }

    #[test]
    fn throughput_is_records_over_wall_time() {
        assert_eq!(throughput(20_004, 10.0), 2000.4);
        assert_eq!(throughput(1504, 0.5), 3008.0);
        assert_eq!(throughput(10, 0.0), 0.0);
        assert_eq!(throughput(10, f64::NAN), 0.0);
    }

    fn summary() -> Summary {
        Summary {
            fleet: FleetSummary {
                devices: 10_000,
                orgs: 2,
                dynamic_groups: 60,
                static_groups: 2,
                memberships: map(&[("dynamic_rule", 12_000), ("manual", 50)]),
                membership_changes: map(&[("manual", 50)]),
                initial_targets: map(&[("default_release", 4000), ("group_release", 1034)]),
            },
            stream: StreamSummary {
                events: 20_000,
                poison_events: 4,
                records_committed: 20_004,
                seconds: 10.2,
                events_per_second: throughput(20_004, 10.2),
                requested_rate: Some(2000.0),
                latency_ms: [("max", 95), ("p50", 12), ("p99", 80), ("p90", 40)]
                    .map(|(k, v)| (k.to_string(), v))
                    .into(),
                membership_changes: map(&[("filter_match", 300), ("filter_unmatch", 280)]),
                rollout_events: map(&[("group_release", 120)]),
                dead_letters: map(&[("invalid_json", 1), ("unknown_org", 3)]),
            },
            timers: Effects::default(),
        }
    }

    #[test]
    fn the_table_keeps_the_seeded_fleet_apart_from_the_stream() {
        let text = render(&summary());
        let (fleet, stream) = text.split_once("  the stream").expect("two sections");
        assert!(
            fleet.contains("initial targets              5034 rollout events from the releases (default_release 4000, group_release 1034)"),
            "{text}"
        );
        assert!(
            fleet.contains("memberships                  12050 (dynamic_rule 12000, manual 50)"),
            "{text}"
        );
        assert!(
            stream.contains("rollout events (new target)  120 (group_release 120)"),
            "{text}"
        );
        assert!(
            stream.contains(
                "membership changes           580 (filter_match 300, filter_unmatch 280)"
            ),
            "{text}"
        );
        assert!(!stream.contains("5034"), "{text}");
        assert!(
            stream.contains("p50 12 ms, p90 40 ms, p99 80 ms, max 95 ms"),
            "{text}"
        );
        assert!(!text.contains("time conditions"), "{text}");
    }

    #[test]
    fn the_throughput_is_the_measured_one_and_says_how_the_stream_was_paced() {
        let mut s = summary();
        let text = render(&s);
        assert!(
            text.contains("1961 events/s: 20004 records committed by the worker in 10.2 s (paced at 2000/s by --rate"),
            "{text}"
        );
        s.stream.requested_rate = None;
        assert!(render(&s).contains("(produced as fast as possible)"));
    }

    #[test]
    fn the_table_names_no_address() {
        let text = render(&summary());
        assert!(!text.contains("http://"), "{text}");
        assert!(!text.contains("api"), "{text}");
    }

    #[test]
    fn time_driven_effects_get_a_section_of_their_own() {
        let mut s = summary();
        s.timers.membership_changes = map(&[("filter_unmatch", 4)]);
        let text = render(&s);
        let (_, timers) = text
            .split_once("  time conditions coming due")
            .expect("a section");
        assert!(timers.contains("4 (filter_unmatch 4)"), "{text}");
    }

    #[test]
    fn the_json_separates_the_fleet_from_the_stream() {
        let v = serde_json::to_value(summary()).unwrap();
        assert_eq!(v["fleet"]["initialTargets"]["default_release"], 4000);
        assert_eq!(v["stream"]["rolloutEvents"]["group_release"], 120);
        assert_eq!(v["stream"]["recordsCommitted"], 20_004);
        assert_eq!(v["stream"]["requestedRate"], 2000.0);
        assert!(v.get("api").is_none());
    }
}
