//! The REST API against real PostgreSQL: every route, its error cases, org isolation, keys, limits, and
//! (with a worker running) the end-to-end flows a user relies on.

mod contract_breeze;
mod contract_device_groups;
mod contract_thingspace;
mod contract_worker;
mod demo;
mod device_routes;
mod e2e;
mod group_routes;
mod isolation;
mod member_counts;
mod membership;
mod probe;
mod release_health;
mod release_stages;

use cohort::config::Config;
use cohort::store::{api_keys, groups};
use cohort_testkit::http::{Answer, Client};
use cohort_testkit::TestDatabase;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;

/// The API alone (no worker), with a system key and one key per org.
struct Api {
    db: TestDatabase,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    system: Client,
    acme: Client,
    other: Client,
}

impl Api {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let db = TestDatabase::new().await?;
        cohort::store::migrate(db.pool()).await?;
        groups::create_org(db.pool(), "acme", "Acme").await?;
        groups::create_org(db.pool(), "other", "Other").await?;
        let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
        config.database.url = db.url().to_string();
        config.http.listen = "127.0.0.1:0".parse()?;
        tweak(&mut config);
        let cohort_testkit::app::RunningApi { stop, task, addr } =
            cohort_testkit::app::spawn_api(config).await?;
        let (_, system) = api_keys::create(db.pool(), None, "system").await?;
        let (_, acme) = api_keys::create(db.pool(), Some("acme"), "acme").await?;
        let (_, other) = api_keys::create(db.pool(), Some("other"), "other").await?;
        Ok(Self {
            system: Client::new(addr, Some(&system)),
            acme: Client::new(addr, Some(&acme)),
            other: Client::new(addr, Some(&other)),
            db,
            stop: Some(stop),
            task,
        })
    }

    fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        self.db.cleanup().await
    }
}

/// Stores devices directly (as a worker would have), `(id, org, attributes)`.
async fn devices(pool: &PgPool, rows: &[(&str, &str, Value)]) -> anyhow::Result<()> {
    for (id, org, attributes) in rows {
        sqlx::query(
            "INSERT INTO devices (id, org_id, attributes, partition) VALUES ($1, $2, $3, 0)",
        )
        .bind(id)
        .bind(org)
        .bind(attributes)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn linux_filter() -> Value {
    json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]})
}

/// The string `field` of every element of the array `list`.
fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].as_str().unwrap())
        .collect()
}

fn expect(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "unexpected answer: {answer:?}");
}

/// The error shape every failure shares.
fn expect_error(answer: &Answer, status: StatusCode, code: &str) {
    expect(answer, status);
    assert_eq!(answer.error(), code, "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
    assert!(answer.body["details"].is_array(), "{answer:?}");
}

/// A DELETE with a JSON body (the batch removals).
async fn delete_json(client: &Client, path: &str, body: Value) -> anyhow::Result<Answer> {
    client
        .send(Method::DELETE, path, Some(body.to_string().into_bytes()))
        .await
}

async fn create_group(client: &Client, body: Value) -> anyhow::Result<String> {
    let answer = client.post("/api/v1/groups", body).await?;
    expect(&answer, StatusCode::CREATED);
    Ok(answer.body["id"].as_str().unwrap().to_string())
}

/// `n` acme devices reporting firmware `1` (`{prefix}-000`, …), all members of a new group `fleet`, as a
/// worker would hold them (no worker runs beside this API); the group's id.
async fn fleet_group(api: &Api, prefix: &str, n: usize) -> anyhow::Result<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:03}")).collect();
    let rows: Vec<(&str, &str, Value)> = ids
        .iter()
        .map(|id| (id.as_str(), "acme", json!({"firmwareVersion": "1"})))
        .collect();
    devices(api.pool(), &rows).await?;
    let group = create_group(&api.acme, json!({"name": "fleet"})).await?;
    sqlx::query(
        "INSERT INTO device_group_memberships (group_id, device_id, added_by) \
         SELECT $1::uuid, id, 'manual' FROM devices WHERE org_id = 'acme'",
    )
    .bind(&group)
    .execute(api.pool())
    .await?;
    Ok(group)
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_with_401() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let anonymous = api.acme.with_key(None);
    expect_error(
        &anonymous.get("/api/v1/groups").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    for bad in ["nonsense", "cohort_000000000000_wrong", "cohort_zz"] {
        let answer = api.acme.with_key(Some(bad)).get("/api/v1/groups").await?;
        expect_error(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A key that was valid stops working when revoked.
    let (info, key) = api_keys::create(api.pool(), Some("acme"), "temp").await?;
    let temp = api.acme.with_key(Some(&key));
    expect(&temp.get("/api/v1/groups").await?, StatusCode::OK);
    assert!(api_keys::revoke(api.pool(), &info.prefix).await?);
    expect_error(
        &temp.get("/api/v1/groups").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // Only the digest is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT digest FROM api_keys WHERE id = $1")
        .bind(info.id)
        .fetch_one(api.pool())
        .await?;
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&key[7..]));
    api.stop().await
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() -> anyhow::Result<()> {
    let api = Api::start_with(|c| {
        c.api.rate_limit_per_second = 1;
        c.api.rate_limit_burst = 3;
    })
    .await?;
    for _ in 0..3 {
        expect(&api.acme.get("/api/v1/groups").await?, StatusCode::OK);
    }
    let limited = api.acme.get("/api/v1/groups").await?;
    expect_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = limited.headers["retry-after"].to_str()?.parse()?;
    assert!(retry >= 1);
    // Another key has its own budget.
    expect(&api.other.get("/api/v1/groups").await?, StatusCode::OK);
    api.stop().await
}

#[tokio::test]
async fn the_served_openapi_document_is_the_checked_in_one() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let served = api.acme.with_key(None).get("/api/v1/openapi.json").await?;
    expect(&served, StatusCode::OK);
    let checked_in: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/openapi.json"
    ))?)?;
    assert_eq!(
        served.body, checked_in,
        "docs/openapi.json is stale: regenerate it with `cargo run -- openapi > docs/openapi.json`"
    );
    let paths = checked_in["paths"].as_object().unwrap();
    for path in [
        "/api/v1/groups",
        "/api/v1/groups/{id}/devices",
        "/api/v1/device-groups/{group_id}/devices",
        "/api/v1/devices/groups/{id}/members",
        "/api/v1/groups/{id}/membership-log",
        "/api/v1/releases",
        "/api/v1/devices/{id}",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    assert!(
        !paths
            .keys()
            .any(|p| p == "/api/v1/groups/{id}/members"
                || p.starts_with("/api/v1/groups/{id}/members/")),
        "the members dialect is gone"
    );
    // Operation ids are unique.
    let ids: Vec<&str> = paths
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate operation ids: {ids:?}");
    api.stop().await
}

