//! Route policies: one file per policy, each `XConfig → X::from_config → X: Policy`,
//! composed in `stack.rs`: mtls, rate_limit, limits, auth, fhir_authz, validate, dlp, audit
//! (and the `head` and `catch_panic` adapters, which have no config). A policy imports
//! leaves (`context`, `error`, `service`, `config::primitives`…) and engines (`fhir`, `dlp`,
//! `ratelimit`…), never another policy, `config/mod.rs`, `stack` or a server
//! (`tests/layering.rs` holds this).
//!
//! Every policy has the same shape: its config type (serde, `deny_unknown_fields`) lives in
//! its file; [`FromConfig`] compiles it once, at load time, into an immutable policy object
//! (keys, regexes, schemas checked there, so a running gateway only holds checked policies);
//! the object implements [`Policy`], and [`PolicyLayer`] makes it a tower layer. The one
//! exception to "config type in the policy's file" is DLP: its config is the DLP engine's,
//! shared with the MLLP listener, so it lives in `dlp/` and `policy::dlp` re-exports it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::ratelimit::cluster::RedisBackend;
use crate::ratelimit::Housekeeper;

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

pub use crate::service::{
    call_next, read_request_body, BytesFuture, Chain, Later, Next, Policy, PolicyFuture,
    PolicyLayer, PolicyService,
};

/// Engine state that outlives one route: shared by the routes of one config generation,
/// and partly carried over from the previous generation on reload.
#[derive(Default)]
pub struct Engines {
    /// One Redis client per rate-limit policy name (connections are shared by routes).
    pub redis: HashMap<String, Arc<RedisBackend>>,
    /// Sweeps the local rate-limit key tables; started with the first limit.
    pub housekeeper: Option<Arc<Housekeeper>>,
    /// Rate-limit state carried over from the previous config generation.
    pub carry: crate::ratelimit::Carry,
    /// The audit trail, when the config has one.
    pub audit: Option<crate::audit::AuditLog>,
}

/// Everything a policy may need, besides its own config, to compile for one route.
pub struct Build<'a> {
    /// The policy file's name: state shared per policy (a Redis client) is keyed by it.
    pub policy: &'a str,
    /// The route the policy is compiled for (metric labels).
    pub route: &'a str,
    /// The route's upstream base URL, and other base URLs the upstream writes itself as.
    pub upstream_url: &'a str,
    pub upstream_aliases: &'a [String],
    /// Resolves a path in the config (key files, certificates) against the config's folder.
    pub resolve: &'a dyn Fn(&str) -> PathBuf,
    pub metrics: &'a Arc<Metrics>,
    /// Fires when the gateway (or this config generation) stops: background tasks end.
    pub stop: &'a watch::Receiver<bool>,
    pub engines: &'a mut Engines,
}

/// How every policy is built: from its own config type and the route's [`Build`] context.
pub trait FromConfig: Sized {
    type Config;
    fn from_config(cfg: &Self::Config, b: &mut Build<'_>) -> Result<Self, String>;
}
