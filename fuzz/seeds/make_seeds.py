#!/usr/bin/env python3
"""Writes the hand-made seeds of fuzz/corpus/<target>/ (files named valid-*, invalid-*, other-*).

Run from the repository root: python3 fuzz/seeds/make_seeds.py. Idempotent; it never deletes what the
fuzzer added (files with hash names). The limits mirror the constants of src/rules/filter.rs and
src/event.rs, and tests/suite/fuzz_corpus.rs checks that each named seed still means what its name says.
"""
import json
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"

MAX_DEPTH = 10
MAX_CONDITIONS = 256
MAX_LIST_VALUES = 1000
MAX_VALUE_BYTES = 1024
MAX_REGEX_BYTES = 1024


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def j(v):
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


def group(*conds, op="AND"):
    return {"operator": op, "conditions": list(conds)}


def leaf(field, op, value=None, explicit_null=False):
    d = {"field": field, "operator": op}
    if value is not None or explicit_null:
        d["value"] = value
    return d


def filters():
    t = "filter_parse"
    # Documented filters.
    write(t, "valid-examples-filter.json", (ROOT / "examples" / "filter.json").read_bytes())
    write(t, "valid-docs-rules.json", j(group(
        leaf("status", "equals", "online"),
        group(leaf("tags", "contains", "canary"),
              leaf("lastSeenAt", "withinLast", {"amount": 2, "unit": "hours"}), op="OR"))))
    write(t, "valid-readme-linux-online.json", j(group(
        leaf("osType", "equals", "linux"), leaf("status", "in", ["online", "maintenance"]))))
    write(t, "valid-api-eu-gateways.json", j(group(
        leaf("platform", "startsWith", "gw-"), leaf("custom.region", "in", ["eu-west", "eu-central"]))))
    # Every operator on every type it is valid for.
    write(t, "valid-every-string-operator.json", j(group(
        leaf("hostname", "equals", "web-01"), leaf("hostname", "notEquals", "WEB-01"),
        leaf("displayName", "contains", "straße"), leaf("displayName", "notContains", "STRASSE"),
        leaf("osVersion", "startsWith", "İ"), leaf("osVersion", "endsWith", "\u212aelvin"),
        leaf("platform", "matches", "(?i)^rpi-\\d+$"), leaf("siteId", "in", ["a", "b", ""]),
        leaf("siteId", "notIn", []), leaf("firmwareVersion", "isEmpty"),
        leaf("agentVersion", "isNotEmpty", None, True), leaf("imei", "isNull"),
        leaf("custom.rack", "isNotNull"), op="OR")))
    write(t, "valid-every-number-operator.json", j(group(
        leaf("uptimeSeconds", "equals", -0.0), leaf("uptimeSeconds", "notEquals", 1e300),
        leaf("uptimeSeconds", "greaterThan", 3), leaf("uptimeSeconds", "greaterThanOrEquals", 2.5),
        leaf("uptimeSeconds", "lessThan", -1), leaf("uptimeSeconds", "lessThanOrEquals", 18446744073709551615),
        leaf("uptimeSeconds", "between", {"from": 0, "to": 0}), leaf("uptimeSeconds", "in", [1, 1.0, -0.0, 0]),
        leaf("uptimeSeconds", "notIn", [7]), leaf("daysSinceLastSeen", "greaterThan", 7),
        leaf("daysSinceEnrolled", "between", {"from": -1, "to": 0.5}), leaf("daysSinceLastSeen", "in", [0, 1, 7]),
        leaf("daysSinceEnrolled", "isNull"), op="OR")))
    write(t, "valid-every-enum-and-boolean-operator.json", j(group(
        leaf("status", "equals", "online"), leaf("status", "notEquals", "offline"),
        leaf("osType", "in", ["linux", "rtos", "linux"]), leaf("osType", "notIn", ["windows"]),
        leaf("status", "isNull"), leaf("osType", "isNotNull"), op="OR")))
    write(t, "valid-every-datetime-operator.json", j(group(
        leaf("lastSeenAt", "before", "2024-02-29T23:59:59.999+14:00"), leaf("lastSeenAt", "after", "now"),
        leaf("enrolledAt", "before", {"amount": 3, "unit": "months", "direction": "fromNow"}),
        leaf("enrolledAt", "after", {"amount": 0, "unit": "minutes"}),
        leaf("lastSeenAt", "between", {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59.999Z"}),
        leaf("lastSeenAt", "withinLast", {"amount": 1200, "unit": "months"}),
        leaf("enrolledAt", "notWithinLast", {"amount": 52596000, "unit": "minutes"}),
        leaf("lastSeenAt", "isNull"), leaf("enrolledAt", "isNotNull"),
        leaf("lastSeenAt", "equals", "2024-06-15T12:00:00+02:00"),
        leaf("lastSeenAt", "notEquals", "2024-06-15T10:00:00.0009Z"),
        leaf("enrolledAt", "greaterThan", "0001-01-01T00:00:00Z"),
        leaf("enrolledAt", "greaterThanOrEquals", "2024-02-29T00:00:00-05:00"),
        leaf("lastSeenAt", "lessThan", "9999-12-31T23:59:59.999Z"),
        leaf("lastSeenAt", "lessThanOrEquals", "2024-06-15T10:00:00Z"), op="OR")))
    write(t, "valid-every-list-operator.json", j(group(
        leaf("tags", "contains", "ÄRGER"), leaf("tags", "notContains", "prod"),
        leaf("tags", "hasAny", ["prod", "edge"]), leaf("tags", "hasAll", []),
        leaf("tags", "isEmpty"), leaf("tags", "isNotEmpty"), leaf("tags", "isNull"),
        leaf("tags", "isNotNull"), leaf("tags", "equals", ["edge", "prod", "prod"]),
        leaf("tags", "notEquals", []), op="OR")))
    write(t, "other-test-catalogue-fields.json", j(group(
        leaf("custom.cpu", "greaterThan", 2), leaf("custom.beta", "equals", True),
        leaf("custom.ring", "in", ["canary"]), leaf("custom.installedAt", "withinLast", {"amount": 1, "unit": "days"}),
        leaf("custom.owner", "equals", "12"), op="OR")))
    # Errors, as in the unit tests of src/rules/filter.rs.
    write(t, "invalid-design-messages.json", j(group(
        leaf("hostnam", "equals", "x"), leaf("hostname", "greaterThan", 3), group(op="OR"))))
    write(t, "invalid-every-error-at-once.json", j({"operator": "XOR", "conditions": [
        leaf("status", "equals", "rebooting"),
        leaf("uptimeSeconds", "between", {"from": 10, "to": 1}),
        leaf("lastSeenAt", "withinLast", {"amount": 0, "unit": "days"}),
        leaf("hostname", "matches", "(unclosed"), leaf("tags", "hasAny", "not-a-list"),
        leaf("uptimeSeconds", "isNull", 1), leaf("hostname", "equals"),
        {"field": "hostname", "operator": "like", "value": "x", "extra": 1}]}))
    write(t, "invalid-bare-condition.json", j(leaf("hostname", "isNull")))
    write(t, "invalid-not-an-object.json", "[1]")
    write(t, "invalid-span-amount-too-large.json", j(group(
        leaf("lastSeenAt", "before", {"amount": 1201, "unit": "months"}))))
    write(t, "invalid-span-negative-amount.json", j(group(
        leaf("lastSeenAt", "before", {"amount": -3, "unit": "days", "direction": "up"}))))
    write(t, "invalid-datetime-out-of-range.json", j(group(
        leaf("lastSeenAt", "before", "0001-01-01T00:00:00+01:00"),
        leaf("enrolledAt", "between", {"from": "2024-02-30T00:00:00Z", "to": "2024-01-01"}))))
    write(t, "invalid-datetime-comparison-relative.json", j(group(
        leaf("lastSeenAt", "greaterThan", "now"),
        leaf("enrolledAt", "equals", {"amount": 3, "unit": "days"}),
        leaf("tags", "equals", "prod"))))
    write(t, "invalid-custom-keys.json", j(group(
        leaf("custom.", "equals", "x"), leaf("custom.bad key", "equals", "x"),
        leaf("custom." + "k" * 129, "equals", "x"))))
    # Each limit, at and one past.
    deep = leaf("hostname", "isNull")
    for _ in range(MAX_DEPTH):
        deep = group(deep)
    write(t, "valid-limit-depth-10.json", j(deep))
    write(t, "invalid-limit-depth-11.json", j(group(deep)))
    c = leaf("hostname", "isNull")
    write(t, "valid-limit-256-conditions.json", j(group(*[c] * MAX_CONDITIONS, op="OR")))
    write(t, "invalid-limit-257-conditions.json", j(group(*[c] * (MAX_CONDITIONS + 1), op="OR")))
    write(t, "valid-limit-1000-list-values.json",
          j(group(leaf("uptimeSeconds", "in", list(range(MAX_LIST_VALUES))))))
    write(t, "invalid-limit-1001-list-values.json",
          j(group(leaf("hostname", "in", [str(i) for i in range(MAX_LIST_VALUES + 1)]))))
    # 1024 bytes, the last character two bytes long; then one byte more.
    write(t, "valid-limit-1024-byte-value.json",
          j(group(leaf("hostname", "contains", "a" * (MAX_VALUE_BYTES - 2) + "ß"))))
    write(t, "invalid-limit-1025-byte-value.json",
          j(group(leaf("tags", "hasAll", ["x", "a" * (MAX_VALUE_BYTES - 1) + "ß"]))))
    write(t, "valid-limit-1024-byte-regex.json",
          j(group(leaf("hostname", "matches", "a" * (MAX_REGEX_BYTES - 3) + "€"))))
    write(t, "invalid-limit-1025-byte-regex.json",
          j(group(leaf("hostname", "matches", "a" * (MAX_REGEX_BYTES + 1)))))
    write(t, "invalid-limit-compiled-regex-too-big.json",
          j(group(leaf("hostname", "matches", "\\w{1000}\\w{1000}\\w{1000}"))))
    write(t, "invalid-regex-nested-repetition.json",
          j(group(leaf("hostname", "matches", "a{1000}{1000}"))))
    # Not JSON, or JSON nested past serde_json's limit: the target must simply return.
    write(t, "other-json-nested-200-deep.json", "[" * 200 + "]" * 200)
    write(t, "other-truncated.json", '{"operator": "AND", "conditions": [{"field": "hostname"')


def event(**kw):
    d = {"eventId": "e-1", "orgId": "acme", "deviceId": "gw-17", "sequence": 42}
    d.update(kw)
    return d


def events():
    t = "event_decode"
    # Header: byte 0 = key mode ('0' none, '1' the deviceId, '2' key up to the first newline, '3' tombstone),
    # byte 1 = size limit ('0' 65536, '1' 4096, '2' 64, '3' 1 MiB); see EventInput in testkit/src/fuzz/event_decode.rs.
    examples = ROOT / "schemas" / "examples" / "device-attribute-changes"
    for path in sorted(examples.glob("*.json")):
        key = path.with_suffix(".key")
        body = path.read_bytes()
        if key.exists():
            data = b"21" + key.read_bytes().rstrip(b"\n") + b"\n" + body
        else:
            data = b"01" + body
        write(t, path.name, data)
    write(t, "valid-keyed-by-device.json", "10" + j(event(attributes={"hostname": "gw-17"})))
    write(t, "valid-every-attribute-type.json", "10" + j(event(
        attributes={"hostname": "h", "status": "online", "uptimeSeconds": -0.0, "enrolledAt": "2024-02-29T23:59:59.999999+14:00",
                    "tags": ["a", "A", ""], "custom.rack": 12, "custom.flag": True, "custom.x": None,
                    "custom.big": 1e300},
        removed=["displayName", "displayName", "custom.x"], development=True, firmwareLock=None,
        occurredAt="0001-01-01T00:00:00Z")))
    write(t, "valid-registration-keyed.json", "10" + j(event(register=True)))
    write(t, "valid-limit-ids.json", "10" + j(event(eventId="é" * 128, orgId="o" * 128, deviceId="😀" * 256,
                                                    firmwareLock="v" * 128, sequence=9223372036854775807)))
    write(t, "invalid-invalid_event-ids-one-too-long.json", "00" + j(event(eventId="é" * 129)))
    write(t, "invalid-invalid_event-removed-513.json", "03" + j(event(removed=["hostname"] * 513)))
    write(t, "valid-removed-512.json", "03" + j(event(removed=["hostname"] * 512)))
    write(t, "invalid-invalid_attributes-513-attributes.json",
          "03" + j(event(attributes={f"custom.k{i}": "v" for i in range(513)})))
    write(t, "invalid-invalid_attributes-long-string.json",
          "03" + j(event(attributes={"hostname": "x" * 4097, "tags": ["t"] * 257})))
    write(t, "invalid-invalid_event-control-in-id.json", "00" + j(event(deviceId="gw\u0085-17")))
    write(t, "invalid-key_mismatch-binary-key.json", b"2\x00\xff\xfe\n" + j(event()).encode())
    write(t, "invalid-empty_payload-tombstone.json", "30")
    write(t, "invalid-empty_payload-empty-value.json", "00")
    write(t, "invalid-oversize-65-bytes.json", "02" + j(event(attributes={"hostname": "abcdef"})))
    write(t, "invalid-malformed_json-lone-surrogate.json", "00" + '{"eventId": "\\ud800"}')
    write(t, "invalid-malformed_json-nested-129.json", "00" + "[" * 129 + "]" * 129)
    write(t, "invalid-malformed_json-not-utf8-in-string.json", b"00{\"eventId\": \"\xc3\x28\"}")
    write(t, "invalid-invalid_event-nested-duplicate.json",
          "00" + '{"eventId":"e","orgId":"o","deviceId":"d","sequence":1,"attributes":{"tags":["a"],"tags":["b"]}}')


def eval_choices():
    """eval_vs_reference reads its input as a sequence of choices (arbitrary::Unstructured), so its seeds
    are choice sequences: all-low and all-high bytes (the first and last choice everywhere) and
    pseudo-random ones of several lengths, from a fixed seed. The fuzzer's own finds are added to these."""
    import random
    t = "eval_vs_reference"
    rng = random.Random(20240229)
    write(t, "other-zeros-256", bytes(256))
    write(t, "other-ones-256", bytes([0xFF] * 256))
    write(t, "other-counting-512", bytes(i % 256 for i in range(512)))
    for i, n in enumerate([32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048] * 2):
        write(t, f"other-random-{i:02}-{n}", bytes(rng.randrange(256) for _ in range(n)))


if __name__ == "__main__":
    filters()
    events()
    eval_choices()
