//! Time flips: the result is constant until `next_flip`, and asking again at the flip makes progress; plus
//! the regressions the properties found (calendar-month spans that clamp at a month end).

use cohort::rules::{Attributes, CompiledFilter, FlipTable};
use cohort_testkit::rules::gen::catalogue;
use cohort_testkit::rules::reference::{Kind, DAY};
use cohort_testkit::rules::{gen, reference};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::{agrees_everywhere, attributes, compiled, config, one_leaf};

const YEAR: i64 = 365 * DAY;

pub(super) fn flip_case() -> impl Strategy<Value = (i64, Value, Map<String, Value>, Vec<f64>)> {
    gen::now().prop_flat_map(|now| {
        (
            Just(now),
            gen::time_filter(now),
            gen::device(now),
            prop::collection::vec(0.0..1.0f64, 8),
        )
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn the_result_is_constant_until_the_next_flip((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        prop_assert!(f.is_time_dependent());
        let attrs = attributes(&device, c);
        let at_now = f.evaluate(&attrs, now);
        let flip = f.next_flip(&attrs, now);
        let (end, mut instants) = match flip {
            Some(flip) => {
                prop_assert!(flip > now, "flip {} is not after now {}", flip, now);
                (flip, vec![now, flip - 1, (now + 1).min(flip - 1)])
            }
            None => (now + 5 * YEAR, vec![now + 5 * YEAR - 1]),
        };
        instants.extend(fractions.iter().map(|x| now + ((end - 1 - now) as f64 * x) as i64));
        // The reference agrees at these instants, node by node (the costlier check) …
        for t in &instants {
            agrees_everywhere(&filter, &f, &attrs, &device, *t, c)?;
        }
        if let Some(flip) = flip {
            agrees_everywhere(&filter, &f, &attrs, &device, flip, c)?;
        }
        // … and the result is constant at many more: whole days and calendar months ahead, and UTC
        // midnights (and the millisecond before), where calendar-month spans jump.
        instants.extend((1..=40).map(|k| now + k * DAY));
        instants.extend((1..=24).map(|m| reference::shift(now, m, "months", true)));
        let first_midnight = (now.div_euclid(DAY) + 1) * DAY;
        instants.extend((0..70).flat_map(|k| [first_midnight + k * DAY - 1, first_midnight + k * DAY]));
        for t in instants.into_iter().filter(|t| *t < end) {
            prop_assert_eq!(f.evaluate(&attrs, t), at_now, "changed at {} (now {}, end {})", t, now, end);
        }
    }

    #[test]
    fn the_wake_up_is_never_after_the_flip((now, filter, device, _fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let wake = FlipTable::new([&f]).next(&attrs, now);
        if let Some(w) = wake {
            prop_assert!(w > now, "wake-up {} is not after now {}", w, now);
        }
        match (f.next_flip(&attrs, now), wake) {
            (None, _) => {}
            (Some(flip), Some(w)) => prop_assert!(w <= flip, "wake-up {} is after the flip {}", w, flip),
            (Some(flip), None) => prop_assert!(false, "no wake-up, but a flip at {}", flip),
        }
    }

    /// What the worker does: re-evaluate at each wake-up, and in between nothing changes (checked at the
    /// millisecond before each wake-up, at random instants, and at whole days and UTC midnights).
    #[test]
    fn nothing_changes_between_wake_ups((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let table = FlipTable::new([&f]);
        let mut t = now;
        for step in 0..12 {
            let held = f.evaluate(&attrs, t);
            let end = table.next(&attrs, t);
            let last = end.map_or(t + 5 * YEAR, |w| w - 1);
            prop_assert!(last >= t, "step {}: wake-up {:?} is not after {}", step, end, t);
            let mut instants = vec![last];
            instants.extend(fractions.iter().map(|x| t + ((last - t) as f64 * x) as i64));
            let first_midnight = (t.div_euclid(DAY) + 1) * DAY;
            instants.extend((0..40).flat_map(|k| [first_midnight + k * DAY - 1, first_midnight + k * DAY]));
            for i in instants.into_iter().filter(|i| *i <= last) {
                prop_assert_eq!(f.evaluate(&attrs, i), held, "step {}: changed at {} before the wake-up {:?}", step, i, end);
            }
            let Some(w) = end else { break };
            t = w;
        }
    }

    #[test]
    fn re_evaluating_at_the_flip_makes_progress((now, filter, device, fractions) in flip_case()) {
        let c = catalogue();
        let f = compiled(&filter, c);
        let attrs = attributes(&device, c);
        let mut t = now;
        for step in 0..12 {
            let Some(flip) = f.next_flip(&attrs, t) else { break };
            prop_assert!(flip > t, "step {}: next flip {} is not after {}", step, flip, t);
            let held = f.evaluate(&attrs, t);
            prop_assert_eq!(f.evaluate(&attrs, flip - 1), held, "step {}: changed before the flip", step);
            let x = fractions[step % fractions.len()];
            let inside = t + ((flip - 1 - t) as f64 * x) as i64;
            prop_assert_eq!(f.evaluate(&attrs, inside), held, "step {}: changed at {}", step, inside);
            // The flip is a boundary of some time condition: exactly where off-by-one mistakes show.
            agrees_everywhere(&filter, &f, &attrs, &device, flip, c)?;
            t = flip;
        }
    }
}

// -------------------------------------------------------------------------------------------------------
// Validation.

/// Whether some leaf's truth can change with time alone: `withinLast`, `notWithinLast`, a relative
/// `before`/`after`, or a comparison (not a null test) of a `daysSince…` field.
pub(super) fn is_time_dependent(filter: &Value) -> bool {
    let node = filter.as_object().unwrap();
    if let Some(field) = node.get("field").and_then(Value::as_str) {
        let op = node["operator"].as_str().unwrap();
        return match op {
            "withinLast" | "notWithinLast" => true,
            "before" | "after" => !matches!(&node["value"], Value::String(s) if s != "now"),
            "isNull" | "isNotNull" => false,
            _ => matches!(reference::kind_of(field), Kind::DaysSince(_)),
        };
    }
    node["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(is_time_dependent)
}

// -------------------------------------------------------------------------------------------------------
// Regressions found by the properties above (minimal cases).
//
// Calendar-month spans clamp the day to the end of the month and keep the time of day, so `t - 1 month` is
// not monotone in `t`: at 2024-03-29T23:00Z it is 2024-02-29T23:00Z, at 2024-03-30T00:00Z it is back to
// 2024-02-29T00:00Z. A month-span condition can therefore change truth several times around a month end,
// while `next_flip` searches for one boundary by bisection, as if the change happened once.

/// The first instant in `[from, to)` at which `f`'s result differs from its result at `from`, found by
/// probing every minute (and the millisecond after it), then every millisecond of the minute before the
/// first differing probe. Enough for the hand-written cases below, whose changes last longer than a minute.
fn first_change(f: &CompiledFilter, attrs: &Attributes, from: i64, to: i64) -> Option<i64> {
    let start = f.evaluate(attrs, from);
    let probe = (from..to)
        .step_by(60_000)
        .flat_map(|t| [t, t + 1])
        .find(|t| f.evaluate(attrs, *t) != start)?;
    ((probe - 60_000).max(from)..=probe).find(|t| f.evaluate(attrs, *t) != start)
}

fn single(field: &str, op: &str, value: Value) -> CompiledFilter {
    compiled(
        &one_leaf(json!({"field": field, "operator": op, "value": value})),
        catalogue(),
    )
}

fn device_with(field: &str, value: &str) -> Attributes {
    let doc = json!({ field: value });
    attributes(doc.as_object().unwrap(), catalogue())
}

#[test]
fn next_flip_is_not_later_than_a_month_span_clamped_at_the_month_end_changes() {
    // lastSeenAt withinLast 1 month, last seen 2024-02-29T12:00Z, now 2024-03-01T00:00Z: true now; false
    // from 2024-03-29T12:00:00.001Z (1 month before is 2024-02-29T12:00:00.001Z); true again from
    // 2024-03-30T00:00Z (1 month before is clamped to 2024-02-29T00:00Z); false again from
    // 2024-03-30T12:00:00.001Z; and so on until 2024-04-01T00:00Z.
    let f = single(
        "lastSeenAt",
        "withinLast",
        json!({"amount": 1, "unit": "months"}),
    );
    let attrs = device_with("lastSeenAt", "2024-02-29T12:00:00Z");
    let now = reference::datetime("2024-03-01T00:00:00Z");
    let first = reference::datetime("2024-03-29T12:00:00.001Z");
    assert!(f.evaluate(&attrs, now));
    assert!(!f.evaluate(&attrs, first));
    assert!(f.evaluate(&attrs, first - 1));
    assert_eq!(first_change(&f, &attrs, now, now + 40 * DAY), Some(first));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= first),
        "next_flip at {} is {:?}, but the result already changes at {}",
        cohort::rules::time::format_millis(now),
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(first),
    );
}

#[test]
fn next_flip_is_not_none_while_a_month_span_clamped_at_the_month_end_will_change_again() {
    // Same condition and device, now 2024-03-30T12:00:00.001Z: false now, true again from
    // 2024-03-31T00:00Z.
    let f = single(
        "lastSeenAt",
        "withinLast",
        json!({"amount": 1, "unit": "months"}),
    );
    let attrs = device_with("lastSeenAt", "2024-02-29T12:00:00Z");
    let now = reference::datetime("2024-03-30T12:00:00.001Z");
    let again = reference::datetime("2024-03-31T00:00:00Z");
    assert!(!f.evaluate(&attrs, now));
    assert!(f.evaluate(&attrs, again));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= again),
        "next_flip is {:?}, but the result changes at {}",
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(again),
    );
}

#[test]
fn next_flip_is_not_later_than_a_from_now_month_span_clamped_at_the_month_end_changes() {
    // installedAt after {1 month fromNow}, installed 2024-02-29T06:00Z, now 2024-01-01T00:00Z: true now;
    // false from 2024-01-29T06:00Z (1 month later is 2024-02-29T06:00Z); true again from 2024-01-30T00:00Z
    // (1 month later is clamped to 2024-02-29T00:00Z); false again from 2024-01-30T06:00Z; …
    let f = single(
        "custom.installedAt",
        "after",
        json!({"amount": 1, "unit": "months", "direction": "fromNow"}),
    );
    let attrs = device_with("custom.installedAt", "2024-02-29T06:00:00Z");
    let now = reference::datetime("2024-01-01T00:00:00Z");
    let first = reference::datetime("2024-01-29T06:00:00Z");
    assert_eq!(first_change(&f, &attrs, now, now + 40 * DAY), Some(first));
    let flip = f.next_flip(&attrs, now);
    assert!(
        flip.is_some_and(|flip| flip <= first),
        "next_flip is {:?}, but the result already changes at {}",
        flip.map(cohort::rules::time::format_millis),
        cohort::rules::time::format_millis(first),
    );
}
