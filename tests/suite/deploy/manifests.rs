//! Configuration and roles in the compose file and the Kubernetes manifests: every `COHORT_…` variable is
//! one cohort accepts, every role runs, every dependency, mount and topic exists, and no secret is committed.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use cohort::config::{Config, KafkaConfig};
use serde_json::Value;

use super::metric_names::assert_no_errors;
use super::{compose, deploy, k8s_objects, yaml_one};

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
pub(super) fn compose_config(service: &str) -> Config {
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
pub(super) fn roles() -> BTreeSet<String> {
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
