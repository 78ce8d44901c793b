//! The `cohort` binary as an operator uses it: `cohort eval` and `cohort fields`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use cohort_testkit::child;

/// The binary, with none of this process's `COHORT_*` (or other) variables: a developer's environment
/// cannot change what these tests see.
fn cohort() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cohort"));
    command.env_clear().envs(child::inherited());
    command
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cohort-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn eval(filter: &Path, device: &Path, extra: &[&str]) -> Output {
    cohort()
        .arg("eval")
        .arg("--filter")
        .arg(filter)
        .arg("--device")
        .arg(device)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

const FILTER: &str = r#"{"operator": "AND", "conditions": [
    {"field": "status", "operator": "equals", "value": "online"},
    {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1, "unit": "days"}}
]}"#;

#[test]
fn a_matching_device_exits_zero_with_matches_true_and_an_explanation() {
    let dir = Scratch::new("match");
    let filter = dir.file("f.json", FILTER);
    let device = dir.file(
        "d.json",
        r#"{"status": "online", "lastSeenAt": "2024-06-15T00:00:00Z"}"#,
    );
    let out = eval(
        &filter,
        &device,
        &["--json", "--now", "2024-06-15T12:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert_eq!(v["matches"], json!(true));
    assert_eq!(v["fieldsUsed"], json!(["lastSeenAt", "status"]));
    assert_eq!(v["nextFlip"], json!("2024-06-16T00:00:00.001Z"));
    assert_eq!(v["explanation"]["conditions"][1]["result"], json!(true));
}

#[test]
fn a_device_that_does_not_match_still_exits_zero() {
    let dir = Scratch::new("nomatch");
    let filter = dir.file("f.json", FILTER);
    let device = dir.file("d.json", r#"{"status": "offline"}"#);
    let out = eval(
        &filter,
        &device,
        &["--json", "--now", "2024-06-15T12:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(0));
    let v = stdout_json(&out);
    assert_eq!(v["matches"], json!(false));
    assert_eq!(
        v["explanation"]["conditions"][1]["reason"],
        json!("lastSeenAt is missing, so withinLast is false")
    );
    let text = eval(&filter, &device, &["--now", "2024-06-15T12:00:00Z"]);
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("NO MATCH (evaluated at 2024-06-15T12:00:00.000Z)"),
        "{text}"
    );
    assert!(
        text.contains("✗ status is \"offline\", so equals \"online\" is false"),
        "{text}"
    );
}

#[test]
fn an_invalid_filter_and_device_exit_two_with_every_error() {
    let dir = Scratch::new("invalid");
    let filter = dir.file(
        "f.json",
        r#"{"operator": "AND", "conditions": [
            {"field": "hostnam", "operator": "equals", "value": "x"},
            {"field": "hostname", "operator": "greaterThan", "value": 1}]}"#,
    );
    let device = dir.file(
        "d.json",
        r#"{"status": "rebooting", "uptimeSeconds": "long"}"#,
    );
    let out = eval(&filter, &device, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = stdout_json(&out);
    let errors: Vec<(String, String, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.contains(&(
        "filter".into(),
        "$.conditions[0].field".into(),
        "Unknown field: hostnam".into()
    )));
    assert!(errors.contains(&(
        "filter".into(),
        "$.conditions[1].operator".into(),
        "Operator greaterThan not valid for field hostname".into()
    )));
    assert!(errors
        .iter()
        .any(|(s, p, _)| s == "device" && p == "$.status"));
    assert!(errors
        .iter()
        .any(|(s, p, _)| s == "device" && p == "$.uptimeSeconds"));
    // Without --json the errors go to standard error, one per line.
    let out = eval(&filter, &device, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: filter $.conditions[0].field: Unknown field: hostnam"),
        "{stderr}"
    );
}

#[test]
fn unreadable_or_malformed_inputs_exit_two() {
    let dir = Scratch::new("malformed");
    let filter = dir.file("f.json", "{ not json");
    let device = dir.file("d.json", "[1, 2]");
    let out = eval(&filter, &device, &["--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = stdout_json(&out);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let missing = eval(&dir.0.join("nope.json"), &device, &[]);
    assert_eq!(missing.status.code(), Some(2));
    let bad_now = eval(
        &dir.file("g.json", FILTER),
        &dir.file("e.json", "{}"),
        &["--now", "yesterday"],
    );
    assert_eq!(bad_now.status.code(), Some(2));
}

#[test]
fn the_device_can_come_from_standard_input() {
    let dir = Scratch::new("stdin");
    let filter = dir.file("f.json", FILTER);
    let mut child = cohort()
        .args([
            "eval",
            "--json",
            "--now",
            "2024-06-15T12:00:00Z",
            "--device",
            "-",
            "--filter",
        ])
        .arg(&filter)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"status": "online", "lastSeenAt": "2024-06-15T13:00:00+02:00"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_json(&out)["matches"], json!(true));
}

#[test]
fn declared_custom_fields_come_from_the_configuration_file() {
    let dir = Scratch::new("config");
    let config = dir.file(
        "cohort.toml",
        "[catalogue]\ncustom_fields = [{ key = \"rack\", type = \"number\" }]\n",
    );
    let filter = dir.file(
        "f.json",
        r#"{"operator": "AND", "conditions": [{"field": "custom.rack", "operator": "greaterThan", "value": 10}]}"#,
    );
    let device = dir.file("d.json", r#"{"custom.rack": 12}"#);
    let with = eval(
        &filter,
        &device,
        &["--json", "--config", config.to_str().unwrap()],
    );
    assert_eq!(with.status.code(), Some(0));
    assert_eq!(stdout_json(&with)["matches"], json!(true));
    // Without the declaration custom.rack is a string, and greaterThan is not valid for it.
    let without = eval(&filter, &device, &["--json"]);
    assert_eq!(without.status.code(), Some(2));
    let fields = cohort()
        .args(["fields", "--json", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(fields.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&fields.stdout).unwrap();
    assert!(v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "custom.rack" && f["type"] == "number"));
}

#[test]
fn the_readme_example_matches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = eval(
        &root.join("examples/filter.json"),
        &root.join("examples/device.json"),
        &["--json", "--now", "2024-06-15T10:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout_json(&out)["matches"], json!(true));
}

/// A local port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_database_that_does_not_answer_is_reported_once_naming_its_address() {
    let port = closed_port();
    let home = Scratch::new("home");
    let out = cohort()
        .arg("migrate")
        .env_clear()
        .env("HOME", &home.0)
        .env("RUST_LOG", "debug")
        .env(
            "COHORT_DATABASE_URL",
            format!("postgres://cohort:s3cret-pw@127.0.0.1:{port}/cohort"),
        )
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(out.status.code().is_some(), "killed by a signal");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let expected = format!("error: cannot connect to PostgreSQL at 127.0.0.1:{port}: ");
    assert_eq!(stderr.matches(&expected).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("ERROR") || l.starts_with("error"))
            .count(),
        1,
        "{stderr}"
    );
    // Not a terminal: no colours; line breaks are line breaks; the password is never shown.
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(!stderr.contains("\\n"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    assert!(out.stdout.is_empty());
}
