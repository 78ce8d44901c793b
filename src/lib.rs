//! cohort: continuous dynamic device-group membership and firmware targeting.

pub mod config;
pub mod rules;
