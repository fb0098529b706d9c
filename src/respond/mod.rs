//! Detect and respond: breach signals, actions on them, operator blocks, notifications.
//!
//! Ward sees every request to the EHR, so it is where an attack can be noticed and stopped:
//! - `signals.rs` turns observations (a patient read, a denial, a request, a DLP block)
//!   into fired signals with bounded memory;
//! - this file decides what a fired signal does (`alert`, `throttle`, `block`), keeps the
//!   block list (`blocks.rs`, persisted, optionally shared through Redis) and the
//!   throttles, and sends notifications (`notify.rs` webhook; every signal is also an audit
//!   record, which the audit trail's syslog sink forwards);
//! - the two layers at the end sit in every route stack: [`RespondCheck`] outermost
//!   (address and certificate blocks before anything else, observation of the outcome
//!   after) and [`ClaimsCheck`] right after authentication (subject and client
//!   blocks, throttles, the identity for signals).
//!
//! What is recorded about whom is an identity key (`sub:<iss>|<sub>`, `client:<id>`,
//! `cert:<sha256>`, `ip:<addr>`), never a patient id or any other PHI.

pub mod blocks;
pub mod notify;
pub mod shared;
pub mod signals;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::context::Claims;
use crate::context::RequestContext;
use crate::error::Rejection;
use crate::fhir::request::{FhirRequest, Interaction};
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::service::{Chain, Next, Policy, PolicyFuture};
use crate::Body;
use blocks::{Block, BlockList, BlockTarget};
use signals::{Fired, SignalKind, Signals, SignalsConfig};

fn default_throttle() -> u32 {
    30
}

/// What a fired signal does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Metric, audit record and notification.
    #[default]
    Alert,
    /// All of that, and the identity is held to `throttle_per_minute` for a while.
    Throttle,
    /// All of that, and the identity is refused (403 `blocked`) for a while.
    Block,
}

impl ActionKind {
    fn label(self) -> &'static str {
        match self {
            ActionKind::Alert => "alert",
            ActionKind::Throttle => "throttle",
            ActionKind::Block => "block",
        }
    }
}

