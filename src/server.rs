//! Listeners: accept loop, connection cap, TLS handshake (with a deadline), protocol choice
//! by ALPN, hyper connection settings, the per-request ingress, and graceful drain.
//!
//! Plaintext listeners speak HTTP/1.1 only (no h2c: an `Upgrade: h2c` is never honoured).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::primitives::ListenerLimits;
use crate::conn_guard::{ConnShared, FrameError, GuardSettings, GuardedIo, Verdict};
use crate::context::{RequestContext, RouteId};
use crate::error::{self, Rejection};
use crate::identity::ClientIdentity;
use crate::metrics::{method_label, status_class, Metrics};
use crate::router::{Match, RouteMetrics, Router};
use crate::stack::RouteService;
use crate::{Body, BoxError};

pub struct ListenerCtx {
    pub name: Arc<str>,
    /// Swapped by a config reload; each request routes on the one current at its start.
    pub router: arc_swap::ArcSwap<Router>,
    pub limits: ListenerLimits,
    pub trusted: Vec<IpNet>,
    pub metrics: Arc<Metrics>,
    /// Swapped on reload; each handshake uses the config current at accept time.
    pub tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    /// Incremented by each TLS reload (see `TlsReloader`).
    pub tls_generation: Arc<std::sync::atomic::AtomicU64>,
    pub handshake_timeout: Duration,
    pub conn_limit: Arc<Semaphore>,
}

struct ConnInfo {
    peer: SocketAddr,
    tls: bool,
    h2: bool,
    trusted: bool,
    shared: Arc<ConnShared>,
    identity: Option<Arc<ClientIdentity>>,
    /// TLS generation the client certificate was verified under.
    tls_generation: u64,
}

