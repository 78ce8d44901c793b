//! The `cohort` command line: parses arguments and dispatches to the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use crate::rules::time::{format_millis, parse_datetime};
use crate::rules::{compile, Attributes, Catalogue, ExplainNode};

/// cohort keeps dynamic device-group membership and firmware targets correct as device attributes change.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate a filter against one device and explain the result ("why is this device (not) in this group?").
    Eval(EvalArgs),
    /// List the field catalogue: every field a filter may reference, with its type.
    Fields(FieldsArgs),
    /// Apply the database migrations and exit.
    Migrate(ConfigArgs),
    /// Run the worker: consume device-attribute-changes and keep memberships current (until SIGINT/SIGTERM).
    /// It also runs the outbox relay unless `worker.embedded_relay` is false, and the REST API unless
    /// `worker.embedded_api` is false.
    Worker(ConfigArgs),
    /// Run cohort's whole main job on this machine with no configuration: an embedded Kafka-protocol broker
    /// (unless COHORT_KAFKA_BROKERS is set), PostgreSQL (DATABASE_URL, else the local server), a synthetic
    /// fleet, the worker, the relay and the API, a stream of attribute changes, and a summary.
    ///
    /// The database is COHORT_DATABASE_URL or DATABASE_URL if set, else cohort_demo on 127.0.0.1:5432
    /// (created if missing). The demo empties its own database at every start: one named cohort_demo, or
    /// any holding only an earlier demo's data, so running it again (with or without --serve) needs no
    /// flag. An empty database is used as it is. It refuses only a database that is not its own: one
    /// holding orgs it did not create (never emptied), or a benchmark's data (emptied with --reset).
    ///
    /// The API's address and keys are printed once it is up; with --serve it keeps serving after the
    /// summary, until Ctrl-C. The summary keeps the seeded fleet (memberships, initial firmware targets)
    /// apart from what the stream's events caused, and its throughput is the measured one: records the
    /// worker committed divided by the stream's wall time.
    Demo(crate::demo::DemoArgs),
    /// Run the REST API alone (until SIGINT/SIGTERM).
    Api(ConfigArgs),
    /// Create, list and revoke the REST API's keys.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// Print the REST API's OpenAPI document (the one served at /api/v1/openapi.json).
    Openapi,
    /// Recompute every dynamic membership and firmware target from PostgreSQL with the workers' evaluator
    /// and report drift (exit 0: none, 3: drift found). Read-only and safe while workers run; `--repair`
    /// has the owning workers rewrite what drifted through their normal path.
    Reconcile(ReconcileArgs),
    /// Run the outbox relay alone: publish committed outbox rows (dead letters, rollout-target events) to
    /// Kafka (until SIGINT/SIGTERM). Several may run; one at a time publishes.
    Relay(ConfigArgs),
    /// Compare a fleet file (an org's groups and releases by name, YAML) with the org's live state and print
    /// what applying it would change, with the devices each change moves in or out of groups and whose
    /// firmware it retargets; `--out` writes the plan for `cohort apply`.
    Plan(crate::plan::command::PlanArgs),
    /// Apply a plan written by `cohort plan --out`, exactly: refused if the live state moved since.
    Apply(crate::plan::command::ApplyArgs),
    /// Benchmark the worker end to end: a synthetic fleet (by default 1,000,000 devices, 1,000 dynamic
    /// groups) streamed through a Kafka-protocol broker into the worker and PostgreSQL, against the ceiling
    /// of the same writes by a minimal writer. Without --brokers, an in-process mock cluster is used.
    Bench(crate::bench::BenchArgs),
}

