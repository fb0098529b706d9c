//! `limits` policy: request body size and body deadline for a route.
//!
//! A declared `Content-Length` over the limit is refused before the upstream is contacted.
//! A chunked body is streamed and counted: the moment it passes the limit (or the deadline)
//! the upstream request is aborted mid-body — the upstream never receives a complete
//! request — and the client gets 413 (or 408). Bodies are never buffered here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Sleep;

use crate::error::Rejection;
use crate::{Body, BoxError};

/// Effective limits of one route: the listener's, tightened by its policies.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
}

pub use crate::error::LimitError;

#[derive(Debug, Clone, Copy)]
pub struct LimitsLayer {
    cfg: LimitsConfig,
}

impl From<LimitsConfig> for LimitsLayer {
    fn from(cfg: LimitsConfig) -> Self {
        LimitsLayer { cfg }
    }
}

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;
    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            cfg: self.cfg,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
    cfg: LimitsConfig,
}

impl<S> tower::Service<Request<Body>> for Limits<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Rejection>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let cfg = self.cfg;
        if let Some(cl) = req.body().size_hint().exact() {
            if cl > cfg.max_body_bytes {
                return Box::pin(async { Err(LimitError::TooLarge.into()) });
            }
        }
        let req = if req.body().is_end_stream() {
            req
        } else {
            req.map(|b| LimitedBody::new(b, cfg).boxed_unsync())
        };
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}

pub struct LimitedBody {
    inner: Body,
    remaining: u64,
    deadline: Pin<Box<Sleep>>,
}

impl LimitedBody {
    pub fn new(inner: Body, cfg: LimitsConfig) -> Self {
        LimitedBody {
            inner,
            remaining: cfg.max_body_bytes,
            deadline: Box::pin(tokio::time::sleep(cfg.body_timeout)),
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    if n > this.remaining {
                        return Poll::Ready(Some(Err(Box::new(LimitError::TooLarge))));
                    }
                    this.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(LimitError::Timeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::collections::VecDeque;

    fn cfg(max: u64) -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: max,
            body_timeout: Duration::from_secs(30),
        }
    }

    /// A body that yields the given chunks with no declared length (like chunked input).
    struct Chunks(VecDeque<Bytes>);
    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn counts_streamed_bytes() {
        let body = Chunks(VecDeque::from(vec![
            Bytes::from_static(b"12345"),
            Bytes::from_static(b"678"),
        ]))
        .boxed_unsync();
        let err = LimitedBody::new(body, cfg(6)).collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<LimitError>(),
            Some(&LimitError::TooLarge)
        );
        let ok = LimitedBody::new(
            Full::new(Bytes::from_static(b"123456"))
                .map_err(|n| match n {})
                .boxed_unsync(),
            cfg(6),
        );
        assert_eq!(ok.collect().await.unwrap().to_bytes().len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_fires_on_a_stalled_body() {
        struct Stall;
        impl HttpBody for Stall {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Pending
            }
        }
        let err = LimitedBody::new(Stall.boxed_unsync(), cfg(10))
            .collect()
            .await
            .unwrap_err();
        assert_eq!(err.downcast_ref::<LimitError>(), Some(&LimitError::Timeout));
    }
}