fn default_duration() -> u64 {
    900
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalAction {
    #[serde(default)]
    pub action: ActionKind,
    /// How long a throttle or block lasts.
    #[serde(default = "default_duration")]
    pub duration_secs: u64,
}

impl Default for SignalAction {
    fn default() -> Self {
        SignalAction {
            action: ActionKind::Alert,
            duration_secs: default_duration(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    #[serde(default)]
    pub exfiltration: SignalAction,
    #[serde(default)]
    pub probing: SignalAction,
    #[serde(default)]
    pub volume: SignalAction,
    #[serde(default)]
    pub dlp: SignalAction,
    #[serde(default)]
    pub off_hours: SignalAction,
}

impl Actions {
    fn of(&self, s: SignalKind) -> SignalAction {
        match s {
            SignalKind::Exfiltration => self.exfiltration,
            SignalKind::Probing => self.probing,
            SignalKind::Volume => self.volume,
            SignalKind::Dlp => self.dlp,
            SignalKind::OffHours => self.off_hours,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorsConfig {
    /// Lines `<name> <sha256 hex of the token>`; `#` starts a comment.
    pub tokens_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondRedisConfig {
    pub url: String,
    #[serde(default = "default_redis_key")]
    pub key: String,
    /// Prefix of the signal counters, throttles and break-glass allowances shared by the
    /// replicas (`shared.rs`).
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

fn default_redis_key() -> String {
    "ward:blocks".into()
}

fn default_redis_prefix() -> String {
    "ward:respond".into()
}

/// The top-level `respond:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    pub blocks_file: String,
    pub operators: OperatorsConfig,
    #[serde(default)]
    pub signals: SignalsConfig,
    #[serde(default)]
    pub actions: Actions,
    #[serde(default = "default_throttle")]
    pub throttle_per_minute: u32,
    #[serde(default)]
    pub webhook: Option<notify::WebhookConfig>,
    #[serde(default)]
    pub redis: Option<RespondRedisConfig>,
}

impl RespondConfig {
    pub fn problems(&self, resolve: &dyn Fn(&str) -> std::path::PathBuf) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = Signals::new(&self.signals) {
            out.push(("signals".into(), e));
        }
        for (name, a) in [
            ("exfiltration", self.actions.exfiltration),
            ("probing", self.actions.probing),
            ("volume", self.actions.volume),
            ("dlp", self.actions.dlp),
            ("off_hours", self.actions.off_hours),
        ] {
            if a.duration_secs == 0 || a.duration_secs > 30 * 24 * 3600 {
                out.push((
                    format!("actions.{name}.duration_secs"),
                    "between 1 second and 30 days".into(),
                ));
            }
        }
        if self.throttle_per_minute == 0 {
            out.push((
                "throttle_per_minute".into(),
                "must be greater than 0".into(),
            ));
        }
        match std::fs::read_to_string(resolve(&self.operators.tokens_file)) {
            Ok(t) => match parse_operators(&t) {
                Ok(ops) if ops.is_empty() => out.push((
                    "operators.tokens_file".into(),
                    "names no operator: the admin API would be unusable".into(),
                )),
                Ok(_) => {}
                Err(e) => out.push(("operators.tokens_file".into(), e)),
            },
            Err(e) => out.push((
                "operators.tokens_file".into(),
                format!("cannot read {}: {}", self.operators.tokens_file, e.kind()),
            )),
        }
        if let Some(r) = &self.redis {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://"))
                || redis::Client::open(r.url.as_str()).is_err()
            {
                out.push(("redis.url".into(), "is not a valid Redis URL".into()));
            }
            if r.prefix.is_empty() {
                out.push(("redis.prefix".into(), "must not be empty".into()));
            }
        }
        out
    }
}

/// `(name, sha256 hex)` pairs.
fn parse_operators(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(name), Some(hash), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("line {}: expected `<name> <sha256 hex>`", i + 1));
        };
        if hash.len() != 64 || !hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("line {}: the token hash is 64 hex digits", i + 1));
        }
        out.push((name.to_owned(), hash.to_ascii_lowercase()));
    }
    Ok(out)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn sha256_hex(b: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    hex::encode(d)
}

/// When `add_block_as` answers relative to the block file write.
#[derive(Clone, Copy)]
enum Durability {
    /// After the block is on disk (operator blocks: the API never claims a block a
    /// restart would forget).
    OnDisk,
    /// At once; the write follows on the blocking pool (signal-fired blocks, added on
    /// the request path).
    Background,
}

/// The running detect-and-respond state, shared by every route stack and the admin API.
pub struct Respond {
    signals: Signals,
    actions: Actions,
    blocks: RwLock<BlockList>,
    throttles: Mutex<std::collections::HashMap<String, u64>>,
    limiter: governor::DefaultKeyedRateLimiter<String>,
    operators: Vec<(String, String)>,
    notifier: Option<notify::Notifier>,
    audit: Option<crate::audit::AuditLog>,
    redis: Option<(redis::aio::ConnectionManager, String)>,
    /// Signals, throttles and break-glass counted across replicas (with `redis`).
    shared: Option<shared::Shared>,
    throttle_per_minute: u32,
    metrics: Arc<Metrics>,
}

impl Respond {
    pub async fn start(
        cfg: &RespondConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: Arc<Metrics>,
        audit: Option<crate::audit::AuditLog>,
    ) -> Result<Arc<Respond>, String> {
        let signals = Signals::new(&cfg.signals)?;
        let blocks = BlockList::load(resolve(&cfg.blocks_file), now_ms())?;
        let text = std::fs::read_to_string(resolve(&cfg.operators.tokens_file))
            .map_err(|e| format!("operators.tokens_file: {}", e.kind()))?;
        let operators = parse_operators(&text)?;
        let notifier = match &cfg.webhook {
            Some(w) => {
                let mut w = w.clone();
                // Paths in the config are relative to the config file.
                w.secret_file = resolve(&w.secret_file.to_string_lossy());
                for p in [&mut w.ca, &mut w.client_cert, &mut w.client_key] {
                    if let Some(v) = p.as_mut() {
                        *v = resolve(&v.to_string_lossy());
                    }
                }
                let m = notify::NotifyMetrics {
                    sent: metrics
                        .notifications
                        .with_label_values(&["webhook", "sent"]),
                    failed: metrics
                        .notifications
                        .with_label_values(&["webhook", "failed"]),
                    dropped: metrics
                        .notifications
                        .with_label_values(&["webhook", "dropped"]),
                };
                Some(notify::Notifier::start(w, m)?)
            }
            None => None,
        };
        let redis = match &cfg.redis {
            Some(r) => {
                let client =
                    redis::Client::open(r.url.as_str()).map_err(|e| format!("redis: {e}"))?;
                let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(Duration::from_millis(500)));
                let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, mgr_cfg)
                    .map_err(|e| format!("redis: {e}"))?;
                Some((conn, r.key.clone()))
            }
            None => None,
        };
        let shared = match (&redis, &cfg.redis) {
            (Some((conn, _)), Some(rc)) => Some(
                shared::Shared::new(
                    conn.clone(),
                    &rc.prefix,
                    Duration::from_millis(500),
                    metrics.respond_redis_fallback.clone(),
                )
                .with_breaker(Arc::new(crate::breaker::Breaker::new(
                    "respond",
                    metrics.redis_breaker_open.with_label_values(&["respond"]),
                    metrics
                        .redis_breaker_short_circuits
                        .with_label_values(&["respond"]),
                ))),
            ),
            _ => None,
        };
        let per_minute = NonZeroU32::new(cfg.throttle_per_minute).unwrap_or(NonZeroU32::MIN);
        let r = Arc::new(Respond {
            signals,
            actions: cfg.actions.clone(),
            blocks: RwLock::new(blocks),
            throttles: Mutex::new(Default::default()),
            limiter: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
            operators,
            notifier,
            audit,
            redis,
            shared,
            throttle_per_minute: per_minute.get(),
            metrics,
        });
        // Series for every configured signal exist from the start (at 0), so dashboards
        // and alerts see them before the first incident.
        let c = &cfg.signals;
        for (on, kind) in [
            (c.exfiltration.is_some(), SignalKind::Exfiltration),
            (c.probing.is_some(), SignalKind::Probing),
            (c.volume.is_some(), SignalKind::Volume),
            (c.dlp.is_some(), SignalKind::Dlp),
            (c.off_hours.is_some(), SignalKind::OffHours),
        ] {
            if on {
                r.metrics
                    .signals
                    .with_label_values(&[kind.as_str(), r.actions.of(kind).action.label()]);
            }
        }
        for kind in ["ip", "cidr", "cert", "sub", "client_id", "throttle"] {
            r.metrics.blocked.with_label_values(&[kind]);
        }
        r.update_gauge();
        Ok(r)
    }

    fn update_gauge(&self) {
        if let Ok(b) = self.blocks.read() {
            self.metrics
                .blocks_active
                .set(i64::try_from(b.active(now_ms()).len()).unwrap_or(i64::MAX));
        }
    }

    /// The operator a bearer token belongs to.
    pub fn operator(&self, token: &str) -> Option<&str> {
        let h = sha256_hex(token.as_bytes());
        let mut found = None;
        // Compare every entry (constant work whatever matches).
        for (name, hash) in &self.operators {
            if aws_lc_rs::constant_time::verify_slices_are_equal(h.as_bytes(), hash.as_bytes())
                .is_ok()
            {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// An MLLP sender (its address and certificate) blocked? Metric counted.
    pub fn sender_blocked(&self, cert: Option<&str>, ip: IpAddr) -> bool {
        match self.check_local(&[], None, cert, Some(ip)) {
            Some(kind) => {
                self.metrics.blocked.with_label_values(&[kind]).inc();
                true
            }
            None => false,
        }
    }

    /// A local block check.
    fn check_local(
        &self,
        sub: &[&str],
        client: Option<&str>,
        cert: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Option<&'static str> {
        let now = now_ms();
        // A poisoned lock still holds a valid list (writes replace it whole): keep
        // enforcing it rather than failing open.
        let b = self
            .blocks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(blk) = b.check(None, client, cert, ip, now) {
            return Some(kind_label(&blk.target));
        }
        for s in sub {
            if b.check(Some(s), None, None, None, now).is_some() {
                return Some("sub");
            }
        }
        None
    }

    /// Redis: is any of these keys blocked on another replica? Errors fail open to the
    /// local list (a Redis outage must not stop clinical traffic; logged and counted).
    async fn check_shared(&self, keys: &[String]) -> Option<&'static str> {
        let ((_, key), sh) = (self.redis.as_ref()?, self.shared.as_ref()?);
        let mut conn = sh.conn();
        let got: Result<Vec<Option<String>>, ()> = sh
            .call(
                "blocks",
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(keys)
                    .query_async(&mut conn),
            )
            .await;
        // (A failure is logged and counted by `call`, once per outage.)
        got.ok().and_then(|vals| live_shared(keys, &vals))
    }

    /// Add an operator's block locally, and in Redis when shared. It is in effect at
    /// once; the answer comes after it is on disk (if the write fails the block is
    /// rolled back and the error returned).
    pub async fn add_block(&self, block: Block) -> Result<Block, String> {
        self.add_block_as(block, Durability::OnDisk).await
    }

    async fn add_block_as(&self, block: Block, durability: Durability) -> Result<Block, String> {
        // Memory only under the lock every request's block check reads; the file is
        // written afterwards, on the blocking pool.
        let (block, staged) = {
            let mut b = self
                .blocks
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let staged = b.stage_add(block.clone(), now_ms(), false)?;
            // As stored: normalised (IPv4-mapped addresses, /32 networks, host bits).
            let stored = b
                .active(now_ms())
                .into_iter()
                .find(|x| x.id == block.id)
                .unwrap_or(block);
            (stored, staged)
        };
        match durability {
            Durability::OnDisk => self.persist(staged).await?,
            Durability::Background => {
                // A signal-fired block protects now; that it also survives a restart
                // is best effort, and the request that tripped the signal must not
                // wait for an fsync. Kept in memory even if the write fails.
                let snapshot = staged.snapshot;
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = snapshot.write() {
                        tracing::error!(target: "ward::respond", error = %e, "signal block not persisted; it holds until restart");
                    }
                });
            }
        }
        if let Some((conn, key)) = &self.redis {
            let mut conn = conn.clone();
            let v = serde_json::to_string(&block).map_err(|e| e.to_string())?;
            // Never shorten a block another replica (or an operator) made: a client cannot
            // trade a 30-day block for a 15-minute one by tripping a signal elsewhere.
            let script = redis::Script::new(KEEP_LATER);
            let mut inv = script.prepare_invoke();
            inv.key(key)
                .arg(target_key(&block.target))
                .arg(v)
                .arg(block.expires_at);
            let fut = inv.invoke_async::<i64>(&mut conn);
            let r = match &self.shared {
                Some(sh) => sh.call("blocks", fut).await,
                None => fut.await.map_err(|_| ()),
            };
            if r.is_err() {
                tracing::warn!(target: "ward::respond", "block not shared through redis; it holds on this replica only");
            }
        }
        self.update_gauge();
        Ok(block)
    }

    pub async fn remove_block(&self, target: &BlockTarget) -> Result<bool, String> {
        let (removed, staged) = self
            .blocks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stage_remove(target)?;
        if let Some(staged) = staged {
            self.persist(staged).await?;
        }
        if let Some((conn, key)) = &self.redis {
            let mut conn = conn.clone();
            let r: Result<i64, _> = redis::cmd("HDEL")
                .arg(key)
                .arg(target_key(target))
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(target: "ward::respond", error = %e, "unblock not shared through redis");
            }
        }
        self.update_gauge();
        Ok(removed)
    }

    /// Writes a staged change to disk on the blocking pool, outside the list's lock.
    /// On failure the change is rolled back in memory (and the rolled-back list written,
    /// so a snapshot taken in between cannot leave the failed change on disk).
    async fn persist(&self, staged: blocks::Staged) -> Result<(), String> {
        let blocks::Staged { snapshot, undo } = staged;
        let written = tokio::task::spawn_blocking(move || snapshot.write())
            .await
            .unwrap_or_else(|_| Err("block list writer failed".into()));
        let Err(e) = written else {
            return Ok(());
        };
        let again = self
            .blocks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .undo(undo);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = again.write() {
                tracing::warn!(target: "ward::respond", error = %e, "block list not re-written after a rollback");
            }
        });
        self.update_gauge();
        Err(e)
    }

    pub fn list_blocks(&self) -> Vec<Block> {
        self.blocks
            .read()
            .map(|b| b.active(now_ms()))
            .unwrap_or_default()
    }

    /// Throttled identity over its allowance?
    fn throttled(&self, key: &str) -> bool {
        let now = now_ms();
        let active = self
            .throttles
            .lock()
            .map(|mut t| {
                t.retain(|_, until| *until > now);
                t.contains_key(key)
            })
            .unwrap_or(false);
        active && self.limiter.check_key(&key.to_owned()).is_err()
    }

    /// Act on a fired signal.
    async fn fired(&self, f: Fired) {
        let act = self.actions.of(f.signal);
        self.metrics
            .signals
            .with_label_values(&[f.signal.as_str(), act.action.label()])
            .inc();
        let until = now_ms().saturating_add(act.duration_secs.saturating_mul(1000));
        tracing::warn!(target: "ward::respond", signal = f.signal.as_str(), identity = %f.key, value = f.value, threshold = f.threshold, action = act.action.label(), "signal fired");
        match act.action {
            ActionKind::Alert => {}
            ActionKind::Throttle => {
                if let Ok(mut t) = self.throttles.lock() {
                    t.insert(f.key.clone(), until);
                }
                // Every replica holds the identity to the one shared allowance.
                if let Some(sh) = &self.shared {
                    let _ = sh
                        .throttle(&f.key, act.duration_secs.saturating_mul(1000))
                        .await;
                }
            }
            ActionKind::Block => {
                if let Some(target) = key_target(&f.key) {
                    let block = Block {
                        target,
                        reason: format!(
                            "signal {}: {} over {}",
                            f.signal.as_str(),
                            f.value,
                            f.threshold
                        ),
                        expires_at: until,
                        created_at: now_ms(),
                        created_by: "ward-signals".into(),
                        id: format!("sig-{}", uuid::Uuid::new_v4().simple()),
                    };
                    if let Err(e) = self.add_block_as(block, Durability::Background).await {
                        tracing::error!(target: "ward::respond", error = %e, "signal block not stored");
                    }
                }
            }
        }
        let event = json!({
            "event": "signal",
            "signal": f.signal.as_str(),
            "identity": f.key,
            "value": f.value,
            "threshold": f.threshold,
            "action": act.action.label(),
            "until": if act.action == ActionKind::Alert { Value::Null } else { Value::from(until) },
        });
        self.notify(event).await;
    }

    /// Webhook and audit trail (whose syslog sink forwards it).
    pub async fn notify(&self, event: Value) {
        if let Some(n) = &self.notifier {
            n.send(event.clone());
        }
        if let Some(a) = &self.audit {
            let mut f = serde_json::Map::new();
            f.insert("time".into(), Value::String(crate::calendar::rfc3339_now()));
            f.insert(
                "kind".into(),
                event.get("event").cloned().unwrap_or(Value::Null),
            );
            if let Value::Object(o) = event {
                for (k, v) in o {
                    if k != "event" {
                        f.insert(k, v);
                    }
                }
            }
            let _ = a.record(f).await;
        }
    }
}

