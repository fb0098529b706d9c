//! `dlp` policy: PHI detection and redaction on the bodies a route carries, in the
//! direction(s) the policy names (`response` by default, `request`, or `both`).
//!
//! It sits closest to the upstream: on the way in it sees exactly what will be forwarded
//! (after every other policy admitted the request); on the way out it is the first to see
//! what the EHR answered.
//!
//! Per body:
//! 1. What is it? JSON (`application/json`, `application/fhir+json`, any `+json`), HL7 v2
//!    ER7, plain text, or HTML/XML (read as text with markup and entities undone). Anything
//!    else cannot be read and is refused (`unscannable: block`, the default) or passed and
//!    counted (`unscannable: pass`).
//! 2. The body is read whole, up to `max_scan_bytes`: structural rules need the whole
//!    document, and a value split across chunks must still be seen. Beyond the cap the
//!    message is refused — fail closed — in enforce mode.
//! 3. `Content-Encoding`: Ward asks the upstream for `identity` (it rewrites
//!    `Accept-Encoding` on DLP response routes), and still undoes gzip, deflate and br if
//!    the upstream compresses anyway, with `max_decoded_bytes` as the decompression-bomb cap.
//!    Range requests are turned into full requests (`Range`/`If-Range` removed): a byte
//!    range cannot be scanned as a document.
//! 4. The shared engine (`dlp/`) runs. Clean: the original bytes go on untouched, encoding
//!    and all. Rewritten: the new body goes out uncompressed with its own `Content-Length`;
//!    `ETag`, `Content-MD5`, `Digest` and `Accept-Ranges` are dropped because they described
//!    other bytes. Blocked: 403 `dlp_blocked` (an OperationOutcome on FHIR routes).
//! 5. `mode: report` counts and logs what enforce would do and never changes a byte.
//!
//! NDJSON answers (`application/fhir+ndjson`, bulk-export files) are the exception to 2:
//! they stream, and each line is one JSON document for the engine, at most
//! `max_scan_bytes` long; in enforce mode a line that is blocked, malformed or too long is
//! removed (see `ndjson_response`).
//!
//! Findings are counted (`ward_dlp_findings_total{route,detector,action}`), logged as
//! counts, and put in the request's audit record as counts — never values.

use std::sync::{Arc, OnceLock};

use crate::dlp::actions::Action;
use prometheus::IntCounter;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};

use crate::context::AuditSlot;
use crate::dlp::hl7::{self as dlp_hl7, Hl7Outcome};
use crate::dlp::json::{self as dlp_json, JsonOutcome};
pub use crate::dlp::DlpConfig;
use crate::dlp::{Engine, Mode, Report, TextOutcome, Unscannable};
use crate::error::Rejection;
use crate::json::LexedBody;
use crate::metrics::Metrics;
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::{Body, BoxError};

/// What a body is, for DLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Hl7,
    Text,
    Markup,
    Unscannable,
}

/// Classify a `Content-Type` value. No header, or a charset that is not ASCII-compatible:
/// unscannable.
pub fn body_kind(ct: Option<&HeaderValue>) -> BodyKind {
    // No type: nothing says how to read it (a receiver may sniff it as anything).
    let Some(ct) = ct else {
        return BodyKind::Unscannable;
    };
    let Ok(ct) = ct.to_str() else {
        return BodyKind::Unscannable;
    };
    let mut parts = ct.split(';');
    let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    // Patterns are ASCII: a UTF-16/32 body would hide every digit between NULs.
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("charset") {
                let v = v.trim().trim_matches('"').to_ascii_lowercase();
                if !matches!(
                    v.as_str(),
                    "utf-8"
                        | "utf8"
                        | "us-ascii"
                        | "ascii"
                        | "iso-8859-1"
                        | "latin1"
                        | "windows-1252"
                ) {
                    return BodyKind::Unscannable;
                }
            }
        }
    }
    if mt == "application/json" || mt.ends_with("+json") {
        BodyKind::Json
    } else if mt == "x-application/hl7-v2+er7"
        || mt == "application/hl7-v2"
        || mt == "application/edi-hl7"
        || mt == "application/hl7-v2+er7"
    {
        BodyKind::Hl7
    } else if mt == "text/html"
        || mt == "text/xml"
        || mt == "application/xml"
        || mt.ends_with("+xml")
        || mt == "application/xhtml+xml"
    {
        BodyKind::Markup
    } else if mt.starts_with("text/") {
        BodyKind::Text
    } else {
        BodyKind::Unscannable
    }
}

