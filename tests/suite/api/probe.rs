//! The generated-request probe: schemathesis, at a pinned version, sends requests generated from the
//! served OpenAPI document — valid ones, and ones that break the schema — to a live API, and checks every
//! answer: never a server error, every status code documented, the answer's body conforming to its
//! documented schema and content type, and data that breaks the schema refused with a 4xx.
//!
//! The harness installs schemathesis into a virtual environment under cargo's target folder the first
//! time (PyPI is one of the registries this project's machines reach), like any tool a test needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::Api;

/// The schemathesis release the probe is written against.
const VERSION: &str = "4.32.5";

/// Examples generated per operation and phase: enough to reach every branch of the schemas, bounded so
/// the probe takes well under a minute.
const MAX_EXAMPLES: &str = "20";

/// The checks the probe runs (schemathesis's names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,response_schema_conformance,\
                      content_type_conformance,negative_data_rejection";

/// The `st` executable of a virtual environment holding schemathesis `VERSION`, installed if need be.
fn schemathesis() -> anyhow::Result<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{VERSION}"));
    let st = venv.join("bin").join("st");
    let installed = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if installed {
        return Ok(st);
    }
    let run = |command: &mut Command, what: &str| -> anyhow::Result<()> {
        let output = command
            .output()
            .with_context(|| format!("cannot run {what}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (the probe needs Python 3 with venv)",
    )?;
    run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={VERSION}")),
        "pip install schemathesis",
    )?;
    Ok(st)
}

#[tokio::test]
async fn generated_requests_get_documented_answers_and_never_a_server_error() -> anyhow::Result<()>
{
    let st = cohort_testkit::blocking(
        Duration::from_secs(600),
        "install schemathesis",
        schemathesis,
    )
    .await?;
    // A broker for imports, and a rate limit the probe's few thousand requests stay within (the limiter
    // is tested on its own).
    let kafka = cohort_testkit::TestKafka::new().await?;
    let topic = kafka.unique_topic("device-attribute-changes");
    kafka.create_topic(&topic, 2).await?;
    let brokers = kafka.bootstrap_servers();
    let api = Api::start_with(|config| {
        config.api.rate_limit_per_second = 100_000;
        config.api.rate_limit_burst = 100_000;
        config.kafka.brokers = brokers;
        config.kafka.input_topic = topic;
    })
    .await?;
    let schema = format!("http://{}/api/v1/openapi.json", api.acme.addr);
    let key = api.acme.key.clone().unwrap_or_default();
    let output =
        cohort_testkit::blocking(Duration::from_secs(600), "run schemathesis", move || {
            Ok(Command::new(st)
                .args([
                    "run",
                    &schema,
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    MAX_EXAMPLES,
                ])
                .args(["--workers", "2", "--seed", "1", "--no-color"])
                .args(["--header", &format!("Authorization: Bearer {key}")])
                .env("SCHEMATHESIS_HOOKS", "")
                .output()?)
        })
        .await?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(
        output.status.success(),
        "the probe found failures:\n{report}"
    );
    anyhow::ensure!(
        report.contains("generated") && !report.contains("API Operations:\n  Selected: 0"),
        "the probe generated no requests:\n{report}"
    );
    api.stop().await
}
