//! MLLP listeners: HL7 v2 over TCP, terminated with TLS (optionally mutual), checked, and
//! forwarded to an MLLP upstream over a small pool of persistent connections.
//!
//! Per message, in order: frame (`hl7v2/mllp.rs`) → parse and validate (`hl7v2/validate.rs`)
//! → sender identity (the client certificate may claim only its configured MSH-3/MSH-4)
//! → rate limit → forward → relay the upstream's ACK unchanged. A message stopped at the
//! gateway gets the gateway's own ACK: `AR` for policy and identity, `AE` for content, with
//! MSA-2 = the message's MSH-10 and an ERR segment saying why. The gateway never writes an
//! `AA`: only the upstream's own ACK, relayed, can acknowledge delivery, so a message that
//! was not delivered is never acknowledged as if it were. Messages on one connection are
//! answered in the order they came (each waits for the previous one's ACK), and are
//! forwarded byte for byte: nothing is re-encoded, whatever the charset (MSH-18).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::config::primitives::{Dur, TlsConfig};
use crate::hl7v2::mllp::{write_frame, FrameError, FrameReader};
use crate::hl7v2::{self, AckCode, ErrorLoc, HeaderInfo};
use crate::identity::ClientIdentity;
use crate::metrics::Metrics;
use crate::ratelimit::local::LocalLimiter;

mod config;

pub use config::*;

/// Message-type label values: bounded by the allow-list, or by HL7's common message codes.
const KNOWN_CODES: &[&str] = &[
    "ACK", "ADT", "BAR", "DFT", "MDM", "MFN", "OMG", "OML", "ORM", "ORU", "QBP", "RDE", "RAS",
    "RSP", "SIU", "VXU",
];

/// Connection-independent state of one MLLP listener.
pub struct MllpCtx {
    pub name: Arc<str>,
    cfg: MllpConfig,
    rules: hl7v2::Rules,
    upstream: MllpUpstream,
    limiter: Option<Arc<crate::ratelimit::Tracked>>,
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    handshake_timeout: Duration,
    conn_limit: Arc<Semaphore>,
    /// Bumped by each TLS reload of this listener (see `handle`).
    pub tls_generation: Arc<AtomicU64>,
    audit: Option<crate::audit::AuditLog>,
    /// Detect and respond: blocked senders are not served (set after construction).
    pub respond: Option<Arc<crate::respond::Respond>>,
    /// DLP (engine, report-only, direction: `request` = messages to the receiver,
    /// `response` = its ACKs and replies).
    dlp: Option<(Arc<crate::dlp::Engine>, bool, crate::dlp::Direction)>,
    metrics: DlpMetrics,
    m: MllpMetrics,
}

struct DlpMetrics {
    dlp_findings: IntCounterVec,
    dlp_messages: IntCounterVec,
    dlp_scanned_bytes: IntCounterVec,
}

struct MllpMetrics {
    messages: IntCounterVec,
    acks: IntCounterVec,
    connections: IntCounter,
    active: IntGauge,
    discarded: IntCounter,
    frame_errors: IntCounterVec,
    tls_failures: IntCounterVec,
}

