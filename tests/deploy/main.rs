//! The deployment files under `deploy/` checked against the code, so they cannot drift from it unnoticed:
//!
//! - every YAML and JSON file under `deploy/` parses;
//! - every `cohort_…` metric the Grafana dashboard, the alert rules and the deploy README name is one that
//!   [`cohort::metrics::ALL`] exports — histograms by their `_bucket`/`_sum`/`_count` series in queries —
//!   and the essentials (lag, dead letters, outbox backlog, latency…) are covered;
//! - the alert rules are complete (`for:`, severity, runbook) and the Kubernetes `PrometheusRule` carries
//!   exactly the groups of `deploy/prometheus/alerts.yml`;
//! - the `COHORT_…` variables the compose file and the manifests set are ones cohort's configuration
//!   accepts (it refuses unknown ones at start-up), the roles they run are `cohort` subcommands, and the
//!   topics, ports and mounts line up;
//! - the container build copies everything the crate reads at compile time;
//! - every Markdown document of the repository links only to files inside it ([`links`]).
//!
//! Pure file checks: no database, no broker, no Docker.

mod links;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::CommandFactory;
use cohort::config::{Config, KafkaConfig};
use cohort::metrics as m;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use serde::Deserialize;
use serde_json::Value;

// ------------------------------------------------------------------------------------------------------
// Reading deploy/

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// The documents of a YAML file (`---` separates several), with `<<` merge keys applied, as JSON values.
fn parse_yaml(path: &Path) -> Result<Vec<Value>, String> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let mut value = serde_yaml_ng::Value::deserialize(doc)
            .map_err(|e| format!("{}: document {}: {e}", rel(path), i + 1))?;
        value
            .apply_merge()
            .map_err(|e| format!("{}: document {}: {e}", rel(path), i + 1))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("{}: document {}: {e}", rel(path), i + 1))?;
        docs.push(json);
    }
    Ok(docs)
}

fn yaml(relative: &str) -> Vec<Value> {
    parse_yaml(&deploy().join(relative)).unwrap_or_else(|e| panic!("{e}"))
}

fn yaml_one(relative: &str) -> Value {
    let mut docs = yaml(relative);
    assert_eq!(docs.len(), 1, "deploy/{relative} should hold one document");
    docs.remove(0)
}

fn json(relative: &str) -> Value {
    let path = deploy().join(relative);
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", rel(&path)))
}

fn dashboard() -> Value {
    json("grafana/cohort-dashboard.json")
}

fn alerts() -> Value {
    yaml_one("prometheus/alerts.yml")
}

fn compose() -> Value {
    yaml_one("compose.yaml")
}