/// HSET only if no entry, or the stored block expires earlier. ARGV: field, block JSON,
/// its `expires_at`.
const KEEP_LATER: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local ok, b = pcall(cjson.decode, old)
  if ok and type(b) == 'table' and tonumber(b['expires_at']) and tonumber(b['expires_at']) >= tonumber(ARGV[3]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

impl Respond {
    /// Blocks other replicas shared through Redis, merged into the local list now and then:
    /// networks (which a per-request lookup by key cannot find) and a memory of remote
    /// blocks for when Redis is unreachable. Expired entries are pruned from Redis.
    pub fn start_sync(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.redis.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = crate::shutdown::stopped(&mut stop) => break,
                    _ = tick.tick() => me.sync_once().await,
                }
            }
        });
    }

    async fn sync_once(&self) {
        let Some((conn, key)) = &self.redis else {
            return;
        };
        let mut conn = conn.clone();
        let all: Result<Vec<(String, String)>, _> =
            redis::cmd("HGETALL").arg(key).query_async(&mut conn).await;
        let Ok(all) = all else {
            return;
        };
        let now = now_ms();
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for (field, v) in all {
            match serde_json::from_str::<Block>(&v) {
                Ok(b) if b.expires_at > now => live.push(b),
                _ => stale.push(field),
            }
        }
        if !stale.is_empty() {
            let _: Result<i64, _> = redis::cmd("HDEL")
                .arg(key)
                .arg(&stale)
                .query_async(&mut conn)
                .await;
        }
        self.blocks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace_remote(live, now);
        self.update_gauge();
    }
}

