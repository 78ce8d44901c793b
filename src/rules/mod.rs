//! The rule language: field catalogue, filter validation, compiled evaluation, field index and time flips.
//! Pure: no IO.

pub mod catalogue;