/// Every Kubernetes object under `deploy/k8s`, with the file it came from.
fn k8s_objects() -> Vec<(String, Value)> {
    files_under(&deploy().join("k8s"))
        .into_iter()
        .filter(|p| is_yaml(p))
        .flat_map(|p| {
            let name = rel(&p);
            parse_yaml(&p)
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .filter(|(_, doc)| doc["kind"] != "Kustomization")
        .collect()
}

/// Calls `f` with every string in `value` and the key it sits under (the nearest object key).
fn each_string<'a>(value: &'a Value, key: &'a str, f: &mut impl FnMut(&'a str, &'a str)) {
    match value {
        Value::String(s) => f(key, s),
        Value::Array(items) => items.iter().for_each(|v| each_string(v, key, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| each_string(v, k, f)),
        _ => {}
    }
}

// ------------------------------------------------------------------------------------------------------
// Metric names

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

fn assert_no_errors(errors: &[String]) {
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
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut errors = Vec::new();
    let mut parsed = 0;
    for path in files_under(&deploy()) {
        if is_yaml(&path) {
            match parse_yaml(&path) {
                Ok(docs) if docs.is_empty() => errors.push(format!("{}: no document", rel(&path))),
                Ok(_) => parsed += 1,
                Err(e) => errors.push(e),
            }
        } else if path.extension().is_some_and(|e| e == "json") {
            match serde_json::from_str::<Value>(&read(&path)) {
                Ok(_) => parsed += 1,
                Err(e) => errors.push(format!("{}: {e}", rel(&path))),
            }
        }
    }
    assert_no_errors(&errors);
    assert!(
        parsed >= 10,
        "only {parsed} YAML/JSON files found under deploy/"
    );
}

// ------------------------------------------------------------------------------------------------------
// Metrics in the dashboard, the alerts and the README

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

fn rules(alerts: &Value) -> Vec<&Value> {
    alerts["groups"]
        .as_array()
        .expect("alerts.yml has groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("every group has rules"))
        .collect()
}

fn is_duration(s: &str) -> bool {
    // Prometheus durations: one or more <number><unit>, e.g. 5m, 1h30m.
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        let Some(unit) = unit else { return false };
        rest = &rest[unit.len()..];
    }
    true
}

#[test]
fn every_alert_has_a_duration_a_severity_annotations_and_a_runbook_section() {
    let alerts = alerts();
    let readme = read(&deploy().join("README.md"));
    let mut names = BTreeSet::new();
    let mut errors = Vec::new();
    for rule in rules(&alerts) {
        let Some(name) = rule["alert"].as_str() else {
            errors.push(format!(
                "a rule without `alert` (recording rules belong elsewhere): {rule}"
            ));
            continue;
        };
        if !names.insert(name) {
            errors.push(format!("{name}: defined twice"));
        }
        if !name.starts_with("Cohort") {
            errors.push(format!("{name}: alert names start with Cohort"));
        }
        if rule["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
            errors.push(format!("{name}: no expr"));
        }
        if !rule["for"].as_str().is_some_and(is_duration) {
            errors.push(format!(
                "{name}: `for` must be a duration, got {}",
                rule["for"]
            ));
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["critical", "warning"].contains(&severity) {
            errors.push(format!(
                "{name}: severity must be critical or warning, got {severity:?}"
            ));
        }
        for annotation in ["summary", "description", "runbook"] {
            if rule["annotations"][annotation]
                .as_str()
                .is_none_or(|a| a.trim().is_empty())
            {
                errors.push(format!("{name}: no {annotation} annotation"));
            }
        }
        if !readme.contains(&format!("### {name}\n")) {
            errors.push(format!(
                "{name}: deploy/README.md has no `### {name}` runbook section"
            ));
        }
    }
    assert_no_errors(&errors);
}

#[test]
fn the_kubernetes_prometheus_rule_carries_exactly_the_alert_rules() {
    let rule = k8s_objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "PrometheusRule")
        .map(|(_, o)| o)
        .expect("deploy/k8s has a PrometheusRule");
    let alerts = alerts();
    if rule["spec"] == alerts {
        return;
    }
    // Name what differs rather than printing both files.
    let describe = |spec: &Value| -> Vec<(String, String)> {
        spec["groups"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .flat_map(|g| {
                let group = g["name"].as_str().unwrap_or("?").to_owned();
                g["rules"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or(&[])
                    .iter()
                    .map(move |r| {
                        (
                            format!("{group}/{}", r["alert"].as_str().unwrap_or("?")),
                            r.to_string(),
                        )
                    })
            })
            .collect()
    };
    let (k8s, file) = (describe(&rule["spec"]), describe(&alerts));
    let mut differences: Vec<String> = file
        .iter()
        .filter(|rule| !k8s.contains(rule))
        .map(|(name, _)| format!("{name} differs or is missing"))
        .collect();
    differences.extend(
        k8s.iter()
            .filter(|(name, _)| !file.iter().any(|(n, _)| n == name))
            .map(|(name, _)| format!("{name} is not in alerts.yml")),
    );
    if differences.is_empty() {
        differences.push(
            "the rules are the same but their order or the groups' other fields differ".into(),
        );
    }
    panic!(
        "deploy/k8s/prometheusrule.yaml's spec must equal deploy/prometheus/alerts.yml (copy its groups over):\n  {}",
        differences.join("\n  ")
    );
}

#[test]
fn prometheus_loads_the_alert_rules_and_scrapes_cohort_on_its_listen_port() {
    let prometheus = yaml_one("prometheus/prometheus.yml");
    let rule_files: Vec<&str> = prometheus["rule_files"]
        .as_array()
        .expect("prometheus.yml has rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        rule_files.iter().any(|f| f.ends_with("/alerts.yml")),
        "{rule_files:?}"
    );

    // The rules' `up{job=~"cohort-.*"}` matches only jobs named cohort-…; the target's port is the one
    // the compose file tells cohort to listen on.
    let port = compose_config("cohort").http.listen.port();
    let jobs = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs");
    let cohort_job = jobs
        .iter()
        .find(|j| {
            j["job_name"]
                .as_str()
                .is_some_and(|n| n.starts_with("cohort-"))
        })
        .expect("a scrape job named cohort-…");
    let targets = cohort_job["static_configs"][0]["targets"].to_string();
    assert!(
        targets.contains(&format!("cohort:{port}")),
        "scrape targets {targets} do not reach cohort:{port}"
    );
}

// ------------------------------------------------------------------------------------------------------
// The dashboard's shape

#[test]
fn every_dashboard_panel_queries_through_the_datasource_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].to_string();
    assert!(variables.contains("\"name\":\"datasource\""), "{variables}");
    let mut ids = BTreeSet::new();
    let mut errors = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?");
        if !ids.insert(panel["id"].as_u64().expect("numeric panel id")) {
            errors.push(format!("{title}: panel id {} is used twice", panel["id"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            errors.push(format!("{title}: datasource is not ${{datasource}}"));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            errors.push(format!("{title}: no query"));
        }
        let mut refs = BTreeSet::new();
        for target in targets {
            if target["expr"].as_str().is_none_or(str::is_empty) {
                errors.push(format!("{title}: a target without expr"));
            }
            if !refs.insert(target["refId"].to_string()) {
                errors.push(format!("{title}: refId {} is used twice", target["refId"]));
            }
        }
    }
    assert_no_errors(&errors);
}

#[test]
fn grafana_provisioning_finds_the_dashboard_where_compose_mounts_it() {
    let provider = yaml_one("grafana/provisioning/dashboards/cohort.yaml");
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    let mounts = compose()["services"]["grafana"]["volumes"].to_string();
    assert!(
        mounts.contains(&format!(
            "./grafana/cohort-dashboard.json:{path}/cohort-dashboard.json"
        )),
        "compose does not mount the dashboard into {path}: {mounts}"
    );
}

// ------------------------------------------------------------------------------------------------------
// Configuration and roles in compose and the manifests

/// `${NAME:-default}` and `${NAME}` as compose interpolates them with nothing set, and `$$` as `$`.
fn interpolate_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("${") {
            let end = inner.find('}').expect("unclosed ${");
            if let Some((_, default)) = inner[..end].split_once(":-") {
                out.push_str(default);
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Loads cohort's configuration from a set of variables, as a process given them would.
fn load(env: Vec<(String, String)>, context: &str) -> Config {
    Config::load_from(None, env)
        .unwrap_or_else(|e| panic!("{context}: cohort would refuse to start: {e}"))
}

/// The configuration the compose service `service` runs with.
fn compose_config(service: &str) -> Config {
    let compose = compose();
    let env = compose["services"][service]["environment"]
        .as_object()
        .unwrap_or_else(|| panic!("compose service {service} has an environment mapping"))
        .iter()
        .map(|(k, v)| (k.clone(), interpolate_defaults(&scalar(v))))
        .collect();
    load(env, &format!("compose service {service}"))
}

/// `cohort`'s subcommands: the roles a deployment may run.
fn roles() -> BTreeSet<String> {
    cohort::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect()
}

#[test]
fn compose_runs_cohort_roles_with_a_configuration_cohort_accepts() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let roles = roles();
    let mut cohort_services = 0;
    for (name, service) in services {
        if service["image"] != "cohort:local" {
            continue;
        }
        cohort_services += 1;
        let role = service["command"][0].as_str().unwrap_or("");
        assert!(
            roles.contains(role),
            "compose service {name} runs `cohort {role}`, which is not a role: {roles:?}"
        );
        let config = compose_config(name);
        assert!(
            config.kafka.brokers().is_some(),
            "{name}: no COHORT_KAFKA_BROKERS"
        );
        assert!(
            !config.http.listen.ip().is_loopback(),
            "{name}: COHORT_HTTP_LISTEN must not be loopback in a container"
        );
    }
    assert!(
        cohort_services >= 2,
        "compose should run cohort migrate and cohort worker"
    );
    assert_eq!(services["cohort-migrate"]["command"][0], "migrate");
    assert_eq!(services["cohort"]["command"][0], "worker");
}

#[test]
fn compose_dependencies_mounts_and_build_exist() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let mut errors = Vec::new();
    for (name, service) in services {
        if let Some(depends) = service["depends_on"].as_object() {
            for (dependency, condition) in depends {
                if !services.contains_key(dependency) {
                    errors.push(format!("{name} depends on unknown service {dependency}"));
                }
                let condition = condition["condition"].as_str().unwrap_or("");
                let healthy_needs_check = condition == "service_healthy"
                    && services
                        .get(dependency)
                        .is_some_and(|d| d["healthcheck"].is_null());
                if healthy_needs_check {
                    errors.push(format!(
                        "{name} waits for {dependency} to be healthy, which has no healthcheck"
                    ));
                }
            }
        }
        for volume in service["volumes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let source = volume
                .as_str()
                .and_then(|v| v.split(':').next())
                .unwrap_or("");
            if source.starts_with('.') && !deploy().join(source).exists() {
                errors.push(format!("{name} mounts {source}, which does not exist"));
            }
        }
        if service["build"].is_object() {
            let context = deploy().join(service["build"]["context"].as_str().unwrap_or("."));
            let dockerfile = context.join(
                service["build"]["dockerfile"]
                    .as_str()
                    .unwrap_or("Dockerfile"),
            );
            if !dockerfile.is_file() {
                errors.push(format!(
                    "{name} builds from {}, which does not exist",
                    dockerfile.display()
                ));
            }
        }
    }
    for essential in [
        "kafka",
        "kafka-init",
        "postgres",
        "cohort-migrate",
        "cohort",
        "prometheus",
        "grafana",
    ] {
        if !services.contains_key(essential) {
            errors.push(format!("compose has no {essential} service"));
        }
    }
    assert_no_errors(&errors);
}

#[test]
fn compose_creates_the_topics_cohort_uses() {
    let compose = compose();
    let script = compose["services"]["kafka-init"]["command"].to_string();
    let defaults = KafkaConfig::default();
    for topic in [
        &defaults.input_topic,
        &defaults.output_topic,
        &defaults.dead_letter_topic,
    ] {
        assert!(
            script.contains(topic.as_str()),
            "kafka-init does not create {topic}"
        );
    }
}

/// A Kubernetes container's environment: its `env` values, then the ConfigMaps it takes with `envFrom`
/// (Secrets' contents are unknown here: a variable taken from a Secret gets a placeholder).
fn container_env(
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for source in container["envFrom"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if let Some(name) = source["configMapRef"]["name"].as_str() {
            let data = config_maps.get(name).unwrap_or_else(|| {
                panic!("envFrom names ConfigMap {name}, which deploy/k8s does not define")
            });
            for (k, v) in data.as_object().expect("ConfigMap data") {
                env.push((k.clone(), scalar(v)));
            }
        }
    }
    for var in container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let name = var["name"].as_str().expect("env name").to_owned();
        let value = match var.get("value") {
            Some(v) => scalar(v),
            None if name.ends_with("DATABASE_URL") => {
                "postgres://placeholder@db:5432/cohort".to_owned()
            }
            None => "placeholder".to_owned(),
        };
        env.push((name, value));
    }
    env
}

fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Deployment" | "Job" | "StatefulSet" | "DaemonSet" => {
            Some(&object["spec"]["template"]["spec"])
        }
        _ => None,
    }
}