/// The kind of the first live block among the blocks hash's values for `keys`.
fn live_shared(keys: &[String], vals: &[Option<String>]) -> Option<&'static str> {
    let now = now_ms();
    for (k, v) in keys.iter().zip(vals) {
        let Some(v) = v else { continue };
        if let Ok(b) = serde_json::from_str::<Block>(v) {
            if b.expires_at > now {
                return Some(k.split(':').next().map_or("sub", shared_kind));
            }
        }
    }
    None
}

fn kind_label(t: &BlockTarget) -> &'static str {
    match t {
        BlockTarget::Sub(_) => "sub",
        BlockTarget::ClientId(_) => "client_id",
        BlockTarget::CertSha256(_) => "cert",
        BlockTarget::Ip(_) => "ip",
        BlockTarget::Cidr(_) => "cidr",
    }
}

fn shared_kind(k: &str) -> &'static str {
    match k {
        "ip" => "ip",
        "cert" => "cert",
        "client" => "client_id",
        _ => "sub",
    }
}

/// The Redis hash field of a target: the same shape as identity keys.
fn target_key(t: &BlockTarget) -> String {
    match t {
        BlockTarget::Sub(s) => format!("sub:{s}"),
        BlockTarget::ClientId(c) => format!("client:{c}"),
        BlockTarget::CertSha256(c) => format!("cert:{}", c.to_ascii_lowercase()),
        BlockTarget::Ip(ip) => format!("ip:{ip}"),
        BlockTarget::Cidr(n) => format!("cidr:{n}"),
    }
}