/// `cohort api-key …`.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it (once: only its digest is stored).
    Create {
        /// The org the key may act on (created if it does not exist yet).
        #[arg(long, conflicts_with = "system", required_unless_present = "system")]
        org: Option<String>,
        /// A system key, allowed on every org (for operators and provisioning).
        #[arg(long)]
        system: bool,
        /// A label for the key (who or what uses it).
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Revoke a key by id or prefix; requests with it are refused at once.
    Revoke {
        /// The key's id or its prefix (the 12 hex characters after `cohort_`).
        key: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Arguments of `cohort reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this org (default: every org).
    #[arg(long)]
    pub org: Option<String>,
    /// Most drift examples to print.
    #[arg(long, default_value_t = 20)]
    pub examples: usize,
    /// Milliseconds to wait before re-checking devices that seem to have drifted (a worker may have been
    /// changing them).
    #[arg(long, default_value_t = 2000)]
    pub settle_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Have the owning workers rewrite the drifted devices through their normal path (log rows and
    /// rollout events included), and reset drifted group member counts to the true count; run again
    /// afterwards to verify.
    #[arg(long)]
    pub repair: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Exit status of `cohort reconcile` when it found drift.
pub const EXIT_DRIFT: u8 = 3;

/// Arguments of commands that only need the configuration.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The configuration file (TOML); `COHORT_…` variables override it.
    #[arg(long, env = "COHORT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Arguments of `cohort eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The filter: a JSON file, or `-` for standard input.
    #[arg(long)]
    pub filter: PathBuf,
    /// The device's attributes: a JSON object keyed by field name (`custom.<key>` for custom fields), or `-`.
    #[arg(long)]
    pub device: PathBuf,
    /// The instant to evaluate at (RFC 3339); defaults to the current time.
    #[arg(long)]
    pub now: Option<String>,
    /// Print one JSON object (its `matches` field is the result) instead of text.
    #[arg(long)]
    pub json: bool,
    /// A configuration file whose `[catalogue]` section declares custom fields.
    #[arg(long, env = "COHORT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Arguments of `cohort fields`.
#[derive(Debug, Args)]
pub struct FieldsArgs {
    /// A configuration file whose `[catalogue]` section declares custom fields.
    #[arg(long, env = "COHORT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Exit status for input that could not be evaluated (invalid filter, device, file or option).
pub const EXIT_INVALID: u8 = 2;

/// Runs a parsed command line, printing to stdout/stderr, and returns the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Eval(args) => eval(&args),
        Command::Fields(args) => fields(&args),
        Command::Migrate(args) => run_async(migrate(args)),
        Command::Worker(args) => run_async(worker(args)),
        Command::Relay(args) => run_async(relay(args)),
        Command::Demo(args) => run_async(crate::demo::command(args)),
        Command::Api(args) => run_async(api(args)),
        Command::ApiKey(command) => run_async(api_key(command)),
        Command::Reconcile(args) => reconcile(args),
        Command::Openapi => {
            use std::io::Write as _;
            match std::io::stdout().write_all(crate::api::openapi::json().as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        Command::Plan(args) => run_async(crate::plan::command::plan_command(args)),
        Command::Apply(args) => run_async(crate::plan::command::apply_command(args)),
        Command::Bench(args) => run_async(crate::bench::command(args)),
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        // Printed once, here, and not also logged: the log line would repeat it (in colour, with its
        // line breaks escaped).
        Err(e) => {
            eprintln!("error: {}", crate::telemetry::render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// Applies the migrations (waiting for a database that is starting), naming the server if it fails.
async fn migrate_on(pool: &sqlx::PgPool, config: &Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    crate::app::migrate_with_retry(pool, config)
        .await
        .with_context(|| {
            format!(
                "PostgreSQL at {}",
                crate::telemetry::database_label(&config.database.url)
            )
        })
}

async fn migrate(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let url = &config.database.url;
    crate::store::create_database_if_missing(url)
        .await
        .map_err(|e| crate::telemetry::database_error(url, e))?;
    let pool = crate::store::connect_lazy(&config.database)
        .map_err(|e| crate::telemetry::database_error(url, e))?;
    migrate_on(&pool, &config).await?;
    println!("migrations applied");
    Ok(())
}

async fn worker(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    tracing::info!(config = %config.redacted_summary(), "starting worker");
    let app = crate::app::Application::build(config).await?;
    app.run_until_stopped(crate::app::shutdown_signal()).await
}

fn reconcile(args: ReconcileArgs) -> ExitCode {
    let drift = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let found = drift.clone();
    let status = run_async(async move {
        let config = Config::load(args.config.config.as_deref())?;
        let catalogue = Catalogue::from_config(&config.catalogue)?;
        let pool = crate::store::connect_lazy(&config.database)
            .map_err(|e| crate::telemetry::database_error(&config.database.url, e))?;
        migrate_on(&pool, &config).await?;
        let options = crate::reconcile::Options {
            org: args.org,
            examples: args.examples,
            settle: std::time::Duration::from_millis(args.settle_ms),
        };
        let report = crate::reconcile::check(&pool, &catalogue, &options).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", crate::reconcile::render(&report));
        }
        if args.repair && report.has_drift() {
            let repair = crate::reconcile::repair(&pool, &report, "cohort reconcile").await?;
            if repair.counts_reset > 0 {
                eprintln!(
                    "member counts reset to the true count in {} group(s)",
                    repair.counts_reset
                );
            }
            if repair.progress_reset > 0 {
                eprintln!(
                    "progress counts reset to a recount in {} release(s)",
                    repair.progress_reset
                );
            }
            if !repair.entries.is_empty() {
                eprintln!(
                    "repair requested: {} control-log entr{} for the owning workers; run `cohort reconcile` again to verify",
                    repair.entries.len(),
                    if repair.entries.len() == 1 { "y" } else { "ies" }
                );
            }
        }
        found.store(report.has_drift(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    if status == ExitCode::SUCCESS && drift.load(std::sync::atomic::Ordering::SeqCst) {
        ExitCode::from(EXIT_DRIFT)
    } else {
        status
    }
}

async fn api(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    tracing::info!(config = %config.redacted_summary(), "starting api");
    crate::app::run_api(config, crate::app::shutdown_signal(), None).await
}

async fn api_key(command: ApiKeyCommand) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let args = match &command {
        ApiKeyCommand::Create { config, .. }
        | ApiKeyCommand::Revoke { config, .. }
        | ApiKeyCommand::List { config } => config,
    };
    let config = Config::load(args.config.as_deref())?;
    let pool = crate::store::connect_lazy(&config.database)
        .map_err(|e| crate::telemetry::database_error(&config.database.url, e))?;
    migrate_on(&pool, &config).await?;
    match command {
        ApiKeyCommand::Create { org, name, .. } => {
            if let Some(org) = &org {
                crate::store::groups::create_org(&pool, org, org)
                    .await
                    .context("failed to create the org")?;
            }
            let (info, key) = crate::store::api_keys::create(&pool, org.as_deref(), &name).await?;
            eprintln!(
                "created key {} (prefix {}) for {}; it is shown once, store it now:",
                info.id,
                info.prefix,
                org.as_deref()
                    .map_or("every org (system key)".to_string(), |o| format!("org {o}"))
            );
            println!("{key}");
        }
        ApiKeyCommand::Revoke { key, .. } => {
            if crate::store::api_keys::revoke(&pool, &key).await? {
                println!("revoked {key}");
            } else {
                anyhow::bail!("no live key has id or prefix {key:?}");
            }
        }
        ApiKeyCommand::List { .. } => {
            for k in crate::store::api_keys::list(&pool).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.prefix,
                    k.org_id.as_deref().unwrap_or("(system)"),
                    k.name,
                    k.created_at.to_rfc3339(),
                    k.revoked_at.map_or("live".to_string(), |t| format!(
                        "revoked {}",
                        t.to_rfc3339()
                    ))
                );
            }
        }
    }
    Ok(())
}

async fn relay(args: ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    tracing::info!(config = %config.redacted_summary(), "starting relay");
    crate::app::run_relay(config, crate::app::shutdown_signal()).await
}

/// An input problem: where it is (`filter`, `device`, `now`, `config`), the JSON path, and what.
#[derive(Debug, serde::Serialize)]
struct InputError {
    source: &'static str,
    path: String,
    message: String,
}

impl InputError {
    fn new(source: &'static str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            source,
            path: path.into(),
            message: message.into(),
        }
    }
}

fn eval(args: &EvalArgs) -> ExitCode {
    match evaluate(args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            if args.json {
                println!("{}", json!({ "errors": errors }));
            } else {
                for e in &errors {
                    if e.path.is_empty() {
                        eprintln!("error: {}: {}", e.source, e.message);
                    } else {
                        eprintln!("error: {} {}: {}", e.source, e.path, e.message);
                    }
                }
            }
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn evaluate(args: &EvalArgs) -> Result<String, Vec<InputError>> {
    if args.filter == Path::new("-") && args.device == Path::new("-") {
        return Err(vec![InputError::new(
            "arguments",
            "",
            "only one of --filter and --device can be read from standard input",
        )]);
    }
    let catalogue = load_catalogue(args.config.as_deref()).map_err(|e| vec![e])?;
    let now = match &args.now {
        Some(s) => parse_datetime(s).ok_or_else(|| {
            vec![InputError::new(
                "now",
                "",
                format!("--now must be an RFC 3339 datetime, got {s:?}"),
            )]
        })?,
        None => chrono::Utc::now().timestamp_millis(),
    };
    // Read and check both inputs before reporting, so every error comes out at once.
    let mut errors = Vec::new();
    let filter = read_json(&args.filter, "filter").and_then(|v| {
        compile(&v, &catalogue).map_err(|errs| {
            errs.into_iter()
                .map(|e| InputError::new("filter", e.path, e.message))
                .collect()
        })
    });
    let device = read_json(&args.device, "device").and_then(|v| match v {
        Value::Object(map) => Attributes::from_json(&map, &catalogue).map_err(|errs| {
            errs.into_iter()
                .map(|e| {
                    let path = if e.field.is_empty() {
                        "$".to_string()
                    } else {
                        format!("$.{}", e.field)
                    };
                    InputError::new("device", path, e.message)
                })
                .collect()
        }),
        _ => Err(vec![InputError::new(
            "device",
            "$",
            "The device must be a JSON object keyed by field name",
        )]),
    });
    let (filter, device) = match (filter, device) {
        (Ok(f), Ok(d)) => (f, d),
        (f, d) => {
            errors.extend(f.err().unwrap_or_default());
            errors.extend(d.err().unwrap_or_default());
            return Err(errors);
        }
    };
    let explanation = filter.explain(&device, now, &catalogue);
    debug_assert_eq!(explanation.matches, filter.evaluate(&device, now));
    let next_flip = filter.next_flip(&device, now).map(format_millis);
    if args.json {
        let out = json!({
            "matches": explanation.matches,
            "evaluatedAt": explanation.evaluated_at,
            "fieldsUsed": filter.field_names(),
            "nextFlip": next_flip,
            "explanation": explanation.root,
        });
        return Ok(out.to_string());
    }
    let mut out = format!(
        "{} (evaluated at {})\n",
        if explanation.matches {
            "MATCH"
        } else {
            "NO MATCH"
        },
        explanation.evaluated_at
    );
    render(&explanation.root, 0, &mut out);
    if let Some(flip) = next_flip {
        out.push_str(&format!(
            "the result may next change at {flip} with no attribute change\n"
        ));
    }
    Ok(out.trim_end().to_string())
}

fn render(node: &ExplainNode, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let mark = |r: bool| if r { "✓" } else { "✗" };
    match node {
        ExplainNode::Group {
            operator,
            result,
            conditions,
            ..
        } => {
            out.push_str(&format!("{indent}{} {operator}\n", mark(*result)));
            for c in conditions {
                render(c, depth + 1, out);
            }
        }
        ExplainNode::Condition { result, reason, .. } => {
            out.push_str(&format!("{indent}{} {reason}\n", mark(*result)));
        }
    }
}

fn read_json(path: &Path, source: &'static str) -> Result<Value, Vec<InputError>> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map(|_| s)
            .map_err(|e| {
                vec![InputError::new(
                    source,
                    "",
                    format!("cannot read standard input: {e}"),
                )]
            })?
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            vec![InputError::new(
                source,
                "",
                format!("cannot read {}: {e}", path.display()),
            )]
        })?
    };
    serde_json::from_str(&text)
        .map_err(|e| vec![InputError::new(source, "", format!("not valid JSON: {e}"))])
}

/// The catalogue from the configuration (file, then `COHORT_…` variables), or the built-in one.
fn load_catalogue(config: Option<&Path>) -> Result<Catalogue, InputError> {
    let config = Config::load(config).map_err(|e| InputError::new("config", "", e.to_string()))?;
    Catalogue::from_config(&config.catalogue)
        .map_err(|e| InputError::new("config", "", e.to_string()))
}

fn fields(args: &FieldsArgs) -> ExitCode {
    let catalogue = match load_catalogue(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", e.message);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let rows: Vec<Value> = catalogue
        .fixed_fields()
        .map(|(_, def)| {
            let values = match &def.ty {
                crate::rules::catalogue::FieldType::Enum(v) => json!(v),
                _ => Value::Null,
            };
            json!({
                "name": def.name,
                "type": def.ty.name(),
                "computed": def.computed.is_some(),
                "values": values,
                "description": def.description,
            })
        })
        .collect();
    if args.json {
        println!(
            "{}",
            json!({ "fields": rows, "custom": "custom.<key> fields not declared are strings" })
        );
    } else {
        for row in &rows {
            let mut line = format!(
                "{:<20} {}",
                row["name"].as_str().unwrap_or(""),
                row["type"].as_str().unwrap_or("")
            );
            if let Some(values) = row["values"].as_array() {
                let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
                line.push_str(&format!(" ({})", names.join(", ")));
            }
            if row["computed"] == json!(true) {
                line.push_str(" [computed]");
            }
            println!("{line:<60} {}", row["description"].as_str().unwrap_or(""));
        }
        println!(
            "{:<20} string (any custom.<key> not declared in the configuration)",
            "custom.<key>"
        );
    }
    ExitCode::SUCCESS
}
