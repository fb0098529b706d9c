//! A panic anywhere below becomes a logged `500 internal_error`, never a dropped connection.
//!
//! Without this, a policy that panics (a bug: no policy should, and none is known to) tears
//! down the request's task: hyper resets the stream or closes the connection, the client gets
//! no answer, and — worse for an auditor — the audit layer above never records the request.
//! `stack.rs` puts this adapter (no config of its own) directly inside the audit layer on
//! every route, so the request is answered with the one error body every refusal uses and
//! its audit record says `500 internal_error`.
//!
//! The panic message is not logged here (it may quote request data); the process's panic
//! hook has already printed it to stderr.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::error::Rejection;
use crate::policy::{Chain, Next, Policy, PolicyFuture};
use crate::Body;

#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanic;

fn panicked() -> Rejection {
    tracing::error!(
        target: "ward::panic",
        "a request handler panicked; answered 500 internal_error"
    );
    Rejection::internal()
}

impl Policy for CatchPanic {
    fn call<S: Chain>(self: &Arc<Self>, req: Request<Body>, next: Next<'_, S>) -> PolicyFuture {
        // The synchronous part of a policy's `call` may panic as well as its future.
        match catch_unwind(AssertUnwindSafe(|| next.run(req))) {
            Ok(inner) => Box::pin(Caught { inner: Some(inner) }),
            Err(_) => Box::pin(std::future::ready(Err(panicked()))),
        }
    }
}

/// Polls the inner future inside `catch_unwind`; after a panic the future is dropped and
/// never polled again.
struct Caught {
    inner: Option<PolicyFuture>,
}

impl Future for Caught {
    type Output = Result<Response<Body>, Rejection>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.inner.as_mut() else {
            return Poll::Ready(Err(Rejection::internal()));
        };
        match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(r)) => {
                self.inner = None;
                Poll::Ready(r)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                self.inner = None;
                Poll::Ready(Err(panicked()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyLayer;
    use tower::{Layer, ServiceExt};

    fn req() -> Request<Body> {
        Request::get("/x").body(crate::empty_body()).unwrap()
    }

    #[tokio::test]
    async fn panics_in_call_and_in_the_future_become_500() {
        // Panics inside `call` itself.
        let sync = tower::service_fn(
            |_r: Request<Body>| -> std::future::Ready<Result<Response<Body>, Rejection>> {
                panic!("policy bug")
            },
        );
        let e = PolicyLayer::new(CatchPanic)
            .layer(sync)
            .oneshot(req())
            .await
            .unwrap_err();
        assert_eq!(e.code, "internal_error");
        // Panics while the future is polled, after an await point.
        let later = tower::service_fn(|_r: Request<Body>| async {
            tokio::task::yield_now().await;
            if true {
                panic!("policy bug");
            }
            Ok::<Response<Body>, Rejection>(Response::new(crate::empty_body()))
        });
        let e = PolicyLayer::new(CatchPanic)
            .layer(later)
            .oneshot(req())
            .await
            .unwrap_err();
        assert_eq!(e.code, "internal_error");
        // No panic: the answer passes through untouched.
        let fine = tower::service_fn(|_r: Request<Body>| async {
            Ok::<_, Rejection>(Response::new(crate::empty_body()))
        });
        let r = PolicyLayer::new(CatchPanic)
            .layer(fine)
            .oneshot(req())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    #[tokio::test]
    async fn a_panic_is_recorded_by_the_audit_layer_above() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: crate::audit::AuditConfig = serde_json::from_value(serde_json::json!({
            "path": "audit.jsonl", "durability": "fsync"
        }))
        .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let log = crate::audit::AuditLog::start(&cfg, &|f| dir.path().join(f), &metrics).unwrap();
        let panicking = tower::service_fn(|_r: Request<Body>| async {
            tokio::task::yield_now().await;
            if true {
                panic!("policy bug");
            }
            Ok::<Response<Body>, Rejection>(Response::new(crate::empty_body()))
        });
        let svc = PolicyLayer::new(crate::policy::audit::Audit::new(log.clone()))
            .layer(PolicyLayer::new(CatchPanic).layer(panicking));
        let e = svc.oneshot(req()).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 500);
        log.flush().await;
        let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().expect("a record")).unwrap();
        assert_eq!(last["status"], 500, "{last}");
        assert_eq!(last["code"], "internal_error", "{last}");
        assert_eq!(last["decision"], "error", "{last}");
    }
}
