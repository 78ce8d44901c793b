//! Metric names: every `cohort_…` metric the Grafana dashboard, the alert rules and the deploy README
//! name is one that [`cohort::metrics::ALL`] exports (histograms by their `_bucket`/`_sum`/`_count` series),
//! each is described once with its kind, and the essentials are covered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cohort::metrics as m;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde_json::Value;

use super::alert_rules::rules;
use super::{alerts, dashboard, deploy, each_string, read};

/// What `cohort::metrics::describe` registers a name as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A recorder that only notes what `describe` declares.
#[derive(Default)]
struct Descriptions(Mutex<Vec<(String, Kind)>>);

impl Descriptions {
    fn note(&self, key: KeyName, kind: Kind) {
        self.0.lock().unwrap().push((key.as_str().to_owned(), kind));
    }
}

impl Recorder for Descriptions {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key, Kind::Counter);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key, Kind::Gauge);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.note(key, Kind::Histogram);
    }
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Every name `cohort::metrics::describe` declares, with its kind.
fn described() -> Vec<(String, Kind)> {
    let recorder = Descriptions::default();
    metrics::with_local_recorder(&recorder, m::describe);
    recorder.0.into_inner().unwrap()
}

/// The kind of every name in `ALL` (panics, naming it, if one is not described).
fn exported() -> BTreeMap<&'static str, Kind> {
    let described: BTreeMap<String, Kind> = described().into_iter().collect();
    m::ALL
        .iter()
        .map(|&name| {
            let kind = *described.get(name).unwrap_or_else(|| {
                panic!("{name} is in metrics::ALL but describe() does not declare it")
            });
            (name, kind)
        })
        .collect()
}

/// Every `cohort_…` identifier in `text` (a PromQL expression or prose).
fn metric_tokens(text: &str) -> Vec<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let token = &tail[..end];
        if token.starts_with("cohort_") {
            out.push(token);
        }
        rest = &tail[end..];
    }
    out
}

const HISTOGRAM_SERIES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Resolves a `cohort_…` token to the exported name it refers to. In a query (`series`), a histogram must
/// be named by one of its series; in prose its bare name is fine.
fn resolve(
    token: &str,
    exported: &BTreeMap<&'static str, Kind>,
    series: bool,
) -> Result<&'static str, String> {
    if let Some((&name, &kind)) = exported.get_key_value(token) {
        if series && kind == Kind::Histogram {
            return Err(format!(
                "{token} is a histogram: Prometheus has only its _bucket, _sum and _count series"
            ));
        }
        return Ok(name);
    }
    for suffix in HISTOGRAM_SERIES {
        let Some(base) = token.strip_suffix(suffix) else {
            continue;
        };
        let Some((&name, &kind)) = exported.get_key_value(base) else {
            continue;
        };
        if kind != Kind::Histogram {
            return Err(format!(
                "{token}: {name} is a {kind:?}, which has no {suffix} series"
            ));
        }
        // metrics::install() gives buckets to names ending in `_seconds` only; any other histogram is
        // rendered as a summary, which has no `_bucket` series.
        if suffix == "_bucket" && !name.ends_with("_seconds") {
            return Err(format!(
                "{token}: {name} is rendered as a summary (metrics::install() sets buckets for `_seconds` names only)"
            ));
        }
        return Ok(name);
    }
    Err(format!(
        "{token} is not a metric cohort exports (cohort::metrics::ALL)"
    ))
}

/// Checks every `cohort_…` name in the JSON `value` of `file`; `expr` strings are queries, others prose.
/// Returns the exported names referenced, and pushes a message per unknown name onto `errors`.
fn check_references(
    file: &str,
    value: &Value,
    exported: &BTreeMap<&'static str, Kind>,
    errors: &mut Vec<String>,
) -> BTreeSet<&'static str> {
    let mut found = BTreeSet::new();
    each_string(value, "", &mut |key, text| {
        for token in metric_tokens(text) {
            match resolve(token, exported, key == "expr") {
                Ok(name) => {
                    found.insert(name);
                }
                Err(e) => errors.push(format!("{file}: {e}")),
            }
        }
    });
    found
}

