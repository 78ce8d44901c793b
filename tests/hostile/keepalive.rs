//! Keep-alive against the real API over raw connections: an answer given before the request's body was
//! read (refused from its head, or over the body limit) says `Connection: close` and the connection then
//! ends; an answer given after the body was read does not, and the same connection carries the next
//! request.

use serde_json::json;

use crate::api::Api;
use crate::raw::{Connection, Request};

/// `api.max_body_bytes` (the default).
const MAX_BODY: usize = 1 << 20;

fn request(method: &'static str, path: &str, key: Option<&str>) -> Request {
    let request = Request::new(method, path).keep_alive();
    match key {
        Some(key) => request.header("authorization", &format!("Bearer {key}")),
        None => request,
    }
}

#[tokio::test]
async fn the_api_says_connection_close_exactly_when_it_closes_the_connection() -> anyhow::Result<()>
{
    let api = Api::start().await?;
    let key = Some(api.acme.as_str());
    let group = |name: &str| json!({"name": name}).to_string();
    // Twice the limit: the answer comes long before the end of the body has been read.
    let over = format!(r#"{{"name": "{}"}}"#, "a".repeat(2 * MAX_BODY));

    let closing = [
        (
            "no key",
            request("POST", "/api/v1/groups", None).json(group("refused")),
            401,
        ),
        (
            "a content type that is not JSON",
            request("POST", "/api/v1/groups", key)
                .header("content-type", "text/plain")
                .body(group("refused")),
            415,
        ),
        (
            "no such route",
            request("POST", "/api/v1/nowhere", key).json(group("refused")),
            404,
        ),
        (
            "a method the route does not take",
            request("PUT", "/api/v1/groups", key).json(group("refused")),
            405,
        ),
        (
            "over the body limit, with Content-Length",
            request("POST", "/api/v1/groups", key).json(over.clone()),
            413,
        ),
        (
            "over the body limit, chunked",
            request("POST", "/api/v1/groups", key)
                .json(over.clone())
                .chunked(),
            413,
        ),
    ];
    for (name, request, status) in closing {
        let mut connection = Connection::open(api.addr).await?;
        let reply = connection.exchange(&request).await?;
        anyhow::ensure!(reply.status == status, "{name}: {}", reply.describe());
        anyhow::ensure!(
            reply.says_close(),
            "{name}: no Connection: close in {:?}",
            reply.headers
        );
        anyhow::ensure!(
            connection.closed().await?,
            "{name}: the connection stayed open"
        );
    }

    let mut connection = Connection::open(api.addr).await?;
    let kept = [
        (
            "a create",
            request("POST", "/api/v1/groups", key).json(group("kept-1")),
            201,
        ),
        (
            "a chunked create",
            request("POST", "/api/v1/groups", key)
                .json(group("kept-2"))
                .chunked(),
            201,
        ),
        (
            "a create whose name is taken",
            request("POST", "/api/v1/groups", key).json(group("kept-1")),
            409,
        ),
        (
            "malformed JSON",
            request("POST", "/api/v1/groups", key).json(r#"{"name": "#),
            400,
        ),
        (
            "an unknown group",
            request(
                "GET",
                "/api/v1/groups/00000000-0000-4000-8000-000000000000",
                key,
            ),
            404,
        ),
        (
            "no key, no body",
            request("GET", "/api/v1/groups", None),
            401,
        ),
        ("a listing", request("GET", "/api/v1/groups", key), 200),
    ];
    for (name, request, status) in kept {
        let reply = connection.exchange(&request).await?;
        anyhow::ensure!(reply.status == status, "{name}: {}", reply.describe());
        anyhow::ensure!(
            !reply.says_close(),
            "{name}: Connection: close in {:?}",
            reply.headers
        );
    }
    let listing = connection
        .exchange(&request("GET", "/api/v1/groups", key))
        .await?;
    let listed = listing.json();
    let names: Vec<&str> = listed["groups"]
        .as_array()
        .map(|groups| groups.iter().filter_map(|g| g["name"].as_str()).collect())
        .unwrap_or_default();
    anyhow::ensure!(
        names == ["kept-1", "kept-2"],
        "the groups on the kept connection: {}",
        listing.describe()
    );
    api.stop().await
}
