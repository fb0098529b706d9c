//! The response side of `fhir_authz`: what comes back is read before the client sees it —
//! compartment membership, scopes per returned resource (includes, contained, batch and
//! operation outputs), paging links, duplicate members.

use super::*;
use crate::fhir::answer::{self, Answer, Owner, Shape};
use crate::json;

/// An answer that cannot be checked is hidden like a missing record on reads (a 502 would
/// tell existence apart), and refused on searches.
fn unverifiable(bundle: bool) -> Rejection {
    if bundle {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    } else {
        hidden()
    }
}

pub(super) async fn check_response(
    a: &FhirAuthz,
    resp: Response<Body>,
    pid: &str,
    bundle: bool,
    hide: bool,
    links: Option<&LinkBase>,
    scope: Option<(&Grants<'_>, ScopeMode)>,
) -> Result<Response<Body>, Rejection> {
    let status = resp.status();
    if status == StatusCode::NOT_FOUND
        || status == StatusCode::GONE
        || (!bundle && !status.is_success())
    {
        // Same answer as a resource of another patient: on reads, no other status may
        // tell an existing record of someone else apart from a missing one.
        return Err(hidden());
    }
    if !status.is_success() {
        return Ok(resp);
    }
    let unverifiable = || unverifiable(bundle);
    let (mut parts, bytes) = match answer_bytes(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    // The answer is lexed once for every policy that reads it (DLP, validation): reuse the
    // index an earlier reader left, or leave ours for the next one.
    let index = json::LexedBody::obtain(&mut parts.extensions, &bytes, &a.lexed_answers);
    let check = BodyCheck {
        pid,
        bundle,
        hide,
        mode: a.cfg.bundle_mode,
        links,
        scope,
    };
    let out = match check.run_indexed(&bytes, index.as_deref())? {
        Some(new) => {
            parts.headers.remove(ETAG);
            new
        }
        None => bytes,
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Response::from_parts(parts, full(out)))
}

/// What the compartment guard checks in one read or search answer, apart from how the
/// answer is read (so the check runs on bytes alone: benches, differential tests).
pub(super) struct BodyCheck<'a, 'g> {
    pub(super) pid: &'a str,
    /// A search (or other Bundle-returning interaction).
    pub(super) bundle: bool,
    /// Refusals look like a missing record (reads by id through a search).
    pub(super) hide: bool,
    pub(super) mode: BundleMode,
    pub(super) links: Option<&'a LinkBase>,
    pub(super) scope: Option<(&'a Grants<'g>, ScopeMode)>,
}

impl BodyCheck<'_, '_> {
    /// `Ok(None)`: the answer passes as it came; `Ok(Some(_))`: it passes changed (entries
    /// removed, links pointed at the gateway).
    pub(super) fn run(&self, bytes: &[u8]) -> Result<Option<Bytes>, Rejection> {
        self.run_indexed(bytes, None)
    }

    /// [`BodyCheck::run`] reading the body's shared index when there is one (of `bytes`).
    pub(super) fn run_indexed(
        &self,
        bytes: &[u8],
        index: Option<&json::Index>,
    ) -> Result<Option<Bytes>, Rejection> {
        // Most answers pass as they came, and a read of another patient's record is hidden:
        // both are decided on the token stream, without a tree (issue #16).
        if let Ok(a) = answer::read_indexed(bytes, index) {
            match self.quick(&a) {
                Some(true) => return Ok(None),
                Some(false) => return Err(hidden()),
                None => {}
            }
        }
        self.run_tree(bytes)
    }

    /// The verdict of [`BodyCheck::run_tree`] when it is one of the two common ones, read
    /// from the token stream: `Some(true)`, it passes unchanged; `Some(false)`, a read
    /// outside the compartment. `None` for everything else (entries to remove, scopes to
    /// apply, links to point at the gateway, refusals), left to the tree.
    pub(super) fn quick(&self, a: &Answer<'_>) -> Option<bool> {
        let is_bundle = a.root.resource_type.as_str() == Some("Bundle");
        if self.hide || self.bundle || is_bundle {
            if !is_bundle || !a.keeps_every_entry(self.pid) {
                return None;
            }
        } else if !a.in_compartment(Owner::Doc, self.pid) {
            return Some(false);
        }
        if let Some((g, _)) = self.scope {
            if !a.scopes_pass(g) {
                return None;
            }
        }
        match self.links {
            Some(l) if self.bundle && !l.unchanged(a) => None,
            _ => Some(true),
        }
    }

    /// The check on a `serde_json::Value` tree: what `run` falls back to, and the oracle
    /// its differential tests compare it with.
    pub(super) fn run_tree(&self, bytes: &[u8]) -> Result<Option<Bytes>, Rejection> {
        let (bundle, hide, pid) = (self.bundle, self.hide, self.pid);
        let unverifiable = || unverifiable(bundle);
        let mut v = match strict_json::from_slice(bytes) {
            Ok(v) => v,
            Err(StrictError::Duplicate) => return Err(duplicate_members()),
            Err(StrictError::Malformed) => return Err(unverifiable()),
        };
        let changed = if hide {
            filter_bundle(&mut v, pid, BundleMode::Fail).map_err(|_| hidden())?
        } else if bundle || v.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            filter_bundle(&mut v, pid, self.mode)?
        } else if in_patient_compartment(&v, pid) {
            false
        } else {
            return Err(hidden());
        };
        // Then the scopes: what is left must be of types the token may receive.
        let changed = match self.scope {
            Some((g, mode)) => {
                g.filter(&mut v, mode == ScopeMode::Refuse).map_err(|_| {
                    if hide {
                        hidden()
                    } else {
                        scope_refused()
                    }
                })? || changed
            }
            None => changed,
        };
        // Paging links point at the upstream; pointed back at the gateway, every next page
        // goes through this guard too.
        let changed = match self.links {
            Some(l) if bundle => l.rewrite(&mut v) || changed,
            _ => changed,
        };
        Ok(changed.then(|| Bytes::from(v.to_string())))
    }
}

/// Read an upstream answer that is to be checked: identity-encoded, within the buffer cap.
/// `Err(None)`: it cannot be checked (the caller decides how that looks); `Err(Some(_))`: a
/// definite refusal (too large, unreadable).
pub(super) async fn answer_bytes(
    a: &FhirAuthz,
    resp: Response<Body>,
) -> Result<(http::response::Parts, Bytes), Option<Rejection>> {
    let (parts, body) = resp.into_parts();
    if parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity")
    {
        return Err(None);
    }
    let bytes = read_limited(body, a.cfg.max_buffer_bytes)
        .await
        .map_err(Some)?;
    Ok((parts, bytes))
}

/// Read an upstream answer that is to be checked: identity-encoded JSON within the buffer
/// cap, as a tree. `Err(None)`: it cannot be checked (the caller decides how that looks);
/// `Err(Some(_))`: a definite refusal (too large, unreadable, duplicate members).
pub(super) async fn json_answer(
    a: &FhirAuthz,
    resp: Response<Body>,
) -> Result<(http::response::Parts, Bytes, Value), Option<Rejection>> {
    let (parts, bytes) = answer_bytes(a, resp).await?;
    let v = match strict_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(StrictError::Duplicate) => return Err(Some(duplicate_members())),
        Err(StrictError::Malformed) => return Err(None),
    };
    Ok((parts, bytes, v))
}

