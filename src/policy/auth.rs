//! `auth` policy: bearer tokens (JWT) from named providers — OAuth2 / SMART on FHIR
//! authorization servers — verified before anything reaches the upstream.
//!
//! Hard rules, each a known way tokens get forged or replayed:
//! - the algorithm is pinned per provider (no `none`, no RS→HS confusion: HS* only for an
//!   explicit shared-secret provider), and the key comes from *our* key set by `kid`;
//!   embedded `jwk`/`jku`/`x5u`/`x5c` headers are never used; unknown `crit` is refused;
//! - `exp`, `iss`, `aud`, `sub` are required (setting an audience alone would accept a token
//!   without `aud`), `nbf` and `iat` are honoured with a configurable leeway; a blank
//!   (empty or whitespace-only) `sub`, `iss`, `aud`, `client_id`, `azp`, `patient` or
//!   forwarded claim is refused, never taken as an identity;
//! - tokens only from `Authorization: Bearer`; a token in the query string is refused;
//! - certificate-bound tokens (RFC 8705 `cnf.x5t#S256`) must arrive on a connection with
//!   that client certificate;
//! - tokens are never logged; the verified-token cache is keyed by a hash of the token and
//!   never serves an entry past its `exp`.
//!
//! A JWKS provider refreshes on an interval and on an unknown `kid` (rate-limited, single
//! flight, each waiting request with its own deadline; no lock is held across a fetch). If no
//! usable key can be had because the JWKS endpoint is down, the answer is 503, not 401:
//! the client's token may be fine.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::config::primitives::Dur;
use crate::context::{RouteId, UpstreamHeaders};
use crate::error::Rejection;
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::oauth::introspect::{Answer, IntrospectionConfig, Introspector};
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::Body;

// ---------------------------------------------------------------- configuration

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamAuthorization {
    /// Pass the client's `Authorization` header on.
    Forward,
    /// Remove it (default: the EHR does not need the client's token in its logs).
    #[default]
    Strip,
    /// Replace it with `upstream_credential`.
    Replace,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub providers: Vec<ProviderConfig>,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
    /// Refuse tokens that are not bound to the client certificate (RFC 8705). Bound tokens
    /// are always checked against the connection's certificate.
    #[serde(default)]
    pub require_certificate_binding: bool,
    /// Claim name → header sent to the upstream (client copies always stripped).
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub upstream_authorization: UpstreamAuthorization,
    /// The full `Authorization` value for `replace`, e.g. `Bearer ${EHR_TOKEN}`.
    #[serde(default)]
    pub upstream_credential: Option<String>,
    /// FHIR routes: let GET/HEAD of exactly `[base]/metadata` and
    /// `[base]/.well-known/smart-configuration` through without a token (SMART clients read
    /// them before they have one). Nothing else: no query string, no other path or method;
    /// a request that carries a token has it checked as usual. Rate limits, audit and DLP
    /// still apply. See `fhir::discovery::anonymous`.
    #[serde(default)]
    pub anonymous_discovery: bool,
}

fn default_max_token() -> usize {
    8192
}
fn default_cache() -> usize {
    10_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Pinned signature algorithms (JWT providers; not used with `introspection`).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// A PEM public key, or a JWKS document (`.json`).
    #[serde(default)]
    pub keys_file: Option<String>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// CA bundle for the JWKS endpoint's certificate.
    #[serde(default)]
    pub jwks_ca: Option<String>,
    #[serde(default = "default_refresh")]
    pub jwks_refresh: Dur,
    /// Minimum time between two fetches triggered by unknown `kid`s.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch: Dur,
    /// HS256/384/512 only, and only when written here explicitly.
    #[serde(default)]
    pub shared_secret: Option<String>,
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Opaque tokens: ask this RFC 7662 endpoint instead of verifying a signature. The
    /// answer's claims are then checked exactly like a JWT's (issuer, audiences, expiry…).
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_min_refetch() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}

/// The signature algorithms a provider may pin (`ward init` picks from these too).
pub const ASYMMETRIC: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
const HMAC: &[&str] = &["HS256", "HS384", "HS512"];

