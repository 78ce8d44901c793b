//! Paths and query parameters: unknown and malformed ids, path tricks, out-of-range and repeated
//! parameters, SQL-like strings; and literals the API accepts as they are.

use serde_json::json;

use crate::raw::Request;

use super::bodies::short;
use super::filters::{equals, leaf};
use super::{bad, case, get, not_found, ok, post, refused, with_json, Case, Key, Known, Want};

/// Path tricks, bad ids and bad query parameters.
pub(super) fn paths_and_queries(k: &Known) -> Vec<Case> {
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
pub(super) fn accepted_literals(k: &Known) -> Vec<Case> {
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
