//! `rate_limit` policy: keyed GCRA limits per route, locally (governor) or shared by all
//! replicas (Redis), answered with 429, `Retry-After` and the IETF `RateLimit-Policy` /
//! `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
//!
//! A route's limits run at two places in the stack. Limits keyed by something known
//! before authentication (client certificate, client address, route, a header) run before
//! the token is verified, so a credential-stuffing flood is refused without paying for
//! signature checks. Limits keyed by token claims (`sub`, `client_id`, patient) need the
//! verified claims and run right after authentication. Each limit counts per route: the
//! same policy on two routes gives each route its own buckets.
//!
//! A request takes a cell from every limit it passes, in the order written; the first
//! limit that refuses answers 429 (cells already taken from earlier limits stay taken,
//! as with any multi-limit gateway).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, StatusCode};
use prometheus::IntCounter;
use serde::Deserialize;

use crate::context::Claims;
use crate::context::RequestContext;
use crate::error::Rejection;
use crate::fhir::request::{FhirRequest, Interaction};
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture, PolicyLayer};
use crate::ratelimit::cluster::{BackendError, FailureMode, RedisBackend, RedisConfig};
use crate::ratelimit::local::{Denied, LocalLimiter};
pub use crate::ratelimit::{quota, Per};
use crate::ratelimit::{Housekeeper, Tracked};
use crate::Body;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

/// What a limit counts by.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The client certificate's public key (SHA-256 of the SPKI): stable across renewals
    /// with the same key.
    ClientCert,
    /// Token issuer + `sub`.
    TokenSub,
    /// Token `client_id` (or `azp`).
    ClientId,
    /// SMART launch context `patient` of the token.
    TokenPatient,
    /// Client address: the TCP peer, or — only when the peer is a trusted proxy — the
    /// nearest untrusted address in `X-Forwarded-For`.
    ClientIp,
    /// The route as a whole (protects the upstream, whoever calls).
    Route,
    /// The value of the request header named in `header`.
    Header,
}

impl KeySource {
    /// Needs verified claims, so runs after authentication.
    fn after_auth(self) -> bool {
        matches!(
            self,
            KeySource::TokenSub | KeySource::ClientId | KeySource::TokenPatient
        )
    }
    fn label(self) -> &'static str {
        match self {
            KeySource::ClientCert => "client_cert",
            KeySource::TokenSub => "token_sub",
            KeySource::ClientId => "client_id",
            KeySource::TokenPatient => "token_patient",
            KeySource::ClientIp => "client_ip",
            KeySource::Route => "route",
            KeySource::Header => "header",
        }
    }
}

/// A request without the key (no certificate, no `patient` claim, no header).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenAbsent {
    /// All such requests share one bucket: leaving the key out is no way around the limit.
    #[default]
    Shared,
    /// The limit does not apply to them.
    Skip,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Shown to clients in `RateLimit-Policy` and used as a metric label.
    pub name: String,
    pub key: KeySource,
    /// The header for `key: header`.
    #[serde(default)]
    pub header: Option<String>,
    /// Requests (cost units) per `per`.
    pub rate: u32,
    pub per: Per,
    /// Most cells usable at once; default `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Cost by FHIR interaction (`read`, `search`, `search-type`, `history`, `create`,
    /// `batch`, `operation`, …) or operation (`$everything`); default 1.
    #[serde(default)]
    pub cost: BTreeMap<String, u32>,
    #[serde(default)]
    pub when_absent: WhenAbsent,
}

fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Keys each limit tracks locally per route; beyond it, new keys share one overflow
    /// bucket (see `ratelimit/local.rs`).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    pub limits: Vec<LimitConfig>,
}