impl AuthConfig {
    /// Problems for `ward check`, as (key path below `auth`, message). Never echoes values.
    pub fn problems(&self, resolve: &dyn Fn(&str) -> std::path::PathBuf) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.providers.is_empty() {
            out.push((
                "providers".into(),
                "at least one provider is required".into(),
            ));
        }
        let mut issuers = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let k = |f: &str| format!("providers[{i}].{f}");
            if p.name.is_empty() {
                out.push((k("name"), "must not be empty".into()));
            }
            if p.issuer.is_empty() || !issuers.insert(p.issuer.as_str()) {
                out.push((k("issuer"), "issuers must be unique and non-empty".into()));
            }
            if p.audiences.iter().any(|a| is_blank(a)) {
                // A blank audience would accept tokens whose `aud` names nobody.
                out.push((k("audiences"), "audiences must not be blank".into()));
            }
            if p.audiences.is_empty() {
                out.push((
                    k("audiences"),
                    "list the audiences this gateway accepts".into(),
                ));
            }
            if let Some(ic) = &p.introspection {
                // The server vouches for the token; there is no signature to pin.
                if !p.algorithms.is_empty() {
                    out.push((
                        k("algorithms"),
                        "not used with introspection (remove it)".into(),
                    ));
                }
                // One provider only: an opaque token names no issuer, so with several
                // providers a token meant for another one would be sent to this server.
                if self.providers.len() != 1 {
                    out.push((
                        k("introspection"),
                        "an introspection provider must be the only provider of its auth policy"
                            .into(),
                    ));
                }
                for (key, m) in ic.problems(resolve) {
                    out.push((k(&format!("introspection.{key}")), m));
                }
            } else if p.algorithms.is_empty() {
                out.push((k("algorithms"), "pin at least one algorithm".into()));
            }
            let sources = [
                p.keys_file.is_some(),
                p.jwks_url.is_some(),
                p.shared_secret.is_some(),
                p.introspection.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                out.push((
                    k("keys_file"),
                    "exactly one of keys_file, jwks_url, shared_secret, introspection".into(),
                ));
            }
            for (j, a) in p.algorithms.iter().enumerate() {
                let hmac = HMAC.contains(&a.as_str());
                if !hmac && !ASYMMETRIC.contains(&a.as_str()) {
                    out.push((
                        format!("providers[{i}].algorithms[{j}]"),
                        format!(
                            "unsupported algorithm (expected one of {}, {})",
                            ASYMMETRIC.join(" "),
                            HMAC.join(" ")
                        ),
                    ));
                } else if hmac != p.shared_secret.is_some() {
                    out.push((format!("providers[{i}].algorithms[{j}]"), "HS* algorithms need a shared_secret provider, and a shared_secret provider allows only HS*".into()));
                }
            }
            if p.jwks_url.is_some() && p.jwks_refresh.0 < Duration::from_secs(10) {
                out.push((k("jwks_refresh"), "at least 10s".into()));
            }
            if p.jwks_url.is_some() && p.jwks_min_refetch.0 < Duration::from_secs(1) {
                out.push((
                    k("jwks_min_refetch"),
                    "at least 1s (it bounds the fetches unknown kids can cause)".into(),
                ));
            }
            if p.leeway.0 > Duration::from_secs(300) {
                out.push((k("leeway"), "at most 5m".into()));
            }
            if let Some(s) = &p.shared_secret {
                if s.len() < 32 {
                    out.push((k("shared_secret"), "must be at least 32 bytes".into()));
                }
            }
            if let Some(u) = &p.jwks_url {
                match u.parse::<http::Uri>() {
                    Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {
                        if p.jwks_ca.is_none() {
                            out.push((
                                k("jwks_ca"),
                                "the CA bundle of the JWKS endpoint is required".into(),
                            ));
                        }
                    }
                    _ => out.push((k("jwks_url"), "must be an https:// URL".into())),
                }
            }
            if let Some(f) = &p.keys_file {
                if let Err(e) = load_keys_file(&resolve(f)) {
                    out.push((k("keys_file"), e));
                }
            }
            if let Some(ca) = &p.jwks_ca {
                if let Err(e) = crate::tls::check_ca_bundle(&resolve(ca)) {
                    out.push((k("jwks_ca"), e));
                }
            }
        }
        if self.max_token_bytes == 0 || self.max_token_bytes > 64 * 1024 {
            out.push(("max_token_bytes".into(), "between 1 and 65536".into()));
        }
        if self.cache_entries > 1_000_000 {
            out.push(("cache_entries".into(), "at most 1000000".into()));
        }
        for h in self.forward_claims.values() {
            if let Err(m) = crate::proxy::headers::check_forward_header(h) {
                out.push((format!("forward_claims.{h}"), m));
            }
        }
        match (self.upstream_authorization, &self.upstream_credential) {
            (UpstreamAuthorization::Replace, None) => out.push((
                "upstream_credential".into(),
                "required with upstream_authorization: replace".into(),
            )),
            (UpstreamAuthorization::Replace, Some(c)) if HeaderValue::from_str(c).is_err() => out
                .push((
                    "upstream_credential".into(),
                    "not a valid header value".into(),
                )),
            (UpstreamAuthorization::Forward | UpstreamAuthorization::Strip, Some(_)) => out.push((
                "upstream_credential".into(),
                "only used with upstream_authorization: replace".into(),
            )),
            _ => {}
        }
        out
    }
}

// ---------------------------------------------------------------- keys

struct KeyEntry {
    kid: Option<String>,
    /// The JWK's `alg`, when it names one: the key then verifies only that algorithm
    /// (a key published for RS256 must not verify an RS512 or PS256 token).
    alg: Option<String>,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<KeyEntry>,
}

