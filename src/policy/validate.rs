//! `validate` policy: request bodies are checked before a legacy EHR's parser sees them.
//!
//! FHIR routes (`validate.fhir`, needs `fhir: true`): create, update, FHIRPath and JSON
//! patches, operations, and batch/transaction Bundles (every entry, recursively) are
//! validated against HL7's R4 definitions (`fhir/validate.rs`) plus the route's profile
//! rules. Only JSON is accepted: XML is refused with 415 — a gateway that passed XML
//! unvalidated would be a bypass — and a body on an interaction that takes none is
//! refused. Invalid → 400 `fhir_invalid` with one OperationOutcome issue per finding.
//!
//! HL7 v2 over HTTP (`validate.hl7v2`): ER7 bodies (by media type, or every body on the
//! route with `all_bodies`) are parsed and checked (`hl7v2/validate.rs`); invalid → 400
//! with an HL7 ACK (MSA-1 AE/AR, MSA-2 = the message's MSH-10, ERR segments) as the body.
//! A POST/PUT/PATCH without a body is an empty message there (AR, as on MLLP).
//!
//! The body is buffered only on routes with this policy and only up to the policy's cap,
//! then forwarded byte for byte: validation never rewrites what the client sent.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Full};
use prometheus::IntCounterVec;
use serde::Deserialize;

use crate::context::RequestContext;
use crate::error::{Extra, Finding, Rejection};
use crate::fhir::request::{FhirRequest, Interaction};
use crate::fhir::validate::{self as fhirv, Limits, Profile, Severity};
use crate::hl7v2;
use crate::json::LexedBody;
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::Body;

fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_max_depth() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    #[serde(default)]
    pub fhir: Option<FhirValidateConfig>,
    #[serde(default)]
    pub hl7v2: Option<Hl7v2ValidateConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirValidateConfig {
    /// Largest body validated; a larger one is refused (413), never passed unchecked.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Resource types a body may contain (anywhere, contained and Bundle entries
    /// included; list `Bundle` to allow batches). Absent = any R4 type.
    #[serde(default)]
    pub allowed_types: Option<Vec<String>>,
    /// Elements that must be present, e.g. `Patient.identifier`, `Patient.name.family`
    /// (on the top-level resource and on Bundle entries).
    #[serde(default)]
    pub required: Vec<String>,
    /// Elements that must be absent, anywhere.
    #[serde(default)]
    pub forbidden: Vec<String>,
    #[serde(default)]
    pub max_bundle_entries: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7v2ValidateConfig {
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// `ADT^A01`, `ADT^*`; empty = any.
    #[serde(default)]
    pub allowed_message_types: Vec<String>,
    /// Exact MSH-12 values; empty = any. `2.5` may be written unquoted.
    #[serde(default, deserialize_with = "versions")]
    pub allowed_versions: Vec<String>,
    /// Per message type, the segments that must be present (replaces the built-in list:
    /// ADT^A01/A04/A08 MSH EVN PID PV1, ORU^R01 MSH PID OBR OBX, ORM^O01 MSH PID ORC,
    /// SIU^S12 MSH SCH).
    #[serde(default)]
    pub required_segments: std::collections::BTreeMap<String, Vec<String>>,
    /// Accept `\n` and `\r\n` as segment terminators (HL7 says `\r`).
    #[serde(default)]
    pub lenient_line_endings: bool,
    /// Media types that carry ER7 on this route.
    #[serde(default = "default_er7_types")]
    pub media_types: Vec<String>,
    /// Every request body on the route is ER7, whatever its Content-Type says.
    #[serde(default)]
    pub all_bodies: bool,
}

/// HL7 versions as YAML writes them: `2.5.1` is a string, `2.5` a number.
pub fn versions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        F(f64),
    }
    Ok(Vec::<V>::deserialize(d)?
        .into_iter()
        .map(|v| match v {
            V::S(s) => s,
            V::F(f) => f.to_string(),
        })
        .collect())
}

fn default_er7_types() -> Vec<String> {
    vec!["x-application/hl7-v2+er7".into()]
}

