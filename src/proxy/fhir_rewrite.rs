//! The proxy's FHIR step: what a FHIR route's upstream says about its own address is
//! pointed at the gateway before any policy (or client) sees the answer, and SMART
//! discovery is answered. Called from `ProxyService::call` (innermost, so audit, rate limits
//! and DLP above see exactly what the client gets).
//!
//! - Headers (`Location`, `Content-Location`, `Link`) on every answer: see
//!   `fhir::base_url` for the fates of a URL.
//! - JSON bodies (any status: error outcomes name hosts too) are read up to a bound (and
//!   decoded if the upstream compressed them although identity was asked for); only
//!   when the bytes may name an upstream host (`BaseSet::may_occur`, one aho-corasick pass)
//!   are they read and the members where a server writes its address rewritten — on the
//!   JSON token stream, in place (`fhir::base_url_json`): every other byte stays the
//!   upstream's, and nothing is copied when nothing changes (discovery documents are
//!   rewritten on a tree). A body that may name the host but cannot be parsed fails closed
//!   (502), never passes as it came.
//! - `metadata`: the CapabilityStatement's `rest.security` becomes the route's `discovery`
//!   section; `.well-known/smart-configuration` is answered from it (or fetched from the
//!   upstream, every URL string rewritten).
//!
//! A HEAD that reaches this step (routes without DLP or `fhir_authz` pass HEAD through)
//! gets its headers rewritten and, for JSON, no `Content-Length`. XML bodies are not
//! rewritten (documented in the README).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_TYPE,
    ETAG, LINK, LOCATION,
};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::context::{RequestContext, RouteId};
use crate::error::Rejection;
use crate::fhir::base_url::{Base, BaseSet, Fate};
use crate::fhir::discovery::{DiscoveryConfig, SmartSource};
use crate::fhir::request::{FhirRequest, Interaction};
use crate::fhir::strict_json::StrictError;
use crate::Body;

/// Floor of the response bound: a route's request limit is often far below the size of a
/// search page.
const MIN_BUFFER: usize = 16 * 1024 * 1024;
const MAX_BUFFER: usize = 256 * 1024 * 1024;

pub struct FhirRewrite {
    bases: BaseSet,
    discovery: Option<DiscoveryConfig>,
    /// The configured smart-configuration document (`smart_configuration: config`).
    smart_doc: Option<Bytes>,
    max_bytes: usize,
}

/// What [`FhirRewrite::before`] decided.
pub enum Before {
    /// Call the upstream; its answer goes through [`Pending::after`].
    Forward(Pending),
    /// Answered by the gateway (a configured smart-configuration).
    Answer(Response<Body>),
}

/// One request's view: what to do with its answer.
pub struct Pending {
    rw: Arc<FhirRewrite>,
    public: String,
    interaction: Option<Interaction>,
    head: bool,
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed_unsync()
}

fn unverifiable() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "response_unverifiable",
        "the upstream's answer could not be checked",
    )
}

