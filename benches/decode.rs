//! Decoding input events (results and reproduction commands in BENCHMARKS.md).
//!
//! - `decode/heartbeat`, `decode/state_change`: a plain event, which the decoder reads straight from its
//!   text (its fast path).
//! - `decode/heartbeat_checked`, `decode/state_change_checked`: the same events with an empty `removed`
//!   list, which means the same but is left to the checked path (a generic JSON value of the whole
//!   message first, then every check): what every event cost before the fast path.
//!
//! Throughput is reported in events per second on one core.

use std::hint::black_box;

use cohort::event::decode;
use cohort::rules::Catalogue;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

fn events(c: &mut Criterion) {
    let catalogue = Catalogue::default();
    let heartbeat = json!({"eventId": "bench-123456", "orgId": "bench-org-3",
        "deviceId": "bench-dev-0000123", "sequence": 123_456,
        "attributes": {"lastSeenAt": "2026-12-05T03:00:00.123Z", "uptimeSeconds": 3_600_123}});
    let state_change = json!({"eventId": "bench-123457", "orgId": "bench-org-3",
        "deviceId": "bench-dev-0000123", "sequence": 123_457,
        "attributes": {"lastSeenAt": "2026-12-05T03:00:00.123Z", "uptimeSeconds": 3_600_123,
            "status": "maintenance", "osVersion": "4.2", "tags": ["prod", "eu", "gateway"]}});
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    for (name, event) in [("heartbeat", heartbeat), ("state_change", state_change)] {
        let key = event["deviceId"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
        let plain = event.to_string().into_bytes();
        let mut with_removed = event.clone();
        with_removed["removed"] = json!([]);
        let checked = with_removed.to_string().into_bytes();
        assert_eq!(
            decode(Some(&key), Some(&plain), &catalogue, 1 << 20),
            decode(Some(&key), Some(&checked), &catalogue, 1 << 20),
        );
        group.bench_function(name, |b| {
            b.iter(|| decode(Some(&key), Some(black_box(&plain)), &catalogue, 1 << 20))
        });
        group.bench_function(format!("{name}_checked"), |b| {
            b.iter(|| decode(Some(&key), Some(black_box(&checked)), &catalogue, 1 << 20))
        });
    }
    group.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