/// The result of DLP over one buffered body.
pub enum Verdict {
    /// Send the original bytes.
    Pass,
    Rewritten(Vec<u8>),
    Blocked,
    /// Could not process (malformed for its type): fail closed.
    Failed,
}

/// Run the engine over a decoded body of `kind`.
pub fn run(eng: &Engine, kind: BodyKind, body: &[u8], report: &mut Report) -> Verdict {
    run_indexed(eng, kind, body, None, report)
}

/// [`run`] with the body's token index when one was built from exactly these bytes (JSON
/// only; see `json::LexedBody`).
pub fn run_indexed(
    eng: &Engine,
    kind: BodyKind,
    body: &[u8],
    index: Option<&crate::json::Index>,
    report: &mut Report,
) -> Verdict {
    match kind {
        BodyKind::Json => match dlp_json::process_indexed(eng, body, index, report) {
            Ok(JsonOutcome::Unchanged) => Verdict::Pass,
            Ok(JsonOutcome::Rewritten(b)) => Verdict::Rewritten(b),
            Ok(JsonOutcome::Blocked) => Verdict::Blocked,
            Err(_) => Verdict::Failed,
        },
        BodyKind::Hl7 => match dlp_hl7::process(eng, body, report) {
            Ok(Hl7Outcome::Unchanged) => Verdict::Pass,
            Ok(Hl7Outcome::Rewritten(b)) => Verdict::Rewritten(b),
            Ok(Hl7Outcome::Blocked) => Verdict::Blocked,
            Err(_) => Verdict::Failed,
        },
        BodyKind::Text => match eng.process_text(body, report) {
            TextOutcome::Unchanged => Verdict::Pass,
            TextOutcome::Rewritten(b) => Verdict::Rewritten(b),
            TextOutcome::Blocked => Verdict::Blocked,
        },
        BodyKind::Markup => markup(eng, body, report),
        BodyKind::Unscannable => Verdict::Failed,
    }
}

