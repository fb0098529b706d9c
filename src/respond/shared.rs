//! Signals, throttles and the break-glass allowance counted across replicas, in Redis.
//!
//! Without Redis every replica counts alone (`signals/`), so an attacker behind a load
//! balancer with N replicas could read N × the distinct-patient threshold, make N × the
//! probing threshold of denials, and so on, without any replica noticing. With
//! `respond.redis` the same observations are also counted in Redis, and Redis decides:
//! - exfiltration / off-hours: one HyperLogLog per identity per sub-window (`PFADD`, the
//!   window's estimate is `PFCOUNT` over its live sub-windows: the union, so a patient read
//!   on two replicas counts once);
//! - probing / DLP: one `INCR` counter per key per sub-window, summed over the window;
//! - volume: the identity's EWMA baseline and current-interval count in one hash;
//! - throttles: a flag key (lives as long as the throttle) and one GCRA bucket per
//!   identity, so the allowance is per identity, not per replica;
//! - break-glass: one GCRA bucket per route and identity with the local limiter's numbers
//!   (`max_per_day` uses, refilling over the day).
//!
//! Each phase of a request is ONE round trip, a Lua script Redis runs atomically (so two
//! replicas can never both see "one below the threshold", and only one of them fires:
//! the per-key cooldown is a `SET NX PX window` inside the same script):
//! - after authentication: the shared block lookup (it was one `HMGET` before), the
//!   throttle and the volume observation, together;
//! - after the response, only when there is something to count (a denial, a DLP block, a
//!   read naming a patient): every counter the outcome feeds. It is awaited before the
//!   response goes out, so a block or throttle it triggers holds from the very next
//!   request on any replica.
//!
//! When a signal fires, one more call shares its action (the block, or the throttle flag).
//!
//! Time is Redis's (`TIME`), so clock skew between replicas moves no window. Keys are
//! `prefix:<signal>:{<first 16 bytes of SHA-256 of the identity key>}` plus a sub-window
//! number: no subject, address or patient id is stored in clear (patient ids are hashed
//! before `PFADD` too), and every key carries a PEXPIRE of about one window, so Redis
//! memory follows the active identities. The braces are a cluster hash tag: all keys of
//! one identity live on one slot.
//!
//! When Redis cannot answer (error or timeout) the replica falls back to its own counts,
//! which `signals/` keeps fed all along — the per-replica behaviour of a gateway without
//! Redis, i.e. fail open like the rate limits' default: an outage lets an attacker who
//! spreads out gain at most a factor N, and never stops clinical traffic. A circuit
//! breaker (`breaker.rs`, label `policy="respond"`) opens after a few consecutive failures,
//! or at once when Redis refuses the connection: then calls fall back without asking
//! Redis, so an outage does not cost a timeout per request, and one background PING at a
//! time closes it again when Redis answers. Fallbacks are counted in
//! `ward_respond_redis_fallback_total{phase}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounterVec;
use redis::aio::ConnectionManager;

use super::signals::{BaselineParams, Fired, SignalKind, Signals};
use crate::breaker::Breaker;

/// Sub-windows, as the local counters (`signals/`) use them.
const DISTINCT_SUBS: u64 = 4;
const COUNT_SUBS: u64 = 6;

/// Shared lines of both scripts: the server clock, and GCRA on `KEYS[k]` (interval µs,
/// burst) returning whether a cell was taken.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local function gcra(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or '') or now_us
  if tat < now_us then tat = now_us end
  local new_tat = tat + interval
  if new_tat - interval * burst > now_us then
    return false
  end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
  return true
end
"#;

/// After authentication. KEYS: blocks hash, [throttle flag, throttle bucket, volume hash].
/// ARGV: n, n block fields, has_identity, throttle interval µs, throttle burst,
/// volume? (0/1), interval ms, baseline intervals, factor, min requests, ttl ms.
/// Returns: n block values, throttled, volume fired, count, threshold.
const REQUEST: &str = r#"
local n = tonumber(ARGV[1])
local out = {}
if n > 0 then
  local fields = {}
  for i = 1, n do fields[i] = ARGV[1 + i] end
  local vals = redis.call('HMGET', KEYS[1], unpack(fields))
  for i = 1, n do out[i] = vals[i] end