/// Accept until shutdown, then drain: stop accepting, let in-flight requests finish within
/// `grace`, then close what is left.
pub async fn serve_listener(
    ctx: Arc<ListenerCtx>,
    tcp: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => break,
            acc = tcp.accept() => match acc {
                Ok((stream, peer)) => {
                    let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
                        // Closing at once beats leaving clients hanging in the backlog.
                        ctx.metrics.connections_refused.with_label_values(&[&ctx.name, "max_connections"]).inc();
                        drop(stream);
                        continue;
                    };
                    conns.spawn(handle_conn(ctx.clone(), stream, peer, permit, shutdown.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(tcp);
    // Every connection task saw the same signal and is shutting down gracefully (HTTP/1:
    // after the current response; HTTP/2: GOAWAY, then in-flight streams finish).
    tracing::info!(listener = %ctx.name, open = conns.len(), "draining connections");
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(listener = %ctx.name, "grace period over; closing remaining connections");
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

pub use crate::shutdown::stopped;

struct ActiveGuard(Arc<ListenerCtx>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .active_connections
            .with_label_values(&[&self.0.name])
            .dec();
    }
}

async fn handle_conn(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) {
    ctx.metrics
        .connections
        .with_label_values(&[&ctx.name])
        .inc();
    ctx.metrics
        .active_connections
        .with_label_values(&[&ctx.name])
        .inc();
    let _active = ActiveGuard(ctx.clone());
    let _ = stream.set_nodelay(true);
    let trusted = crate::proxy::headers::is_trusted(peer.ip(), &ctx.trusted);
    // Read before the config: a reload in between only makes this connection look stale.
    let generation = ctx
        .tls_generation
        .load(std::sync::atomic::Ordering::Acquire);
    match ctx.tls.as_ref().map(|s| TlsAcceptor::from(s.load_full())) {
        Some(acceptor) => {
            let fail = |reason: &str| {
                ctx.metrics
                    .tls_handshake_failures
                    .with_label_values(&[&ctx.name, reason])
                    .inc();
            };
            // Boxed: the handshake's state lives on the heap only while it runs; inline, it
            // would size the connection's task (kept for the connection's life) for it.
            let handshake = Box::pin(tokio::time::timeout(
                ctx.handshake_timeout,
                acceptor.accept(stream),
            ));
            // In a block: the stream is borrowed below, and a borrowed local keeps its room
            // in this future across later awaits (a second copy of the TLS state).
            let serve = {
                let tls = match handshake.await {
                    Err(_) => return fail("timeout"),
                    Ok(Err(e)) => {
                        let reason = crate::tls::handshake_failure_reason(&e);
                        tracing::debug!(listener = %ctx.name, %peer, reason, "TLS handshake failed");
                        return fail(reason);
                    }
                    Ok(Ok(s)) => s,
                };
                let (_, session) = tls.get_ref();
                let h2 = session.alpn_protocol() == Some(b"h2");
                // rustls has verified the chain and revocation; parse the leaf once for policies.
                let identity = match session.peer_certificates().and_then(|c| c.first()) {
                    Some(der) => match ClientIdentity::from_der(der) {
                        Some(id) => Some(Arc::new(id)),
                        None => return fail("unparsable_client_certificate"),
                    },
                    None => None,
                };
                let info = ConnInfo::new(peer, true, h2, trusted, identity, generation);
                // Boxed (by `serve_io`), like the plaintext case: this task stays small.
                serve_io(ctx, tls, info, stop)
            };
            serve.await;
        }
        None => {
            let info = ConnInfo::new(peer, false, false, trusted, None, generation);
            serve_io(ctx, stream, info, stop).await
        }
    }
}

impl ConnInfo {
    fn new(
        peer: SocketAddr,
        tls: bool,
        h2: bool,
        trusted: bool,
        identity: Option<Arc<ClientIdentity>>,
        tls_generation: u64,
    ) -> Arc<Self> {
        Arc::new(ConnInfo {
            peer,
            tls,
            h2,
            trusted,
            shared: Arc::new(ConnShared::default()),
            identity,
            tls_generation,
        })
    }
}

/// Serve a connection (after TLS) to its end. The future is boxed, and built so that the
/// stream is stored in it once: an async fn copies its arguments into locals (two rooms
/// for a 1.4 KB stream), an `async move` block uses what it captured in place.
fn serve_io<IO>(
    ctx: Arc<ListenerCtx>,
    io: IO,
    info: Arc<ConnInfo>,
    stop: watch::Receiver<bool>,
) -> std::pin::Pin<Box<impl std::future::Future<Output = ()>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let lim = &ctx.limits;
    let settings = GuardSettings {
        max_header_bytes: lim.max_header_bytes,
        max_headers: lim.max_headers,
        header_read_timeout: lim.header_read_timeout.0,
        idle_timeout: lim.idle_timeout.0,
        idle_release: lim.idle_release.0,
    };
    let mut io = GuardedIo::new(io, !info.h2, info.shared.clone(), settings);
    let mut stop = stop;
    Box::pin(async move {
        let lim = ctx.limits.clone();
        let shared = info.shared.clone();
        let h2 = info.h2;
        let svc_ctx = ctx.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let ctx = svc_ctx.clone();
            let info = info.clone();
            async move { Ok::<_, Infallible>(handle(ctx, info, req).await) }
        });
        if h2 {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(lim.h2_max_concurrent_streams)
                // Rapid-reset (CVE-2023-44487) and error-reset floods: cap resets per connection.
                .max_pending_accept_reset_streams(lim.h2_max_pending_reset_streams)
                .max_local_error_reset_streams(lim.h2_max_local_error_reset_streams)
                // Backstop only: the ingress answers oversized headers with a 431 body first.
                .max_header_list_size(
                    u32::try_from(lim.max_header_bytes.saturating_mul(2) + 4096)
                        .unwrap_or(u32::MAX),
                )
                .keep_alive_interval(Some(lim.idle_timeout.0))
                .keep_alive_timeout(Duration::from_secs(20));
            // Boxed: an HTTP/2 connection's state is kilobytes, and inline it would size every
            // connection task (HTTP/1 ones included) for it.
            let mut conn = Box::pin(b.serve_connection(TokioIo::new(io), svc));
            drive(conn.as_mut(), &shared, &mut stop, &ctx.name).await;
            return;
        }
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            // The guard enforces the real limits; hyper's are a backstop above them.
            .max_headers(lim.max_headers + 1)
            .max_buf_size((lim.max_header_bytes * 2 + 16 * 1024).max(8192))
            .header_read_timeout(lim.header_read_timeout.0 + lim.idle_timeout.0)
            .keep_alive(true);
        let mut svc = svc;
        loop {
            // Boxed: while the connection is parked, the task keeps a pointer, not hyper's
            // connection state.
            let mut conn = Box::pin(b.serve_connection(TokioIo::new(io), svc));
            if drive(conn.as_mut(), &shared, &mut stop, &ctx.name).await != Ended::Done {
                return;
            }
            // Taken apart at once: a partly moved `Parts` would keep its own room in this
            // future (another copy of the stream's size) across the awaits below.
            let hyper::server::conn::http1::Parts {
                io: hio,
                read_buf,
                service,
                ..
            } = std::pin::Pin::into_inner(conn).into_parts();
            io = hio.into_inner();
            svc = service;
            if !io.released() {
                return;
            }
            // The guard ended hyper's side of an idle connection: hyper's buffers go with it
            // (its read buffer last: unread bytes are copied out first). Wait for the client's
            // next bytes, then serve them on a new one.
            io.unread(&read_buf);
            drop(read_buf);
            ctx.metrics
                .idle_releases
                .with_label_values(&[&ctx.name])
                .inc();
            let resumed = tokio::select! {
                r = std::future::poll_fn(|cx| io.poll_resume(cx)) => r,
                _ = stopped(&mut stop) => return,
                _ = shared.close_requested() => return,
                _ = shared.abort.notified() => return,
            };
            match resumed {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::debug!(listener = %ctx.name, error = %e, "parked connection ended");
                    return;
                }
            }
        }
    })
}

