//! OAuth 2.0 token introspection (RFC 7662): asks an authorization server whether an opaque
//! access token is active, authenticating the gateway as a confidential client
//! (`client_secret_basic`, RFC 6749 §2.3.1, or `private_key_jwt`, RFC 7523 §2.2), and caches
//! the answer.
//!
//! What this engine guarantees, so the `auth` policy can fail closed:
//! - an answer is either `Active(claims)`, `Inactive`, or a [`Failure`] (endpoint down, slow,
//!   non-200, oversized or malformed answer); a failure is never cached and never turned into
//!   an allow;
//! - the cache is keyed by SHA-256 of the token (the token itself is never stored, logged or
//!   put in a metric), bounded by `max_cache_entries`, and an active entry never outlives
//!   the token's `exp`: its lifetime is `min(cache_ttl, exp - now)`. Inactive answers are
//!   cached too, for `negative_cache_ttl` (short: a token that becomes active later — rare,
//!   e.g. a clock skew at issuance — is refused for at most that long, while a client
//!   hammering with a bad token costs one call per `negative_cache_ttl`);
//! - single flight: concurrent requests with the same uncached token share one call;
//! - every call has a deadline (`timeout`) covering connect, TLS, answer and body.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::primitives::Dur;
use crate::metrics::Metrics;

// ---------------------------------------------------------------- configuration

/// How the gateway authenticates itself to the introspection endpoint.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with `client_id` and the secret in `client_secret_file`.
    ClientSecretBasic,
    /// A short-lived JWT signed with `private_key_file` (RFC 7523 client assertion).
    PrivateKeyJwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// `https://` URL of the RFC 7662 endpoint.
    pub endpoint: String,
    /// CA bundle for the endpoint's certificate.
    pub ca: String,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// File holding the client secret (`client_secret_basic`); read at load, never echoed.
    #[serde(default)]
    pub client_secret_file: Option<String>,
    /// PEM private key signing client assertions (`private_key_jwt`).
    #[serde(default)]
    pub private_key_file: Option<String>,
    /// Signature algorithm of the client assertion (`private_key_jwt`), e.g. `ES256`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `kid` header of the client assertion, when the server needs it to pick the key.
    #[serde(default)]
    pub kid: Option<String>,
    /// Deadline of one call (connect, TLS, answer and body).
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// How long an active answer is reused (never beyond the token's `exp`); `0s` disables.
    #[serde(default = "default_ttl")]
    pub cache_ttl: Dur,
    /// How long an inactive answer is reused; `0s` disables.
    #[serde(default = "default_negative_ttl")]
    pub negative_cache_ttl: Dur,
    #[serde(default = "default_max_entries")]
    pub max_cache_entries: usize,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_ttl() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_negative_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_entries() -> usize {
    10_000
}

/// Algorithms a client assertion may be signed with (asymmetric only: a shared secret
/// belongs in `client_secret_basic`).
const ASSERTION_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Lifetime of a client assertion: long enough for one call, short enough that a captured
/// one is useless soon (RFC 7523 §3 asks for a short `exp`).
const ASSERTION_LIFETIME: u64 = 60;

