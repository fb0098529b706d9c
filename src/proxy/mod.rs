//! Forwarding to upstreams: one pooled hyper-util client per upstream (http or https with
//! a private CA and optional client certificate), streaming bodies both ways.
//!
//! Failure mapping: cannot connect → 502 `upstream_unavailable`; no response head within
//! `response_timeout` → 504 `upstream_timeout`; anything else before the head → 502
//! `upstream_error`. After the head, an upstream failure (reset, stall) is passed to the
//! client as an aborted body: hyper then closes the connection (HTTP/1) or resets the
//! stream (HTTP/2), so a truncated body can never look complete.
//!
//! Retries (once, on a fresh unpooled connection, within the same `response_timeout`):
//! a request that never reached the upstream (connect failure, or hyper gave it back
//! unsent because its pooled connection had closed), and an idempotent request (GET,
//! HEAD, OPTIONS, PUT, DELETE, TRACE) whose connection closed before any answer — an
//! upstream closing an idle keep-alive connection just as the pool hands it out. A POST or
//! PATCH that may have reached the upstream is never sent twice. Only a request whose
//! body is already in memory (empty, or buffered by a policy) can be re-sent: a streaming
//! body is never buffered for the sake of a retry. Idle pooled connections are closed
//! after `pool_idle_timeout` (default 4 s), below common upstream keep-alive timeouts, so
//! the race is rare to begin with. (A refused connect is thus tried twice per request;
//! both attempts share one `response_timeout`.)
//!
//! Failures are logged once per outage episode (`outage.rs`), not once per request.

pub mod fhir_rewrite;
pub mod headers;
pub mod outage;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::config::primitives::UpstreamConfig;
use crate::context::{ConnectionAbort, RequestContext, RouteId, UpstreamHeaders};
use crate::error::LimitError;
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::{Body, BoxError};
use outage::{OutageTracker, Transition};

/// Scheme and authority of an upstream, parsed from its `url`.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub https: bool,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `authority` as the upstream's `Host` header, made once.
    pub host: HeaderValue,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("scheme must be http or https".into()),
        };
        let authority = uri.authority().cloned().ok_or("URL has no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not allowed (use ${VAR} headers policies instead)"
                    .into(),
            );
        }
        if authority.host().is_empty() {
            return Err("URL has no host".into());
        }
        match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => {}
            Some(_) => {
                return Err(
                    "URL must not have a path or query; use the route's rewrite_prefix".into(),
                )
            }
        }
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| "URL has no host")?;
        Ok(UpstreamTarget {
            https,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            host,
        })
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Last health probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub target: UpstreamTarget,
    client: HttpClient,
    /// Keeps no idle connections: every request gets a new one. For retries only.
    fresh: HttpClient,
    response_timeout: Duration,
    pub cfg: UpstreamConfig,
    health: AtomicU8,
    // Metric children resolved once: label lookups hash on every call.
    duration: prometheus::Histogram,
    body_errors: IntCounter,
    /// Load shedding (`max_concurrent_requests`).
    concurrency: Option<Concurrency>,
    retried_unsent: IntCounter,
    retried_closed: IntCounter,
    outage: OutageTracker,
    outages: IntCounter,
    outage_open: prometheus::IntGauge,
}

struct Concurrency {
    permits: Arc<Semaphore>,
    shed: IntCounter,
    inflight: prometheus::IntGauge,
    stalls: IntCounter,
    send_timeout: Duration,
}

/// Held from sending a request until its response body ends or is dropped (the client
/// went away). A client that stops reading (a full TCP window, an HTTP/2 stream with a
/// closed window) is bounded by the upstream's `send_timeout`: a watchdog frees the slot
/// when the body has handed the client a frame (or the response head) and not been asked
/// for the next one for that long: an HTTP/1 connection is closed at once
/// (`ConnectionAbort`), and the body is aborted (HTTP/2 stream reset) the next time the
/// server touches it. Waiting for the upstream is not the client's fault and does not
/// count (`response_timeout` and the body's idle limit cover a stalled upstream).
struct InflightPermit {
    _release: tokio::sync::oneshot::Sender<()>,
    progress: Arc<Progress>,
}