impl KeySet {
    fn from_jwks(set: &JwkSet) -> KeySet {
        let keys = set
            .keys
            .iter()
            // `alg` is optional in a JWK (RFC 7517 §4.4); encryption keys never verify.
            .filter(|j| {
                !matches!(
                    j.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|j| {
                DecodingKey::from_jwk(j).ok().map(|key| KeyEntry {
                    kid: j.common.key_id.clone(),
                    alg: j.common.key_algorithm.map(|a| format!("{a:?}")),
                    key,
                })
            })
            .collect();
        KeySet { keys }
    }

    /// Candidate keys for a token: by `kid` when the token names one; otherwise keys
    /// without a kid, or the only key. Only keys of the algorithm's family.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&DecodingKey> {
        let family: AlgorithmFamily = alg.family();
        let name = format!("{alg:?}");
        let fam =
            |e: &&KeyEntry| e.key.family() == family && e.alg.as_ref().is_none_or(|a| *a == name);
        match kid {
            Some(k) => self
                .keys
                .iter()
                .filter(|e| e.kid.as_deref() == Some(k))
                .filter(fam)
                .map(|e| &e.key)
                .collect(),
            None => {
                let unnamed: Vec<&DecodingKey> = self
                    .keys
                    .iter()
                    .filter(|e| e.kid.is_none())
                    .filter(fam)
                    .map(|e| &e.key)
                    .collect();
                if !unnamed.is_empty() {
                    unnamed
                } else if self.keys.len() == 1 {
                    self.keys.iter().filter(fam).map(|e| &e.key).collect()
                } else {
                    Vec::new()
                }
            }
        }
    }
}

fn load_keys_file(path: &std::path::Path) -> Result<KeySet, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    if data.trim_ascii_start().starts_with(b"{") {
        let set: JwkSet = serde_json::from_slice(&data)
            .map_err(|_| format!("{} is not a JWKS document", path.display()))?;
        let ks = KeySet::from_jwks(&set);
        if ks.keys.is_empty() {
            return Err(format!("{} has no usable key", path.display()));
        }
        return Ok(ks);
    }
    let key = DecodingKey::from_rsa_pem(&data)
        .or_else(|_| DecodingKey::from_ec_pem(&data))
        .or_else(|_| DecodingKey::from_ed_pem(&data))
        .map_err(|_| {
            format!(
                "{} is not a PEM public key (RSA, EC or Ed25519) or JWKS",
                path.display()
            )
        })?;
    Ok(KeySet {
        keys: vec![KeyEntry {
            kid: None,
            alg: None,
            key,
        }],
    })
}

type JwksClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

struct Jwks {
    url: http::Uri,
    client: JwksClient,
    min_refetch: Duration,
    /// When the last fetch started and whether one is running. Held for a few
    /// instructions at a time, never across I/O or an `await`.
    state: Mutex<FetchState>,
    /// Bumped when a fetch finishes. A caller subscribes (under `state`) before the
    /// fetch it waits for can finish, so it cannot miss the bump.
    done: tokio::sync::watch::Sender<u64>,
    /// Result of the last fetch (for 503 vs 401).
    healthy: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    running: bool,
}

/// How long a request whose token names an unknown `kid` waits for the JWKS fetch it
/// started or joined. Its own deadline: the fetch (up to 5 s connect + 10 s answer +
/// 10 s body) carries on in the background and serves later requests.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);
/// How long the periodic refresh waits for a fetch (it always ends within this).
const REFRESH_WAIT: Duration = Duration::from_secs(60);

/// Marks the running fetch finished and wakes its waiters, however the fetch ends
/// (even by a panic), so `running` can never stay set and block every later fetch.
struct FetchDone<'a>(&'a Jwks);

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .running = false;
        self.0.done.send_modify(|n| *n = n.wrapping_add(1));
    }
}

pub struct Provider {
    pub name: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: ArcSwap<KeySet>,
    /// Bumped whenever the key set is replaced; cached tokens of older generations are
    /// re-verified.
    generation: std::sync::atomic::AtomicU64,
    jwks: Option<Jwks>,
    /// Set for an introspection provider: tokens are opaque and asked about.
    introspector: Option<Introspector>,
    refresh: Duration,
    metrics: Arc<Metrics>,
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

impl Provider {
    fn new(
        cfg: &ProviderConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| Algorithm::from_str(a).map_err(|_| format!("unsupported algorithm {a}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut jwks = None;
        let mut introspector = None;
        let keys = if let Some(ic) = &cfg.introspection {
            introspector = Some(Introspector::new(
                Arc::from(cfg.name.as_str()),
                ic,
                resolve,
                metrics.clone(),
            )?);
            KeySet::default()
        } else if let Some(f) = &cfg.keys_file {
            load_keys_file(&resolve(f))?
        } else if let Some(secret) = &cfg.shared_secret {
            KeySet {
                keys: vec![KeyEntry {
                    kid: None,
                    alg: None,
                    key: DecodingKey::from_secret(secret.as_bytes())
                        .map_err(|_| "bad shared secret")?,
                }],
            }
        } else if let (Some(url), Some(ca)) = (&cfg.jwks_url, &cfg.jwks_ca) {
            let tls = crate::tls::upstream_client_config(&resolve(ca), None)?;
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(Duration::from_secs(5)));
            let conn = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http1()
                .wrap_connector(http);
            jwks = Some(Jwks {
                url: url.parse().map_err(|_| "bad jwks_url")?,
                client: Client::builder(TokioExecutor::new()).build(conn),
                min_refetch: cfg.jwks_min_refetch.0,
                state: Mutex::new(FetchState::default()),
                done: tokio::sync::watch::Sender::new(0),
                healthy: std::sync::atomic::AtomicBool::new(false),
            });
            KeySet::default()
        } else {
            return Err("provider has no key source".into());
        };
        Ok(Provider {
            name: Arc::from(cfg.name.as_str()),
            issuer: cfg.issuer.clone(),
            audiences: cfg.audiences.clone(),
            algorithms,
            leeway: cfg.leeway.0.as_secs(),
            keys: ArcSwap::from_pointee(keys),
            generation: std::sync::atomic::AtomicU64::new(0),
            jwks,
            introspector,
            refresh: cfg.jwks_refresh.0,
            metrics,
        })
    }

    /// Fetch the JWKS unless one was attempted less than `min_refetch` ago (`force` skips
    /// that check, for the periodic refresh), and wait up to `wait` for it.
    ///
    /// Single flight: at most one fetch runs; callers arriving meanwhile wait for that
    /// one instead of starting another, so a stampede of unknown `kid`s costs at most
    /// one fetch per `min_refetch`. The fetch runs in its own task, so a caller that
    /// gives up (its deadline, or its client went away) neither cancels it nor holds
    /// anything the others need; no lock is held while it runs.
    async fn fetch(self: &Arc<Self>, force: bool, wait: Duration) {
        let Some(j) = &self.jwks else { return };
        let (start, mut done) = {
            let mut st = j
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let done = j.done.subscribe();
            if st.running {
                (false, done)
            } else if !force && st.last_attempt.is_some_and(|t| t.elapsed() < j.min_refetch) {
                return;
            } else {
                st.running = true;
                st.last_attempt = Some(Instant::now());
                (true, done)
            }
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.fetch_now().await });
        }
        // Err: the deadline passed (keep the current keys) or the provider is gone.
        let _ = tokio::time::timeout(wait, done.changed()).await;
    }

