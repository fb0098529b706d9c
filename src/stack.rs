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
//!   DLP              — PHI detection/redaction (`policy/dlp.rs`): sees exactly what is
//!                      forwarded, and redacts the answer once the guard has judged it
//!   FHIR authz answer — the compartment guard and scope filter on the upstream's own
//!                      answer (`AnswerGuard`: the check `fhir_authz` decided with the request)
//!   proxy            — header hygiene, forwarding headers, upstream call (`proxy/`); on FHIR routes
//!                      the upstream's base URL is rewritten to the gateway's in headers and
//!                      bodies, and SMART discovery is answered (`proxy/fhir_rewrite.rs`)

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, Request, Response};
use tokio::sync::watch;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use crate::config::{Config, ListenerLimits, PolicyConfig, RouteConfig};
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::policy::audit::Audit;
use crate::policy::auth::Auth;
use crate::policy::catch_panic::CatchPanic;
use crate::policy::dlp::Dlp;
use crate::policy::fhir_authz::{AnswerGuard, FhirAuthz};
use crate::policy::head::HeadAsGet;
use crate::policy::limits::{Limits, LimitsConfig};
use crate::policy::mtls::Mtls;
use crate::policy::rate_limit::RateLimitStages;
use crate::policy::validate::Validate;
use crate::policy::{Build, Engines, FromConfig, PolicyLayer};
use crate::proxy::{ProxyService, Upstream};
use crate::respond::{ClaimsCheck, RespondCheck};
use crate::Body;

pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, Rejection>;

/// Effective limits: the listener's, tightened by every policy the route names.
pub fn route_limits(route: &RouteConfig, cfg: &Config, listener: &ListenerLimits) -> LimitsConfig {
    LimitsConfig::tightened(
        listener,
        route
            .policies
            .iter()
            .filter_map(|name| cfg.policies.get(name))
            .filter_map(|p| p.limits.as_ref()),
    )
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
    /// One `auth` policy per policy name: routes sharing a policy share its JWKS fetcher,
    /// rate limit and token cache.
    pub auth: HashMap<String, PolicyLayer<Auth>>,
    /// Every header any policy sets for upstreams; stripped from client requests on all
    /// routes, so a route without the policy cannot be used to smuggle one in.
    pub policy_headers: Arc<[HeaderName]>,
    /// Engine state shared by routes (Redis clients, rate-limit tables, the audit trail).
    pub engines: Engines,
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
            engines: Engines::default(),
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
    let resolve = |f: &str| cfg.resolve(f);
    let mut b = Build {
        policy: "",
        route: &route.name,
        upstream_url: &upstream.cfg.url,
        upstream_aliases: &route.upstream_aliases,
        resolve: &resolve,
        metrics: &shared.metrics,
        stop: &shared.stop,
        engines: &mut shared.engines,
    };
    // Every policy the same way: its section of the route's policy files, compiled by
    // `FromConfig` with the route's build context. The prefix names the section in errors
    // (as `ward check` has always reported them).
    macro_rules! compile {
        ($field:ident, $ty:ty, $prefix:literal) => {
            match section(route, cfg, |p| p.$field.as_ref()) {
                Some((name, c)) => {
                    b.policy = name;
                    Some(<$ty>::from_config(c, &mut b).map_err(|e| format!("{}{e}", $prefix))?)
                }
                None => None,
            }
        };
    }
    let mtls = compile!(mtls, Mtls, "").map(PolicyLayer::new);
    // Routes naming the same `auth` policy share one (its JWKS fetcher and token cache).
    let auth = match section(route, cfg, |p| p.auth.as_ref()).map(|(n, _)| n) {
        Some(name) => Some(match shared.auth.get(name) {
            Some(l) => l.clone(),
            None => {
                let l = compile!(auth, Auth, "").map(PolicyLayer::new);
                let l = l.ok_or("auth: no section")?;
                shared.auth.insert(name.to_owned(), l.clone());
                l
            }
        }),
        None => None,
    };
    // One config, two stages: limits keyed by claims run after authentication.
    let (rate_before, rate_after) = compile!(rate_limit, RateLimitStages, "")
        .map_or((None, None), |r| (r.before_auth, r.after_auth));
    let dlp = compile!(dlp, Dlp, "dlp: ");
    // The validator leaves its token index for a later reader of the request body (DLP);
    // without one, building it would be work no one uses.
    let share = dlp.as_ref().is_some_and(Dlp::scans_requests);
    let validate = compile!(validate, Validate, "validate: ")
        .map(|v| PolicyLayer::new(v.sharing_index(share)));
    let dlp = dlp.map(PolicyLayer::new);
    let fhir_authz = compile!(fhir_authz, FhirAuthz, "").map(PolicyLayer::new);
    let answer_guard = fhir_authz.as_ref().map(|_| PolicyLayer::new(AnswerGuard));
    let audit = compile!(audit, Audit, "").map(PolicyLayer::new);
    let limits = PolicyLayer::new(Limits::from_config(
        &route_limits(route, cfg, listener),
        &mut b,
    )?);
    let head_as_get = (dlp.is_some() || fhir_authz.is_some()).then(|| PolicyLayer::new(HeadAsGet));
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
        .map(|r| PolicyLayer::new(RespondCheck::new(r)));
    let respond_claims = shared
        .respond
        .clone()
        .map(|r| PolicyLayer::new(ClaimsCheck::new(r)));
    let svc = ServiceBuilder::new()
        // audit: outermost, so that every decision of every layer below is recorded
        .option_layer(audit)
        // catch panic: a bug below is answered 500 (and recorded above), never a dropped
        // connection without an audit record
        .layer(PolicyLayer::new(CatchPanic))
        // respond: address and certificate blocks before any work; sees every outcome
        // (denials, DLP blocks, patients read) to feed the breach signals
        .option_layer(respond_outer)
        // identity (mTLS): who is calling, before anything else looks at the request
        .option_layer(mtls)
        // rate limit (pre-auth keys): before any costly check
        .option_layer(rate_before)
        // limits: refuse oversized/slow bodies before any policy reads them
        .layer(limits)
        // authn: bearer token → verified `Claims`
        .option_layer(auth)
        // respond: subject and client blocks, throttles (needs the verified claims)
        .option_layer(respond_claims)
        // rate limit (claim keys): needs the verified claims
        .option_layer(rate_after)
        // HEAD as GET: the policies below decide on the response body, so a HEAD gets the
        // status and headers of the GET they would answer (never the upstream's own)
        .option_layer(head_as_get)
        // FHIR authz: SMART scopes and the patient-compartment guard (needs the claims)
        .option_layer(fhir_authz)
        // validate: FHIR / HL7 v2 bodies, after authorization (only authorised bodies are
        // worth parsing), before anything is forwarded
        .option_layer(validate)
        // DLP: the request body it sees is exactly what is forwarded; it redacts the
        // upstream's answer after the guard below has judged it
        .option_layer(dlp)
        // FHIR authz, answer side: the compartment guard and scopes judge the upstream's
        // own answer, before DLP redacts it (DLP then reuses the guard's index)
        .option_layer(answer_guard)
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