impl ValidateConfig {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.fhir.is_none() && self.hl7v2.is_none() {
            out.push((String::new(), "needs a `fhir` or an `hl7v2` section".into()));
        }
        if let Some(f) = &self.fhir {
            if f.max_body_bytes == 0 {
                out.push((
                    "fhir.max_body_bytes".into(),
                    "must be greater than 0".into(),
                ));
            }
            if !(1..=256).contains(&f.max_depth) {
                out.push(("fhir.max_depth".into(), "must be between 1 and 256".into()));
            }
            for t in f.allowed_types.iter().flatten() {
                if !fhirv::is_known_resource_type(t) {
                    out.push((
                        "fhir.allowed_types".into(),
                        format!("`{t}` is not an R4 resource type"),
                    ));
                }
            }
            // Types were checked above, with their own location; here the element paths.
            let paths = Profile {
                allowed_types: None,
                ..f.profile()
            };
            if let Err(e) = fhirv::check_profile_paths(&paths) {
                out.push(("fhir".into(), e));
            }
        }
        if let Some(h) = &self.hl7v2 {
            if h.max_body_bytes == 0 {
                out.push((
                    "hl7v2.max_body_bytes".into(),
                    "must be greater than 0".into(),
                ));
            }
            for t in &h.allowed_message_types {
                if !valid_type_pattern(t) {
                    out.push((
                        "hl7v2.allowed_message_types".into(),
                        format!("`{t}` is not a message type like ADT^A01 or ADT^*"),
                    ));
                }
            }
            for (t, segs) in &h.required_segments {
                if !valid_type_pattern(t) {
                    out.push((
                        format!("hl7v2.required_segments.{t}"),
                        "not a message type like ADT^A01".into(),
                    ));
                }
                if segs.iter().any(|s| {
                    s.len() != 3
                        || !s
                            .bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                }) {
                    out.push((
                        format!("hl7v2.required_segments.{t}"),
                        "segment ids are three uppercase letters or digits".into(),
                    ));
                }
            }
            if h.media_types.is_empty() && !h.all_bodies {
                out.push((
                    "hl7v2.media_types".into(),
                    "empty: no body would ever be validated (set all_bodies)".into(),
                ));
            }
        }
        out
    }
}

fn valid_type_pattern(t: &str) -> bool {
    let (code, trigger) = t.split_once('^').unwrap_or((t, "*"));
    code.len() == 3
        && code
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && (trigger == "*"
            || (trigger.len() == 3
                && trigger
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())))
}

impl FhirValidateConfig {
    fn profile(&self) -> Profile {
        Profile {
            allowed_types: self.allowed_types.clone(),
            required: self.required.clone(),
            forbidden: self.forbidden.clone(),
            max_bundle_entries: self.max_bundle_entries,
        }
    }
}

/// The compiled policy.
pub struct Validate {
    /// The profile is compiled once here, not per request.
    fhir: Option<(Limits, Option<fhirv::CompiledProfile>)>,
    hl7: Option<(hl7v2::Rules, Hl7v2ValidateConfig)>,
    failures: IntCounterVec,
    route: Arc<str>,
    /// Request bodies lexed into their shared index (`ward_json_lex_total{direction="request"}`).
    lexed: prometheus::IntCounter,
    /// Build the body's token index and leave it for the policies after this one (the
    /// route's stack sets it when a later policy reads the body); an index an earlier
    /// policy left is used either way.
    share: bool,
}

impl FromConfig for Validate {
    type Config = ValidateConfig;
    fn from_config(cfg: &ValidateConfig, b: &mut Build<'_>) -> Result<Self, String> {
        Ok(
            Validate::new(cfg, b.route, b.metrics.validation_failures.clone())?
                .counting_lexes(b.metrics.json_lex.with_label_values(&["request"])),
        )
    }
}

