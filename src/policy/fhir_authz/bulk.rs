//! Bulk data export (FHIR Bulk Data Access IG v2) under `fhir_authz.bulk_export`.
//!
//! - Kick-off (`[base]/$export`, `Patient/$export`, `Group/[id]/$export`, GET only): every
//!   type the export can produce must be readable with the token's `system/` or `user/`
//!   scopes. `_type` names them (each item exactly a resource type; an empty item, an
//!   unknown or case-variant type is refused, never guessed); without `_type` the token
//!   needs read on `*`. `_typeFilter` types count too. A type outside the scopes is
//!   refused (403 `insufficient_scope`, the type named) — never narrowed or widened.
//!   `patient/` scopes and patient launch context are refused: the server decides which
//!   patients an export holds (all, or a group), and one patient's token cannot be
//!   confined before the fact.
//! - The upstream's status URL (`Content-Location` of the 202) becomes
//!   `[public base]/$export-poll/<opaque id>`, bound to the identity that started it
//!   (issuer, subject and client id). Polling (GET) and cancelling (DELETE) by that
//!   identity go to the upstream status URL; anyone else gets the 404 an unknown id gets.
//! - The completion manifest's file URLs become `[public base]/$export-file/<opaque id>`,
//!   bound the same way; outputs of types the token cannot read are removed; file URLs
//!   not under the route's upstream base (or an alias) are removed and never fetched.
//!   Every status and file request goes through the route's own upstream, the policies
//!   below and the proxy — there is no second HTTP client, so no other host can be made
//!   to be fetched.
//! - File downloads stream (NDJSON, line by line): lines whose `resourceType` the token
//!   cannot read, or that are not one JSON object, are removed.
//!
//! Jobs and files live in memory, bounded (`max_jobs`, `max_files`: the oldest go first)
//! and expiring (`job_ttl`); a restart forgets them (the client starts a new export).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::*;
use crate::config::primitives::Dur;
use crate::error::{Extra, Finding};

fn default_max_jobs() -> usize {
    1000
}
fn default_max_files() -> usize {
    100_000
}
fn default_ttl() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkExportConfig {
    /// Export jobs remembered at once (status URLs handed out); the oldest is forgotten.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// File URLs remembered at once, across all jobs.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// How long a status or file URL stays valid after it was handed out.
    #[serde(default = "default_ttl")]
    pub job_ttl: Dur,
}

impl BulkExportConfig {
    pub(super) fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.max_jobs == 0 || self.max_jobs > 1_000_000 {
            out.push(("bulk_export.max_jobs", "between 1 and 1000000".into()));
        }
        if self.max_files == 0 || self.max_files > 10_000_000 {
            out.push(("bulk_export.max_files", "between 1 and 10000000".into()));
        }
        if self.job_ttl.0 < Duration::from_secs(1) {
            out.push(("bulk_export.job_ttl", "at least 1s".into()));
        }
        out
    }
}

/// One remembered URL: where it leads upstream (relative to the upstream's base) and who
/// may use it.
#[derive(Clone)]
struct Entry {
    owner: String,
    target: String,
    /// A type a file may hold beyond the token's scopes (`OperationOutcome` in error files).
    extra: Option<&'static str>,
    expires: Instant,
}