/// An upstream answer with a repeated member name: refused with the code DLP gives the
/// same body (`dlp_unscannable`), so operators see one signal for one cause.
pub(super) fn duplicate_members() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "dlp_unscannable",
        "the upstream response could not be checked",
    )
}

/// The permission every resource in an interaction's answer needs; `None` for answers
/// that carry no resources of the server's choosing (writes echo what the client sent,
/// capabilities describe the server; batches are judged per entry).
pub(super) fn response_perm(i: Interaction) -> Option<Perm> {
    use Interaction::*;
    match i {
        Read | Vread | HistoryInstance => Some(Perm::Read),
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => {
            Some(Perm::Search)
        }
        OperationSystem | OperationType | OperationInstance => Some(Perm::Read),
        Capabilities | SmartConfiguration | Create | Update | Patch | Delete
        | BatchOrTransaction => None,
    }
}

/// A batch body authorized: what to forward, and per entry what to check in the answer.
pub(super) type BundleAuth = (Option<Bytes>, Vec<EntryCheck>, Vec<EntryScope>);

/// Scope information for one batch entry's result.
pub(super) struct EntryScope {
    pub(super) perm: Option<Perm>,
    pub(super) resource_type: Option<&'static str>,
    pub(super) params: Vec<SearchParam>,
}

