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

mod alert_rules;
mod image;
mod links;
mod manifests;
mod metric_names;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use metric_names::assert_no_errors;

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
