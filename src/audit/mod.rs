//! Tamper-evident audit trail: one JSON line per audited request (and MLLP message),
//! hash-chained, written by a single task.
//!
//! Each line is a JSON object whose last member is `"hash"`: SHA-256 (or HMAC-SHA256 with
//! `key_file`) over the previous line's hash followed by this line's bytes up to (not
//! including) `,"hash":`. `seq` counts up by one across files, so `ward audit verify`
//! tells an edited record (hash mismatch), a reordered one (seq goes back) and a missing
//! one (seq skips) apart. Rotation starts a new file whose first record chains to the last
//! record of the previous one; on start-up the chain resumes from the existing file.
//!
//! Records carry who (certificate subject and fingerprint, token iss/sub/client_id,
//! patient context), what (route, FHIR interaction, type, id; MLLP message type and
//! control id), the decision and its code, and the upstream status — never bodies, query
//! strings, tokens or other PHI values.
//!
//! Durability (`durability`): `fsync` — a request's response waits until its record is on
//! disk (records arriving together share one fsync, so the cost is per batch, not per
//! record); `interval` — the response does not wait, and the file is synced every
//! `sync_interval`: faster, but a crash can lose the last interval's records. When the
//! queue is full, `when_full: block` makes requests wait for room; `fail` answers 503
//! `audit_unavailable`. A record is never dropped silently: if the file cannot be written,
//! audited requests fail with 503 until it can.
//!
//! Sinks beyond the file, all fed by the writer thread once a batch is on disk (the request
//! path never waits on their network I/O): [`syslog`] (RFC 5424 over TLS; the line, or the
//! AuditEvent for IHE ATNA) and [`repository`] (a FHIR audit repository, through a spool
//! written before the batch is acknowledged). [`balp`] turns a FHIR request's record into
//! its IHE BALP `AuditEvent`; with `audit_event.in_file` the line carries it too (covered
//! by the hash like any member). The raw query reaches the writer under [`QUERY_FIELD`]
//! and is taken out before sealing: it only ever leaves base64-encoded, inside an event.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::primitives::Dur;
use crate::error::Rejection;

mod balp;
mod repository;
mod syslog;

pub use balp::{audit_event, AuditEventConfig, QUERY_FIELD};
pub use repository::RepositoryConfig;
pub use syslog::{SyslogConfig, SyslogMessage};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    #[default]
    Fsync,
    Interval,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    #[default]
    Block,
    Fail,
}

fn default_queue() -> usize {
    10_000
}
fn default_sync_interval() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}

/// Top-level `audit:` of ward.yaml: where and how records are written. Routes opt in with
/// an `audit` policy section; MLLP listeners with `audit: true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: String,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Dur,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default)]
    pub when_full: WhenFull,
    /// Rotate when the file reaches this size.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotate when the file is this old (absent: size only).
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Secret for HMAC-SHA256 chaining: without it anyone able to rewrite the file can
    /// also recompute plain SHA-256 links.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Second sink: every written record, forwarded as RFC 5424 syslog over TLS.
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    /// Records of FHIR requests also as FHIR R4 AuditEvents (IHE BALP).
    #[serde(default)]
    pub audit_event: Option<AuditEventConfig>,
    /// Third sink: AuditEvents POSTed to a FHIR audit repository through a local spool.
    #[serde(default)]
    pub repository: Option<RepositoryConfig>,
}