/// HTML/XML: scan the text view (tags out, entities decoded), replace only text.
fn markup(eng: &Engine, body: &[u8], report: &mut Report) -> Verdict {
    let mut txt = Vec::new();
    let mut map = Vec::new();
    crate::dlp::xhtml::text_view(body, &mut txt, &mut map);
    let mut hits = Vec::new();
    eng.scanner.scan(&txt, &mut hits);
    let mut edits: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for h in &hits {
        let Some(det) = eng.detectors.get(usize::from(h.detector)) else {
            continue;
        };
        report.add(det.label, det.action);
        let m = txt.get(h.start..h.end).unwrap_or_default();
        let repl = match det.action {
            crate::dlp::actions::Action::Block => return Verdict::Blocked,
            crate::dlp::actions::Action::Report => continue,
            crate::dlp::actions::Action::Mask => {
                crate::dlp::actions::mask(m, usize::from(det.keep_last))
            }
            crate::dlp::actions::Action::Hash => match &eng.keys {
                Some(k) => k.hash(m),
                None => crate::dlp::actions::REDACTED.to_vec(),
            },
            _ => crate::dlp::actions::REDACTED.to_vec(),
        };
        let mut esc = Vec::new();
        for c in repl {
            match c {
                b'&' => esc.extend_from_slice(b"&amp;"),
                b'<' => esc.extend_from_slice(b"&lt;"),
                b'>' => esc.extend_from_slice(b"&gt;"),
                c => esc.push(c),
            }
        }
        for (k, (s, e)) in crate::dlp::xhtml::redact_text_runs(body, &map, h.start, h.end)
            .into_iter()
            .enumerate()
        {
            let t = if k == 0 { esc.clone() } else { Vec::new() };
            edits.push((s as usize, e as usize, t));
        }
    }
    // Attribute values and comments are not in the text view: scan the markup itself and
    // replace findings that lie wholly outside text (`href="mailto:…"`).
    let mut text_byte = vec![false; body.len()];
    for &(a, z) in &map {
        let markup = z.saturating_sub(a) >= 3 && body.get(a as usize) == Some(&b'<');
        if !markup {
            for t in text_byte.iter_mut().take(z as usize).skip(a as usize) {
                *t = true;
            }
        }
    }
    hits.clear();
    eng.scanner.scan(body, &mut hits);
    for h in &hits {
        if text_byte[h.start..h.end].iter().any(|t| *t) {
            continue;
        }
        // Markup: only detectors that look at any value (not `url`/`date`, which would
        // take namespaces and links apart).
        let Some(det) = eng
            .detectors
            .get(usize::from(h.detector))
            .filter(|d| d.any_type)
        else {
            continue;
        };
        report.add(det.label, det.action);
        match det.action {
            crate::dlp::actions::Action::Block => return Verdict::Blocked,
            crate::dlp::actions::Action::Report => {}
            _ => edits.push((h.start, h.end, crate::dlp::actions::REDACTED.to_vec())),
        }
    }
    if edits.is_empty() {
        return Verdict::Pass;
    }
    edits.sort_by_key(|e| e.0);
    let mut out = Vec::with_capacity(body.len());
    let mut cur = 0;
    for (s, e, t) in edits {
        if s < cur || e > body.len() {
            return Verdict::Failed;
        }
        out.extend_from_slice(&body[cur..s]);
        out.extend_from_slice(&t);
        cur = e;
    }
    out.extend_from_slice(&body[cur..]);
    Verdict::Rewritten(out)
}

// Shared with the proxy's FHIR base-URL step, so it lives in the body leaf.
pub use crate::body::decode;

/// A compiled `dlp` policy for one route.
pub struct Dlp {
    engine: Arc<Engine>,
    mode: Mode,
    requests: bool,
    responses: bool,
    max_scan: usize,
    max_decoded: usize,
    unscannable: Unscannable,
    route: String,
    metrics: Arc<Metrics>,
    counters: Counters,
}

/// This route's DLP counters, each looked up in the registry once (a registry lookup
/// hashes every label value, and a request paid several) and only when first used, so a
/// series still appears only once it counts something.
struct Counters {
    /// By direction (request, response).
    scanned: [OnceLock<IntCounter>; 2],
    /// By direction and outcome (`OUTCOMES`).
    messages: [OnceLock<IntCounter>; 2 * OUTCOMES.len()],
    /// By engine label and action (`ACTIONS`).
    findings: Vec<OnceLock<IntCounter>>,
    /// Bodies lexed into their shared index, by direction (`ward_json_lex_total`).
    lexed: [OnceLock<IntCounter>; 2],
}

const OUTCOMES: [&str; 7] = [
    "clean",
    "rewritten",
    "reported",
    "blocked",
    "too_large",
    "unscannable",
    "error",
];

const ACTIONS: [Action; 7] = [
    Action::Redact,
    Action::Mask,
    Action::Hash,
    Action::DateShift,
    Action::Generalize,
    Action::Block,
    Action::Report,
];

fn dir_index(dir: &str) -> Option<usize> {
    match dir {
        "request" => Some(0),
        "response" => Some(1),
        _ => None,
    }
}

impl Counters {
    fn new(labels: usize) -> Counters {
        Counters {
            scanned: Default::default(),
            messages: Default::default(),
            findings: (0..labels * ACTIONS.len())
                .map(|_| OnceLock::new())
                .collect(),
            lexed: Default::default(),
        }
    }
}

