//! Admin listener: `/healthz` (process alive), `/readyz` (config loaded, every upstream's
//! last probe up, not draining), `/metrics` (Prometheus text), and with `respond:` the
//! block API (`GET`/`POST`/`DELETE /blocks`), which always needs an operator token —
//! never open, whatever the bind. Plain HTTP on its own bind, loopback by default, and
//! never shared with a public listener (checked at load).

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
    /// Detect and respond (the block API), when configured.
    pub respond: Option<Arc<crate::respond::Respond>>,
}

pub async fn serve(tcp: TcpListener, state: Arc<AdminState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut shutdown) => break,
            acc = tcp.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            if req.uri().path() == "/blocks" {
                                return Ok::<_, Infallible>(blocks_api(&state, req).await);
                            }
                            Ok::<_, Infallible>(respond(&state, req))
                        }
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

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    reply(status, "application/json", body.to_string())
}

/// `GET`/`POST`/`DELETE /blocks`, for an authenticated operator only.
async fn blocks_api(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let Some(r) = &state.respond else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no `respond:` section configured",
        );
    };
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "operator_auth_required",
            "an operator token is required",
        );
    };
    let Some(operator) = r.operator(token).map(str::to_owned) else {
        tracing::warn!(target: "ward::respond", "block API call with an unknown operator token");
        return error(
            StatusCode::FORBIDDEN,
            "operator_denied",
            "unknown operator token",
        );
    };
    let method = req.method().clone();
    let body = match http_body_util::Limited::new(req.into_body(), 16 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_block", "unreadable body"),
    };
    match method {
        Method::GET => {
            let body = serde_json::json!({"blocks": r.list_blocks()});
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        Method::POST => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct New {
                target: crate::respond::blocks::BlockTarget,
                reason: String,
                ttl_secs: u64,
            }
            let n: New = match serde_json::from_slice(&body) {
                Ok(n) => n,
                Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_block", &e.to_string()),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            let block = crate::respond::blocks::Block {
                target: n.target,
                reason: n.reason,
                expires_at: now.saturating_add(n.ttl_secs.saturating_mul(1000)),
                created_at: now,
                created_by: operator.clone(),
                id: format!("op-{}", uuid::Uuid::new_v4().simple()),
            };
            match r.add_block(block).await {
                Ok(b) => {
                    tracing::warn!(target: "ward::respond", operator = %operator, target = ?b.target, "block added");
                    r.notify(serde_json::json!({"event": "block_added", "operator": operator, "target": b.target, "until": b.expires_at})).await;
                    reply(
                        StatusCode::CREATED,
                        "application/json",
                        serde_json::json!({"block": b}).to_string(),
                    )
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "invalid_block", &e),
            }
        }
        Method::DELETE => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Del {
                target: crate::respond::blocks::BlockTarget,
            }
            let d: Del = match serde_json::from_slice(&body) {
                Ok(d) => d,
                Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_block", &e.to_string()),
            };
            match r.remove_block(&d.target).await {
                Ok(removed) => {
                    tracing::warn!(target: "ward::respond", operator = %operator, target = ?d.target, removed, "block removed");
                    if removed {
                        r.notify(serde_json::json!({"event": "block_removed", "operator": operator, "target": d.target})).await;
                    }
                    reply(
                        StatusCode::OK,
                        "application/json",
                        serde_json::json!({"removed": removed}).to_string(),
                    )
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &e),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET, POST or DELETE",
        ),
    }
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