impl AuditConfig {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (k, zero) in [
            ("queue", self.queue == 0),
            ("max_bytes", self.max_bytes == 0),
            ("sync_interval", self.sync_interval.0.is_zero()),
            ("max_age", self.max_age.is_some_and(|a| a.0.is_zero())),
            (
                "syslog.buffer",
                self.syslog.as_ref().is_some_and(|s| s.buffer == 0),
            ),
        ] {
            if zero {
                out.push((k, "must be greater than 0".to_owned()));
            }
        }
        if let Some(a) = &self.audit_event {
            // Copied into every event: must be a valid FHIR string as written.
            let bad = |s: &str| {
                s.trim().is_empty()
                    || s.trim() != s
                    || s.len() > 1024
                    || s.chars().any(char::is_control)
            };
            if bad(&a.source_id) {
                out.push((
                    "audit_event.source_id",
                    "must be 1 to 1024 characters, no control characters or surrounding spaces"
                        .to_owned(),
                ));
            }
            if a.site.as_deref().is_some_and(bad) {
                out.push((
                    "audit_event.site",
                    "must be 1 to 1024 characters, no control characters or surrounding spaces"
                        .to_owned(),
                ));
            }
        }
        let events = self.audit_event.is_some();
        if !events
            && self
                .syslog
                .as_ref()
                .is_some_and(|s| s.message == SyslogMessage::AuditEvent)
        {
            out.push((
                "syslog.message",
                "`audit_event` messages need `audit.audit_event` (source_id)".to_owned(),
            ));
        }
        if let Some(r) = &self.repository {
            if !events {
                out.push((
                    "repository",
                    "needs `audit.audit_event` (the repository stores AuditEvents)".to_owned(),
                ));
            }
            out.extend(r.problems());
        }
        out
    }
}

/// A record on its way to the writer; `done` is answered once it is durable (fsync).
struct Job {
    fields: Map<String, Value>,
    done: Option<oneshot::Sender<bool>>,
    /// No record: answered once everything queued before it is on disk (shutdown).
    flush: bool,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    durability: Durability,
    when_full: WhenFull,
    /// Cleared while the file cannot be written: audited requests then fail, never pass
    /// unrecorded.
    healthy: Arc<AtomicBool>,
    backlog: prometheus::IntGauge,
    records: prometheus::IntCounterVec,
}

pub fn unavailable() -> Rejection {
    Rejection::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the audit trail cannot record this request; retry later",
    )
    .with_header(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    )
}

/// How often a failed trail is probed for recovery.
const RECOVERY_PROBE: Duration = Duration::from_secs(1);

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Chain state: the last record's sequence number and hash.
struct Chain {
    seq: u64,
    prev: String,
    key: Option<aws_lc_rs::hmac::Key>,
}

impl Chain {
    fn digest(&self, line_body: &[u8]) -> String {
        match &self.key {
            Some(k) => {
                let mut ctx = aws_lc_rs::hmac::Context::with_key(k);
                ctx.update(self.prev.as_bytes());
                ctx.update(line_body);
                hex::encode(ctx.sign())
            }
            None => {
                let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                ctx.update(self.prev.as_bytes());
                ctx.update(line_body);
                hex::encode(ctx.finish())
            }
        }
    }

    /// The line for `fields`: `{"seq":…,"prev":…,<fields>,"hash":…}`.
    fn seal(&mut self, fields: Map<String, Value>) -> String {
        let seq = self.seq + 1;
        let mut body = format!("{{\"seq\":{seq},\"prev\":\"{}\"", self.prev);
        for (k, v) in fields {
            body.push(',');
            body.push_str(&Value::String(k).to_string());
            body.push(':');
            body.push_str(&v.to_string());
        }
        let hash = self.digest(body.as_bytes());
        self.seq = seq;
        self.prev = hash.clone();
        format!("{body},\"hash\":\"{hash}\"}}\n")
    }
}

fn load_key(path: &Path) -> Result<aws_lc_rs::hmac::Key, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("audit key {}: {e}", path.display()))?;
    let trimmed: Vec<u8> = bytes.trim_ascii().to_vec();
    if trimmed.len() < 32 {
        return Err("audit key: at least 32 bytes".into());
    }
    Ok(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &trimmed,
    ))
}

/// Resume the chain from the current file: drop a torn last line (a record that was never
/// acknowledged), and read the last record's seq and hash.
fn resume(path: &Path) -> Result<(u64, String), String> {
    if let Some(last) = last_record(path, true)? {
        return Ok(last);
    }
    // An empty or missing current file right after a rotation: the chain continues from
    // the newest rotated file (names sort by the last seq they hold).
    let newest = rotated_files(path).into_iter().next_back();
    match newest {
        Some(p) => Ok(last_record(&p, false)?.unwrap_or((0, GENESIS.into()))),
        None => Ok((0, GENESIS.into())),
    }
}

