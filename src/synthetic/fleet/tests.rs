use super::*;
use crate::rules::{compile, Attributes, Catalogue};
use std::collections::BTreeSet;

const T0: EpochMillis = 1_780_000_000_000;

#[test]
fn groups_compile_and_use_every_operator() {
    let catalogue = Catalogue::default();
    let fleet = Fleet::new(1000, 3, 7, T0);
    let groups = fleet.groups(100);
    let mut used = BTreeSet::new();
    fn operators(node: &Value, used: &mut BTreeSet<String>) {
        if let Some(children) = node["conditions"].as_array() {
            for c in children {
                operators(c, used);
            }
        } else {
            used.insert(node["operator"].as_str().unwrap().to_string());
        }
    }
    for g in &groups {
        compile(&g.filter, &catalogue)
            .unwrap_or_else(|e| panic!("{} does not compile: {e:?}", g.filter));
        operators(&g.filter, &mut used);
    }
    assert_eq!(used.len(), Operator::ALL.len(), "{used:?}");
    assert!(groups.iter().all(|g| g.org < 3));
}

/// The fleet is created as the stream keeps it: a heartbeat a minute later (an event that moves
/// nothing but `lastSeenAt`) changes no device's membership of any generated group, time-based ones
/// included. (Both states are evaluated at the same instant, so only the heartbeat differs.)
#[test]
fn a_heartbeat_alone_changes_no_membership() {
    let catalogue = Catalogue::default();
    let fleet = Fleet::new(2000, 2, 11, T0);
    let groups = fleet.groups(200);
    let filters: Vec<_> = groups
        .iter()
        .map(|g| compile(&g.filter, &catalogue).expect("compiles"))
        .collect();
    let time_based = groups
        .iter()
        .filter(|g| g.filter.to_string().contains("lastSeenAt"))
        .count();
    assert!(time_based > 20, "{time_based} groups use lastSeenAt");
    let later = T0 + 60_000;
    for i in 0..fleet.devices {
        let seeded = fleet.attributes(i);
        let mut beat = seeded.clone();
        beat.insert("lastSeenAt".into(), json!(format_millis(later)));
        let before = Attributes::from_json(&seeded, &catalogue).unwrap();
        let after = Attributes::from_json(&beat, &catalogue).unwrap();
        for (group, filter) in groups.iter().zip(&filters) {
            assert_eq!(
                filter.evaluate(&before, later),
                filter.evaluate(&after, later),
                "device {i}, group {}",
                group.filter
            );
        }
    }
}

/// Any `devices` consecutive heartbeats reach every device once, and neighbours are scattered.
#[test]
fn heartbeats_reach_every_device_in_turn() {
    for devices in [1, 7, 500, 1000] {
        let fleet = Fleet::new(devices, 2, 13, T0);
        let mut rng = Rng::new(5);
        let mut seen = vec![0u32; devices];
        for seq in 40..40 + devices as i64 {
            seen[fleet.event(Mix::Heartbeat, &mut rng, seq, T0).device] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1), "{devices}: {seen:?}");
    }
    let fleet = Fleet::new(1000, 2, 13, T0);
    let first = fleet.event(Mix::Heartbeat, &mut Rng::new(5), 1, T0).device;
    let second = fleet.event(Mix::Heartbeat, &mut Rng::new(5), 2, T0).device;
    assert!(first.abs_diff(second) > 1);
}

/// A heartbeat sets `lastSeenAt` to its instant and `uptimeSeconds` to the seeded uptime grown by the
/// time since the fleet was created, and nothing else; a realistic stream is heartbeats with a few
/// state changes.
#[test]
fn heartbeats_grow_uptime_and_change_nothing_else() {
    let fleet = Fleet::new(500, 2, 13, T0);
    let mut rng = Rng::new(5);
    let decode = |e: &SyntheticEvent| -> Map<String, Value> {
        let v: Value = serde_json::from_slice(&e.payload).unwrap();
        v["attributes"].as_object().unwrap().clone()
    };
    for seq in 1..300 {
        let now = T0 + seq * 7_000;
        let e = fleet.event(Mix::Heartbeat, &mut rng, seq, now);
        let attrs = decode(&e);
        let keys: Vec<&str> = attrs.keys().map(String::as_str).collect();
        assert_eq!(keys, vec!["lastSeenAt", "uptimeSeconds"]);
        let seeded = fleet.attributes(e.device)["uptimeSeconds"]
            .as_u64()
            .unwrap();
        assert_eq!(
            attrs["uptimeSeconds"].as_u64(),
            Some(seeded + seq as u64 * 7)
        );
    }
    let changing = (1..5_000)
        .filter(|&seq| decode(&fleet.event(Mix::Realistic, &mut rng, seq, T0)).len() > 2)
        .count();
    // 2% change state, and a state change sets a field about 40% of the time.
    assert!((10..120).contains(&changing), "{changing} of 5,000");
    assert_eq!("realistic".parse::<Mix>(), Ok(Mix::Realistic));
    assert!("bursty".parse::<Mix>().is_err());
}

#[test]
fn the_site_share_is_the_one_events_keep() {
    // One event's step: p' = p (1 - (1 - SET) REMOVED) + (1 - p) SET; the share is its fixed point.
    let step = |p: f64| p * (1.0 - (1.0 - SITE_SET) * SITE_REMOVED) + (1.0 - p) * SITE_SET;
    assert!((step(SITE_SHARE) - SITE_SHARE).abs() < 1e-12);
    let fleet = Fleet::new(20_000, 2, 3, T0);
    let with_site = (0..fleet.devices)
        .filter(|&i| fleet.attributes(i).contains_key("siteId"))
        .count() as f64
        / fleet.devices as f64;
    assert!((with_site - SITE_SHARE).abs() < 0.02, "{with_site}");
}

#[test]
fn devices_and_events_are_valid_and_reproducible() {
    let catalogue = Catalogue::default();
    let fleet = Fleet::new(1000, 3, 7, T0);
    for i in [0, 1, 999] {
        let doc = fleet.attributes(i);
        assert_eq!(doc, fleet.attributes(i));
        Attributes::from_json(&doc, &catalogue).expect("valid attributes");
    }
    assert_eq!(fleet.device_id(42), "dev-0000042");
    let (mut a, mut b) = (Rng::new(1), Rng::new(1));
    for seq in 1..200 {
        let e = fleet.event(Mix::Churn, &mut a, seq, T0);
        assert_eq!(e.payload, fleet.event(Mix::Churn, &mut b, seq, T0).payload);
        let decoded = crate::event::decode(Some(&e.key), Some(&e.payload), &catalogue, 65_536)
            .expect("valid event");
        assert_eq!(decoded.sequence, seq);
        assert_eq!(decoded.org_id, Fleet::org_id(fleet.org_of(e.device)));
    }
}