/// Interaction names `cost` accepts, besides `$operation` names.
const COST_KEYS: &[&str] = &[
    "capabilities",
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "create",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "search",
    "search-type",
    "search-system",
    "search-compartment",
    "batch",
    "operation",
];

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl RateLimitConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = |k: String, m: String| out.push((k, m));
        match (self.backend, &self.redis) {
            (Backend::Redis, None) => p(
                "redis".into(),
                "backend redis needs a `redis` section".into(),
            ),
            (Backend::Local, Some(_)) => p(
                "redis".into(),
                "a `redis` section needs `backend: redis`".into(),
            ),
            (_, Some(r)) => {
                for (k, m) in r.problems() {
                    p(format!("redis.{k}"), m);
                }
            }
            _ => {}
        }
        if self.max_keys == 0 {
            p("max_keys".into(), "must be greater than 0".into());
        }
        if self.limits.is_empty() {
            p("limits".into(), "at least one limit is needed".into());
        }
        for (i, l) in self.limits.iter().enumerate() {
            let at = |k: &str| format!("limits[{i}].{k}");
            if !valid_name(&l.name) {
                p(at("name"), "1–64 characters from A-Z a-z 0-9 - _ .".into());
            }
            if self.limits[..i].iter().any(|o| o.name == l.name) {
                p(at("name"), format!("limit `{}` is defined twice", l.name));
            }
            match (l.key, &l.header) {
                (KeySource::Header, None) => p(at("header"), "key `header` needs `header`".into()),
                (KeySource::Header, Some(h)) => {
                    if HeaderName::try_from(h.as_str()).is_err() {
                        p(at("header"), format!("`{h}` is not a valid header name"));
                    } else if h.eq_ignore_ascii_case("authorization")
                        || h.eq_ignore_ascii_case("cookie")
                    {
                        // Counting by a credential would keep the credential (hashed) in
                        // the key table; count by the verified identity instead.
                        p(
                            at("header"),
                            "count by `token_sub` or `client_id`, not by a credential header"
                                .into(),
                        );
                    }
                }
                (_, Some(_)) => p(at("header"), "only for `key: header`".into()),
                _ => {}
            }
            if l.rate == 0 {
                p(at("rate"), "must be greater than 0".into());
            }
            // Keeps the Redis script's microsecond arithmetic exact (below 2^53).
            if l.rate > 1_000_000 || l.burst.is_some_and(|b| b > 1_000_000) {
                p(at("rate"), "rate and burst are at most 1000000".into());
            }
            let burst = l.burst.unwrap_or(l.rate);
            if l.burst == Some(0) {
                p(at("burst"), "must be greater than 0".into());
            }
            for (k, c) in &l.cost {
                if !(COST_KEYS.contains(&k.as_str()) || (k.len() > 1 && k.starts_with('$'))) {
                    p(
                        at(&format!("cost.{k}")),
                        format!(
                            "unknown interaction (expected one of {} or a `$operation`)",
                            COST_KEYS.join(", ")
                        ),
                    );
                }
                if *c == 0 {
                    p(at(&format!("cost.{k}")), "must be greater than 0".into());
                } else if *c > burst {
                    p(at(&format!("cost.{k}")), format!("cost {c} is above the burst ({burst}): such a request could never pass"));
                }
            }
        }
        out
    }

    /// Some limit needs verified claims.
    pub fn needs_auth(&self) -> bool {
        self.limits.iter().any(|l| l.key.after_auth())
    }
    pub fn needs_client_cert(&self) -> bool {
        self.limits.iter().any(|l| l.key == KeySource::ClientCert)
    }
}

/// One limit, compiled for one route.
struct Limit {
    name: Arc<str>,
    key: KeySource,
    header: Option<HeaderName>,
    when_absent: WhenAbsent,
    local: Arc<Tracked>,
    /// GCRA emission interval (µs per cell) and burst, for the Redis script.
    interval_us: u64,
    burst: u32,
    cost: BTreeMap<String, NonZeroU32>,
    limited: IntCounter,
    fallback: IntCounter,
    policy_header: HeaderValue,
    /// `prefix:route:limit:` is made per request from these.
    route: Arc<str>,
}

