//! Tower plumbing every layer shares (policies, detect-and-respond, the HEAD adapter): the
//! boxed future type and the helper that erases an inner service's future. A leaf.

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