/// The block target for an identity key of a fired signal.
fn key_target(key: &str) -> Option<BlockTarget> {
    let (kind, v) = key.split_once(':')?;
    Some(match kind {
        "sub" => BlockTarget::Sub(v.to_owned()),
        "client" => BlockTarget::ClientId(v.to_owned()),
        "cert" => BlockTarget::CertSha256(v.to_owned()),
        "ip" if v.ends_with("/64") => BlockTarget::Cidr(v.parse().ok()?),
        "ip" => BlockTarget::Ip(v.parse().ok()?),
        _ => return None,
    })
}

pub fn blocked() -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "blocked",
        "this client is blocked by the gateway's incident response",
    )
}

pub fn throttled() -> Rejection {
    Rejection::new(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "this client is throttled by the gateway's incident response",
    )
    .with_header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("60"),
    )
}

/// What inner layers learn for the respond layer: who the request is (the verified token,
/// else the client certificate) and whether it used break-glass.
#[derive(Clone, Default)]
pub struct RespondSlot(Arc<Mutex<SlotFacts>>);

#[derive(Default)]
struct SlotFacts {
    identity: Option<String>,
    /// (route, resource type) of a break-glass read.
    break_glass: Option<(String, String)>,
    /// Set when allowances are shared through Redis (break-glass counts there).
    respond: Option<Arc<Respond>>,
}

