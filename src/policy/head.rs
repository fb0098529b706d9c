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

use std::task::{Context, Poll};

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Request, Response};
use http_body::Body as _;

use crate::error::Rejection;
use crate::service::PolicyFuture;
use crate::Body;

#[derive(Debug, Clone, Copy, Default)]
pub struct HeadAsGetLayer;

impl<S> tower::Layer<S> for HeadAsGetLayer {
    type Service = HeadAsGet<S>;
    fn layer(&self, inner: S) -> HeadAsGet<S> {
        HeadAsGet { inner }
    }
}

#[derive(Debug, Clone)]
pub struct HeadAsGet<S> {
    inner: S,
}

impl<S> tower::Service<Request<Body>> for HeadAsGet<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = PolicyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> PolicyFuture {
        if req.method() != Method::HEAD {
            return Box::pin(self.inner.call(req));
        }
        *req.method_mut() = Method::GET;
        req.extensions_mut().insert(crate::context::WasHead);
        // Boxed first: see `policy::call_next` on why the inner future's type is erased.
        let fut: PolicyFuture = Box::pin(self.inner.call(req));
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