impl Limit {
    fn cost(&self, req: &Request<Body>) -> NonZeroU32 {
        let one = NonZeroU32::MIN;
        if self.cost.is_empty() {
            return one;
        }
        let Some(f) = req.extensions().get::<Arc<FhirRequest>>() else {
            return one;
        };
        let op = f.operation.as_deref().map(|o| format!("${o}"));
        let group = match f.interaction {
            Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::SearchCompartment => Some("search"),
            Interaction::HistoryInstance
            | Interaction::HistoryType
            | Interaction::HistorySystem => Some("history"),
            _ => None,
        };
        op.as_deref()
            .and_then(|o| self.cost.get(o))
            .or_else(|| self.cost.get(f.interaction.label()))
            .or_else(|| group.and_then(|g| self.cost.get(g)))
            .copied()
            .unwrap_or(one)
    }

    /// The bytes this request is counted under, `None` to skip the limit.
    fn key(&self, req: &Request<Body>) -> Option<Vec<u8>> {
        let ext = req.extensions();
        let value: Option<Vec<u8>> = match self.key {
            KeySource::ClientCert => ext
                .get::<Arc<ClientIdentity>>()
                .map(|id| id.spki_sha256.as_bytes().to_vec()),
            KeySource::TokenSub => ext.get::<Arc<Claims>>().map(|c| {
                let mut k = c.iss.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(c.sub.as_bytes());
                k
            }),
            // Client ids and patient ids are only unique per issuer.
            KeySource::ClientId => ext
                .get::<Arc<Claims>>()
                .and_then(|c| c.client_id.as_ref().map(|v| issuer_scoped(&c.iss, v))),
            KeySource::TokenPatient => ext
                .get::<Arc<Claims>>()
                .and_then(|c| c.patient.as_ref().map(|v| issuer_scoped(&c.iss, v))),
            KeySource::ClientIp => ext.get::<RequestContext>().map(|c| match c.client_ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                // One IPv6 client usually holds a whole /64: counting single addresses
                // would let it rotate through 2^64 keys.
                std::net::IpAddr::V6(v6) => v6.octets().get(..8).unwrap_or_default().to_vec(),
            }),
            KeySource::Route => Some(Vec::new()),
            KeySource::Header => {
                let mut values = self
                    .header
                    .as_ref()
                    .map(|name| req.headers().get_all(name).iter())
                    .into_iter()
                    .flatten();
                match (values.next(), values.next()) {
                    (None, _) => None,
                    // Exactly one value without a list separator; anything else could be
                    // read differently upstream (first value, last value, split on ','),
                    // so it is counted in one shared bucket, whatever `when_absent` says.
                    (Some(v), None) if !v.as_bytes().contains(&b',') => Some(v.as_bytes().to_vec()),
                    _ => return Some(vec![2]),
                }
            }
        };
        match value {
            // A tag byte keeps a present value from colliding with the absent bucket.
            Some(mut v) => {
                v.insert(0, 1);
                Some(v)
            }
            None if self.when_absent == WhenAbsent::Shared => Some(vec![0]),
            None => None,
        }
    }

    fn refusal(&self, d: Denied) -> Rejection {
        self.limited.inc();
        // Whole seconds, rounded up: a client retrying at the advertised time succeeds.
        let secs = d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        let mut rej = Rejection::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "request rate limit exceeded; retry later",
        )
        .with_header(RETRY_AFTER, HeaderValue::from(secs))
        .with_header(
            HeaderName::from_static("ratelimit-policy"),
            self.policy_header.clone(),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r=0;t={secs}", self.name)) {
            rej = rej.with_header(HeaderName::from_static("ratelimit"), v);
        }
        rej
    }
}

fn issuer_scoped(iss: &str, v: &str) -> Vec<u8> {
    let mut k = iss.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(v.as_bytes());
    k
}