#[tokio::test]
async fn orgs_are_created_by_system_keys() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let created = api
        .system
        .post("/api/v1/orgs", json!({"id": "initech", "name": "Initech"}))
        .await?;
    expect(&created, StatusCode::CREATED);
    assert_eq!(created.body["id"], "initech");
    expect_error(
        &api.system
            .post("/api/v1/orgs", json!({"id": "initech"}))
            .await?,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_error(
        &api.system
            .post("/api/v1/orgs", json!({"id": "bad id!"}))
            .await?,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let listed = api.system.get("/api/v1/orgs").await?;
    assert_eq!(listed.body["orgs"].as_array().unwrap().len(), 3);
    let group = api
        .system
        .post("/api/v1/groups", json!({"orgId": "initech", "name": "all"}))
        .await?;
    expect(&group, StatusCode::CREATED);
    let missing = api
        .system
        .post("/api/v1/groups", json!({"orgId": "nobody", "name": "all"}))
        .await?;
    expect_error(&missing, StatusCode::NOT_FOUND, "not_found");
    api.stop().await
}

/// Runs the binary with `args`, given the database's URL (`COHORT_DATABASE_URL`) and none of this
/// process's other `COHORT_*` variables, which it would refuse.
fn cohort(db_url: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .env_clear()
        .envs(cohort_testkit::child::inherited())
        .env("COHORT_DATABASE_URL", db_url)
        .output()?)
}

#[tokio::test]
async fn a_key_created_by_the_command_line_works_until_revoked() -> anyhow::Result<()> {
    let api = Api::start().await?;
    let url = api.db.url().to_string();
    let created =
        cohort_testkit::blocking(cohort_testkit::OPERATION_TIMEOUT, "the command runs", {
            let url = url.clone();
            move || {
                cohort(
                    &url,
                    &["api-key", "create", "--org", "newco", "--name", "ci"],
                )
            }
        })
        .await?;
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout)?.trim().to_string();
    assert!(key.starts_with("cohort_"), "{key}");
    let client = api.acme.with_key(Some(&key));
    let orgs = client.get("/api/v1/orgs").await?;
    assert_eq!(
        orgs.body["orgs"][0]["id"], "newco",
        "the org was created with the key"
    );
    let listed = cohort_testkit::blocking(cohort_testkit::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || cohort(&url, &["api-key", "list"])
    })
    .await?;
    let listing = String::from_utf8(listed.stdout)?;
    assert!(listing.contains("newco"), "{listing}");
    assert!(
        !listing.contains(&key[20..]),
        "the listing never shows a key"
    );
    let prefix = key[7..19].to_string();
    let revoked =
        cohort_testkit::blocking(cohort_testkit::OPERATION_TIMEOUT, "the command runs", {
            let url = url.clone();
            move || cohort(&url, &["api-key", "revoke", &prefix])
        })
        .await?;
    assert!(revoked.status.success(), "{revoked:?}");
    expect_error(
        &client.get("/api/v1/orgs").await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let again = cohort_testkit::blocking(cohort_testkit::OPERATION_TIMEOUT, "the command runs", {
        let url = url.clone();
        move || cohort(&url, &["api-key", "revoke", "000000000000"])
    })
    .await?;
    assert!(!again.status.success(), "revoking an unknown key fails");
    let missing_scope = cohort(&url, &["api-key", "create"])?;
    assert!(!missing_scope.status.success());
    api.stop().await
}