/// What the watchdog knows of a response body.
struct Progress {
    base: tokio::time::Instant,
    /// Milliseconds after `base` when the body last handed the client a frame (the
    /// client's turn), or `UPSTREAMS_TURN` while it waits for the upstream.
    handed_at: AtomicU64,
    stalled: AtomicBool,
    /// The server's waker, woken through this: when the upstream has more, it is the
    /// server's turn to take it (a server that cannot write to its client does not).
    waker: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for Progress {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.handed_at.compare_exchange(
            UPSTREAMS_TURN,
            self.ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let w = self.waker.lock().ok().and_then(|w| w.clone());
        if let Some(w) = w {
            w.wake();
        }
    }
}

const UPSTREAMS_TURN: u64 = u64::MAX;

impl Progress {
    fn ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
    fn clients_turn(&self) {
        self.handed_at.store(self.ms(), Ordering::Relaxed);
    }
    fn upstreams_turn(&self) {
        self.handed_at.store(UPSTREAMS_TURN, Ordering::Relaxed);
    }
}

impl InflightPermit {
    fn new(permit: OwnedSemaphorePermit, c: &Concurrency, abort: Option<ConnectionAbort>) -> Self {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let gauge = c.inflight.clone();
        let stalls = c.stalls.clone();
        let limit = c.send_timeout;
        let progress = Arc::new(Progress {
            base: tokio::time::Instant::now(),
            // Waiting for the response head is the upstream's turn (`response_timeout`
            // bounds it); `send` hands the turn over with the head.
            handed_at: AtomicU64::new(UPSTREAMS_TURN),
            stalled: AtomicBool::new(false),
            waker: std::sync::Mutex::new(None),
        });
        gauge.inc();
        let watched = progress.clone();
        tokio::spawn(async move {
            loop {
                let at = watched.handed_at.load(Ordering::Relaxed);
                let deadline = if at == UPSTREAMS_TURN {
                    tokio::time::Instant::now() + limit
                } else {
                    watched.base + Duration::from_millis(at) + limit
                };
                tokio::select! {
                    // Released (body ended or dropped): the sender is gone.
                    _ = &mut rx => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        let now = watched.handed_at.load(Ordering::Relaxed);
                        if now != UPSTREAMS_TURN
                            && watched.ms().saturating_sub(now) >= limit.as_millis() as u64
                        {
                            watched.stalled.store(true, Ordering::Relaxed);
                            stalls.inc();
                            // HTTP/1: close the connection now. HTTP/2: the stream is
                            // reset when the server next polls the body.
                            if let Some(ConnectionAbort(a)) = &abort {
                                a.notify_one();
                            }
                            break;
                        }
                    }
                }
            }
            drop(permit);
            gauge.dec();
        });
        InflightPermit {
            _release: tx,
            progress,
        }
    }
}

pub fn upstream_overloaded() -> Rejection {
    Rejection::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "upstream_overloaded",
        "the upstream service is at its concurrency limit; retry later",
    )
    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

