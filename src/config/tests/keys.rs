//! The key table against the sections' fields, the environment and `docs/configuration.md`.

use std::collections::BTreeSet;

use super::*;
use crate::config::keys::KEYS;
use crate::config::ENV_KAFKA_PROPERTY_PREFIX;

/// The names serde lists as expected after refusing an unknown field in `toml`: the fields of the
/// table the unknown one was put in, in their declaration order.
fn expected_fields(toml: &str) -> Vec<String> {
    let err = toml::from_str::<Config>(toml).expect_err("an unknown field is refused");
    let message = err.message();
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("no list of expected fields in {message:?}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The sections of [`Config`] that hold scalar keys, with their fields, as the file reads them.
fn file_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for section in expected_fields("not_a_section = 1\n") {
        // Structured and file-only: custom fields and enum values for the filter language.
        if section == "catalogue" {
            continue;
        }
        for field in expected_fields(&format!("[{section}]\nnot_a_field = 1\n")) {
            // Structured: librdkafka properties, passed through as COHORT_KAFKA_PROPERTY__<NAME>.
            if section == "kafka" && field == "properties" {
                continue;
            }
            keys.push(format!("{section}.{field}"));
        }
    }
    keys
}

#[test]
fn every_field_of_every_section_is_a_key_in_the_order_of_the_fields() {
    let file_keys = file_keys();
    assert!(
        file_keys.contains(&"worker.batch_max_events".to_owned()),
        "{file_keys:?}"
    );
    let table: Vec<String> = KEYS.iter().map(|key| key.name.to_owned()).collect();
    let missing: Vec<&String> = file_keys.iter().filter(|k| !table.contains(k)).collect();
    let extra: Vec<&String> = table.iter().filter(|k| !file_keys.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "fields with no entry in config::keys::KEYS: {missing:?}; entries that are no field: {extra:?}"
    );
    assert_eq!(
        table, file_keys,
        "KEYS lists the keys in the order of the fields"
    );
}

#[test]
fn environment_variables_are_the_dotted_names_in_upper_case_and_distinct() {
    for key in KEYS {
        let var = key.env_var();
        assert_eq!(
            var,
            format!(
                "COHORT_{}_{}",
                key.section().to_uppercase(),
                key.field().to_uppercase()
            )
        );
        assert!(!var.starts_with(&format!("{ENV_PREFIX}{ENV_KAFKA_PROPERTY_PREFIX}")));
    }
    let vars: BTreeSet<String> = KEYS.iter().map(|key| key.env_var()).collect();
    assert_eq!(vars.len(), KEYS.len());
    assert!(vars.contains("COHORT_HTTP_MAX_CONNECTIONS_PER_CLIENT"));
}

#[test]
fn every_key_is_set_by_its_environment_variable_and_shown_in_its_section_of_the_summary() {
    let defaults = Config::default();
    for key in KEYS {
        // A value the key accepts and that differs from its default.
        let value = match key.name {
            "database.url" => "postgres://other@h/db".to_owned(),
            "database.wal_compression" => "zstd".to_owned(),
            "kafka.brokers" => "other:9092".to_owned(),
            "http.listen" => "0.0.0.0:9".to_owned(),
            "http.advertise" => "worker-1.cohort:8080".to_owned(),
            "worker.embedded_relay" | "worker.embedded_api" => "false".to_owned(),
            name if name.ends_with("topic") || name.ends_with("group_id") => "other".to_owned(),
            // Numbers: every default is valid, and so is one more.
            _ => {
                let default: u64 = key
                    .show(&defaults)
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: no test value for this key's type", key.name));
                (default + 1).to_string()
            }
        };
        let config = load_env(&[(key.env_var().as_str(), value.as_str())])
            .unwrap_or_else(|err| panic!("{}={value}: {err}", key.env_var()));
        assert_ne!(config, defaults, "{} changed nothing", key.env_var());
        assert_eq!(key.show(&config), value, "{}", key.env_var());
        let summary = config.redacted_summary();
        let line = summary
            .lines()
            .find(|line| line.starts_with(&format!("{}: ", key.section())))
            .unwrap_or_else(|| panic!("no {} line in {summary}", key.section()));
        assert!(
            line.contains(&format!(" {}={value}", key.field())),
            "{} not in {line}",
            key.name
        );
    }
}

/// The rows of the key table in `docs/configuration.md`: key, environment variable and default cells.
fn documented_rows() -> Vec<[String; 3]> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    text.lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(cells.len() >= 5, "a row of four cells: {line}");
            [cells[1], cells[2], cells[3]].map(str::to_owned)
        })
        .collect()
}

/// The first `code` span of a cell, or the cell without its backticks.
fn first_code(cell: &str) -> &str {
    cell.split('`').nth(1).unwrap_or(cell)
}

#[test]
fn the_documentation_lists_every_key_with_its_variable_and_default_and_no_other() {
    let rows = documented_rows();
    let defaults = Config::default();
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for [key_cell, var_cell, default_cell] in &rows {
        let name = first_code(key_cell);
        if !documented.insert(name) {
            problems.push(format!("{name} is documented twice"));
        }
        match name {
            "kafka.properties.<name>" => {
                let var = format!("{ENV_PREFIX}{ENV_KAFKA_PROPERTY_PREFIX}<NAME>");
                if first_code(var_cell) != var {
                    problems.push(format!("{name}: variable {var_cell}, expected {var}"));
                }
            }
            "catalogue.*" => {
                if var_cell != "(file only)" {
                    problems.push(format!("{name}: variable {var_cell}, expected (file only)"));
                }
            }
            _ => match KEYS.iter().find(|key| key.name == name) {
                None => problems.push(format!("{name} is documented but is no key")),
                Some(key) => {
                    if first_code(var_cell) != key.env_var() {
                        problems.push(format!(
                            "{name}: variable {var_cell}, expected {}",
                            key.env_var()
                        ));
                    }
                    let default = key.show(&defaults);
                    if default_cell.replace('`', "") != default {
                        problems.push(format!(
                            "{name}: default {default_cell}, expected {default}"
                        ));
                    }
                }
            },
        }
    }
    for key in KEYS {
        if !documented.contains(key.name) {
            problems.push(format!("{} is not documented", key.name));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md:\n{}",
        problems.join("\n")
    );
}