/// The hyper connection types' common ground: a future with a graceful shutdown.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How `drive` ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// hyper finished the connection cleanly (the client closed, or the guard released it).
    Done,
    /// An error, or an abort: the connection is dropped.
    Dropped,
}

/// Run a connection to its end; shut it down gracefully on the gateway's shutdown signal
/// or when a request asked for the connection to be retired (stale TLS identity).
async fn drive<C: Graceful>(
    mut conn: std::pin::Pin<&mut C>,
    shared: &ConnShared,
    stop: &mut watch::Receiver<bool>,
    listener: &str,
) -> Ended {
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                return match r {
                    Ok(()) => Ended::Done,
                    Err(e) => {
                        tracing::debug!(listener, error = %e, "connection ended with error");
                        Ended::Dropped
                    }
                };
            }
            _ = stopped(stop), if !closing => {
                closing = true;
                conn.as_mut().shutdown();
            }
            _ = shared.close_requested(), if !closing => {
                closing = true;
                conn.as_mut().shutdown();
            }
            // Dropping the connection closes the socket: nothing more is written.
            _ = shared.abort.notified() => {
                tracing::debug!(listener, "connection aborted: the client stopped reading");
                return Ended::Dropped;
            }
        }
    }
}

/// Request ids: a random per-process prefix and a counter. Unique without a syscall or a
/// lock per request (a v4 UUID costs a getrandom call each), and they sort by arrival.
fn new_request_id() -> HeaderValue {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&prefix.to_be_bytes());
    raw[8..].copy_from_slice(&n.to_be_bytes());
    // No allocation on this per-request path: encoded into a stack buffer.
    let mut buf = [0u8; 32];
    if hex::encode_to_slice(raw, &mut buf).is_err() {
        return HeaderValue::from_static("-");
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Per-request ingress: everything between hyper and the route stack.
async fn handle(
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    conn.shared.begin();
    let method = req.method().clone();
    let version = req.version();
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if conn.trusted && valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    // The record exists before anything is awaited: if the client goes away mid-request
    // (the future is dropped), it is still written — as 499 — and the in-flight count is
    // released. An auditor sees every request that may have reached the upstream.
    // The record owns this request's handles to the listener and connection (no clones);
    // the code below reads them through it.
    let mut record = AccessRecord {
        ctx,
        conn,
        request_id: request_id.clone(),
        route: None,
        method,
        version,
        status: http::StatusCode::from_u16(499).unwrap_or(http::StatusCode::BAD_REQUEST),
        code: Some("client_closed"),
        started,
        head_time: Duration::ZERO,
        bytes: 0,
        completed: false,
    };
    let mut fhir = record.ctx.router.load().all_fhir();
    let result = match prepare(
        &record.ctx,
        &record.conn,
        req,
        &request_id,
        &mut record.route,
        &mut fhir,
    ) {
        Ok((svc, req)) => call_route(svc, req).await,
        Err(rej) => Err(rej),
    };
    record.head_time = started.elapsed();
    let (mut resp, code) = match result {
        Ok(r) => (r, None),
        Err(rej) => {
            let route_label = record.route.as_ref().map(|r| &*r.name).unwrap_or("-");
            record
                .ctx
                .metrics
                .rejections
                .with_label_values(&[route_label, rej.code])
                .inc();
            (
                error::into_response(&rej, fhir, request_id.to_str().unwrap_or("-")),
                Some(rej.code),
            )
        }
    };
    let h = resp.headers_mut();
    h.insert("x-request-id", request_id);
    if record.conn.h2 {
        // Connection-specific headers are illegal in HTTP/2.
        h.remove(CONNECTION);
    }
    record.status = resp.status();
    record.code = code;
    if record.method == http::Method::HEAD {
        // A HEAD answer has no body (RFC 9110 9.3.2). hyper's HTTP/1 server drops one; its
        // HTTP/2 server would send it, which the client must treat as a protocol error —
        // so an error body (or any other) goes here, for both. Headers stay as they are.
        let (mut parts, body) = resp.into_parts();
        // The length the GET's body would have had, as for every HEAD answer.
        if !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
            // (Only for a body being dropped: an empty HEAD answer from the upstream keeps
            // whatever it said.)
            if let Some(n) = http_body::Body::size_hint(&body).exact().filter(|n| *n > 0) {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
            }
        }
        resp = Response::from_parts(parts, crate::empty_body());
    }
    resp.map(|b| {
        LoggedBody {
            inner: b,
            record: Some(record),
            ended: std::cell::Cell::new(false),
        }
        .boxed_unsync()
    })
}

