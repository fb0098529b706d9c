//! HEAD on routes that read what comes back: answered as the GET would be, without the body.
//!
//! A response-reading policy (DLP on responses, the compartment guard, scope filtering) decides
//! on the body: redacts it, refuses it, rewrites it. A HEAD has no body to decide on, so
//! passing it through would hand the client the upstream's unfiltered headers — the
//! `Content-Length` and `ETag` of the unredacted record, or a 200 that tells a forbidden
//! record exists. This adapter (no config of its own: `stack.rs` puts it on every route with
//! `dlp` or `fhir_authz`, above them) sends the request on as a GET, lets every policy below
//! treat it exactly as a GET, and returns the resulting status and headers with an empty body.
//! The upstream body is read (the policies need it) and dropped here.
//!
//! Outer layers (audit, metrics, rate limits) still see a HEAD.

use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body as _;

use crate::policy::{Chain, Next, Policy, PolicyFuture};
use crate::Body;

#[derive(Debug, Clone, Copy, Default)]
pub struct HeadAsGet;

impl Policy for HeadAsGet {
    fn call<S: Chain>(self: &Arc<Self>, mut req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        if req.method() != Method::HEAD {
            return next.run(req);
        }
        *req.method_mut() = Method::GET;
        req.extensions_mut().insert(crate::context::WasHead);
        let fut = next.run(req);
        Box::pin(async move {
            let resp = fut.await?;
            let (mut parts, body) = resp.into_parts();
            // The length the GET's body would have been sent with.
            if !parts.headers.contains_key(CONTENT_LENGTH) {
                if let Some(n) = body.size_hint().exact() {
                    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
                }
            }
            drop(body);
            Ok(Response::from_parts(parts, crate::empty_body()))
        })
    }
}
