//! The one place where a route's policy layers are composed. Read top to bottom, this is
//! every step a request takes, in order.
//!
//! Before any route stack, the ingress (`server.rs`) has already, for every request:
//!   1. framing guard — refused ambiguous HTTP/1 framing (CL+TE, duplicate CL, odd TE),
//!      oversized or too many headers, slow headers (`conn_guard.rs`);
//!   2. request id — generated, or taken from a trusted proxy, echoed to the client;
//!   3. access log + metrics — one line and one count per request, whatever the outcome;
//!   4. path canonicalisation and routing — encoded slashes, dot segments, `;` on FHIR
//!      routes refused; 404/405 without naming routes (`path.rs`, `router.rs`).
//!
//! Then the route stack, outermost first:
//!   identity (mTLS)  — reserved: who is calling must be known before anything is counted
//!   rate limit       — reserved: keyed by that identity, before costly token checks
//!   limits           — body size and deadline: refuse oversized bodies before any policy
//!                      reads them
//!   authn (JWT)      — reserved
//!   FHIR authz       — reserved: needs the verified claims
//!   validate         — reserved: only authorised bodies are worth parsing
//!   DLP              — reserved: closest to the upstream, sees exactly what is forwarded
//!   proxy            — header hygiene, forwarding headers, upstream call (`proxy/`)

use std::sync::Arc;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use tokio::sync::watch;

use crate::config::{Config, ListenerLimits, PolicyConfig, RouteConfig};
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::policy::auth::AuthLayer;
use crate::policy::limits::{LimitsConfig, LimitsLayer};
use crate::policy::mtls::MtlsLayer;
use crate::proxy::{ProxyService, Upstream};
use crate::Body;

pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, Rejection>;

/// Effective limits: the listener's, tightened by every policy the route names.
pub fn route_limits(route: &RouteConfig, cfg: &Config, listener: &ListenerLimits) -> LimitsConfig {
    let mut l = LimitsConfig {
        max_body_bytes: listener.max_body_bytes,
        body_timeout: listener.body_timeout.0,
    };
    for p in route
        .policies
        .iter()
        .filter_map(|name| cfg.policies.get(name))
    {
        if let Some(pl) = &p.limits {
            if let Some(m) = pl.max_body_bytes {
                l.max_body_bytes = l.max_body_bytes.min(m);
            }
            if let Some(t) = pl.body_timeout {
                l.body_timeout = l.body_timeout.min(t.0);
            }
        }
    }
    l
}

/// The section `pick` of the (at most one) policy of this route that defines it.
fn section<'a, T>(
    route: &RouteConfig,
    cfg: &'a Config,
    pick: impl Fn(&'a PolicyConfig) -> Option<&'a T>,
) -> Option<&'a T> {
    route
        .policies
        .iter()
        .filter_map(|n| cfg.policies.get(n))
        .find_map(pick)
}

pub fn build(
    route: &RouteConfig,
    cfg: &Config,
    listener: &ListenerLimits,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<RouteService, String> {
    let mtls = section(route, cfg, |p| p.mtls.as_ref())
        .map(MtlsLayer::try_from)
        .transpose()?;
    let auth = section(route, cfg, |p| p.auth.as_ref())
        .map(|a| AuthLayer::new(a, &|f| cfg.resolve(f), metrics.clone(), stop.clone()))
        .transpose()?;
    let svc = ServiceBuilder::new()
        // identity (mTLS): who is calling, before anything else looks at the request
        .option_layer(mtls)
        // rate limit: reserved (keyed by that identity)
        // limits: refuse oversized/slow bodies before any policy reads them
        .layer(LimitsLayer::from(route_limits(route, cfg, listener)))
        // authn: bearer token → verified `Claims`
        .option_layer(auth)
        // FHIR authz, validate, DLP: reserved, in that order
        .service(ProxyService::new(upstream, metrics));
    Ok(BoxCloneSyncService::new(svc.map_err(|e: Rejection| e)))
}