impl Upstream {
    /// `resolve` turns a configured file name into a path (relative to the config's folder).
    pub fn new(
        cfg: &UpstreamConfig,
        resolve: &dyn Fn(&str) -> std::path::PathBuf,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let target = UpstreamTarget::parse(&cfg.url)?;
        let tls = if target.https {
            let ca = cfg.ca.as_ref().ok_or("https upstream without `ca`")?;
            let client_pair = match (&cfg.client_cert, &cfg.client_key) {
                (Some(c), Some(k)) => Some((resolve(c), resolve(k))),
                _ => None,
            };
            crate::tls::upstream_client_config(
                &resolve(ca),
                client_pair
                    .as_ref()
                    .map(|(c, k)| (c.as_path(), k.as_path())),
            )?
        } else {
            // Never used for http:// targets; the connector still wants a config.
            rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout.0));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if target.https {
            builder
                .https_only()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        } else {
            builder.https_or_http().enable_http1().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.pool_idle_timeout.0)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector.clone());
        let fresh = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            name: Arc::from(cfg.name.as_str()),
            target,
            client,
            fresh,
            response_timeout: cfg.response_timeout.0,
            cfg: cfg.clone(),
            health: AtomicU8::new(Health::Unknown as u8),
            duration: metrics.upstream_duration.with_label_values(&[&cfg.name]),
            body_errors: metrics
                .upstream_errors
                .with_label_values(&[&cfg.name, "body"]),
            concurrency: cfg.max_concurrent_requests.map(|n| Concurrency {
                permits: Arc::new(Semaphore::new(n)),
                shed: metrics.upstream_shed.with_label_values(&[&cfg.name]),
                inflight: metrics.upstream_inflight.with_label_values(&[&cfg.name]),
                stalls: metrics
                    .upstream_client_stalls
                    .with_label_values(&[&cfg.name]),
                send_timeout: cfg.send_timeout.0,
            }),
            retried_unsent: metrics
                .upstream_retries
                .with_label_values(&[&cfg.name, "not_sent"]),
            retried_closed: metrics
                .upstream_retries
                .with_label_values(&[&cfg.name, "closed"]),
            outage: OutageTracker::default(),
            outages: metrics.upstream_outages.with_label_values(&[&cfg.name]),
            outage_open: metrics.upstream_outage.with_label_values(&[&cfg.name]),
        })
    }

    /// Start from another upstream's last known health (the same upstream, rebuilt by a
    /// config reload).
    pub fn inherit_health(&self, old: &Upstream) {
        self.health
            .store(old.health.load(Ordering::Acquire), Ordering::Release);
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Unknown,
        }
    }

    /// One health probe: GET `health.path` (status < 500 = up) or a TCP connect.
    pub async fn probe(&self, metrics: &Metrics) -> bool {
        let timeout = self.cfg.health.timeout.0;
        let ok = match &self.cfg.health.path {
            Some(path) => {
                let uri = Uri::builder()
                    .scheme(self.target.scheme.clone())
                    .authority(self.target.authority.clone())
                    .path_and_query(path.as_str())
                    .build();
                match uri {
                    Ok(uri) => {
                        let mut req = Request::new(crate::empty_body());
                        *req.uri_mut() = uri;
                        matches!(
                            tokio::time::timeout(timeout, self.client.request(req)).await,
                            Ok(Ok(resp)) if resp.status().as_u16() < 500
                        )
                    }
                    Err(_) => false,
                }
            }
            None => {
                let host = self
                    .target
                    .authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = self
                    .target
                    .authority
                    .port_u16()
                    .unwrap_or(if self.target.https { 443 } else { 80 });
                matches!(
                    tokio::time::timeout(
                        timeout,
                        tokio::net::TcpStream::connect((host.as_str(), port))
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        };
        self.health.store(
            if ok { Health::Up } else { Health::Down } as u8,
            Ordering::Release,
        );
        metrics
            .upstream_up
            .with_label_values(&[&self.name])
            .set(i64::from(ok));
        ok
    }

    /// Send `req` (already sanitised, URI pointing at the upstream), retrying once when
    /// that is safe (see the module header).
    async fn send(
        &self,
        req: Request<Body>,
        abort: Option<ConnectionAbort>,
        metrics: &Metrics,
    ) -> Result<Response<Body>, Rejection> {
        let permit = match &self.concurrency {
            Some(c) => match c.permits.clone().try_acquire_owned() {
                Ok(p) => Some(InflightPermit::new(p, c, abort)),
                Err(_) => {
                    c.shed.inc();
                    return Err(upstream_overloaded());
                }
            },
            None => None,
        };
        let started = Instant::now();
        // One budget for the first attempt and any retry.
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let (parts, body) = req.into_parts();
        let result = match replayable(body) {
            ReqBody::Known(bytes) => {
                let first = Request::from_parts(parts.clone(), known_body(&bytes));
                match self.attempt(&self.client, first, deadline).await {
                    Err(AttemptError::Client(e)) => match retry_reason(&parts.method, &e) {
                        Some(reason) => {
                            match reason {
                                RetryReason::NotSent => self.retried_unsent.inc(),
                                RetryReason::Closed => self.retried_closed.inc(),
                            }
                            tracing::debug!(upstream = %self.name, ?reason, error = %error_chain(&e), "retrying on a fresh connection");
                            let again = Request::from_parts(parts, known_body(&bytes));
                            self.attempt(&self.fresh, again, deadline).await
                        }
                        None => Err(AttemptError::Client(e)),
                    },
                    other => other,
                }
            }
            ReqBody::Streaming(body) => {
                self.attempt(&self.client, Request::from_parts(parts, body), deadline)
                    .await
            }
        };
        self.duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(resp) => {
                if let Some(p) = &permit {
                    p.progress.clients_turn();
                }
                if let Transition::Ended { failed, lasted } = self.outage.success(Instant::now()) {
                    self.outage_open.set(0);
                    tracing::warn!(
                        upstream = %self.name,
                        failed_requests = failed,
                        duration_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX),
                        "upstream outage ended"
                    );
                }
                let body_errors = self.body_errors.clone();
                let idle = self.response_timeout;
                Ok(resp.map(|b| {
                    UpstreamBody::new(b.map_err(BoxError::from), idle, body_errors, permit)
                        .boxed_unsync()
                }))
            }
            Err(AttemptError::Timeout) => {
                metrics
                    .upstream_errors
                    .with_label_values(&[&self.name, "timeout"])
                    .inc();
                self.failed("timeout", &"no response head within response_timeout");
                Err(Rejection::upstream_timeout())
            }
            Err(AttemptError::Client(e)) => {
                if let Some(le) = find_source::<LimitError>(&e) {
                    return Err((*le).into());
                }
                if find_source::<ClientBodyError>(&e).is_some() {
                    return Err(Rejection::bad_request(
                        "client_body_error",
                        "the request body could not be read",
                    )
                    .closing());
                }
                let kind = if e.is_connect() {
                    "connect"
                } else {
                    "protocol"
                };
                metrics
                    .upstream_errors
                    .with_label_values(&[&self.name, kind])
                    .inc();
                self.failed(kind, &error_chain(&e));
                Err(if e.is_connect() {
                    Rejection::upstream_unavailable()
                } else {
                    Rejection::upstream_error()
                })
            }
        }
    }

    /// A failed request: one WARN line when it starts an outage episode, none after.
    fn failed(&self, kind: &str, error: &dyn std::fmt::Display) {
        if self.outage.failure(Instant::now()) == Transition::Started {
            self.outages.inc();
            self.outage_open.set(1);
            tracing::warn!(upstream = %self.name, kind, error = %error, "upstream outage started: requests failing (one line per episode; counts in ward_upstream_errors_total)");
        } else {
            tracing::debug!(upstream = %self.name, kind, error = %error, "upstream request failed");
        }
    }

    async fn attempt(
        &self,
        client: &HttpClient,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<hyper::body::Incoming>, AttemptError> {
        match tokio::time::timeout_at(deadline, client.request(req)).await {
            Err(_) => Err(AttemptError::Timeout),
            Ok(Err(e)) => Err(AttemptError::Client(e)),
            Ok(Ok(r)) => Ok(r),
        }
    }
}

/// A request body as the proxy sees it: fully in memory (re-sendable), or streaming.
enum ReqBody {
    Known(Bytes),
    Streaming(Body),
}

/// Frames a buffered body yields at once before it counts as streaming. A policy that
/// buffered the body gives one frame; an empty body none.
const KNOWN_MAX_FRAMES: usize = 4;

/// Take the body's frames that are ready right now, without waiting: a body that ends
/// within them is known (empty, or buffered by a policy); anything else stays a stream,
/// its first frames put back in front. Nothing is awaited and nothing is read that was
/// not already in memory, so a streaming upload is never held back for a retry.
fn replayable(mut body: Body) -> ReqBody {
    if body.is_end_stream() {
        return ReqBody::Known(Bytes::new());
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut got: Vec<Bytes> = Vec::new();
    let mut next: Option<Result<Frame<Bytes>, BoxError>> = None;
    for _ in 0..KNOWN_MAX_FRAMES {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => return ReqBody::Known(concat(got)),
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) => got.push(d),
                Err(f) => {
                    next = Some(Ok(f));
                    break;
                }
            },
            Poll::Ready(Some(Err(e))) => {
                next = Some(Err(e));
                break;
            }
            Poll::Pending => break,
        }
        if body.is_end_stream() {
            return ReqBody::Known(concat(got));
        }
    }
    let mut front: std::collections::VecDeque<Result<Frame<Bytes>, BoxError>> =
        got.into_iter().map(|d| Ok(Frame::data(d))).collect();
    front.extend(next);
    if front.is_empty() {
        return ReqBody::Streaming(body);
    }
    ReqBody::Streaming(crate::body::prefixed(front, body))
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => {
            let mut b = bytes::BytesMut::new();
            for p in parts {
                b.extend_from_slice(&p);
            }
            b.freeze()
        }
    }
}

