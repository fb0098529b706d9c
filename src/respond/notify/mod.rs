//! Signed webhook notifications.
//!
//! This module owns delivery of response events (fired signals, blocks) to
//! one operator webhook: a bounded queue that never blocks the request path,
//! one worker task that POSTs each event with retries, the HMAC signature,
//! the TLS client configuration and the sent/failed/dropped counters.
//!
//! Delivery is at-least-once and best-effort: an event is retried on
//! transport errors (connect, TLS, reset), per-attempt timeouts, 429 and 5xx,
//! with exponential backoff (200 ms doubling, capped at 30 s, or the
//! receiver's `Retry-After` seconds if longer, same cap) for at most
//! `retries` attempts in total; any other status (2xx aside) fails it at once.
//! When the queue is full new events are dropped and counted, never waited
//! for: an attack that floods alerts must not slow the gateway.
//!
//! # Signature scheme (for receivers)
//!
//! Each request carries
//! - `Content-Type: application/json`
//! - `X-Ward-Timestamp: <unix seconds when this attempt was signed>`
//! - `X-Ward-Signature: sha256=<lowercase hex HMAC-SHA256(secret, T + "." + body)>`
//!
//! where `T` is the exact `X-Ward-Timestamp` header value and `body` the raw
//! request bytes. To verify: recompute the HMAC over the received bytes (do
//! not re-serialize the JSON), compare in constant time, and reject requests
//! whose timestamp is more than a few minutes from the receiver's clock, which
//! stops replays of captured requests. Retries are re-signed with a fresh
//! timestamp, so a late retry is not rejected as stale. Because delivery is
//! at-least-once, receivers should de-duplicate on an id inside the event.
//!
//! The secret is the content of `secret_file` with trailing `\r`/`\n`
//! removed, and must be at least 32 bytes.

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::{IntCounter, Registry};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Minimum secret length: 32 bytes matches the HMAC-SHA256 output size, so
/// the key is not the weak link.
pub const MIN_SECRET_BYTES: usize = 32;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Response bodies are read (so the connection can be reused) up to this
/// size and then discarded.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// CA bundles tried when `ca` is not set (Debian/Ubuntu/Alpine, RHEL/Fedora,
/// OpenSUSE/macOS-style). The gateway pins no other trust source.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    5
}
fn default_queue() -> usize {
    1_000
}

/// `notify.webhook` config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL to POST to. No userinfo.
    pub url: String,
    /// File holding the HMAC secret (read once at start, >= 32 bytes).
    pub secret_file: PathBuf,
    /// PEM CA bundle to trust for `https` (instead of the system bundle).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (needs `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Per-attempt timeout covering connect, TLS, request and response
    /// (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Maximum delivery attempts per event, including the first (default 5).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Events buffered before new ones are dropped (default 1000).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// Delivery counters (cheap to clone: prometheus counters are shared
/// handles).
#[derive(Clone, Debug)]
pub struct NotifyMetrics {
    /// Events delivered (2xx).
    pub sent: IntCounter,
    /// Events given up on (non-retryable status or attempts exhausted).
    pub failed: IntCounter,
    /// Events dropped because the queue was full or the notifier shut down.
    pub dropped: IntCounter,
}