impl MllpCtx {
    pub fn new(
        cfg: &MllpConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
        metrics: &Metrics,
        audit: Option<crate::audit::AuditLog>,
        housekeeper: &Arc<crate::ratelimit::Housekeeper>,
        dlp: Option<&crate::dlp::DlpConfig>,
    ) -> Result<MllpCtx, String> {
        let dlp = match dlp {
            Some(d) => Some((
                Arc::new(crate::dlp::Engine::compile(d, resolve).map_err(|e| format!("dlp: {e}"))?),
                d.mode == crate::dlp::Mode::Report,
                d.direction,
            )),
            None => None,
        };
        if cfg.audit && audit.is_none() {
            return Err("audit: true needs the top-level `audit:`".into());
        }
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        let name = cfg.name.as_str();
        let limiter = match &cfg.rate_limit {
            Some(r) => {
                let (q, _) = crate::ratelimit::quota(r.rate, r.per, r.burst)
                    .map_err(|e| format!("rate_limit: {e}"))?;
                let labels = [name, "mllp"];
                Some(housekeeper.register(
                    Arc::new(LocalLimiter::new(q, 100_000)),
                    metrics.rate_limit_keys.with_label_values(&labels),
                    metrics.rate_limit_overflow.with_label_values(&labels),
                ))
            }
            None => None,
        };
        Ok(MllpCtx {
            name: Arc::from(name),
            rules: cfg.validate.rules(),
            upstream: MllpUpstream::new(&cfg.upstream, resolve, metrics, name)?,
            limiter,
            handshake_timeout: cfg
                .tls
                .as_ref()
                .map(|t| t.handshake_timeout.0)
                .unwrap_or(Duration::from_secs(10)),
            tls,
            conn_limit: Arc::new(Semaphore::new(cfg.max_connections)),
            tls_generation: Arc::new(AtomicU64::new(0)),
            audit: if cfg.audit { audit } else { None },
            respond: None,
            dlp,
            metrics: DlpMetrics {
                dlp_findings: metrics.dlp_findings.clone(),
                dlp_messages: metrics.dlp_messages.clone(),
                dlp_scanned_bytes: metrics.dlp_scanned_bytes.clone(),
            },
            m: MllpMetrics {
                messages: metrics.mllp_messages.clone(),
                acks: metrics.mllp_acks.clone(),
                connections: metrics.mllp_connections.with_label_values(&[name]),
                active: metrics.mllp_active_connections.with_label_values(&[name]),
                discarded: metrics.mllp_discarded_bytes.with_label_values(&[name]),
                frame_errors: metrics.mllp_frame_errors.clone(),
                tls_failures: metrics.tls_handshake_failures.clone(),
            },
            cfg: cfg.clone(),
        })
    }

    fn type_label(&self, h: &HeaderInfo) -> String {
        let code = String::from_utf8_lossy(&h.message_code).into_owned();
        let full = format!("{code}^{}", String::from_utf8_lossy(&h.trigger_event));
        if self.cfg.validate.allowed_message_types.is_empty() {
            if KNOWN_CODES.contains(&code.as_str()) {
                code
            } else {
                "other".into()
            }
        } else if self.rules.allowed_message_types.contains(&full) {
            full
        } else if self
            .rules
            .allowed_message_types
            .iter()
            .any(|t| *t == code || *t == format!("{code}^*"))
        {
            code
        } else {
            "other".into()
        }
    }
}

/// What happened to one message (bounded: a metric label).
#[derive(Clone, Copy)]
enum Outcome {
    Delivered,
    Invalid,
    SenderDenied,
    RateLimited,
    UpstreamFailed,
    Framing,
    DlpBlocked,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Invalid => "invalid",
            Outcome::SenderDenied => "sender_denied",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Framing => "framing",
            Outcome::DlpBlocked => "dlp_blocked",
        }
    }
}

pub async fn serve(
    ctx: Arc<MllpCtx>,
    tcp: TcpListener,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => break,
            acc = tcp.accept() => match acc {
                Ok((stream, peer)) => {
                    let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
                        drop(stream);
                        continue;
                    };
                    let ctx = ctx.clone();
                    let stop = stop.clone();
                    conns.spawn(async move {
                        let _permit = permit;
                        ctx.m.connections.inc();
                        ctx.m.active.inc();
                        accept(&ctx, stream, peer, stop).await;
                        ctx.m.active.dec();
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tcp);
    // Connections finish the message in hand (its ACK included), then close.
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(listener = %ctx.name, "grace period over; closing MLLP connections");
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn accept(ctx: &MllpCtx, stream: TcpStream, peer: SocketAddr, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    match &ctx.tls {
        None => handle(ctx, stream, peer, None, stop).await,
        Some(swap) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(swap.load_full());
            let tls =
                match tokio::time::timeout(ctx.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        let reason = crate::tls::handshake_failure_reason(&e);
                        ctx.m
                            .tls_failures
                            .with_label_values(&[&*ctx.name, reason])
                            .inc();
                        return;
                    }
                    Err(_) => {
                        ctx.m
                            .tls_failures
                            .with_label_values(&[&*ctx.name, "timeout"])
                            .inc();
                        return;
                    }
                };
            let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(der) => match ClientIdentity::from_der(der) {
                    Some(id) => Some(Arc::new(id)),
                    None => return,
                },
                None => None,
            };
            handle(ctx, tls, peer, identity, stop).await
        }
    }
}