impl FromConfig for Dlp {
    type Config = DlpConfig;
    fn from_config(cfg: &DlpConfig, b: &mut Build<'_>) -> Result<Self, String> {
        Dlp::new(cfg, b.route, b.resolve, b.metrics.clone())
    }
}

impl Dlp {
    pub fn new(
        cfg: &DlpConfig,
        route: &str,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let engine = Arc::new(Engine::compile(cfg, resolve)?);
        let engine_labels = engine.label_count();
        Ok(Dlp {
            engine,
            mode: cfg.mode,
            requests: cfg.direction.requests(),
            responses: cfg.direction.responses(),
            max_scan: cfg.max_scan_bytes,
            max_decoded: cfg.max_decoded_bytes.unwrap_or(cfg.max_scan_bytes),
            unscannable: cfg.unscannable,
            route: route.to_owned(),
            metrics,
            counters: Counters::new(engine_labels),
        })
    }
}

impl Dlp {
    /// Does this policy read request bodies (`direction: request` or `both`)?
    pub fn scans_requests(&self) -> bool {
        self.requests
    }
}

fn blocked() -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "dlp_blocked",
        "the message contains data this route does not release",
    )
}

fn too_large(response: bool) -> Rejection {
    if response {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "dlp_scan_limit",
            "the upstream response is larger than data-loss prevention can inspect",
        )
    } else {
        Rejection::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "dlp_scan_limit",
            "the request body is larger than data-loss prevention can inspect",
        )
        .closing()
    }
}

fn unscannable(response: bool) -> Rejection {
    if response {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "dlp_unscannable",
            "the upstream response could not be inspected for data-loss prevention",
        )
    } else {
        Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "dlp_unscannable",
            "the request body could not be inspected for data-loss prevention",
        )
    }
}