/// Boxed with an explicit `'static` type: works around rustc's higher-ranked lifetime
/// inference on the `dyn Error` inside the body type when the future is nested in hyper's.
fn call_route(
    svc: RouteService,
    req: Request<Body>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<Body>, Rejection>> + Send + 'static>,
> {
    Box::pin(svc.oneshot(req))
}

/// Everything before the route stack, synchronously: framing verdict, header limits, host,
/// path canonicalisation, routing. Returns the route's service and the request to give it.
fn prepare(
    ctx: &ListenerCtx,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    route_name: &mut Option<Arc<RouteMetrics>>,
    fhir: &mut bool,
) -> Result<(RouteService, Request<Body>), Rejection> {
    if !conn.h2 {
        match conn.shared.next_verdict() {
            Some(Verdict::Ok) => {}
            Some(Verdict::Reject(e)) => return Err(e.into()),
            // Every HTTP/1 head passes the guard; no verdict means the stream is out of step.
            None => return Err(FrameError::Malformed.into()),
        }
    }
    // A client certificate verified before the last CA/CRL reload may since have been
    // revoked: such a connection is not used again (421 lets clients retry on a new one,
    // whose handshake meets the current CRLs).
    if conn.identity.is_some()
        && ctx
            .tls_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != conn.tls_generation
    {
        conn.shared.request_close();
        return Err(Rejection::new(
            http::StatusCode::MISDIRECTED_REQUEST,
            "connection_stale",
            "TLS settings changed; retry on a new connection",
        )
        .closing());
    }
    let headers = req.headers();
    if headers.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err(FrameError::DuplicateContentLength.into());
    }
    if conn.h2 && headers.contains_key(TRANSFER_ENCODING) {
        return Err(FrameError::InvalidTransferEncoding.into());
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > ctx.limits.max_headers || header_bytes > ctx.limits.max_header_bytes {
        return Err(Rejection::headers_too_large());
    }
    if req.method() == Method::CONNECT || req.method() == Method::TRACE {
        return Err(Rejection::method_not_allowed());
    }
    let host = resolve_host(&req)?;
    let canonical = crate::path::normalize(req.uri().path())?.into_owned();
    let host_name = host.host().trim_end_matches('.').to_ascii_lowercase();
    let router = ctx.router.load();
    let route = match router.find(&host_name, &canonical, req.method()) {
        Match::Found(r) => r,
        Match::MethodNotAllowed(f) => {
            *fhir = f;
            return Err(Rejection::method_not_allowed());
        }
        Match::NotFound => return Err(Rejection::not_found()),
    };
    *fhir = route.info.fhir;
    *route_name = Some(route.metrics.clone());
    let fhir_request = if route.info.fhir {
        crate::path::check_fhir(&canonical)?;
        // Classify the FHIR interaction once; policies read the typed result. A shape that
        // cannot be classified never reaches the EHR.
        let rel = canonical
            .strip_prefix(route.info.path_prefix.as_str())
            .unwrap_or(&canonical)
            .trim_start_matches('/');
        Some(crate::fhir::request::parse(
            req.method(),
            rel,
            req.uri().query(),
        )?)
    } else {
        None
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let pq = PathAndQuery::try_from(pq)
        .map_err(|_| Rejection::bad_request("path_invalid", "invalid request target"))?;
    let (mut parts, body) = req.into_parts();
    parts.uri = Uri::from(pq);
    let client_ip = crate::proxy::headers::client_ip(
        conn.peer.ip(),
        conn.trusted,
        &parts.headers,
        &ctx.trusted,
    );
    parts.extensions.insert(RequestContext {
        request_id: request_id.clone(),
        peer: conn.peer,
        listener: ctx.name.clone(),
        tls: conn.tls,
        trusted_peer: conn.trusted,
        client_ip,
        host: host.as_str().to_ascii_lowercase(),
    });
    parts.extensions.insert(RouteId(route.info.clone()));
    if !conn.h2 {
        parts
            .extensions
            .insert(crate::context::ConnectionAbort(conn.shared.abort.clone()));
    }
    if let Some(f) = fhir_request {
        parts.extensions.insert(Arc::new(f));
    }
    if let Some(id) = &conn.identity {
        parts.extensions.insert(id.clone());
    }
    let req = Request::from_parts(
        parts,
        body.map_err(|e| BoxError::from(crate::proxy::ClientBodyError(e)))
            .boxed_unsync(),
    );
    Ok((route.service.clone(), req))
}

/// The host the client addressed: the URI authority (HTTP/2, absolute-form) or the Host
/// header; when both are present they must agree.
fn resolve_host(req: &Request<Incoming>) -> Result<Authority, Rejection> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::bad_request(
            "host_invalid",
            "several Host headers",
        ));
    }
    let parsed = header
        .map(|h| {
            Authority::try_from(h.as_bytes())
                .map_err(|_| Rejection::bad_request("host_invalid", "invalid Host header"))
        })
        .transpose()?;
    let auth = match (req.uri().authority(), parsed) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h.as_str()) => {
            return Err(Rejection::bad_request(
                "host_mismatch",
                "Host header disagrees with the request target",
            ))
        }
        (Some(a), _) => a.clone(),
        (None, Some(h)) => h,
        (None, None) => {
            return Err(Rejection::bad_request(
                "host_missing",
                "missing Host header",
            ))
        }
    };
    if auth.as_str().contains('@') || auth.host().is_empty() {
        return Err(Rejection::bad_request(
            "host_invalid",
            "invalid Host header",
        ));
    }
    Ok(auth)
}