fn known_body(b: &Bytes) -> Body {
    if b.is_empty() {
        crate::empty_body()
    } else {
        http_body_util::Full::new(b.clone())
            .map_err(|n| match n {})
            .boxed_unsync()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryReason {
    /// The request was never written: connect failed, or hyper handed it back.
    NotSent,
    /// An idempotent request lost its connection before any answer.
    Closed,
}

fn idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(m)
}

/// Whether a failed first attempt may be sent again (its body is known to be replayable).
fn retry_reason(
    method: &http::Method,
    e: &hyper_util::client::legacy::Error,
) -> Option<RetryReason> {
    // The client's own failures are not the connection's.
    if find_source::<LimitError>(e).is_some() || find_source::<ClientBodyError>(e).is_some() {
        return None;
    }
    let h = find_source::<hyper::Error>(e);
    if e.is_connect() || h.is_some_and(hyper::Error::is_canceled) {
        return Some(RetryReason::NotSent);
    }
    if !idempotent(method) {
        return None;
    }
    let closed = h.is_some_and(|h| h.is_incomplete_message() || h.is_closed())
        || find_source::<std::io::Error>(e).is_some_and(|io| {
            use std::io::ErrorKind::*;
            matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            )
        });
    closed.then_some(RetryReason::Closed)
}