/// A bounded, expiring map of opaque id → entry. Entries expire in insertion order (one
/// TTL for all), so a queue of ids is enough to forget the oldest.
struct Table {
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// `owner \0 target` → id: a manifest polled twice hands out the same file ids.
    by_target: HashMap<String, String>,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            map: HashMap::new(),
            order: VecDeque::new(),
            by_target: HashMap::new(),
            max,
        }
    }

    fn forget_front(&mut self) {
        if let Some(id) = self.order.pop_front() {
            if let Some(e) = self.map.remove(&id) {
                self.by_target.remove(&format!("{}\0{}", e.owner, e.target));
            }
        }
    }

    fn purge(&mut self, now: Instant) {
        while let Some(id) = self.order.front() {
            match self.map.get(id) {
                Some(e) if e.expires > now => break,
                _ => self.forget_front(),
            }
        }
    }

    fn insert(&mut self, e: Entry, now: Instant) -> Result<String, Rejection> {
        self.purge(now);
        let key = format!("{}\0{}", e.owner, e.target);
        if let Some(id) = self.by_target.get(&key) {
            if self.map.contains_key(id) {
                return Ok(id.clone());
            }
        }
        while self.map.len() >= self.max {
            self.forget_front();
        }
        let id = opaque_id()?;
        self.by_target.insert(key, id.clone());
        self.map.insert(id.clone(), e);
        self.order.push_back(id.clone());
        Ok(id)
    }

    fn get(&mut self, id: &str, owner: &str, now: Instant) -> Option<Entry> {
        self.purge(now);
        self.map
            .get(id)
            .filter(|e| e.owner == owner && e.expires > now)
            .cloned()
    }

    fn remove(&mut self, id: &str) {
        if let Some(e) = self.map.remove(id) {
            self.by_target.remove(&format!("{}\0{}", e.owner, e.target));
        }
        // The id stays in `order` until it reaches the front; `purge` skips it.
    }
}

pub(super) struct Jobs {
    polls: Mutex<Table>,
    files: Mutex<Table>,
    ttl: Duration,
}

impl Jobs {
    pub(super) fn new(cfg: &BulkExportConfig) -> Jobs {
        Jobs {
            polls: Mutex::new(Table::new(cfg.max_jobs)),
            files: Mutex::new(Table::new(cfg.max_files)),
            ttl: cfg.job_ttl.0,
        }
    }
}

/// 128 random bits, hex: unguessable, and a valid FHIR id.
fn opaque_id() -> Result<String, Rejection> {
    let mut raw = [0u8; 16];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| Rejection::internal())?;
    Ok(hex::encode(raw))
}

/// Who started an export: the token's issuer, subject and client (a client-credentials
/// token's subject is its client; both are bound when present).
fn owner_of(c: &Claims) -> String {
    format!(
        "{}\0{}\0{}",
        c.iss,
        c.sub,
        c.client_id.as_deref().unwrap_or("")
    )
}

/// Kick-off parameters of the Bulk Data Access IG v2 that Ward can check. Anything else is
/// refused: a server that does not know a parameter may ignore it (and export more than
/// was checked). Not accepted: `patient` (POST only in the IG), `organizeOutputBy` (files
/// then hold many types under one `type`, and `continuesInFile` chains), and
/// `allowPartialManifests` (manifest pages).
const EXPORT_PARAMS: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_typeFilter",
    "_elements",
    "includeAssociatedData",
];

const NDJSON_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

fn bad(detail: &'static str) -> Rejection {
    Rejection::bad_request("export_param_invalid", detail)
}

fn exact_type(s: &str) -> Option<&'static str> {
    crate::fhir::tables::RESOURCE_TYPES
        .binary_search(&s)
        .ok()
        .map(|i| crate::fhir::tables::RESOURCE_TYPES[i])
}

/// Can these scopes read `t` outside patient context?
fn readable(scopes: &[Scope], t: &str) -> bool {
    scopes
        .iter()
        .filter(|s| s.context != ScopeContext::Patient)
        .any(|s| s.grants(t, Perm::Read, &[]))
}

/// Read on every type (`system/*.read`, `user/*.rs`, …), unconstrained.
fn reads_everything(scopes: &[Scope]) -> bool {
    scopes
        .iter()
        .filter(|s| s.context != ScopeContext::Patient)
        .any(|s| s.resource_type.is_none() && s.grants("Patient", Perm::Read, &[]))
}

fn type_refused(t: &'static str, expression: &str) -> Rejection {
    insufficient_scope().with_extra(Extra::Issues(
        vec![Finding {
            severity: "error",
            code: "forbidden",
            expression: expression.to_owned(),
            message: format!("the token's scopes do not grant read on {t}"),
        }]
        .into(),
    ))
}

