//! The rule language's test side, shared by the property tests (`tests/suite/rules_props`) and the fuzz
//! checks ([`crate::fuzz`]).
//!
//! - [`pools`]: value pools where case-insensitive and Unicode comparisons go wrong.
//! - [`reference`](mod@reference): a deliberately simple reference evaluator, written from the rule semantics.
//! - [`gen`]: proptest strategies for instants, devices and valid filters (feature `strategies`).
//! - [`shapes`]: the rule benchmarks' catalogue, words and generator.

pub mod pools;
pub mod reference;
pub mod shapes;

#[cfg(feature = "strategies")]
pub mod gen;
