//! The hostile-request corpus: every case is sent to a running API over a raw connection. A case the API
//! must refuse answers the expected 4xx in the error shape (`{"error", "message", "details"}`) with a
//! message (or detail) saying what is wrong — never a 5xx, never a hang. Cases the API accepts (at a
//! documented limit, a SQL-like string taken literally, a catastrophic-looking regex run by a linear-time
//! engine) answer as the contract says; whatever they create goes to the org `limits`. Afterwards a normal
//! request is answered and every stored row outside `limits` is as it was.

mod bodies;
mod fields;
mod filters;
mod paths;

use std::collections::BTreeSet;

use cohort::config::Config;
use cohort::store::{api_keys, groups};
use cohort_testkit::{TestDatabase, TestKafka};
use serde_json::{json, Value};

use crate::raw::{Reply, Request};
use crate::snapshot::Snapshot;
use crate::{raw, snapshot};

use bodies::broken_bodies;
use fields::bad_fields;
use filters::{catastrophic_regexes, filter_limits};
use paths::{accepted_literals, paths_and_queries};

/// Where the cases that are accepted may write.
const LIMITS_ORG: &str = "limits";
/// `api.max_body_bytes` (the default).
const MAX_BODY: usize = 1 << 20;

/// Which key a request carries.
#[derive(Clone, Debug)]
enum Key {
    System,
    Acme,
    Limits,
    None,
    Raw(String),
}

