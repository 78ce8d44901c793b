//! `cohort plan -f fleet.yaml` and `cohort apply --plan plan.json` on the command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::{apply::apply, plan, FleetFile, Plan};
use crate::cli::ConfigArgs;
use crate::config::Config;
use crate::rules::Catalogue;

/// Arguments of `cohort plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The fleet file (YAML or JSON; schema: schemas/fleet.schema.json).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Write the plan (JSON, every device listed) here, for `cohort apply --plan`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Arguments of `cohort apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A plan written by `cohort plan --out`.
    #[arg(long)]
    pub plan: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Reads a file of at most [`super::file::MAX_FILE_BYTES`].
fn read(path: &std::path::Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= super::file::MAX_FILE_BYTES,
        "{} is larger than {} bytes",
        path.display(),
        super::file::MAX_FILE_BYTES
    );
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The database and catalogue the configuration names.
async fn connect(config: &ConfigArgs) -> anyhow::Result<(sqlx::PgPool, Catalogue)> {
    let config = Config::load(config.config.as_deref())?;
    let catalogue = Catalogue::from_config(&config.catalogue)?;
    let pool = crate::store::connect_lazy(&config.database)
        .map_err(|e| crate::telemetry::database_error(&config.database.url, e))?;
    crate::store::migrate(&pool).await?;
    Ok((pool, catalogue))
}

/// `cohort plan`.
pub async fn plan_command(args: PlanArgs) -> anyhow::Result<()> {
    let file = FleetFile::parse(&read(&args.file)?).map_err(anyhow::Error::msg)?;
    let (pool, catalogue) = connect(&args.config).await?;
    let plan = plan(&pool, &catalogue, &file, &Default::default()).await?;
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_vec_pretty(&plan)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", super::render(&plan));
        if let Some(out) = &args.out {
            println!("apply it with: cohort apply --plan {}", out.display());
        }
    }
    Ok(())
}

/// `cohort apply`.
pub async fn apply_command(args: ApplyArgs) -> anyhow::Result<()> {
    let saved: Plan = serde_json::from_str(&read(&args.plan)?).with_context(|| {
        format!(
            "{} is not a plan written by cohort plan",
            args.plan.display()
        )
    })?;
    let (pool, catalogue) = connect(&args.config).await?;
    let applied = apply(&pool, &catalogue, &saved, "cohort apply").await?;
    println!("applied {applied} change(s) to org {}", saved.file.org);
    Ok(())
}
