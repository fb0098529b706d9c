//! The request side of `fhir_authz`: reading the request (body included, when the
//! decision needs it), deciding, rewriting it for the upstream, and calling on.

use super::*;

pub(super) fn authorize<S>(
    a: Arc<FhirAuthz>,
    f: Arc<FhirRequest>,
    claims: Arc<Claims>,
    req: Request<Body>,
    inner: S,
) -> PolicyFuture
where
    S: Chain,
{
    Box::pin(authorize_inner(a, f, claims, req, inner))
}

pub(super) async fn authorize_inner<S>(
    a: Arc<FhirAuthz>,
    f: Arc<FhirRequest>,
    claims: Arc<Claims>,
    req: Request<Body>,
    inner: S,
) -> Result<Response<Body>, Rejection>
where
    S: Chain,
{
    let f_shared = f.clone();
    let f = &*f;
    let claims = &*claims;
    // A launch-context patient that names nobody (`""`, `" "`, a number, a list) is refused
    // outright: read as "no patient context" it would let broad scopes pass unconfined,
    // and as an id it would be a compartment nobody owns.
    match claims.raw.get(&a.cfg.patient_claim) {
        None => {}
        Some(Value::String(p)) if !is_blank(p) => {}
        Some(_) => return Err(claim_invalid()),
    }
    a.scope_levels(claims)?;
    if super::bulk::is_bulk(f) {
        return super::bulk::handle(a.clone(), f, claims, req, inner).await;
    }
    let (mut parts, mut body) = req.into_parts();
    let mut params = f.params.clone();
    let max = a.cfg.max_buffer_bytes;
    // `POST _search`: the form body's parameters count exactly like the query's.
    let mut body_bytes: Option<Bytes> = None;
    let mut batch_checks: Vec<EntryCheck> = Vec::new();
    let mut batch_scopes: Vec<EntryScope> = Vec::new();
    // Where the client reached this route: the bases of local references, and (below)
    // where a Bundle's paging links are pointed back to.
    let links = LinkBase::from_parts(&parts);
    let bases = a.bases(links.as_ref());
    // The token's scopes, parsed once for every decision on this request.
    let scopes = scopes::parse_all(claims.scopes.iter().map(String::as_str));
    let form_search = parts.method == http::Method::POST
        && matches!(
            f.interaction,
            Interaction::SearchType | Interaction::SearchCompartment | Interaction::SearchSystem
        );
    if form_search {
        let b = read_limited(
            std::mem::replace(&mut body, crate::empty_body()),
            max.min(1024 * 1024),
        )
        .await
        .map_err(|_| Rejection::body_too_large())?;
        let text = std::str::from_utf8(&b)
            .map_err(|_| Rejection::bad_request("fhir_bad_query", "malformed search parameters"))?;
        params.extend(parse_params(text).map_err(Rejection::from)?);
        body_bytes = Some(Bytes::new());
        // All parameters travel in the query from here on.
    } else if f.interaction == Interaction::BatchOrTransaction {
        let b = read_limited(std::mem::replace(&mut body, crate::empty_body()), max)
            .await
            .map_err(|_| Rejection::body_too_large())?;
        let (rewritten, checks, scopes) = a.authorize_bundle(&b, claims, &bases)?;
        batch_checks = checks;
        batch_scopes = scopes;
        body_bytes = Some(rewritten.unwrap_or(b));
    } else if matches!(
        f.interaction,
        Interaction::Create | Interaction::Update | Interaction::Patch
    ) {
        body_bytes = Some(
            read_limited(std::mem::replace(&mut body, crate::empty_body()), max)
                .await
                .map_err(|_| Rejection::body_too_large())?,
        );
    }
    let break_glass = a.break_glass(f, claims, &parts)?;
    let plan = a.decide(
        f,
        claims,
        &scopes,
        &mut params,
        break_glass.is_some(),
        &bases,
    )?;
    if let Some(reason) = break_glass {
        let route = parts
            .extensions
            .get::<crate::context::RouteId>()
            .map(|r| r.0.name.clone())
            .unwrap_or_default();
        let slot = parts
            .extensions
            .get::<crate::respond::RespondSlot>()
            .cloned();
        a.charge_break_glass(claims, &route, slot.as_ref()).await?;
        a.metrics.break_glass.with_label_values(&[&route]).inc();
        tracing::warn!(target: "ward::respond", route = %route, resource_type = f.resource_type.unwrap_or("*"), "break-glass access");
        if let Some(slot) = parts.extensions.get::<crate::context::AuditSlot>() {
            slot.set_break_glass(&reason);
        }
        if let Some(slot) = parts.extensions.get::<crate::respond::RespondSlot>() {
            slot.break_glass(&route, f.resource_type.unwrap_or("*"));
        }
    }
    let patient_ctx = claims
        .raw
        .get(&a.cfg.patient_claim)
        .and_then(Value::as_str)
        .is_some();
    if parts.headers.contains_key("if-none-exist") {
        // A conditional create searches (and may answer with the match): in patient
        // context it would search across all patients; elsewhere the token must be allowed
        // to search and read that type, or the header is a search/read oracle.
        let t = f.resource_type.unwrap_or("");
        let may = |p: Perm| Grants::new(&scopes, p, f.resource_type, &[]).allows(t, false);
        if patient_ctx || !(may(Perm::Search) && may(Perm::Read)) {
            return Err(denied(
                "conditional_denied",
                "a conditional create needs search and read access to the type (and is not allowed in patient context)",
            ));
        }
    }
    // Patient-context writes: the body must name this patient and match the URL.
    if let (Some(b), Some(pid)) = (
        &body_bytes,
        claims.raw.get(&a.cfg.patient_claim).and_then(Value::as_str),
    ) {
        if patient_scoped(claims, f) {
            match f.interaction {
                Interaction::Create | Interaction::Update => {
                    let mut v = strict_body(b)?;
                    // Local absolute references made relative: forward what was checked.
                    // (Only then re-serialised: serde_json would drop a decimal's
                    // trailing zeros, which FHIR counts as precision.)
                    if check_write(f, &mut v, pid, &bases, &UrnTargets::new())? {
                        body_bytes = Some(Bytes::from(v.to_string()));
                    }
                }
                Interaction::Patch => check_patch(f, &parts.headers, b, pid, &bases)?,
                _ => {}
            }
        }
    }
    // What the scopes let this token receive: `None` when every type is granted (or the
    // interaction returns no resources of the server's choosing).
    let scoped_perm = response_perm(f.interaction)
        .filter(|p| !Grants::new(&scopes, *p, f.resource_type, &params).universal());
    let batch_scoped = batch_scopes.iter().any(|e| {
        e.perm
            .is_some_and(|p| !Grants::new(&scopes, p, e.resource_type, &e.params).universal())
    });
    if (scoped_perm.is_some() || batch_scoped)
        && f.format.as_deref().is_some_and(|fmt| !fmt.contains("json"))
    {
        return Err(denied(
            "format_denied",
            "only JSON answers can be checked against this token's scopes",
        ));
    }
    // Every answer that carries resources is read (duplicate member names refused, scopes
    // applied); writes answer with what the client sent.
    let reads_answer =
        response_perm(f.interaction).is_some() || f.interaction == Interaction::BatchOrTransaction;
    // Rebuild the URI when parameters changed (added restriction, capped `_count`, form).
    if params != f.params || form_search {
        let q = encode_params(&params);
        // A form search is forwarded as the equivalent GET: the checked parameters are then
        // exactly the ones the upstream sees, in one place.
        let path = if form_search {
            parts
                .uri
                .path()
                .strip_suffix("/_search")
                .map(|p| if p.is_empty() { "/" } else { p })
                .unwrap_or(parts.uri.path())
                .to_owned()
        } else {
            parts.uri.path().to_owned()
        };
        let pq = if q.is_empty() {
            path
        } else {
            format!("{path}?{q}")
        };
        let pq = PathAndQuery::try_from(pq).map_err(|_| Rejection::internal())?;
        parts.uri = Uri::from(pq);
        if form_search {
            parts.method = http::Method::GET;
            parts.headers.remove(CONTENT_TYPE);
            parts.headers.remove(CONTENT_LENGTH);
        }
    }
    let check_batch = f.interaction == Interaction::BatchOrTransaction;
    let checked =
        matches!(plan, Plan::CheckResponse { .. }) || check_batch || scoped_perm.is_some();
    if checked {
        if parts.method == http::Method::HEAD {
            // No body, nothing to check: a HEAD would tell existence apart. (`stack.rs` turns
            // HEAD into GET above this policy; this keeps the policy closed on its own.)
            return Err(Rejection::method_not_allowed());
        }
        // The answer has to be read to be checked: identity-encoded JSON, complete (no
        // 304 from conditional headers), and no lenient handling of our restriction.
        for h in [
            ACCEPT_ENCODING,
            http::header::IF_NONE_MATCH,
            http::header::IF_MODIFIED_SINCE,
            http::header::HeaderName::from_static("prefer"),
        ] {
            parts.headers.remove(h);
        }
        parts.headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
    } else if reads_answer {
        // Only read for duplicate member names: identity encoding is enough.
        parts.headers.remove(ACCEPT_ENCODING);
    }
    if let Plan::PreRead { patient } = &plan {
        let etag = pre_read(&parts, inner.clone(), patient).await?;
        // Pin the write to the version that was checked (no change in between).
        if let (Some(tag), false) = (etag, parts.headers.contains_key(http::header::IF_MATCH)) {
            parts.headers.insert(http::header::IF_MATCH, tag);
        }
    }
    let body = match body_bytes {
        Some(b) => {
            // The body may have been rewritten: its length is the gateway's to state.
            if b.is_empty() {
                parts.headers.remove(CONTENT_LENGTH);
            } else {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
            }
            full(b)
        }
        None => body,
    };
    // The answer is checked on the upstream's own bytes: by `AnswerGuard`, below DLP and
    // validation (before any redaction, and sharing the index DLP then reuses); here only
    // if no layer below took the check (then on what came back up).
    let check = AnswerPlan {
        a,
        f: f_shared,
        scopes,
        params,
        batch_scopes,
        batch_checks,
        check_batch,
        scoped_perm,
        plan,
        reads_answer,
        links,
    }
    .into_check();
    parts.extensions.insert(check.clone());
    let req = Request::from_parts(parts, body);
    let resp = crate::service::call_next(inner, req).await?;
    check.apply(resp).await
}