pub(super) fn assert_no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{} problem(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------------
// Every file parses

#[test]
fn every_exported_metric_is_described_once_with_its_kind() {
    let described = described();
    let names: Vec<&str> = described.iter().map(|(n, _)| n.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "a name is described twice: {names:?}"
    );
    let all: BTreeSet<&str> = m::ALL.iter().copied().collect();
    assert_eq!(all.len(), m::ALL.len(), "metrics::ALL lists a name twice");
    assert_eq!(
        unique, all,
        "metrics::describe() and metrics::ALL must name the same metrics"
    );
}

#[test]
fn the_dashboard_uses_only_exported_metrics_and_covers_the_essentials() {
    let exported = exported();
    let mut errors = Vec::new();
    let used = check_references(
        "deploy/grafana/cohort-dashboard.json",
        &dashboard(),
        &exported,
        &mut errors,
    );
    assert_no_errors(&errors);
    for essential in [
        m::EVENTS,
        m::CONSUMER_LAG,
        m::BATCH_SECONDS,
        m::COMMIT_SECONDS,
        m::MEMBERSHIP_CHANGES,
        m::ROLLOUT_EVENTS,
        m::RELAY_MESSAGES_RELAYED,
        m::DEAD_LETTERS,
        m::RELAY_OUTBOX_BACKLOG,
        m::RELAY_OUTBOX_OLDEST_AGE,
        m::REBALANCES,
    ] {
        assert!(
            used.contains(essential),
            "the dashboard has no panel over {essential}"
        );
    }
}

#[test]
fn the_alert_rules_use_only_exported_metrics_and_cover_the_essentials() {
    let exported = exported();
    let mut errors = Vec::new();
    let alerts = alerts();
    let used = check_references(
        "deploy/prometheus/alerts.yml",
        &alerts,
        &exported,
        &mut errors,
    );
    assert_no_errors(&errors);
    for essential in [
        m::CONSUMER_LAG,
        m::DEAD_LETTERS,
        m::RELAY_OUTBOX_BACKLOG,
        m::RELAY_OUTBOX_OLDEST_AGE,
    ] {
        assert!(
            used.contains(essential),
            "no alert rule watches {essential}"
        );
    }
    // cohort exports no readiness gauge: a worker that is down or not serving is caught by `up`.
    let exprs: Vec<&str> = rules(&alerts)
        .iter()
        .filter_map(|r| r["expr"].as_str())
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.trim_start().starts_with("up{") && e.contains("== 0")),
        "no alert fires on `up == 0` for cohort's targets: {exprs:?}"
    );
}

#[test]
fn the_deploy_readme_names_only_exported_metrics() {
    let exported = exported();
    let mut errors = Vec::new();
    let readme = Value::String(read(&deploy().join("README.md")));
    check_references("deploy/README.md", &readme, &exported, &mut errors);
    assert_no_errors(&errors);
}

#[test]
fn a_renamed_metric_is_caught() {
    // The checks above are only as good as this: a name that drifted by one character is refused, and a
    // histogram's series are accepted only on histograms.
    let exported = exported();
    let mut errors = Vec::new();
    let drifted = serde_json::json!({"targets": [
        {"expr": "sum(rate(cohort_worker_event_total[5m]))"},
        {"expr": "cohort_worker_dead_letters_total_bucket"},
        {"expr": format!("{}_bucket", m::CONSUMER_LAG)},
        {"expr": m::COMMIT_SECONDS},
        {"expr": format!("rate({}_bucket[5m]) + rate({}[5m])", m::COMMIT_SECONDS, m::EVENTS)},
    ]});
    check_references("drifted", &drifted, &exported, &mut errors);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(
        errors[0].contains("cohort_worker_event_total is not a metric"),
        "{errors:#?}"
    );
    assert!(errors[3].contains("is a histogram"), "{errors:#?}");
}

// ------------------------------------------------------------------------------------------------------
// Alert rules