impl RespondSlot {
    fn set(&self, key: String) {
        if let Ok(mut g) = self.0.lock() {
            g.identity = Some(key);
        }
    }
    fn get(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.identity.clone())
    }
    /// Called by `fhir_authz` for a permitted break-glass read.
    pub fn break_glass(&self, route: &str, resource_type: &str) {
        if let Ok(mut g) = self.0.lock() {
            g.break_glass = Some((route.to_owned(), resource_type.to_owned()));
        }
    }
    fn take_break_glass(&self) -> Option<(String, String)> {
        self.0.lock().ok().and_then(|mut g| g.break_glass.take())
    }
    /// Take one break-glass use of `identity` on `route` from the allowance every replica
    /// shares (`per_day` a day). `None` when there is no shared allowance or Redis did not
    /// answer: the caller's per-replica limiter decides.
    pub async fn charge_break_glass(
        &self,
        route: &str,
        identity: &str,
        per_day: u32,
    ) -> Option<bool> {
        let r = self.0.lock().ok().and_then(|g| g.respond.clone())?;
        let sh = r.shared.as_ref()?;
        sh.break_glass(route, identity, per_day).await.ok()
    }
}

// ------------------------------------------------------------------ outer layer

/// The outer respond check (address and certificate blocks; every outcome feeds the
/// signals), as a policy.
pub struct RespondCheck {
    r: Arc<Respond>,
}

impl RespondCheck {
    pub fn new(r: Arc<Respond>) -> Self {
        RespondCheck { r }
    }
}

/// The signal key of an address: IPv6 clients are counted per /64 (one host can rotate
/// through a whole /64).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        IpAddr::V6(v6) => format!("ip:{}", v6.to_ipv4_mapped().map_or(ip, IpAddr::V4)),
        v4 => format!("ip:{v4}"),
    }
}

/// The patient a successful request was about, from its URL: `Patient/<id>` (read,
/// history, operations such as `$everything`), compartment searches, and searches naming
/// the patient (`Observation?patient=<id>`, `subject=Patient/<id>`).
/// Most patients one request is counted for (a list in a search parameter is bounded by
/// it; the rest of a longer list still costs the attacker the first ones).
const MAX_PATIENTS_PER_REQUEST: usize = 16;

