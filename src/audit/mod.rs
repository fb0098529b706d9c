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
//! Durability (`durability`): `fsync` — a request's response waits until its own record is
//! durable: the write holding it has returned *and* the `fdatasync` issued after that write
//! has returned without error. `interval` — the response does not wait, and the file is
//! synced every `sync_interval`: faster, but a crash can lose the last interval's records.
//! When the queue is full, `when_full: block` makes requests wait for room; `fail` answers
//! 503 `audit_unavailable`. A record is never dropped silently: if the file cannot be
//! written, audited requests fail with 503 until it can.
//!
//! Group commit. Requests hand their record to one writer thread through the bounded queue
//! (tokio's mpsc: a lock-free block list, no lock taken per record). Each time the writer
//! wakes it takes everything queued, at most [`MAX_BATCH`] records, seals them in queue
//! order (so chain order = file order = queue order), and writes the batch with ONE write
//! from one reused buffer followed by ONE `fdatasync`; only then is each waiting request
//! released. No timer is involved: the batch is whatever arrived while the previous
//! batch was being written and synced, so batches grow with load and a lone request never
//! waits for company. If the write or the sync fails, every record of the batch fails the
//! same way (its request gets 503, the file is cut back to before the batch, the chain
//! rewound), and the trail refuses records until the file can be written again.
//!
//! Serialisation. An HTTP request's record ([`HttpRecord`]) holds shared handles to the
//! request's facts (route, identity, FHIR request, claims) and is written by the writer
//! thread straight into the batch buffer, members in the same (alphabetical) order and with
//! the same escaping as `serde_json` gives, so lines are byte-for-byte what a
//! `serde_json::Map` of the same members would give. Other records (MLLP messages,
//! detect-and-respond events) still arrive as a `Map` ([`Record::Fields`]).
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

/// Most records a batch takes (one write, one fdatasync): bounds the buffer (records are
/// a few hundred bytes, so about half a megabyte) and how long the first request of a
/// batch waits for the last one to be sealed.
pub const MAX_BATCH: usize = 1024;

/// One record's members (besides `seq`, `prev` and `hash`, which the writer adds).
pub enum Record {
    /// An HTTP request on an audited route: typed, written straight into the line.
    Http(Box<HttpRecord>),
    /// Any other record (MLLP messages, detect-and-respond events): members by name.
    Fields(Map<String, Value>),
}

impl From<Map<String, Value>> for Record {
    fn from(m: Map<String, Value>) -> Self {
        Record::Fields(m)
    }
}

impl From<HttpRecord> for Record {
    fn from(r: HttpRecord) -> Self {
        Record::Http(Box::new(r))
    }
}

/// The record of one HTTP request, as the `audit` policy gathers it: mostly shared handles
/// to the request's own facts, so nothing is copied or formatted on the request path; the
/// writer thread turns it into the line. Absent facts are absent members.
pub struct HttpRecord {
    /// RFC 3339, taken when the request reached the audit layer.
    pub time: String,
    /// Written only if it is visible ASCII (as a header value can be read as text).
    pub request_id: Option<http::HeaderValue>,
    pub listener: Option<Arc<str>>,
    pub client_ip: Option<std::net::IpAddr>,
    pub route: Option<Arc<str>>,
    pub method: http::Method,
    pub identity: Option<Arc<crate::identity::ClientIdentity>>,
    pub fhir: Option<Arc<crate::fhir::request::FhirRequest>>,
    /// The raw request target (FHIR requests), for BALP's base64 `entity.query`; never
    /// written into the line in clear.
    pub query: Option<http::uri::PathAndQuery>,
    pub claims: Option<Arc<crate::context::Claims>>,
    pub dlp_findings: Option<crate::context::DlpFindings>,
    /// Present: a break-glass access with this stated reason.
    pub break_glass_reason: Option<String>,
    /// `allow`, `refuse`, `error` or `cancelled`.
    pub decision: &'static str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// The refusal's stable code.
    pub code: Option<&'static str>,
}

impl HttpRecord {
    /// A record with only the request's time and method; the policy fills in the rest.
    pub fn new(time: String, method: http::Method) -> Self {
        HttpRecord {
            time,
            request_id: None,
            listener: None,
            client_ip: None,
            route: None,
            method,
            identity: None,
            fhir: None,
            query: None,
            claims: None,
            dlp_findings: None,
            break_glass_reason: None,
            decision: "",
            status: 0,
            upstream_status: None,
            code: None,
        }
    }

    fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|h| h.to_str().ok())
    }

    /// The same members as a `Map` (what the BALP AuditEvent is built from; and, in tests,
    /// the reference the direct writer is compared with).
    pub fn to_fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
        };
        put("time", Some(&self.time));
        put("kind", Some("http"));
        put("request_id", self.request_id());
        put("listener", self.listener.as_deref());
        put(
            "client_ip",
            self.client_ip.map(|ip| ip.to_string()).as_deref(),
        );
        put("route", self.route.as_deref());
        put("method", Some(self.method.as_str()));
        if let Some(id) = &self.identity {
            put("cert_subject", Some(&id.subject));
            put("cert_sha256", Some(&id.x5t_s256));
        }
        if let Some(f) = &self.fhir {
            put("fhir_interaction", Some(f.interaction.label()));
            put("resource_type", f.resource_type);
            put("resource_id", f.id.as_deref());
            put("operation", f.operation.as_deref());
            if let Some((t, id)) = &f.compartment {
                put("compartment", Some(&format!("{t}/{id}")));
            }
        }
        if let Some(r) = &self.break_glass_reason {
            put("break_glass_reason", Some(r));
        }
        if let Some(c) = &self.claims {
            put("iss", Some(&c.iss));
            put("sub", Some(&c.sub));
            put("client_id", c.client_id.as_deref());
            put("patient", c.patient.as_deref());
        }
        put("decision", Some(self.decision));
        put("code", self.code);
        if self.break_glass_reason.is_some() {
            m.insert("break_glass".into(), Value::Bool(true));
        }
        if let Some(d) = &self.dlp_findings {
            m.insert("dlp_findings".into(), d.to_value());
        }
        m.insert("status".into(), Value::from(self.status));
        if let Some(u) = self.upstream_status {
            m.insert("upstream_status".into(), Value::from(u));
        }
        m
    }

    /// The members, each as `,"key":value`, in the order a `Map` of them sorts in
    /// (byte order of the keys), with `audit_event` (sorting first) when it goes in the
    /// line. Keep this list sorted: `the_direct_writer_matches_the_map_writer_byte_for_byte`
    /// holds it to [`HttpRecord::to_fields`].
    fn write_members(&self, b: &mut Vec<u8>, audit_event: Option<&Value>) {
        if let Some(e) = audit_event {
            member_value(b, "audit_event", e);
        }
        if let Some(r) = &self.break_glass_reason {
            member_raw(b, "break_glass", "true");
            member_str(b, "break_glass_reason", r);
        }
        if let Some(id) = &self.identity {
            member_str(b, "cert_sha256", &id.x5t_s256);
            member_str(b, "cert_subject", &id.subject);
        }
        let claims = self.claims.as_deref();
        if let Some(c) = claims.and_then(|c| c.client_id.as_deref()) {
            member_str(b, "client_id", c);
        }
        if let Some(ip) = self.client_ip {
            key(b, "client_ip");
            b.push(b'"');
            // An address never needs escaping.
            let _ = write!(b, "{ip}");
            b.push(b'"');
        }
        if let Some(c) = self.code {
            member_str(b, "code", c);
        }
        let fhir = self.fhir.as_deref();
        if let Some((t, id)) = fhir.and_then(|f| f.compartment.as_ref()) {
            key(b, "compartment");
            // Escaping works character by character: escaping the parts is escaping the whole.
            json_str(b, t);
            b.pop();
            b.push(b'/');
            json_str_tail(b, id);
        }
        member_str(b, "decision", self.decision);
        if let Some(d) = &self.dlp_findings {
            member_findings(b, d);
        }
        if let Some(f) = fhir {
            member_str(b, "fhir_interaction", f.interaction.label());
        }
        if let Some(c) = claims {
            member_str(b, "iss", &c.iss);
        }
        member_raw(b, "kind", "\"http\"");
        if let Some(l) = &self.listener {
            member_str(b, "listener", l);
        }
        member_str(b, "method", self.method.as_str());
        if let Some(op) = fhir.and_then(|f| f.operation.as_deref()) {
            member_str(b, "operation", op);
        }
        if let Some(p) = claims.and_then(|c| c.patient.as_deref()) {
            member_str(b, "patient", p);
        }
        if let Some(r) = self.request_id() {
            member_str(b, "request_id", r);
        }
        if let Some(id) = fhir.and_then(|f| f.id.as_deref()) {
            member_str(b, "resource_id", id);
        }
        if let Some(t) = fhir.and_then(|f| f.resource_type) {
            member_str(b, "resource_type", t);
        }
        if let Some(r) = &self.route {
            member_str(b, "route", r);
        }
        key(b, "status");
        let _ = write!(b, "{}", self.status);
        if let Some(c) = claims {
            member_str(b, "sub", &c.sub);
        }
        member_str(b, "time", &self.time);
        if let Some(u) = self.upstream_status {
            key(b, "upstream_status");
            let _ = write!(b, "{u}");
        }
    }
}

/// Benches: `record`'s line as the writer seals it (hash included) onto `buf`, chained to
/// the genesis hash. Not part of the API.
#[doc(hidden)]
pub fn seal_for_bench(record: &HttpRecord, buf: &mut Vec<u8>) {
    let mut chain = Chain {
        seq: 0,
        prev: GENESIS.into(),
        key: None,
    };
    chain.seal_into(buf, |b| record.write_members(b, None));
}

// ------------------------------------------------------------------ JSON writing
//
// Writing into a `Vec<u8>` cannot fail, hence the ignored `io::Result`s.

/// `,"key":` for a key that needs no escaping (the writer's own names).
fn key(b: &mut Vec<u8>, k: &str) {
    b.extend_from_slice(b",\"");
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(b"\":");
}

