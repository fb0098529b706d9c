//! Route policies: one file per policy, each `Config → Layer → Service`, composed in
//! `stack.rs`. This release ships `limits`; identity, rate limits, authentication,
//! FHIR authorization, validation and DLP plug in at their reserved places in the stack.

pub mod limits;