/// Read up to `max` bytes. `Ok(Err(prefix_body))`: the body is longer; the returned body
/// replays everything (for report mode).
async fn read_capped(body: Body, max: usize) -> Result<Result<Bytes, Body>, BoxError> {
    Ok(match crate::body::gather(body, max).await? {
        crate::body::Gathered::Whole(b) => Ok(b),
        crate::body::Gathered::Over { front, rest } => {
            Err(crate::body::prefixed([Ok(Frame::data(front))].into(), rest))
        }
    })
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// Headers that described the old bytes.
fn fix_headers(h: &mut HeaderMap, len: usize) {
    // Constant names: a `&str` name is parsed and checked on every call.
    const CONTENT_MD5: header::HeaderName = header::HeaderName::from_static("content-md5");
    const DIGEST: header::HeaderName = header::HeaderName::from_static("digest");
    const REPR_DIGEST: header::HeaderName = header::HeaderName::from_static("repr-digest");
    const CONTENT_DIGEST: header::HeaderName = header::HeaderName::from_static("content-digest");
    for name in [
        header::CONTENT_ENCODING,
        header::ETAG,
        CONTENT_MD5,
        DIGEST,
        REPR_DIGEST,
        CONTENT_DIGEST,
        header::ACCEPT_RANGES,
        header::TRANSFER_ENCODING,
    ] {
        h.remove(name);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

impl Dlp {
    fn count(&self, dir: &str, outcome: &str) {
        let vec = &self.metrics.dlp_messages;
        let slot = dir_index(dir).zip(OUTCOMES.iter().position(|&o| o == outcome));
        match slot.and_then(|(d, o)| self.counters.messages.get(d * OUTCOMES.len() + o)) {
            Some(c) => c
                .get_or_init(|| vec.with_label_values(&[&self.route, dir, outcome]))
                .inc(),
            None => vec.with_label_values(&[&self.route, dir, outcome]).inc(),
        }
    }

    fn count_scanned(&self, dir: &str, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let vec = &self.metrics.dlp_scanned_bytes;
        match dir_index(dir).and_then(|d| self.counters.scanned.get(d)) {
            Some(c) => c
                .get_or_init(|| vec.with_label_values(&[&self.route, dir]))
                .inc_by(n),
            None => vec.with_label_values(&[&self.route, dir]).inc_by(n),
        }
    }

    fn record(&self, report: &Report, dir: &'static str, slot: Option<&AuditSlot>) {
        let vec = &self.metrics.dlp_findings;
        for &(label, act, n) in &report.counts {
            let labels = [&self.route, self.engine.label(label), act.label()];
            let at = ACTIONS
                .iter()
                .position(|&a| a == act)
                .map(|a| usize::from(label) * ACTIONS.len() + a);
            match at.and_then(|i| self.counters.findings.get(i)) {
                Some(c) => c
                    .get_or_init(|| vec.with_label_values(&labels))
                    .inc_by(u64::from(n)),
                None => vec.with_label_values(&labels).inc_by(u64::from(n)),
            }
        }
        if !report.is_empty() {
            // The log line's JSON is built only when the line is enabled; the audit record
            // gets the counts typed (formatted by the audit writer, off the request path).
            if tracing::enabled!(target: "ward::dlp", tracing::Level::INFO) {
                tracing::info!(
                    target: "ward::dlp",
                    route = %self.route,
                    direction = dir,
                    findings = report.total(),
                    by_detector = %crate::dlp::counts_json(&self.engine, report),
                    mode = if self.mode == Mode::Report { "report" } else { "enforce" },
                    "dlp findings"
                );
            }
            if let Some(s) = slot {
                s.add_dlp(dir, crate::dlp::findings(&self.engine, report));
            }
        }
    }

    /// DLP over one buffered message. `Ok(None)`: send the original; `Ok(Some(b))`: send
    /// `b` instead (decoded, rewritten). `lexed`: the index of `body` another policy built
    /// (reused), or `None`; on return, the index of `body` if it is JSON (built here when
    /// needed) for the next reader.
    fn process(
        &self,
        dir: &'static str,
        response: bool,
        headers: &HeaderMap,
        body: &Bytes,
        lexed: &mut Option<LexedBody>,
        slot: Option<&AuditSlot>,
    ) -> Result<Option<Vec<u8>>, Rejection> {
        let report_only = self.mode == Mode::Report;
        let mut kind = body_kind(headers.get(header::CONTENT_TYPE));
        // FHIR XML keeps every value in attributes and FHIR path rules read JSON: a
        // policy with FHIR rules cannot inspect XML or HTML renderings (`_format=xml`).
        if kind == BodyKind::Markup && !self.engine.rules.is_empty() {
            kind = BodyKind::Unscannable;
        }
        if body.is_empty() {
            return Ok(None);
        }
        if kind == BodyKind::Unscannable {
            self.count(dir, "unscannable");
            return if report_only || self.unscannable == Unscannable::Pass {
                Ok(None)
            } else {
                Err(unscannable(response))
            };
        }
        let decoded = match decode(
            headers.get_all(header::CONTENT_ENCODING),
            body,
            self.max_decoded,
        ) {
            Ok(d) => d,
            Err(bomb) => {
                self.count(dir, if bomb { "too_large" } else { "unscannable" });
                return if report_only {
                    Ok(None)
                } else if bomb {
                    Err(too_large(response))
                } else {
                    Err(unscannable(response))
                };
            }
        };
        let plain: &[u8] = decoded.as_deref().unwrap_or(body);
        // JSON on the wire as it is: read through the body's one index (an encoded body's
        // decoded bytes are lexed by the walker itself; they are not what later readers get).
        if kind == BodyKind::Json && decoded.is_none() {
            let vec = &self.metrics.json_lex;
            let counter = match dir_index(dir).and_then(|d| self.counters.lexed.get(d)) {
                Some(c) => c.get_or_init(|| vec.with_label_values(&[dir])).clone(),
                None => vec.with_label_values(&[dir]),
            };
            *lexed = LexedBody::reuse_or_build(lexed.take(), body, &counter);
        }
        let index = lexed
            .as_ref()
            .filter(|l| decoded.is_none() && l.is_of(plain))
            .map(|l| l.index().clone());
        self.count_scanned(dir, plain.len());
        let mut report = Report::default();
        let verdict = run_indexed(&self.engine, kind, plain, index.as_deref(), &mut report);
        self.record(&report, dir, slot);
        if report_only {
            self.count(
                dir,
                match verdict {
                    Verdict::Pass => "clean",
                    Verdict::Failed => "error",
                    _ => "reported",
                },
            );
            return Ok(None);
        }
        match verdict {
            Verdict::Pass => {
                self.count(dir, "clean");
                Ok(None)
            }
            Verdict::Rewritten(b) => {
                self.count(dir, "rewritten");
                Ok(Some(b))
            }
            Verdict::Blocked => {
                self.count(dir, "blocked");
                Err(blocked())
            }
            Verdict::Failed => {
                self.count(dir, "error");
                Err(unscannable(response))
            }
        }
    }
}

impl Dlp {
    /// [`Dlp::process`] where the gateway's one size rule (`body::off_worker`) says: large
    /// bodies on the blocking pool, so they never stall the runtime's workers (and every
    /// other connection with them). The body's index travels in `lexed` and comes back.
    async fn process_owned(
        self: &Arc<Self>,
        dir: &'static str,
        response: bool,
        headers: &HeaderMap,
        body: &Bytes,
        lexed: Option<LexedBody>,
        slot: Option<&AuditSlot>,
    ) -> (Result<Option<Vec<u8>>, Rejection>, Option<LexedBody>) {
        let mut lexed = lexed;
        if !crate::body::off_worker(body.len()) {
            let r = self.process(dir, response, headers, body, &mut lexed, slot);
            return (r, lexed);
        }
        let (me, h, b, sl) = (self.clone(), headers.clone(), body.clone(), slot.cloned());
        crate::body::by_size(body.len(), move || {
            let r = me.process(dir, response, &h, &b, &mut lexed, sl.as_ref());
            (r, lexed)
        })
        .await
        .unwrap_or_else(|| (Err(Rejection::internal()), None))
    }
}

pub use crate::dlp::summary;

impl Policy for Dlp {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let shared = self.clone();
        let next = next.later();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let slot = parts.extensions.get::<AuditSlot>().cloned();
            let report_only = shared.mode == Mode::Report;
            let body = if shared.requests && !body.is_end_stream() {
                match read_capped(body, shared.max_scan).await {
                    Ok(Ok(bytes)) => {
                        let lexed = LexedBody::matching(&parts.extensions, &bytes);
                        let (verdict, lexed) = shared
                            .process_owned(
                                "request",
                                false,
                                &parts.headers,
                                &bytes,
                                lexed,
                                slot.as_ref(),
                            )
                            .await;
                        match verdict? {
                            None => {
                                if let Some(l) = lexed {
                                    l.attach(&mut parts.extensions);
                                }
                                full(bytes)
                            }
                            Some(new) => {
                                // Other bytes now: no reader may use the old index.
                                LexedBody::forget(&mut parts.extensions);
                                fix_headers(&mut parts.headers, new.len());
                                full(new)
                            }
                        }
                    }
                    Ok(Err(replay)) => {
                        shared.count("request", "too_large");
                        if report_only {
                            replay
                        } else {
                            return Err(too_large(false));
                        }
                    }
                    Err(e) => {
                        // The limits policy's own refusals keep their codes.
                        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
                        while let Some(err) = cur {
                            if let Some(le) = err.downcast_ref::<crate::error::LimitError>() {
                                return Err(Rejection::from(*le));
                            }
                            cur = err.source();
                        }
                        return Err(Rejection::bad_request(
                            "client_body_error",
                            "the request body could not be read",
                        )
                        .closing());
                    }
                }
            } else {
                body
            };
            if shared.responses && !report_only {
                // Whole, plain bodies: ask for identity and no ranges (see the header);
                // report mode changes nothing, not even request headers.
                parts.headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
                parts.headers.remove(header::RANGE);
                parts.headers.remove(header::IF_RANGE);
            }
            let req = Request::from_parts(parts, body);
            let resp = next.run(req).await?;
            if !shared.responses || resp.body().is_end_stream() {
                return Ok(resp);
            }
            if is_ndjson(resp.headers()) {
                return ndjson_response(&shared, resp);
            }
            let (mut rparts, rbody) = resp.into_parts();
            let bytes = match read_capped(rbody, shared.max_scan).await {
                Ok(Ok(b)) => b,
                Ok(Err(replay)) => {
                    shared.count("response", "too_large");
                    if report_only {
                        return Ok(Response::from_parts(rparts, replay));
                    }
                    return Err(too_large(true));
                }
                Err(_) => return Err(Rejection::upstream_error()),
            };
            let lexed = LexedBody::matching(&rparts.extensions, &bytes);
            let (verdict, lexed) = shared
                .process_owned(
                    "response",
                    true,
                    &rparts.headers,
                    &bytes,
                    lexed,
                    slot.as_ref(),
                )
                .await;
            match verdict? {
                None => {
                    // The response policies after this one read the same index.
                    if let Some(l) = lexed {
                        l.attach(&mut rparts.extensions);
                    }
                    Ok(Response::from_parts(rparts, full(bytes)))
                }
                Some(new) => {
                    LexedBody::forget(&mut rparts.extensions);
                    fix_headers(&mut rparts.headers, new.len());
                    Ok(Response::from_parts(rparts, full(new)))
                }
            }
        })
    }
}