impl Validate {
    pub fn new(cfg: &ValidateConfig, route: &str, failures: IntCounterVec) -> Result<Self, String> {
        if let Some((k, m)) = cfg.problems().into_iter().next() {
            return Err(format!("{k}: {m}"));
        }
        let fhir = match cfg.fhir.as_ref() {
            Some(f) => {
                let p = f.profile();
                let has_rules = p.allowed_types.is_some()
                    || !p.required.is_empty()
                    || !p.forbidden.is_empty()
                    || p.max_bundle_entries.is_some();
                let compiled = if has_rules {
                    Some(fhirv::compile_profile(&p)?)
                } else {
                    None
                };
                let limits = Limits {
                    max_bytes: f.max_body_bytes,
                    max_depth: f.max_depth,
                    max_issues: 100,
                };
                Some((limits, compiled))
            }
            None => None,
        };
        let hl7 = cfg.hl7v2.as_ref().map(|h| {
            let defaults = hl7v2::Rules::default();
            (
                hl7v2::Rules {
                    allowed_message_types: h.allowed_message_types.clone(),
                    allowed_versions: h.allowed_versions.clone(),
                    required_segments: h
                        .required_segments
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    lenient_line_endings: h.lenient_line_endings,
                    ..defaults
                },
                h.clone(),
            )
        });
        Ok(Validate {
            fhir,
            hl7,
            failures,
            route: Arc::from(route),
            // Counted once the gateway's registry is known (`from_config`).
            lexed: prometheus::IntCounter::new("ward_json_lex_unregistered", "-")
                .map_err(|e| e.to_string())?,
            share: true,
        })
    }
}

impl Validate {
    /// Count the request bodies this policy lexes in `c` (`from_config` passes the
    /// gateway's `ward_json_lex_total{direction="request"}`).
    pub fn counting_lexes(mut self, c: prometheus::IntCounter) -> Self {
        self.lexed = c;
        self
    }

    /// Build and leave the token index for later readers of the body (default `true`);
    /// `false` when none follows, so a validate-only route does not lex twice.
    pub fn sharing_index(mut self, share: bool) -> Self {
        self.share = share;
        self
    }
}

/// A request body's media type, lower-cased, without parameters; and its charset.
/// The parameters of a body's Content-Type that change how it is read.
struct MediaType {
    essence: String,
    charset: Option<String>,
    fhir_version: Option<String>,
}

/// The body's media type. `Err` when the body could be read differently than the gateway
/// reads it: several Content-Type fields, or one that is not text.
fn media_type(req: &Request<Body>) -> Result<Option<MediaType>, Rejection> {
    let mut all = req.headers().get_all(CONTENT_TYPE).iter();
    let Some(v) = all.next() else { return Ok(None) };
    let ambiguous = || {
        unsupported(
            "unsupported_media_type",
            "exactly one valid Content-Type is required",
        )
    };
    if all.next().is_some() {
        return Err(ambiguous());
    }
    let v = v.to_str().map_err(|_| ambiguous())?;
    let mut parts = v.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let (mut charset, mut fhir_version) = (None, None);
    for p in parts {
        if let Some((k, val)) = p.split_once('=') {
            let val = val.trim().trim_matches('"').to_ascii_lowercase();
            match k.trim().to_ascii_lowercase().as_str() {
                "charset" => charset = Some(val),
                "fhirversion" => fhir_version = Some(val),
                _ => {}
            }
        }
    }
    Ok(Some(MediaType {
        essence,
        charset,
        fhir_version,
    }))
}

fn is_xml(mt: &str) -> bool {
    matches!(
        mt,
        "application/fhir+xml" | "application/xml" | "text/xml" | "xml" | "application/xml+fhir"
    )
}
fn is_json(mt: &str) -> bool {
    matches!(
        mt,
        "application/fhir+json" | "application/json" | "json" | "application/json+fhir"
    )
}

/// Does the `Accept` header (absent = anything) admit a JSON answer? Media ranges with
/// `q=0` are refusals.
fn accepts_json(req: &Request<Body>) -> bool {
    let mut any_header = false;
    for v in req.headers().get_all(http::header::ACCEPT) {
        any_header = true;
        let Ok(v) = v.to_str() else { continue };
        for range in v.split(',') {
            let mut parts = range.split(';');
            let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, q)| {
                    k.trim() == "q" && q.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
                })
            });
            if !refused && (is_json(&mt) || matches!(mt.as_str(), "*/*" | "application/*")) {
                return true;
            }
        }
    }
    !any_header
}

fn unsupported(code: &'static str, detail: &'static str) -> Rejection {
    Rejection::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, code, detail)
}