/// The client's request body failed (client reset, framing error mid-body): the client's
/// fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(#[source] pub hyper::Error);

enum AttemptError {
    Timeout,
    Client(hyper_util::client::legacy::Error),
}

fn find_source<'a, E: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// Error chain for logs (operator-facing only, never sent to clients).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// The innermost service of every route stack.
#[derive(Clone)]
pub struct ProxyService {
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    policy_headers: Arc<[http::HeaderName]>,
    /// FHIR routes: base-URL rewriting and SMART discovery (`fhir_rewrite.rs`).
    fhir: Option<Arc<fhir_rewrite::FhirRewrite>>,
}

impl ProxyService {
    pub fn with_fhir_rewrite(mut self, fhir: Option<Arc<fhir_rewrite::FhirRewrite>>) -> Self {
        self.fhir = fhir;
        self
    }

    pub fn new(
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        policy_headers: Arc<[http::HeaderName]>,
    ) -> Self {
        ProxyService {
            upstream,
            metrics,
            policy_headers,
            fhir: None,
        }
    }
}

impl tower::Service<Request<Body>> for ProxyService {
    type Response = Response<Body>;
    type Error = Rejection;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Rejection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let upstream = self.upstream.clone();
        let metrics = self.metrics.clone();
        let owned_headers = self.policy_headers.clone();
        let fhir = self.fhir.clone();
        Box::pin(async move {
            // Taken, not cloned: the upstream request carries no extensions anyway.
            let ctx = req
                .extensions_mut()
                .remove::<RequestContext>()
                .ok_or_else(Rejection::internal)?;
            let route = req
                .extensions_mut()
                .remove::<RouteId>()
                .ok_or_else(Rejection::internal)?;
            let uri = upstream_uri(&upstream.target, req.uri(), &route)?;
            *req.uri_mut() = uri;
            let policy_headers = req.extensions_mut().remove::<UpstreamHeaders>();
            let abort = req.extensions_mut().remove::<ConnectionAbort>();
            let h = req.headers_mut();
            let kept = headers::sanitize_request(h, ctx.trusted_peer);
            headers::set_forwarding(h, &ctx, kept);
            // Headers any policy sets are the gateway's on every route.
            for name in owned_headers.iter() {
                h.remove(name);
            }
            // Policy-set headers: every client copy goes, then the gateway's value.
            if let Some(UpstreamHeaders(set)) = policy_headers {
                for (name, _) in &set {
                    h.remove(name);
                }
                for (name, value) in set {
                    if let Some(v) = value {
                        h.append(name, v);
                    }
                }
            }
            // The upstream sees its own name as Host; the client's is in X-Forwarded-Host.
            h.insert(http::header::HOST, upstream.target.host.clone());
            // Client trailers are not sanitised headers: never forward them (an h2 upstream
            // would receive them verbatim).
            if !req.body().is_end_stream() {
                req = req.map(|b| {
                    b.map_frame(|f| {
                        if f.is_trailers() {
                            Frame::data(Bytes::new())
                        } else {
                            f
                        }
                    })
                    .boxed_unsync()
                });
            }
            // Let the client pool pick the upstream's protocol (ALPN), independent of the
            // client's.
            *req.version_mut() = http::Version::HTTP_11;
            let fhir = match fhir.map(|f| f.before(&mut req, &ctx, &route)) {
                Some(fhir_rewrite::Before::Answer(local)) => return Ok(local),
                Some(fhir_rewrite::Before::Forward(pending)) => Some(pending),
                None => None,
            };
            req.extensions_mut().clear();
            let mut resp = upstream.send(req, abort, &metrics).await?;
            headers::sanitize_response(resp.headers_mut());
            match fhir {
                Some(pending) => pending.after(resp).await,
                None => Ok(resp),
            }
        })
    }
}