impl FhirRewrite {
    /// `upstream_bases`: the route's upstream base (`scheme://authority` + its upstream
    /// path) and configured aliases; `limit`: the route's body limit.
    pub fn new(
        upstream_bases: &[String],
        discovery: Option<&DiscoveryConfig>,
        limit: u64,
    ) -> Result<FhirRewrite, String> {
        let bases = upstream_bases
            .iter()
            .map(|u| Base::parse(u).map_err(|e| format!("{u}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(d) = discovery {
            if let Some((k, m)) = d.problems().into_iter().next() {
                return Err(format!("discovery.{k}: {m}"));
            }
        }
        let smart_doc = discovery
            .filter(|d| d.smart_configuration == SmartSource::Config)
            .map(DiscoveryConfig::document);
        Ok(FhirRewrite {
            bases: BaseSet::new(bases)?,
            discovery: discovery.cloned(),
            smart_doc,
            max_bytes: usize::try_from(limit)
                .unwrap_or(MAX_BUFFER)
                .clamp(MIN_BUFFER, MAX_BUFFER),
        })
    }

    /// Before the upstream is called (headers already sanitised): a configured
    /// smart-configuration is answered here; otherwise the upstream is asked for an
    /// identity-encoded answer, which can be read.
    pub fn before(
        self: &Arc<Self>,
        req: &mut Request<Body>,
        ctx: &RequestContext,
        route: &RouteId,
    ) -> Before {
        let interaction = req
            .extensions()
            .get::<Arc<FhirRequest>>()
            .map(|f| f.interaction);
        if interaction == Some(Interaction::SmartConfiguration) {
            if let Some(doc) = &self.smart_doc {
                // A HEAD gets the GET's headers and no body (HTTP/2 would reset a stream
                // that carried one).
                let body = if req.method() == http::Method::HEAD {
                    crate::empty_body()
                } else {
                    full(doc.clone())
                };
                let mut resp = Response::new(body);
                let h = resp.headers_mut();
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                h.insert(CONTENT_LENGTH, HeaderValue::from(doc.len()));
                return Before::Answer(resp);
            }
        }
        req.headers_mut()
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        Before::Forward(Pending {
            rw: self.clone(),
            public: route.0.public_base(ctx),
            interaction,
            head: req.method() == http::Method::HEAD,
        })
    }
}

impl Pending {
    pub async fn after(self, resp: Response<Body>) -> Result<Response<Body>, Rejection> {
        let rw = &*self.rw;
        let (mut parts, body) = resp.into_parts();
        rw.headers(&mut parts.headers, &self.public);
        let ct = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        // NDJSON (bulk-export files) is no one document and may be gigabytes: it
        // streams through (policies that read it do so line by line).
        let json = ct
            .as_deref()
            .is_some_and(|v| v.contains("json") && !v.contains("ndjson"));
        // XML (`_format=xml`) and other text: no structure to walk, but the same URLs and
        // host names, rewritten and masked as in an OperationOutcome's text.
        let text = !json
            && ct
                .as_deref()
                .is_some_and(|v| v.contains("xml") || v.starts_with("text/"));
        if !json && !text {
            return Ok(Response::from_parts(parts, body));
        }
        if self.head {
            // A HEAD reached the upstream (no body-reading policy on the route turned it
            // into a GET): the length of the body the GET would get after rewriting is not
            // known, and RFC 9110 lets a HEAD answer omit it rather than state a wrong one.
            parts.headers.remove(CONTENT_LENGTH);
            return Ok(Response::from_parts(parts, body));
        }
        let bytes = read_limited(body, rw.max_bytes).await?;
        // Identity was asked for; an upstream that compresses anyway is read decoded (and
        // passed on as it came when nothing needs to change).
        let decoded = match crate::body::decode(
            parts.headers.get_all(CONTENT_ENCODING),
            &bytes,
            rw.max_bytes,
        ) {
            Ok(d) => d,
            Err(true) => return Err(too_large()),
            Err(false) => return Err(unverifiable()),
        };
        let plain: &[u8] = decoded.as_deref().unwrap_or(&bytes);
        let capability = self.interaction == Some(Interaction::Capabilities)
            && rw.discovery.as_ref().is_some_and(|d| d.capability_security);
        if plain.is_empty() || (!capability && !rw.bases.may_occur(plain)) {
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        if text {
            // Not UTF-8: it may name the upstream's host and cannot be rewritten.
            let Ok(t) = std::str::from_utf8(plain) else {
                return Err(unverifiable());
            };
            let out = match rw.bases.text(t, &self.public) {
                Some(new) => {
                    parts.headers.remove(ETAG);
                    parts.headers.remove(CONTENT_ENCODING);
                    Bytes::from(new)
                }
                None => bytes,
            };
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
            return Ok(Response::from_parts(parts, full(out)));
        }
        let out = match rw.json_body(plain, &self.public, self.interaction)? {
            Some(new) => {
                parts.headers.remove(ETAG);
                parts.headers.remove(CONTENT_ENCODING);
                Bytes::from(new)
            }
            None => bytes,
        };
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
        Ok(Response::from_parts(parts, full(out)))
    }
}

impl FhirRewrite {
    /// A JSON answer's bytes (decoded) on a FHIR route: `Ok(None)` when nothing names the
    /// upstream's address, else the rewritten document. Public for benches.
    #[doc(hidden)]
    pub fn json_body(
        &self,
        plain: &[u8],
        public: &str,
        interaction: Option<Interaction>,
    ) -> Result<Option<Vec<u8>>, Rejection> {
        let capability = interaction == Some(Interaction::Capabilities)
            && self
                .discovery
                .as_ref()
                .is_some_and(|d| d.capability_security);
        // Resources and Bundles (every read and search): the URL-bearing strings are
        // replaced in place on the token stream, every other byte stays the upstream's.
        // Discovery documents (rare, small) are rewritten on a tree; so is a body the token
        // reading refuses, so that `strict_json` says why.
        if !capability && interaction != Some(Interaction::SmartConfiguration) {
            if let Ok(out) = crate::fhir::base_url_json::rewrite(&self.bases, plain, public) {
                return Ok(out);
            }
        }
        self.json_tree(plain, public, interaction, capability)
    }

    /// [`FhirRewrite::json_body`] on a `serde_json::Value` tree (output compact, members
    /// sorted). Public for benches (the rewrite before issue #20).
    #[doc(hidden)]
    pub fn json_tree(
        &self,
        plain: &[u8],
        public: &str,
        interaction: Option<Interaction>,
        capability: bool,
    ) -> Result<Option<Vec<u8>>, Rejection> {
        let mut v = match crate::fhir::strict_json::from_slice(plain) {
            Ok(v) => v,
            // Ambiguous (a repeated member name): refused with the code DLP and the
            // compartment guard give the same body, one signal for one cause.
            Err(StrictError::Duplicate) => {
                return Err(Rejection::new(
                    StatusCode::BAD_GATEWAY,
                    "dlp_unscannable",
                    "the upstream response could not be checked",
                ))
            }
            // Not JSON after all: it may name the upstream's host and cannot be rewritten.
            Err(StrictError::Malformed) => return Err(unverifiable()),
        };
        let mut changed = false;
        if capability {
            if let Some(d) = &self.discovery {
                changed |= d.rewrite_capability(&mut v);
            }
        }
        changed |= if interaction == Some(Interaction::SmartConfiguration) {
            self.bases.all_urls(&mut v, public)
        } else {
            self.bases.json(&mut v, public)
        };
        Ok(changed.then(|| v.to_string().into_bytes()))
    }

    fn headers(&self, h: &mut HeaderMap, public: &str) {
        for name in [LOCATION, CONTENT_LOCATION] {
            let values: Vec<HeaderValue> = h.get_all(&name).iter().cloned().collect();
            if values.is_empty() {
                continue;
            }
            let mut out = Vec::new();
            let mut changed = false;
            for v in values {
                // A value that is not text cannot be judged; it goes.
                let Ok(s) = v.to_str() else {
                    changed = true;
                    continue;
                };
                match self.bases.url(s, public) {
                    Fate::Keep => out.push(v),
                    Fate::Replace(n) => {
                        changed = true;
                        if let Ok(n) = HeaderValue::from_str(&n) {
                            out.push(n);
                        }
                    }
                    Fate::Drop => changed = true,
                }
            }
            if changed {
                h.remove(&name);
                for v in out {
                    h.append(&name, v);
                }
            }
        }
        let links: Vec<HeaderValue> = h.get_all(LINK).iter().cloned().collect();
        if !links.is_empty() {
            let mut out = Vec::new();
            let mut changed = false;
            for v in links {
                let Ok(s) = v.to_str() else {
                    changed = true;
                    continue;
                };
                match self.bases.link_header(s, public) {
                    None => out.push(v),
                    Some(n) => {
                        changed = true;
                        if !n.is_empty() {
                            if let Ok(n) = HeaderValue::from_str(&n) {
                                out.push(n);
                            }
                        }
                    }
                }
            }
            if changed {
                h.remove(LINK);
                for v in out {
                    h.append(LINK, v);
                }
            }
        }
    }
}

fn too_large() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "response_too_large",
        "response too large to check",
    )
}

async fn read_limited(body: Body, max: usize) -> Result<Bytes, Rejection> {
    match crate::body::gather(body, max).await {
        Ok(crate::body::Gathered::Whole(b)) => Ok(b),
        Ok(crate::body::Gathered::Over { .. }) => Err(too_large()),
        Err(_) => Err(Rejection::upstream_error()),
    }
}
