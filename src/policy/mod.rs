//! Route policies: one file per policy, each `Config → Layer → Service`, composed in
//! `stack.rs`. This release ships `limits`; identity, rate limits, authentication,
//! FHIR authorization, validation and DLP plug in at their reserved places in the stack.

pub mod auth;
pub mod fhir_authz;
pub mod limits;
pub mod mtls;
pub mod rate_limit;

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};

use crate::error::Rejection;
use crate::Body;

pub type PolicyFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send + 'static>>;

/// Call the next service and erase its future's type. Policies that await before calling
/// on need this: with the `dyn Error` inside the body type, rustc cannot prove the inner
/// future `Send` for every lifetime when it is named inside an `async` block.
pub fn call_next<S>(mut inner: S, req: Request<Body>) -> PolicyFuture
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>,
    S::Future: Send + 'static,
{
    Box::pin(inner.call(req))
}
