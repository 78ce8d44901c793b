//! The rule language: everything that decides whether a device belongs in a dynamic group. Pure: no IO,
//! no clocks (callers pass `now`), so the worker, the API's previews and `cohort eval` all share one
//! evaluator.
//!
//! - [`catalogue`]: typed fields (built-in, computed, custom) and their configuration.
//! - [`attrs`]: typed device attributes parsed from device documents.
//! - [`filter`]: the filter tree, its validation with JSON paths, and compilation.
//! - [`compare`]: equality on every type (sets of strings, instants) and order on datetimes.
//! - [`eval`]: evaluation (allocation-free), explanations, and time flips.
//! - [`index`]: field → groups, with value indexing for equality conditions.
//! - [`time`]: instants, spans and calendar arithmetic.

pub mod attrs;
pub mod catalogue;
pub mod compare;
pub mod eval;
pub mod filter;
pub mod index;
pub mod time;

pub use attrs::{AttrValue, Attributes};
pub use catalogue::{Catalogue, CatalogueConfig, FieldId};
pub use eval::{ExplainNode, Explanation, FlipTable};
pub use filter::{compile, validate, CompiledFilter, Operator, ValidationError};
pub use index::{FieldChange, FieldIndex, FieldKeys, Scratch, ValueKey};
pub use time::EpochMillis;