/// The kick-off decision: the parameters are the IG's, spelled exactly, and every type
/// the export can produce is readable with `scopes`.
pub(super) fn export_decision(params: &[SearchParam], scopes: &[Scope]) -> Result<(), Rejection> {
    let mut named: Vec<&'static str> = Vec::new();
    let mut has_type = false;
    for p in params {
        if !EXPORT_PARAMS.contains(&p.name.as_str()) {
            return Err(
                if EXPORT_PARAMS
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(&p.name))
                {
                    bad("export parameter names are case-sensitive")
                } else {
                    Rejection::bad_request(
                        "export_param_unknown",
                        "parameter not supported by bulk export on this route",
                    )
                },
            );
        }
        if p.modifier.is_some() || p.chain.is_some() {
            return Err(bad("export parameters take no modifier"));
        }
        match p.name.as_str() {
            "_type" => {
                has_type = true;
                for item in p.value.split(',') {
                    // No trimming, no case folding: a server that reads ` Observation` or
                    // an empty item its own way must not get a list we read another way.
                    let t = exact_type(item).ok_or_else(|| {
                        bad("_type must be a comma-separated list of resource types")
                    })?;
                    named.push(t);
                }
            }
            "_typeFilter" => {
                for item in p.value.split(',') {
                    // `Type?query`; a comma inside a query would make items ambiguous.
                    let t = item
                        .split_once('?')
                        .and_then(|(t, _)| exact_type(t))
                        .ok_or_else(|| {
                            bad("_typeFilter items must be Type?query (no commas inside a query)")
                        })?;
                    named.push(t);
                }
            }
            "_outputFormat" if !NDJSON_FORMATS.contains(&p.value.as_str()) => {
                return Err(bad("only NDJSON output is supported"));
            }
            _ => {}
        }
    }
    if !has_type && !reads_everything(scopes) {
        return Err(insufficient_scope().with_extra(Extra::Issues(
            vec![Finding {
                severity: "error",
                code: "forbidden",
                expression: "_type".into(),
                message:
                    "the token cannot read every resource type: name the types to export with _type"
                        .into(),
            }]
            .into(),
        )));
    }
    for t in named {
        if !readable(scopes, t) {
            return Err(type_refused(t, "_type"));
        }
    }
    Ok(())
}

/// A path relative to the upstream's base that stays under it.
fn safe_rest(rest: &str) -> bool {
    let path = rest.split(['?', '#']).next().unwrap_or("");
    !rest.is_empty()
        && !rest.starts_with('/')
        && !rest.contains('#')
        && !rest.contains('\\')
        && !rest.bytes().any(|b| b.is_ascii_control() || b == b' ')
        && path.split('/').all(|seg| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s != "." && s != ".." && !s.contains("%2f") && !s.contains("%5c")
        })
}

/// `path_prefix` + `/` + `rest`: the proxy maps the route prefix onto the upstream base.
fn route_uri(parts: &http::request::Parts, rest: &str) -> Result<Uri, Rejection> {
    let prefix = parts
        .extensions
        .get::<crate::context::RouteId>()
        .map(|r| r.0.path_prefix.trim_end_matches('/').to_owned())
        .ok_or_else(Rejection::internal)?;
    let pq = PathAndQuery::try_from(format!("{prefix}/{rest}")).map_err(|_| unverifiable())?;
    Ok(Uri::from(pq))
}

fn unverifiable() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "export_unverifiable",
        "the upstream's bulk-export answer could not be checked",
    )
}

fn strip_for_upstream(parts: &mut http::request::Parts, accept: &'static str) {
    for h in [
        ACCEPT_ENCODING,
        CONTENT_TYPE,
        CONTENT_LENGTH,
        http::header::RANGE,
        http::header::IF_RANGE,
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
    ] {
        parts.headers.remove(h);
    }
    parts
        .headers
        .insert(http::header::ACCEPT, HeaderValue::from_static(accept));
}