impl NotifyMetrics {
    /// Unregistered counters named `ward_notify_{sent,failed,dropped}_total`.
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(NotifyMetrics {
            sent: IntCounter::new("ward_notify_sent_total", "Webhook events delivered")?,
            failed: IntCounter::new(
                "ward_notify_failed_total",
                "Webhook events that failed after retries",
            )?,
            dropped: IntCounter::new(
                "ward_notify_dropped_total",
                "Webhook events dropped (queue full or shut down)",
            )?,
        })
    }

    /// Registers the three counters with `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.sent.clone()))?;
        registry.register(Box::new(self.failed.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        Ok(())
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Everything the worker needs to deliver one event.
struct Deliverer {
    client: HttpClient,
    uri: Uri,
    key: hmac::Key,
    timeout: Duration,
    attempts: u32,
}

/// Handle to the webhook worker. Dropping it closes the queue; the worker
/// then delivers what is queued and exits on its own. [`Notifier::shutdown`]
/// does the same but bounds the wait.
pub struct Notifier {
    tx: mpsc::Sender<serde_json::Value>,
    metrics: NotifyMetrics,
    /// Events accepted but not yet finished (sent or failed), so a shutdown
    /// that runs out of grace can count what it abandons.
    in_flight: Arc<AtomicUsize>,
    stop: Arc<Notify>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    /// Validates `cfg`, reads the secret and TLS material, and spawns the
    /// worker on the current tokio runtime. Errors (bad config, unreadable
    /// files, no runtime) are returned for the caller to refuse to start.
    pub fn start(cfg: WebhookConfig, metrics: NotifyMetrics) -> Result<Notifier, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "notify: Notifier::start must run inside a tokio runtime".to_owned())?;
        if cfg.timeout_ms == 0 || cfg.timeout_ms > 300_000 {
            return Err("notify: timeout_ms must be 1..=300000".into());
        }
        if cfg.retries == 0 || cfg.retries > 20 {
            return Err("notify: retries must be 1..=20".into());
        }
        if cfg.queue == 0 || cfg.queue > 1_000_000 {
            return Err("notify: queue must be 1..=1000000".into());
        }
        let uri = parse_url(&cfg.url)?;
        let https = uri.scheme_str() == Some("https");
        if !https && (cfg.ca.is_some() || cfg.client_cert.is_some() || cfg.client_key.is_some()) {
            return Err("notify: ca/client_cert/client_key need an https url".into());
        }
        let secret = read_secret(&cfg.secret_file)?;
        let tls = tls_config(&cfg, https)?;

        let mut http = HttpConnector::new();
        // The https connector does the scheme check; let it hand https URIs
        // to the TCP layer.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.timeout_ms)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);

        let deliverer = Deliverer {
            client,
            uri,
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            timeout: Duration::from_millis(cfg.timeout_ms),
            attempts: cfg.retries,
        };
        let (tx, rx) = mpsc::channel(cfg.queue);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(Notify::new());
        let worker = runtime.spawn(run_worker(
            rx,
            deliverer,
            metrics.clone(),
            in_flight.clone(),
            stop.clone(),
        ));
        Ok(Notifier {
            tx,
            metrics,
            in_flight,
            stop,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues `event` for delivery. Never blocks and never fails the caller:
    /// if the queue is full (or the notifier is shut down) the event is
    /// dropped and counted. Returns whether it was queued.
    pub fn send(&self, event: serde_json::Value) -> bool {
        // Count before enqueueing: the worker may finish the event (and
        // decrement) before try_send even returns.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(e) => {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.metrics.dropped.inc();
                // Debug, not warn: a flood of drops would flood the log too;
                // the counter is the signal.
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "queue full",
                    mpsc::error::TrySendError::Closed(_) => "notifier stopped",
                };
                tracing::debug!(reason = why, "webhook event dropped");
                false
            }
        }
    }

    /// Stops accepting events and waits up to `grace` for the worker to
    /// deliver what is queued. Whatever is still undelivered after `grace`
    /// is abandoned and counted as dropped. Idempotent.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.notify_one();
        let handle = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut handle) = handle else { return };
        if tokio::time::timeout(grace, &mut handle).await.is_err() {
            handle.abort();
            // Wait for the abort so no event completes after we count.
            let _ = handle.await;
            let left = self.in_flight.swap(0, Ordering::SeqCst);
            self.metrics.dropped.inc_by(left as u64);
            tracing::warn!(abandoned = left, "webhook notifier shutdown grace expired");
        }
    }
}

