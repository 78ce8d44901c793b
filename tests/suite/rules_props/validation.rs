//! Validation never panics, and a compiled filter's `fields_used` is exactly the fields it mentions.

use std::collections::BTreeSet;

use cohort::rules::{compile, validate, Catalogue, CompiledFilter, FieldId};
use cohort_testkit::rules::gen;
use cohort_testkit::rules::gen::{catalogue, Mutation};
use cohort_testkit::rules::reference::stored_field;
use proptest::prelude::*;
use serde_json::{Map, Value};

use super::flips::is_time_dependent;
use super::{agrees_everywhere, attributes, compiled, config};

/// The stored fields a filter's leaves mention (a computed field counts as its source), by walking the JSON.
fn mentioned_fields(filter: &Value, out: &mut BTreeSet<String>) {
    let Some(node) = filter.as_object() else {
        return;
    };
    if let Some(field) = node.get("field") {
        out.insert(stored_field(field.as_str().unwrap()).to_string());
    } else if let Some(Value::Array(conditions)) = node.get("conditions") {
        for c in conditions {
            mentioned_fields(c, out);
        }
    }
}

fn check_fields_used(
    filter: &Value,
    f: &CompiledFilter,
    c: &Catalogue,
) -> Result<(), TestCaseError> {
    let mut mentioned = BTreeSet::new();
    mentioned_fields(filter, &mut mentioned);
    let names: BTreeSet<String> = f.field_names().iter().cloned().collect();
    prop_assert_eq!(&names, &mentioned, "field_names of {}", filter);
    prop_assert_eq!(names.len(), f.field_names().len(), "field_names repeat");
    let ids: BTreeSet<FieldId> = mentioned.iter().map(|n| c.resolve(n).unwrap()).collect();
    prop_assert_eq!(
        f.fields_used().to_vec(),
        ids.into_iter().collect::<Vec<_>>()
    );
    Ok(())
}

fn mutation_case() -> impl Strategy<Value = (i64, Value, Vec<Mutation>, Map<String, Value>)> {
    gen::now().prop_flat_map(|now| {
        (
            Just(now),
            gen::filter(now),
            prop::collection::vec(gen::mutation(now), 1..=3),
            gen::device(now),
        )
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn validation_never_panics_on_arbitrary_json(value in gen::arbitrary_json()) {
        // A fresh catalogue: arbitrary custom names are interned, and must not crowd the shared one.
        let c = gen::test_catalogue();
        let errors = validate(&value, &c);
        match compile(&value, &c) {
            Ok(f) => {
                prop_assert!(errors.is_empty());
                check_fields_used(&value, &f, &c)?;
            }
            Err(e) => {
                prop_assert!(!e.is_empty(), "compile failed with no error");
                prop_assert_eq!(e, errors);
            }
        }
    }

    #[test]
    fn validation_never_panics_on_mutated_filters((now, filter, mutations, device) in mutation_case()) {
        let c = gen::test_catalogue();
        let mut mutant = filter;
        for m in &mutations {
            gen::apply(&mut mutant, m);
        }
        match compile(&mutant, &c) {
            Ok(f) => {
                // A mutant that is still valid means what the reference says it means.
                check_fields_used(&mutant, &f, &c)?;
                let attrs = attributes(&device, &c);
                agrees_everywhere(&mutant, &f, &attrs, &device, now, &c)?;
                let _ = f.next_flip(&attrs, now);
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in errors {
                    prop_assert!(e.path.starts_with('$'), "error path {:?}", e.path);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn a_compiled_filter_uses_exactly_the_fields_it_mentions(filter in gen::now().prop_flat_map(gen::filter)) {
        let c = catalogue();
        let f = compiled(&filter, c);
        check_fields_used(&filter, &f, c)?;
        prop_assert_eq!(f.is_time_dependent(), is_time_dependent(&filter), "{}", filter);
    }
}
