//! Which database the demo uses, and when it empties it.
//!
//! The demo's database is `COHORT_DATABASE_URL` or `DATABASE_URL` if set, else [`DEFAULT_DATABASE_URL`]
//! (created if missing). At every start the demo empties a database that is its own: one named
//! `cohort_demo` (on whichever server), or any database holding nothing but an earlier demo's data (recognised
//! by the system key every demo creates first, [`SYSTEM_KEY_NAME`]). An empty database is used as it is. It
//! refuses only a database that is not its own: one holding orgs the demo did not create (never emptied),
//! and one holding a `cohort bench` run's data (emptied with `--reset`).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;

use super::DemoArgs;

/// The demo's own database on the local server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/cohort_demo";

/// The name of the demo's own database: always emptied at start.
pub const OWN_DATABASE: &str = "cohort_demo";

/// The name of the system key the demo creates before it seeds anything: a database holding it (and only
/// the demo's orgs) holds an earlier demo's data.
pub const SYSTEM_KEY_NAME: &str = "cohort demo (system)";

/// What a database holds, as far as the demo is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents {
    /// No org and no device.
    Empty,
    /// Only an earlier demo's data.
    Demo,
    /// Only synthetic orgs, without the demo's key: a `cohort bench` run's data (or a demo stopped
    /// before it made its key).
    Benchmark,
    /// Orgs the demo and the benchmark did not create.
    Foreign,
}

impl Contents {
    /// Classifies from the counts: orgs, orgs that are not synthetic, whether any device exists, whether the
    /// demo's system key exists.
    pub fn classify(orgs: i64, foreign_orgs: i64, devices: bool, demo_key: bool) -> Self {
        if foreign_orgs > 0 {
            Contents::Foreign
        } else if orgs == 0 && !devices {
            Contents::Empty
        } else if demo_key {
            Contents::Demo
        } else {
            Contents::Benchmark
        }
    }
}

/// Whether to empty the database before seeding, or why the demo refuses it.
pub fn decide(own: bool, contents: Contents, reset: bool, label: &str) -> anyhow::Result<bool> {
    match contents {
        Contents::Empty => Ok(false),
        Contents::Demo => Ok(true),
        Contents::Benchmark if own || reset => Ok(true),
        Contents::Benchmark => anyhow::bail!(
            "the database {label} holds synthetic data the demo did not create (a `cohort bench` run's, \
             or a demo stopped before it began); pass --reset to empty it, or name another database"
        ),
        Contents::Foreign => anyhow::bail!(
            "the database {label} holds orgs that are not the demo's, and the demo never empties those; \
             name a database of its own (for example …/{OWN_DATABASE}), or an empty one"
        ),
    }
}

/// The URL named by the environment, if any.
fn named_url() -> Option<String> {
    std::env::var("COHORT_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|u| !u.trim().is_empty())
}

/// Whether `url` names the demo's own database.
fn is_own(url: &str) -> bool {
    url.parse::<sqlx::postgres::PgConnectOptions>()
        .ok()
        .is_some_and(|o| o.get_database() == Some(OWN_DATABASE))
}

/// The database URL to use, checked to answer, created if missing, and emptied if it is the demo's own;
/// an error (saying what to do) if the demo may not use it.
pub async fn prepare(args: &DemoArgs) -> anyhow::Result<(String, PgPool)> {
    let url = named_url().unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let label = crate::config::redact_database_url(&url);
    let at = crate::telemetry::database_label(&url);
    let reachable = tokio::time::timeout(
        Duration::from_secs(10),
        crate::store::create_database_if_missing(&url),
    )
    .await;
    match reachable {
        Ok(Ok(())) => {}
        Ok(Err(e)) if !e.is_transient() => {
            return Err(crate::telemetry::database_error(&url, e))
                .context("PostgreSQL refused the demo")
        }
        failed => {
            let cause = match failed {
                Ok(Err(e)) => {
                    crate::telemetry::render_error(&crate::telemetry::database_error(&url, e))
                }
                _ => format!("PostgreSQL at {at} did not answer within 10 s"),
            };
            anyhow::bail!(
                "{cause}\n\
                 Start PostgreSQL, then run the demo again:\n\
                 \x20 - Debian/Ubuntu: sudo apt-get install postgresql && sudo pg_ctlcluster $(ls /etc/postgresql) main start\n\
                 \x20 - Docker:        docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:17\n\
                 or point the demo at a server you have: DATABASE_URL=postgres://user:password@host:5432/dbname"
            )
        }
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .map_err(|e| crate::telemetry::database_error(&url, e.into()))?;
    crate::store::migrate(&pool)
        .await
        .map_err(|e| crate::telemetry::database_error(&url, e))?;
    let (orgs, foreign) = crate::synthetic::seed::org_counts(&pool).await?;
    let (devices, demo_key): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM devices), \
                EXISTS (SELECT 1 FROM api_keys WHERE org_id IS NULL AND name = $1)",
    )
    .bind(SYSTEM_KEY_NAME)
    .fetch_one(&pool)
    .await
    .context("failed to inspect the database")?;
    let contents = Contents::classify(orgs, foreign, devices, demo_key);
    if decide(is_own(&url), contents, args.reset, &label)? {
        // The synthetic fleet's emptying, which refuses again if an org that is not synthetic appeared
        // since.
        crate::synthetic::seed::prepare(&pool, true).await?;
    }
    Ok((url, pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_are_classified_from_what_the_database_holds() {
        assert_eq!(Contents::classify(0, 0, false, false), Contents::Empty);
        assert_eq!(Contents::classify(0, 0, false, true), Contents::Empty);
        assert_eq!(Contents::classify(2, 0, true, true), Contents::Demo);
        assert_eq!(Contents::classify(2, 0, true, false), Contents::Benchmark);
        assert_eq!(Contents::classify(0, 0, true, false), Contents::Benchmark);
        assert_eq!(Contents::classify(3, 1, true, true), Contents::Foreign);
    }

    #[test]
    fn an_earlier_demo_is_emptied_wherever_it_is() {
        for own in [false, true] {
            for reset in [false, true] {
                assert!(decide(own, Contents::Demo, reset, "db").unwrap());
                assert!(!decide(own, Contents::Empty, reset, "db").unwrap());
            }
        }
    }

    #[test]
    fn benchmark_data_is_emptied_in_the_demos_own_database_or_with_reset() {
        assert!(decide(true, Contents::Benchmark, false, "db").unwrap());
        assert!(decide(false, Contents::Benchmark, true, "db").unwrap());
        let refused = decide(false, Contents::Benchmark, false, "db").unwrap_err();
        assert!(refused.to_string().contains("--reset"), "{refused}");
    }

    #[test]
    fn orgs_that_are_not_the_demos_are_never_emptied() {
        for own in [false, true] {
            for reset in [false, true] {
                assert!(decide(own, Contents::Foreign, reset, "db").is_err());
            }
        }
    }

    #[test]
    fn the_own_database_is_recognised_by_its_name() {
        assert!(is_own(DEFAULT_DATABASE_URL));
        assert!(is_own("postgres://u:p@elsewhere:6543/cohort_demo"));
        assert!(!is_own("postgres://u:p@127.0.0.1/cohort"));
    }
}