/// What the access log line and the request metrics say about one request.
struct AccessRecord {
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnInfo>,
    request_id: HeaderValue,
    /// Route name and its metric handles, once routed.
    route: Option<Arc<RouteMetrics>>,
    method: Method,
    version: http::Version,
    status: http::StatusCode,
    code: Option<&'static str>,
    started: Instant,
    head_time: Duration,
    bytes: u64,
    completed: bool,
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let m = &self.ctx.metrics;
        let elapsed = self.started.elapsed();
        // Borrowed, not cloned: the handles were resolved at start-up (or, for requests
        // refused before routing, on the first such request).
        let route: &str = match &self.route {
            Some(rm) => {
                rm.requests.inc(&self.method, self.status);
                rm.duration.observe(elapsed.as_secs_f64());
                rm.bytes.inc_by(self.bytes);
                &rm.name
            }
            None => {
                m.requests
                    .with_label_values(&[
                        &self.ctx.name,
                        "-",
                        method_label(&self.method),
                        status_class(self.status),
                    ])
                    .inc();
                let (duration, bytes) = m.unrouted();
                duration.observe(elapsed.as_secs_f64());
                bytes.inc_by(self.bytes);
                "-"
            }
        };
        self.conn.shared.end();
        // Method is logged as its label form so a junk method cannot flood the log.
        crate::accesslog::log(&crate::accesslog::Record {
            request_id: self.request_id.to_str().unwrap_or("-"),
            listener: &self.ctx.name,
            route,
            method: method_label(&self.method),
            protocol: self.version,
            status: self.status.as_u16(),
            code: self.code.unwrap_or(""),
            head_ms: self.head_time.as_secs_f64() * 1000.0,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            bytes_out: self.bytes,
            completed: self.completed,
            client_ip: self.conn.peer.ip(),
            client_cert: self
                .conn
                .identity
                .as_deref()
                .map(ClientIdentity::display_name)
                .unwrap_or(""),
            tls: self.conn.tls,
        });
    }
}

/// Response body that writes the access record when it ends — or is dropped early
/// (client gone, upstream reset), which the record then says (`completed=false`).
struct LoggedBody {
    inner: Body,
    record: Option<AccessRecord>,
    /// hyper stops polling once `is_end_stream` says so (it never sees `None`), so the end
    /// is also noted there.
    ended: std::cell::Cell<bool>,
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(rec) = self.record.as_mut() {
            rec.completed = self.ended.get() || self.inner.is_end_stream();
        }
    }
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(d), Some(rec)) = (f.data_ref(), this.record.as_mut()) {
                    rec.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut rec) = this.record.take() {
                    rec.completed = true;
                }
            }
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.ended.set(true);
        }
        end
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