async fn handle<S>(
    ctx: &MllpCtx,
    stream: S,
    peer: SocketAddr,
    identity: Option<Arc<ClientIdentity>>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = FrameReader::new(stream, ctx.cfg.max_message_bytes);
    let idle = ctx.cfg.idle_timeout.0;
    let frame_timeout = ctx.cfg.frame_timeout.0;
    // A sender's rate-limit key: its certificate's key, else its address.
    let sender_key: Vec<u8> = match &identity {
        Some(id) => id.spki_sha256.as_bytes().to_vec(),
        None => peer.ip().to_string().into_bytes(),
    };
    let generation = ctx.tls_generation.load(Ordering::Acquire);
    let mut framing_errors = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            _ = crate::shutdown::stopped(&mut stop) => break,
            n = reader.next(idle, frame_timeout) => n,
        };
        let discarded = reader.take_discarded();
        if discarded > 0 {
            ctx.m.discarded.inc_by(discarded);
        }
        // A certificate verified before the last CA/CRL reload may since have been revoked:
        // such a connection carries no further message (the sender reconnects, and its
        // new handshake meets the current CRLs).
        if identity.is_some() && ctx.tls_generation.load(Ordering::Acquire) != generation {
            tracing::info!(target: "ward::mllp", listener = %ctx.name, "TLS settings reloaded; closing a connection verified under the old ones");
            break;
        }
        // Blocked addresses and certificates (operator or signal blocks) are not served,
        // checked per message so a block made mid-connection applies to the next one.
        if let Some(r) = &ctx.respond {
            let cert = identity.as_deref().map(|i| i.cert_sha256.as_str());
            if r.sender_blocked(cert, peer.ip()) {
                tracing::warn!(target: "ward::mllp", listener = %ctx.name, peer = %peer.ip(), "blocked sender; connection closed");
                break;
            }
        }
        let (answer, close) = match next {
            Ok(None) => break,
            Ok(Some(msg)) => {
                let answer = ctx.process(&msg, identity.as_deref(), &sender_key).await;
                // No answer (not recorded): close, so the sender resends elsewhere/later.
                let close = answer.is_none();
                (answer, close)
            }
            Err(e) => {
                ctx.m
                    .frame_errors
                    .with_label_values(&[&*ctx.name, e.label()])
                    .inc();
                framing_errors += 1;
                if framing_errors > MAX_FRAMING_ERRORS {
                    // A stream of broken frames is not a sender worth answering.
                    break;
                }
                match e {
                    FrameError::Idle | FrameError::Io(_) => break,
                    // The sender can still use a NAK for what it sent; the stream is
                    // resynchronised at the new start block.
                    // Without a header there is no one to address a NAK to (a run of
                    // start-block bytes would otherwise buy one NAK per byte).
                    FrameError::NestedStart(partial) if hl7v2::header(&partial).is_none() => {
                        (None, false)
                    }
                    FrameError::NestedStart(partial) => {
                        (
                            Some(ctx.framing_nak(
                                &partial,
                                "MLLP frame interrupted by a new start block",
                            )),
                            false,
                        )
                    }
                    FrameError::TooLarge(head) => (
                        Some(ctx.framing_nak(&head, "message exceeds the size limit")),
                        true,
                    ),
                    FrameError::BadEnd(partial) => (
                        Some(ctx.framing_nak(&partial, "MLLP end block not followed by CR")),
                        true,
                    ),
                    FrameError::Timeout(partial) | FrameError::Truncated(partial) => {
                        // The sender is gone or stalled: nothing useful to answer.
                        tracing::info!(target: "ward::mllp", listener = %ctx.name, peer = %peer.ip(), bytes = partial.len(), "incomplete MLLP frame dropped; connection closed");
                        break;
                    }
                }
            }
        };
        if let Some(ack) = answer {
            // A client that does not read its ACKs must not hold the connection forever.
            let write = tokio::time::timeout(idle, write_frame(reader.get_mut(), &ack)).await;
            if !matches!(write, Ok(Ok(()))) {
                break;
            }
        }
        if close {
            break;
        }
    }
}