/// `application/fhir+ndjson` / `application/ndjson` (bulk-export files): one resource per
/// line, scanned line by line as it streams.
fn is_ndjson(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|mt| mt == "application/fhir+ndjson" || mt == "application/ndjson")
}

/// NDJSON is not read whole (a bulk-export file may be gigabytes): each line is one JSON
/// document for the engine, at most `max_scan_bytes` long. In enforce mode a line that
/// is blocked, malformed or too long is removed (the status line is already sent, so the
/// file cannot be refused any more); report mode changes nothing.
fn ndjson_response(shared: &Arc<Dlp>, resp: Response<Body>) -> Result<Response<Body>, Rejection> {
    let report_only = shared.mode == Mode::Report;
    let (mut parts, body) = resp.into_parts();
    let encoded = parts
        .headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        // Identity was asked for: a compressed stream cannot be split into lines here.
        shared.count("response", "unscannable");
        if report_only {
            return Ok(Response::from_parts(parts, body));
        }
        return Err(unscannable(true));
    }
    if report_only {
        // Scanned for the counts, passed byte for byte.
        let filter = NdjsonDlp {
            shared: shared.clone(),
        };
        return Ok(Response::from_parts(
            parts,
            crate::body::lines(body, shared.max_scan, Box::new(filter)),
        ));
    }
    for h in [
        header::CONTENT_LENGTH,
        header::ETAG,
        header::ACCEPT_RANGES,
        header::TRANSFER_ENCODING,
    ] {
        parts.headers.remove(h);
    }
    for h in ["content-md5", "digest", "repr-digest", "content-digest"] {
        parts.headers.remove(h);
    }
    let filter = NdjsonDlp {
        shared: shared.clone(),
    };
    Ok(Response::from_parts(
        parts,
        crate::body::lines(body, shared.max_scan, Box::new(filter)),
    ))
}