#[test]
fn kubernetes_workloads_run_cohort_roles_with_a_configuration_cohort_accepts() {
    let objects = k8s_objects();
    let config_maps: BTreeMap<String, Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "ConfigMap")
        .map(|(_, o)| {
            (
                o["metadata"]["name"].as_str().unwrap().to_owned(),
                o["data"].clone(),
            )
        })
        .collect();
    let roles = roles();
    let mut seen_roles = BTreeSet::new();
    let mut errors = Vec::new();
    for (file, object) in &objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let workload = format!("{file} {}", object["metadata"]["name"]);
        for container in spec["containers"].as_array().expect("containers") {
            if container["image"] != "cohort" {
                errors.push(format!(
                    "{workload}: image must be `cohort` (kustomization.yaml sets the real one)"
                ));
            }
            let role = container["args"][0].as_str().unwrap_or("");
            if !roles.contains(role) {
                errors.push(format!(
                    "{workload}: `cohort {role}` is not a role: {roles:?}"
                ));
            }
            seen_roles.insert(role.to_owned());
            let env = container_env(container, &config_maps);
            // Never a database URL inline: it comes from a Secret.
            let database_url = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "COHORT_DATABASE_URL");
            match database_url {
                Some(v) if v["valueFrom"]["secretKeyRef"].is_object() => {}
                _ => errors.push(format!(
                    "{workload}: COHORT_DATABASE_URL must come from a secretKeyRef"
                )),
            }
            let config = load(env, &workload);
            if role == "migrate" {
                continue;
            }
            if config.kafka.brokers().is_none() {
                errors.push(format!("{workload}: no COHORT_KAFKA_BROKERS"));
            }
            let ports = container["ports"].to_string();
            let port = config.http.listen.port();
            if !ports.contains(&format!("\"containerPort\":{port}"))
                || config.http.listen.ip().is_loopback()
            {
                errors.push(format!(
                    "{workload}: listens on {} but exposes {ports}",
                    config.http.listen
                ));
            }
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                if container[probe]["httpGet"]["path"] != path {
                    errors.push(format!("{workload}: {probe} must GET {path}"));
                }
            }
        }
    }
    for role in ["migrate", "worker", "api"] {
        if !seen_roles.contains(role) {
            errors.push(format!("no workload runs `cohort {role}`"));
        }
    }
    assert_no_errors(&errors);
}

