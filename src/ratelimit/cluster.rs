//! The cluster rate-limit backend: one GCRA bucket per key in Redis, shared by every Ward
//! replica that points at the same Redis.
//!
//! Each check is one round trip: a Lua script (sent by SHA, re-sent in full only after a
//! Redis restart) reads the bucket's theoretical arrival time, decides and writes it back
//! atomically — Redis runs a script with nothing interleaved, so two replicas can never
//! both take the last cell (the read-then-write race that separate GET/SET or
//! INCR/EXPIRE implementations have). Time comes from the Redis server (`TIME`), not from
//! the replicas, so clock skew between replicas cannot grant extra requests.
//!
//! Keys in Redis are `prefix:route:limit:` plus a SHA-256 of the client key: an identity,
//! patient id or address is never stored in clear. Buckets expire as soon as they are full
//! again, so Redis memory follows the active key count.
//!
//! A circuit breaker (`breaker.rs`) sits in front of Redis: after a few consecutive
//! failures, or at once when Redis refuses the connection, checks stop asking Redis and
//! the failure mode applies immediately (reported as `BackendError::CircuitOpen`), instead of
//! every request waiting `timeout`; one background PING at a time closes it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use crate::breaker::Breaker;
use crate::config::primitives::Dur;
use crate::metrics::Metrics;
use crate::ratelimit::local::Denied;

/// What a replica does while Redis cannot answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Keep serving, limited per replica by the same limits held locally. The default:
    /// a Redis outage should not take clinical traffic down, and the local limiter still
    /// bounds every key (at most `replicas ×` the quota cluster-wide).
    #[default]
    FailOpen,
    /// Refuse every request of the limited routes with 503 until Redis answers again.
    FailClosed,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_prefix() -> String {
    "ward:rl".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://host:port/db` (TLS). Credentials belong in an
    /// environment variable (`${REDIS_URL}`), never in the file.
    pub url: String,
    /// CA bundle (PEM) for `rediss://`; without it the system roots are used.
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Longest a check may wait for Redis before the failure mode applies.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub failure_mode: FailureMode,
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
}

impl RedisConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let scheme = self.url.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis") | Some("rediss") => {
                if redis::Client::open(self.url.as_str()).is_err() {
                    out.push(("url", "is not a valid Redis URL".to_owned()));
                }
            }
            _ => out.push(("url", "must start with redis:// or rediss://".to_owned())),
        }
        if self.url.contains('#') {
            // `#insecure` would switch certificate checks off (and is not built in).
            out.push(("url", "URL fragments (#...) are not accepted".to_owned()));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            out.push((
                "client_cert",
                "client_cert and client_key go together".to_owned(),
            ));
        }
        if (self.ca.is_some() || self.client_cert.is_some()) && scheme != Some("rediss") {
            out.push(("url", "TLS files need a rediss:// URL".to_owned()));
        }
        if self.timeout.0.is_zero() {
            out.push(("timeout", "must be greater than 0".to_owned()));
        }
        if self.key_prefix.is_empty() {
            out.push(("key_prefix", "must not be empty".to_owned()));
        }
        out
    }
}

/// GCRA (the algorithm governor implements locally). ARGV: emission interval in µs,
/// burst in cells, cost in cells. Returns {1, 0} when admitted, {0, wait µs} when not.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
"#;

/// Why Redis did not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendError {
    Timeout,
    Redis,
    /// Not asked: the circuit breaker is open (counted by its own metric, not as an error).
    CircuitOpen,
}

impl BackendError {
    pub fn label(self) -> &'static str {
        match self {
            BackendError::Timeout => "timeout",
            BackendError::Redis => "error",
            BackendError::CircuitOpen => "circuit_open",
        }
    }
}

pub struct RedisBackend {
    pub policy: String,
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
    pub failure_mode: FailureMode,
    prefix: String,
    healthy: AtomicBool,
    breaker: Arc<Breaker>,
}