impl IntrospectionConfig {
    /// Problems for `ward check`, as (key below `introspection`, message). Never echoes a
    /// secret or key.
    pub fn problems(&self, resolve: &dyn Fn(&str) -> PathBuf) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        fn at(out: &mut Vec<(String, String)>, k: &str, m: &str) {
            out.push((k.to_owned(), m.to_owned()));
        }
        match self.endpoint.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
            _ => at(&mut out, "endpoint", "must be an https:// URL"),
        }
        if let Err(e) = crate::tls::check_ca_bundle(&resolve(&self.ca)) {
            out.push(("ca".into(), e));
        }
        if self.client_id.trim().is_empty() || self.client_id.chars().any(char::is_control) {
            at(
                &mut out,
                "client_id",
                "must not be blank or hold control characters",
            );
        }
        if self.timeout.0 < Duration::from_millis(100) || self.timeout.0 > Duration::from_secs(60) {
            at(&mut out, "timeout", "between 100ms and 60s");
        }
        if self.cache_ttl.0 > Duration::from_secs(3600) {
            at(
                &mut out,
                "cache_ttl",
                "at most 1h (a revoked token stays usable this long)",
            );
        }
        if self.negative_cache_ttl.0 > Duration::from_secs(300) {
            at(&mut out, "negative_cache_ttl", "at most 5m");
        }
        if self.max_cache_entries > 1_000_000 {
            at(&mut out, "max_cache_entries", "at most 1000000");
        }
        match self.client_auth {
            ClientAuth::ClientSecretBasic => {
                for (k, set) in [
                    ("private_key_file", self.private_key_file.is_some()),
                    ("algorithm", self.algorithm.is_some()),
                    ("kid", self.kid.is_some()),
                ] {
                    if set {
                        at(&mut out, k, "only used with client_auth: private_key_jwt");
                    }
                }
                match &self.client_secret_file {
                    None => at(
                        &mut out,
                        "client_secret_file",
                        "required with client_auth: client_secret_basic",
                    ),
                    Some(f) => {
                        if let Err(e) = read_secret(&resolve(f)) {
                            out.push(("client_secret_file".into(), e));
                        }
                    }
                }
            }
            ClientAuth::PrivateKeyJwt => {
                if self.client_secret_file.is_some() {
                    at(
                        &mut out,
                        "client_secret_file",
                        "only used with client_auth: client_secret_basic",
                    );
                }
                if self.kid.as_deref().is_some_and(|k| k.trim().is_empty()) {
                    at(&mut out, "kid", "must not be blank");
                }
                match (&self.private_key_file, &self.algorithm) {
                    (None, _) => at(
                        &mut out,
                        "private_key_file",
                        "required with client_auth: private_key_jwt",
                    ),
                    (_, None) => at(
                        &mut out,
                        "algorithm",
                        "required with client_auth: private_key_jwt",
                    ),
                    (Some(f), Some(a)) => match assertion_alg(a) {
                        None => out.push((
                            "algorithm".into(),
                            format!("unsupported (expected one of {})", ASSERTION_ALGS.join(" ")),
                        )),
                        Some(alg) => {
                            if let Err(e) = load_signing_key(&resolve(f), alg) {
                                out.push(("private_key_file".into(), e));
                            }
                        }
                    },
                }
            }
        }
        out
    }
}

fn assertion_alg(a: &str) -> Option<jsonwebtoken::Algorithm> {
    if !ASSERTION_ALGS.contains(&a) {
        return None;
    }
    a.parse().ok()
}

/// The secret, without the line ending editors add. Errors name the file, never its content.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let data = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let s = data.trim_end_matches(['\r', '\n']);
    if s.trim().is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if s.chars().any(char::is_control) {
        return Err(format!(
            "{} holds control characters (one line expected)",
            path.display()
        ));
    }
    Ok(s.to_owned())
}

fn load_signing_key(
    path: &std::path::Path,
    alg: jsonwebtoken::Algorithm,
) -> Result<jsonwebtoken::EncodingKey, String> {
    use jsonwebtoken::{AlgorithmFamily, EncodingKey};
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    let key = match alg.family() {
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&data),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&data),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&data),
        _ => return Err("unsupported algorithm".into()),
    }
    .map_err(|_| format!("{} is not a PEM private key for {alg:?}", path.display()))?;
    // Sign once now, so a key of the wrong curve or size fails at load, not per request.
    let probe = jsonwebtoken::Header::new(alg);
    jsonwebtoken::encode(&probe, &serde_json::json!({}), &key).map_err(|_| {
        format!(
            "{} cannot sign {alg:?} (wrong key type or curve?)",
            path.display()
        )
    })?;
    Ok(key)
}

// ---------------------------------------------------------------- answers

/// What the authorization server said about a token.
#[derive(Clone)]
pub enum Answer {
    /// `active: true`, with every member of the answer (claims still to be checked by
    /// the policy: issuer, audience, expiry…).
    Active(Arc<Map<String, Value>>),
    /// `active: false`: expired, revoked, unknown, or not for us (RFC 7662 §2.2 says no more).
    Inactive,
}

/// Why no answer could be had. Bounded, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Connect,
    Timeout,
    Status,
    Body,
    Parse,
    Assertion,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status => "status",
            Failure::Body => "body",
            Failure::Parse => "parse",
            Failure::Assertion => "assertion",
        }
    }
}

/// Read an introspection answer: a JSON object whose `active` is a boolean (RFC 7662 §2.2).
/// Anything else — not JSON, not an object, `active` missing or `"true"` as a string — is
/// malformed, never inactive and never active.
pub fn parse_answer(body: &[u8]) -> Result<Answer, Failure> {
    let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::Parse);
    };
    match m.get("active") {
        Some(Value::Bool(true)) => Ok(Answer::Active(Arc::new(m))),
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        _ => Err(Failure::Parse),
    }
}

// ---------------------------------------------------------------- cache

type TokenHash = [u8; 32];

/// Answers by token hash, each with the instant it stops being served.
struct Cache {
    max: usize,
    map: HashMap<TokenHash, (Answer, Instant)>,
}