#[test]
fn the_configmap_spells_out_the_default_topics_and_group() {
    // deploy/README.md's topic-creation commands use these names.
    let (_, config_map) = k8s_objects()
        .into_iter()
        .find(|(_, o)| o["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let defaults = KafkaConfig::default();
    for (key, default) in [
        ("COHORT_KAFKA_INPUT_TOPIC", &defaults.input_topic),
        ("COHORT_KAFKA_OUTPUT_TOPIC", &defaults.output_topic),
        (
            "COHORT_KAFKA_DEAD_LETTER_TOPIC",
            &defaults.dead_letter_topic,
        ),
        ("COHORT_KAFKA_GROUP_ID", &defaults.group_id),
    ] {
        assert_eq!(config_map["data"][key], default.as_str(), "{key}");
    }
}

#[test]
fn no_secret_is_committed_and_every_manifest_is_applied() {
    let objects = k8s_objects();
    for (file, object) in &objects {
        assert_ne!(
            object["kind"], "Secret",
            "{file}: Secrets are created out of band, never committed"
        );
    }
    let kustomization = yaml_one("k8s/kustomization.yaml");
    let listed: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let present: BTreeSet<String> = objects
        .iter()
        .map(|(file, _)| file.trim_start_matches("deploy/k8s/").to_owned())
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml must list every manifest in deploy/k8s"
    );
}

// ------------------------------------------------------------------------------------------------------
// The container build

#[test]
fn the_image_build_copies_everything_the_crate_reads_at_compile_time() {
    let dockerfile = read(&deploy().join("Dockerfile"));
    let copied: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .map(|w| w.trim_end_matches('/'))
        .collect();
    // Files the compiler reads besides src/: the manifest, the lock file, a build script, and whatever
    // include_str!/include_bytes!/sqlx::migrate! name.
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"].map(String::from).into();
    if repo().join("build.rs").exists() {
        needed.insert("build.rs".to_owned());
    }
    for file in files_under(&repo().join("src")) {
        let text = read(&file);
        for (macro_call, relative_to_manifest) in [
            ("include_str!(\"", false),
            ("include_bytes!(\"", false),
            ("migrate!(\"", true),
        ] {
            for (i, _) in text.match_indices(macro_call) {
                let arg = &text[i + macro_call.len()..];
                let arg = &arg[..arg.find('"').unwrap()];
                let base = if relative_to_manifest {
                    repo()
                } else {
                    file.parent().unwrap().to_path_buf()
                };
                let target = normalize(&base.join(arg));
                let top = target
                    .strip_prefix(repo())
                    .unwrap_or_else(|_| {
                        panic!("{} reads {arg}, outside the repository", rel(&file))
                    })
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned();
                needed.insert(top);
            }
        }
    }
    needed.insert("src".to_owned());
    let dockerignore = read(&repo().join(".dockerignore"));
    for path in &needed {
        assert!(
            copied.contains(path.as_str()),
            "deploy/Dockerfile does not COPY {path}, which the build reads (copied: {copied:?})"
        );
        assert!(
            dockerignore
                .lines()
                .any(|l| l.trim_end_matches('/') == format!("!{path}")),
            ".dockerignore excludes {path}, which the build reads"
        );
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"cohort\"]"));
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("the image sets a USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
