//! Greedy clients against the real API over raw connections, with small configured limits: a client
//! opening more idle connections than `http.max_connections_per_client` gets the extra ones refused
//! while another client is answered; a `Content-Length` over `api.max_body_bytes` is refused before any
//! of the body is sent; stalled bodies hold no more than `http.max_body_buffer_bytes` between them, the
//! rest wait and are answered once room is given back. Assertions are on statuses and counts (of
//! answers, of metrics), never on how long anything took.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use cohort::config::Config;
use cohort::store::{api_keys, groups};
use cohort_testkit::{TestDatabase, TestKafka};
use serde_json::json;

use crate::raw::{self, Connection, Request};

/// `api.max_body_bytes` here.
const MAX_BODY: usize = 4096;
/// A second client on the same machine.
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The client reading `/metrics`.
const METRICS_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The API alone, with a key of the org `acme` and the limits `tweak` sets.
struct SmallApi {
    db: TestDatabase,
    _kafka: TestKafka,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    addr: SocketAddr,
    key: String,
}

impl SmallApi {
    async fn start(tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let db = TestDatabase::new().await?;
        cohort::store::migrate(db.pool()).await?;
        groups::create_org(db.pool(), "acme", "acme").await?;
        let kafka = TestKafka::mock(1)?;
        let mut config = Config::load_from(None, Vec::<(String, String)>::new())?;
        config.database.url = db.url().to_string();
        config.http.listen = "127.0.0.1:0".parse()?;
        config.kafka.brokers = kafka.bootstrap_servers();
        config.api.rate_limit_per_second = 1_000_000;
        config.api.rate_limit_burst = 1_000_000;
        config.api.max_body_bytes = MAX_BODY;
        tweak(&mut config);
        let cohort_testkit::app::RunningApi { stop, task, addr } =
            cohort_testkit::app::spawn_api(config).await?;
        let (_, key) = api_keys::create(db.pool(), Some("acme"), "acme").await?;
        Ok(Self {
            db,
            _kafka: kafka,
            stop: Some(stop),
            task,
            addr,
            key,
        })
    }

    fn create(&self, body: impl Into<Vec<u8>>) -> Request {
        Request::new("POST", "/api/v1/groups")
            .header("authorization", &format!("Bearer {}", self.key))
            .json(body)
    }

    /// The sum of a counter's series whose labels contain `labels` (0 before its first increment). The
    /// recorder is the process's, shared by every API this suite starts: compare before and after.
    async fn counter(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        // From a client of its own, so that the connection caps under test do not apply to it.
        let mut connection = Connection::open_from(METRICS_CLIENT, self.addr).await?;
        let reply = connection
            .exchange(&Request::new("GET", "/metrics"))
            .await?;
        anyhow::ensure!(reply.status == 200, "/metrics: {}", reply.describe());
        let text = String::from_utf8(reply.body)?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        self.db.cleanup().await
    }
}

/// A group create whose JSON body is exactly `length` bytes long.
fn body_of_length(name: &str, length: usize) -> Vec<u8> {
    let mut body = json!({ "name": name }).to_string().into_bytes();
    assert!(body.len() <= length, "{name} does not fit {length} bytes");
    // Whitespace after the value is valid JSON.
    body.resize(length, b' ');
    body
}

#[tokio::test]
async fn a_client_over_its_connection_cap_is_refused_while_another_client_is_answered(
) -> anyhow::Result<()> {
    const CAP: usize = 4;
    const EXTRA: usize = 3;
    let api = SmallApi::start(|config| {
        config.http.max_connections_per_client = CAP;
        // One slot more than the cap: without the cap, the greedy client would hold every slot.
        config.http.max_connections = CAP + 1;
        // The idle connections would stay open through the test either way: the cap alone must do it.
        config.http.first_request_timeout_ms = 120_000;
        config.http.header_read_timeout_ms = 120_000;
    })
    .await?;
    let refused_before = api
        .counter(
            "cohort_http_connections_closed_total",
            "reason=\"client_limit\"",
        )
        .await?;

    // The greedy client's idle connections, up to its cap. They are accepted in the order they were
    // opened, so these are the ones served.
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(Connection::open(api.addr).await?);
    }
    for n in 0..EXTRA {
        let mut extra = Connection::open(api.addr).await?;
        let reply = extra.reply().await?;
        anyhow::ensure!(reply.status == 503, "extra {n}: {}", reply.describe());
        anyhow::ensure!(reply.says_close(), "extra {n}: {:?}", reply.headers);
        let message = reply.json()["message"].as_str().unwrap_or("").to_owned();
        anyhow::ensure!(
            message.contains(&format!("http.max_connections_per_client = {CAP}")),
            "extra {n}: {}",
            reply.describe()
        );
        anyhow::ensure!(extra.closed().await?, "extra {n} stayed open");
    }

    // Another client is answered while the greedy one holds its cap of idle sockets.
    let mut other = Connection::open_from(OTHER_CLIENT, api.addr).await?;
    let reply = other.exchange(&Request::new("GET", "/healthz")).await?;
    anyhow::ensure!(
        reply.status == 200,
        "the other client: {}",
        reply.describe()
    );

    // The greedy client's connections within the cap are served like any other.
    for (n, connection) in held.iter_mut().enumerate() {
        let reply = connection
            .exchange(&Request::new("GET", "/healthz").keep_alive())
            .await?;
        anyhow::ensure!(reply.status == 200, "held {n}: {}", reply.describe());
    }
    let refused = api
        .counter(
            "cohort_http_connections_closed_total",
            "reason=\"client_limit\"",
        )
        .await?
        - refused_before;
    anyhow::ensure!(
        refused == EXTRA as f64,
        "{refused} connections counted as refused"
    );
    drop(held);
    api.stop().await
}