end
local a = n + 2
local throttled, vfired, vcount, vthr = 0, 0, 0, 0
if ARGV[a] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    if not gcra(KEYS[3], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])) then
      throttled = 1
    end
  end
  if throttled == 0 and ARGV[a + 3] == '1' then
    local interval = tonumber(ARGV[a + 4])
    local k = tonumber(ARGV[a + 5])
    local factor = tonumber(ARGV[a + 6])
    local floor = tonumber(ARGV[a + 7])
    local alpha = 2 / (k + 1)
    local i = math.floor(now_ms / interval)
    local st = redis.call('HMGET', KEYS[4], 'i', 'c', 'e', 'h', 'f')
    local ei = tonumber(st[1])
    local c, e, h, f = 0, 0, 0, 0
    if ei then
      c = tonumber(st[2]) or 0
      e = tonumber(st[3]) or 0
      h = tonumber(st[4]) or 0
      f = tonumber(st[5]) or 0
    else
      ei = i
    end
    if i > ei then
      if h == 0 then e = c else e = alpha * c + (1 - alpha) * e end
      local idle = math.min(i - ei - 1, 100000)
      e = e * (1 - alpha) ^ idle
      h = h + 1 + idle
      ei = i
      c = 0
    end
    c = c + 1
    vcount = c
    if h >= k and now_ms >= f then
      local limit = factor * e
      if c > limit and c > floor then
        f = (ei + 1) * interval
        vfired = 1
        vthr = math.max(math.ceil(limit), floor)
      end
    end
    redis.call('HSET', KEYS[4], 'i', string.format('%d', ei), 'c', string.format('%d', c),
      'e', string.format('%.17g', e), 'h', string.format('%d', math.min(h, 1000000000)),
      'f', string.format('%d', f))
    redis.call('PEXPIRE', KEYS[4], ARGV[a + 8])
  end
end
out[n + 1] = throttled
out[n + 2] = vfired
out[n + 3] = vcount
out[n + 4] = vthr
return out
"#;

/// After the response. KEYS: one base key per observation. ARGV: per observation
/// distinct? (0/1), window ms, threshold, item, yields? (0/1: does not fire when an earlier
/// one in this call did; off-hours before exfiltration, as `Signals::observe_patient`),
/// sub-windows.
/// Returns per observation: fired (0/1), value.
const OUTCOME: &str = r#"
local out = {}
local any = false
for j = 1, #KEYS do
  local base = KEYS[j]
  local o = (j - 1) * 6
  local distinct = ARGV[o + 1] == '1'
  local window = tonumber(ARGV[o + 2])
  local threshold = tonumber(ARGV[o + 3])
  local subs = tonumber(ARGV[o + 6])
  local sub = math.max(1, math.ceil(window / subs))
  local cur = math.floor(now_ms / sub)
  local keys = {}
  for s = 0, subs - 1 do keys[s + 1] = base .. ':' .. string.format('%d', cur - s) end
  local value = 0
  local changed = true
  if distinct then
    changed = redis.call('PFADD', keys[1], ARGV[o + 4]) == 1
    redis.call('PEXPIRE', keys[1], window + sub)
    if changed then value = redis.call('PFCOUNT', unpack(keys)) end
  else
    redis.call('INCR', keys[1])
    redis.call('PEXPIRE', keys[1], window + sub)
    for _, v in ipairs(redis.call('MGET', unpack(keys))) do value = value + (tonumber(v) or 0) end
  end
  local fired = 0
  if changed and value >= threshold and not (any and ARGV[o + 5] == '1') then
    if redis.call('SET', base .. ':f', '1', 'NX', 'PX', window) then
      fired = 1
      any = true
    end
  end
  out[2 * j - 1] = fired
  out[2 * j] = value
end
return out
"#;

/// A throttle flag that never shortens one another replica set. KEYS: flag. ARGV: ms.
const THROTTLE: &str = r#"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"#;

/// One break-glass use. KEYS: bucket. ARGV: interval µs, burst. Returns 1 when allowed.
const BREAK_GLASS: &str = r#"
if gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) then return 1 end
return 0
"#;

/// One observation for the outcome script.
pub struct Observation<'a> {
    pub kind: SignalKind,
    /// The identity key (`sub:…`, `ip:…`): hashed before it reaches Redis.
    pub key: &'a str,
    /// The patient (distinct signals): hashed before it reaches Redis.
    pub item: Option<&'a str>,
    pub yields: bool,
}