/// The patients a request names: its compartment, a Patient read, and every item of every
/// `patient`/`subject`/`beneficiary` parameter (any modifier; `_id` on Patient) of a search
/// (not yet those of a POST form body, read later by `fhir_authz`, nor the patients inside
/// what the upstream returns).
fn patients_of(f: &FhirRequest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |v: &str| {
        let id = v.trim().rsplit('/').next().unwrap_or(v);
        if !id.is_empty() && out.len() < MAX_PATIENTS_PER_REQUEST && !out.iter().any(|x| x == id) {
            out.push(id.to_owned());
        }
    };
    if let Some((t, id)) = &f.compartment {
        if *t == "Patient" {
            push(id);
        }
    }
    if let (Some("Patient"), Some(id)) = (f.resource_type, f.id.as_deref()) {
        push(id);
    }
    if matches!(
        f.interaction,
        Interaction::SearchType | Interaction::SearchCompartment | Interaction::SearchSystem
    ) {
        for p in &f.params {
            let name = p.name.split(':').next().unwrap_or("");
            if matches!(name, "patient" | "subject" | "beneficiary")
                || (f.resource_type == Some("Patient") && name == "_id")
            {
                for v in p.value.split(',') {
                    push(v);
                }
            }
        }
    }
    out
}

impl Policy for RespondCheck {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let r = self.r.clone();
        let next = next.later();
        let ip = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.client_ip);
        // The address is only evidence about a client when it is the client's own: a
        // trusted proxy that sent no forwarding header would otherwise be blocked for
        // everyone behind it.
        // (Its key is formatted only when a denial is counted against it.)
        let key_ip = req
            .extensions()
            .get::<RequestContext>()
            .filter(|c| !(c.trusted_peer && c.client_ip == c.peer.ip()))
            .map(|c| c.client_ip);
        let cert = req
            .extensions()
            .get::<Arc<ClientIdentity>>()
            .map(|c| c.cert_sha256.clone());
        let patient = req
            .extensions()
            .get::<Arc<FhirRequest>>()
            .map(|f| patients_of(f))
            .unwrap_or_default();
        let slot = RespondSlot::default();
        if let Some(c) = &cert {
            slot.set(format!("cert:{c}"));
        }
        if r.shared.is_some() {
            if let Ok(mut g) = slot.0.lock() {
                g.respond = Some(r.clone());
            }
        }
        req.extensions_mut().insert(slot.clone());
        Box::pin(async move {
            // Address and certificate blocks: before any other work.
            if let Some(kind) = r.check_local(&[], None, cert.as_deref(), ip) {
                r.metrics.blocked.with_label_values(&[kind]).inc();
                return Err(blocked());
            }
            // Blocks made on other replicas, before any work is spent on the request.
            if r.redis.is_some() {
                let mut keys = Vec::new();
                if let Some(ip) = ip {
                    keys.push(format!("ip:{ip}"));
                }
                if let Some(c) = &cert {
                    keys.push(format!("cert:{c}"));
                }
                if let Some(kind) = r.check_shared(&keys).await {
                    r.metrics.blocked.with_label_values(&[kind]).inc();
                    return Err(blocked());
                }
            }
            let result = next.run(req).await;
            let identity = slot.get();
            let status = match &result {
                Ok(resp) => resp.status(),
                Err(rej) => rej.status,
            };
            let code = result.as_ref().err().map(|e| e.code);
            let now = now_ms();
            let mut fired = Vec::new();
            // The same observations for the counts every replica shares (with Redis).
            let mut obs = Vec::new();
            let ob = |kind, key, item| shared::Observation {
                kind,
                key,
                item,
                yields: false,
            };
            let ip_key = key_ip
                .filter(|_| {
                    matches!(status.as_u16(), 401 | 403 | 404)
                        && code.is_some_and(|c| c != "blocked")
                })
                .map(ip_key);
            if matches!(status.as_u16(), 401 | 403 | 404) && !matches!(code, Some("blocked")) {
                // Per address: only the gateway's own refusals (an upstream's 404 is no
                // evidence against an address that many people may share).
                if let (Some(k), true) = (&ip_key, code.is_some()) {
                    fired.extend(r.signals.observe_denial(k, now));
                    obs.push(ob(SignalKind::Probing, k.as_str(), None));
                }
                if let Some(id) = &identity {
                    fired.extend(r.signals.observe_denial(id, now));
                    obs.push(ob(SignalKind::Probing, id.as_str(), None));
                }
            }
            if let (Some(id), Some("dlp_blocked")) = (&identity, code) {
                fired.extend(r.signals.observe_dlp_block(id, now));
                obs.push(ob(SignalKind::Dlp, id.as_str(), None));
            }
            if status.is_success() {
                if let Some(id) = &identity {
                    for p in &patient {
                        fired.extend(r.signals.observe_patient(id, p, now));
                        if r.signals.off_hours_applies(id, now) {
                            obs.push(ob(SignalKind::OffHours, id.as_str(), Some(p.as_str())));
                        }
                        // Off-hours, the more specific, wins when both fire (as locally).
                        obs.push(shared::Observation {
                            yields: true,
                            ..ob(SignalKind::Exfiltration, id.as_str(), Some(p.as_str()))
                        });
                    }
                }
            }
            // With Redis, the cluster-wide counts decide; the local ones (kept fed above)
            // only while Redis does not answer.
            if let Some(sh) = &r.shared {
                if let Ok(f) = sh.observe(&r.signals, &obs).await {
                    fired = f;
                }
            }
            for f in fired {
                r.fired(f).await;
            }
            // Every emergency access is told at once (who, where; never the reason).
            if let Some((route, rtype)) = slot.take_break_glass() {
                r.notify(json!({
                    "event": "break_glass",
                    "identity": identity,
                    "route": route,
                    "resource_type": rtype,
                    "status": status.as_u16(),
                }))
                .await;
            }
            result
        })
    }
}