/// `$export`, `$export-poll`, `$export-file`: the bulk-export path of `fhir_authz`.
/// Case variants (`$Export`) come here too, to be refused: a lenient server could read
/// them as `$export`, unchecked.
pub(super) fn is_bulk(f: &FhirRequest) -> bool {
    f.operation.as_deref().is_some_and(|o| {
        ["export", "export-poll", "export-file"]
            .iter()
            .any(|b| b.eq_ignore_ascii_case(o))
    })
}

/// A status or file answer that points somewhere else (a redirect to storage) would send
/// the client around the gateway, and name another host.
fn no_redirect(resp: &Response<Body>) -> Result<(), Rejection> {
    if resp.status().is_redirection() {
        return Err(unverifiable());
    }
    Ok(())
}

pub(super) async fn handle<S>(
    a: Arc<FhirAuthz>,
    f: &FhirRequest,
    claims: &Claims,
    req: Request<Body>,
    inner: S,
) -> Result<Response<Body>, Rejection>
where
    S: Chain,
{
    let Some(jobs) = a.bulk.as_ref() else {
        return Err(denied(
            "operation_denied",
            "bulk data export is not enabled on this route",
        ));
    };
    if req.extensions().get::<crate::context::WasHead>().is_some() {
        // Its GET starts an export or streams a whole file: no HEAD of that.
        return Err(Rejection::method_not_allowed());
    }
    let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
    let owner = owner_of(claims);
    let (mut parts, _body) = req.into_parts();
    let links = LinkBase::from_parts(&parts).ok_or_else(Rejection::internal)?;
    // Where the upstream may name its status and file URLs: the gateway (the proxy has
    // rewritten what it recognised), the upstream's base for this route (its origin with
    // the route's upstream path — not the bare upstream URL: a path beside the base is
    // not this route's) and configured aliases.
    let mut v = vec![links.gateway.clone()];
    if let Some(o) = &a.upstream_origin {
        v.push(format!("{o}{}", links.upstream_path));
    }
    v.extend(a.aliases.iter().cloned());
    let bases = Bases::new(v);
    let now = Instant::now();
    let op = f.operation.as_deref().unwrap_or("");
    let system_level = f.interaction == Interaction::OperationSystem && f.resource_type.is_none();
    if !matches!(op, "export" | "export-poll" | "export-file") || (op != "export" && !system_level)
    {
        return Err(denied(
            "operation_denied",
            "this operation is not allowed on this route",
        ));
    }
    match f.operation.as_deref() {
        Some("export") => {
            if parts.method != http::Method::GET {
                return Err(Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "export_post_unsupported",
                    "start a bulk export with GET (parameters in the query)",
                ));
            }
            let level_ok = match f.interaction {
                Interaction::OperationSystem => f.resource_type.is_none(),
                Interaction::OperationType => f.resource_type == Some("Patient"),
                Interaction::OperationInstance => f.resource_type == Some("Group"),
                _ => false,
            };
            if !level_ok {
                return Err(denied(
                    "operation_denied",
                    "$export is defined on the base, Patient and Group/[id]",
                ));
            }
            let patient_ctx = claims.raw.get(&a.cfg.patient_claim).is_some();
            if patient_ctx {
                return Err(denied(
                    "export_patient_context",
                    "bulk export is not available with patient-level access",
                ));
            }
            export_decision(&f.params, &scopes)?;
            strip_for_upstream(&mut parts, "application/fhir+json");
            parts
                .headers
                .insert("prefer", HeaderValue::from_static("respond-async"));
            let req = Request::from_parts(parts, crate::empty_body());
            let mut resp = crate::service::call_next(inner, req).await?;
            let loc = resp
                .headers_mut()
                .remove(http::header::CONTENT_LOCATION)
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            if resp.status().is_success() && resp.status() != StatusCode::ACCEPTED {
                // A synchronous answer to an export would be data nobody checked.
                return Err(unverifiable());
            }
            if resp.status() != StatusCode::ACCEPTED {
                return Ok(resp);
            }
            let rest = loc
                .as_deref()
                .filter(|l| l.contains("://"))
                .and_then(|l| bases.localize(l))
                .filter(|r| safe_rest(r))
                .ok_or_else(unverifiable)?;
            let id = jobs
                .polls
                .lock()
                .map_err(|_| Rejection::internal())?
                .insert(
                    Entry {
                        owner,
                        target: rest.to_owned(),
                        extra: None,
                        expires: now + jobs.ttl,
                    },
                    now,
                )?;
            let url = format!("{}/$export-poll/{id}", links.gateway);
            let v = HeaderValue::from_str(&url).map_err(|_| Rejection::internal())?;
            resp.headers_mut().insert(http::header::CONTENT_LOCATION, v);
            Ok(resp)
        }
        Some("export-poll") => {
            let method = parts.method.clone();
            if method != http::Method::GET && method != http::Method::DELETE {
                return Err(Rejection::method_not_allowed());
            }
            let id = f.id.as_deref().unwrap_or("");
            let entry = jobs
                .polls
                .lock()
                .map_err(|_| Rejection::internal())?
                .get(id, &owner, now)
                .ok_or_else(hidden)?;
            parts.uri = route_uri(&parts, &entry.target)?;
            strip_for_upstream(&mut parts, "application/json");
            let req = Request::from_parts(parts, crate::empty_body());
            let resp = crate::service::call_next(inner, req).await?;
            no_redirect(&resp)?;
            let (mut rparts, rbody) = resp.into_parts();
            rparts.headers.remove(http::header::CONTENT_LOCATION);
            if method == http::Method::DELETE {
                if rparts.status.is_success() {
                    if let Ok(mut t) = jobs.polls.lock() {
                        t.remove(id);
                    }
                }
                return Ok(Response::from_parts(rparts, rbody));
            }
            if rparts.status.is_success()
                && !matches!(rparts.status, StatusCode::OK | StatusCode::ACCEPTED)
            {
                return Err(unverifiable());
            }
            if rparts.status != StatusCode::OK {
                return Ok(Response::from_parts(rparts, rbody));
            }
            let bytes = read_limited(rbody, a.cfg.max_buffer_bytes).await?;
            let mut v: Value = match strict_json::from_slice(&bytes) {
                Ok(v @ Value::Object(_)) => v,
                _ => return Err(unverifiable()),
            };
            let mut files = jobs.files.lock().map_err(|_| Rejection::internal())?;
            rewrite_manifest(&mut v, &bases, &links.gateway, &scopes, |target, extra| {
                files.insert(
                    Entry {
                        owner: owner.clone(),
                        target: target.to_owned(),
                        extra,
                        expires: now + jobs.ttl,
                    },
                    now,
                )
            })?;
            drop(files);
            let out = Bytes::from(v.to_string());
            for h in [ETAG, http::header::CONTENT_ENCODING] {
                rparts.headers.remove(h);
            }
            rparts
                .headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            rparts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
            Ok(Response::from_parts(rparts, full(out)))
        }
        Some("export-file") => {
            if parts.method != http::Method::GET {
                return Err(Rejection::method_not_allowed());
            }
            let id = f.id.as_deref().unwrap_or("");
            let entry = jobs
                .files
                .lock()
                .map_err(|_| Rejection::internal())?
                .get(id, &owner, now)
                .ok_or_else(hidden)?;
            parts.uri = route_uri(&parts, &entry.target)?;
            strip_for_upstream(&mut parts, "application/fhir+ndjson");
            let req = Request::from_parts(parts, crate::empty_body());
            let mut resp = crate::service::call_next(inner, req).await?;
            no_redirect(&resp)?;
            if resp.status().is_success() && resp.status() != StatusCode::OK {
                // A partial (206) or other answer is not a file that can be read by lines.
                return Err(unverifiable());
            }
            if resp.status() != StatusCode::OK {
                resp.headers_mut().remove(http::header::CONTENT_LOCATION);
                return Ok(resp);
            }
            let ndjson = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .is_some_and(|mt| mt == "application/fhir+ndjson" || mt == "application/ndjson");
            let encoded = resp
                .headers()
                .get_all(http::header::CONTENT_ENCODING)
                .iter()
                .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
            if !ndjson || encoded {
                return Err(unverifiable());
            }
            let (mut rparts, rbody) = resp.into_parts();
            for h in [CONTENT_LENGTH, ETAG, http::header::ACCEPT_RANGES] {
                rparts.headers.remove(h);
            }
            let filter = ScopeLines {
                scopes,
                extra: entry.extra,
            };
            let body = crate::body::lines(rbody, a.cfg.max_buffer_bytes, Box::new(filter));
            Ok(Response::from_parts(rparts, body))
        }
        _ => Err(Rejection::internal()),
    }
}

