//! Cases in keys, headers and orgs: unknown and mismatched orgs, keys that disagree with the payload,
//! header tricks; and stale and duplicate events, which change nothing.

use cohort::event::{HEADER_DETAIL, HEADER_REASON};
use cohort_testkit::app::ORG;
use serde_json::json;

use cohort::event::DeadLetterReason::*;

use super::{org_event, registration, with, Case, Expect, OTHER_ORG, SEQ};

/// Keys and headers, unknown and mismatched orgs, and stale and duplicate events (which change nothing).
pub(super) fn cases() -> Vec<Case> {
    vec![
        // -- keys and headers
        Case::new(
            "a key that is another device",
            Some(b"dev-b"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(
                KeyMismatch,
                "the Kafka key \"dev-b\" is not the deviceId \"dev-a\"",
            ),
        ),
        Case::new(
            "an empty key",
            Some(b""),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "the Kafka key \"\""),
        ),
        Case::new(
            "a key in another case",
            Some(b"DEV-A"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "\"DEV-A\""),
        ),
        Case::new(
            "a key with a trailing space",
            Some(b"dev-a "),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "\"dev-a \""),
        ),
        Case::new(
            "a key that is not UTF-8",
            Some(b"\xff\xfe\x00"),
            Some(with("dev-a", 99, |_| {})),
            Expect::DeadLetter(KeyMismatch, "is not the deviceId"),
        ),
        Case::new(
            "no key and a malformed value",
            None,
            Some(b"{\"eventId\":".to_vec()),
            Expect::DeadLetter(MalformedJson, "not valid JSON"),
        ),
        Case {
            headers: vec![
                (HEADER_REASON, b"oversize".to_vec()),
                (HEADER_DETAIL, b"forged".to_vec()),
                ("orgId", b"globex".to_vec()),
            ],
            ..Case::new(
                "forged dead-letter and org headers",
                Some(b"dev-a"),
                Some(b"[".to_vec()),
                Expect::DeadLetter(MalformedJson, "not valid JSON"),
            )
        },
        // -- unknown and mismatched orgs
        Case::new(
            "an unknown org",
            Some(b"new-1"),
            Some(org_event("nope", "new-1", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org \"nope\""),
        ),
        Case::new(
            "the org in upper case",
            Some(b"new-2"),
            Some(org_event("ACME", "new-2", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org \"ACME\""),
        ),
        Case::new(
            "the org with a trailing space",
            Some(b"new-3"),
            Some(org_event("acme ", "new-3", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org"),
        ),
        Case::new(
            "the org with a zero-width space",
            Some(b"new-4"),
            Some(org_event("acme\u{200b}", "new-4", 1)),
            Expect::DeadLetter(UnknownOrg, "unknown org"),
        ),
        Case::new(
            "a registration in an unknown org",
            Some(b"new-5"),
            Some(registration("nope", "new-5")),
            Expect::DeadLetter(UnknownOrg, "unknown org \"nope\""),
        ),
        Case::new(
            "another org's event for a device",
            Some(b"dev-a"),
            Some(org_event(OTHER_ORG, "dev-a", 99)),
            Expect::DeadLetter(
                OrgMismatch,
                "device \"dev-a\" belongs to org \"acme\", not \"globex\"",
            ),
        ),
        Case::new(
            "an event for another org's device",
            Some(b"gx-1"),
            Some(org_event(ORG, "gx-1", 99)),
            Expect::DeadLetter(
                OrgMismatch,
                "device \"gx-1\" belongs to org \"globex\", not \"acme\"",
            ),
        ),
        Case::new(
            "another org's event for a device, on the partition that does not own it",
            None,
            Some(org_event(OTHER_ORG, "dev-a", 99)),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        )
        .away_from("dev-a"),
        Case::new(
            "another org's registration of a device",
            Some(b"dev-b"),
            Some(registration(OTHER_ORG, "dev-b")),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        ),
        Case::new(
            "another org's registration of a device, on the partition that does not own it",
            None,
            Some(registration(OTHER_ORG, "dev-b")),
            Expect::DeadLetter(OrgMismatch, "belongs to org \"acme\", not \"globex\""),
        )
        .away_from("dev-b"),
        // -- stale and duplicate events change nothing
        Case::new(
            "a duplicate sequence with other attributes",
            Some(b"dev-c"),
            Some(with("dev-c", SEQ, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("duplicate"),
        ),
        Case::new(
            "a stale sequence",
            Some(b"dev-c"),
            Some(with("dev-c", 3, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("stale"),
        ),
        Case::new(
            "a stale sequence on the partition that does not own the device",
            None,
            Some(with("dev-c", 3, |e| {
                e.insert("attributes".into(), json!({"status": "offline"}));
            })),
            Expect::Skipped("stale"),
        )
        .away_from("dev-c"),
        Case::new(
            "a registration of an existing device",
            Some(b"dev-c"),
            Some(registration(ORG, "dev-c")),
            Expect::Skipped("duplicate"),
        ),
        Case::new(
            "a registration of an existing device, on the partition that does not own it",
            None,
            Some(registration(ORG, "dev-c")),
            Expect::Skipped("duplicate"),
        )
        .away_from("dev-c"),
    ]
}