/// Rotated files of `path` (`<path>.<last seq, 20 digits>`), oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .map(|rd| {
        rd.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(|rest| {
                        rest.len() == 20 && rest.bytes().all(|b| b.is_ascii_digit())
                    })
            })
            .collect()
    })
    .unwrap_or_default();
    out.sort();
    out
}

/// The last record's (seq, hash) of a file; `truncate` drops a torn last line (a record
/// that was never acknowledged) from the current file.
fn last_record(path: &Path, truncate: bool) -> Result<Option<(u64, String)>, String> {
    let mut f = match OpenOptions::new().read(true).write(truncate).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("audit file {}: {e}", path.display())),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data).map_err(|e| e.to_string())?;
    let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if truncate && keep < data.len() {
        f.set_len(keep as u64).map_err(|e| e.to_string())?;
        tracing::warn!(file = %path.display(), bytes = data.len() - keep, "audit: dropped an incomplete last record");
    }
    let Some(last) = data
        .get(..keep)
        .and_then(|d| d.split(|&b| b == b'\n').rfind(|l| !l.is_empty()))
    else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(last)
        .map_err(|_| format!("audit file {}: last record is not JSON", path.display()))?;
    let seq = v["seq"].as_u64().ok_or("audit: last record has no seq")?;
    let hash = v["hash"]
        .as_str()
        .ok_or("audit: last record has no hash")?
        .to_owned();
    Ok(Some((seq, hash)))
}

