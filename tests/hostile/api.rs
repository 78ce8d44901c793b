//! The hostile-request corpus: every case is sent to a running API over a raw connection. A case the API
//! must refuse answers the expected 4xx in the error shape (`{"error", "message", "details"}`) with a
//! message (or detail) saying what is wrong — never a 5xx, never a hang. Cases the API accepts (at a
//! documented limit, a SQL-like string taken literally, a catastrophic-looking regex run by a linear-time
//! engine) answer as the contract says; whatever they create goes to the org `limits`. Afterwards a normal
//! request is answered and every stored row outside `limits` is as it was.

use std::collections::BTreeSet;

use cohort::config::Config;
use cohort::rules::filter::{
    MAX_CONDITIONS, MAX_DEPTH, MAX_LIST_VALUES, MAX_REGEX_BYTES, MAX_REGEX_COMPILED_BYTES,
    MAX_VALUE_BYTES,
};
use cohort::store::{api_keys, groups};
use serde_json::{json, Value};

use crate::raw::{self, Reply, Request};
use crate::snapshot::{self, Snapshot};
use crate::support::{self, TestDatabase, TestKafka};

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
        let support::app::RunningApi { stop, task, addr } = support::app::spawn_api(config).await?;
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

fn leaf() -> Value {
    json!({"field": "hostname", "operator": "isNull"})
}

fn one(condition: Value) -> Value {
    json!({"operator": "OR", "conditions": [condition]})
}

/// A filter `depth` groups deep.
fn deep(depth: usize) -> Value {
    let mut filter = leaf();
    for _ in 0..depth {
        filter = json!({"operator": "AND", "conditions": [filter]});
    }
    filter
}

fn conditions(n: usize) -> Value {
    json!({"operator": "OR", "conditions": vec![leaf(); n]})
}

fn list(n: usize) -> Value {
    let values: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    one(json!({"field": "hostname", "operator": "in", "value": values}))
}

fn equals(value: &str) -> Value {
    one(json!({"field": "hostname", "operator": "equals", "value": value}))
}

fn matches(pattern: &str) -> Value {
    one(json!({"field": "hostname", "operator": "matches", "value": pattern}))
}

