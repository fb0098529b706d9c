//! Route policies: one file per policy, each `Config → Layer → Service`, composed in
//! `stack.rs`: mtls, rate_limit, limits, auth, fhir_authz, validate, dlp, audit (and the
//! `head` adapter). A policy imports leaves (`context`, `error`, `service`,
//! `config::primitives`…) and engines (`fhir`, `dlp`, `ratelimit`…), never another policy,
//! `config/mod.rs`, `stack` or a server (`tests/layering.rs` holds this).

pub mod audit;
pub mod auth;
pub mod catch_panic;
pub mod dlp;
pub mod fhir_authz;
pub mod head;
pub mod limits;
pub mod mtls;
pub mod rate_limit;
pub mod validate;

pub use crate::service::{call_next, read_request_body, BytesFuture, PolicyFuture};