struct NdjsonDlp {
    shared: Arc<Dlp>,
}

impl crate::body::LineFilter for NdjsonDlp {
    fn line(&mut self, line: &[u8]) -> Option<Bytes> {
        let report_only = self.shared.mode == Mode::Report;
        if line.iter().all(u8::is_ascii_whitespace) {
            // Nothing to scan; a blank line carries no resource.
            return report_only.then(|| Bytes::copy_from_slice(line));
        }
        self.shared.count_scanned("response", line.len());
        let mut report = Report::default();
        // A line is read by this policy alone (no index to share); a long one is scanned
        // off the worker by the gateway's one size rule.
        let verdict = crate::body::in_place_by_size(line.len(), || {
            run(&self.shared.engine, BodyKind::Json, line, &mut report)
        });
        // Counts only (per line, never values); the audit record was written with the
        // response head, before the file streamed.
        self.shared.record(&report, "response", None);
        let outcome = match &verdict {
            Verdict::Pass => "clean",
            Verdict::Rewritten(_) if report_only => "reported",
            Verdict::Rewritten(_) => "rewritten",
            Verdict::Blocked if report_only => "reported",
            Verdict::Blocked => "blocked",
            Verdict::Failed => "error",
        };
        self.shared.count("response", outcome);
        if report_only {
            return Some(Bytes::copy_from_slice(line));
        }
        match verdict {
            Verdict::Pass => Some(Bytes::copy_from_slice(line)),
            Verdict::Rewritten(b) => Some(Bytes::from(b)),
            Verdict::Blocked | Verdict::Failed => None,
        }
    }