/// The largest `n` for which `\w{n}` compiles within the filter's compiled-size limit, with the builder
/// settings `cohort::rules::filter` documents.
fn largest_compiling_repetition() -> usize {
    let compiles = |n: usize| {
        regex::RegexBuilder::new(&format!("\\w{{{n}}}"))
            .size_limit(MAX_REGEX_COMPILED_BYTES)
            .dfa_size_limit(MAX_REGEX_COMPILED_BYTES)
            .build()
            .is_ok()
    };
    // Bracket by doubling, then bisect: few compilations of programs near the limit.
    let (mut lo, mut hi) = (1, 2);
    assert!(compiles(lo));
    while compiles(hi) {
        (lo, hi) = (hi, hi * 2);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if compiles(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Every filter limit, at the limit (accepted: created in `limits` and previewed) and one past it (a 400
/// naming the limit at its path, on create, preview and update).
fn filter_limits(k: &Known) -> Vec<Case> {
    let n = largest_compiling_repetition();
    let nested = format!("${}", ".conditions[0]".repeat(MAX_DEPTH));
    let limits: Vec<(&str, Value, Value, String)> = vec![
        (
            "MAX_DEPTH",
            deep(MAX_DEPTH),
            deep(MAX_DEPTH + 1),
            format!("{nested}: Filter is nested too deeply (maximum depth {MAX_DEPTH})"),
        ),
        (
            "MAX_CONDITIONS",
            conditions(MAX_CONDITIONS),
            conditions(MAX_CONDITIONS + 1),
            format!("$: Filter has too many conditions (maximum {MAX_CONDITIONS})"),
        ),
        (
            "MAX_LIST_VALUES",
            list(MAX_LIST_VALUES),
            list(MAX_LIST_VALUES + 1),
            format!("$.conditions[0].value: List has too many values (maximum {MAX_LIST_VALUES})"),
        ),
        (
            "MAX_VALUE_BYTES",
            equals(&"v".repeat(MAX_VALUE_BYTES)),
            equals(&"v".repeat(MAX_VALUE_BYTES + 1)),
            format!("$.conditions[0].value: Value is too long (maximum {MAX_VALUE_BYTES} bytes)"),
        ),
        (
            "MAX_VALUE_BYTES in two-byte characters",
            equals(&"é".repeat(MAX_VALUE_BYTES / 2)),
            equals(&"é".repeat(MAX_VALUE_BYTES / 2 + 1)),
            format!("$.conditions[0].value: Value is too long (maximum {MAX_VALUE_BYTES} bytes)"),
        ),
        (
            "MAX_REGEX_BYTES",
            matches(&"a".repeat(MAX_REGEX_BYTES)),
            matches(&"a".repeat(MAX_REGEX_BYTES + 1)),
            format!(
                "$.conditions[0].value: Regular expression is too long (maximum {MAX_REGEX_BYTES} bytes)"
            ),
        ),
        (
            "MAX_REGEX_COMPILED_BYTES",
            matches(&format!("\\w{{{n}}}")),
            matches(&format!("\\w{{{}}}", n + 1)),
            format!(
                "$.conditions[0].value: Regular expression is too large once compiled (maximum {MAX_REGEX_COMPILED_BYTES} bytes)"
            ),
        ),
    ];
    let mut cases = Vec::new();
    for (limit, at, past, text) in limits {
        cases.push(case(
            format!("{limit}: at the limit, created"),
            Key::Limits,
            post(
                "/api/v1/groups",
                json!({"name": format!("at {limit}"), "filterConditions": at}),
            ),
            ok(201, vec![("/orgId", json!(LIMITS_ORG))]),
        ));
        cases.push(case(
            format!("{limit}: at the limit, previewed"),
            Key::Acme,
            post("/api/v1/groups/preview", json!({"filterConditions": at})),
            ok(200, vec![("/data/examined", json!(3))]),
        ));
        cases.push(case(
            format!("{limit}: one past, created"),
            Key::Acme,
            post(
                "/api/v1/groups",
                json!({"name": format!("past {limit}"), "filterConditions": past}),
            ),
            bad(format!("Invalid filter: {text}")),
        ));
        cases.push(case(
            format!("{limit}: one past, previewed"),
            Key::Acme,
            post("/api/v1/groups/preview", json!({"filterConditions": past})),
            bad(format!("Invalid filter: {text}")),
        ));
        cases.push(case(
            format!("{limit}: one past, as an update"),
            Key::Acme,
            with_json(
                "PATCH",
                format!("/api/v1/groups/{}", k.dynamic),
                json!({"filterConditions": past}).to_string(),
            ),
            bad(format!("Invalid filter: {text}")),
        ));
    }
    cases
}

/// Regexes that take exponential time in a backtracking engine: accepted, and answered at once with
/// the right count by the linear-time one (dev-1 is 4000 × "a" then "!", dev-2 4000 × "a", dev-3 "xyz").
fn catastrophic_regexes() -> Vec<Case> {
    let words: Vec<String> = (0..150).map(|i| format!("w{i:03}")).collect();
    let alternation = format!("^({})$", words.join("|"));
    let long_alternation = (0..260)
        .map(|i| format!("w{i:03}"))
        .collect::<Vec<_>>()
        .join("|");
    let mut cases: Vec<Case> = [
        ("(a+)+$", 1),
        ("^(a|a)*$", 1),
        ("(a|aa)+$", 1),
        ("^(a+)+b", 0),
        ("(\\w+\\s?)*$", 3),
        ("(.*a){25}", 2),
        ("^(([a-z])+.)+[A-Z]([a-z])+$", 0),
        (alternation.as_str(), 0),
    ]
    .into_iter()
    .map(|(pattern, total)| {
        case(
            format!("catastrophic-looking regex {}", short(pattern)),
            Key::Acme,
            post(
                "/api/v1/groups/preview",
                json!({"filterConditions": matches(pattern)}),
            ),
            ok(
                200,
                vec![
                    ("/data/totalCount", json!(total)),
                    ("/data/examined", json!(3)),
                ],
            ),
        )
    })
    .collect();
    cases.push(case(
        "an alternation of 260 words (over MAX_REGEX_BYTES)",
        Key::Acme,
        post(
            "/api/v1/groups/preview",
            json!({"filterConditions": matches(&long_alternation)}),
        ),
        bad(format!(
            "Regular expression is too long (maximum {MAX_REGEX_BYTES} bytes)"
        )),
    ));
    cases.push(case(
        "a repeated alternation too large once compiled",
        Key::Acme,
        post(
            "/api/v1/groups/preview",
            json!({"filterConditions": matches("(\\w|\\d|\\s|[a-zé]){1000}")}),
        ),
        bad("Regular expression is too large once compiled"),
    ));
    for (pattern, text) in [
        ("(", "Invalid regular expression"),
        ("(a)\\1", "Invalid regular expression"),
        ("(?=a)", "Invalid regular expression"),
        ("\\p{Nope}", "Invalid regular expression"),
        ("a{4294967296}", "Invalid regular expression"),
    ] {
        cases.push(case(
            format!("an invalid regex {pattern}"),
            Key::Acme,
            post(
                "/api/v1/groups/preview",
                json!({"filterConditions": matches(pattern)}),
            ),
            bad(text),
        ));
    }
    cases
}

/// `s`, or for a long one its first 100 characters and its length.
fn short(s: &str) -> String {
    let cut: String = s.chars().take(100).collect();
    if cut.len() < s.len() {
        format!("{cut}… ({} bytes)", s.len())
    } else {
        cut
    }
}

/// Every route that takes a JSON body, with a valid-looking target and the key to use.
fn body_routes(k: &Known) -> Vec<(&'static str, String, Key)> {
    let (dynamic, picked) = (&k.dynamic, &k.hand_picked);
    vec![
        ("POST", "/api/v1/groups".into(), Key::Acme),
        ("PATCH", format!("/api/v1/groups/{dynamic}"), Key::Acme),
        ("PUT", format!("/api/v1/groups/{dynamic}"), Key::Acme),
        ("POST", "/api/v1/groups/preview".into(), Key::Acme),
        (
            "POST",
            format!("/api/v1/groups/{picked}/devices"),
            Key::Acme,
        ),
        ("POST", "/api/v1/device-groups".into(), Key::Acme),
        ("PUT", format!("/api/v1/device-groups/{dynamic}"), Key::Acme),
        (
            "POST",
            format!("/api/v1/device-groups/{picked}/devices"),
            Key::Acme,
        ),
        (
            "DELETE",
            format!("/api/v1/device-groups/{picked}/devices"),
            Key::Acme,
        ),
        ("POST", "/api/v1/devices/groups".into(), Key::Acme),
        (
            "PATCH",
            format!("/api/v1/devices/groups/{dynamic}"),
            Key::Acme,
        ),
        (
            "POST",
            format!("/api/v1/devices/groups/{picked}/members"),
            Key::Acme,
        ),
        (
            "DELETE",
            format!("/api/v1/devices/groups/{picked}/members"),
            Key::Acme,
        ),
        ("POST", "/api/v1/devices/import".into(), Key::Acme),
        (
            "PUT",
            "/api/v1/devices/dev-1/firmware-lock".into(),
            Key::Acme,
        ),
        ("PUT", "/api/v1/devices/dev-1/development".into(), Key::Acme),
        ("POST", "/api/v1/releases".into(), Key::Acme),
        ("POST", "/api/v1/orgs".into(), Key::System),
    ]
}

/// Broken bodies, wrong content types and oversize bodies on every route that takes a body.
fn broken_bodies(k: &Known) -> Vec<Case> {
    let json_error = "JSON";
    let content_type = "Content-Type: application/json";
    let over = {
        let mut body = b"{\"name\": \"".to_vec();
        body.resize(MAX_BODY - 2, b'a');
        body.extend_from_slice(b"\"}");
        body.push(b' ');
        body
    };
    let bodies: Vec<(&str, Request, Want)> = vec![
        (
            "malformed JSON",
            Request::new("", "").json("{not json"),
            bad(json_error),
        ),
        (
            "truncated JSON",
            Request::new("", "").json("{\"name\": \"x"),
            bad(json_error),
        ),
        (
            "invalid UTF-8",
            Request::new("", "").json(b"{\"name\": \"\xff\xfe\"}".to_vec()),
            bad(json_error),
        ),
        (
            "an empty body",
            Request::new("", "").json(""),
            bad(json_error),
        ),
        (
            "JSON null",
            Request::new("", "").json("null"),
            bad(json_error),
        ),
        (
            "a JSON array",
            Request::new("", "").json("[]"),
            bad(json_error),
        ),
        (
            "a JSON string",
            Request::new("", "").json("\"x\""),
            bad(json_error),
        ),
        (
            "nesting 200 deep",
            Request::new("", "").json(format!(
                "{{\"name\": {}{}}}",
                "[".repeat(200),
                "]".repeat(200)
            )),
            bad(json_error),
        ),
        (
            "a byte order mark",
            Request::new("", "").json("\u{feff}{\"name\": \"x\"}"),
            bad(json_error),
        ),
        (
            "text/plain",
            Request::new("", "")
                .header("content-type", "text/plain")
                .body("{\"name\": \"x\"}"),
            refused(415, "bad_request", content_type),
        ),
        (
            "no content type",
            Request::new("", "").body("{\"name\": \"x\"}"),
            refused(415, "bad_request", content_type),
        ),
        (
            "a form",
            Request::new("", "")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("name=x"),
            refused(415, "bad_request", content_type),
        ),
        (
            "one byte over api.max_body_bytes",
            Request::new("", "").json(over.clone()),
            refused(413, "bad_request", "too large"),
        ),
        (
            "one byte over api.max_body_bytes, chunked",
            Request::new("", "").json(over).chunked(),
            refused(413, "bad_request", "too large"),
        ),
    ];
    let mut cases = Vec::new();
    // A saved group's preview takes an optional body: an empty one previews the saved filter.
    let preview = format!("/api/v1/groups/{}/preview", k.dynamic);
    let routes = body_routes(k)
        .into_iter()
        .chain([("POST", preview.clone(), Key::Acme)]);
    for (method, path, key) in routes {
        for (what, template, want) in &bodies {
            let mut request = template.clone();
            request.method = method;
            request.target = path.clone().into_bytes();
            let want = if path == preview && *what == "an empty body" {
                ok(200, vec![("/data/totalCount", json!(1))])
            } else {
                want.clone()
            };
            cases.push(case(
                format!("{method} {path}: {what}"),
                key.clone(),
                request,
                want,
            ));
        }
    }
    cases
}

/// Wrong types, bad values, NULs and mismatched orgs, field by field.
fn bad_fields(k: &Known) -> Vec<Case> {
    let groups = "/api/v1/groups";
    let nul = "U+0000";
    let member = format!("/api/v1/groups/{}/devices", k.hand_picked);
    let batch = format!("/api/v1/device-groups/{}/devices", k.hand_picked);
    let removal = format!("/api/v1/devices/groups/{}/members", k.hand_picked);
    let dynamic = format!("/api/v1/groups/{}", k.dynamic);
    let picked = format!("/api/v1/groups/{}", k.hand_picked);
    let unknown = "Device not found in the group's organization";
    let linux = json!({"operator": "AND", "conditions": [{"field": "osType", "operator": "equals", "value": "linux"}]});
    let mut cases = vec![];
    let group_bodies: Vec<(&str, Value, Want)> = vec![
        ("name is a number", json!({"name": 42}), bad("invalid type")),
        ("name is null", json!({"name": null}), bad("invalid type")),
        (
            "name is blank",
            json!({"name": "   "}),
            bad("name must not be empty"),
        ),
        (
            "name is 256 characters",
            json!({"name": "n".repeat(256)}),
            bad("name must be at most 255 characters"),
        ),
        (
            "description is 4097 characters",
            json!({"name": "x", "description": "d".repeat(4097)}),
            bad("description must be at most 4096"),
        ),
        (
            "tags is a string",
            json!({"name": "x", "tags": "prod"}),
            bad("invalid type"),
        ),
        (
            "tags holds a number",
            json!({"name": "x", "tags": [1]}),
            bad("invalid type"),
        ),
        (
            "101 tags",
            json!({"name": "x", "tags": (0..101).map(|i| i.to_string()).collect::<Vec<_>>()}),
            bad("at most 100 tags"),
        ),
        (
            "an empty tag",
            json!({"name": "x", "tags": [""]}),
            bad("each tag must be 1 to 64 characters"),
        ),
        (
            "siteId is a number",
            json!({"name": "x", "siteId": 5}),
            bad("invalid type"),
        ),
        (
            "siteId is empty",
            json!({"name": "x", "siteId": ""}),
            bad("siteId must be 1 to 128 characters"),
        ),
        (
            "parentId is not a UUID",
            json!({"name": "x", "parentId": "nope"}),
            bad("UUID"),
        ),
        (
            "parentId is another org's group",
            json!({"name": "x", "parentId": k.other_group}),
            bad(format!("Parent group {} not found", k.other_group)),
        ),
        (
            "type is a number",
            json!({"name": "x", "type": 7}),
            bad("invalid type"),
        ),
        (
            "type is unknown",
            json!({"name": "x", "type": "smart"}),
            bad("type must be static or dynamic, got \"smart\""),
        ),
        (
            "a static group with a filter",
            json!({"name": "x", "type": "static", "filterConditions": linux}),
            bad("A static group has no filterConditions"),
        ),
        (
            "a dynamic group without one",
            json!({"name": "x", "type": "dynamic"}),
            bad("A dynamic group needs filterConditions"),
        ),
        (
            "filterConditions is a string",
            json!({"name": "x", "filterConditions": "osType = linux"}),
            bad("$: Expected an object"),
        ),
        (
            "filterConditions is a bare condition",
            json!({"name": "x", "filterConditions": {"field": "osType", "operator": "isNull"}}),
            bad("$: The filter must be a group"),
        ),
        (
            "an unknown field",
            json!({"name": "x", "colour": "red"}),
            bad("unknown field `colour`"),
        ),
        (
            "orgId is another org",
            json!({"name": "x", "orgId": "other"}),
            not_found("Org not found"),
        ),
        ("a NUL in the name", json!({"name": "a\u{0}b"}), bad(nul)),
        (
            "a NUL in the description",
            json!({"name": "x", "description": "\u{0}"}),
            bad(nul),
        ),
        (
            "a NUL in a tag",
            json!({"name": "x", "tags": ["\u{0}"]}),
            bad(nul),
        ),
        (
            "a NUL in siteId",
            json!({"name": "x", "siteId": "s\u{0}"}),
            bad(nul),
        ),
        (
            "a NUL in a filter value",
            json!({"name": "x", "filterConditions": equals("\u{0}")}),
            bad(nul),
        ),
        (
            "a NUL in a filter key",
            json!({"name": "x", "filterConditions": {"operator": "OR", "conditions": [leaf()], "\u{0}": 1}}),
            bad("Unknown key"),
        ),
        (
            "an absurd datetime in a filter",
            json!({"name": "x", "filterConditions": one(json!({"field": "lastSeenAt", "operator": "before", "value": "0000-01-01T00:00:00Z"}))}),
            bad("$.conditions[0].value"),
        ),
        (
            "a negative relative time",
            json!({"name": "x", "filterConditions": one(json!({"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": -1, "unit": "days"}}))}),
            bad("$.conditions[0].value.amount: Amount must be a whole number"),
        ),
        (
            "a relative time of 1e300 months",
            json!({"name": "x", "filterConditions": one(json!({"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1e300, "unit": "months"}}))}),
            bad("$.conditions[0].value.amount"),
        ),
        (
            "a relative time past 100 years",
            json!({"name": "x", "filterConditions": one(json!({"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1201, "unit": "months"}}))}),
            bad("$.conditions[0].value.amount"),
        ),
    ];
    for (what, body, want) in group_bodies {
        cases.push(case(
            format!("create a group: {what}"),
            Key::Acme,
            post(groups, body),
            want,
        ));
    }
    cases.extend([
        case(
            "create a group: a number in a filter beyond f64",
            Key::Acme,
            with_json("POST", groups, r#"{"name": "x", "filterConditions": {"operator": "OR", "conditions": [{"field": "uptimeSeconds", "operator": "equals", "value": 1e400}]}}"#),
            bad("JSON"),
        ),
        case("create a group with a system key and no orgId", Key::System, post(groups, json!({"name": "x"})), bad("orgId is required with a system key")),
        case("create a group in an unknown org", Key::System, post(groups, json!({"name": "x", "orgId": "nope"})), not_found("Org not found")),
        case("update: turned static with a filter", Key::Acme, with_json("PATCH", &dynamic, json!({"type": "static", "filterConditions": linux}).to_string()), bad("A group turned static has no filterConditions")),
        case("update: turned dynamic without a filter", Key::Acme, with_json("PATCH", &picked, json!({"type": "dynamic"}).to_string()), bad("A group turned dynamic needs filterConditions")),
        case("update: a filter on a static group", Key::Acme, with_json("PATCH", &picked, json!({"filterConditions": linux}).to_string()), bad("A static group has no filter")),
        case("update: type is unknown", Key::Acme, with_json("PATCH", &dynamic, json!({"type": "smart"}).to_string()), bad("type must be static or dynamic, got \"smart\"")),
        case("update: name is a number", Key::Acme, with_json("PATCH", &dynamic, json!({"name": 1}).to_string()), bad("invalid type")),
        case("update: an invalid filter", Key::Acme, with_json("PATCH", &dynamic, json!({"filterConditions": {"operator": "XOR", "conditions": [leaf()]}}).to_string()), bad("$.operator: Group operator must be \"AND\" or \"OR\"")),
        case("update: a NUL in the name", Key::Acme, with_json("PATCH", &dynamic, json!({"name": "\u{0}"}).to_string()), bad(nul)),
        case("update: another org's group", Key::Acme, with_json("PATCH", format!("{groups}/{}", k.other_group), json!({"name": "mine"}).to_string()), not_found("Group not found")),
        case("replace: without a name", Key::Acme, with_json("PUT", &dynamic, json!({"filterConditions": linux}).to_string()), bad("missing field `name`")),
        case("replace: a dynamic group without a filter", Key::Acme, with_json("PUT", &dynamic, json!({"name": "linux"}).to_string()), bad("filterConditions is required")),
        case("preview: no filter", Key::Acme, post("/api/v1/groups/preview", json!({})), bad("missing field `filterConditions`")),
        case("preview: an unknown org", Key::System, post("/api/v1/groups/preview", json!({"orgId": "nope", "filterConditions": linux})), not_found("Org not found")),
        case("preview: another org", Key::Acme, post("/api/v1/groups/preview", json!({"orgId": "other", "filterConditions": linux})), not_found("Org not found")),
        case("preview: a static group", Key::Acme, post(format!("{groups}/{}/preview", k.hand_picked), json!({})), bad("A static group has no filter to preview")),
        case("add a member: deviceId is a number", Key::Acme, post(&member, json!({"deviceIds": [1]})), bad("invalid type")),
        case("add a member: deviceId is empty", Key::Acme, post(&member, json!({"deviceIds": [""]})), bad("deviceIds[0]: device ids must be 1 to 256 bytes")),
        case("add a member: deviceId is 257 bytes", Key::Acme, post(&member, json!({"deviceIds": ["d".repeat(257)]})), bad("deviceIds[0]: device ids must be 1 to 256 bytes")),
        case("add a member: a NUL in deviceId", Key::Acme, post(&member, json!({"deviceIds": ["dev-2\u{0}"]})), bad(nul)),
        case("add a member: another org's device", Key::Acme, post(&member, json!({"deviceIds": ["oth-1"]})), bad(format!("oth-1: {unknown}"))),
        case("add a member: an unknown device refuses the whole batch", Key::Acme, post(&member, json!({"deviceIds": ["dev-2", "nope", "dev-3"]})), bad(format!("nope: {unknown}"))),
        case("add a member by path: another org's device", Key::Acme, Request::new("POST", format!("/api/v1/device-groups/{}/devices/oth-1", k.hand_picked)), not_found("Device not found")),
        case("add a member by path: an unknown device", Key::Acme, Request::new("POST", format!("/api/v1/device-groups/{}/devices/nope", k.hand_picked)), not_found("Device not found")),
        case("add a member: addedBy is 256 characters", Key::Acme, post(&member, json!({"deviceIds": ["dev-2"], "addedBy": "x".repeat(256)})), bad("added_by must be 1 to 255 characters")),
        case("add a member: a NUL in addedBy", Key::Acme, post(&member, json!({"deviceIds": ["dev-2"], "addedBy": "\u{0}"})), bad(nul)),
        case("add a member to a dynamic group", Key::Acme, post(format!("{dynamic}/devices"), json!({"deviceIds": ["dev-2"]})), bad("dynamic group")),
        case("add a member to another org's group", Key::Acme, post(format!("{groups}/{}/devices", k.other_group), json!({"deviceIds": ["dev-2"]})), not_found("Group not found")),
        case("batch: device_ids is a string", Key::Acme, post(&batch, json!({"device_ids": "dev-2"})), bad("invalid type")),
        case("batch: nothing named", Key::Acme, post(&batch, json!({})), bad("Name at least one device")),
        case("batch: 10001 devices", Key::Acme, post(&batch, json!({"device_ids": (0..10_001).map(|i| format!("d{i}")).collect::<Vec<_>>()})), bad("10000")),
        case("batch: a NUL in a device id", Key::Acme, post(&batch, json!({"device_ids": ["\u{0}"]})), bad(nul)),
        case("batch: an unknown identifier kind", Key::Acme, post(&batch, json!({"identifiers": [{"kind": "ssn", "identifier": "1"}]})), bad("unknown identifier kind \"ssn\"")),
        case("batch: an invalid IMEI", Key::Acme, post(&batch, json!({"identifiers": [{"kind": "imei", "identifier": "12ab"}]})), bad("identifiers[0]")),
        case("batch: an IMEI of 10 KB", Key::Acme, post(&batch, json!({"identifiers": [{"kind": "imei", "identifier": "1".repeat(10_000)}]})), bad("identifiers[0]")),
        case("batch: an identifier no device reports refuses the whole batch", Key::Acme, post(&batch, json!({"device_ids": ["dev-2"], "identifiers": [{"kind": "imei", "identifier": "490154203237518"}]})), bad("identifiers[0]: No device of the org reports")),
        case("batch: another org's device refuses the whole batch", Key::Acme, post(&batch, json!({"device_ids": ["dev-3", "oth-1"]})), bad(format!("oth-1: {unknown}"))),
        case("remove: an unknown device refuses the whole batch", Key::Acme, with_json("DELETE", &removal, json!({"deviceIds": ["dev-1", "nope"]}).to_string()), bad(format!("nope: {unknown}"))),
        case("remove: another org's device refuses the whole batch", Key::Acme, with_json("DELETE", &batch, json!({"device_ids": ["dev-1", "oth-1"]}).to_string()), bad(format!("oth-1: {unknown}"))),
        case("remove: nothing named", Key::Acme, with_json("DELETE", &removal, json!({"deviceIds": []}).to_string()), bad("Name at least one device")),
        case("import: no ids", Key::Acme, post("/api/v1/devices/import", json!({"deviceIds": []})), bad("deviceIds must hold 1 to 10000 ids, got 0")),
        case("import: 10001 ids", Key::Acme, post("/api/v1/devices/import", json!({"deviceIds": (0..10_001).map(|i| format!("d{i}")).collect::<Vec<_>>()})), bad("deviceIds must hold 1 to 10000 ids, got 10001")),
        case("import: an empty id", Key::Acme, post("/api/v1/devices/import", json!({"deviceIds": ["ok", ""]})), bad("deviceIds[1]: device ids must be 1 to 256 bytes without control characters")),
        case("import: a NUL in an id", Key::Acme, post("/api/v1/devices/import", json!({"deviceIds": ["\u{0}"]})), bad("deviceIds[0]")),
        case("import: an id of 257 bytes", Key::Acme, post("/api/v1/devices/import", json!({"deviceIds": ["é".repeat(129)]})), bad("deviceIds[0]")),
        case("import: into another org", Key::Acme, post("/api/v1/devices/import", json!({"orgId": "other", "deviceIds": ["x"]})), not_found("Org not found")),
        case("import: into an unknown org", Key::System, post("/api/v1/devices/import", json!({"orgId": "nope", "deviceIds": ["x"]})), not_found("Org not found")),
        case("lock: version is a number", Key::Acme, with_json("PUT", "/api/v1/devices/dev-1/firmware-lock", json!({"version": 2}).to_string()), bad("invalid type")),
        case("lock: version is not a version", Key::Acme, with_json("PUT", "/api/v1/devices/dev-1/firmware-lock", json!({"version": "'; DROP TABLE devices; --"}).to_string()), bad("")),
        case("lock: a NUL in the version", Key::Acme, with_json("PUT", "/api/v1/devices/dev-1/firmware-lock", json!({"version": "1.0.0\u{0}"}).to_string()), bad("")),
        case("lock: another org's device", Key::Acme, with_json("PUT", "/api/v1/devices/oth-1/firmware-lock", json!({"version": "1.0.0"}).to_string()), not_found("Device not found")),
        case("development: enabled is a string", Key::Acme, with_json("PUT", "/api/v1/devices/dev-1/development", json!({"enabled": "yes"}).to_string()), bad("invalid type")),
        case("development: enabled is null", Key::Acme, with_json("PUT", "/api/v1/devices/dev-1/development", json!({"enabled": null}).to_string()), bad("invalid type")),
        case("release: not a version", Key::Acme, post("/api/v1/releases", json!({"default": true, "version": "latest"})), bad("")),
        case("release: a version of 10 KB", Key::Acme, post("/api/v1/releases", json!({"default": true, "version": "1".repeat(10_000)})), bad("")),
        case("release: both targets", Key::Acme, post("/api/v1/releases", json!({"default": true, "groupId": k.dynamic, "version": "2.0.0"})), bad("Name exactly one target")),
        case("release: no target", Key::Acme, post("/api/v1/releases", json!({"version": "2.0.0"})), bad("Name exactly one target")),
        case("release: another org's group", Key::Acme, post("/api/v1/releases", json!({"groupId": k.other_group, "version": "2.0.0"})), not_found("Group not found")),
        case("release: dry_run is a string", Key::Acme, post("/api/v1/releases", json!({"default": true, "version": "2.0.0", "dry_run": "yes"})), bad("invalid type")),
        case("org: with an org key", Key::Acme, post("/api/v1/orgs", json!({"id": "mine"})), refused(401, "unauthorized", "Creating orgs needs a system key")),
        case("org: an empty id", Key::System, post("/api/v1/orgs", json!({"id": ""})), bad("id must be 1 to 128 characters")),
        case("org: a path as id", Key::System, post("/api/v1/orgs", json!({"id": "../etc"})), bad("id must be 1 to 128 characters")),
        case("org: SQL as id", Key::System, post("/api/v1/orgs", json!({"id": "x'; DROP TABLE orgs; --"})), bad("id must be 1 to 128 characters")),
        case("org: an id of 129 characters", Key::System, post("/api/v1/orgs", json!({"id": "o".repeat(129)})), bad("id must be 1 to 128 characters")),
        case("org: a name of 256 characters", Key::System, post("/api/v1/orgs", json!({"id": "fresh", "name": "n".repeat(256)})), bad("name must be at most 255 characters")),
        case("org: a NUL in the name", Key::System, post("/api/v1/orgs", json!({"id": "fresh", "name": "\u{0}"})), bad(nul)),
        case("org: one that exists", Key::System, post("/api/v1/orgs", json!({"id": "acme"})), refused(409, "conflict", "already exists")),
    ]);
    cases
}

/// Path tricks, bad ids and bad query parameters.
fn paths_and_queries(k: &Known) -> Vec<Case> {
    let g = &k.dynamic;
    let nil = "00000000-0000-0000-0000-000000000000";
    let uuid_error = "UUID";
    let no_group = || not_found("Group not found");
    let mut cases: Vec<Case> = [
        // -- path tricks (a group id that is not a UUID names no group)
        ("/api/v1/groups/not-a-uuid".to_string(), no_group()),
        ("/api/v1/groups/grp_abc123".to_string(), no_group()),
        ("/api/v1/device-groups/not-a-uuid".to_string(), no_group()),
        ("/api/v1/devices/groups/grp_abc123".to_string(), no_group()),
        ("/api/v1/groups/..".to_string(), no_group()),
        ("/api/v1/groups/%2e%2e".to_string(), no_group()),
        (
            "/api/v1/groups/%2e%2e/%2e%2e/orgs".to_string(),
            not_found("No such route"),
        ),
        (
            "/api/v1/../v1/groups".to_string(),
            not_found("No such route"),
        ),
        ("/api/v1//groups".to_string(), not_found("No such route")),
        (format!("/api/v1/groups/{g}%00"), no_group()),
        (format!("/api/v1/groups/{g}%2fdevices"), no_group()),
        (format!("/api/v1/groups/{}", "f".repeat(10_000)), no_group()),
        ("/api/v1/groups/'%20OR%201=1--".to_string(), no_group()),
        ("/api/v1/groups/not-a-uuid/devices".to_string(), no_group()),
        (
            format!("/api/v1/groups/{g}/members"),
            not_found("No such route"),
        ),
        (
            format!("/api/v1/groups/{nil}"),
            not_found("Group not found"),
        ),
        (
            format!("/api/v1/groups/{}", k.other_group),
            not_found("Group not found"),
        ),
        (
            format!("/api/v1/groups/{}/devices", k.other_group),
            not_found("Group not found"),
        ),
        (
            format!("/api/v1/device-groups/{}/devices", k.other_group),
            not_found("Group not found"),
        ),
        (
            format!("/api/v1/groups/{}/membership-log", k.other_group),
            not_found("Group not found"),
        ),
        ("/api/v1/devices/%00".to_string(), bad("U+0000")),
        ("/api/v1/devices/dev-1%00".to_string(), bad("U+0000")),
        (
            "/api/v1/devices/..%2f..%2fetc%2fpasswd".to_string(),
            not_found("Device not found"),
        ),
        (
            "/api/v1/devices/a%2Fb".to_string(),
            not_found("Device not found"),
        ),
        (
            "/api/v1/devices/%F0%9F%92%A9".to_string(),
            not_found("Device not found"),
        ),
        ("/api/v1/devices/%ff".to_string(), bad("UTF-8")),
        (
            format!("/api/v1/devices/{}", "d".repeat(8_000)),
            not_found("Device not found"),
        ),
        (
            "/api/v1/devices/'%20OR%20'1'='1".to_string(),
            not_found("Device not found"),
        ),
        (
            "/api/v1/devices/oth-1".to_string(),
            not_found("Device not found"),
        ),
        // -- query parameters
        (
            "/api/v1/groups?limit=0".to_string(),
            bad("limit must be from 1 to 1000, got 0"),
        ),
        (
            "/api/v1/groups?limit=1001".to_string(),
            bad("limit must be from 1 to 1000, got 1001"),
        ),
        (
            "/api/v1/groups?limit=-1".to_string(),
            bad("limit must be from 1 to 1000, got -1"),
        ),
        ("/api/v1/groups?limit=abc".to_string(), bad("limit")),
        ("/api/v1/groups?limit=1e3".to_string(), bad("limit")),
        (
            "/api/v1/groups?limit=99999999999999999999".to_string(),
            bad("limit"),
        ),
        (
            "/api/v1/groups?offset=-1".to_string(),
            bad("offset must be 0 or more, got -1"),
        ),
        (
            "/api/v1/groups?offset=9223372036854775808".to_string(),
            bad("offset"),
        ),
        (
            "/api/v1/groups?limit=1&limit=2".to_string(),
            bad("duplicate field `limit`"),
        ),
        (
            "/api/v1/groups?colour=red".to_string(),
            bad("unknown field `colour`"),
        ),
        (
            "/api/v1/groups?type=%27%20OR%20%271%27=%271".to_string(),
            bad("type must be static or dynamic"),
        ),
        ("/api/v1/groups?parentId=nope".to_string(), bad("parentId")),
        (
            "/api/v1/groups?orgId=other".to_string(),
            not_found("Org not found"),
        ),
        ("/api/v1/groups?search=%00".to_string(), bad("U+0000")),
        ("/api/v1/groups?tags=a,%00".to_string(), bad("U+0000")),
        ("/api/v1/groups?siteId=%00".to_string(), bad("U+0000")),
        (
            format!("/api/v1/groups/{g}/devices?limit=1001"),
            bad("limit must be from 1 to 1000"),
        ),
        (
            format!("/api/v1/groups/{g}/devices?offset=-5"),
            bad("offset must be 0 or more"),
        ),
        (
            format!("/api/v1/device-groups/{g}/devices?limit=0"),
            bad("limit must be from 1 to 1000"),
        ),
        (
            "/api/v1/devices/groups?page=0".to_string(),
            bad("page must be from 1"),
        ),
        (
            "/api/v1/devices/groups?limit=1001".to_string(),
            bad("limit must be from 1 to 1000"),
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?limit=501"),
            bad("limit must be from 1 to 500, got 501"),
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?limit=0"),
            bad("limit must be from 1 to 500, got 0"),
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?action=deleted"),
            bad("action must be added or removed"),
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?before={nil}"),
            bad("before must be an entry id"),
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?deviceId=%00"),
            bad("U+0000"),
        ),
        (
            "/api/v1/releases?includeWithdrawn=maybe".to_string(),
            bad("includeWithdrawn"),
        ),
        (
            "/api/v1/releases?orgId=other".to_string(),
            not_found("Org not found"),
        ),
    ]
    .into_iter()
    .map(|(path, want)| case(format!("GET {}", short(&path)), Key::Acme, get(path), want))
    .collect();
    cases.extend([
        case(
            "system key: groups of org NUL",
            Key::System,
            get("/api/v1/groups?orgId=%00"),
            bad("U+0000"),
        ),
        case(
            "preview: limit 101",
            Key::Acme,
            post(format!("/api/v1/groups/{g}/preview?limit=101"), json!({})),
            bad("limit must be from 1 to 100, got 101"),
        ),
        case(
            "preview: limit 0",
            Key::Acme,
            post(
                "/api/v1/groups/preview?limit=0",
                json!({"filterConditions": leaf()}),
            ),
            bad("limit must be from 1 to 100, got 0"),
        ),
        case(
            "withdraw: dryRun=2",
            Key::Acme,
            Request::new("DELETE", format!("/api/v1/releases/{}?dryRun=2", k.release)),
            bad("dryRun"),
        ),
        case(
            "withdraw: not a UUID",
            Key::Acme,
            Request::new("DELETE", "/api/v1/releases/..%2f..%2f"),
            bad(uuid_error),
        ),
        case(
            "withdraw: an unknown release",
            Key::Acme,
            Request::new("DELETE", format!("/api/v1/releases/{nil}")),
            not_found("Release not found"),
        ),
        case(
            "remove a member: a NUL id",
            Key::Acme,
            Request::new(
                "DELETE",
                format!("/api/v1/groups/{}/devices/%00", k.hand_picked),
            ),
            bad("U+0000"),
        ),
        case(
            "remove a member: SQL as id",
            Key::Acme,
            Request::new(
                "DELETE",
                format!("/api/v1/groups/{}/devices/'%20OR%201=1%20--", k.hand_picked),
            ),
            not_found("not a member"),
        ),
        case(
            "pin: a NUL id",
            Key::Acme,
            post(format!("/api/v1/groups/{g}/devices/%00/pin"), json!({})),
            bad("U+0000"),
        ),
        case(
            "pin: SQL as id",
            Key::Acme,
            Request::new(
                "DELETE",
                format!("/api/v1/groups/{g}/devices/'%20OR%201=1%20--/pin"),
            ),
            not_found("Device not found"),
        ),
        case(
            "pin: another org's device",
            Key::Acme,
            post(format!("/api/v1/groups/{g}/devices/oth-1/pin"), json!({})),
            not_found("Device not found"),
        ),
        case(
            "pin: in a static group",
            Key::Acme,
            post(
                format!("/api/v1/groups/{}/devices/dev-1/pin", k.hand_picked),
                json!({}),
            ),
            bad("Pins apply to dynamic groups only"),
        ),
        case(
            "development: a NUL id",
            Key::Acme,
            with_json(
                "PUT",
                "/api/v1/devices/%00/development",
                json!({"enabled": true}).to_string(),
            ),
            bad("U+0000"),
        ),
        case(
            "unlock: another org's device",
            Key::Acme,
            Request::new("DELETE", "/api/v1/devices/oth-1/firmware-lock"),
            not_found("Device not found"),
        ),
        case(
            "a method no route has",
            Key::Acme,
            Request::new("PUT", "/api/v1/groups"),
            refused(405, "bad_request", "Method not allowed"),
        ),
        case(
            "TRACE",
            Key::Acme,
            Request::new("TRACE", "/api/v1/groups"),
            refused(405, "bad_request", "Method not allowed"),
        ),
        case(
            "an invented method",
            Key::Acme,
            Request::new("BREW", "/api/v1/groups"),
            refused(405, "bad_request", "Method not allowed"),
        ),
        // -- requests the HTTP layer cannot parse
        case(
            "a raw non-ASCII byte in the path",
            Key::Acme,
            Request::new("GET", b"/api/v1/devices/\xff".to_vec()),
            Want::Protocol(400),
        ),
        case(
            "a raw NUL byte in the path",
            Key::Acme,
            Request::new("GET", b"/api/v1/devices/\x00".to_vec()),
            Want::Protocol(400),
        ),
        case(
            "a path of 70 KB",
            Key::Acme,
            get(format!("/api/v1/devices/{}", "d".repeat(70_000))),
            Want::Protocol(414),
        ),
        case(
            "a header of 500 KB",
            Key::Acme,
            get("/api/v1/groups").header("x-padding", &"p".repeat(500_000)),
            Want::Protocol(431),
        ),
        // -- keys
        case(
            "no key",
            Key::None,
            get("/api/v1/groups"),
            refused(401, "unauthorized", "Missing API key"),
        ),
        case(
            "an empty bearer",
            Key::Raw(String::new()),
            get("/api/v1/groups"),
            refused(401, "unauthorized", "Missing API key"),
        ),
        case(
            "a made-up key",
            Key::Raw("cohort_000000000000_nope".into()),
            get("/api/v1/groups"),
            refused(401, "unauthorized", "Invalid or revoked API key"),
        ),
        case(
            "SQL as the key",
            Key::Raw("cohort_' OR 1=1 --_x".into()),
            get("/api/v1/groups"),
            refused(401, "unauthorized", "Invalid or revoked API key"),
        ),
        case(
            "a key of 10 KB",
            Key::Raw("k".repeat(10_000)),
            get("/api/v1/groups"),
            refused(401, "unauthorized", "Invalid or revoked API key"),
        ),
        case(
            "basic auth",
            Key::None,
            get("/api/v1/groups").header("authorization", "Basic YWRtaW46YWRtaW4="),
            refused(401, "unauthorized", "Missing API key"),
        ),
    ]);
    cases
}

/// What the API takes as data: SQL-like strings stored and searched literally, pagination at its limits.
fn accepted_literals(k: &Known) -> Vec<Case> {
    let g = &k.dynamic;
    let mut cases: Vec<Case> = [
        "'; DROP TABLE device_groups; --",
        "Robert'); DELETE FROM orgs; --",
        "%_\\ $1 ${x} {{x}}",
        "../../etc/passwd",
        "<script>alert(1)</script>",
        "\u{202e}gnp.exe",
    ]
    .into_iter()
    .map(|name| {
        case(
            format!("a group named {}", short(name)),
            Key::Limits,
            post(
                "/api/v1/groups",
                json!({"name": name, "description": name, "tags": [name]}),
            ),
            ok(
                201,
                vec![
                    ("/name", json!(name)),
                    ("/description", json!(name)),
                    ("/tags/0", json!(name)),
                ],
            ),
        )
    })
    .collect();
    for (path, checks) in [
        (
            "/api/v1/groups?search=%27%20OR%201%3D1%20--".to_string(),
            vec![("/total", json!(0))],
        ),
        (
            "/api/v1/groups?search=%25".to_string(),
            vec![("/total", json!(0))],
        ),
        (
            "/api/v1/groups?search=_".to_string(),
            vec![("/total", json!(0))],
        ),
        (
            format!("/api/v1/groups?search={}", "a".repeat(10_000)),
            vec![("/total", json!(0))],
        ),
        (
            "/api/v1/groups?tags=%27%3B%20DROP%20TABLE%20orgs%3B--".to_string(),
            vec![("/total", json!(0))],
        ),
        (
            "/api/v1/groups?limit=1000".to_string(),
            vec![("/total", json!(2)), ("/limit", json!(1000))],
        ),
        (
            "/api/v1/groups?offset=9223372036854775807".to_string(),
            vec![("/total", json!(2)), ("/groups", json!([]))],
        ),
        (
            format!("/api/v1/groups/{}/devices?limit=1000", k.hand_picked),
            vec![("/total", json!(1)), ("/data/0/deviceId", json!("dev-1"))],
        ),
        (
            format!("/api/v1/groups/{g}/membership-log?limit=500&deviceId=%27%20OR%201%3D1%20--"),
            vec![("/entries", json!([]))],
        ),
    ] {
        cases.push(case(
            format!("GET {}", short(&path)),
            Key::Acme,
            get(path),
            ok(200, checks),
        ));
    }
    cases.push(case(
        "preview: a NUL in a filter value (nothing is stored)",
        Key::Acme,
        post(
            "/api/v1/groups/preview?limit=100",
            json!({"filterConditions": equals("\u{0}")}),
        ),
        ok(
            200,
            vec![("/data/totalCount", json!(0)), ("/data/examined", json!(3))],
        ),
    ));
    cases
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