fn has_body(req: &Request<Body>) -> bool {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) => n > 0,
        None => !req.body().is_end_stream(),
    }
}

/// What to do with a request's body.
enum Check {
    None,
    Resource,
    JsonPatch,
    Er7,
}

impl Validate {
    fn fail(&self, kind: &str) {
        self.failures.with_label_values(&[&self.route, kind]).inc();
    }

    /// Decide from the head alone; refusals here never read the body.
    fn plan(&self, req: &Request<Body>) -> Result<Check, Rejection> {
        let body = has_body(req);
        let mt = match media_type(req) {
            Ok(m) => m,
            Err(rej) if body => {
                self.fail("media_type");
                return Err(rej);
            }
            Err(_) => None,
        };
        if body {
            // Compressed bytes are not what the validator would see after the EHR
            // inflates them.
            let encoded = req
                .headers()
                .get_all(http::header::CONTENT_ENCODING)
                .iter()
                .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
            if encoded {
                self.fail("media_type");
                return Err(unsupported(
                    "unsupported_content_encoding",
                    "request bodies must not be compressed on this route",
                ));
            }
        }
        if let Some((_, cfg)) = &self.hl7 {
            let er7 = cfg.all_bodies
                || mt.as_ref().is_some_and(|m| {
                    cfg.media_types
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(&m.essence))
                });
            // A POST/PUT/PATCH with no body on an HL7 v2 route is an empty message, not
            // "nothing to check": it is validated (and refused) exactly as an empty MLLP
            // frame is, so both paths answer it with the same AR.
            let sends_message = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
            if er7 && (body || sends_message) {
                return Ok(Check::Er7);
            }
            if self.fhir.is_none() {
                return if body {
                    self.fail("media_type");
                    Err(unsupported(
                        "unsupported_media_type",
                        "this route accepts HL7 v2 (ER7) bodies only",
                    ))
                } else if sends_message {
                    Ok(Check::Er7)
                } else {
                    Ok(Check::None)
                };
            }
        }
        if self.fhir.is_none() {
            return Ok(Check::None);
        }
        let Some(f) = req.extensions().get::<Arc<FhirRequest>>() else {
            // Config validation ties `validate.fhir` to `fhir: true` routes.
            return Err(Rejection::internal());
        };
        // `_format` names the representation; one that contradicts the body's
        // Content-Type could make the EHR parse the body as something the gateway did
        // not validate.
        let format = f.format.as_deref().map(|s| s.trim().to_ascii_lowercase());
        let takes_body = match f.interaction {
            Interaction::Create
            | Interaction::Update
            | Interaction::Patch
            | Interaction::BatchOrTransaction
            | Interaction::OperationSystem
            | Interaction::OperationType
            | Interaction::OperationInstance => true,
            // `POST _search` carries form parameters, read by the FHIR authorization.
            Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::SearchCompartment => req.method() == Method::POST,
            _ => false,
        };
        // Answers: Ward's policies read FHIR JSON only, so a client that will take nothing
        // else (by `_format` or by `Accept`) is told so rather than served XML that no
        // policy could inspect. (`_format` on a request with a body is checked below.)
        let format_json = format
            .as_deref()
            .map(|f| is_json(f.split(';').next().unwrap_or("").trim()));
        if (format_json == Some(false) && !body) || !accepts_json(req) {
            self.fail("format");
            return Err(Rejection::new(
                StatusCode::NOT_ACCEPTABLE,
                "format_not_acceptable",
                "this route answers in FHIR JSON only",
            ));
        }
        if !body {
            return Ok(Check::None);
        }
        if !takes_body {
            self.fail("unexpected_body");
            return Err(Rejection::bad_request(
                "unexpected_body",
                "this FHIR interaction takes no request body",
            ));
        }
        let Some(MediaType {
            essence: mt,
            charset,
            fhir_version,
        }) = mt
        else {
            self.fail("media_type");
            return Err(unsupported(
                "unsupported_media_type",
                "a request body needs a Content-Type",
            ));
        };
        if matches!(
            f.interaction,
            Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
        ) {
            return if mt == "application/x-www-form-urlencoded" {
                Ok(Check::None)
            } else {
                self.fail("media_type");
                Err(unsupported(
                    "unsupported_media_type",
                    "a search body must be application/x-www-form-urlencoded",
                ))
            };
        }
        if charset
            .as_deref()
            .is_some_and(|c| c != "utf-8" && c != "utf8")
        {
            self.fail("media_type");
            return Err(unsupported(
                "unsupported_charset",
                "FHIR JSON bodies must be UTF-8",
            ));
        }
        // Only R4 is validated; a body declared as another FHIR version would be read by
        // different rules upstream.
        if fhir_version
            .as_deref()
            .is_some_and(|v| v != "4.0" && v != "4.0.1")
        {
            self.fail("media_type");
            return Err(unsupported(
                "fhir_version_unsupported",
                "this route validates FHIR R4 (fhirVersion=4.0) only",
            ));
        }
        let formats = f.params.iter().filter(|p| p.name == "_format").count();
        if let (Some(fmt), true) = (&format, formats <= 1) {
            let fmt_mt = fmt.split(';').next().unwrap_or("").trim();
            if !is_json(fmt_mt) {
                self.fail("format");
                return Err(Rejection::bad_request(
                    "format_conflict",
                    "_format does not match the JSON request body",
                ));
            }
        } else if formats > 1 {
            self.fail("format");
            return Err(Rejection::bad_request(
                "format_conflict",
                "_format given more than once",
            ));
        }
        if is_xml(&mt) || mt == "application/xml-patch+xml" {
            self.fail("media_type");
            return Err(unsupported(
                "xml_not_supported",
                "this route validates FHIR JSON only; XML bodies are refused",
            ));
        }
        if f.interaction == Interaction::Patch && mt == "application/json-patch+json" {
            return Ok(Check::JsonPatch);
        }
        if is_json(&mt) {
            return Ok(Check::Resource);
        }
        self.fail("media_type");
        Err(unsupported(
            "unsupported_media_type",
            "FHIR bodies must be application/fhir+json",
        ))
    }

    /// Check the buffered body; `Err` carries the client's answer.
    fn check(
        &self,
        check: &Check,
        req_f: Option<&FhirRequest>,
        body: &[u8],
        index: Option<&crate::json::Index>,
        request_id: &str,
    ) -> Result<(), Rejection> {
        match check {
            Check::None => Ok(()),
            Check::Resource | Check::JsonPatch => {
                let Some((limits, profile)) = &self.fhir else {
                    return Ok(());
                };
                let result = match check {
                    Check::JsonPatch => {
                        fhirv::validate_json_patch_indexed(body, index, limits).map(|()| None)
                    }
                    _ => fhirv::validate_resource_indexed(body, index, limits, profile.as_ref())
                        .map(Some),
                };
                match result {
                    Ok(Some(summary)) => {
                        req_f.map_or(Ok(()), |f| self.check_target(f, &summary.resource_type))
                    }
                    Ok(None) => Ok(()),
                    Err(issues) => {
                        let kind = issues
                            .iter()
                            .find(|i| i.severity == Severity::Error)
                            .map_or("structure", |i| i.code);
                        self.fail(kind);
                        Err(invalid(issues))
                    }
                }
            }
            Check::Er7 => {
                let Some((rules, _)) = &self.hl7 else {
                    return Ok(());
                };
                match hl7v2::validate(body, rules) {
                    Ok(_) => Ok(()),
                    Err(rej) => {
                        self.fail(match rej.ack_code {
                            hl7v2::AckCode::Reject => "hl7v2_reject",
                            _ => "hl7v2_error",
                        });
                        // MSH-10 is 20 characters in v2.3: the request id's tail, so the
                        // NAK can still be matched with the access log.
                        let ack_id = request_id
                            .get(request_id.len().saturating_sub(20)..)
                            .unwrap_or("");
                        let nak = hl7v2::build_rejection_ack(&rej, &hl7_now(), ack_id);
                        Err(Rejection::bad_request(
                            "hl7v2_invalid",
                            "the HL7 v2 message is invalid",
                        )
                        .with_extra(Extra::Raw {
                            content_type: "x-application/hl7-v2+er7",
                            body: Bytes::from(nak),
                        }))
                    }
                }
            }
        }
    }

    /// The body's resource must be what the URL addresses (FHIR RESTful API rules): a
    /// create/update of `Patient` carries a Patient, a batch a Bundle.
    fn check_target(&self, f: &FhirRequest, body_type: &str) -> Result<(), Rejection> {
        let expected = match f.interaction {
            Interaction::Create | Interaction::Update => f.resource_type,
            Interaction::BatchOrTransaction => Some("Bundle"),
            // FHIRPath Patch is a Parameters resource.
            Interaction::Patch => Some("Parameters"),
            _ => None,
        };
        match expected {
            Some(t) if t != body_type => {
                self.fail("business-rule");
                Err(invalid(vec![fhirv::Issue {
                    severity: Severity::Error,
                    code: "invalid",
                    expression: body_type.to_owned(),
                    message: format!("the body is a {body_type}, but this request needs a {t}"),
                }]))
            }
            _ => Ok(()),
        }
    }
}

