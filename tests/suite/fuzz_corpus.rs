//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`, crash regressions included) through
//! the checks the fuzz targets run (`cohort_testkit::fuzz`), on the stable toolchain, so that `cargo test`
//! exercises the corpus without cargo-fuzz. See docs/fuzzing.md.

use std::path::PathBuf;

use cohort_testkit::fuzz as checks;

/// Every file of one target's corpus, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap();
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every corpus file of `target`, naming the file that fails.
fn replay(target: &str, min_files: usize, check: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= min_files,
        "fuzz/corpus/{target} has {} files, expected at least {min_files}",
        files.len()
    );
    for (name, bytes) in &files {
        // Printed before the check, so a failing file is named in the test's output.
        eprintln!("fuzz/corpus/{target}/{name}");
        check(bytes);
    }
}

#[test]
fn filter_parse_corpus_passes() {
    replay("filter_parse", 20, checks::check_filter_parse);
}

#[test]
fn eval_vs_reference_corpus_passes() {
    replay("eval_vs_reference", 20, checks::check_eval_vs_reference);
}

#[test]
fn event_decode_corpus_passes() {
    replay("event_decode", 20, checks::check_event_decode);
}

/// The seeds still mean what they were written for: each filter seed named `valid-…` compiles with the
/// default catalogue and each `invalid-…` one does not; each event seed named `valid-…` decodes and each
/// `invalid-<reason>-…` one fails with that reason. (Files the fuzzer added have hash names and are only
/// replayed.)
#[test]
fn named_seeds_keep_their_meaning() {
    use cohort::rules::{compile, Catalogue};
    for (name, bytes) in corpus("filter_parse") {
        let valid = name.starts_with("valid-");
        if !valid && !name.starts_with("invalid-") {
            continue;
        }
        let filter: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("seed {name} is not JSON: {e}"));
        let result = compile(&filter, &Catalogue::default());
        assert_eq!(result.is_ok(), valid, "seed {name}: {:?}", result.err());
    }
    for (name, bytes) in corpus("event_decode") {
        let expected = if name.starts_with("valid-") {
            None
        } else if let Some(rest) = name.strip_prefix("invalid-") {
            let reason = rest.split('-').next().unwrap();
            Some(
                cohort::event::DeadLetterReason::parse(reason)
                    .unwrap_or_else(|| panic!("seed {name}: no reason {reason:?}")),
            )
        } else {
            continue;
        };
        let input = checks::EventInput::parse(&bytes)
            .unwrap_or_else(|| panic!("seed {name} lacks its two header bytes"));
        let result = cohort::event::decode(
            input.key.as_deref(),
            input.payload,
            &cohort::rules::Catalogue::default(),
            input.max_bytes,
        );
        assert_eq!(result.err().map(|e| e.reason), expected, "seed {name}");
    }
}

/// The `eval_vs_reference` corpus tests something: its cases come out both true and false often, and
/// many have a time flip (so the flip checks run).
#[test]
fn eval_corpus_is_not_vacuous() {
    use cohort::rules::{compile, Attributes};
    let (mut matched, mut unmatched, mut flips) = (0usize, 0usize, 0usize);
    for (name, bytes) in corpus("eval_vs_reference") {
        let mut u = checks::Unstructured::new(&bytes);
        let Ok(case) = checks::EvalCase::generate(&mut u) else {
            continue;
        };
        let c = checks::test_catalogue();
        let f = compile(&case.filter, &c).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let attrs =
            Attributes::from_json(&case.device, &c).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        if f.evaluate(&attrs, case.now) {
            matched += 1;
        } else {
            unmatched += 1;
        }
        if f.next_flip(&attrs, case.now).is_some() {
            flips += 1;
        }
    }
    let total = matched + unmatched;
    eprintln!("{total} cases: {matched} match, {unmatched} do not, {flips} have a time flip");
    assert!(
        matched * 5 >= total && unmatched * 5 >= total,
        "{matched} of {total} match"
    );
    assert!(
        flips * 10 >= total,
        "only {flips} of {total} cases have a time flip"
    );
}