/// Framing errors tolerated on one connection before it is closed.
const MAX_FRAMING_ERRORS: u32 = 10;

/// The gateway's own ACK for `header`: `code` (never AA), one ERR at MSH-`field`
/// (0 = the segment) with a table 0357 `err` code and a fixed text.
fn gateway_ack(
    header: &HeaderInfo,
    code: AckCode,
    field: usize,
    component: Option<usize>,
    err: u16,
    text: &'static str,
) -> Vec<u8> {
    let loc = ErrorLoc {
        segment: "MSH".into(),
        sequence: 1,
        field,
        component,
        code: err,
        message: text,
    };
    hl7v2::build_ack(header, code, &[loc], &now(), &ack_id())
}

/// MSH-7 of gateway ACKs.
fn now() -> String {
    crate::calendar::hl7_now()
}

/// The gateway's own ACK control ids: unique per process, short enough for v2.3 (20).
fn ack_id() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!("WARD{}", N.fetch_add(1, Ordering::Relaxed))
}

impl MllpCtx {
    fn framing_nak(&self, partial: &[u8], text: &'static str) -> Vec<u8> {
        self.m
            .messages
            .with_label_values(&[&*self.name, "other", Outcome::Framing.label()])
            .inc();
        let header = hl7v2::header(partial).unwrap_or_default();
        let ack = gateway_ack(
            &header,
            AckCode::Reject,
            0,
            None,
            hl7v2::validate::SEGMENT_SEQUENCE_ERROR,
            text,
        );
        self.m.acks.with_label_values(&[&*self.name, "AR"]).inc();
        ack
    }

    /// One message in, one ACK out (`None` only if there is nothing to answer).
    async fn process(
        &self,
        msg: &[u8],
        identity: Option<&ClientIdentity>,
        sender_key: &[u8],
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        // A message the trail could not record is not forwarded (the sender retries).
        let mut dlp_counts: Option<serde_json::Value> = None;
        let (outcome, ack, header) = match &self.audit {
            Some(a) if !a.accepting() => {
                let header = hl7v2::header(msg);
                let ack = gateway_ack(
                    &header.clone().unwrap_or_default(),
                    AckCode::Error,
                    0,
                    None,
                    hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                    "audit trail unavailable; retry later",
                );
                (Outcome::UpstreamFailed, ack, header)
            }
            _ => {
                self.decide(msg, identity, sender_key, &mut dlp_counts)
                    .await
            }
        };
        let type_label = header
            .as_ref()
            .map_or_else(|| "other".to_owned(), |h| self.type_label(h));
        self.m
            .messages
            .with_label_values(&[&*self.name, type_label.as_str(), outcome.label()])
            .inc();
        let ack_code = hl7v2::parse_ack(&ack).map_or("none", |(c, _)| c.as_str());
        self.m
            .acks
            .with_label_values(&[&*self.name, ack_code])
            .inc();
        // One line per message: control id, type and result; never field content.
        let control_id = header
            .as_ref()
            .map(|h| printable(&h.control_id))
            .unwrap_or_default();
        if let Some(a) = &self.audit {
            let mut f = serde_json::Map::new();
            let s = |v: &str| serde_json::Value::String(v.to_owned());
            f.insert("time".into(), s(&crate::calendar::rfc3339_now()));
            f.insert("kind".into(), s("mllp"));
            f.insert("listener".into(), s(&self.name));
            if let Some(id) = identity {
                f.insert("cert_subject".into(), s(&id.subject));
                f.insert("cert_sha256".into(), s(&id.x5t_s256));
            }
            f.insert("message_type".into(), s(&type_label));
            f.insert("control_id".into(), s(&control_id));
            f.insert("decision".into(), s(outcome.label()));
            f.insert("ack".into(), s(ack_code));
            if let Some(d) = dlp_counts {
                f.insert("dlp_findings".into(), d);
            }
            if a.record(f).await.is_err() {
                // Not recorded: the sender must not take the ACK as final. (The upstream
                // may have the message already; the ACK is withheld and the sender resends.)
                tracing::error!(target: "ward::mllp", listener = %self.name, "audit record failed; ACK withheld");
                return None;
            }
        }
        tracing::info!(
            target: "ward::mllp",
            listener = %self.name,
            control_id = %control_id,
            message_type = %type_label,
            result = outcome.label(),
            ack = ack_code,
            duration_ms = started.elapsed().as_millis() as u64,
            "message"
        );
        Some(ack)
    }