/// Rewrite a completion manifest: file URLs to gateway ids (`register(target, extra)`),
/// `request` onto the public base, outputs of unreadable types and files elsewhere removed.
fn rewrite_manifest(
    v: &mut Value,
    bases: &Bases,
    public: &str,
    scopes: &[Scope],
    mut register: impl FnMut(&str, Option<&'static str>) -> Result<String, Rejection>,
) -> Result<(), Rejection> {
    let Some(m) = v.as_object_mut() else {
        return Err(unverifiable());
    };
    // Pages of a manifest (`link`) and anything unknown could name other URLs: only the
    // members Ward understands are passed on.
    m.retain(|k, _| {
        matches!(
            k.as_str(),
            "transactionTime"
                | "request"
                | "requiresAccessToken"
                | "outputFormat"
                | "output"
                | "error"
                | "deleted"
        )
    });
    match m.get("request").and_then(Value::as_str) {
        Some(r) => match bases.localize(r).filter(|_| r.contains("://")) {
            Some(rest) => {
                let n = format!("{public}/{rest}");
                m.insert("request".into(), Value::from(n));
            }
            None => {
                m.remove("request");
            }
        },
        None => {
            m.remove("request");
        }
    }
    // Files are only handed out through Ward, which checks the token.
    m.insert("requiresAccessToken".into(), Value::Bool(true));
    for (key, extra) in [
        ("output", None),
        ("error", Some("OperationOutcome")),
        ("deleted", Some("Bundle")),
    ] {
        let Some(list) = m.get_mut(key) else { continue };
        let Some(items) = list.as_array_mut() else {
            return Err(unverifiable());
        };
        let mut kept = Vec::new();
        for item in items.drain(..) {
            let t = item.get("type").and_then(Value::as_str);
            let t_ok = match (key, t) {
                ("output", Some(t)) => exact_type(t).is_some_and(|t| readable(scopes, t)),
                ("output", None) => false,
                (_, Some(t)) => extra == Some(t) || readable(scopes, t),
                (_, None) => true,
            };
            let rest = item
                .get("url")
                .and_then(Value::as_str)
                .filter(|u| u.contains("://"))
                .and_then(|u| bases.localize(u))
                .filter(|r| safe_rest(r))
                .map(str::to_owned);
            let (true, Some(rest)) = (t_ok, rest) else {
                continue;
            };
            let id = register(&rest, extra)?;
            let mut out = serde_json::Map::new();
            if let Some(t) = t {
                out.insert("type".into(), Value::from(t));
            }
            out.insert(
                "url".into(),
                Value::from(format!("{public}/$export-file/{id}")),
            );
            if let Some(c) = item.get("count").filter(|c| c.is_u64()) {
                out.insert("count".into(), c.clone());
            }
            kept.push(Value::Object(out));
        }
        *items = kept;
    }
    Ok(())
}

/// Lines of an export file the token may read: one JSON object of a granted type each.
struct ScopeLines {
    scopes: Vec<Scope>,
    extra: Option<&'static str>,
}

impl crate::body::LineFilter for ScopeLines {
    fn line(&mut self, line: &[u8]) -> Option<Bytes> {
        let v: Value = strict_json::from_slice(line).ok()?;
        let t = v.get("resourceType").and_then(Value::as_str)?;
        (self.extra == Some(t) || readable(&self.scopes, t)).then(|| Bytes::copy_from_slice(line))
    }
    fn too_long(&mut self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &str) -> Vec<SearchParam> {
        parse_params(q).unwrap()
    }

    #[test]
    fn type_lists_are_read_exactly() {
        let s = scopes::parse_all(["system/Patient.read system/Observation.rs"]);
        for ok in [
            "_type=Patient",
            "_type=Patient,Observation",
            "_type=Patient&_type=Observation",
            "_type=Observation&_typeFilter=Observation%3Fcategory%3Dlab",
            "_type=Patient&_outputFormat=application%2Ffhir%2Bndjson&_since=2020-01-01",
        ] {
            assert!(export_decision(&params(ok), &s).is_ok(), "{ok}");
        }
        for (bad, code) in [
            ("", "insufficient_scope"),
            ("_type=Patient,Condition", "insufficient_scope"),
            ("_type=Patient&_type=Condition", "insufficient_scope"),
            (
                "_type=Patient&_typeFilter=Condition%3Fx%3D1",
                "insufficient_scope",
            ),
            ("_type=patient", "export_param_invalid"),
            ("_type=Patient,", "export_param_invalid"),
            ("_type=", "export_param_invalid"),
            ("_type=Patient,%20Observation", "export_param_invalid"),
            ("_type=Foo", "export_param_invalid"),
            ("_TYPE=Patient", "export_param_invalid"),
            ("_type:not=Patient", "export_param_invalid"),
            ("_type=Patient&patient=Patient/1", "export_param_unknown"),
            (
                "_type=Patient&organizeOutputBy=Patient",
                "export_param_unknown",
            ),
            (
                "_type=Patient&allowPartialManifests=true",
                "export_param_unknown",
            ),
            (
                "_type=Patient&_outputFormat=text%2Fcsv",
                "export_param_invalid",
            ),
            (
                "_type=Observation&_typeFilter=Observation%3Fcode%3Da,b",
                "export_param_invalid",
            ),
        ] {
            let e = export_decision(&params(bad), &s).unwrap_err();
            assert_eq!(e.code, code, "{bad}");
        }
        let all = scopes::parse_all(["system/*.read"]);
        assert!(export_decision(&[], &all).is_ok());
        let patient = scopes::parse_all(["patient/*.read"]);
        assert!(export_decision(&params("_type=Patient"), &patient).is_err());
    }

    #[test]
    fn tables_are_bounded_expiring_and_owned() {
        let now = Instant::now();
        let e = |owner: &str, target: &str, ttl: u64| Entry {
            owner: owner.into(),
            target: target.into(),
            extra: None,
            expires: now + Duration::from_secs(ttl),
        };
        let mut t = Table::new(3);
        let ids: Vec<String> = (0..5)
            .map(|i| t.insert(e("a", &format!("f{i}"), 60), now).unwrap())
            .collect();
        // The two oldest were forgotten to stay within 3.
        assert!(t.get(&ids[0], "a", now).is_none());
        assert!(t.get(&ids[1], "a", now).is_none());
        assert_eq!(t.get(&ids[4], "a", now).unwrap().target, "f4");
        assert_eq!(t.map.len(), 3);
        // Another owner sees nothing; the same target for the same owner is the same id.
        assert!(t.get(&ids[4], "b", now).is_none());
        assert_eq!(t.insert(e("a", "f4", 60), now).unwrap(), ids[4]);
        assert_ne!(t.insert(e("b", "f4", 60), now).unwrap(), ids[4]);
        // Expired: gone, and purged.
        let later = now + Duration::from_secs(61);
        assert!(t.get(&ids[4], "a", later).is_none());
        assert!(t.map.is_empty() && t.by_target.is_empty());
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            5
        );
        assert!(ids.iter().all(|i| i.len() == 32));
    }

    #[test]
    fn rests_stay_under_the_base() {
        for ok in ["status/1", "files/a.ndjson?sig=x"] {
            assert!(safe_rest(ok), "{ok}");
        }
        for bad in [
            "",
            "/x",
            "../x",
            "a/%2e%2E/b",
            "a/%2Fb",
            "a b",
            "a\\b",
            "a#b",
        ] {
            assert!(!safe_rest(bad), "{bad}");
        }
    }
}