/// Everything the answer check needs, owned (it runs after this request's handler has
/// moved on). Not generic: one copy of the check, whatever stack the policy sits in.
struct AnswerPlan {
    a: Arc<FhirAuthz>,
    f: Arc<FhirRequest>,
    scopes: Vec<Scope>,
    params: Vec<SearchParam>,
    batch_scopes: Vec<EntryScope>,
    batch_checks: Vec<EntryCheck>,
    check_batch: bool,
    scoped_perm: Option<Perm>,
    plan: Plan,
    reads_answer: bool,
    links: Option<LinkBase>,
}

impl AnswerPlan {
    fn into_check(self) -> AnswerCheck {
        AnswerCheck::new(Box::new(move |resp: Response<Body>| {
            Box::pin(self.run(resp))
        }))
    }

    async fn run(self, resp: Response<Body>) -> Result<Response<Body>, Rejection> {
        let a = &*self.a;
        let scopes = &self.scopes;
        let scope_mode = a.cfg.response_scope_mode;
        if self.check_batch {
            let grants: Vec<Option<Grants>> = self
                .batch_scopes
                .iter()
                .map(|e| {
                    e.perm
                        .map(|p| Grants::new(scopes, p, e.resource_type, &e.params))
                        .filter(|g| !g.universal())
                })
                .collect();
            return check_batch_response(a, resp, &self.batch_checks, &grants, scope_mode).await;
        }
        let grants = self
            .scoped_perm
            .map(|p| Grants::new(scopes, p, self.f.resource_type, &self.params));
        match &self.plan {
            Plan::Pass | Plan::PreRead { .. } if self.reads_answer => {
                check_scoped(a, resp, grants.as_ref(), scope_mode).await
            }
            Plan::Pass | Plan::PreRead { .. } => Ok(resp),
            Plan::CheckResponse {
                patient,
                bundle,
                hide,
            } => {
                let scope = grants.as_ref().map(|g| (g, scope_mode));
                let links = self.links.as_ref();
                check_response(a, resp, patient, *bundle, *hide, links, scope).await
            }
        }
    }
}