    fn too_long(&mut self) -> bool {
        self.shared.count("response", "too_large");
        self.shared.mode == Mode::Report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached counters count exactly what registry lookups per call counted: for every
    /// direction and outcome, and for findings of every detector, repeated (cache hits)
    /// and in series that exist only once used.
    #[test]
    fn cached_counters_count_like_registry_lookups() {
        let cfg: DlpConfig =
            serde_json::from_value(serde_json::json!({"preset": "safe_harbor"})).expect("config");
        let metrics = Arc::new(Metrics::new());
        let d = Dlp::new(
            &cfg,
            "r1",
            &|p: &str| std::path::PathBuf::from(p),
            metrics.clone(),
        )
        .expect("dlp");
        let text = metrics.render();
        assert!(!text.contains("ward_dlp_messages_total{"), "{text}");
        for (k, dir) in ["request", "response"].into_iter().enumerate() {
            for (i, outcome) in OUTCOMES.into_iter().enumerate() {
                for _ in 0..(i + 1 + k) {
                    d.count(dir, outcome);
                }
            }
            d.count_scanned(dir, 10 * (k + 1));
            d.count_scanned(dir, 1);
        }
        let mut report = Report::default();
        for _ in 0..3 {
            let body = br#"{"resourceType":"Observation","note":[{"text":"SSN 123-45-6789, call 555-234-5678"}]}"#;
            run(&d.engine, BodyKind::Json, body, &mut report);
        }
        assert!(report.total() >= 6, "{report:?}");
        d.record(&report, "response", None);
        d.record(&report, "response", None);
        let m = metrics.render();
        for (k, dir) in ["request", "response"].into_iter().enumerate() {
            for (i, outcome) in OUTCOMES.into_iter().enumerate() {
                let line = format!(
                    "ward_dlp_messages_total{{direction=\"{dir}\",outcome=\"{outcome}\",route=\"r1\"}} {}",
                    i + 1 + k
                );
                assert!(m.contains(&line), "{line}\n{m}");
            }
            let line = format!(
                "ward_dlp_scanned_bytes_total{{direction=\"{dir}\",route=\"r1\"}} {}",
                10 * (k + 1) + 1
            );
            assert!(m.contains(&line), "{line}\n{m}");
        }
        for &(label, act, n) in &report.counts {
            let line = format!(
                "ward_dlp_findings_total{{action=\"{}\",detector=\"{}\",route=\"r1\"}} {}",
                act.label(),
                d.engine.label(label),
                2 * n
            );
            assert!(m.contains(&line), "{line}\n{m}");
        }
    }
}
