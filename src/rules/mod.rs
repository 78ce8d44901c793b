//! The rule language: everything that decides whether a device belongs in a dynamic group. Pure: no IO,
//! no clocks (callers pass `now`), so the worker, the API's previews and `cohort eval` all share one
//! evaluator.
//!
//! - [`time`]: instants, spans and calendar arithmetic.
//! - [`catalogue`]: typed fields (built-in, computed, custom) and their configuration.
//! - [`attrs`]: typed device attributes parsed from device documents.
//! - [`compare`]: equality on every type (sets of strings, instants) and order on datetimes.
//! - [`compiled`]: the compiled form of a filter, and the operators.
//! - [`filter`]: the filter tree operators write, its validation with JSON paths, and its compilation.
//! - [`eval`]: evaluation (allocation-free), also of a candidate given the truth of its changed conditions.
//! - [`explain`]: explanations: why each condition is true or false.
//! - [`flip`]: time flips: when a result can next change with no attribute change.
//! - [`index`]: field → groups: a value index for equality, an interval index for thresholds, a scan for the rest.
//!
//! Dependencies run one way, in the order listed: a module uses only modules above it.
//!
//! ```text
//! time
//! catalogue
//! attrs     → catalogue, time
//! compare   → time
//! compiled  → catalogue, time
//! filter    → catalogue, compiled (and time, in filter::values)
//! eval      → attrs, compare, compiled, time
//! explain   → attrs, catalogue, compare, compiled, eval, time
//! flip      → attrs, catalogue, compiled, eval, time
//! index     → attrs, catalogue, compiled, eval, time
//! ```
//!
//! (Unit tests may use any module: they compile filters with [`filter::compile`] to test the others.)

pub mod attrs;
pub mod catalogue;
pub mod compare;
pub mod compiled;
pub mod eval;
pub mod explain;
pub mod filter;
pub mod flip;
pub mod index;
pub mod time;

pub use attrs::{AttrValue, Attributes};
pub use catalogue::{Catalogue, CatalogueConfig, FieldId};
pub use compiled::{CompiledFilter, Operator};
pub use eval::LeafTruths;
pub use explain::{ExplainNode, Explanation};
pub use filter::{compile, validate, ValidationError};
pub use flip::FlipTable;
pub use index::{Candidate, FieldChange, FieldIndex, FieldKeys, Scratch, ValueKey};
pub use time::EpochMillis;