/// Read the target of a patient-context delete/patch through the same route (same
/// upstream, same gateway headers) and allow the change only if it is the patient's.
pub(super) async fn pre_read<S>(
    parts: &http::request::Parts,
    inner: S,
    pid: &str,
) -> Result<Option<HeaderValue>, Rejection>
where
    S: Chain,
{
    let unverifiable = || {
        Rejection::new(
            StatusCode::BAD_GATEWAY,
            "response_unverifiable",
            "the upstream's answer could not be checked",
        )
    };
    let mut get = Request::new(crate::empty_body());
    *get.method_mut() = http::Method::GET;
    *get.uri_mut() =
        Uri::from(PathAndQuery::try_from(parts.uri.path()).map_err(|_| Rejection::internal())?);
    *get.headers_mut() = parts.headers.clone();
    for h in [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        ACCEPT_ENCODING,
        http::header::IF_MATCH,
        http::header::IF_NONE_MATCH,
        http::header::IF_MODIFIED_SINCE,
        http::header::HeaderName::from_static("prefer"),
    ] {
        get.headers_mut().remove(h);
    }
    get.headers_mut().insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/fhir+json"),
    );
    copy_extensions(parts, get.extensions_mut());
    let resp = crate::service::call_next(inner, get).await?;
    if resp.status() == StatusCode::NOT_FOUND || resp.status() == StatusCode::GONE {
        return Err(hidden());
    }
    if !resp.status().is_success() {
        return Err(unverifiable());
    }
    let etag = resp.headers().get(ETAG).cloned();
    let bytes = read_limited(resp.into_body(), 8 * 1024 * 1024).await?;
    // Read from the token stream (no tree); a body not read there is asked why.
    let owned = match crate::fhir::answer::read(&bytes) {
        Ok(a) => a.owned_by(pid),
        Err(_) => match strict_json::from_slice(&bytes) {
            Ok(v) => owned_by(&v, pid),
            Err(StrictError::Duplicate) => return Err(duplicate_members()),
            Err(StrictError::Malformed) => return Err(unverifiable()),
        },
    };
    if owned {
        Ok(etag)
    } else {
        Err(hidden())
    }
}

/// The typed extensions the proxy step needs, copied onto a request the policy makes.
pub(super) fn copy_extensions(from: &http::request::Parts, to: &mut http::Extensions) {
    if let Some(c) = from.extensions.get::<crate::context::RequestContext>() {
        to.insert(c.clone());
    }
    if let Some(r) = from.extensions.get::<crate::context::RouteId>() {
        to.insert(r.clone());
    }
    if let Some(h) = from.extensions.get::<crate::context::UpstreamHeaders>() {
        to.insert(h.clone());
    }
}
