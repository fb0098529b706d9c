//! `limits` policy: request body size and body deadline for a route.
//!
//! A declared `Content-Length` over the limit is refused before the upstream is contacted.
//! A chunked body is streamed and counted: the moment it passes the limit (or the deadline)
//! the upstream request is aborted mid-body — the upstream never receives a complete
//! request — and the client gets 413 (or 408). Bodies are never buffered here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Sleep;

use serde::Deserialize;

use crate::config::primitives::{Dur, ListenerLimits};
use crate::policy::{Build, Chain, FromConfig, Next, Policy, PolicyFuture};
use crate::{Body, BoxError};

/// The `limits:` section of a policy file: tightens the listener's limits for the routes
/// that name the policy (a route's effective limits are the tightest of all).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsPolicyConfig {
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub body_timeout: Option<Dur>,
}

/// Effective limits of one route: the listener's, tightened by its policies.
#[derive(Debug, Clone, Copy)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
}

impl LimitsConfig {
    /// The listener's limits tightened by every `limits:` section of the route's policies.
    pub fn tightened<'a>(
        listener: &ListenerLimits,
        sections: impl IntoIterator<Item = &'a LimitsPolicyConfig>,
    ) -> Self {
        let mut l = LimitsConfig {
            max_body_bytes: listener.max_body_bytes,
            body_timeout: listener.body_timeout.0,
        };
        for pl in sections {
            if let Some(m) = pl.max_body_bytes {
                l.max_body_bytes = l.max_body_bytes.min(m);
            }
            if let Some(t) = pl.body_timeout {
                l.body_timeout = l.body_timeout.min(t.0);
            }
        }
        l
    }
}

pub use crate::error::LimitError;

/// The compiled policy: the route's effective limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    cfg: LimitsConfig,
}

impl FromConfig for Limits {
    type Config = LimitsConfig;
    fn from_config(cfg: &LimitsConfig, _: &mut Build<'_>) -> Result<Self, String> {
        Ok(Limits { cfg: *cfg })
    }
}

impl Policy for Limits {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        let cfg = self.cfg;
        if let Some(cl) = req.body().size_hint().exact() {
            if cl > cfg.max_body_bytes {
                return Box::pin(std::future::ready(Err(LimitError::TooLarge.into())));
            }
        }
        let req = if req.body().is_end_stream() {
            req
        } else {
            req.map(|b| LimitedBody::new(b, cfg).boxed_unsync())
        };
        next.run(req)
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