pub(super) fn scope_refused() -> Rejection {
    insufficient_scope()
}

/// An answer outside the patient compartment guard: read it whole (duplicate member names
/// refused) and, when the scopes do not grant every type, remove or refuse what they do
/// not cover.
pub(super) async fn check_scoped(
    a: &FhirAuthz,
    resp: Response<Body>,
    grants: Option<&Grants<'_>>,
    mode: ScopeMode,
) -> Result<Response<Body>, Rejection> {
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    let Some(g) = grants else {
        if !json {
            return Ok(resp);
        }
        // Only the duplicate rule applies: anything else passes as it came.
        let (mut parts, body) = resp.into_parts();
        if parts
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity")
        {
            return Err(unverifiable());
        }
        let bytes = read_limited(body, a.cfg.max_buffer_bytes).await?;
        // The tokenizer finds any repeated name; only a body it refuses is asked why.
        if !bytes.is_empty()
            && json::check(&bytes, strict_json::MAX_DEPTH).is_err()
            && strict_json::from_slice(&bytes) == Err(StrictError::Duplicate)
        {
            return Err(duplicate_members());
        }
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        return Ok(Response::from_parts(parts, full(bytes)));
    };
    let (mut parts, bytes) = match answer_bytes(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    // Granted entirely (the common case): passes as it came, decided without a tree.
    if answer::read(&bytes).is_ok_and(|x| x.scopes_pass(g)) {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    let mut v = match strict_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(StrictError::Duplicate) => return Err(duplicate_members()),
        Err(StrictError::Malformed) => return Err(unverifiable()),
    };
    let changed = g
        .filter(&mut v, mode == ScopeMode::Refuse)
        .map_err(|_| scope_refused())?;
    let out = if changed {
        Bytes::from(v.to_string())
    } else {
        bytes
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    if changed {
        parts.headers.remove(ETAG);
    }
    Ok(Response::from_parts(parts, full(out)))
}

/// Where the client reached this route, to point a Bundle's paging links back at it.
pub(super) struct LinkBase {
    /// `https://host:port/prefix` as the client addressed the gateway.
    pub(super) gateway: String,
    /// The upstream's base path for this route (the rewrite prefix, or the route prefix).
    pub(super) upstream_path: String,
}

impl LinkBase {
    pub(super) fn from_parts(parts: &http::request::Parts) -> Option<LinkBase> {
        let ctx = parts.extensions.get::<crate::context::RequestContext>()?;
        let route = parts.extensions.get::<crate::context::RouteId>()?;
        let upstream = route
            .0
            .rewrite_prefix
            .as_deref()
            .unwrap_or(&route.0.path_prefix);
        Some(LinkBase {
            gateway: route.0.public_base(ctx),
            upstream_path: upstream.trim_end_matches('/').to_owned(),
        })
    }

    /// Is `url` already the gateway's (the proxy rewrites the upstream's base)?
    fn at_gateway(&self, url: &str) -> bool {
        url.strip_prefix(self.gateway.as_str())
            .is_some_and(|r| r.is_empty() || r.starts_with(['/', '?']))
    }

    /// Would [`LinkBase::rewrite`] leave this answer's links as they are?
    pub(super) fn unchanged(&self, a: &Answer<'_>) -> bool {
        a.link != Shape::Array
            || a.links
                .iter()
                .all(|u| u.as_deref().is_some_and(|u| self.at_gateway(u)))
    }

    /// Rewrite `Bundle.link[].url` from the upstream's base to the gateway's. A link outside
    /// the upstream's base is dropped (it could only lead around the gateway).
    pub(super) fn rewrite(&self, v: &mut Value) -> bool {
        let Some(links) = v.get_mut("link").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = links.len();
        let mut changed = false;
        links.retain_mut(|l| {
            let Some(url) = l.get("url").and_then(Value::as_str) else {
                return false;
            };
            if self.at_gateway(url) {
                return true;
            }
            // Path and query after the authority (absolute), or the URL itself (relative).
            let path = match url.split_once("://") {
                Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
                None => url,
            };
            let Some(rest) = path.strip_prefix(self.upstream_path.as_str()) else {
                return false;
            };
            if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
                return false;
            }
            l["url"] = Value::from(format!("{}{rest}", self.gateway));
            changed = true;
            true
        });
        changed || links.len() != before
    }
}

/// What to verify in the batch response for one request entry.
pub(super) enum EntryCheck {
    None,
    Result {
        patient: String,
        bundle: bool,
        hide: bool,
    },
}

/// Check the results of read/search entries inside a batch/transaction response. A read of
/// another patient's resource becomes the entry a missing resource gets; search results are
/// filtered like any search.
pub(super) async fn check_batch_response(
    a: &FhirAuthz,
    resp: Response<Body>,
    checks: &[EntryCheck],
    grants: &[Option<Grants<'_>>],
    mode: ScopeMode,
) -> Result<Response<Body>, Rejection> {
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    if !resp.status().is_success() {
        return Ok(resp);
    }
    let (mut parts, _, mut v) = match json_answer(a, resp).await {
        Ok(x) => x,
        Err(Some(r)) => return Err(r),
        Err(None) => return Err(unverifiable()),
    };
    let entries = v
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .ok_or_else(unverifiable)?;
    if entries.len() != checks.len() || entries.len() != grants.len() {
        return Err(unverifiable());
    }
    let not_found = || serde_json::json!({"response": {"status": "404 Not Found"}});
    let forbidden = || serde_json::json!({"response": {"status": "403 Forbidden"}});
    for ((e, c), g) in entries.iter_mut().zip(checks).zip(grants) {
        // The scopes first, for every entry with a result: what a read or search entry
        // answered must be of granted types.
        if let (Some(g), Some(r)) = (g, e.get_mut("resource")) {
            if g.filter(r, mode == ScopeMode::Refuse).is_err() {
                if mode == ScopeMode::Refuse {
                    return Err(scope_refused());
                }
                *e = forbidden();
                continue;
            }
        }
        let EntryCheck::Result {
            patient,
            bundle,
            hide,
        } = c
        else {
            continue;
        };
        let Some(r) = e.get_mut("resource") else {
            continue;
        };
        let is_bundle = r.get("resourceType").and_then(Value::as_str) == Some("Bundle");
        if *hide && is_bundle {
            if filter_bundle(r, patient, BundleMode::Fail).is_err() {
                *e = not_found();
            }
        } else if *bundle || is_bundle {
            filter_bundle(r, patient, a.cfg.bundle_mode)?;
        } else if !in_patient_compartment(r, patient) {
            *e = not_found();
        }
    }
    let out = Bytes::from(v.to_string());
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    parts.headers.remove(ETAG);
    Ok(Response::from_parts(parts, full(out)))
}

/// Keep only entries of this patient (OperationOutcome entries of a search stay). Returns
/// whether the Bundle changed.
pub(super) fn filter_bundle(v: &mut Value, pid: &str, mode: BundleMode) -> Result<bool, Rejection> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        ));
    }
    let Some(entries) = v.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(false);
    };
    let before = entries.len();
    let keep = |e: &Value| match e.get("resource") {
        Some(r) if r.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") => {
            true
        }
        Some(r) => in_patient_compartment(r, pid),
        // History entries of deletions carry no resource: nothing to leak.
        None => e.get("request").is_some(),
    };
    if mode == BundleMode::Fail && !entries.iter().all(keep) {
        return Err(denied(
            "patient_mismatch",
            "the response contains another patient's data",
        ));
    }
    // `total` counts matches only (FHIR R4 3.1.1.4.2): removed includes do not lower it.
    let is_match = |e: &Value| {
        !matches!(
            e.get("search")
                .and_then(|s| s.get("mode"))
                .and_then(Value::as_str),
            Some("include" | "outcome")
        )
    };
    let removed_matches = entries.iter().filter(|e| !keep(e) && is_match(e)).count();
    entries.retain(keep);
    let removed = before - entries.len();
    if removed_matches > 0 {
        if let Some(t) = v.get_mut("total").and_then(|t| t.as_u64().map(|n| (t, n))) {
            *t.0 = Value::from(t.1.saturating_sub(removed_matches as u64));
        }
    }
    Ok(removed > 0)
}