/// Replace the route prefix by `rewrite_prefix` and point at the upstream.
fn upstream_uri(t: &UpstreamTarget, uri: &Uri, route: &RouteId) -> Result<Uri, Rejection> {
    let path = uri.path();
    let r = &route.0;
    let new_path = match &r.rewrite_prefix {
        Some(rw) if r.path_prefix != "/" || rw != "/" => {
            let rest = path.strip_prefix(r.path_prefix.as_str()).unwrap_or(path);
            let rest = if r.path_prefix == "/" { path } else { rest };
            let mut p = if rw == "/" { String::new() } else { rw.clone() };
            p.push_str(rest);
            if p.is_empty() {
                p.push('/');
            }
            p
        }
        _ => path.to_owned(),
    };
    let pq = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let pq = PathAndQuery::try_from(pq).map_err(|_| Rejection::internal())?;
    Uri::builder()
        .scheme(t.scheme.clone())
        .authority(t.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Rejection::internal())
}

/// Upstream response body with an idle limit between frames, so a stalled upstream cannot
/// hold a client connection forever.
pub struct UpstreamBody<B> {
    inner: B,
    idle: Duration,
    /// Armed only once the body actually has to wait: small responses usually arrive
    /// with their head and never touch the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    errors: IntCounter,
    /// The upstream's concurrency slot, released when the body ends or is dropped.
    permit: Option<InflightPermit>,
}