impl AuditLog {
    pub fn start(
        cfg: &AuditConfig,
        resolve: &dyn Fn(&str) -> PathBuf,
        metrics: &crate::metrics::Metrics,
    ) -> Result<AuditLog, String> {
        let path = resolve(&cfg.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("audit folder {}: {e}", dir.display()))?;
        }
        let key = cfg
            .key_file
            .as_deref()
            .map(|k| load_key(&resolve(k)))
            .transpose()?;
        let (seq, prev) = resume(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("audit file {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let healthy = Arc::new(AtomicBool::new(true));
        let log = AuditLog {
            tx,
            durability: cfg.durability,
            when_full: cfg.when_full,
            healthy: healthy.clone(),
            backlog: metrics.audit_backlog.clone(),
            records: metrics.audit_records.clone(),
        };
        let writer = Writer {
            path,
            file,
            opened: SystemTime::now(),
            size: 0,
            chain: Chain { seq, prev, key },
            cfg: cfg.clone(),
            healthy,
            backlog: metrics.audit_backlog.clone(),
            errors: metrics.audit_write_errors.clone(),
            forward: match &cfg.syslog {
                Some(s) => Some(syslog::start_syslog(s, resolve, metrics)?),
                None => None,
            },
            spool: match &cfg.repository {
                Some(r) => Some(repository::start(r, resolve, metrics)?),
                None => None,
            },
        };
        // A thread, not a task: file writes and fsync block.
        std::thread::Builder::new()
            .name("ward-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("audit writer: {e}"))?;
        Ok(log)
    }

    /// Can a record be taken now? (Checked before a request is served: a request the trail
    /// could not record must not reach the upstream.)
    pub fn accepting(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
            && (self.when_full == WhenFull::Block || self.tx.capacity() > 0)
    }

    /// Record without waiting (a request that was cancelled: there is no one to answer).
    /// Refused only when the queue is full or the trail down, and then loudly.
    pub fn record_detached(&self, fields: Map<String, Value>) {
        let job = Job {
            fields,
            done: None,
            flush: false,
        };
        if self.healthy.load(Ordering::Acquire) && self.tx.try_send(job).is_ok() {
            self.backlog.inc();
            self.records.with_label_values(&["queued"]).inc();
        } else {
            self.records.with_label_values(&["failed"]).inc();
            tracing::error!("audit: the record of a cancelled request could not be queued");
        }
    }

    /// Wait until every record queued so far is on disk (at shutdown; `interval`
    /// durability would otherwise leave the last records unsynced).
    pub async fn flush(&self) {
        let (t, r) = oneshot::channel();
        let job = Job {
            fields: Map::new(),
            done: Some(t),
            flush: true,
        };
        if self.tx.send(job).await.is_ok() {
            self.backlog.inc();
            let _ = r.await;
        }
    }

    /// Record one event. With `fsync` durability this returns once the record is on disk.
    pub async fn record(&self, fields: Map<String, Value>) -> Result<(), Rejection> {
        if !self.healthy.load(Ordering::Acquire) {
            self.records.with_label_values(&["refused"]).inc();
            return Err(unavailable());
        }
        let (done, wait) = match self.durability {
            Durability::Fsync => {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            }
            Durability::Interval => (None, None),
        };
        let job = Job {
            fields,
            done,
            flush: false,
        };
        let sent = match self.when_full {
            WhenFull::Block => self.tx.send(job).await.is_ok(),
            WhenFull::Fail => self.tx.try_send(job).is_ok(),
        };
        if !sent {
            self.records.with_label_values(&["refused"]).inc();
            return Err(unavailable());
        }
        self.backlog.inc();
        match wait {
            Some(r) => match r.await {
                Ok(true) => {
                    self.records.with_label_values(&["written"]).inc();
                    Ok(())
                }
                _ => {
                    self.records.with_label_values(&["failed"]).inc();
                    Err(unavailable())
                }
            },
            None => {
                self.records.with_label_values(&["queued"]).inc();
                Ok(())
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    opened: SystemTime,
    size: u64,
    chain: Chain,
    cfg: AuditConfig,
    healthy: Arc<AtomicBool>,
    backlog: prometheus::IntGauge,
    errors: prometheus::IntCounter,
    forward: Option<syslog::Forwarder>,
    spool: Option<repository::Spool>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        self.size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut last_sync = std::time::Instant::now();
        let mut dirty = false;
        loop {
            // Group commit: everything queued now is written, then synced once.
            let unhealthy = !self.healthy.load(Ordering::Acquire);
            let first = match self.cfg.durability {
                // While the trail is refusing records no job arrives to prove it works
                // again: probe the file every second instead.
                Durability::Fsync if unhealthy => match recv_timeout(&mut rx, RECOVERY_PROBE) {
                    Recv::Job(j) => j,
                    Recv::Timeout => {
                        self.try_recover();
                        continue;
                    }
                    Recv::Closed => return,
                },
                Durability::Fsync => match rx.blocking_recv() {
                    Some(j) => j,
                    None => return,
                },
                Durability::Interval => {
                    let wait = self.cfg.sync_interval.0.saturating_sub(last_sync.elapsed());
                    match recv_timeout(&mut rx, wait) {
                        Recv::Job(j) => j,
                        Recv::Timeout => {
                            if dirty {
                                self.sync();
                                dirty = false;
                            }
                            if unhealthy {
                                self.try_recover();
                            }
                            last_sync = std::time::Instant::now();
                            continue;
                        }
                        Recv::Closed => {
                            self.sync();
                            return;
                        }
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.backlog.sub(batch.len() as i64);
            let mut ok = true;
            // A failed write is rolled back (file length and chain), so a torn batch never
            // stays in the middle of the file.
            let saved = (self.size, self.chain.seq, self.chain.prev.clone());
            let mut buf = Vec::with_capacity(batch.len() * 512);
            // What the syslog sink and the repository get once the batch is durable.
            let mut lines: Vec<(&'static str, String)> = Vec::new();
            let mut events: Vec<Vec<u8>> = Vec::new();
            let flushing = batch.iter().any(|j| j.flush);
            for job in batch.iter_mut().filter(|j| !j.flush) {
                let mut fields = std::mem::take(&mut job.fields);
                // The raw query never goes into the line in clear.
                let query = fields.remove(QUERY_FIELD);
                let event =
                    self.cfg.audit_event.as_ref().and_then(|c| {
                        audit_event(&fields, query.as_ref().and_then(Value::as_str), c)
                    });
                if let (Some(e), Some(true)) =
                    (&event, self.cfg.audit_event.as_ref().map(|c| c.in_file))
                {
                    fields.insert("audit_event".into(), e.clone());
                }
                let line = self.chain.seal(fields);
                buf.extend_from_slice(line.as_bytes());
                let as_event = self
                    .cfg
                    .syslog
                    .as_ref()
                    .is_some_and(|s| s.message == SyslogMessage::AuditEvent);
                match (&self.forward, &event) {
                    (Some(_), Some(e)) if as_event => {
                        lines.push((syslog::MSGID_AUDIT_EVENT, e.to_string()))
                    }
                    (Some(_), _) => lines.push((syslog::MSGID_RECORD, line)),
                    _ => {}
                }
                if let (Some(_), Some(e)) = (&self.spool, &event) {
                    events.push(e.to_string().into_bytes());
                }
            }
            if let Err(e) = self.file.write_all(&buf) {
                ok = false;
                self.fail(&e.to_string());
                let _ = self.file.set_len(saved.0);
                self.chain.seq = saved.1;
                self.chain.prev = saved.2;
            } else {
                self.size += buf.len() as u64;
                dirty = true;
            }
            if ok && (self.cfg.durability == Durability::Fsync || flushing) {
                ok = self.sync();
                dirty = false;
            } else if ok && last_sync.elapsed() >= self.cfg.sync_interval.0 {
                ok = self.sync();
                dirty = false;
                last_sync = std::time::Instant::now();
            }
            if ok {
                // Spooled (and synced) before the records are acknowledged: an answered
                // request's event survives a crash while the repository is down.
                if let Some(sp) = self.spool.as_mut() {
                    sp.put(&events);
                }
            }
            for job in batch {
                if let Some(d) = job.done {
                    let _ = d.send(ok);
                }
            }
            if ok {
                self.healthy.store(true, Ordering::Release);
                self.maybe_rotate();
                // Only what is on disk is forwarded, seq and hash included, so the
                // collector can check the chain too.
                if let Some(f) = &self.forward {
                    for (msgid, line) in lines {
                        f.offer(msgid, line);
                    }
                }
            }
        }
    }

    /// Reopen the file and sync it; if that works, take records again.
    fn try_recover(&mut self) {
        let reopened = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|f| f.sync_data().map(|()| f));
        if let Ok(f) = reopened {
            self.size = f.metadata().map(|m| m.len()).unwrap_or(self.size);
            self.file = f;
            self.healthy.store(true, Ordering::Release);
            tracing::info!(file = %self.path.display(), "audit trail writable again");
        }
    }

    fn sync(&mut self) -> bool {
        match self.file.sync_data() {
            Ok(()) => true,
            Err(e) => {
                self.fail(&e.to_string());
                false
            }
        }
    }

    fn fail(&mut self, e: &str) {
        self.errors.inc();
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::error!(file = %self.path.display(), error = %e, "audit trail cannot be written; audited requests are refused");
        }
    }

    fn maybe_rotate(&mut self) {
        let too_big = self.size >= self.cfg.max_bytes;
        let too_old = self
            .cfg
            .max_age
            .is_some_and(|a| self.opened.elapsed().is_ok_and(|e| e >= a.0));
        if !(too_big || too_old) {
            return;
        }
        // Named by the last seq it holds: unique, and sorted in chain order.
        let rotated = PathBuf::from(format!("{}.{:020}", self.path.display(), self.chain.seq));
        let result = self
            .file
            .sync_all()
            .and_then(|()| std::fs::rename(&self.path, &rotated))
            .and_then(|()| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            });
        match result {
            Ok(f) => {
                self.file = f;
                self.size = 0;
                self.opened = SystemTime::now();
                tracing::info!(rotated = %rotated.display(), seq = self.chain.seq, "audit file rotated");
            }
            Err(e) => self.fail(&format!("rotation: {e}")),
        }
    }
}

enum Recv {
    Job(Job),
    Timeout,
    Closed,
}

fn recv_timeout(rx: &mut mpsc::Receiver<Job>, wait: Duration) -> Recv {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match rx.try_recv() {
            Ok(j) => return Recv::Job(j),
            Err(mpsc::error::TryRecvError::Disconnected) => return Recv::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= deadline {
            return Recv::Timeout;
        }
        std::thread::sleep(Duration::from_millis(5).min(wait));
    }
}

// ------------------------------------------------------------------ verification

/// What `verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Intact from seq `first` to `last` (a trail whose oldest files were archived away
    /// starts above 1: compare `first` with what you expect).
    Ok {
        records: u64,
        first: u64,
        last: u64,
    },
    /// A record's hash does not match its content or the previous record: edited.
    Modified {
        file: String,
        line: usize,
        seq: Option<u64>,
    },
    /// `seq` went backwards or repeated: records reordered or duplicated.
    Reordered {
        file: String,
        line: usize,
        seq: u64,
        expected: u64,
    },
    /// `seq` skipped: records deleted.
    Missing {
        file: String,
        line: usize,
        seq: u64,
        expected: u64,
    },
    /// Not a record at all.
    Malformed {
        file: String,
        line: usize,
    },
    Unreadable {
        file: String,
        error: String,
    },
}

impl Verdict {
    /// `ward audit verify` exit code: 0 intact, 1 modified, 2 reordered, 3 missing,
    /// 4 malformed or unreadable.
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Ok { .. } => 0,
            Verdict::Modified { .. } => 1,
            Verdict::Reordered { .. } => 2,
            Verdict::Missing { .. } => 3,
            Verdict::Malformed { .. } | Verdict::Unreadable { .. } => 4,
        }
    }
}

/// The records of the given files, in file order: (file, line number, line without
/// its newline). A torn final line (a write cut by a crash, never acknowledged) is left
/// out.
/// A record line: (file, line number, bytes without the newline).
type Line = (String, usize, Vec<u8>);

fn read_lines(files: &[PathBuf]) -> Result<Vec<Line>, Verdict> {
    let mut groups: Vec<(u64, Vec<Line>)> = Vec::new();
    for path in files {
        let mut out = Vec::new();
        let name = path.display().to_string();
        let f = File::open(path).map_err(|e| Verdict::Unreadable {
            file: name.clone(),
            error: e.to_string(),
        })?;
        let mut reader = BufReader::new(f);
        let mut n = 0usize;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(Verdict::Unreadable {
                        file: name,
                        error: e.to_string(),
                    })
                }
            }
            n += 1;
            if line.pop() != Some(b'\n') {
                break;
            }
            out.push((name.clone(), n, line));
        }
        // Files are taken in chain order whatever order they were given in (a shell glob
        // lists the current file before its rotations).
        let first = out
            .first()
            .and_then(|(_, _, l)| serde_json::from_slice::<Value>(l).ok()?["seq"].as_u64())
            .unwrap_or(u64::MAX);
        groups.push((first, out));
    }
    groups.sort_by_key(|(first, _)| *first);
    Ok(groups.into_iter().flat_map(|(_, g)| g).collect())
}

