//! Broken bodies on every route that takes one: not JSON, truncated, the wrong type, duplicate keys, over
//! `api.max_body_bytes`, a wrong or missing content type.

use serde_json::json;

use crate::raw::Request;

use super::{bad, case, ok, refused, Case, Key, Known, Want, MAX_BODY};

/// `s`, or for a long one its first 100 characters and its length.
pub(super) fn short(s: &str) -> String {
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
pub(super) fn broken_bodies(k: &Known) -> Vec<Case> {
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