fn invalid(issues: Vec<fhirv::Issue>) -> Rejection {
    let findings: Vec<Finding> = issues
        .into_iter()
        .map(|i| Finding {
            severity: match i.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            code: i.code,
            expression: i.expression,
            message: i.message,
        })
        .collect();
    Rejection::bad_request(
        "fhir_invalid",
        "the request body is not a valid FHIR R4 resource",
    )
    .with_extra(Extra::Issues(findings.into()))
}

pub use crate::calendar::{civil_from_days, hl7_now};

impl Policy for Validate {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let check = match self.plan(&req) {
            Ok(Check::None) => return next.run(req),
            Ok(c) => c,
            Err(rej) => return Box::pin(std::future::ready(Err(rej))),
        };
        let c = self.clone();
        let next = next.later();
        let max = match (&check, &c.fhir, &c.hl7) {
            (Check::Er7, _, Some((_, h))) => h.max_body_bytes,
            (_, Some((l, _)), _) => l.max_bytes,
            _ => default_max_body(),
        };
        let (mut parts, body) = req.into_parts();
        Box::pin(async move {
            let bytes = crate::service::read_request_body(body, max).await?;
            let request_id = parts
                .extensions
                .get::<RequestContext>()
                .and_then(|c| c.request_id.to_str().ok().map(str::to_owned))
                .unwrap_or_default();
            let f = parts.extensions.get::<Arc<FhirRequest>>().cloned();
            // JSON is lexed once for every policy of the request (`json::LexedBody`): an
            // index an earlier policy built for these bytes is used, else one is built here
            // and left for the policies after this one when the route has any (`share`).
            // Lexing and validation run where the gateway's one size rule says
            // (`body::by_size`).
            let json = matches!(check, Check::Resource | Check::JsonPatch) && c.fhir.is_some();
            let lexed = LexedBody::matching(&parts.extensions, &bytes);
            let (me, b) = (c.clone(), bytes.clone());
            let (verdict, lexed) = crate::body::by_size(bytes.len(), move || {
                let lexed = match lexed {
                    Some(l) => Some(l),
                    None if json && me.share => LexedBody::build(&b, &me.lexed),
                    None => None,
                };
                let index = lexed.as_ref().map(|l| l.index().as_ref());
                let verdict = me.check(&check, f.as_deref(), &b, index, &request_id);
                (verdict, lexed)
            })
            .await
            .ok_or_else(Rejection::internal)?;
            verdict?;
            if let Some(l) = lexed {
                l.attach(&mut parts.extensions);
            }
            // Forward exactly what was validated, with its exact length.
            parts.headers.remove(http::header::TRANSFER_ENCODING);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            let body = Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync();
            next.run(Request::from_parts(parts, body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtm_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        let now = hl7_now();
        assert_eq!(now.len(), 19);
        assert!(now.ends_with("+0000"));
    }

    #[test]
    fn type_patterns() {
        assert!(valid_type_pattern("ADT^A01"));
        assert!(valid_type_pattern("ADT^*"));
        assert!(valid_type_pattern("ORU"));
        assert!(!valid_type_pattern("adt^a01"));
        assert!(!valid_type_pattern("ADT^A01^X"));
    }
}