/// Check files (oldest first: rotated files, then the current one) as one chain.
pub fn verify(files: &[PathBuf], key: Option<&Path>) -> Verdict {
    let key = match key.map(load_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            return Verdict::Unreadable {
                file: key.map(|k| k.display().to_string()).unwrap_or_default(),
                error: e,
            }
        }
    };
    let lines = match read_lines(files) {
        Ok(l) => l,
        Err(v) => return v,
    };
    // Every seq present, to tell a record moved elsewhere from one that is gone.
    let present: std::collections::HashSet<u64> = lines
        .iter()
        .filter_map(|(_, _, l)| serde_json::from_slice::<Value>(l).ok()?["seq"].as_u64())
        .collect();
    let mut chain = Chain {
        seq: 0,
        prev: String::new(),
        key,
    };
    let marker = b",\"hash\":\"";
    for (i, (file, line, text)) in lines.iter().enumerate() {
        let (file, line) = (file.clone(), *line);
        let Ok(v) = serde_json::from_slice::<Value>(text) else {
            return Verdict::Malformed { file, line };
        };
        let (Some(seq), Some(prev), Some(hash)) =
            (v["seq"].as_u64(), v["prev"].as_str(), v["hash"].as_str())
        else {
            return Verdict::Malformed { file, line };
        };
        let Some(cut) = text.windows(marker.len()).rposition(|w| w == marker) else {
            return Verdict::Malformed { file, line };
        };
        if i == 0 {
            // The oldest file given may start mid-chain (older files archived away).
            chain.seq = seq.saturating_sub(1);
            chain.prev = prev.to_owned();
        }
        let expected = chain.seq + 1;
        if seq != expected {
            return if seq < expected || present.contains(&expected) {
                Verdict::Reordered {
                    file,
                    line,
                    seq,
                    expected,
                }
            } else {
                Verdict::Missing {
                    file,
                    line,
                    seq,
                    expected,
                }
            };
        }
        // The line must end right after the hash: members appended after it would not be
        // covered by it (and a JSON reader would take the last duplicate).
        let tail = format!(",\"hash\":\"{hash}\"}}");
        let well_formed = hash.len() == 64
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
            && text.get(cut..) == Some(tail.as_bytes());
        let body = text.get(..cut).unwrap_or_default();
        if !well_formed || prev != chain.prev || chain.digest(body) != hash {
            return Verdict::Modified {
                file,
                line,
                seq: Some(seq),
            };
        }
        chain.seq = seq;
        chain.prev = hash.to_owned();
    }
    let records = lines.len() as u64;
    Verdict::Ok {
        records,
        first: (chain.seq + 1).saturating_sub(records),
        last: chain.seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_chain(n: u64, key: Option<aws_lc_rs::hmac::Key>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let mut c = Chain {
            seq: 0,
            prev: GENESIS.into(),
            key,
        };
        let mut text = String::new();
        for i in 0..n {
            let mut m = Map::new();
            m.insert("request_id".into(), Value::String(format!("r{i}")));
            m.insert("decision".into(), Value::String("allow".into()));
            text.push_str(&c.seal(m));
        }
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn put(p: &Path, l: &[String]) {
        std::fs::write(p, l.join("\n") + "\n").unwrap();
    }

    #[test]
    fn intact_chain_verifies_and_every_kind_of_tampering_is_named() {
        let (_d, p) = write_chain(5, None);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Ok { records: 5, .. }
        ));
        let orig = lines(&p);
        // Edited value.
        let mut l = orig.clone();
        l[2] = l[2].replace("\"allow\"", "\"deny\"");
        put(&p, &l);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Modified { line: 3, .. }
        ));
        // Deleted record.
        let mut l = orig.clone();
        l.remove(2);
        put(&p, &l);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Missing {
                line: 3,
                seq: 4,
                expected: 3,
                ..
            }
        ));
        // Swapped records.
        let mut l = orig.clone();
        l.swap(1, 2);
        put(&p, &l);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Reordered { line: 2, .. }
        ));
        // A member appended after the hash is not covered by it.
        let mut l = orig.clone();
        l[3] = l[3].trim_end_matches('}').to_owned() + ",\"decision\":\"deny\"}";
        put(&p, &l);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Modified { line: 4, .. }
        ));
        // Garbage.
        let mut l = orig.clone();
        l[4] = "not json".into();
        put(&p, &l);
        assert_eq!(verify(std::slice::from_ref(&p), None).exit_code(), 4);
        // A torn last line (crash mid-write) is not a record and not an error.
        put(&p, &orig);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":6,\"prev").unwrap();
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Ok { records: 5, .. }
        ));
        // resume() drops it and continues the chain.
        assert_eq!(resume(&p).unwrap().0, 5);
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Ok { records: 5, .. }
        ));
    }

    #[test]
    fn keyed_chains_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let kp = dir.path().join("k");
        std::fs::write(&kp, "0123456789abcdef0123456789abcdef-secret").unwrap();
        let (_d, p) = write_chain(3, Some(load_key(&kp).unwrap()));
        assert!(matches!(
            verify(std::slice::from_ref(&p), Some(&kp)),
            Verdict::Ok { records: 3, .. }
        ));
        assert!(matches!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Modified { .. }
        ));
    }
}