/// What the contract says a case must answer.
#[derive(Clone, Debug)]
enum Want {
    /// This status and error code, and this text in the message or in a detail (`path: message`).
    Refused(u16, &'static str, String),
    /// This status, and these values at these JSON pointers of the answer.
    Accepted(u16, Vec<(&'static str, Value)>),
    /// Refused by the HTTP layer (hyper) before any route runs: this 4xx, with no body (the API's error
    /// shape cannot be given to a request that could not be parsed).
    Protocol(u16),
}

#[derive(Clone, Debug)]
struct Case {
    name: String,
    key: Key,
    request: Request,
    want: Want,
}

fn refused(status: u16, code: &'static str, text: impl Into<String>) -> Want {
    Want::Refused(status, code, text.into())
}

fn bad(text: impl Into<String>) -> Want {
    refused(400, "bad_request", text)
}

fn not_found(text: impl Into<String>) -> Want {
    refused(404, "not_found", text)
}

fn ok(status: u16, checks: Vec<(&'static str, Value)>) -> Want {
    Want::Accepted(status, checks)
}

fn case(name: impl Into<String>, key: Key, request: Request, want: Want) -> Case {
    Case {
        name: name.into(),
        key,
        request,
        want,
    }
}

fn get(path: impl Into<String>) -> Request {
    Request::new("GET", path.into().into_bytes())
}

fn with_json(method: &'static str, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Request {
    Request::new(method, path.into().into_bytes()).json(body)
}

fn post(path: impl Into<String>, body: Value) -> Request {
    with_json("POST", path, body.to_string())
}

/// The API alone, with a Kafka mock for imports, keys for `acme`, `other` and `limits`, and a system key.
pub(crate) struct Api {
    db: TestDatabase,
    _kafka: TestKafka,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub(crate) addr: std::net::SocketAddr,
    system: String,
    /// A key of the org `acme`.
    pub(crate) acme: String,
    other: String,
    limits: String,
}

impl Api {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let db = TestDatabase::new().await?;
        cohort::store::migrate(db.pool()).await?;
        for org in ["acme", "other", LIMITS_ORG] {
            groups::create_org(db.pool(), org, org).await?;
        }
        let kafka = TestKafka::mock(1)?;
        let input = kafka.unique_topic("device-attribute-changes");
        kafka.create_topic(&input, 2).await?;
        let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
        config.database.url = db.url().to_string();
        config.http.listen = "127.0.0.1:0".parse()?;
        config.kafka.brokers = kafka.bootstrap_servers();
        config.kafka.input_topic = input;
        // The corpus is hundreds of requests from one key: the rate limit is not what is tested here.
        config.api.rate_limit_per_second = 1_000_000;
        config.api.rate_limit_burst = 1_000_000;
        assert_eq!(
            config.api.max_body_bytes, MAX_BODY,
            "the documented default"
        );
        let cohort_testkit::app::RunningApi { stop, task, addr } =
            cohort_testkit::app::spawn_api(config).await?;
        let (_, system) = api_keys::create(db.pool(), None, "system").await?;
        let (_, acme) = api_keys::create(db.pool(), Some("acme"), "acme").await?;
        let (_, other) = api_keys::create(db.pool(), Some("other"), "other").await?;
        let (_, limits) = api_keys::create(db.pool(), Some(LIMITS_ORG), "limits").await?;
        Ok(Self {
            db,
            _kafka: kafka,
            stop: Some(stop),
            task,
            addr,
            system,
            acme,
            other,
            limits,
        })
    }

    async fn send(&self, key: &Key, request: &Request) -> anyhow::Result<Reply> {
        let key = match key {
            Key::System => Some(self.system.clone()),
            Key::Acme => Some(self.acme.clone()),
            Key::Limits => Some(self.limits.clone()),
            Key::None => None,
            Key::Raw(k) => Some(k.clone()),
        };
        let mut request = request.clone();
        if let Some(key) = key {
            request
                .headers
                .insert(0, ("authorization".into(), format!("Bearer {key}")));
        }
        raw::send(self.addr, &request).await
    }

    /// A setup call that must succeed with `status`; returns the answer's JSON.
    async fn must(
        &self,
        key: &str,
        method: &'static str,
        path: &str,
        body: Value,
        status: u16,
    ) -> anyhow::Result<Value> {
        let key = Key::Raw(key.to_string());
        let reply = self
            .send(&key, &with_json(method, path, body.to_string()))
            .await?;
        anyhow::ensure!(
            reply.status == status,
            "{method} {path}: {}",
            reply.describe()
        );
        Ok(reply.json())
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        self.db.cleanup().await
    }
}

/// Ids of the known state.
struct Known {
    /// A dynamic group of acme (osType = linux).
    dynamic: String,
    /// A static group of acme, with dev-1.
    hand_picked: String,
    /// A static group of the org `other`.
    other_group: String,
    /// The acme default release.
    release: String,
}

/// acme: devices dev-1 (hostname 4000 × "a" then "!"), dev-2 (4000 × "a"), dev-3 ("xyz"); a dynamic and a
/// static group (with dev-1, pinned in the dynamic one); a default release. other: a device and a group.
async fn known_state(api: &Api) -> anyhow::Result<Known> {
    let a = "a".repeat(4000);
    for (id, org, attributes) in [
        (
            "dev-1",
            "acme",
            json!({"hostname": format!("{a}!"), "osType": "linux", "firmwareVersion": "1.0.0"}),
        ),
        ("dev-2", "acme", json!({"hostname": a, "osType": "rtos"})),
        (
            "dev-3",
            "acme",
            json!({"hostname": "xyz", "tags": ["prod"]}),
        ),
        ("oth-1", "other", json!({"hostname": "o"})),
    ] {
        sqlx::query(
            "INSERT INTO devices (id, org_id, attributes, partition) VALUES ($1, $2, $3, 0)",
        )
        .bind(id)
        .bind(org)
        .bind(attributes)
        .execute(api.db.pool())
        .await?;
    }
    let linux = json!({"operator": "AND", "conditions": [
        {"field": "osType", "operator": "equals", "value": "linux"}]});
    let dynamic = api
        .must(
            &api.acme,
            "POST",
            "/api/v1/groups",
            json!({"name": "linux", "filterConditions": linux}),
            201,
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let hand_picked = api
        .must(
            &api.acme,
            "POST",
            "/api/v1/groups",
            json!({"name": "hand-picked"}),
            201,
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.must(
        &api.acme,
        "POST",
        &format!("/api/v1/groups/{hand_picked}/devices"),
        json!({"deviceIds": ["dev-1"]}),
        200,
    )
    .await?;
    api.must(
        &api.acme,
        "POST",
        &format!("/api/v1/groups/{dynamic}/devices/dev-1/pin"),
        json!({}),
        202,
    )
    .await?;
    let release = api
        .must(
            &api.acme,
            "POST",
            "/api/v1/releases",
            json!({"default": true, "version": "1.0.0"}),
            201,
        )
        .await?["release"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let other_group = api
        .must(
            &api.other,
            "POST",
            "/api/v1/groups",
            json!({"name": "theirs"}),
            201,
        )
        .await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(Known {
        dynamic,
        hand_picked,
        other_group,
        release,
    })
}

/// Checks an answer against what the case wants; `Err` says how it differs.
fn check(case: &Case, reply: &Reply) -> Result<(), String> {
    let body = reply.json();
    match &case.want {
        Want::Refused(status, code, text) => {
            let mut problems = Vec::new();
            if reply.status != *status {
                problems.push(format!("status {}, expected {status}", reply.status));
            }
            let shape_ok = body.as_object().is_some_and(|o| {
                o.len() == 3
                    && o.get("error") == Some(&json!(code))
                    && o.get("message")
                        .and_then(Value::as_str)
                        .is_some_and(|m| !m.is_empty())
                    && o.get("details").is_some_and(Value::is_array)
            });
            if !shape_ok {
                problems.push(format!("not the error shape with code {code}"));
            }
            if reply.header("content-type") != Some("application/json") {
                problems.push(format!("content type {:?}", reply.header("content-type")));
            }
            let mut haystack = body["message"].as_str().unwrap_or_default().to_string();
            for detail in body["details"].as_array().into_iter().flatten() {
                match detail {
                    Value::String(s) => haystack.push_str(&format!("\n{s}")),
                    other => haystack.push_str(&format!(
                        "\n{}: {}",
                        other["path"]
                            .as_str()
                            .or(other["deviceId"].as_str())
                            .unwrap_or_default(),
                        other["message"].as_str().unwrap_or_default()
                    )),
                }
            }
            if !haystack.contains(text.as_str()) {
                problems.push(format!("no {text:?} in the message or details"));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} — answered {}",
                    problems.join("; "),
                    reply.describe()
                ))
            }
        }
        Want::Protocol(status) => {
            if reply.status == *status {
                Ok(())
            } else {
                Err(format!("answered {}, expected {status}", reply.describe()))
            }
        }
        Want::Accepted(status, checks) => {
            let mut problems = Vec::new();
            if reply.status != *status {
                problems.push(format!("status {}, expected {status}", reply.status));
            }
            for (pointer, value) in checks {
                if body.pointer(pointer) != Some(value) {
                    problems.push(format!(
                        "{pointer} is {:?}, expected {value}",
                        body.pointer(pointer)
                    ));
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} — answered {}",
                    problems.join("; "),
                    reply.describe()
                ))
            }
        }
    }
}

#[tokio::test]
async fn every_hostile_request_gets_a_4xx_in_the_error_shape_and_nothing_stored_changes(
) -> anyhow::Result<()> {
    let api = Api::start().await?;
    let known = known_state(&api).await?;
    let before = Snapshot::take(api.db.pool()).await?;
    let mut cases = Vec::new();
    cases.extend(broken_bodies(&known));
    cases.extend(bad_fields(&known));
    cases.extend(paths_and_queries(&known));
    cases.extend(filter_limits(&known));
    cases.extend(catastrophic_regexes());
    cases.extend(accepted_literals(&known));
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let mut failures = Vec::new();
    for case in &cases {
        match api.send(&case.key, &case.request).await {
            Ok(reply) => {
                if reply.status >= 500 {
                    failures.push(format!(
                        "{}: a server error: {}",
                        case.name,
                        reply.describe()
                    ));
                } else if let Err(problem) = check(case, &reply) {
                    failures.push(format!("{}: {problem}", case.name));
                }
            }
            Err(e) => failures.push(format!("{}: {e:#}", case.name)),
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Still serving, and nothing stored changed outside the org the accepted cases write to.
    let list = api.send(&Key::Acme, &get("/api/v1/groups")).await?;
    anyhow::ensure!(
        list.status == 200 && list.json()["total"] == json!(2),
        "a normal request after the corpus: {}",
        list.describe()
    );
    let after = Snapshot::take(api.db.pool()).await?;
    before.assert_unchanged(&after, |table, row| {
        matches!(table, "device_groups" | "control_log")
            && snapshot::text(row, "org_id") == Some(LIMITS_ORG)
    })?;
    let created: i64 = sqlx::query_scalar("SELECT count(*) FROM device_groups WHERE org_id = $1")
        .bind(LIMITS_ORG)
        .fetch_one(api.db.pool())
        .await?;
    let expected = cases
        .iter()
        .filter(|c| matches!(c.key, Key::Limits) && matches!(c.want, Want::Accepted(201, _)))
        .count();
    assert_eq!(
        created as usize, expected,
        "only the accepted cases created groups"
    );
    api.stop().await
}