// ------------------------------------------------------------------ after authentication

/// The respond check after authentication (subject and client blocks, throttles), as a
/// policy.
pub struct ClaimsCheck {
    r: Arc<Respond>,
}

impl ClaimsCheck {
    pub fn new(r: Arc<Respond>) -> Self {
        ClaimsCheck { r }
    }
}

impl Policy for ClaimsCheck {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let r = self.r.clone();
        let next = next.later();
        let claims = req.extensions().get::<Arc<Claims>>().cloned();
        let slot = req.extensions().get::<RespondSlot>().cloned();
        let ip = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.client_ip);
        let cert = req
            .extensions()
            .get::<Arc<ClientIdentity>>()
            .map(|c| c.cert_sha256.clone());
        Box::pin(async move {
            let identity = claims
                .as_ref()
                .map(|c| format!("sub:{}|{}", c.iss, c.sub))
                .or_else(|| cert.as_ref().map(|c| format!("cert:{c}")));
            if let (Some(slot), Some(id)) = (&slot, &identity) {
                slot.set(id.clone());
            }
            let (subs, client): (Vec<String>, Option<String>) = match &claims {
                Some(c) => (
                    vec![c.sub.clone(), format!("{}|{}", c.iss, c.sub)],
                    c.client_id.clone(),
                ),
                None => (Vec::new(), None),
            };
            let sub_refs: Vec<&str> = subs.iter().map(String::as_str).collect();
            if let Some(kind) = r.check_local(&sub_refs, client.as_deref(), None, None) {
                r.metrics.blocked.with_label_values(&[kind]).inc();
                return Err(blocked());
            }
            // Blocks made on another replica count from the very next request; throttles
            // and the volume signal are shared too. One round trip for all three.
            let mut answer = None;
            if let (Some(sh), Some((_, hash))) = (&r.shared, &r.redis) {
                let mut keys: Vec<String> = subs.iter().map(|s| format!("sub:{s}")).collect();
                if let Some(c) = &client {
                    keys.push(format!("client:{c}"));
                }
                if let Some(c) = &cert {
                    keys.push(format!("cert:{c}"));
                }
                if let Some(ip) = ip {
                    keys.push(format!("ip:{ip}"));
                }
                let a = sh
                    .on_request(
                        hash,
                        &keys,
                        identity.as_deref(),
                        r.throttle_per_minute,
                        r.signals.volume_params(),
                    )
                    .await;
                if let Ok(a) = a {
                    if let Some(kind) = live_shared(&keys, &a.blocks) {
                        r.metrics.blocked.with_label_values(&[kind]).inc();
                        return Err(blocked());
                    }
                    answer = Some(a);
                }
            }
            if let Some(id) = &identity {
                // The shared throttle (when Redis answered), and any this replica set
                // alone while Redis was down: a throttle in force anywhere holds.
                let throttled_now = answer.as_ref().is_some_and(|a| a.throttled) || r.throttled(id);
                if throttled_now {
                    r.metrics.blocked.with_label_values(&["throttle"]).inc();
                    return Err(throttled());
                }
                let now = now_ms();
                let local = r.signals.observe_request(id, now);
                let fired = match &answer {
                    Some(a) => a.volume.map(|(value, threshold)| Fired {
                        signal: SignalKind::Volume,
                        key: id.clone(),
                        value,
                        threshold,
                    }),
                    None => local,
                };
                if let Some(f) = fired {
                    r.fired(f).await;
                }
            }
            next.run(req).await
        })
    }
}