impl Cache {
    fn get(&mut self, key: &TokenHash, now: Instant) -> Option<Answer> {
        match self.map.get(key) {
            Some((a, until)) if *until > now => Some(a.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: TokenHash, a: Answer, until: Instant, now: Instant) {
        if self.max == 0 || until <= now {
            return;
        }
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            self.map.retain(|_, (_, u)| *u > now);
            if self.map.len() >= self.max {
                // Inactive entries go first: a flood of made-up tokens must not push out
                // the answers for real clients.
                self.map.retain(|_, (a, _)| matches!(a, Answer::Active(_)));
            }
            if self.map.len() >= self.max {
                if let Some(k) = self.map.keys().next().copied() {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(key, (a, until));
    }
}

/// How long an answer may be reused, from `now` (wall clock, as `exp` is): for an active
/// token `min(cache_ttl, exp - now)` — `None` (not cached) without a numeric `exp` or once
/// it has passed; for an inactive one `negative_ttl`.
fn lifetime(
    a: &Answer,
    ttl: Duration,
    negative_ttl: Duration,
    now: SystemTime,
) -> Option<Duration> {
    let d = match a {
        Answer::Inactive => negative_ttl,
        Answer::Active(m) => {
            let exp = m.get("exp").and_then(Value::as_u64)?;
            let exp = UNIX_EPOCH.checked_add(Duration::from_secs(exp))?;
            ttl.min(exp.duration_since(now).ok()?)
        }
    };
    (!d.is_zero()).then_some(d)
}

// ---------------------------------------------------------------- the client

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

enum Credential {
    /// The whole `Authorization: Basic …` value.
    Basic(HeaderValue),
    Assertion {
        key: jsonwebtoken::EncodingKey,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
}

type Flight = Arc<tokio::sync::OnceCell<Result<Answer, Failure>>>;

/// Takes a finished flight out of the in-flight table — and an abandoned one too: if every
/// request waiting on a call went away (clients disconnecting), the last one out removes
/// the entry, so made-up tokens sent by clients that hang up cannot grow the table. Every
/// clone and every drop of a flight happens under the table's lock, so the count read
/// here is exact.
struct FlightGuard<'a> {
    inflight: &'a Mutex<HashMap<TokenHash, Flight>>,
    key: TokenHash,
    flight: Option<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut m = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(f) = self.flight.take() else { return };
        let ours = m.get(&self.key).is_some_and(|x| Arc::ptr_eq(x, &f));
        // Two references: the table's and ours.
        if ours && (f.initialized() || Arc::strong_count(&f) <= 2) {
            m.remove(&self.key);
        }
        drop(f);
    }
}

/// One introspection endpoint with its cache. Built from a checked config.
pub struct Introspector {
    /// The provider name (metric label).
    name: Arc<str>,
    endpoint: http::Uri,
    /// The endpoint as configured: the `aud` of client assertions.
    endpoint_str: String,
    client_id: String,
    credential: Credential,
    client: HttpsClient,
    timeout: Duration,
    ttl: Duration,
    negative_ttl: Duration,
    /// Held for a few instructions at a time, never across an `await`.
    cache: Mutex<Cache>,
    inflight: Mutex<HashMap<TokenHash, Flight>>,
    metrics: Arc<Metrics>,
}

impl Introspector {
    pub fn new(
        name: Arc<str>,
        cfg: &IntrospectionConfig,
        resolve: &dyn Fn(&str) -> PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Introspector, String> {
        if let Some((k, m)) = cfg.problems(resolve).into_iter().next() {
            return Err(format!("introspection.{k}: {m}"));
        }
        let credential = match cfg.client_auth {
            ClientAuth::ClientSecretBasic => {
                let f = cfg
                    .client_secret_file
                    .as_deref()
                    .ok_or("introspection.client_secret_file: required")?;
                let secret = read_secret(&resolve(f))?;
                // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
                let mut pair = form_encode(&cfg.client_id);
                pair.push(':');
                pair.push_str(&form_encode(&secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|_| "introspection: client credentials are not a header value")?;
                v.set_sensitive(true);
                Credential::Basic(v)
            }
            ClientAuth::PrivateKeyJwt => {
                let alg = cfg
                    .algorithm
                    .as_deref()
                    .and_then(assertion_alg)
                    .ok_or("introspection.algorithm: unsupported")?;
                let f = cfg
                    .private_key_file
                    .as_deref()
                    .ok_or("introspection.private_key_file: required")?;
                Credential::Assertion {
                    key: load_signing_key(&resolve(f), alg)?,
                    alg,
                    kid: cfg.kid.clone(),
                }
            }
        };
        let tls = crate::tls::upstream_client_config(&resolve(&cfg.ca), None)?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.timeout.0));
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        Ok(Introspector {
            name,
            endpoint: cfg
                .endpoint
                .parse()
                .map_err(|_| "introspection.endpoint: not a URL")?,
            endpoint_str: cfg.endpoint.clone(),
            client_id: cfg.client_id.clone(),
            credential,
            client: Client::builder(TokioExecutor::new()).build(conn),
            timeout: cfg.timeout.0,
            ttl: cfg.cache_ttl.0,
            negative_ttl: cfg.negative_cache_ttl.0,
            cache: Mutex::new(Cache {
                max: cfg.max_cache_entries,
                map: HashMap::new(),
            }),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// What the authorization server says about `token`, from the cache when it can be.
    pub async fn introspect(&self, token: &str) -> Result<Answer, Failure> {
        let key = crate::identity::sha256(token.as_bytes());
        if let Some(a) = self.cached(&key) {
            return Ok(a);
        }
        let guard = FlightGuard {
            inflight: &self.inflight,
            key,
            flight: Some(
                self.inflight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(key)
                    .or_default()
                    .clone(),
            ),
        };
        let Some(flight) = guard.flight.as_ref() else {
            return Err(Failure::Connect);
        };
        // The first caller runs the call; the others wait for its result. If that caller
        // goes away (its client disconnected), the OnceCell lets the next waiter run it.
        let out = flight
            .get_or_init(|| async {
                // A flight that ended between our cache miss and joining has cached its answer.
                if let Some(a) = self.cached(&key) {
                    return Ok(a);
                }
                let r = self.call(token).await;
                let outcome = match &r {
                    Ok(Answer::Active(_)) => "active",
                    Ok(Answer::Inactive) => "inactive",
                    Err(f) => f.as_str(),
                };
                self.metrics
                    .introspection_calls
                    .with_label_values(&[&self.name, outcome])
                    .inc();
                match &r {
                    Ok(a) => {
                        if let Some(d) = lifetime(a, self.ttl, self.negative_ttl, SystemTime::now())
                        {
                            let now = Instant::now();
                            self.cache
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .put(key, a.clone(), now + d, now);
                        }
                    }
                    Err(f) => {
                        self.metrics
                            .introspection_failures
                            .with_label_values(&[&self.name, f.as_str()])
                            .inc();
                        tracing::warn!(provider = %self.name, reason = f.as_str(), "token introspection failed");
                    }
                }
                r
            })
            .await
            .clone();
        drop(guard);
        out
    }

    fn cached(&self, key: &TokenHash) -> Option<Answer> {
        let a = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key, Instant::now())?;
        let outcome = match a {
            Answer::Active(_) => "active",
            Answer::Inactive => "inactive",
        };
        self.metrics
            .introspection_cache_hits
            .with_label_values(&[&self.name, outcome])
            .inc();
        Some(a)
    }

    /// One POST to the endpoint, within `timeout` from connect to the last body byte.
    async fn call(&self, token: &str) -> Result<Answer, Failure> {
        let mut body = format!("token={}&token_type_hint=access_token", form_encode(token));
        let mut req = Request::post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        match &self.credential {
            Credential::Basic(v) => req = req.header(AUTHORIZATION, v.clone()),
            Credential::Assertion { key, alg, kid } => {
                let jwt = self.assertion(key, *alg, kid.as_deref())?;
                body.push_str("&client_id=");
                body.push_str(&form_encode(&self.client_id));
                body.push_str("&client_assertion_type=");
                body.push_str(&form_encode(
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                body.push_str("&client_assertion=");
                body.push_str(&jwt);
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| Failure::Connect)?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|_| Failure::Connect)?;
            if resp.status() != http::StatusCode::OK {
                return Err(Failure::Status);
            }
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|_| Failure::Body)?
                .to_bytes();
            parse_answer(&body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Failure::Timeout)?
    }

    /// RFC 7523 §3: `iss` = `sub` = client id, `aud` = the endpoint, a fresh `jti`, short `exp`.
    fn assertion(
        &self,
        key: &jsonwebtoken::EncodingKey,
        alg: jsonwebtoken::Algorithm,
        kid: Option<&str>,
    ) -> Result<String, Failure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.endpoint_str,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        jsonwebtoken::encode(&h, &claims, key).map_err(|_| Failure::Assertion)
    }
}

/// `application/x-www-form-urlencoded` for one name or value: unreserved bytes as they
/// are, everything else percent-encoded (space too, never `+`, which some servers misread).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(exp: Option<u64>) -> Answer {
        let mut m = Map::new();
        m.insert("active".into(), Value::Bool(true));
        if let Some(e) = exp {
            m.insert("exp".into(), Value::from(e));
        }
        Answer::Active(Arc::new(m))
    }

    #[test]
    fn lifetime_never_outlives_exp() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(60);
        let neg = Duration::from_secs(5);
        for (exp, want) in [
            (Some(1_000_010), Some(Duration::from_secs(10))),
            (Some(1_000_060), Some(ttl)),
            (Some(1_100_000), Some(ttl)),
            (Some(1_000_000), None),
            (Some(999_999), None),
            (Some(0), None),
            (None, None),
            // Beyond what the clock can hold: not cached (asked again), never cached forever.
            (Some(u64::MAX), None),
        ] {
            assert_eq!(lifetime(&active(exp), ttl, neg, now), want, "exp {exp:?}");
        }
        assert_eq!(lifetime(&Answer::Inactive, ttl, neg, now), Some(neg));
        assert_eq!(
            lifetime(&Answer::Inactive, ttl, Duration::ZERO, now),
            None,
            "negative caching off"
        );
        assert_eq!(
            lifetime(&active(Some(2_000_000)), Duration::ZERO, neg, now),
            None,
            "caching off"
        );
    }

    #[test]
    fn cache_is_bounded_and_expires() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Cache {
            max: 3,
            map: HashMap::new(),
        };
        c.put([1; 32], active(Some(1)), t0 + 10 * s, t0);
        assert!(c.get(&[1; 32], t0 + 9 * s).is_some());
        assert!(c.get(&[1; 32], t0 + 10 * s).is_none(), "served at its end");
        assert!(c.map.is_empty(), "expired entry kept");
        c.put([9; 32], active(Some(1)), t0, t0);
        assert!(c.map.is_empty(), "an already expired answer was cached");
        c.put([1; 32], active(Some(1)), t0 + 10 * s, t0);
        for i in 2..50u8 {
            c.put([i; 32], Answer::Inactive, t0 + 10 * s, t0);
            assert!(c.map.len() <= 3);
        }
        assert!(
            c.get(&[1; 32], t0).is_some(),
            "inactive answers pushed out an active one"
        );
        let mut off = Cache {
            max: 0,
            map: HashMap::new(),
        };
        off.put([1; 32], Answer::Inactive, t0 + s, t0);
        assert!(off.map.is_empty());
    }

    #[test]
    fn abandoned_and_finished_flights_leave_the_table() {
        let table: Mutex<HashMap<TokenHash, Flight>> = Mutex::new(HashMap::new());
        let join = || FlightGuard {
            inflight: &table,
            key: [7; 32],
            flight: Some(table.lock().unwrap().entry([7; 32]).or_default().clone()),
        };
        // Two waiters give up before any answer: the entry goes with the last one.
        let (a, b) = (join(), join());
        drop(a);
        assert_eq!(table.lock().unwrap().len(), 1, "removed under a waiter");
        drop(b);
        assert!(table.lock().unwrap().is_empty(), "abandoned flight leaked");
        // A finished flight goes with the first waiter out.
        let (a, b) = (join(), join());
        assert!(a.flight.as_ref().unwrap().set(Ok(Answer::Inactive)).is_ok());
        drop(a);
        assert!(table.lock().unwrap().is_empty());
        drop(b);
        // A newer flight for the same token is not removed by an older one's waiter.
        let old = join();
        table.lock().unwrap().clear();
        let new = join();
        drop(old);
        assert_eq!(table.lock().unwrap().len(), 1);
        drop(new);
        assert!(table.lock().unwrap().is_empty());
    }

    #[test]
    fn answers_must_say_active_as_a_boolean() {
        assert!(matches!(
            parse_answer(br#"{"active":true,"sub":"x"}"#),
            Ok(Answer::Active(_))
        ));
        assert!(matches!(
            parse_answer(br#"{"active":false}"#),
            Ok(Answer::Inactive)
        ));
        for bad in [
            &br#"{"active":"true"}"#[..],
            br#"{"active":1}"#,
            br#"{"sub":"x"}"#,
            br#"[{"active":true}]"#,
            br#"true"#,
            b"",
            b"<html>",
            br#"{"active":true"#,
            br#"{"active":null}"#,
        ] {
            assert_eq!(
                parse_answer(bad).err(),
                Some(Failure::Parse),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/=&%é"), "a%20b%2Bc%2F%3D%26%25%C3%A9");
        assert_eq!(form_encode("Az09-._~"), "Az09-._~");
    }
}