impl<B> UpstreamBody<B> {
    fn new(inner: B, idle: Duration, errors: IntCounter, permit: Option<InflightPermit>) -> Self {
        UpstreamBody {
            inner,
            idle,
            timer: None,
            errors,
            permit,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream body stalled")]
struct Stalled;

#[derive(Debug, thiserror::Error)]
#[error("client took no bytes for send_timeout")]
struct ClientStalled;

impl<B> HttpBody for UpstreamBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &this.permit {
            Some(p) => {
                if p.progress.stalled.load(Ordering::Relaxed) {
                    // The slot is gone already; the server closes the connection / resets
                    // the stream on this error.
                    this.permit = None;
                    return Poll::Ready(Some(Err(Box::new(ClientStalled))));
                }
                if let Ok(mut w) = p.progress.waker.lock() {
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                }
                // Set before polling: a wake that races with this poll then still marks
                // the server's turn.
                p.progress.upstreams_turn();
                let waker = std::task::Waker::from(p.progress.clone());
                Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(&waker))
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = this.timer.as_mut() {
                    t.as_mut().reset(tokio::time::Instant::now() + this.idle);
                }
                if let Some(p) = &this.permit {
                    p.progress.clients_turn();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.errors.inc();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                // The upstream is done with this request even if the client is slow to
                // let go of the body.
                this.permit = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                match this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)))
                    .as_mut()
                    .poll(cx)
                {
                    Poll::Ready(()) => {
                        this.errors.inc();
                        Poll::Ready(Some(Err(Box::new(Stalled))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
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
    use crate::context::RouteInfo;

    fn route(prefix: &str, rw: Option<&str>) -> RouteId {
        RouteId(Arc::new(RouteInfo {
            name: Arc::from("r"),
            fhir: false,
            path_prefix: prefix.into(),
            rewrite_prefix: rw.map(Into::into),
            upstream: Arc::from("u"),
            public_url: None,
        }))
    }

    async fn collect(b: Body) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn bodies_in_memory_are_known_and_streams_are_kept_whole() {
        // Empty and buffered (one frame, as policies rebuild them) are known.
        assert!(matches!(replayable(crate::empty_body()), ReqBody::Known(b) if b.is_empty()));
        for size in [1usize, 100, 70_000, 3 << 20] {
            let data = Bytes::from(vec![b'x'; size]);
            match replayable(known_body(&data)) {
                ReqBody::Known(b) => assert_eq!(b, data),
                ReqBody::Streaming(_) => panic!("a buffered body of {size} bytes streams"),
            }
        }
        // A body still arriving stays a stream, with whatever was already there in front,
        // for every number of ready frames around the probing limit.
        for ready in 0..=KNOWN_MAX_FRAMES + 2 {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
            for i in 0..ready {
                tx.send(Ok(Frame::data(Bytes::from(format!("{i};")))))
                    .await
                    .unwrap();
            }
            let body = Chan(rx).boxed_unsync();
            let ReqBody::Streaming(b) = replayable(body) else {
                panic!("an open stream was taken as known ({ready} ready frames)");
            };
            tx.send(Ok(Frame::data(Bytes::from_static(b"end"))))
                .await
                .unwrap();
            drop(tx);
            let want: String = (0..ready).map(|i| format!("{i};")).collect::<String>() + "end";
            assert_eq!(collect(b).await, Bytes::from(want));
        }
    }

    /// A body fed through a channel: frames arrive when the test sends them.
    struct Chan(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);

    impl HttpBody for Chan {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx)
        }
    }

    #[test]
    fn only_idempotent_methods_are_idempotent() {
        use http::Method;
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(
                idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT", "PROPFIND", "get"] {
            assert!(
                !idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }

    #[test]
    fn targets() {
        assert!(UpstreamTarget::parse("http://127.0.0.1:8080").is_ok());
        assert!(UpstreamTarget::parse("https://ehr.local/").unwrap().https);
        assert!(UpstreamTarget::parse("ftp://x").is_err());
        assert!(UpstreamTarget::parse("http://u:p@x").is_err());
        assert!(UpstreamTarget::parse("http://x/base").is_err());
    }

    #[test]
    fn rewrites() {
        let t = UpstreamTarget::parse("http://up:81").unwrap();
        let u = |p: &str, r: &RouteId| {
            upstream_uri(&t, &p.parse().unwrap(), r)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            u("/fhir/Patient?x=1", &route("/fhir", None)),
            "http://up:81/fhir/Patient?x=1"
        );
        assert_eq!(
            u("/fhir/Patient", &route("/fhir", Some("/baseR4"))),
            "http://up:81/baseR4/Patient"
        );
        assert_eq!(u("/fhir", &route("/fhir", Some("/"))), "http://up:81/");
        assert_eq!(u("/fhir/x", &route("/fhir", Some("/"))), "http://up:81/x");
        assert_eq!(u("/x", &route("/", Some("/api"))), "http://up:81/api/x");
    }
}
