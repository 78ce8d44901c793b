//! `eval_vs_reference`: the compiled evaluator, its explanation and its time flips against the reference
//! evaluator, on a case built by the `eval_gen` generators.

use arbitrary::Unstructured;
use cohort::rules::time::MAX_MILLIS;
use cohort::rules::{compile, Attributes, FlipTable};
use serde_json::{Map, Value};

use crate::rules::reference::{reference_eval, DAY};

use super::eval_gen::{gen_device, gen_group, gen_now, Gen};
use super::{agrees_with_reference, json_is_time_dependent, test_catalogue};

/// One `eval_vs_reference` case.
#[derive(Debug)]
pub struct EvalCase {
    pub now: i64,
    pub filter: Value,
    pub device: Map<String, Value>,
    /// Fractions (of `u16::MAX`) of the way to the next flip at which the result is checked.
    pub probes: Vec<u16>,
}

impl EvalCase {
    pub fn generate(u: &mut Unstructured<'_>) -> Gen<Self> {
        let now = gen_now(u)?;
        let time_bias = u.ratio(1, 2)?;
        // Smaller filters when time matters: in a big tree some condition that never changes usually
        // decides the result.
        let mut budget = if time_bias { 6 } else { 24 };
        let filter = gen_group(u, now, 1, &mut budget, time_bias)?;
        let device = gen_device(u, now)?;
        let probes = (0..4).map(|_| u.arbitrary()).collect::<Gen<_>>()?;
        Ok(Self {
            now,
            filter,
            device,
            probes,
        })
    }
}

/// Fuzz target `eval_vs_reference`: the input's bytes choose a valid filter, a device and an instant.
pub fn check_eval_vs_reference(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(case) = EvalCase::generate(&mut u) else {
        return;
    };
    in_fresh_thread(|| check_eval_case(&case));
}

/// Runs `f` on a thread of its own. The reference evaluator caches every regex it compiles in a
/// thread-local map that is never emptied: over millions of fuzz inputs on one thread that would grow
/// until the fuzzer's memory limit, a harness artefact rather than a finding. A panic in `f` still
/// reaches the fuzzer (its panic hook aborts) and the replay test (the scope re-raises it).
pub(super) fn in_fresh_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(f);
    });
}

pub fn check_eval_case(case: &EvalCase) {
    let c = test_catalogue();
    let EvalCase {
        now,
        filter,
        device,
        probes,
    } = case;
    let f = compile(filter, &c)
        .unwrap_or_else(|e| panic!("harness: generated filter {filter} does not compile: {e:?}"));
    let attrs = Attributes::from_json(device, &c)
        .unwrap_or_else(|e| panic!("harness: generated device {device:?} does not parse: {e:?}"));
    agrees_with_reference(filter, &f, &attrs, device, *now, &c);
    assert_eq!(
        f.is_time_dependent(),
        json_is_time_dependent(filter, &c),
        "is_time_dependent of {filter}"
    );

    // Time: the result is constant until the next flip, the reference agrees at and around each flip,
    // and asking again at the flip makes progress.
    let mut t = *now;
    for step in 0..6 {
        let held = f.evaluate(&attrs, t);
        let Some(flip) = f.next_flip(&attrs, t) else {
            if !f.is_time_dependent() {
                for later in [t + 1, t + 40 * DAY] {
                    assert_eq!(
                        f.evaluate(&attrs, later),
                        held,
                        "a filter that ignores time changed"
                    );
                }
            }
            break;
        };
        assert!(
            f.is_time_dependent(),
            "a flip for a filter that ignores time"
        );
        assert!(flip > t, "step {step}: next flip {flip} is not after {t}");
        assert!(flip <= MAX_MILLIS, "step {step}: flip {flip} out of range");
        assert_eq!(
            reference_eval(filter, device, flip - 1),
            held,
            "step {step}: the reference changed before the flip {flip} (from {t}): {filter}, device {device:?}"
        );
        for p in probes {
            let inside =
                t + ((flip - 1 - t) as i128 * i128::from(*p) / i128::from(u16::MAX)) as i64;
            assert_eq!(
                reference_eval(filter, device, inside),
                held,
                "step {step}: the reference changed at {inside}, before the flip {flip} (from {t}): {filter}, device {device:?}"
            );
        }
        if flip > MAX_MILLIS - 200 * 365 * DAY {
            // Far beyond `now`: the reference shifts without saturating there.
            break;
        }
        agrees_with_reference(filter, &f, &attrs, device, flip, &c);
        t = flip;
    }

    // The worker's wake-ups: never after a flip, and the reference holds between two of them.
    let table = FlipTable::new([&f]);
    let mut t = *now;
    for step in 0..6 {
        let held = reference_eval(filter, device, t);
        let wake = table.next(&attrs, t);
        if let (Some(flip), wake) = (f.next_flip(&attrs, t), wake) {
            assert!(
                wake.is_some_and(|w| w <= flip),
                "step {step}: wake-up {wake:?} is not at or before the flip {flip} (from {t}): {filter}, device {device:?}"
            );
        }
        let Some(w) = wake else {
            break;
        };
        assert!(
            w > t && w <= MAX_MILLIS,
            "step {step}: wake-up {w} (from {t})"
        );
        if w > MAX_MILLIS - 200 * 365 * DAY {
            break;
        }
        for p in probes
            .iter()
            .map(|p| i128::from(*p))
            .chain([i128::from(u16::MAX)])
        {
            let inside = t + ((w - 1 - t) as i128 * p / i128::from(u16::MAX)) as i64;
            assert_eq!(
                reference_eval(filter, device, inside),
                held,
                "step {step}: the reference changed at {inside}, before the wake-up {w} (from {t}): {filter}, device {device:?}"
            );
        }
        t = w;
    }
}