fn member_str(b: &mut Vec<u8>, k: &str, v: &str) {
    key(b, k);
    json_str(b, v);
}

fn member_raw(b: &mut Vec<u8>, k: &str, v: &str) {
    key(b, k);
    b.extend_from_slice(v.as_bytes());
}

fn member_value(b: &mut Vec<u8>, k: &str, v: &Value) {
    key(b, k);
    let _ = serde_json::to_writer(&mut *b, v);
}

/// `"dlp_findings":{"response":{"ssn":{"redact":2}}}`, as `serde_json` prints
/// [`DlpFindings::to_value`](crate::context::DlpFindings::to_value).
fn member_findings(b: &mut Vec<u8>, d: &crate::context::DlpFindings) {
    key(b, "dlp_findings");
    b.push(b'{');
    for (i, (dir, names)) in d.sorted().into_iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        json_str(b, dir);
        b.extend_from_slice(b":{");
        for (j, (name, acts)) in names.into_iter().enumerate() {
            if j > 0 {
                b.push(b',');
            }
            json_str(b, name);
            b.extend_from_slice(b":{");
            for (k, (act, n)) in acts.into_iter().enumerate() {
                if k > 0 {
                    b.push(b',');
                }
                json_str(b, act);
                b.push(b':');
                let _ = write!(b, "{n}");
            }
            b.push(b'}');
        }
        b.push(b'}');
    }
    b.push(b'}');
}

/// `s` as a JSON string, escaped exactly as `serde_json` does: `"` and `\` by a
/// backslash, the control characters U+0000..U+001F as `\b \t \n \f \r` or `\u00xx`
/// (lower-case hex); everything else, DEL and non-ASCII included, as its UTF-8 bytes.
fn json_str(b: &mut Vec<u8>, s: &str) {
    b.push(b'"');
    json_str_tail(b, s);
}

/// The rest of a JSON string after its opening quote: `s`, escaped, then the closing quote.
fn json_str_tail(b: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let short: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        b.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            b.extend_from_slice(b"\\u00");
            b.push(HEX[usize::from(c >> 4)]);
            b.push(HEX[usize::from(c & 0xf)]);
        } else {
            b.extend_from_slice(short);
        }
        start = i + 1;
    }
    b.extend_from_slice(&bytes[start..]);
    b.push(b'"');
}

/// A `Map`'s members as `,"key":value`, in its order.
fn write_map_members(b: &mut Vec<u8>, m: &Map<String, Value>) {
    for (k, v) in m {
        b.push(b',');
        json_str(b, k);
        b.push(b':');
        let _ = serde_json::to_writer(&mut *b, v);
    }
}

/// A message to the writer thread.
enum Job {
    /// A record; `done` is answered once it is durable (fsync) or has failed.
    Record {
        record: Record,
        done: Option<oneshot::Sender<bool>>,
    },
    /// No record: answered once everything queued before it is on disk (shutdown).
    Flush(oneshot::Sender<bool>),
    /// Tests: the writer says it is held (first sender), then waits for the release (the
    /// receiver) before it takes the next batch; `swap` replaces the file it writes to
    /// (to make writes fail).
    #[cfg(test)]
    Hold {
        held: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        swap: Option<PathBuf>,
    },
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
    /// `ward_audit_records_total` by result, looked up once.
    counts: Arc<Counts>,
    #[cfg(test)]
    relay: bool,
}

struct Counts {
    written: prometheus::IntCounter,
    queued: prometheus::IntCounter,
    refused: prometheus::IntCounter,
    failed: prometheus::IntCounter,
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

    /// Appends the next line to `buf`: `{"seq":…,"prev":…<members>,"hash":…}` and a
    /// newline, where `members` writes `,"key":value` for each member. Returns where the
    /// line starts.
    fn seal_into(&mut self, buf: &mut Vec<u8>, members: impl FnOnce(&mut Vec<u8>)) -> usize {
        let start = buf.len();
        let seq = self.seq + 1;
        let _ = write!(buf, "{{\"seq\":{seq},\"prev\":\"{}\"", self.prev);
        members(buf);
        let hash = self.digest(buf.get(start..).unwrap_or_default());
        buf.extend_from_slice(b",\"hash\":\"");
        buf.extend_from_slice(hash.as_bytes());
        buf.extend_from_slice(b"\"}\n");
        self.seq = seq;
        self.prev = hash;
        start
    }

