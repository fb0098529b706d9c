//! Admin listener: `/healthz` (process alive), `/readyz` (config loaded, every upstream's
//! last probe up, not draining), `/metrics` (Prometheus text). Plain HTTP on its own bind,
//! loopback by default, and never shared with a public listener (checked at load).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::proxy::{Health, Upstream};
use crate::Body;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Swapped by a config reload.
    pub upstreams: arc_swap::ArcSwap<Vec<Arc<Upstream>>>,
    pub shutdown: watch::Receiver<bool>,
}

pub async fn serve(tcp: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => break,
            acc = tcp.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(respond(&state, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

fn respond(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            r#"{"error":{"code":"method_not_allowed"}}"#.into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        "/readyz" => {
            let draining = *state.shutdown.borrow();
            let upstreams = state.upstreams.load();
            let ups: serde_json::Map<String, serde_json::Value> = upstreams
                .iter()
                .map(|u| {
                    let h = match u.health() {
                        Health::Up => "up",
                        Health::Down => "down",
                        Health::Unknown => "unknown",
                    };
                    (u.name.to_string(), serde_json::Value::from(h))
                })
                .collect();
            let ready = !draining && upstreams.iter().all(|u| u.health() == Health::Up);
            let body = serde_json::json!({
                "status": if ready { "ready" } else if draining { "draining" } else { "not_ready" },
                "config": "loaded",
                "upstreams": ups,
            });
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "application/json", body.to_string())
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"not_found"}}"#.into(),
        ),
    }
}