    /// DLP over one message in one direction (`request`: to the receiver, `response`: its
    /// reply): counted by detector and outcome, its counts added to the audit record and
    /// logged — never values.
    /// The scan runs where the gateway's one size rule says (`body::off_worker`, as for
    /// HTTP bodies): a large message on the blocking pool, never stalling the worker that
    /// serves the other connections.
    async fn dlp_run(
        &self,
        eng: &Arc<crate::dlp::Engine>,
        report_only: bool,
        dir: &'static str,
        msg: &[u8],
        dlp_counts: &mut Option<serde_json::Value>,
    ) -> Result<crate::dlp::hl7::Hl7Outcome, crate::dlp::hl7::Hl7Error> {
        use crate::dlp::hl7::Hl7Outcome;
        let (out, rep) = if crate::body::off_worker(msg.len()) {
            let (e, m) = (eng.clone(), msg.to_vec());
            crate::body::by_size(m.len(), move || {
                let mut rep = crate::dlp::Report::default();
                (crate::dlp::hl7::process(&e, &m, &mut rep), rep)
            })
            .await
            // The scan itself failed (a panic on the pool): refused like a malformed message.
            .unwrap_or_else(|| {
                (
                    Err(crate::dlp::hl7::Hl7Error::Malformed),
                    crate::dlp::Report::default(),
                )
            })
        } else {
            let mut rep = crate::dlp::Report::default();
            (crate::dlp::hl7::process(eng, msg, &mut rep), rep)
        };
        let m = &self.metrics;
        for &(label, act, n) in &rep.counts {
            m.dlp_findings
                .with_label_values(&[&*self.name, eng.label(label), act.label()])
                .inc_by(u64::from(n));
        }
        m.dlp_scanned_bytes
            .with_label_values(&[&*self.name, dir])
            .inc_by(u64::try_from(msg.len()).unwrap_or(u64::MAX));
        if !rep.is_empty() {
            let counts = crate::dlp::counts_json(eng, &rep);
            match dlp_counts {
                Some(serde_json::Value::Object(o)) => {
                    o.insert(dir.into(), counts);
                }
                _ => *dlp_counts = Some(serde_json::json!({ dir: counts })),
            }
            tracing::info!(target: "ward::dlp", listener = %self.name, direction = dir, findings = rep.total(), by_detector = %crate::dlp::summary(eng, &rep), "dlp findings");
        }
        let outcome = match (&out, report_only) {
            (_, true) if rep.is_empty() => "clean",
            (_, true) => "reported",
            (Ok(Hl7Outcome::Unchanged), _) => "clean",
            (Ok(Hl7Outcome::Rewritten(_)), _) => "rewritten",
            (Ok(Hl7Outcome::Blocked), _) => "blocked",
            (Err(_), _) => "error",
        };
        m.dlp_messages
            .with_label_values(&[&*self.name, dir, outcome])
            .inc();
        out
    }