    /// The line for `fields` (tests: chains written without a writer).
    #[cfg(test)]
    fn seal(&mut self, fields: Map<String, Value>) -> String {
        let mut buf = Vec::new();
        self.seal_into(&mut buf, |b| write_map_members(b, &fields));
        String::from_utf8(buf).unwrap()
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
        let relay = relay();
        let log = AuditLog {
            tx,
            durability: cfg.durability,
            when_full: cfg.when_full,
            healthy: healthy.clone(),
            backlog: metrics.audit_backlog.clone(),
            counts: Arc::new(Counts {
                written: metrics.audit_records.with_label_values(&["written"]),
                queued: metrics.audit_records.with_label_values(&["queued"]),
                refused: metrics.audit_records.with_label_values(&["refused"]),
                failed: metrics.audit_records.with_label_values(&["failed"]),
            }),
            #[cfg(test)]
            relay: relay.is_some(),
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
            batches: metrics.audit_batches.clone(),
            syncs: metrics.audit_syncs.clone(),
            forward: match &cfg.syslog {
                Some(s) => Some(syslog::start_syslog(s, resolve, metrics)?),
                None => None,
            },
            spool: match &cfg.repository {
                Some(r) => Some(repository::start(r, resolve, metrics)?),
                None => None,
            },
            relay,
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
    pub fn record_detached(&self, record: impl Into<Record>) {
        let job = Job::Record {
            record: record.into(),
            done: None,
        };
        if self.healthy.load(Ordering::Acquire) && self.tx.try_send(job).is_ok() {
            self.backlog.inc();
            self.counts.queued.inc();
        } else {
            self.counts.failed.inc();
            tracing::error!("audit: the record of a cancelled request could not be queued");
        }
    }

    /// Wait until every record queued so far is on disk (at shutdown; `interval`
    /// durability would otherwise leave the last records unsynced).
    pub async fn flush(&self) {
        let (t, r) = oneshot::channel();
        if self.tx.send(Job::Flush(t)).await.is_ok() {
            self.backlog.inc();
            let _ = r.await;
        }
    }

    /// Record one event. With `fsync` durability this returns once the record is on disk.
    pub async fn record(&self, record: impl Into<Record>) -> Result<(), Rejection> {
        if !self.healthy.load(Ordering::Acquire) {
            self.counts.refused.inc();
            return Err(unavailable());
        }
        let (done, wait) = match self.durability {
            Durability::Fsync => {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            }
            Durability::Interval => (None, None),
        };
        let job = Job::Record {
            record: record.into(),
            done,
        };
        let sent = match self.when_full {
            WhenFull::Block => self.tx.send(job).await.is_ok(),
            WhenFull::Fail => self.tx.try_send(job).is_ok(),
        };
        if !sent {
            self.counts.refused.inc();
            return Err(unavailable());
        }
        self.backlog.inc();
        match wait {
            Some(r) => match r.await {
                Ok(true) => {
                    self.counts.written.inc();
                    Ok(())
                }
                _ => {
                    self.counts.failed.inc();
                    Err(unavailable())
                }
            },
            None => {
                self.counts.queued.inc();
                Ok(())
            }
        }
    }

    /// Tests: was a relay task started for this trail (see [`relay`])?
    #[cfg(test)]
    fn relay_running(&self) -> bool {
        self.relay
    }

    /// Tests: hold the writer before its next batch (so records queue up), optionally
    /// making it write to `swap` from then on. Returns once the writer is held; dropping
    /// the returned sender (or sending on it) releases it.
    #[cfg(test)]
    async fn hold(&self, swap: Option<PathBuf>) -> std::sync::mpsc::Sender<()> {
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let job = Job::Hold {
            held: held_tx,
            release: release_rx,
            swap,
        };
        assert!(self.tx.send(job).await.is_ok());
        tokio::task::spawn_blocking(move || held_rx.recv())
            .await
            .unwrap()
            .unwrap();
        release_tx
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
    batches: prometheus::IntCounter,
    syncs: prometheus::IntCounter,
    forward: Option<syslog::Forwarder>,
    spool: Option<repository::Spool>,
    /// Hands a batch's acknowledgements to a task on the gateway's runtime (see [`relay`]).
    relay: Option<Relay>,
}

/// A batch's acknowledgements and its outcome, on their way to the runtime.
type Acks = (Vec<oneshot::Sender<bool>>, bool);
type Relay = mpsc::UnboundedSender<Acks>;

/// Start the task that answers a batch's waiting requests from inside the runtime.
///
/// Why: a task woken from a thread outside a current-thread runtime costs a write to the
/// runtime's eventfd — one system call, and on a shared core a context switch back into
/// the event loop — for every wake: answering the ≈ 30 records of a batch one by one from
/// this thread cost ≈ 26 system calls and ≈ 15 context switches per batch (measured with
/// `perf stat` at 12 k audited requests/s on one core). Handed over in one message, the
/// batch costs one wake; the relay's own wakes of the requests stay on the runtime's
/// thread, where they are queue pushes. Without a runtime (or once it is gone) the writer
/// answers directly.
fn relay() -> Option<Relay> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Acks>();
    rt.spawn(async move {
        while let Some((done, ok)) = rx.recv().await {
            answer(done, ok);
        }
    });
    Some(tx)
}

fn answer(done: Vec<oneshot::Sender<bool>>, ok: bool) {
    for d in done {
        let _ = d.send(ok);
    }
}

/// What one batch leaves besides its bytes, kept between batches for their capacity.
#[derive(Default)]
struct BatchOut {
    /// The lines, then the file's contents for the one write.
    buf: Vec<u8>,
    /// Requests to answer once the batch is durable (or has failed).
    done: Vec<oneshot::Sender<bool>>,
    /// What the syslog sink gets once the batch is durable.
    lines: Vec<(&'static str, String)>,
    /// What the repository spool gets before the batch is acknowledged.
    events: Vec<Vec<u8>>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        self.size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut last_sync = std::time::Instant::now();
        let mut dirty = false;
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut out = BatchOut::default();
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
            #[cfg(test)]
            let first = match first {
                Job::Hold {
                    held,
                    release,
                    swap,
                } => {
                    let _ = held.send(());
                    let _ = release.recv();
                    if let Some(p) = swap {
                        if let Ok(f) = OpenOptions::new().write(true).open(p) {
                            self.file = f;
                        }
                    }
                    continue;
                }
                j => j,
            };
            batch.push(first);
            if self.cfg.durability == Durability::Fsync {
                // Give the threads that produce records one turn before the batch closes.
                // Where the gateway and this writer share a core (a one-core VM, a pinned
                // gateway), the event loop then queues the records of every request it can
                // advance, and one fdatasync covers them all instead of a few: measured 9.7 ->
                // 30 records per sync with 32 clients at ~20k requests/s on one core (CPU per
                // request 46 -> 42.5 us). With a core to itself the yield returns at once; no
                // record waits for a timer.
                std::thread::yield_now();
            }
            while batch.len() < MAX_BATCH {
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
            let mut flushing = false;
            for job in batch.drain(..) {
                match job {
                    Job::Record { record, done } => {
                        self.seal(record, &mut out);
                        out.done.extend(done);
                    }
                    Job::Flush(done) => {
                        flushing = true;
                        out.done.push(done);
                    }
                    #[cfg(test)]
                    Job::Hold { .. } => {}
                }
            }
            if !out.buf.is_empty() {
                self.batches.inc();
                if let Err(e) = self.file.write_all(&out.buf) {
                    ok = false;
                    self.fail(&e.to_string());
                    let _ = self.file.set_len(saved.0);
                    self.chain.seq = saved.1;
                    self.chain.prev = saved.2;
                } else {
                    self.size += out.buf.len() as u64;
                    dirty = true;
                }
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
                    sp.put(&out.events);
                }
            }
            if !out.done.is_empty() {
                let done = std::mem::take(&mut out.done);
                match &self.relay {
                    Some(r) => {
                        if let Err(mpsc::error::SendError((done, ok))) = r.send((done, ok)) {
                            // The runtime is gone (shutdown): answer from here.
                            self.relay = None;
                            answer(done, ok);
                        }
                    }
                    None => answer(done, ok),
                }
            }
            out.buf.clear();
            out.events.clear();
            if ok {
                self.healthy.store(true, Ordering::Release);
                self.maybe_rotate();
                // Only what is on disk is forwarded, seq and hash included, so the
                // collector can check the chain too.
                if let Some(f) = &self.forward {
                    for (msgid, line) in out.lines.drain(..) {
                        f.offer(msgid, line);
                    }
                }
            }
            out.lines.clear();
        }
    }

    /// Seals one record onto the batch's buffer, and keeps what the sinks need of it.
    fn seal(&mut self, record: Record, out: &mut BatchOut) {
        let cfg = self.cfg.audit_event.as_ref();
        let (start, event) = match record {
            Record::Http(r) => {
                // The AuditEvent is built from the members by name (only when configured).
                let event = cfg.and_then(|c| {
                    audit_event(&r.to_fields(), r.query.as_ref().map(|q| q.as_str()), c)
                });
                let in_line = event.as_ref().filter(|_| cfg.is_some_and(|c| c.in_file));
                let start = self
                    .chain
                    .seal_into(&mut out.buf, |b| r.write_members(b, in_line));
                (start, event)
            }
            Record::Fields(mut fields) => {
                // The raw query never goes into the line in clear.
                let query = fields.remove(QUERY_FIELD);
                let event = cfg
                    .and_then(|c| audit_event(&fields, query.as_ref().and_then(Value::as_str), c));
                if let (Some(e), Some(true)) = (&event, cfg.map(|c| c.in_file)) {
                    fields.insert("audit_event".into(), e.clone());
                }
                let start = self
                    .chain
                    .seal_into(&mut out.buf, |b| write_map_members(b, &fields));
                (start, event)
            }
        };
        if self.forward.is_some() {
            let as_event = self
                .cfg
                .syslog
                .as_ref()
                .is_some_and(|s| s.message == SyslogMessage::AuditEvent);
            match &event {
                Some(e) if as_event => out.lines.push((syslog::MSGID_AUDIT_EVENT, e.to_string())),
                _ => {
                    let line = out.buf.get(start..).unwrap_or_default();
                    out.lines.push((
                        syslog::MSGID_RECORD,
                        String::from_utf8_lossy(line).into_owned(),
                    ));
                }
            }
        }
        if let (Some(_), Some(e)) = (&self.spool, &event) {
            out.events.push(e.to_string().into_bytes());
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
        self.syncs.inc();
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

    /// Strings of every class the escaper must get right: each control character alone and
    /// embedded, quotes and backslashes in runs, DEL, multi-byte UTF-8 of every length
    /// (including U+2028/U+2029, which JSON allows raw), and long mixtures.
    fn nasty_strings() -> Vec<String> {
        let mut v: Vec<String> = vec![String::new()];
        for c in (0u8..=0x7f).map(char::from) {
            v.push(c.to_string());
            v.push(format!("a{c}b"));
            v.push(format!("{c}{c}\\{c}\""));
        }
        for s in [
            "\"",
            "\\",
            "\\\"",
            "\"\\\"",
            "\\\\\\",
            "é",
            "ü€",
            "€uro",
            "𝄞",
            "\u{2028}\u{2029}",
            "\u{feff}",
            "\u{10ffff}",
            "\u{7f}\u{80}\u{7ff}\u{800}\u{ffff}\u{10000}",
            "naïve \"quote\" \\path\\ \n\t\r\u{8}\u{c}\u{0}\u{1f}",
        ] {
            v.push(s.to_owned());
        }
        let every: String = (0u32..0x800).filter_map(char::from_u32).collect();
        v.push(every.repeat(40));
        v.push("x".repeat(100_000));
        v.push("\u{1}\"\\é".repeat(10_000));
        v
    }

    #[test]
    fn json_strings_are_escaped_exactly_as_serde_json_does() {
        for s in nasty_strings() {
            let mut b = Vec::new();
            json_str(&mut b, &s);
            let reference = serde_json::to_string(&s).unwrap();
            assert_eq!(String::from_utf8(b.clone()).unwrap(), reference, "{s:?}");
            let back: String = serde_json::from_slice(&b).unwrap();
            assert_eq!(back, s);
        }
    }

    fn identity(subject: &str) -> Arc<crate::identity::ClientIdentity> {
        Arc::new(crate::identity::ClientIdentity {
            subject_cn: None,
            subject: subject.to_owned(),
            issuer: "CN=ca".into(),
            issuer_cn: None,
            dns_sans: Vec::new(),
            uri_sans: Vec::new(),
            email_sans: Vec::new(),
            spki_sha256: String::new(),
            x5t_s256: format!("x5t-{subject}"),
            cert_sha256: String::new(),
            client_auth_eku: true,
            serial: "01".into(),
            not_after: 0,
        })
    }

    fn claims(s: &str, full: bool) -> Arc<crate::context::Claims> {
        Arc::new(crate::context::Claims {
            provider: "idp".into(),
            iss: format!("https://idp/{s}"),
            sub: s.to_owned(),
            client_id: full.then(|| format!("app {s}")),
            scopes: Vec::new(),
            patient: full.then(|| format!("{s}/p")),
            exp: 0,
            cnf_x5t: None,
            cnf_present: false,
            raw: Map::new(),
        })
    }

    fn fhir(s: &str, full: bool) -> Arc<crate::fhir::request::FhirRequest> {
        use crate::fhir::request::{FhirRequest, Interaction};
        Arc::new(FhirRequest {
            interaction: if full {
                Interaction::SearchCompartment
            } else {
                Interaction::Read
            },
            resource_type: Some("Patient"),
            id: full.then(|| s.to_owned()),
            version: None,
            compartment: full.then(|| ("Patient", format!("{s}\"/\\"))),
            operation: full.then(|| format!("op{s}")),
            conditional: false,
            params: Vec::new(),
            format: None,
        })
    }

    /// Every combination of present and absent members, with hostile text in each string.
    fn http_records() -> Vec<(HttpRecord, Option<Value>)> {
        let strings: Vec<String> = nasty_strings()
            .into_iter()
            .filter(|s| s.len() < 64)
            .collect();
        let mut out = Vec::new();
        for (i, s) in strings.iter().enumerate() {
            let bits = (i as u32 + 1).wrapping_mul(2_654_435_761); // spread the combinations
            let on = |n: u32| bits >> n & 1 == 1;
            let mut r =
                HttpRecord::new(format!("2026-12-05T06:00:00.{i:03}Z{s}"), http::Method::GET);
            if on(0) {
                r.method = http::Method::from_bytes(b"PROPFIND").unwrap();
            }
            if on(1) {
                // Sometimes not visible ASCII: then not written, as before.
                r.request_id = http::HeaderValue::from_bytes(s.as_bytes()).ok();
                r.listener = Some(Arc::from(s.as_str()));
                r.client_ip = Some(if on(2) {
                    "10.0.0.1".parse().unwrap()
                } else {
                    "2001:db8::1".parse().unwrap()
                });
            }
            if on(3) {
                r.route = Some(Arc::from(format!("route{s}").as_str()));
            }
            if on(4) {
                r.identity = Some(identity(s));
            }
            if on(5) {
                r.fhir = Some(fhir(s, on(6)));
                r.query = Some(http::uri::PathAndQuery::from_static(
                    "/fhir/Patient?name=SECRET",
                ));
            }
            if on(7) {
                r.claims = Some(claims(s, on(8)));
            }
            if on(9) {
                let mut d = crate::context::DlpFindings::default();
                let count = |label: &str, action, n| crate::context::DlpCount {
                    label: Arc::from(label),
                    action,
                    n,
                };
                d.set(
                    "request",
                    vec![count(s, "mask", 2), count("b", "redact", 1)],
                );
                if on(12) {
                    // Names out of order, and a response direction before the request's.
                    d.set(
                        "response",
                        vec![
                            count("z", "mask", 1),
                            count(s, "redact", 3),
                            count(s, "block", 1),
                        ],
                    );
                }
                r.dlp_findings = Some(d);
            }
            if on(10) {
                r.break_glass_reason = Some(format!("emergency {s}"));
            }
            r.decision = ["allow", "refuse", "error", "cancelled"][(bits >> 11) as usize % 4];
            r.status = [200, 403, 502, 499][(bits >> 11) as usize % 4];
            if on(13) {
                r.upstream_status = Some(r.status);
            } else {
                r.code = Some("scope_denied");
            }
            let event = on(14).then(|| serde_json::json!({"resourceType": "AuditEvent", "x": s}));
            out.push((r, event));
        }
        // Everything at once.
        let s = "\u{0}\"\\é𝄞";
        let mut r = HttpRecord::new("t".into(), http::Method::DELETE);
        r.request_id = http::HeaderValue::from_str("rid-1").ok();
        r.listener = Some(Arc::from(s));
        r.client_ip = Some("127.0.0.1".parse().unwrap());
        r.route = Some(Arc::from(s));
        r.identity = Some(identity(s));
        r.fhir = Some(fhir(s, true));
        r.claims = Some(claims(s, true));
        let mut d = crate::context::DlpFindings::default();
        d.set(
            "response",
            vec![crate::context::DlpCount {
                label: Arc::from("ssn"),
                action: "redact",
                n: 1,
            }],
        );
        r.dlp_findings = Some(d);
        r.break_glass_reason = Some(s.into());
        r.decision = "refuse";
        r.status = 403;
        r.upstream_status = Some(200);
        r.code = Some("scope_denied");
        out.push((r, Some(serde_json::json!({"resourceType": "AuditEvent"}))));
        out
    }

    #[test]
    fn the_direct_writer_matches_the_map_writer_byte_for_byte() {
        let mut direct = Chain {
            seq: 0,
            prev: GENESIS.into(),
            key: None,
        };
        let mut by_map = Chain {
            seq: 0,
            prev: GENESIS.into(),
            key: None,
        };
        let mut file = Vec::new();
        let records = http_records();
        assert!(records.len() > 300, "{}", records.len());
        for (r, event) in &records {
            let mut a = Vec::new();
            direct.seal_into(&mut a, |b| r.write_members(b, event.as_ref()));
            let mut fields = r.to_fields();
            if let Some(e) = event {
                fields.insert("audit_event".into(), e.clone());
            }
            // The map writer is what the trail always wrote: each member as serde_json
            // prints it, in the map's (sorted) order: the map's own JSON minus its braces.
            let mut members = Vec::new();
            write_map_members(&mut members, &fields);
            let compact = serde_json::to_string(&fields).unwrap();
            let inner = &compact[1..compact.len() - 1];
            if !inner.is_empty() {
                assert_eq!(&members[1..], inner.as_bytes());
            }
            let mut b = Vec::new();
            by_map.seal_into(&mut b, |buf| buf.extend_from_slice(&members));
            assert_eq!(
                String::from_utf8(a.clone()).unwrap(),
                String::from_utf8(b).unwrap()
            );
            // And the line reads back as those members, plus seq, prev and hash.
            let mut parsed: Map<String, Value> = serde_json::from_slice(&a).unwrap();
            assert_eq!(parsed.remove("seq"), Some(Value::from(direct.seq)));
            assert!(parsed.remove("prev").is_some() && parsed.remove("hash").is_some());
            assert_eq!(parsed, fields);
            assert!(!String::from_utf8_lossy(&a).contains("SECRET"));
            file.extend_from_slice(&a);
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        std::fs::write(&p, file).unwrap();
        assert_eq!(
            verify(std::slice::from_ref(&p), None),
            Verdict::Ok {
                records: records.len() as u64,
                first: 1,
                last: records.len() as u64
            }
        );
    }

    fn start_log(dir: &Path) -> (AuditLog, crate::metrics::Metrics) {
        let metrics = crate::metrics::Metrics::new();
        let cfg: AuditConfig = serde_json::from_value(serde_json::json!({
            "path": "audit.jsonl",
            "durability": "fsync",
        }))
        .unwrap();
        let log = AuditLog::start(&cfg, &|f| dir.join(f), &metrics).unwrap();
        (log, metrics)
    }

    fn request(i: usize) -> HttpRecord {
        let mut r = HttpRecord::new(rfc3339(), http::Method::GET);
        r.request_id = http::HeaderValue::from_str(&format!("req-{i}")).ok();
        r.decision = "allow";
        r.status = 200;
        r
    }

    fn rfc3339() -> String {
        crate::calendar::rfc3339_now()
    }

    /// Waits (without a clock) until `n` records are queued behind the held writer.
    async fn queued(m: &crate::metrics::Metrics, n: i64) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while m.audit_backlog.get() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("records were not queued");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_fsync_records_are_written_in_one_batch_and_each_waits_for_its_sync() {
        const N: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let (log, m) = start_log(dir.path());
        let path = dir.path().join("audit.jsonl");
        let release = log.hold(None).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let (log, path) = (log.clone(), path.clone());
            tasks.spawn(async move {
                log.record(request(i)).await.map_err(|r| r.code)?;
                // Answered: the record is in the file already (written, then synced).
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains(&format!("\"request_id\":\"req-{i}\"")));
                Ok::<_, &str>(())
            });
        }
        queued(&m, N as i64).await;
        // Nothing is written while the writer is held: no request has its answer yet.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(m.audit_syncs.get(), 0);
        drop(release);
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap(), Ok(()));
        }
        // One write and one fdatasync for all of them.
        assert_eq!(m.audit_batches.get(), 1);
        assert_eq!(m.audit_syncs.get(), 1);
        assert_eq!(
            m.audit_records.with_label_values(&["written"]).get(),
            N as u64
        );
        assert_eq!(m.audit_backlog.get(), 0);
        assert_eq!(
            verify(std::slice::from_ref(&path), None),
            Verdict::Ok {
                records: N as u64,
                first: 1,
                last: N as u64
            }
        );
        let mut ids: Vec<String> = lines(&path)
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["request_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), N, "every record exactly once");

        // A lone record after that is its own batch: no waiting for company.
        log.record(request(N)).await.unwrap();
        assert_eq!(m.audit_batches.get(), 2);
        assert_eq!(m.audit_syncs.get(), 2);
    }

    /// A batch's answers go through a task on the runtime that started the trail; they
    /// still arrive on a single-threaded runtime (the relay shares its one thread with the
    /// waiting requests), when the trail was started outside any runtime, and after the
    /// relay's runtime is gone (the writer answers directly).
    #[test]
    fn fsync_answers_arrive_through_the_relay_and_without_it() {
        let rt = |_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let burst = |log: &AuditLog, rt: &tokio::runtime::Runtime, from: usize| {
            rt.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for i in from..from + 40 {
                    let log = log.clone();
                    tasks.spawn(async move { log.record(request(i)).await.map_err(|r| r.code) });
                }
                let mut n = 0;
                while let Some(r) = tasks.join_next().await {
                    assert_eq!(r.unwrap(), Ok(()));
                    n += 1;
                }
                n
            })
        };
        // Started on a current-thread runtime: answered through its relay.
        let dir = tempfile::tempdir().unwrap();
        let first = rt(());
        let (log, m) = first.block_on(async { start_log(dir.path()) });
        assert!(first.block_on(async { log.relay_running() }));
        assert_eq!(burst(&log, &first, 0), 40);
        // That runtime gone, requests served by another: answered by the writer itself.
        drop(first);
        let second = rt(());
        assert_eq!(burst(&log, &second, 40), 40);
        assert_eq!(burst(&log, &second, 80), 40);
        assert_eq!(m.audit_records.with_label_values(&["written"]).get(), 120);
        let path = dir.path().join("audit.jsonl");
        assert_eq!(
            verify(std::slice::from_ref(&path), None),
            Verdict::Ok {
                records: 120,
                first: 1,
                last: 120
            }
        );
        // Started outside any runtime: no relay at all.
        let dir = tempfile::tempdir().unwrap();
        let (log, m) = start_log(dir.path());
        assert!(!log.relay_running());
        assert_eq!(burst(&log, &second, 0), 40);
        assert_eq!(m.audit_records.with_label_values(&["written"]).get(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_batch_fails_every_record_in_it_and_the_chain_continues_after_recovery() {
        const N: usize = 20;
        let dir = tempfile::tempdir().unwrap();
        let (log, m) = start_log(dir.path());
        let path = dir.path().join("audit.jsonl");
        for i in 0..3 {
            log.record(request(i)).await.unwrap();
        }
        // From the next batch on, every write fails (ENOSPC).
        let release = log.hold(Some(PathBuf::from("/dev/full"))).await;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let log = log.clone();
            tasks.spawn(async move { log.record(request(100 + i)).await.map_err(|r| r.code) });
        }
        queued(&m, N as i64).await;
        drop(release);
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap(), Err("audit_unavailable"));
        }
        assert_eq!(
            m.audit_records.with_label_values(&["failed"]).get(),
            N as u64
        );
        assert!(m.audit_write_errors.get() >= 1);
        // Refused up front while the trail is down: fail closed.
        assert!(!log.accepting());
        assert_eq!(
            log.record(request(999)).await.map_err(|r| r.code),
            Err("audit_unavailable")
        );
        // The writer probes the real file again and takes records once it can.
        tokio::time::timeout(Duration::from_secs(60), async {
            while !log.accepting() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the trail did not recover");
        log.record(request(4)).await.unwrap();
        // None of the failed batch is in the file, and the chain runs on from seq 3.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("req-10"), "{text}");
        assert_eq!(
            verify(std::slice::from_ref(&path), None),
            Verdict::Ok {
                records: 4,
                first: 1,
                last: 4
            }
        );
    }
}
