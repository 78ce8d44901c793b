//! Wrong fields in otherwise well-formed bodies: wrong types, bad values, NULs and mismatched orgs.

use serde_json::{json, Value};

use crate::raw::Request;

use super::filters::{equals, leaf, one};
use super::{bad, case, not_found, post, refused, with_json, Case, Key, Known, Want};

/// Wrong types, bad values, NULs and mismatched orgs, field by field.
pub(super) fn bad_fields(k: &Known) -> Vec<Case> {
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
