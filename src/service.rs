//! Tower plumbing every layer shares (policies, detect-and-respond, the adapters): the
//! [`Policy`] trait with its one generic Layer/Service, the boxed future type, and the
//! helpers that hand a request on. A leaf.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

pub type BytesFuture =
    Pin<Box<dyn Future<Output = Result<bytes::Bytes, Rejection>> + Send + 'static>>;

/// Read a client's request body whole, up to `max` bytes, for a policy that must see all
/// of it. A body past `max` is 413; the `limits` policy's own refusals (size, deadline)
/// keep their codes; any other body error is the client's (400, connection closed).
pub fn read_request_body(body: Body, max: usize) -> BytesFuture {
    use http_body_util::BodyExt;
    Box::pin(async move {
        let mut body = body;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
                while let Some(err) = cur {
                    if let Some(le) = err.downcast_ref::<crate::error::LimitError>() {
                        return Rejection::from(*le);
                    }
                    cur = err.source();
                }
                Rejection::bad_request("client_body_error", "the request body could not be read")
                    .closing()
            })?;
            if let Ok(d) = frame.into_data() {
                if buf.len() + d.len() > max {
                    return Err(Rejection::body_too_large());
                }
                buf.extend_from_slice(&d);
            }
        }
        Ok(buf.freeze())
    })
}

/// Any service a policy can hand a request on to: the rest of a route's chain. Every
/// layer below a policy is one (policies, adapters, the proxy), so a policy is written
/// once against this bound instead of repeating tower's where-clauses.
pub trait Chain:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Rejection,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Chain for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Rejection,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The rest of the chain, lent to a policy for one request. Hand the request on now with
/// [`Next::run`] (no clone: the ready service is called in place), or keep the chain for
/// after an `.await` with [`Next::later`]. Dropping it refuses nothing by itself: the
/// policy returns its rejection.
pub struct Next<'a, S> {
    inner: &'a mut S,
}

impl<S: Chain> Next<'_, S> {
    /// Call the rest of the chain with `req` now.
    pub fn run(self, req: Request<Body>) -> PolicyFuture {
        Box::pin(self.inner.call(req))
    }

    /// Take the ready service for a call after an `.await`, leaving a fresh clone in its
    /// place (tower's clone-and-swap: the clone may not be ready, the taken one is).
    pub fn later(self) -> Later<S> {
        let fresh = self.inner.clone();
        Later(std::mem::replace(self.inner, fresh))
    }
}

/// The rest of the chain, owned by a policy's future (see [`Next::later`]).
pub struct Later<S>(S);

impl<S: Chain> Later<S> {
    pub fn run(self, req: Request<Body>) -> PolicyFuture {
        call_next(self.0, req)
    }

    /// The service itself, for a policy that calls it more than once (a pre-read, then
    /// the request) by cloning it.
    pub fn into_inner(self) -> S {
        self.0
    }
}

/// One route policy (or adapter): a checked, immutable object built once from its config,
/// that decides on each request. It either refuses (returns a [`crate::error::Rejection`]
/// without calling `next`) or hands the request on, possibly changed, and may look at or
/// rewrite what comes back. [`PolicyLayer`] makes any policy a tower layer, so the
/// Layer/Service boilerplate is written once, here.
pub trait Policy: Send + Sync + 'static {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture;
}

/// The tower layer of a policy: shares one compiled policy among every service it makes.
pub struct PolicyLayer<P>(Arc<P>);

impl<P> PolicyLayer<P> {
    pub fn new(policy: P) -> Self {
        PolicyLayer(Arc::new(policy))
    }

    pub fn policy(&self) -> &Arc<P> {
        &self.0
    }
}

impl<P> Clone for PolicyLayer<P> {
    fn clone(&self) -> Self {
        PolicyLayer(self.0.clone())
    }
}

impl<P, S> tower::Layer<S> for PolicyLayer<P> {
    type Service = PolicyService<P, S>;
    fn layer(&self, inner: S) -> PolicyService<P, S> {
        PolicyService {
            policy: self.0.clone(),
            inner,
        }
    }
}

/// A policy in front of the rest of its chain.
pub struct PolicyService<P, S> {
    policy: Arc<P>,
    inner: S,
}

impl<P, S: Clone> Clone for PolicyService<P, S> {
    fn clone(&self) -> Self {
        PolicyService {
            policy: self.policy.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<P: Policy, S: Chain> tower::Service<Request<Body>> for PolicyService<P, S> {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = PolicyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> PolicyFuture {
        self.policy.call(
            req,
            Next {
                inner: &mut self.inner,
            },
        )
    }
}
