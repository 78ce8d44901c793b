//! The alert rules (a duration, a severity, annotations and a runbook section each; the Kubernetes
//! `PrometheusRule` carries exactly them; Prometheus loads them) and the dashboard's shape.

use std::collections::BTreeSet;

use serde_json::Value;

use super::manifests::compose_config;
use super::metric_names::assert_no_errors;
use super::{alerts, compose, dashboard, deploy, k8s_objects, read, yaml_one};

pub(super) fn rules(alerts: &Value) -> Vec<&Value> {
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