impl RedisBackend {
    /// Build the client; the connection is made lazily and re-made by the connection
    /// manager after failures, so a Redis that is down at start-up does not stop the
    /// gateway (the failure mode applies until it answers).
    pub fn new(
        policy: &str,
        cfg: &RedisConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("redis.{k}: {m}"));
        }
        let read =
            |p: &str| std::fs::read(resolve(p)).map_err(|e| format!("cannot read `{p}`: {e}"));
        let client = if cfg.url.starts_with("rediss://") {
            let client_tls = match (&cfg.client_cert, &cfg.client_key) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: read(c)?,
                    client_key: read(k)?,
                }),
                _ => None,
            };
            let root_cert = cfg.ca.as_deref().map(read).transpose()?;
            redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
        } else {
            redis::Client::open(cfg.url.as_str())
        }
        .map_err(|e| format!("redis: {e}"))?;
        let timeout = cfg.timeout.0;
        let mgr_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_lazy_with_config(client, mgr_cfg)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(RedisBackend {
            policy: policy.to_owned(),
            conn,
            script: redis::Script::new(GCRA),
            timeout,
            failure_mode: cfg.failure_mode,
            prefix: cfg.key_prefix.clone(),
            healthy: AtomicBool::new(true),
            breaker: Arc::new(Breaker::new(
                policy,
                metrics.redis_breaker_open.with_label_values(&[policy]),
                metrics
                    .redis_breaker_short_circuits
                    .with_label_values(&[policy]),
            )),
        })
    }

    /// The Redis key of one bucket.
    pub fn bucket_key(&self, route: &str, limit: &str, key: &[u8]) -> String {
        let digest = crate::identity::sha256(key);
        format!(
            "{}:{route}:{limit}:{}",
            self.prefix,
            hex::encode(&digest[..16])
        )
    }

    /// Take `cost` cells of a bucket with the given emission interval and burst.
    pub async fn check(
        &self,
        bucket: &str,
        interval_us: u64,
        burst: u32,
        cost: u32,
    ) -> Result<Result<(), Denied>, BackendError> {
        if !self.breaker.allow() {
            return Err(BackendError::CircuitOpen);
        }
        let mut conn = self.conn.clone();
        let mut inv = self.script.prepare_invoke();
        inv.key(bucket).arg(interval_us).arg(burst).arg(cost);
        let answer: Result<redis::RedisResult<(i64, i64)>, _> =
            tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await;
        let result = match answer {
            Err(_) => {
                self.trip(false);
                Err(BackendError::Timeout)
            }
            Ok(Err(e)) => {
                self.note_failure(&e);
                self.trip(refused(&e));
                Err(BackendError::Redis)
            }
            Ok(Ok((1, _))) => Ok(Ok(())),
            Ok(Ok((_, wait_us))) => Ok(Err(Denied {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            })),
        };
        match &result {
            Ok(_) => {
                self.breaker.success();
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(policy = %self.policy, "redis rate-limit backend answering again");
                }
            }
            Err(BackendError::Timeout) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(policy = %self.policy, mode = ?self.failure_mode, "redis rate-limit backend timed out; failure mode applies");
                }
            }
            Err(BackendError::Redis | BackendError::CircuitOpen) => {}
        }
        result
    }

    /// Count a failure; when it opens the circuit, start the probe (a PING, bounded by the
    /// same timeout as a check).
    fn trip(&self, refused: bool) {
        if self.breaker.failure(refused) {
            let (conn, timeout) = (self.conn.clone(), self.timeout);
            self.breaker
                .probe_until_closed(move || ping(conn.clone(), timeout));
        }
    }

    fn note_failure(&self, e: &redis::RedisError) {
        // One line per outage, not per request.
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(policy = %self.policy, mode = ?self.failure_mode, error = %e, "redis rate-limit backend failed; failure mode applies");
        }
    }
}

/// Nobody listens (or the connection just broke): more attempts now would only wait.
pub fn refused(e: &redis::RedisError) -> bool {
    e.is_connection_refusal() || e.is_connection_dropped()
}

/// One bounded PING through the connection manager (which reconnects by itself).
pub async fn ping(mut conn: ConnectionManager, timeout: Duration) -> bool {
    let pong =
        tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn)).await;
    matches!(pong, Ok(Ok(_)))
}
