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
//!   audit            — one record per request whatever happens below; a request the
//!                      trail cannot record is refused before anything else runs
//!   catch panic      — a panic below becomes 500 `internal_error`, recorded by audit
//!   identity (mTLS)  — who is calling must be known before anything is counted
//!   rate limit       — limits keyed by certificate, address, route or header: before
//!                      costly token checks, so a credential-stuffing flood is cheap
//!   limits           — body size and deadline: refuse oversized bodies before any policy
//!                      reads them
//!   authn (JWT)      — bearer token → verified claims
//!   rate limit       — limits keyed by token claims (`sub`, `client_id`, patient)
//!   HEAD as GET      — on routes whose policies read responses: a HEAD is answered with
//!                      the headers of the GET those policies would answer
//!   FHIR authz       — SMART scopes, patient compartment: needs the verified claims
//!   validate         — FHIR R4 / HL7 v2 bodies: only authorised bodies are worth parsing
//!   DLP              — PHI detection/redaction (`policy/dlp.rs`): closest to the upstream,
//!                      sees exactly what is forwarded and first reads what comes back
//!   proxy            — header hygiene, forwarding headers, upstream call (`proxy/`)

use std::sync::Arc;

use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use std::collections::HashMap;

use http::HeaderName;
use tokio::sync::watch;

use crate::config::{Config, ListenerLimits, PolicyConfig, RouteConfig};
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::policy::auth::AuthLayer;
use crate::policy::fhir_authz::FhirAuthzLayer;
use crate::policy::limits::{LimitsConfig, LimitsLayer};
use crate::policy::mtls::MtlsLayer;
use crate::policy::rate_limit::RateLimitBuild;
use crate::proxy::{ProxyService, Upstream};
use crate::ratelimit::cluster::RedisBackend;
use crate::ratelimit::Housekeeper;
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
    route: &'a RouteConfig,
    cfg: &'a Config,
    pick: impl Fn(&'a PolicyConfig) -> Option<&'a T>,
) -> Option<(&'a str, &'a T)> {
    route
        .policies
        .iter()
        .filter_map(|n| cfg.policies.get(n).map(|p| (n.as_str(), p)))
        .find_map(|(n, p)| pick(p).map(|t| (n, t)))
}

/// Shared per-gateway state the route stacks are built from.
pub struct StackShared {
    pub metrics: Arc<Metrics>,
    pub stop: watch::Receiver<bool>,
    /// One `auth` layer per policy name: routes sharing a policy share its JWKS fetcher,
    /// rate limit and token cache.
    pub auth: HashMap<String, AuthLayer>,
    /// Every header any policy sets for upstreams; stripped from client requests on all
    /// routes, so a route without the policy cannot be used to smuggle one in.
    pub policy_headers: Arc<[HeaderName]>,
    /// One Redis client per rate-limit policy name (connections are shared by routes).
    pub redis: HashMap<String, Arc<RedisBackend>>,
    /// Sweeps the local rate-limit key tables; started with the first limit.
    pub housekeeper: Option<Arc<Housekeeper>>,
    /// The audit trail, when the config has one.
    pub audit: Option<crate::audit::AuditLog>,
    /// Rate-limit state carried over from the previous config generation.
    pub carry: crate::ratelimit::Carry,
    /// Detect and respond, when the config has `respond:` (every route).
    pub respond: Option<Arc<crate::respond::Respond>>,
}