pub fn backend_unavailable() -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_unavailable",
        "rate limiting is unavailable; retry later",
    )
    .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
}

/// The compiled limits of one route at one place in the stack.
/// The compiled policy for one stage of a route (its limits before or after authentication).
pub struct RateLimit {
    limits: Vec<Limit>,
    redis: Option<Arc<RedisBackend>>,
    /// Failed Redis checks by kind: timeout, error, circuit open (not asked).
    backend_errors: Option<[IntCounter; 3]>,
    housekeeper: Arc<Housekeeper>,
}

impl RateLimit {
    /// What each limit counts this request under, read before any await: the request
    /// itself is not `Sync` and cannot be held across one.
    fn keys(&self, req: &Request<Body>) -> Vec<Option<(Vec<u8>, NonZeroU32)>> {
        self.limits
            .iter()
            .map(|l| l.key(req).map(|k| (k, l.cost(req))))
            .collect()
    }

    async fn admit(&self, keys: Vec<Option<(Vec<u8>, NonZeroU32)>>) -> Result<(), Rejection> {
        for (l, key) in self.limits.iter().zip(keys) {
            let Some((key, cost)) = key else { continue };
            if let Some(redis) = &self.redis {
                let bucket = redis.bucket_key(&l.route, &l.name, &key);
                match redis
                    .check(&bucket, l.interval_us, l.burst, cost.get())
                    .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(d)) => return Err(l.refusal(d)),
                    Err(e) => {
                        // Every check that Redis did not answer counts, the ones the open
                        // breaker skipped included (kind `circuit_open`): an alert on this
                        // metric stays on for the whole outage.
                        if let Some([timeouts, errors, open]) = &self.backend_errors {
                            match e {
                                BackendError::Timeout => timeouts.inc(),
                                BackendError::Redis => errors.inc(),
                                BackendError::CircuitOpen => open.inc(),
                            }
                        }
                        if redis.failure_mode == FailureMode::FailClosed {
                            return Err(backend_unavailable());
                        }
                        // fail_open: this replica's own limiter still holds the line.
                        l.fallback.inc();
                    }
                }
            }
            self.check_local(l, &key, cost)?;
        }
        Ok(())
    }

    /// The decision when no limit needs Redis: synchronous, no boxed detour.
    fn admit_local(&self, req: &Request<Body>) -> Result<(), Rejection> {
        for l in &self.limits {
            if let Some(key) = l.key(req) {
                self.check_local(l, &key, l.cost(req))?;
            }
        }
        Ok(())
    }

    fn check_local(&self, l: &Limit, key: &[u8], cost: NonZeroU32) -> Result<(), Rejection> {
        let local = &l.local.limiter;
        let result = local.check(key, cost);
        if local.is_full() {
            // Free stale keys now rather than at the next sweep.
            self.housekeeper.wake.notify_one();
        }
        result.map_err(|d| l.refusal(d))
    }
}

/// A route's rate limits compiled from one config: two policies, since limits keyed by
/// token claims can only run after authentication while the others run before it (the
/// one place one config makes two layers).
pub struct RateLimitStages {
    pub before_auth: Option<PolicyLayer<RateLimit>>,
    pub after_auth: Option<PolicyLayer<RateLimit>>,
}

impl FromConfig for RateLimitStages {
    type Config = RateLimitConfig;
    fn from_config(cfg: &RateLimitConfig, b: &mut Build<'_>) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("rate_limit: {k}: {m}"));
        }
        // One Redis client per policy name: routes naming the policy share connections.
        let redis = match &cfg.redis {
            Some(rc) => Some(match b.engines.redis.get(b.policy) {
                Some(r) => r.clone(),
                None => {
                    let r = Arc::new(
                        RedisBackend::new(b.policy, rc, b.resolve, b.metrics)
                            .map_err(|e| format!("rate_limit: {e}"))?,
                    );
                    b.engines.redis.insert(b.policy.to_owned(), r.clone());
                    r
                }
            }),
            None => None,
        };
        let stop = b.stop.clone();
        let housekeeper = b
            .engines
            .housekeeper
            .get_or_insert_with(|| Housekeeper::start(stop))
            .clone();
        compile(
            cfg,
            b.route,
            redis,
            b.metrics,
            &housekeeper,
            &mut b.engines.carry,
        )
        .map_err(|e| format!("rate_limit: {e}"))
    }
}