    /// One JWKS fetch; installs the keys it gets. Only ever run by [`Provider::fetch`].
    async fn fetch_now(&self) {
        let Some(j) = &self.jwks else { return };
        let _done = FetchDone(j);
        let result = async {
            let req = Request::get(j.url.clone())
                .body(Empty::<Bytes>::new())
                .map_err(|_| "request")?;
            let resp = tokio::time::timeout(Duration::from_secs(10), j.client.request(req))
                .await
                .map_err(|_| "timeout")?
                .map_err(|_| "connect")?;
            if !resp.status().is_success() {
                return Err("status");
            }
            let body = tokio::time::timeout(
                Duration::from_secs(10),
                Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
            )
            .await
            .map_err(|_| "timeout")?
            .map_err(|_| "body")?
            .to_bytes();
            let set: JwkSet = serde_json::from_slice(&body).map_err(|_| "parse")?;
            let ks = KeySet::from_jwks(&set);
            if ks.keys.is_empty() {
                return Err("no_usable_key");
            }
            Ok(ks)
        }
        .await;
        match result {
            Ok(ks) => {
                self.keys.store(Arc::new(ks));
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                j.healthy.store(true, std::sync::atomic::Ordering::Release);
                self.metrics
                    .jwks_refresh
                    .with_label_values(&[&self.name, "ok"])
                    .inc();
            }
            Err(why) => {
                j.healthy.store(false, std::sync::atomic::Ordering::Release);
                self.metrics
                    .jwks_refresh
                    .with_label_values(&[&self.name, why])
                    .inc();
                tracing::warn!(provider = %self.name, reason = why, "JWKS fetch failed; keeping the previous keys");
            }
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn jwks_down(&self) -> bool {
        self.jwks
            .as_ref()
            .is_some_and(|j| !j.healthy.load(std::sync::atomic::Ordering::Acquire))
    }
}

// ---------------------------------------------------------------- verified claims

pub use crate::context::{is_blank, Claims};
pub use crate::error::{claim_invalid, insufficient_scope};

impl Claims {
    fn from_raw(provider: Arc<str>, raw: serde_json::Map<String, Value>) -> Option<Claims> {
        let s = |k: &str| raw.get(k).and_then(Value::as_str).map(str::to_owned);
        let scopes = match raw.get("scope").or_else(|| raw.get("scp")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        Some(Claims {
            provider,
            iss: s("iss")?,
            sub: s("sub")?,
            client_id: s("client_id").or_else(|| s("azp")),
            scopes,
            patient: s("patient"),
            exp: raw.get("exp").and_then(Value::as_u64)?,
            cnf_x5t: raw
                .get("cnf")
                .and_then(|c| c.get("x5t#S256"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            cnf_present: raw.contains_key("cnf"),
            raw,
        })
    }
}

/// Blank means empty once Unicode whitespace is trimmed: `" "` names nobody, and would
/// otherwise be one shared identity for rate limits, audit trails and upstream headers.
/// Other whitespace is kept as is (RFC 7519 compares StringOrURI values exactly).
/// Identity claims with a value that names nobody. jsonwebtoken only checks that the
/// required claims are *present*: a `sub` of `""` would pass, and so would an empty
/// `client_id` or `patient` that later layers would key limits or compartments on.
///
/// - `sub`, `iss` blank, `aud` blank or `[]`: as good as absent — `token_claim_missing`;
/// - `aud` listing a blank or non-string entry, and `client_id`, `azp`, `patient` or a
///   claim forwarded to the upstream that is present but blank (or, for the first three,
///   not a string): malformed — `token_claim_invalid`. An absent optional claim is fine.
fn check_identity_claims(
    raw: &serde_json::Map<String, Value>,
    forward: &[(String, HeaderName)],
) -> Result<(), Rejection> {
    let missing = || invalid("token_claim_missing", "token lacks a required claim");
    let malformed = || invalid("token_claim_invalid", "token has a malformed claim");
    for k in ["sub", "iss"] {
        if raw.get(k).and_then(Value::as_str).is_some_and(is_blank) {
            return Err(missing());
        }
    }
    match raw.get("aud") {
        Some(Value::String(a)) if is_blank(a) => return Err(missing()),
        Some(Value::Array(a)) if a.is_empty() => return Err(missing()),
        Some(Value::Array(a)) if !a.iter().all(|v| v.as_str().is_some_and(|s| !is_blank(s))) => {
            return Err(malformed())
        }
        _ => {}
    }
    for k in ["client_id", "azp", "patient"] {
        match raw.get(k) {
            None => {}
            Some(Value::String(v)) if !is_blank(v) => {}
            Some(_) => return Err(malformed()),
        }
    }
    for (k, _) in forward {
        if raw.get(k).and_then(Value::as_str).is_some_and(is_blank) {
            return Err(malformed());
        }
    }
    Ok(())
}

/// What jsonwebtoken checks in a JWT payload, for an introspection answer (the server
/// vouches for the token, not for these): `iss`, `aud`, `exp`, `sub` required, the issuer
/// ours, one audience ours, `exp`/`nbf`/`iat` honoured with the provider's leeway — the
/// same codes as for a JWT. A `token_type` other than Bearer (a refresh token, a DPoP
/// token whose proof Ward cannot check) is refused.
fn check_introspected_claims(
    p: &Provider,
    raw: &serde_json::Map<String, Value>,
    now: u64,
) -> Result<(), Rejection> {
    let missing = || invalid("token_claim_missing", "token lacks a required claim");
    let malformed = || invalid("token_claim_invalid", "token has a malformed claim");
    for k in ["iss", "aud", "exp", "sub"] {
        if raw.get(k).is_none_or(Value::is_null) {
            return Err(missing());
        }
    }
    let time = |k: &str| match raw.get(k) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(malformed),
    };
    let (exp, nbf, iat) = (time("exp")?, time("nbf")?, time("iat")?);
    if raw.get("sub").and_then(Value::as_str).is_none() {
        return Err(malformed());
    }
    match raw.get("token_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(_) => return Err(malformed()),
    }
    if raw.get("iss").and_then(Value::as_str) != Some(p.issuer.as_str()) {
        return Err(invalid("token_issuer", "token issuer not accepted"));
    }
    let ours = |a: &Value| {
        a.as_str()
            .is_some_and(|a| p.audiences.iter().any(|x| x == a))
    };
    let aud_ok = match raw.get("aud") {
        Some(Value::String(_)) => raw.get("aud").is_some_and(ours),
        Some(Value::Array(a)) => a.iter().any(ours),
        _ => return Err(malformed()),
    };
    if !aud_ok {
        return Err(invalid("token_audience", "token audience not accepted"));
    }
    if exp.is_some_and(|e| e.saturating_add(p.leeway) <= now) {
        return Err(invalid("token_expired", "token has expired"));
    }
    if nbf.is_some_and(|n| n > now.saturating_add(p.leeway))
        || iat.is_some_and(|t| t > now.saturating_add(p.leeway))
    {
        return Err(invalid("token_not_yet_valid", "token is not valid yet"));
    }
    Ok(())
}

/// For policies that read a claim `auth` does not know by name (the FHIR authorization's
/// configurable patient claim): the token is refused as `check_identity_claims` would.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verified tokens by SHA-256 of the token. Bounded; an entry is never served at or after
/// its `exp` (the leeway applies only to the first verification).
type TokenHash = [u8; 32];

struct TokenCache {
    /// Token hash → claims and the key-set generation they were verified against; the
    /// least recently used entry goes when full (`None`: caching is off).
    map: Option<Mutex<lru::LruCache<TokenHash, Verified>>>,
}

/// Verified claims and the key-set generation they were verified against.
type Verified = (Arc<Claims>, u64);

impl TokenCache {
    fn new(max: usize) -> Self {
        TokenCache {
            map: std::num::NonZeroUsize::new(max).map(|n| Mutex::new(lru::LruCache::new(n))),
        }
    }

    /// A cached entry still valid at `now`, verified against key-set generation `gen`
    /// (after a JWKS change — say a leaked key was withdrawn — tokens are re-verified).
    fn get(&self, key: &[u8; 32], now: u64, gen: impl Fn(&str) -> u64) -> Option<Arc<Claims>> {
        let mut m = self.map.as_ref()?.lock().ok()?;
        match m.get(key) {
            Some((c, g)) if c.exp > now && *g == gen(&c.provider) => Some(c.clone()),
            Some(_) => {
                m.pop(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: [u8; 32], c: Arc<Claims>, gen: u64, now: u64) {
        if c.exp <= now {
            return;
        }
        let Some(Ok(mut m)) = self.map.as_ref().map(|m| m.lock()) else {
            return;
        };
        m.put(key, (c, gen));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map
            .as_ref()
            .and_then(|m| m.lock().ok().map(|m| m.len()))
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------- errors

fn invalid(code: &'static str, detail: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNAUTHORIZED, code, detail).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ward\", error=\"invalid_token\""),
    )
}

fn missing() -> Rejection {
    // RFC 6750 §3.1: no error code when the request carried no credentials.
    Rejection::new(
        StatusCode::UNAUTHORIZED,
        "token_missing",
        "a bearer token is required",
    )
    .with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ward\""),
    )
}

fn bad_request(code: &'static str, detail: &'static str) -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, code, detail).with_header(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ward\", error=\"invalid_request\""),
    )
}

fn introspection_unavailable() -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "introspection_unavailable",
        "token introspection is temporarily unavailable",
    )
    .with_header(RETRY_AFTER, HeaderValue::from_static("5"))
}

/// For authorization policies that run after `auth`: 403 with the RFC 6750 error.
fn jwks_unavailable() -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "jwks_unavailable",
        "token keys are temporarily unavailable",
    )
    .with_header(RETRY_AFTER, HeaderValue::from_static("5"))
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> Rejection {
    match e.kind() {
        ErrorKind::ExpiredSignature => invalid("token_expired", "token has expired"),
        ErrorKind::ImmatureSignature => invalid("token_not_yet_valid", "token is not valid yet"),
        ErrorKind::InvalidAudience => invalid("token_audience", "token audience not accepted"),
        ErrorKind::InvalidIssuer => invalid("token_issuer", "token issuer not accepted"),
        ErrorKind::MissingRequiredClaim(_) => {
            invalid("token_claim_missing", "token lacks a required claim")
        }
        ErrorKind::InvalidClaimFormat(_) => {
            invalid("token_claim_invalid", "token has a malformed claim")
        }
        ErrorKind::InvalidSignature => invalid("token_signature", "token signature is invalid"),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => {
            invalid("token_algorithm", "token algorithm not accepted")
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => invalid("token_signature", "token signature is invalid"),
        _ => invalid("token_malformed", "token is malformed"),
    }
}

// ---------------------------------------------------------------- the layer

/// The compiled policy.
/// Route, provider, and their `allow`/`ok` counter.
type AllowedCounter = (Arc<str>, Arc<str>, prometheus::IntCounter);

pub struct Auth {
    providers: Vec<Arc<Provider>>,
    /// The (only) provider introspects opaque tokens: any b64token is accepted in the
    /// header, and the JWT cache is not used (the introspection cache bounds reuse).
    opaque: bool,
    max_token: usize,
    require_binding: bool,
    forward: Vec<(String, HeaderName)>,
    upstream_auth: UpstreamAuthorization,
    anonymous_discovery: bool,
    credential: Option<HeaderValue>,
    cache: TokenCache,
    metrics: Arc<Metrics>,
    /// `ward_authn_total{route,provider,"allow","ok"}` children, resolved on first use: a
    /// label lookup hashes its labels under a lock on every call (the common case, an
    /// accepted token, then costs one short scan).
    allowed: std::sync::Mutex<Vec<AllowedCounter>>,
}

impl FromConfig for Auth {
    type Config = AuthConfig;
    fn from_config(cfg: &AuthConfig, b: &mut Build<'_>) -> Result<Self, String> {
        Auth::new(cfg, b.resolve, b.metrics.clone(), b.stop.clone())
    }
}

impl Auth {
    /// Build a checked policy object; starts JWKS refresh tasks (stopped with `stop`).
    pub fn new(
        cfg: &AuthConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: Arc<Metrics>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems(resolve).into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        let providers = cfg
            .providers
            .iter()
            .map(|p| Provider::new(p, resolve, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        for p in &providers {
            if p.jwks.is_some() {
                let p = p.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    loop {
                        p.fetch(true, REFRESH_WAIT).await;
                        tokio::select! {
                            _ = tokio::time::sleep(p.refresh) => {}
                            _ = crate::shutdown::stopped(&mut stop) => break,
                        }
                    }
                });
            }
        }
        let forward = cfg
            .forward_claims
            .iter()
            .filter_map(|(claim, h)| {
                HeaderName::try_from(h.as_str())
                    .ok()
                    .map(|n| (claim.clone(), n))
            })
            .collect();
        let opaque = providers.iter().any(|p| p.introspector.is_some());
        Ok(Auth {
            providers,
            opaque,
            max_token: cfg.max_token_bytes,
            require_binding: cfg.require_certificate_binding,
            forward,
            upstream_auth: cfg.upstream_authorization,
            anonymous_discovery: cfg.anonymous_discovery,
            credential: cfg
                .upstream_credential
                .as_ref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
            cache: TokenCache::new(cfg.cache_entries),
            metrics,
            allowed: std::sync::Mutex::new(Vec::new()),
        })
    }
}

#[derive(Deserialize)]
struct IssOnly {
    iss: Option<String>,
}

impl Auth {
    fn bearer<'a>(&self, req: &'a Request<Body>) -> Result<&'a str, Rejection> {
        if let Some(q) = req.uri().query() {
            if q.split('&').any(|kv| {
                kv.split('=')
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case("access_token"))
            }) {
                return Err(bad_request(
                    "token_in_query",
                    "tokens are not accepted in the query string",
                ));
            }
        }
        let mut values = req.headers().get_all(AUTHORIZATION).iter();
        let Some(v) = values.next() else {
            return Err(missing());
        };
        if values.next().is_some() {
            return Err(bad_request(
                "token_ambiguous",
                "several Authorization headers",
            ));
        }
        let v = v
            .to_str()
            .map_err(|_| invalid("token_malformed", "token is malformed"))?;
        let (scheme, token) = v
            .split_once(' ')
            .ok_or_else(|| invalid("token_malformed", "token is malformed"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(missing());
        }
        let token = token.trim();
        if token.len() > self.max_token {
            return Err(invalid("token_too_large", "token exceeds the size limit"));
        }
        if token.is_empty() {
            return Err(invalid("token_malformed", "token is malformed"));
        }
        if self.opaque {
            // RFC 6750 §2.1 b64token: nothing else is sent on to the introspection server.
            let body = token.trim_end_matches('=');
            if body.is_empty()
                || !body
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
            {
                return Err(invalid("token_malformed", "token is malformed"));
            }
        } else if token.split('.').count() != 3 {
            return Err(invalid("token_malformed", "token is malformed"));
        }
        Ok(token)
    }

    fn provider_for(&self, token: &str) -> Result<&Arc<Provider>, Rejection> {
        if self.providers.len() == 1 {
            return Ok(&self.providers[0]);
        }
        // Choosing by the unverified issuer is safe: that provider then verifies the
        // signature *and* the issuer.
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssOnly>(token)
            .map_err(|_| invalid("token_malformed", "token is malformed"))?
            .iss
            .ok_or_else(|| invalid("token_issuer", "token issuer not accepted"))?;
        self.providers
            .iter()
            .find(|p| p.issuer == iss)
            .ok_or_else(|| invalid("token_issuer", "token issuer not accepted"))
    }

    async fn verify(&self, token: &str) -> Result<(Arc<Claims>, Arc<str>), (Rejection, Arc<str>)> {
        let unknown: Arc<str> = Arc::from("-");
        let provider = self.provider_for(token).map_err(|r| (r, unknown.clone()))?;
        let pname = provider.name.clone();
        let fail = |r: Rejection| (r, pname.clone());
        if let Some(i) = &provider.introspector {
            return self
                .verify_introspected(provider, i, token)
                .await
                .map(|c| (c, pname.clone()))
                .map_err(fail);
        }
        // Header checks (`crit`, `b64`) happen in jsonwebtoken; `alg: none` does not parse.
        let header = jsonwebtoken::decode_header(token).map_err(|e| fail(map_jwt_error(&e)))?;
        if !provider.algorithms.contains(&header.alg) {
            return Err(fail(invalid(
                "token_algorithm",
                "token algorithm not accepted",
            )));
        }
        let kid = header.kid.as_deref();
        let mut keys = provider.keys.load_full();
        if keys.candidates(kid, header.alg).is_empty() && provider.jwks.is_some() {
            // Unknown kid: maybe a rotation. Refetch (rate-limited) and look again.
            provider.fetch(false, UNKNOWN_KID_WAIT).await;
            keys = provider.keys.load_full();
        }
        let candidates = keys.candidates(kid, header.alg);
        if candidates.is_empty() {
            if keys.keys.is_empty() && provider.jwks_down() {
                return Err(fail(jwks_unavailable()));
            }
            return Err(fail(invalid(
                "token_key_unknown",
                "token signing key is not known",
            )));
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_audience(&provider.audiences);
        v.set_issuer(&[provider.issuer.as_str()]);
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        v.leeway = provider.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut last_err = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &v) {
                Ok(data) => {
                    let now = now_secs();
                    if let Some(iat) = data.claims.get("iat") {
                        match iat.as_u64() {
                            Some(t) if t > now + provider.leeway => {
                                return Err(fail(invalid(
                                    "token_not_yet_valid",
                                    "token is not valid yet",
                                )))
                            }
                            Some(_) => {}
                            None => {
                                return Err(fail(invalid(
                                    "token_claim_invalid",
                                    "token has a malformed claim",
                                )))
                            }
                        }
                    }
                    check_identity_claims(&data.claims, &self.forward).map_err(fail)?;
                    let claims = Claims::from_raw(pname.clone(), data.claims).ok_or_else(|| {
                        fail(invalid(
                            "token_claim_invalid",
                            "token has a malformed claim",
                        ))
                    })?;
                    return Ok((Arc::new(claims), pname));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(fail(last_err.map(|e| map_jwt_error(&e)).unwrap_or_else(
            || invalid("token_signature", "token signature is invalid"),
        )))
    }

    /// An opaque token: the provider's introspection endpoint must say `active: true`,
    /// and then its answer passes the same claim checks a JWT's payload does.
    async fn verify_introspected(
        &self,
        provider: &Provider,
        i: &Introspector,
        token: &str,
    ) -> Result<Arc<Claims>, Rejection> {
        let raw = match i.introspect(token).await {
            Ok(Answer::Active(m)) => m,
            Ok(Answer::Inactive) => {
                return Err(invalid("token_inactive", "token is not active"));
            }
            // Down, slow, non-200 or nonsense, and nothing cached: the token may be fine,
            // but nothing says so. Fail closed, and tell the client to retry.
            Err(_) => return Err(introspection_unavailable()),
        };
        // Blank identities first, as for a JWT (`aud: []` is as good as no audience).
        check_identity_claims(&raw, &self.forward)?;
        check_introspected_claims(provider, &raw, now_secs())?;
        let mut raw = (*raw).clone();
        // RFC 7662 members that say nothing about the subject: not claims of the token.
        raw.remove("active");
        Claims::from_raw(provider.name.clone(), raw)
            .map(Arc::new)
            .ok_or_else(|| invalid("token_claim_invalid", "token has a malformed claim"))
    }

    /// `token` is what [`Auth::bearer`] extracted; `cert` the connection's certificate.
    async fn authenticate(
        &self,
        token: Result<String, Rejection>,
        cert: Option<Arc<ClientIdentity>>,
    ) -> Result<Arc<Claims>, (Rejection, Arc<str>)> {
        let token = token.map_err(|r| (r, Arc::from("-")))?;
        let token = token.as_str();
        let key = crate::identity::sha256(token.as_bytes());
        let now = now_secs();
        let gen_of = |name: &str| {
            self.providers
                .iter()
                .find(|p| &*p.name == name)
                .map_or(u64::MAX, |p| p.generation())
        };
        let (claims, provider) = match self.cache.get(&key, now, gen_of) {
            Some(c) => {
                let p = c.provider.clone();
                (c, p)
            }
            None => {
                let (c, p) = self.verify(token).await?;
                // The generation read after verifying: a refresh racing this request only
                // makes the entry stale sooner, never accepts a withdrawn key. Introspected
                // tokens are cached by the introspector, for `cache_ttl` at most: caching
                // them here until `exp` would hide a revocation.
                if !self.opaque {
                    self.cache.put(key, c.clone(), gen_of(&p), now);
                }
                (c, p)
            }
        };
        // RFC 8705: checked on every request — the cache is per token, not per connection.
        // Any `cnf` other than a matching `x5t#S256` (e.g. DPoP's `jkt`, which Ward cannot
        // check) is refused rather than treated as a plain bearer token.
        match (claims.cnf_present, &claims.cnf_x5t, cert) {
            (true, Some(want), Some(id)) if *want == id.x5t_s256 => {}
            (true, _, _) => {
                return Err((
                    invalid(
                        "token_binding",
                        "token is bound to another client certificate",
                    ),
                    provider,
                ))
            }
            (false, _, _) if self.require_binding => {
                return Err((
                    invalid(
                        "token_unbound",
                        "token is not bound to a client certificate",
                    ),
                    provider,
                ))
            }
            (false, _, _) => {}
        }
        Ok(claims)
    }
}

impl Auth {
    /// `anonymous_discovery`: a discovery read (exactly `metadata` or
    /// `.well-known/smart-configuration`, no token) goes on without claims, marked so the
    /// policies below know why there are none. Counted like every authentication decision.
    fn anonymous(&self, req: &mut Request<Body>, route: &str) -> bool {
        if !self.anonymous_discovery || !crate::fhir::discovery::anonymous(req) {
            return false;
        }
        self.metrics
            .authn
            .with_label_values(&[route, "-", "allow", "anonymous_discovery"])
            .inc();
        if self.upstream_auth == UpstreamAuthorization::Replace {
            if let Some(c) = &self.credential {
                req.headers_mut().insert(AUTHORIZATION, c.clone());
            }
        }
        req.extensions_mut()
            .insert(crate::context::AnonymousDiscovery);
        true
    }
}

impl Auth {
    fn count_allowed(&self, route: &Arc<str>, provider: &Arc<str>) {
        let mut seen = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = seen.iter().find(|(r, p, _)| r == route && p == provider) {
            c.inc();
            return;
        }
        let c = self
            .metrics
            .authn
            .with_label_values(&[route, provider, "allow", "ok"]);
        c.inc();
        // Bounded by routes x providers of the config (both fixed until a reload).
        seen.push((route.clone(), provider.clone(), c));
    }
}

impl Policy for Auth {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let a = self.clone();
        let next = next.later();
        let token = a.bearer(&req).map(str::to_owned);
        let cert = req.extensions().get::<Arc<ClientIdentity>>().cloned();
        let route = req
            .extensions()
            .get::<RouteId>()
            .map(|r| r.0.name.clone())
            .unwrap_or_else(|| Arc::from("-"));
        if a.anonymous(&mut req, &route) {
            return next.run(req);
        }
        Box::pin(async move {
            let result = a.authenticate(token, cert).await;
            let claims = match result {
                Ok(c) => {
                    a.count_allowed(&route, &c.provider);
                    c
                }
                Err((rej, provider)) => {
                    a.metrics
                        .authn
                        .with_label_values(&[&route, &provider, "deny", rej.code])
                        .inc();
                    return Err(rej);
                }
            };
            for (claim, header) in &a.forward {
                let value = match claims.raw.get(claim) {
                    Some(Value::String(s)) => HeaderValue::from_str(s).ok(),
                    Some(Value::Number(n)) => HeaderValue::from_str(&n.to_string()).ok(),
                    _ => None,
                };
                UpstreamHeaders::push(&mut req, header.clone(), value);
            }
            match a.upstream_auth {
                UpstreamAuthorization::Forward => {}
                UpstreamAuthorization::Strip => {
                    req.headers_mut().remove(AUTHORIZATION);
                }
                UpstreamAuthorization::Replace => match &a.credential {
                    Some(c) => {
                        req.headers_mut().insert(AUTHORIZATION, c.clone());
                    }
                    None => {
                        req.headers_mut().remove(AUTHORIZATION);
                    }
                },
            }
            if let Some(slot) = req.extensions().get::<crate::context::AuditSlot>() {
                slot.set_claims(&claims);
            }
            req.extensions_mut().insert(claims);
            next.run(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Arc<Claims> {
        Arc::new(Claims {
            provider: Arc::from("p"),
            iss: "i".into(),
            sub: "s".into(),
            client_id: None,
            scopes: vec![],
            patient: None,
            exp,
            cnf_x5t: None,
            cnf_present: false,
            raw: Default::default(),
        })
    }

    #[test]
    fn cache_never_serves_past_exp_and_stays_bounded() {
        let c = TokenCache::new(2);
        let g0 = |_: &str| 0;
        c.put([1; 32], claims(100), 0, 50);
        assert!(c.get(&[1; 32], 99, g0).is_some());
        assert!(
            c.get(&[1; 32], 99, |_: &str| 1).is_none(),
            "served across a key-set change"
        );
        c.put([1; 32], claims(100), 0, 50);
        assert!(c.get(&[1; 32], 100, g0).is_none(), "served at exp");
        c.put([2; 32], claims(100), 0, 50);
        c.put([3; 32], claims(100), 0, 50);
        c.put([4; 32], claims(100), 0, 50);
        assert!(c.len() <= 2);
        c.put([5; 32], claims(10), 0, 50);
        assert!(c.get(&[5; 32], 50, g0).is_none(), "expired token cached");
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let raw = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        let c = Claims::from_raw(
            Arc::from("p"),
            raw(serde_json::json!({"iss":"i","sub":"s","exp":1,"scope":"patient/*.read openid"})),
        )
        .unwrap();
        assert_eq!(c.scopes, vec!["patient/*.read", "openid"]);
        let c = Claims::from_raw(
            Arc::from("p"),
            raw(serde_json::json!({"iss":"i","sub":"s","exp":1,"scp":["a","b"]})),
        )
        .unwrap();
        assert_eq!(c.scopes, vec!["a", "b"]);
    }
}