    /// DLP on the receiver's reply (`direction: response` or `both`): ACKs and query
    /// replies can carry PID too. A refused reply becomes the gateway's own AE (the message
    /// was delivered; what came back is withheld); `Err` carries that ACK.
    async fn dlp_reply(
        &self,
        reply: Vec<u8>,
        header: &HeaderInfo,
        dlp_counts: &mut Option<serde_json::Value>,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let Some((eng, report_only, _)) = self.dlp.as_ref().filter(|d| d.2.responses()) else {
            return Ok(reply);
        };
        let out = self
            .dlp_run(eng, *report_only, "response", &reply, dlp_counts)
            .await;
        if *report_only {
            return Ok(reply);
        }
        match out {
            Ok(crate::dlp::hl7::Hl7Outcome::Unchanged) => Ok(reply),
            Ok(crate::dlp::hl7::Hl7Outcome::Rewritten(b)) => Ok(b),
            Ok(crate::dlp::hl7::Hl7Outcome::Blocked) | Err(_) => Err(gateway_ack(
                header,
                AckCode::Error,
                0,
                None,
                hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                "reply withheld by data-loss prevention",
            )),
        }
    }

    async fn decide(
        &self,
        msg: &[u8],
        identity: Option<&ClientIdentity>,
        sender_key: &[u8],
        dlp_counts: &mut Option<serde_json::Value>,
    ) -> (Outcome, Vec<u8>, Option<HeaderInfo>) {
        // First, before any parsing: a flood of (possibly invalid) messages is limited too.
        if let Some(l) = &self.limiter {
            if l.limiter.check(sender_key, NonZeroU32::MIN).is_err() {
                let header = hl7v2::header(msg);
                let ack = gateway_ack(
                    &header.clone().unwrap_or_default(),
                    AckCode::Error,
                    0,
                    None,
                    hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                    "message rate limit exceeded; retry later",
                );
                return (Outcome::RateLimited, ack, header);
            }
        }
        let validated = match hl7v2::validate(msg, &self.rules) {
            Ok(v) => v,
            Err(rej) => {
                let ack = hl7v2::build_rejection_ack(&rej, &now(), &ack_id());
                return (Outcome::Invalid, ack, rej.header);
            }
        };
        let header = validated.header.clone();
        let control_id = validated.control_id.clone();
        drop(validated);
        if !self.cfg.senders.is_empty() {
            // Whole fields, not just the first component: a receiver that routes on the
            // universal id (MSH-4.2) must not see one this sender may not claim.
            let app = header.sending_application.as_slice();
            let fac = header.sending_facility.as_slice();
            let known = self
                .cfg
                .senders
                .iter()
                .filter(|r| r.matches_identity(identity))
                .collect::<Vec<_>>();
            if !known.iter().any(|r| r.allows(app, fac)) {
                let app_ok = known.iter().any(|r| {
                    r.sending_applications.is_empty()
                        || r.sending_applications.iter().any(|a| a.as_bytes() == app)
                });
                let (field, text) = if app_ok {
                    (4, "sending facility (MSH-4) not permitted for this client")
                } else {
                    (
                        3,
                        "sending application (MSH-3) not permitted for this client",
                    )
                };
                let ack = gateway_ack(
                    &header,
                    AckCode::Reject,
                    field,
                    Some(1),
                    hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                    text,
                );
                return (Outcome::SenderDenied, ack, Some(header));
            }
        }
        // DLP: after the message is known valid and from a permitted sender, on exactly
        // the bytes that will be forwarded. The ACK still answers the sender's MSH-10.
        let mut rewritten: Option<Vec<u8>> = None;
        if let Some((eng, report_only, _)) = self.dlp.as_ref().filter(|d| d.2.requests()) {
            let out = self
                .dlp_run(eng, *report_only, "request", msg, dlp_counts)
                .await;
            if !report_only {
                match out {
                    Ok(crate::dlp::hl7::Hl7Outcome::Unchanged) => {}
                    Ok(crate::dlp::hl7::Hl7Outcome::Rewritten(b)) => rewritten = Some(b),
                    Ok(crate::dlp::hl7::Hl7Outcome::Blocked) | Err(_) => {
                        let ack = gateway_ack(
                            &header,
                            AckCode::Reject,
                            0,
                            None,
                            hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                            "message refused by data-loss prevention",
                        );
                        return (Outcome::DlpBlocked, ack, Some(header));
                    }
                }
            }
        }
        let msg: &[u8] = rewritten.as_deref().unwrap_or(msg);
        // One deadline for the whole delivery (slot, connect, write, ACK): a sender waits
        // `ack_timeout` at most, never the sum of every step's own timeout.
        let delivered = tokio::time::timeout(
            self.cfg.upstream.ack_timeout.0,
            self.upstream.deliver(msg, &control_id),
        )
        .await
        .unwrap_or(Err("no ACK from upstream in time"));
        match delivered {
            Ok(upstream_ack) => match self.dlp_reply(upstream_ack, &header, dlp_counts).await {
                Ok(ack) => (Outcome::Delivered, ack, Some(header)),
                Err(ack) => (Outcome::DlpBlocked, ack, Some(header)),
            },
            Err(why) => {
                tracing::warn!(target: "ward::mllp", listener = %self.name, reason = why, "message not delivered upstream");
                let code = match self.cfg.on_upstream_failure {
                    FailureAck::AE => AckCode::Error,
                    FailureAck::AR => AckCode::Reject,
                };
                let ack = gateway_ack(
                    &header,
                    code,
                    0,
                    None,
                    hl7v2::validate::APPLICATION_INTERNAL_ERROR,
                    "message not delivered to the receiving system",
                );
                (Outcome::UpstreamFailed, ack, Some(header))
            }
        }
    }
}