async fn run_worker(
    mut rx: mpsc::Receiver<serde_json::Value>,
    d: Deliverer,
    metrics: NotifyMetrics,
    in_flight: Arc<AtomicUsize>,
    stop: Arc<Notify>,
) {
    let mut closing = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.notified(), if !closing => {
                // Refuse new events but keep draining the queued ones.
                rx.close();
                closing = true;
                continue;
            }
            event = rx.recv() => event,
        };
        let Some(event) = event else { break };
        if d.deliver(&event).await {
            metrics.sent.inc();
        } else {
            metrics.failed.inc();
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Outcome {
    Delivered,
    /// Worth another attempt; optional server-requested delay.
    Retry(String, Option<Duration>),
    Fatal(String),
}

impl Deliverer {
    async fn deliver(&self, event: &serde_json::Value) -> bool {
        let body = match serde_json::to_vec(event) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "webhook event not serializable");
                return false;
            }
        };
        for attempt in 1..=self.attempts {
            match self.attempt(&body).await {
                Outcome::Delivered => return true,
                Outcome::Fatal(why) => {
                    tracing::warn!(attempt, reason = %why, "webhook delivery failed; not retrying");
                    return false;
                }
                Outcome::Retry(why, retry_after) => {
                    if attempt == self.attempts {
                        tracing::warn!(attempt, reason = %why, "webhook delivery failed; giving up");
                        return false;
                    }
                    let delay = backoff(BACKOFF_BASE, attempt)
                        .max(retry_after.unwrap_or_default())
                        .min(BACKOFF_CAP);
                    tracing::debug!(attempt, reason = %why, ?delay, "webhook delivery will be retried");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        false
    }

    async fn attempt(&self, body: &Bytes) -> Outcome {
        let ts = unix_secs().to_string();
        let signature = sign(&self.key, &ts, body);
        let req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "ward-notify")
            .header("x-ward-timestamp", &ts)
            .header("x-ward-signature", signature)
            .body(Full::new(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::Fatal(format!("build request: {e}")),
        };
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
            // Drain (bounded) so the connection can be reused; the content
            // is irrelevant.
            let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry("timeout".into(), None),
            Ok(Err(e)) => Outcome::Retry(format!("transport: {e}"), None),
            Ok(Ok((status, ra))) => classify(status, ra),
        }
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::Retry(format!("status {status}"), retry_after)
    } else {
        Outcome::Fatal(format!("status {status}"))
    }
}

/// `base * 2^(attempt-1)`, capped at 30 s.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(BACKOFF_CAP)
}

/// `Retry-After` in delta-seconds form (the HTTP-date form is ignored).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(BACKOFF_CAP.as_secs())))
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `sha256=` + lowercase hex HMAC-SHA256(key, ts + "." + body).
fn sign(key: &hmac::Key, ts: &str, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(ts.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign()))
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("notify: url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("notify: url {url:?}: scheme must be http or https")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("notify: url {url:?}: missing host"))?;
    // Credentials in the URL would end up in logs and in every proxy's
    // access log; the HMAC secret is the authentication.
    if authority.as_str().contains('@') {
        return Err("notify: url must not contain credentials".into());
    }
    if authority.host().is_empty() {
        return Err(format!("notify: url {url:?}: missing host"));
    }
    Ok(uri)
}

fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut secret =
        std::fs::read(path).map_err(|e| format!("notify: secret_file {}: {e}", path.display()))?;
    while matches!(secret.last(), Some(b'\n' | b'\r')) {
        secret.pop();
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "notify: secret_file {}: secret must be at least {MIN_SECRET_BYTES} bytes",
            path.display()
        ));
    }
    Ok(secret)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("notify: {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("notify: {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("notify: {shown}: no PEM certificates"));
    }
    Ok(certs)
}

/// TLS 1.2+ with the aws-lc-rs provider; trust is `ca` if set, otherwise the
/// system bundle (only needed for https).
fn tls_config(cfg: &WebhookConfig, https: bool) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match (&cfg.ca, https) {
        (Some(ca), _) => {
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("notify: ca {}: {e}", ca.display()))?;
            }
        }
        (None, true) => {
            let bundle = SYSTEM_CA_FILES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .ok_or("notify: https url without `ca` and no system CA bundle found")?;
            let (added, _ignored) = roots.add_parsable_certificates(read_certs(bundle)?);
            if added == 0 {
                return Err(format!(
                    "notify: no usable certificates in {}",
                    bundle.display()
                ));
            }
        }
        // Plain http: the TLS config is never used.
        (None, false) => {}
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("notify: tls: {e}"))?
        .with_root_certificates(roots);
    match (&cfg.client_cert, &cfg.client_key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("notify: client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("notify: client certificate: {e}"))
        }
        _ => Err("notify: client_cert and client_key must be set together".into()),
    }
}

#[cfg(test)]
mod tests;