fn compile(
    cfg: &RateLimitConfig,
    route: &str,
    redis: Option<Arc<RedisBackend>>,
    metrics: &Metrics,
    housekeeper: &Arc<Housekeeper>,
    carry: &mut crate::ratelimit::Carry,
) -> Result<RateLimitStages, String> {
    let route_arc: Arc<str> = Arc::from(route);
    let mut before = Vec::new();
    let mut after = Vec::new();
    for l in &cfg.limits {
        let burst = l.burst.unwrap_or(l.rate);
        let period = l.per.duration();
        let (quota, interval) =
            quota(l.rate, l.per, l.burst).map_err(|e| format!("limit `{}`: {e}", l.name))?;
        let definition = format!(
            "{route}\0{}\0{}\0{:?}\0{:?}\0{}",
            l.name, l.rate, l.per, l.burst, cfg.max_keys
        );
        let local = carry.get_or_make(definition, || LocalLimiter::new(quota, cfg.max_keys));
        let labels = [route, l.name.as_str()];
        let tracked = housekeeper.register(
            local,
            metrics.rate_limit_keys.with_label_values(&labels),
            metrics.rate_limit_overflow.with_label_values(&labels),
        );
        let policy_header = HeaderValue::from_str(&format!(
            "\"{}\";q={};w={}",
            l.name,
            l.rate,
            period.as_secs()
        ))
        .map_err(|_| format!("limit `{}`: invalid name", l.name))?;
        let mut cost = BTreeMap::new();
        for (k, c) in &l.cost {
            let c = NonZeroU32::new(*c).ok_or_else(|| format!("limit `{}`: cost 0", l.name))?;
            cost.insert(k.clone(), c);
        }
        let limit = Limit {
            name: Arc::from(l.name.as_str()),
            key: l.key,
            header: l
                .header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok()),
            when_absent: l.when_absent,
            local: tracked,
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst,
            cost,
            limited: metrics.rate_limited.with_label_values(&labels),
            fallback: metrics.rate_limit_fallback.with_label_values(&labels),
            policy_header,
            route: route_arc.clone(),
        };
        tracing::debug!(route, limit = %l.name, key = l.key.label(), "rate limit compiled");
        if l.key.after_auth() {
            after.push(limit);
        } else {
            before.push(limit);
        }
    }
    let backend_errors = redis.as_ref().map(|r| {
        [
            BackendError::Timeout,
            BackendError::Redis,
            BackendError::CircuitOpen,
        ]
        .map(|k| {
            metrics
                .rate_limit_backend_errors
                .with_label_values(&[&r.policy, k.label()])
        })
    });
    let layer = |limits: Vec<Limit>| {
        (!limits.is_empty()).then(|| {
            PolicyLayer::new(RateLimit {
                limits,
                redis: redis.clone(),
                backend_errors: backend_errors.clone(),
                housekeeper: housekeeper.clone(),
            })
        })
    };
    Ok(RateLimitStages {
        before_auth: layer(before),
        after_auth: layer(after),
    })
}

impl Policy for RateLimit {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        if self.redis.is_none() {
            return match self.admit_local(&req) {
                Err(rej) => Box::pin(std::future::ready(Err(rej))),
                Ok(()) => next.run(req),
            };
        }
        let stage = self.clone();
        let next = next.later();
        let keys = stage.keys(&req);
        Box::pin(async move {
            stage.admit(keys).await?;
            next.run(req).await
        })
    }
}