#[tokio::test]
async fn a_content_length_over_the_body_limit_is_refused_before_any_of_the_body_is_sent(
) -> anyhow::Result<()> {
    // Were the body waited for, the request would run into this deadline and answer 408.
    let api = SmallApi::start(|config| config.http.request_timeout_ms = 120_000).await?;
    let too_large = json!({
        "error": "bad_request",
        "message": "Request body too large",
        "details": [],
    });
    let head_only = |request: Request, length: usize| {
        let mut request = request.header("content-length", &length.to_string());
        request.body = None;
        request
    };
    let cases = [
        (
            "a create with a key",
            head_only(api.create(""), MAX_BODY + 1),
        ),
        (
            "a create without a key",
            head_only(
                Request::new("POST", "/api/v1/groups").header("content-type", "application/json"),
                MAX_BODY + 1,
            ),
        ),
        (
            "a client waiting for 100 Continue",
            head_only(api.create(""), 10 * MAX_BODY).header("expect", "100-continue"),
        ),
        (
            "a route that takes no body",
            head_only(Request::new("GET", "/healthz"), 1 << 40),
        ),
    ];
    for (name, request) in cases {
        let mut connection = Connection::open(api.addr).await?;
        // The head alone: not one byte of the body.
        connection
            .write(&request.keep_alive().encoded(api.addr))
            .await?;
        let reply = connection.reply().await?;
        anyhow::ensure!(reply.status == 413, "{name}: {}", reply.describe());
        anyhow::ensure!(reply.json() == too_large, "{name}: {}", reply.describe());
        anyhow::ensure!(reply.says_close(), "{name}: {:?}", reply.headers);
        anyhow::ensure!(connection.closed().await?, "{name}: stayed open");
    }

    // A body exactly at the limit is read and created.
    let reply = raw::send(
        api.addr,
        &api.create(body_of_length("at-the-limit", MAX_BODY)),
    )
    .await?;
    anyhow::ensure!(reply.status == 201, "at the limit: {}", reply.describe());
    api.stop().await
}

#[tokio::test]
async fn stalled_bodies_hold_no_more_than_the_budget_and_the_rest_wait_their_turn(
) -> anyhow::Result<()> {
    /// Bodies at the limit the budget holds.
    const ROOM: usize = 3;
    const STALLED: usize = 7;
    let api = SmallApi::start(|config| {
        config.http.max_body_buffer_bytes = ROOM * MAX_BODY;
        // The bodies are finished by the test, long before this.
        config.http.request_timeout_ms = 120_000;
    })
    .await?;
    let waits_before = api
        .counter("cohort_http_body_buffer_waits_total", "")
        .await?;

    // Every request sends its head and the first bytes of its body, then stalls.
    let mut stalled = Vec::new();
    for n in 0..STALLED {
        let request = api.create(body_of_length(&format!("stalled-{n}"), MAX_BODY));
        let bytes = request.keep_alive().encoded(api.addr);
        let (start, rest) = bytes.split_at(bytes.len() - MAX_BODY + 16);
        let mut connection = Connection::open(api.addr).await?;
        connection.write(start).await?;
        stalled.push((connection, rest.to_vec()));
    }
    // ROOM of them hold the budget; every other one waits for room (counted once each).
    cohort_testkit::eventually(
        cohort_testkit::OPERATION_TIMEOUT,
        "the bodies beyond the budget wait",
        || async {
            let waits = api
                .counter("cohort_http_body_buffer_waits_total", "")
                .await?
                - waits_before;
            // More would mean fewer than ROOM bodies hold room (never more: a waiting body is
            // counted once).
            anyhow::ensure!(waits <= (STALLED - ROOM) as f64, "{waits} bodies wait");
            Ok((waits == (STALLED - ROOM) as f64).then_some(()))
        },
    )
    .await?;

    // The bodies arrive: the holders are answered and give their room back, the others then are.
    for (connection, rest) in &mut stalled {
        connection.write(rest).await?;
    }
    let mut created = 0;
    for (n, (connection, _)) in stalled.iter_mut().enumerate() {
        let reply = connection.reply().await?;
        anyhow::ensure!(reply.status == 201, "stalled {n}: {}", reply.describe());
        anyhow::ensure!(!reply.says_close(), "stalled {n}: {:?}", reply.headers);
        created += 1;
    }
    anyhow::ensure!(created == STALLED);
    let waits = api
        .counter("cohort_http_body_buffer_waits_total", "")
        .await?
        - waits_before;
    anyhow::ensure!(
        waits == (STALLED - ROOM) as f64,
        "{waits} bodies waited in all"
    );
    api.stop().await
}