/// A control id for the log: printable ASCII only, bounded.
fn printable(b: &[u8]) -> String {
    b.iter()
        .take(40)
        .map(|&c| {
            if (0x21..0x7f).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

// ------------------------------------------------------------------ upstream

type Io = Box<dyn AsyncReadWrite + Send + Unpin>;
pub trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

struct Backoff {
    failures: u32,
    until: Option<tokio::time::Instant>,
}

/// Persistent connections to one MLLP receiver: at most `max_connections`, reused in turn,
/// re-made after failures with exponential backoff (no connection storm against a
/// receiver that is restarting).
struct MllpUpstream {
    address: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls_pki_types::ServerName<'static>,
    )>,
    idle: Mutex<Vec<FrameReader<Io>>>,
    permits: Semaphore,
    connect_timeout: Duration,
    ack_timeout: Duration,
    handshake_timeout: Duration,
    backoff: std::sync::Mutex<Backoff>,
    connects_ok: IntCounter,
    connects_failed: IntCounter,
}

const MAX_ACK_BYTES: usize = 1024 * 1024;

impl MllpUpstream {
    fn new(
        cfg: &MllpUpstreamConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: &Metrics,
        listener: &str,
    ) -> Result<Self, String> {
        let tls = match &cfg.ca {
            Some(ca) => {
                let client = match (&cfg.client_cert, &cfg.client_key) {
                    (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
                    _ => None,
                };
                let cc = crate::tls::upstream_client_config(
                    &resolve(ca),
                    client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                )?;
                let host = cfg.server_name.clone().unwrap_or_else(|| {
                    cfg.address
                        .rsplit_once(':')
                        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                        .unwrap_or_default()
                });
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|_| "upstream: invalid server name".to_owned())?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(cc)), name))
            }
            None => None,
        };
        Ok(MllpUpstream {
            address: cfg.address.clone(),
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(cfg.max_connections),
            connect_timeout: cfg.connect_timeout.0,
            ack_timeout: cfg.ack_timeout.0,
            handshake_timeout: cfg.handshake_timeout.0,
            backoff: std::sync::Mutex::new(Backoff {
                failures: 0,
                until: None,
            }),
            connects_ok: metrics
                .mllp_upstream_connects
                .with_label_values(&[listener, "ok"]),
            connects_failed: metrics
                .mllp_upstream_connects
                .with_label_values(&[listener, "error"]),
        })
    }

    async fn connect(&self) -> Result<FrameReader<Io>, &'static str> {
        if let Ok(b) = self.backoff.lock() {
            if b.until.is_some_and(|u| tokio::time::Instant::now() < u) {
                return Err("upstream unreachable (backing off)");
            }
        }
        let result = async {
            let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
                .await
                .map_err(|_| "connect timeout")?
                .map_err(|_| "connect failed")?;
            let _ = tcp.set_nodelay(true);
            let io: Io = match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    tokio::time::timeout(
                        self.handshake_timeout,
                        connector.connect(name.clone(), tcp),
                    )
                    .await
                    .map_err(|_| "TLS handshake timeout")?
                    .map_err(|_| "TLS handshake failed")?,
                ),
            };
            Ok::<_, &'static str>(FrameReader::new(io, MAX_ACK_BYTES))
        }
        .await;
        if let Ok(mut b) = self.backoff.lock() {
            match &result {
                Ok(_) => {
                    b.failures = 0;
                    b.until = None;
                }
                Err(_) => {
                    b.failures = b.failures.saturating_add(1);
                    // 100 ms, 200 ms, … capped at 10 s.
                    let wait = Duration::from_millis(100u64.saturating_mul(1 << b.failures.min(7)))
                        .min(Duration::from_secs(10));
                    b.until = Some(tokio::time::Instant::now() + wait);
                }
            }
        }
        match &result {
            Ok(_) => self.connects_ok.inc(),
            Err(_) => self.connects_failed.inc(),
        }
        result
    }

    /// Send one message and return the upstream's ACK for it, byte for byte.
    async fn deliver(&self, msg: &[u8], control_id: &[u8]) -> Result<Vec<u8>, &'static str> {
        let _permit = tokio::time::timeout(self.ack_timeout, self.permits.acquire())
            .await
            .map_err(|_| "no upstream connection free in time")?
            .map_err(|_| "upstream closed")?;
        let mut pooled = None;
        while let Some(mut c) = self.idle.lock().await.pop() {
            if c.idle_clean().await {
                pooled = Some(c);
                break;
            }
            // Late ACK, extra frame or closed: never reused.
        }
        let (mut conn, reused) = match pooled {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let result = match self.exchange(&mut conn, msg, control_id).await {
            // A pooled connection the receiver had already closed fails before anything
            // was read back: the message was not taken, so it goes once more on a fresh
            // connection. Anything later is not retried (it may have been processed).
            Err(Exchange::Stale) if reused => {
                conn = self.connect().await?;
                self.exchange(&mut conn, msg, control_id).await
            }
            r => r,
        };
        match result {
            Ok(ack) => {
                self.idle.lock().await.push(conn);
                Ok(ack)
            }
            Err(e) => Err(e.reason()),
        }
    }

    async fn exchange(
        &self,
        conn: &mut FrameReader<Io>,
        msg: &[u8],
        control_id: &[u8],
    ) -> Result<Vec<u8>, Exchange> {
        write_frame(conn.get_mut(), msg)
            .await
            .map_err(|_| Exchange::Stale)?;
        match conn.next(self.ack_timeout, self.ack_timeout).await {
            Ok(Some(ack)) => match hl7v2::parse_ack(&ack) {
                // Only the ACK for this very message may be relayed as its answer.
                Some((_, id)) if id == control_id => Ok(ack),
                _ => Err(Exchange::BadAck),
            },
            Ok(None) => Err(Exchange::Stale),
            Err(FrameError::Idle) => Err(Exchange::Timeout),
            Err(_) => Err(Exchange::BadAck),
        }
    }
}

enum Exchange {
    /// Failed before any answer byte: the receiver closed the connection.
    Stale,
    Timeout,
    BadAck,
}

impl Exchange {
    fn reason(&self) -> &'static str {
        match self {
            Exchange::Stale => "upstream closed the connection",
            Exchange::Timeout => "no ACK from upstream in time",
            Exchange::BadAck => "upstream answer is not an ACK for this message",
        }
    }
}