impl StackShared {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) -> Self {
        let mut names: Vec<HeaderName> = Vec::new();
        for p in cfg.policies.values() {
            let mtls = p.mtls.iter().filter_map(|m| m.forward_header.as_deref());
            let auth = p
                .auth
                .iter()
                .flat_map(|a| a.forward_claims.values().map(String::as_str));
            for h in mtls.chain(auth) {
                if let Ok(n) = HeaderName::try_from(h) {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        StackShared {
            metrics,
            stop,
            auth: HashMap::new(),
            policy_headers: names.into(),
            redis: HashMap::new(),
            housekeeper: None,
            audit: None,
            carry: Default::default(),
            respond: None,
        }
    }
}

pub fn build(
    route: &RouteConfig,
    cfg: &Config,
    listener: &ListenerLimits,
    upstream: Arc<Upstream>,
    shared: &mut StackShared,
) -> Result<RouteService, String> {
    let mtls = section(route, cfg, |p| p.mtls.as_ref())
        .map(|(_, m)| MtlsLayer::try_from(m))
        .transpose()?;
    let auth = match section(route, cfg, |p| p.auth.as_ref()) {
        Some((name, a)) => Some(match shared.auth.get(name) {
            Some(layer) => layer.clone(),
            None => {
                let layer = AuthLayer::new(
                    a,
                    &|f| cfg.resolve(f),
                    shared.metrics.clone(),
                    shared.stop.clone(),
                )?;
                shared.auth.insert(name.to_owned(), layer.clone());
                layer
            }
        }),
        None => None,
    };
    let rate = match section(route, cfg, |p| p.rate_limit.as_ref()) {
        Some((name, rl)) => {
            let redis = match &rl.redis {
                Some(rc) => Some(match shared.redis.get(name) {
                    Some(b) => b.clone(),
                    None => {
                        let b = Arc::new(
                            RedisBackend::new(name, rc, &|f| cfg.resolve(f))
                                .map_err(|e| format!("rate_limit: {e}"))?,
                        );
                        shared.redis.insert(name.to_owned(), b.clone());
                        b
                    }
                }),
                None => None,
            };
            let hk = shared
                .housekeeper
                .get_or_insert_with(|| Housekeeper::start(shared.stop.clone()))
                .clone();
            crate::policy::rate_limit::build(
                rl,
                &route.name,
                redis,
                &shared.metrics,
                &hk,
                &mut shared.carry,
            )
            .map_err(|e| format!("rate_limit: {e}"))?
        }
        None => RateLimitBuild {
            before_auth: None,
            after_auth: None,
        },
    };
    let validate = section(route, cfg, |p| p.validate.as_ref())
        .map(|(_, v)| {
            crate::policy::validate::ValidateLayer::new(
                v,
                &route.name,
                shared.metrics.validation_failures.clone(),
            )
        })
        .transpose()
        .map_err(|e| format!("validate: {e}"))?;
    let dlp = section(route, cfg, |p| p.dlp.as_ref())
        .map(|(_, d)| {
            crate::policy::dlp::DlpLayer::new(
                d,
                &route.name,
                &|f| cfg.resolve(f),
                shared.metrics.clone(),
            )
        })
        .transpose()
        .map_err(|e| format!("dlp: {e}"))?;
    if section(route, cfg, |p| p.fhir_authz.as_ref()).is_some_and(|(_, f)| f.break_glass.is_some())
    {
        // The route's break-glass counter exists (at 0) before its first use.
        shared.metrics.break_glass.with_label_values(&[&route.name]);
    }
    let fhir_authz = section(route, cfg, |p| p.fhir_authz.as_ref())
        .map(|(_, f)| {
            FhirAuthzLayer::for_upstream(f, shared.metrics.clone(), &upstream.cfg.url)?
                .with_aliases(&route.upstream_aliases)
        })
        .transpose()?;
    let audit = match section(route, cfg, |p| p.audit.as_ref()) {
        Some(_) => Some(crate::policy::audit::AuditLayer::new(
            shared
                .audit
                .clone()
                .ok_or("audit: the config has no top-level `audit:`")?,
        )),
        None => None,
    };
    let head_as_get =
        (dlp.is_some() || fhir_authz.is_some()).then_some(crate::policy::head::HeadAsGetLayer);
    let fhir_rewrite = if route.fhir {
        let upstream_path = route
            .rewrite_prefix
            .as_deref()
            .unwrap_or(&route.path_prefix)
            .trim_end_matches('/');
        let t = &upstream.target;
        let mut bases = vec![format!("{}://{}{upstream_path}", t.scheme, t.authority)];
        bases.extend(route.upstream_aliases.iter().cloned());
        let discovery = section(route, cfg, |p| p.discovery.as_ref()).map(|(_, d)| d);
        Some(Arc::new(
            crate::proxy::fhir_rewrite::FhirRewrite::new(
                &bases,
                discovery,
                route_limits(route, cfg, listener).max_body_bytes,
            )
            .map_err(|e| format!("fhir rewrite: {e}"))?,
        ))
    } else {
        None
    };
    let respond_outer = shared
        .respond
        .clone()
        .map(crate::respond::RespondLayer::new);
    let respond_claims = shared
        .respond
        .clone()
        .map(crate::respond::ClaimsCheckLayer::new);
    let svc = ServiceBuilder::new()
        // audit: outermost, so that every decision of every layer below is recorded
        .option_layer(audit)
        // catch panic: a bug below is answered 500 (and recorded above), never a dropped
        // connection without an audit record
        .layer(crate::policy::catch_panic::CatchPanicLayer)
        // respond: address and certificate blocks before any work; sees every outcome
        // (denials, DLP blocks, patients read) to feed the breach signals
        .option_layer(respond_outer)
        // identity (mTLS): who is calling, before anything else looks at the request
        .option_layer(mtls)
        // rate limit (pre-auth keys): before any costly check
        .option_layer(rate.before_auth)
        // limits: refuse oversized/slow bodies before any policy reads them
        .layer(LimitsLayer::from(route_limits(route, cfg, listener)))
        // authn: bearer token → verified `Claims`
        .option_layer(auth)
        // respond: subject and client blocks, throttles (needs the verified claims)
        .option_layer(respond_claims)
        // rate limit (claim keys): needs the verified claims
        .option_layer(rate.after_auth)
        // HEAD as GET: the policies below decide on the response body, so a HEAD gets the
        // status and headers of the GET they would answer (never the upstream's own)
        .option_layer(head_as_get)
        // FHIR authz: SMART scopes and the patient-compartment guard (needs the claims)
        .option_layer(fhir_authz)
        // validate: FHIR / HL7 v2 bodies, after authorization (only authorised bodies are
        // worth parsing), before anything is forwarded
        .option_layer(validate)
        // DLP: closest to the upstream — the request body it sees is exactly what is
        // forwarded, and it is the first to read the upstream's answer
        .option_layer(dlp)
        // proxy: header hygiene, gateway-set headers, upstream call
        .service(
            ProxyService::new(
                upstream,
                shared.metrics.clone(),
                shared.policy_headers.clone(),
            )
            .with_fhir_rewrite(fhir_rewrite),
        );
    Ok(BoxCloneSyncService::new(svc.map_err(|e: Rejection| e)))
}