/// What Redis answered after authentication.
pub struct RequestAnswer {
    /// The blocks hash's values for the asked fields, in order.
    pub blocks: Vec<Option<String>>,
    pub throttled: bool,
    /// `(count, threshold)` when the volume signal fired.
    pub volume: Option<(u64, u64)>,
}

pub struct Shared {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    breaker: Arc<Breaker>,
    healthy: AtomicBool,
    request: redis::Script,
    outcome: redis::Script,
    throttle: redis::Script,
    break_glass: redis::Script,
    fallback: IntCounterVec,
}

fn hashed(v: &str) -> String {
    hex::encode(&crate::identity::sha256(v.as_bytes())[..16])
}

impl Shared {
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        timeout: Duration,
        fallback: IntCounterVec,
    ) -> Shared {
        for phase in ["blocks", "request", "outcome", "throttle", "break_glass"] {
            fallback.with_label_values(&[phase]);
        }
        Shared {
            conn,
            prefix: prefix.to_owned(),
            timeout,
            breaker: Arc::new(Breaker::unreported("respond")),
            healthy: AtomicBool::new(true),
            request: redis::Script::new(&format!("{PRELUDE}{REQUEST}")),
            outcome: redis::Script::new(&format!("{PRELUDE}{OUTCOME}")),
            throttle: redis::Script::new(THROTTLE),
            break_glass: redis::Script::new(&format!("{PRELUDE}{BREAK_GLASS}")),
            fallback,
        }
    }

    /// Report the circuit breaker's state (`respond/mod.rs` hands in one with metrics).
    pub fn with_breaker(mut self, breaker: Arc<Breaker>) -> Shared {
        self.breaker = breaker;
        self
    }

    /// `prefix:<what>:{<hash of key>}`.
    fn key(&self, what: &str, key: &str) -> String {
        format!("{}:{what}:{{{}}}", self.prefix, hashed(key))
    }

    /// Run a prepared script (see [`Shared::call`]).
    async fn run<T: redis::FromRedisValue>(
        &self,
        phase: &'static str,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, ()> {
        let mut conn = self.conn.clone();
        self.call(phase, async move { inv.invoke_async::<T>(&mut conn).await })
            .await
    }

    /// A connection for [`Shared::call`].
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Run one Redis call within the timeout, unless the circuit is open; failures feed
    /// the breaker and are counted under `phase`.
    pub async fn call<T>(
        &self,
        phase: &'static str,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ()> {
        if !self.breaker.allow() {
            self.fallback.with_label_values(&[phase]).inc();
            return Err(());
        }
        let (err, refused) = match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(target: "ward::respond", "redis answering again; signals count across replicas");
                }
                return Ok(v);
            }
            Ok(Err(e)) => (
                e.to_string(),
                e.is_connection_refusal() || e.is_connection_dropped(),
            ),
            Err(_) => ("timeout".to_owned(), false),
        };
        if self.breaker.failure(refused) {
            let (conn, timeout) = (self.conn.clone(), self.timeout);
            self.breaker.probe_until_closed(move || {
                let mut conn = conn.clone();
                async move {
                    let pong = tokio::time::timeout(
                        timeout,
                        redis::cmd("PING").query_async::<String>(&mut conn),
                    )
                    .await;
                    matches!(pong, Ok(Ok(_)))
                }
            });
        }
        self.fallback.with_label_values(&[phase]).inc();
        // One line per outage, not per request.
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(target: "ward::respond", error = %err, "redis signal counting failed; this replica counts alone until it answers");
        }
        Err(())
    }

    /// After authentication: the shared block lookup, the throttle, the volume signal.
    pub async fn on_request(
        &self,
        blocks_hash: &str,
        fields: &[String],
        identity: Option<&str>,
        per_minute: u32,
        volume: Option<BaselineParams>,
    ) -> Result<RequestAnswer, ()> {
        let mut inv = self.request.prepare_invoke();
        inv.key(blocks_hash).arg(fields.len());
        for f in fields {
            inv.arg(f);
        }
        match identity {
            Some(id) => {
                inv.key(self.key("thr", id))
                    .key(self.key("tb", id))
                    .key(self.key("vol", id));
                let per_minute = u64::from(per_minute.max(1));
                inv.arg(1).arg(60_000_000 / per_minute).arg(per_minute);
                match volume {
                    Some(p) => {
                        // Kept while the baseline means something: after 4 horizons of
                        // silence it has decayed below 0.1 % anyway.
                        let ttl = p
                            .interval_ms
                            .saturating_mul(u64::from(p.baseline_intervals).saturating_add(1))
                            .saturating_mul(4);
                        inv.arg(1)
                            .arg(p.interval_ms)
                            .arg(p.baseline_intervals)
                            .arg(p.factor)
                            .arg(p.min_requests)
                            .arg(ttl);
                    }
                    None => {
                        inv.arg(0).arg(0).arg(0).arg(0).arg(0).arg(0);
                    }
                }
            }
            None => {
                inv.arg(0).arg(0).arg(0).arg(0);
            }
        }
        let v: Vec<redis::Value> = self.run("request", inv).await?;
        let n = fields.len();
        if v.len() != n + 4 {
            return Err(());
        }
        let int = |x: &redis::Value| redis::from_redis_value_ref::<i64>(x).unwrap_or(0);
        let blocks = v[..n]
            .iter()
            .map(|x| redis::from_redis_value_ref::<Option<String>>(x).unwrap_or(None))
            .collect();
        let count = u64::try_from(int(&v[n + 2])).unwrap_or(0);
        let threshold = u64::try_from(int(&v[n + 3])).unwrap_or(0);
        Ok(RequestAnswer {
            blocks,
            throttled: int(&v[n]) == 1,
            volume: (int(&v[n + 1]) == 1).then_some((count, threshold)),
        })
    }

    /// After the response: count every observation; the signals that fired.
    pub async fn observe(
        &self,
        signals: &Signals,
        obs: &[Observation<'_>],
    ) -> Result<Vec<Fired>, ()> {
        let mut inv = self.outcome.prepare_invoke();
        let mut asked = Vec::new();
        for o in obs {
            let Some((threshold, window)) = signals.window_of(o.kind) else {
                continue;
            };
            let what = match o.kind {
                SignalKind::Exfiltration => "x",
                SignalKind::OffHours => "o",
                SignalKind::Probing => "p",
                SignalKind::Dlp => "d",
                SignalKind::Volume => continue,
            };
            inv.key(self.key(what, o.key))
                .arg(u32::from(o.item.is_some()))
                .arg(window)
                .arg(threshold)
                .arg(o.item.map(hashed).unwrap_or_default())
                .arg(u32::from(o.yields))
                .arg(if o.item.is_some() {
                    DISTINCT_SUBS
                } else {
                    COUNT_SUBS
                });
            asked.push((o, threshold));
        }
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let v: Vec<i64> = self.run("outcome", inv).await?;
        if v.len() != 2 * asked.len() {
            return Err(());
        }
        Ok(asked
            .iter()
            .zip(v.chunks(2))
            .filter(|(_, r)| r[0] == 1)
            .map(|((o, threshold), r)| Fired {
                signal: o.kind,
                key: o.key.to_owned(),
                value: u64::try_from(r[1]).unwrap_or(0),
                threshold: *threshold,
            })
            .collect())
    }

    /// Throttle `key` on every replica for `ms` (never shortening a longer one).
    pub async fn throttle(&self, key: &str, ms: u64) -> Result<(), ()> {
        let mut inv = self.throttle.prepare_invoke();
        inv.key(self.key("thr", key)).arg(ms.max(1));
        self.run::<i64>("throttle", inv).await.map(|_| ())
    }

    /// Take one break-glass use of `identity` on `route` (`per_day` uses a day, refilling
    /// evenly, as the local limiter). `Ok(false)` when used up.
    pub async fn break_glass(&self, route: &str, identity: &str, per_day: u32) -> Result<bool, ()> {
        let per_day = u64::from(per_day.max(1));
        let mut inv = self.break_glass.prepare_invoke();
        inv.key(self.key("bg", &format!("{route}\n{identity}")))
            .arg(86_400_000_000 / per_day)
            .arg(per_day);
        self.run::<i64>("break_glass", inv).await.map(|v| v == 1)
    }
}
